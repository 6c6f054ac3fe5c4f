#!/usr/bin/python3
"""Reference memory-augmented forward: the logits of a prompt read with explicit memories, in
float64, from the spec alone (memory3-spec.md §3, decisions.md "Reading memories").

    /usr/bin/python3 tools/reference/memory_forward.py --model M.gguf --text TEXT.txt --out DIR

What it computes:
    prefix = BOS + encode("Reference:") (p tokens) at positions 0..p-1, run through all layers
    references: token slices of TEXT; each one's memory is written by memory_writer.write_memory
    (positions p..p+127, post-RoPE keys, values; K kept tokens per (memory layer, KV head))
    context = BOS + encode(text) (T tokens), token t at position p + reference_length + t, in
    chunks of chunk_length tokens; chunk c reads a fixed list of references (chunks.json)
    every layer, query t attends to:   the prefix keys (all)
                                       the memory keys of t's chunk   (memory layers only)
                                       context keys s <= t            (causal)
    one softmax over all of them; memories never enter the context's KV.

Outputs under DIR: runtime.json (prompt tokens, per-chunk reference indices, prefix, shape),
memories.{positions,keys,values}.npy [R, Lm, G, K(, D)] (the references' memories, int32/float32),
logits.npy [T, V] float32. The forward code is model.py's ops; nothing is shared with the C++ engine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_reader import GGUFFile  # noqa: E402
from memory_writer import memory_settings, prefix_tokens, save_npy, sentencepiece_of, write_memory  # noqa: E402
from model import LlamaModel, kv_head_of, rms_norm, rope, rope_cos_sin, silu  # noqa: E402

# Which references each chunk reads (indices into the reference list); varied counts, short
# references (< K tokens) included, one chunk without memories.
CHUNK_REFS = [[0, 1, 2, 3, 4], [5, 1], [], [6, 7, 0]]
REF_LENGTHS = [128, 5, 40, 3, 77, 128, 16, 64]


def forward_with_memories(model: LlamaModel, prefix, context, memories, chunk_refs, window: int,
                          chunk_len: int, Lm: int):
    """-> logits [T, V]. memories: list of (positions [Lm,G,K], keys, values [Lm,G,K,D])."""
    c, w = model.cfg, model.w
    H, G, D = c.n_head, c.n_head_kv, c.head_dim
    p, T = len(prefix), len(context)
    # the prefix, alone, through every layer: its keys and values are a constant of the model
    cache = model.new_cache()
    model.forward_cached(prefix, cache)
    q_pos = torch.arange(T) + p + window                       # [T]
    chunk_of = torch.arange(T) // chunk_len                    # [T]
    n_chunks = int(chunk_of.max()) + 1
    # per chunk and memory layer: keys/values [n_c, G, D] (row j of head g = head g's j-th token)
    mem_kv = []
    for ch in range(n_chunks):
        refs = chunk_refs[ch] if ch < len(chunk_refs) else []
        per_layer = []
        for l in range(Lm):
            ks, vs = [], []
            for r in refs:
                pos, k, v = memories[r]
                kept = int((pos[l, 0] >= 0).sum())
                ks.append(torch.from_numpy(k[l, :, :kept, :]).permute(1, 0, 2))   # [kept, G, D]
                vs.append(torch.from_numpy(v[l, :, :kept, :]).permute(1, 0, 2))
            if ks:
                per_layer.append((torch.cat(ks).to(torch.float64), torch.cat(vs).to(torch.float64)))
            else:
                per_layer.append((torch.zeros(0, G, D, dtype=torch.float64),) * 2)
        mem_kv.append(per_layer)

    idx = kv_head_of(H, G)
    x = w["token_embd.weight"][torch.as_tensor(context)]       # [T, C]
    for i in range(c.n_layer):
        pre = f"blk.{i}."
        h = rms_norm(x, w[pre + "attn_norm.weight"], c.rms_eps)
        q = (h @ w[pre + "attn_q.weight"].T).view(T, H, D)
        k = (h @ w[pre + "attn_k.weight"].T).view(T, G, D)
        v = (h @ w[pre + "attn_v.weight"].T).view(T, G, D)
        cos, sin = rope_cos_sin(q_pos, c.n_rot, c.rope_theta, model.dtype)
        q = rope(q, cos, sin)
        k = rope(k, cos, sin)
        # keys: prefix | memories of every chunk | context, with a per-query visibility mask
        keys = [cache.k[i]]
        vals = [cache.v[i]]
        visible = [torch.ones(T, p, dtype=torch.bool)]
        if i < Lm:
            for ch in range(n_chunks):
                mk, mv = mem_kv[ch][i]
                keys.append(mk)
                vals.append(mv)
                visible.append((chunk_of == ch)[:, None].expand(T, mk.shape[0]))
        keys.append(k)
        vals.append(v)
        visible.append(torch.arange(T)[None, :] <= torch.arange(T)[:, None])
        K_all = torch.cat(keys)[:, idx, :]                     # [S, H, D]
        V_all = torch.cat(vals)[:, idx, :]
        vis = torch.cat(visible, dim=1)                        # [T, S]
        s = torch.einsum("thd,shd->hts", q, K_all) / math.sqrt(D)
        s = s.masked_fill(~vis[None], float("-inf"))
        a = torch.einsum("hts,shd->thd", torch.softmax(s, dim=-1), V_all)
        x = x + a.reshape(T, H * D) @ w[pre + "attn_output.weight"].T
        h = rms_norm(x, w[pre + "ffn_norm.weight"], c.rms_eps)
        x = x + (silu(h @ w[pre + "ffn_gate.weight"].T) * (h @ w[pre + "ffn_up.weight"].T)) @ w[pre + "ffn_down.weight"].T
    x = rms_norm(x, w["output_norm.weight"], c.rms_eps)
    return x @ w["output.weight"].T


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--text", required=True, help="plain text: references and the prompt are cut from it")
    ap.add_argument("--out", required=True)
    ap.add_argument("--prompt-tokens", type=int, default=200, help="context tokens (BOS included)")
    args = ap.parse_args(argv)

    with GGUFFile(args.model) as g:
        mem = memory_settings(g)
        sp = sentencepiece_of(g)
        prefix = prefix_tokens(sp, mem["prefix_text"])
        chunk_len = int(g.metadata.get("memory3.memory.chunk_length", 64))
    model = LlamaModel.from_gguf(args.model, torch.float64)
    Lm, K = mem["layers"], mem["kept"]
    with open(args.text, encoding="utf-8") as f:
        words = f.read().split()
    ids = list(sp.encode(" ".join(words[:4000])))
    refs, at = [], 500
    for n in REF_LENGTHS:
        refs.append(ids[at:at + n])
        at += n + 13
    context = [sp.bos_id()] + ids[:args.prompt_tokens - 1]
    window = mem["reference_length"]
    if len(prefix) + window + len(context) > model.cfg.n_ctx:
        raise SystemExit(f"{args.model}: context length {model.cfg.n_ctx} is too short for the prompt")
    memories = []
    for r in refs:
        pos, k, v, _, _ = write_memory(model, prefix, r, Lm, K)
        memories.append((pos, k, v))
    with torch.no_grad():
        logits = forward_with_memories(model, prefix, context, memories, CHUNK_REFS, window, chunk_len, Lm)
    os.makedirs(args.out, exist_ok=True)
    save_npy(os.path.join(args.out, "memories.positions.npy"), np.stack([m[0] for m in memories]), "<i4")
    save_npy(os.path.join(args.out, "memories.keys.npy"), np.stack([m[1] for m in memories]), "<f4")
    save_npy(os.path.join(args.out, "memories.values.npy"), np.stack([m[2] for m in memories]), "<f4")
    save_npy(os.path.join(args.out, "logits.npy"), logits.numpy(), "<f4")
    index = {"model": os.path.basename(args.model), "prefix": prefix, "prompt": context,
             "references": refs, "chunk_refs": CHUNK_REFS, "chunk_length": chunk_len, "window": window,
             "shape": {"layers": Lm, "kv_heads": model.cfg.n_head_kv, "kept": K, "head_dim": model.cfg.head_dim}}
    with open(os.path.join(args.out, "runtime.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}: prompt {len(context)} tokens in {(len(context) + chunk_len - 1) // chunk_len} chunks, "
          f"{len(refs)} memories, logits {tuple(logits.shape)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
