"""PyTorch oracle for m3's stage-1 training (src/train, include/m3/train.h).

Two modes:

  goldens (default)
      Loads a GGUF written by m3, builds the same model as trainable float64 torch tensors,
      checks its batched forward against model.py's LlamaModel (the inference oracle), then for
      fixed tokens/targets writes under --out:
        train.json        tokens, targets, hyperparameters, the loss, per-step losses of --steps
                          AdamW steps, and the index of grads.npy (name, shape, offset, size)
        grads.npy         every parameter's gradient after one forward+backward, concatenated
                          in TrainableModel's order (init_weights' order), <f4
  --bench
      Times float32 training steps (forward, backward, AdamW) of a random model of the given
      shape on --threads threads and prints one JSON line with tokens/s. bench/bench_train runs
      it next to m3's own number.

The model (Llama family, as model.py): x = embed[tokens]; per layer
  x += attention(rope(rmsnorm(x)·Wq), rope(rmsnorm(x)·Wk), rmsnorm(x)·Wv)·Wo   (causal, GQA h→h//(H/G))
  x += (silu(rmsnorm(x)·Wg) * (rmsnorm(x)·Wu))·Wd
loss = mean cross-entropy of (rmsnorm(x)·output_norm)·Woutᵀ over targets != -1.

Optimizer: torch.optim.AdamW (decoupled decay, bias-corrected) with two parameter groups — norm
weights (1-D) and, unless --decay-embeddings, token_embd get no decay —, clip_grad_norm_ before
each step, and the warmup-stable-decay schedule written out below independently of m3's.

Always run with /usr/bin/python3 (Debian's torch 1.13).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Dict, List

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_reader import GGUFFile, ModelConfig, load_weights, read_config  # noqa: E402
from model import LlamaModel, rms_norm, rope, rope_cos_sin  # noqa: E402


def param_order(cfg: ModelConfig) -> List[str]:
    """TrainableModel's (= m3 init_weights') tensor order."""
    names = ["token_embd.weight"]
    for i in range(cfg.n_layer):
        names += [f"blk.{i}.{w}.weight" for w in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                                   "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")]
    names.append("output_norm.weight")
    if not cfg.tied_embeddings:
        names.append("output.weight")
    return names


class TrainableLlama:
    """The model of model.py on a batch [B, T], with parameters that require grad."""

    def __init__(self, cfg: ModelConfig, weights: Dict[str, np.ndarray], dtype=torch.float64):
        self.cfg, self.dtype = cfg, dtype
        self.names = param_order(cfg)
        self.p = {n: torch.tensor(np.ascontiguousarray(weights[n]), dtype=dtype, requires_grad=True)
                  for n in self.names}

    def parameters(self):
        return [self.p[n] for n in self.names]

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: [B, T] -> logits [B, T, V]; positions 0..T-1 in every sequence."""
        c, w = self.cfg, self.p
        B, T = tokens.shape
        H, G, D = c.n_head, c.n_head_kv, c.head_dim
        cos, sin = rope_cos_sin(torch.arange(T), c.n_rot, c.rope_theta, self.dtype)   # [T, D/2]
        mask = torch.ones(T, T, dtype=torch.bool).tril()                              # [T, S]
        x = w["token_embd.weight"][tokens]                                            # [B, T, C]
        for i in range(c.n_layer):
            p = f"blk.{i}."
            h = rms_norm(x, w[p + "attn_norm.weight"], c.rms_eps)
            q = rope((h @ w[p + "attn_q.weight"].T).view(B, T, H, D), cos, sin)      # [B, T, H, D]
            k = rope((h @ w[p + "attn_k.weight"].T).view(B, T, G, D), cos, sin)      # [B, T, G, D]
            v = (h @ w[p + "attn_v.weight"].T).view(B, T, G, D)                      # [B, T, G, D]
            q = q.transpose(1, 2)                                                     # [B, H, T, D]
            k = k.transpose(1, 2).repeat_interleave(H // G, dim=1)                    # [B, H, S, D]
            v = v.transpose(1, 2).repeat_interleave(H // G, dim=1)                    # [B, H, S, D]
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(D)                         # [B, H, T, S]
            att = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
            a = (att @ v).transpose(1, 2).reshape(B, T, H * D)                        # [B, T, H·D]
            x = x + a @ w[p + "attn_output.weight"].T
            h = rms_norm(x, w[p + "ffn_norm.weight"], c.rms_eps)
            g = h @ w[p + "ffn_gate.weight"].T                                        # [B, T, F]
            u = h @ w[p + "ffn_up.weight"].T
            x = x + (g * torch.sigmoid(g) * u) @ w[p + "ffn_down.weight"].T
        x = rms_norm(x, w["output_norm.weight"], c.rms_eps)
        out = w["token_embd.weight"] if c.tied_embeddings else w["output.weight"]
        return x @ out.T                                                              # [B, T, V]

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.logits(tokens)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                 ignore_index=-1)


def wsd_lr(step: int, peak: float, floor: float, warmup: int, total: int, decay_fraction: float) -> float:
    """Warmup-stable-decay: linear warmup to peak ((s+1)/warmup, never 0), constant, then a linear
    decay over the last round(decay_fraction·total) steps that reaches `floor` on the last step."""
    decay_start = max(warmup, total - int(round(decay_fraction * total)))
    if step < warmup:
        return peak * (step + 1) / warmup
    if step < decay_start:
        return peak
    if step < total:
        return peak + (floor - peak) * (step + 1 - decay_start) / (total - decay_start)
    return floor


def make_optimizer(model: TrainableLlama, a) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for n in model.names:
        p = model.p[n]
        skip = p.dim() == 1 or (n == "token_embd.weight" and not a.decay_embeddings)
        (no_decay if skip else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=a.lr, betas=(a.beta1, a.beta2), eps=a.eps)


def fixed_batch(B: int, T: int, V: int, seed: int):
    """Deterministic token ids; targets are the next tokens, a few set to -1 (ignored)."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(0, V, size=(B, T + 1)).astype(np.int64)
    tokens, targets = ids[:, :T].copy(), ids[:, 1:].copy()
    targets[0, min(5, T - 1)] = -1
    targets[B - 1, T - 1] = -1
    if B > 1:
        targets[1, min(17, T - 1)] = -1
    return tokens, targets


def goldens(a) -> None:
    torch.set_num_threads(a.threads)
    with GGUFFile(a.model) as g:
        cfg = read_config(g)
        weights = load_weights(g, cfg, dtype=np.float64)
        fingerprint = g.metadata.get("m3.fingerprint", "")
    model = TrainableLlama(cfg, weights)
    tokens, targets = fixed_batch(a.B, a.T, cfg.n_vocab, a.seed)
    tk, tg = torch.from_numpy(tokens), torch.from_numpy(targets)

    # The batched trainable forward must be the inference oracle's forward.
    ref = LlamaModel(cfg, weights)
    with torch.no_grad():
        mine = model.logits(tk)
    for b in range(a.B):
        want = ref.forward(tokens[b].tolist())
        err = float((mine[b] - want).abs().max())
        if err > 1e-10:
            raise SystemExit(f"batched forward differs from model.py by {err} on sequence {b}")

    loss = model.loss(tk, tg)
    loss.backward()
    index, chunks, offset = [], [], 0
    for n in model.names:
        gr = model.p[n].grad.detach().numpy()
        index.append({"name": n, "shape": list(gr.shape), "offset": offset, "size": int(gr.size)})
        chunks.append(gr.reshape(-1))
        offset += int(gr.size)
    grads = np.concatenate(chunks).astype("<f4")

    # --steps AdamW steps on the same batch, from the same weights.
    model = TrainableLlama(cfg, weights)
    opt = make_optimizer(model, a)
    step_losses, grad_norms, lrs = [], [], []
    for s in range(a.steps):
        lr = wsd_lr(s, a.lr, a.min_lr, a.warmup, a.steps, a.decay_fraction)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        l = model.loss(tk, tg)
        l.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        step_losses.append(float(l))
        grad_norms.append(float(norm))
        lrs.append(lr)
    with torch.no_grad():
        final_loss = float(model.loss(tk, tg))

    os.makedirs(a.out, exist_ok=True)
    np.save(os.path.join(a.out, "grads.npy"), grads)
    doc = {
        "model": os.path.basename(a.model), "fingerprint": fingerprint,
        "B": a.B, "T": a.T, "seed": a.seed,
        "tokens": tokens.tolist(), "targets": targets.tolist(),
        "loss": float(loss),
        "adamw": {"lr": a.lr, "min_lr": a.min_lr, "warmup": a.warmup, "total": a.steps,
                  "decay_fraction": a.decay_fraction, "beta1": a.beta1, "beta2": a.beta2, "eps": a.eps,
                  "weight_decay": a.weight_decay, "decay_embeddings": a.decay_embeddings, "clip": a.clip},
        "step_lrs": lrs, "step_losses": step_losses, "grad_norms": grad_norms, "final_loss": final_loss,
        "tensors": index,
    }
    with open(os.path.join(a.out, "train.json"), "w") as f:
        json.dump(doc, f, indent=1)
    print(f"loss {float(loss):.8f}; {a.steps} steps: {step_losses[0]:.6f} -> {final_loss:.6f}; "
          f"{grads.size} gradients -> {a.out}")


def bench(a) -> None:
    torch.set_num_threads(a.threads)
    cfg = ModelConfig(arch="memory3", n_ctx=a.T, n_embd=a.dim, n_layer=a.layers, n_ff=a.ffn, n_head=a.heads,
                      n_head_kv=a.kv_heads, head_dim=a.head_dim, rms_eps=1e-5, rope_theta=10000.0,
                      n_vocab=a.vocab, n_rot=a.head_dim, tied_embeddings=False)
    rng = np.random.RandomState(0)
    C, HD, GD = a.dim, a.heads * a.head_dim, a.kv_heads * a.head_dim
    shapes = {"token_embd.weight": (a.vocab, C), "output_norm.weight": (C,), "output.weight": (a.vocab, C)}
    for i in range(a.layers):
        p = f"blk.{i}."
        shapes.update({p + "attn_norm.weight": (C,), p + "attn_q.weight": (HD, C), p + "attn_k.weight": (GD, C),
                       p + "attn_v.weight": (GD, C), p + "attn_output.weight": (C, HD), p + "ffn_norm.weight": (C,),
                       p + "ffn_gate.weight": (a.ffn, C), p + "ffn_up.weight": (a.ffn, C),
                       p + "ffn_down.weight": (C, a.ffn)})
    weights = {n: (np.ones(s) if len(s) == 1 else 0.02 * rng.standard_normal(s)).astype(np.float32)
               for n, s in shapes.items()}
    model = TrainableLlama(cfg, weights, dtype=torch.float32)
    opt = make_optimizer(model, a)
    tk = torch.from_numpy(rng.randint(0, a.vocab, size=(a.B, a.T)).astype(np.int64))
    tg = torch.from_numpy(rng.randint(0, a.vocab, size=(a.B, a.T)).astype(np.int64))

    def step():
        opt.zero_grad()
        l = model.loss(tk, tg)
        l.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()

    step()  # warm-up
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    best, med = min(times), sorted(times)[len(times) // 2]
    print(json.dumps({"torch": torch.__version__, "threads": a.threads, "B": a.B, "T": a.T,
                      "ms_per_step_median": 1e3 * med, "ms_per_step_best": 1e3 * best,
                      "tokens_per_s": a.B * a.T / med}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="GGUF written by m3 (goldens mode)")
    ap.add_argument("--out", default="tests/data/golden/train")
    ap.add_argument("--B", type=int, default=2)
    ap.add_argument("--T", type=int, default=24)
    ap.add_argument("--seed", type=int, default=20240701, help="token ids")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    ap.add_argument("--min-lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--decay-fraction", type=float, default=0.3)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.95)
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--decay-embeddings", action="store_true")
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bench", action="store_true")
    for name, default in (("layers", 4), ("dim", 128), ("heads", 4), ("kv-heads", 2), ("head-dim", 32),
                          ("ffn", 384), ("vocab", 1024)):
        ap.add_argument("--" + name, type=int, default=default, help="bench model shape")
    a = ap.parse_args()
    if a.bench:
        bench(a)
    else:
        if not a.model:
            ap.error("--model is required to write goldens")
        goldens(a)


if __name__ == "__main__":
    main()
