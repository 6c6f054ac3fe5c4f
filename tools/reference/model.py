"""Plain PyTorch Llama-family forward pass: the independent oracle for m3.

Written to be read op by op, not to be fast. Float64 by default so that the oracle's own rounding
is negligible next to whatever the engine under test does (see README.md).

Shape letters used in comments:
    T  tokens in this call          S  keys visible (cache + this call)
    C  model width (embedding_length)
    H  query heads    G  KV heads    D  head dim    F  MLP width    V  vocab

Forward (llama.cpp's `llama` architecture, no biases):
    x = embed[tokens]
    per layer:
        h = rmsnorm(x) * attn_norm
        q, k, v = h Wq^T, h Wk^T, h Wv^T
        q, k = rope(q), rope(k)          # adjacent pairs (2i, 2i+1), llama.cpp "normal" mode
        a = causal softmax(q k^T / sqrt(D)) v   # query head h reads KV head h // (H/G)
        x = x + a Wo^T
        h = rmsnorm(x) * ffn_norm
        x = x + (silu(h Wg^T) * (h Wu^T)) Wd^T
    logits = (rmsnorm(x) * output_norm) Wout^T     # Wout = token_embd when tied
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

from gguf_reader import GGUFFile, ModelConfig, load_weights, read_config


# ---- the ops -------------------------------------------------------------------------------------

def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [T, C], weight: [C] -> [T, C].  x / sqrt(mean(x^2) + eps) * weight."""
    ms = (x * x).mean(dim=-1, keepdim=True)              # [T, 1]
    return x / torch.sqrt(ms + eps) * weight


def rope_cos_sin(pos: torch.Tensor, n_rot: int, theta: float, dtype):
    """pos: [T] integer positions -> cos, sin: [T, n_rot/2].
    Pair i (dims 2i, 2i+1) turns by angle pos * theta^(-2i/n_rot). Angles always in float64."""
    i = torch.arange(n_rot // 2, dtype=torch.float64)                   # [n_rot/2]
    inv_freq = theta ** (-2.0 * i / n_rot)                               # [n_rot/2]
    angle = pos.to(torch.float64)[:, None] * inv_freq[None, :]           # [T, n_rot/2]
    return torch.cos(angle).to(dtype), torch.sin(angle).to(dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, nh, D]; cos, sin: [T, R/2] with R <= D rotated dims.
    Rotates ADJACENT pairs (a, b) = (x[2i], x[2i+1]) -> (a cos - b sin, a sin + b cos);
    dims R..D-1 (if any) pass through unchanged. NOT the Hugging Face half-split layout."""
    R = 2 * cos.shape[-1]
    xr, xpass = x[..., :R], x[..., R:]
    a = xr[..., 0::2]                                    # [T, nh, R/2]  even dims
    b = xr[..., 1::2]                                    # [T, nh, R/2]  odd dims
    c, s = cos[:, None, :], sin[:, None, :]              # [T, 1, R/2]
    ra = a * c - b * s
    rb = a * s + b * c
    rotated = torch.stack([ra, rb], dim=-1).flatten(-2)  # [T, nh, R] interleaved back
    return torch.cat([rotated, xpass], dim=-1)


def kv_head_of(n_head: int, n_head_kv: int) -> torch.Tensor:
    """[H] index of the KV head each query head reads: h // (H/G)."""
    return torch.arange(n_head) // (n_head // n_head_kv)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """q: [T, H, D]; k, v: [S, G, D]; q_pos: [T]; k_pos: [S] -> [T, H, D].
    Causal: query at position p sees keys at positions <= p. GQA: head h uses KV head h//(H/G)."""
    T, H, D = q.shape
    G = k.shape[1]
    idx = kv_head_of(H, G)                                # [H]
    k_h = k[:, idx, :]                                    # [S, H, D]
    v_h = v[:, idx, :]                                    # [S, H, D]
    scores = torch.einsum("thd,shd->hts", q, k_h) / math.sqrt(D)        # [H, T, S]
    visible = k_pos[None, :] <= q_pos[:, None]                          # [T, S]
    scores = scores.masked_fill(~visible[None, :, :], float("-inf"))
    p = torch.softmax(scores, dim=-1)                                   # [H, T, S]
    return torch.einsum("hts,shd->thd", p, v_h)                         # [T, H, D]


def silu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


# ---- KV cache ------------------------------------------------------------------------------------

@dataclass
class KVCache:
    """Per layer: keys (already rotated) and values, [S, G, D], plus their positions [S]."""
    k: List[Optional[torch.Tensor]] = field(default_factory=list)
    v: List[Optional[torch.Tensor]] = field(default_factory=list)
    pos: Optional[torch.Tensor] = None

    @property
    def length(self) -> int:
        return 0 if self.pos is None else int(self.pos.shape[0])


# ---- the model -----------------------------------------------------------------------------------

class LlamaModel:
    def __init__(self, cfg: ModelConfig, weights: Dict[str, np.ndarray],
                 dtype: torch.dtype = torch.float64):
        self.cfg = cfg
        self.dtype = dtype
        self.w = {n: torch.from_numpy(np.ascontiguousarray(a)).to(dtype)
                  for n, a in weights.items()}
        if cfg.tied_embeddings:
            self.w["output.weight"] = self.w["token_embd.weight"]

    @classmethod
    def from_gguf(cls, path: str, dtype: torch.dtype = torch.float64) -> "LlamaModel":
        with GGUFFile(path) as g:
            cfg = read_config(g)
            weights = load_weights(g, cfg, dtype=np.float64)
        return cls(cfg, weights, dtype)

    # one transformer block; x: [T, C], pos: [T]
    def block(self, i: int, x: torch.Tensor, pos: torch.Tensor,
              cache: Optional[KVCache], trace: Optional[list] = None) -> torch.Tensor:
        """trace, when given, receives this layer's {"q_raw", "k_raw"} (before RoPE) and
        {"k", "v"} (k after RoPE), each [T, heads, D], for the memory writer."""
        c, w, p = self.cfg, self.w, f"blk.{i}."
        T = x.shape[0]
        H, G, D = c.n_head, c.n_head_kv, c.head_dim

        # attention
        h = rms_norm(x, w[p + "attn_norm.weight"], c.rms_eps)          # [T, C]
        q = (h @ w[p + "attn_q.weight"].T).view(T, H, D)                # [T, H, D]
        k = (h @ w[p + "attn_k.weight"].T).view(T, G, D)                # [T, G, D]
        v = (h @ w[p + "attn_v.weight"].T).view(T, G, D)                # [T, G, D]
        cos, sin = rope_cos_sin(pos, c.n_rot, c.rope_theta, self.dtype)  # [T, n_rot/2]
        q_raw, k_raw = q, k
        q = rope(q, cos, sin)
        k = rope(k, cos, sin)
        if trace is not None:
            trace.append({"q_raw": q_raw, "k_raw": k_raw, "k": k, "v": v})
        if cache is not None:                       # append this call's keys/values
            if cache.k[i] is not None:
                k = torch.cat([cache.k[i], k], dim=0)                   # [S, G, D]
                v = torch.cat([cache.v[i], v], dim=0)
            cache.k[i], cache.v[i] = k, v
            k_pos = torch.cat([cache.pos, pos]) if cache.pos is not None else pos   # [S]
        else:
            k_pos = pos
        a = attention(q, k, v, pos, k_pos)                              # [T, H, D]
        x = x + a.reshape(T, H * D) @ w[p + "attn_output.weight"].T     # [T, C]

        # gated MLP (SwiGLU)
        h = rms_norm(x, w[p + "ffn_norm.weight"], c.rms_eps)           # [T, C]
        g = silu(h @ w[p + "ffn_gate.weight"].T)                        # [T, F]
        u = h @ w[p + "ffn_up.weight"].T                                # [T, F]
        x = x + (g * u) @ w[p + "ffn_down.weight"].T                    # [T, C]
        return x

    def _run(self, tokens, pos: torch.Tensor, cache: Optional[KVCache]) -> torch.Tensor:
        c, w = self.cfg, self.w
        tokens = torch.as_tensor(list(tokens), dtype=torch.long)        # [T]
        if tokens.numel() == 0:
            raise ValueError("no tokens")
        if int(tokens.min()) < 0 or int(tokens.max()) >= c.n_vocab:
            raise ValueError(f"token id out of range 0..{c.n_vocab - 1}")
        x = w["token_embd.weight"][tokens]                              # [T, C]
        for i in range(c.n_layer):
            x = self.block(i, x, pos, cache)
        if cache is not None:
            cache.pos = torch.cat([cache.pos, pos]) if cache.pos is not None else pos
        x = rms_norm(x, w["output_norm.weight"], c.rms_eps)            # [T, C]
        return x @ w["output.weight"].T                                 # [T, V]

    @torch.no_grad()
    def forward(self, tokens, start_pos: int = 0) -> torch.Tensor:
        """Whole-sequence causal forward, no cache. tokens: T ids -> logits [T, V]."""
        pos = torch.arange(start_pos, start_pos + len(tokens))
        return self._run(tokens, pos, None)

    @torch.no_grad()
    def encode_layers(self, tokens, n_layers: int) -> List[Dict[str, torch.Tensor]]:
        """Causal forward of tokens at positions 0..T-1 through the first n_layers only (no
        logits). Returns per layer {"q_raw": [T, H, D], "k_raw": [T, G, D]} (before RoPE) and
        {"k": [T, G, D] (after RoPE), "v": [T, G, D]}."""
        c, w = self.cfg, self.w
        if not 0 < n_layers <= c.n_layer:
            raise ValueError(f"n_layers {n_layers} outside 1..{c.n_layer}")
        tokens = torch.as_tensor(list(tokens), dtype=torch.long)        # [T]
        if tokens.numel() == 0:
            raise ValueError("no tokens")
        if int(tokens.min()) < 0 or int(tokens.max()) >= c.n_vocab:
            raise ValueError(f"token id out of range 0..{c.n_vocab - 1}")
        pos = torch.arange(tokens.numel())
        x = w["token_embd.weight"][tokens]                              # [T, C]
        trace: list = []
        for i in range(n_layers):
            x = self.block(i, x, pos, None, trace)
        return trace

    def new_cache(self) -> KVCache:
        L = self.cfg.n_layer
        return KVCache(k=[None] * L, v=[None] * L, pos=None)

    @torch.no_grad()
    def forward_cached(self, tokens, cache: KVCache) -> torch.Tensor:
        """Process tokens at positions cache.length.., attending to everything cached so far,
        and append their keys/values. Returns logits [T, V] for these tokens."""
        pos = torch.arange(cache.length, cache.length + len(tokens))
        return self._run(tokens, pos, cache)

    @torch.no_grad()
    def decode(self, tokens, prefill: int = 0) -> torch.Tensor:
        """Prefill the first `prefill` tokens in one call, then feed the rest one at a time
        through the KV cache. Returns logits [T, V] for all tokens."""
        cache = self.new_cache()
        out = []
        if prefill > 0:
            out.append(self.forward_cached(tokens[:prefill], cache))
        for t in tokens[prefill:]:
            out.append(self.forward_cached([t], cache))
        return torch.cat(out, dim=0)
