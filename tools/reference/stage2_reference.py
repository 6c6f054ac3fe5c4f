#!/usr/bin/python3
"""PyTorch oracle for m3's stage-2 (memory-augmented) training: loss and gradients, float64.

    # goldens (tools/make-stage2-goldens.sh)
    /usr/bin/python3 tools/reference/stage2_reference.py --model tests/data/test-rt.gguf \\
        --out tests/data/golden/stage2
    # self-checks: finite differences, gradient into the reference path
    /usr/bin/python3 tools/reference/stage2_reference.py --model tests/data/test-rt.gguf --check

What is computed (memory3-spec.md §2-§4.2, decisions.md "Writing a memory", "Reading memories",
"Training"), every weight a float64 parameter that requires grad:
  1. prefix P = BOS + encode("Reference:") (p tokens) at positions 0..p-1, causal, through ALL L
     layers with the current weights: per layer its post-RoPE keys Kp_l and values Vp_l [p, G, D].
  2. each reference r (n tokens, no BOS), token j at position p+j, through layers 0..Lm-1 only; at
     layer l its queries attend to Kp_l/Vp_l plus its own causal keys, one softmax. Importance at
     memory layer l, KV head g: w_j = sum_i sum_{h in g's group} exp(q_raw[i,h].k_raw[j,g]/sqrt(D) - c)
     (un-rotated, no mask, reference rows only, c = max score of (l, g)); keep the top min(K, n)
     (ties: lower j first) in ascending j. The indices are computed without gradient; the kept
     post-RoPE keys and values are differentiable functions of the weights (through the prefix too).
  3. context: B sequences of T tokens, token t at position p + W + t (W = reference_length), chunk
     c = rows [64c, 64c+64). At memory layers, query t (chunk c of sequence b) attends in ONE softmax
     to: the prefix keys, the kept keys of every reference in chunk_refs[b][c] (GQA: query head h
     reads KV head h // (H/G), whose kept tokens are head g's own), and its own causal keys s <= t.
     Other layers: prefix + causal own keys. Then Wo, residual, SwiGLU MLP, final norm, output.
  4. loss = mean cross-entropy over targets != -1; gradients of it for every parameter.

Outputs under --out:
  grads.npy    <f4 [n_params], .npy v1.0: every parameter's gradient, flattened (C order, GGUF
               layouts: [out, in] for matrices) and concatenated in TrainableModel's order
               (train_reference.param_order: token_embd, per layer attn_norm, attn_q, attn_k,
               attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down, then output_norm, output),
               the same layout as tests/data/golden/train/grads.npy; stage2.json "tensors" indexes it.
  stage2.json  model, fingerprint, B, T, seed, prefix, reference_length, chunk_length,
               memory_layers, kept, tokens [B][T], targets [B][T] (-1 = ignored), references
               [R][n_r], chunk_refs [B][n_chunks][...] (indices into references), loss (float64),
               min_selection_gap, selection [R] {reference, n_tokens, kept [Lm][G][min(K, n)],
               gaps [Lm][G] (null when n <= K)}, no_memories {chunk_refs (all empty), loss,
               stage1_prefix_loss}, checks {...}, tensors [{name, shape, offset, size}].
The ops are model.py's
(rms_norm, rope, rope_cos_sin, attention, silu) and train_reference.py's parameter set/order; the
forward is checked against memory_forward.py + memory_writer.py (the inference oracles) and the
no-memory case against model.py with a KV cache, before anything is written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_reader import GGUFFile, load_weights, read_config  # noqa: E402
from memory_forward import forward_with_memories  # noqa: E402
from memory_writer import equal_rows, memory_settings, prefix_tokens, sentencepiece_of, write_memory  # noqa: E402
from model import LlamaModel, attention, kv_head_of, rms_norm, rope, rope_cos_sin, silu  # noqa: E402
from train_reference import TrainableLlama  # noqa: E402

# The golden case. References: lengths below K (3, 5), one at K+4, mid, full 128. Chunk lists:
# counts 0, 1, 3 and 5; references 1 and 2 read by two chunks (across sequences), 6 read twice in
# sequence 1; the two sequences read different lists.
REF_LENGTHS = [40, 3, 128, 5, 12, 128, 77]
CHUNK_REFS = [[[0], [1, 2, 3], []],
              [[4, 5, 6, 1, 2], [], [6, 0]]]
MIN_GAP = 1e-3     # every selection boundary must be at least this far from a tie (float32 engines)


class Stage2Model(TrainableLlama):
    """TrainableLlama's parameters (same names, same order) with the stage-2 forward."""

    def __init__(self, cfg, weights, mem):
        super().__init__(cfg, weights, torch.float64)
        self.Lm, self.K = mem["layers"], mem["kept"]
        self.W, self.chunk = mem["reference_length"], mem["chunk_length"]

    # -- pieces of one block ----------------------------------------------------------------------
    def qkv(self, i, x, pos):
        """x: [T, C], pos: [T] -> q_raw [T,H,D], k_raw [T,G,D] (before RoPE), q, k (after), v."""
        c, w, pre = self.cfg, self.p, f"blk.{i}."
        T, H, G, D = x.shape[0], c.n_head, c.n_head_kv, c.head_dim
        h = rms_norm(x, w[pre + "attn_norm.weight"], c.rms_eps)
        q_raw = (h @ w[pre + "attn_q.weight"].T).view(T, H, D)
        k_raw = (h @ w[pre + "attn_k.weight"].T).view(T, G, D)
        v = (h @ w[pre + "attn_v.weight"].T).view(T, G, D)
        cos, sin = rope_cos_sin(pos, c.n_rot, c.rope_theta, self.dtype)
        return q_raw, k_raw, rope(q_raw, cos, sin), rope(k_raw, cos, sin), v

    def rest(self, i, x, a):
        """x + a Wo, then the SwiGLU MLP with its residual. a: [T, H, D]."""
        c, w, pre = self.cfg, self.p, f"blk.{i}."
        x = x + a.reshape(x.shape[0], -1) @ w[pre + "attn_output.weight"].T
        h = rms_norm(x, w[pre + "ffn_norm.weight"], c.rms_eps)
        return x + (silu(h @ w[pre + "ffn_gate.weight"].T) * (h @ w[pre + "ffn_up.weight"].T)) \
            @ w[pre + "ffn_down.weight"].T

    # -- 1. prefix --------------------------------------------------------------------------------
    def prefix_kv(self, prefix):
        """-> [(Kp_l, Vp_l)] for every layer, [p, G, D] each, and their positions [p]."""
        pos = torch.arange(len(prefix))
        x = self.p["token_embd.weight"][torch.as_tensor(prefix)]
        kv = []
        for i in range(self.cfg.n_layer):
            _, _, q, k, v = self.qkv(i, x, pos)
            kv.append((k, v))
            x = self.rest(i, x, attention(q, k, v, pos, pos))
        return kv, pos

    # -- 2. writing one reference -----------------------------------------------------------------
    def write(self, pkv, ppos, ref):
        """-> mem: per memory layer (keys, values) [k, G, D] (row j of head g = head g's j-th kept
        token), idx [Lm][G][k] (ints), gaps [Lm][G] (relative gap K-th vs (K+1)-th, None if n <= K)."""
        c = self.cfg
        H, G, D = c.n_head, c.n_head_kv, c.head_dim
        group, n, p = H // G, len(ref), len(ppos)
        pos = torch.arange(p, p + n)
        x = self.p["token_embd.weight"][torch.as_tensor(ref)]
        mem, idx, gaps = [], [], []
        for l in range(self.Lm):
            q_raw, k_raw, q, k, v = self.qkv(l, x, pos)
            li, lg, ks, vs = [], [], [], []
            for g in range(G):
                qg = q_raw.detach()[:, g * group:(g + 1) * group, :]                    # [n, group, D]
                kg = k_raw.detach()[:, g, :]                                           # [n, D]
                s = torch.einsum("ihd,jd->hij", qg, kg) / math.sqrt(D)                 # [group, n, n]
                w = torch.exp(s - s.max()).sum(dim=(0, 1)).numpy()                     # [n]
                first = equal_rows(kg).to(torch.int8).argmax(dim=1).numpy()   # equal keys: equal w
                w = w[first]
                order = np.argsort(-w, kind="stable")        # ties: lower j first
                keep = np.sort(order[:self.K])
                li.append([int(j) for j in keep])
                if n > self.K:
                    a, b = order[self.K - 1], order[self.K]
                    lg.append(float((w[a] - w[b]) / w[a]))
                else:
                    lg.append(None)
                kt = torch.as_tensor(keep)
                ks.append(k[kt, g, :])                                                 # [k, D]
                vs.append(v[kt, g, :])
            mem.append((torch.stack(ks, dim=1), torch.stack(vs, dim=1)))              # [k, G, D]
            idx.append(li)
            gaps.append(lg)
            if l + 1 < self.Lm:                  # hidden states past the last memory layer unused
                kk = torch.cat([pkv[l][0], k])
                vv = torch.cat([pkv[l][1], v])
                x = self.rest(l, x, attention(q, kk, vv, pos, torch.cat([ppos, pos])))
        return mem, idx, gaps

    # -- 3. one context sequence ------------------------------------------------------------------
    def seq_logits(self, pkv, mems, tokens, chunk_refs):
        """tokens: [T] ids; chunk_refs: per chunk, indices into mems -> logits [T, V]."""
        c, w = self.cfg, self.p
        H, G, D = c.n_head, c.n_head_kv, c.head_dim
        T, p = len(tokens), pkv[0][0].shape[0]
        pos = torch.arange(T) + p + self.W
        chunk_of = torch.arange(T) // self.chunk
        hidx = kv_head_of(H, G)
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        x = w["token_embd.weight"][torch.as_tensor(tokens)]
        for i in range(c.n_layer):
            _, _, q, k, v = self.qkv(i, x, pos)
            keys, vals, vis = [pkv[i][0]], [pkv[i][1]], [torch.ones(T, p, dtype=torch.bool)]
            if i < self.Lm:
                for ch in range(int(chunk_of.max()) + 1):
                    for r in (chunk_refs[ch] if ch < len(chunk_refs) else []):
                        mk, mv = mems[r][i]
                        keys.append(mk)
                        vals.append(mv)
                        vis.append((chunk_of == ch)[:, None].expand(T, mk.shape[0]))
            keys.append(k)
            vals.append(v)
            vis.append(causal)
            Ka = torch.cat(keys)[:, hidx, :]                                  # [S, H, D]
            Va = torch.cat(vals)[:, hidx, :]
            s = torch.einsum("thd,shd->hts", q, Ka) / math.sqrt(D)            # [H, T, S]
            s = s.masked_fill(~torch.cat(vis, dim=1)[None], float("-inf"))
            a = torch.einsum("hts,shd->thd", torch.softmax(s, dim=-1), Va)    # [T, H, D]
            x = self.rest(i, x, a)
        x = rms_norm(x, w["output_norm.weight"], c.rms_eps)
        out = w["token_embd.weight"] if c.tied_embeddings else w["output.weight"]
        return x @ out.T

    # -- 4. the loss ------------------------------------------------------------------------------
    def forward(self, prefix, tokens, targets, refs, chunk_refs):
        """-> loss (scalar), logits [B, T, V], {reference read by some chunk: (idx, gaps)}."""
        pkv, ppos = self.prefix_kv(prefix)
        used = sorted({r for seq in chunk_refs for ch in seq for r in ch})
        mems, sel = {}, {}
        for r in range(len(refs)):
            if r in used:
                mems[r], idx, gaps = self.write(pkv, ppos, refs[r])
                sel[r] = (idx, gaps)
        logits = torch.stack([self.seq_logits(pkv, mems, tokens[b], chunk_refs[b])
                              for b in range(len(tokens))])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 torch.as_tensor(targets).reshape(-1), ignore_index=-1)
        return loss, logits, sel


# ---- the case -----------------------------------------------------------------------------------

def make_case(seed, B, T, V):
    """Context ids uniform in 3..V-1; targets = the next ids, a few set to -1 (ignored)."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, V, size=(B, T + 1))
    tokens, targets = ids[:, :T].copy(), ids[:, 1:].copy()
    targets[0, 5] = -1
    targets[0, 100] = -1
    targets[B - 1, T - 1] = -1
    if B > 1:
        targets[1, 63] = -1
    return tokens.tolist(), targets.tolist()


def load(model_path):
    with GGUFFile(model_path) as g:
        cfg = read_config(g)
        weights = load_weights(g, cfg, dtype=np.float64)
        mem = memory_settings(g)
        mem["chunk_length"] = int(g.metadata.get("memory3.memory.chunk_length", 64))
        prefix = prefix_tokens(sentencepiece_of(g), mem["prefix_text"])
        fingerprint = g.metadata.get("m3.fingerprint", "")
    return cfg, weights, mem, prefix, fingerprint


def run_margins(model, pkv, ppos, L, n):
    """For every id v in 3..V-1: how far above a run of n-1 copies of id L it would rank if put at
    the end of that run, in a linearized importance (w_j ~ sum_i (1 + s_ij - c) when the scores are
    small, so w ranks as mean_i q_raw_i . k_raw_j), min over the (memory layer, KV head) pairs.
    Only a heuristic for make_references; the real selection is checked afterwards."""
    c = model.cfg
    H, G, D = c.n_head, c.n_head_kv, c.head_dim
    group, hidx, p = H // G, kv_head_of(H, G), len(ppos)
    allv = torch.arange(3, c.n_vocab)
    pos = torch.arange(p, p + n - 1)
    x_r = model.p["token_embd.weight"][torch.full((n - 1,), L)]                       # the run
    x_c = model.p["token_embd.weight"][allv]                                         # candidates
    cpos = torch.full((len(allv),), p + n - 1)
    out = []
    for l in range(model.Lm):
        qr_raw, kr_raw, qr, kr, vr = model.qkv(l, x_r, pos)
        qc_raw, kc_raw, qc, kc, vc = model.qkv(l, x_c, cpos)
        for g in range(G):
            qbar = qr_raw[:, g * group:(g + 1) * group].mean(0).sum(0)              # [D]
            out.append(kc_raw[:, g] @ qbar - (kr_raw[:, g] @ qbar).max())
        if l + 1 < model.Lm:
            keys, vals = torch.cat([pkv[l][0], kr]), torch.cat([pkv[l][1], vr])
            x_r = model.rest(l, x_r, attention(qr, keys, vals, pos, torch.cat([ppos, pos])))
            # each candidate attends to the prefix, the run and itself
            s_sh = torch.einsum("vhd,shd->vhs", qc, keys[:, hidx]) / math.sqrt(D)
            s_self = torch.einsum("vhd,vhd->vh", qc, kc[:, hidx]) / math.sqrt(D)
            pr = torch.softmax(torch.cat([s_sh, s_self[..., None]], -1), -1)
            a = torch.einsum("vhs,shd->vhd", pr[..., :-1], vals[:, hidx]) + pr[..., -1:] * vc[:, hidx]
            x_c = model.rest(l, x_c, a)
    return torch.stack(out).min(0).values.numpy()


def make_references(model, prefix, seed, lengths=REF_LENGTHS, tries=200):
    """References whose selection is far from a tie at every (memory layer, KV head).

    At this near-initialization model every token's importance lies within about +-0.4% of the
    mean, so a long reference of random ids has relative gaps between its K-th and (K+1)-th
    importance of ~1e-4, and no seed gives gaps > MIN_GAP everywhere. So:
      n <= K:      distinct random ids (everything is kept);
      K < n < 32:  the first draw of distinct random ids with every gap > MIN_GAP;
      n >= 32:     a random "weak" id L repeated, and the K ids that run_margins ranks highest above
                   a run of L, all shuffled; the first L for which every gap > MIN_GAP.
    (Long references therefore keep the same K positions at every (layer, head); the memory
    writer's own goldens cover varied selections.) Deterministic in `seed`."""
    c, K = model.cfg, model.K
    allv = np.arange(3, c.n_vocab)
    refs = []
    with torch.no_grad():
        pkv, ppos = model.prefix_kv(prefix)
        for r, n in enumerate(lengths):
            rng = np.random.RandomState(seed + 1000 * (r + 1))
            if n <= K:
                refs.append([int(t) for t in rng.choice(allv, size=n, replace=False)])
                continue
            for t in range(tries):
                if n < 32:
                    toks = [int(v) for v in rng.choice(allv, size=n, replace=False)]
                else:
                    L = int(rng.choice(allv))
                    margin = run_margins(model, pkv, ppos, L, n)
                    margin[L - 3] = -np.inf
                    toks = [int(v) + 3 for v in np.argsort(-margin, kind="stable")[:K]] + [L] * (n - K)
                    rng.shuffle(toks)
                gaps = model.write(pkv, ppos, toks)[2]
                if min(g for lg in gaps for g in lg) > MIN_GAP:
                    refs.append(toks)
                    break
            else:
                raise SystemExit(f"reference {r} (n={n}): no draw in {tries} has every gap > {MIN_GAP}")
    return refs


def self_check(cfg, weights, mem, prefix, tokens, refs, chunk_refs, sel, logits):
    """The no-grad forward against the inference oracles: kept indices against
    memory_writer.write_memory, logits against memory_forward.forward_with_memories fed with
    write_memory's memories. Raises on a mismatch; returns the logits' relative error."""
    ref_model = LlamaModel(cfg, weights)
    Lm, K = mem["layers"], mem["kept"]
    errs = {}
    with torch.no_grad():
        memories = []
        for r, toks in enumerate(refs):
            positions, k, v, _, _ = write_memory(ref_model, prefix, toks, Lm, K)
            memories.append((positions, k, v))
            if r in sel:
                for l in range(Lm):
                    for g in range(cfg.n_head_kv):
                        want = [int(j) for j in positions[l, g] if j >= 0]
                        if want != sel[r][0][l][g]:
                            raise SystemExit(f"reference {r} layer {l} head {g}: kept {sel[r][0][l][g]}, "
                                             f"memory_writer keeps {want}")
        e = 0.0
        for b in range(len(tokens)):
            want = forward_with_memories(ref_model, prefix, tokens[b], memories, chunk_refs[b], mem["reference_length"],
                                         mem["chunk_length"], Lm)
            e = max(e, float((logits[b] - want).abs().max() / want.abs().max()))
        errs["vs_memory_forward"] = e
        if e > 1e-10:
            raise SystemExit(f"logits differ from memory_forward.py by {e:.3e} (relative to max |logit|)")
    return errs


def stage1_prefix_loss(cfg, weights, mem, prefix, tokens, targets):
    """Plain model.py forward of each sequence at positions p+W+t after the prefix in a KV cache:
    what stage 2 must reduce to when no chunk reads a memory."""
    m = LlamaModel(cfg, weights)
    p, T = len(prefix), len(tokens[0])
    out = []
    with torch.no_grad():
        for b in range(len(tokens)):
            cache = m.new_cache()
            m.forward_cached(prefix, cache)
            out.append(m._run(tokens[b], torch.arange(T) + p + mem["reference_length"], cache))
        logits = torch.stack(out)
    return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                   torch.as_tensor(targets).reshape(-1), ignore_index=-1))


def run(a):
    t0 = time.time()
    torch.set_num_threads(a.threads)
    cfg, weights, mem, prefix, fingerprint = load(a.model)
    model = Stage2Model(cfg, weights, mem)
    B, T = a.B, a.T
    if len(prefix) + mem["reference_length"] + T > cfg.n_ctx:
        raise SystemExit(f"context {cfg.n_ctx} too short for T={T}")
    n_chunks = (T + mem["chunk_length"] - 1) // mem["chunk_length"]
    if B != len(CHUNK_REFS) or any(len(c) != n_chunks for c in CHUNK_REFS):
        raise SystemExit(f"CHUNK_REFS is written for B={len(CHUNK_REFS)} and {len(CHUNK_REFS[0])} chunks")
    seed = a.seed
    tokens, targets = make_case(seed, B, T, cfg.n_vocab)
    refs = make_references(model, prefix, seed)

    loss, logits, sel = model.forward(prefix, tokens, targets, refs, CHUNK_REFS)
    loss.backward()
    grads = {n: model.p[n].grad.detach().clone() for n in model.names}
    errs = self_check(cfg, weights, mem, prefix, tokens, refs, CHUNK_REFS, sel, logits.detach())

    # the same batch with every chunk_refs list empty: must be stage 1 with the prefix
    empty = [[[] for _ in seq] for seq in CHUNK_REFS]
    m0 = Stage2Model(cfg, weights, mem)
    loss0, _, _ = m0.forward(prefix, tokens, targets, refs, empty)
    loss0.backward()
    stage1 = stage1_prefix_loss(cfg, weights, mem, prefix, tokens, targets)
    errs["empty_vs_stage1_prefix"] = abs(float(loss0) - stage1)
    if errs["empty_vs_stage1_prefix"] > 1e-12 * abs(stage1):
        raise SystemExit(f"no-memory loss {float(loss0)} != stage-1-with-prefix loss {stage1}")
    g_k0, g_k0_empty = grads["blk.0.attn_k.weight"], m0.p["blk.0.attn_k.weight"].grad
    ref_path = {"attn_k0_grad_norm": float(g_k0.norm()), "attn_k0_grad_norm_no_memories": float(g_k0_empty.norm()),
                "attn_k0_grad_diff_norm": float((g_k0 - g_k0_empty).norm())}
    # a token that occurs only in references (never in the prefix or the context): its embedding
    # gets gradient only through the written memories
    ctx_ids = set(prefix) | {t for s in tokens for t in s}
    only_ref = sorted({t for r in refs for t in r} - ctx_ids)
    ref_path["ref_only_tokens"] = len(only_ref)
    ref_path["ref_only_embd_grad_norm"] = float(grads["token_embd.weight"][only_ref].norm()) if only_ref else None
    if ref_path["attn_k0_grad_diff_norm"] == 0 or ref_path["ref_only_embd_grad_norm"] == 0:
        raise SystemExit("no gradient reaches the reference path")

    index, chunks, off = [], [], 0
    for n in model.names:
        gr = grads[n].numpy()
        index.append({"name": n, "shape": list(gr.shape), "offset": off, "size": int(gr.size)})
        chunks.append(gr.reshape(-1))
        off += int(gr.size)
    flat = np.concatenate(chunks).astype("<f4")
    all_gaps = [g for r in sel for lg in sel[r][1] for g in lg if g is not None]
    doc = {
        "model": os.path.basename(a.model), "fingerprint": fingerprint,
        "B": B, "T": T, "seed": seed, "prefix": prefix,
        "reference_length": mem["reference_length"], "chunk_length": mem["chunk_length"],
        "memory_layers": mem["layers"], "kept": mem["kept"],
        "tokens": tokens, "targets": targets, "references": refs, "chunk_refs": CHUNK_REFS,
        "loss": float(loss),
        "min_selection_gap": min(all_gaps),
        "selection": [{"reference": r, "n_tokens": len(refs[r]), "kept": sel[r][0], "gaps": sel[r][1]}
                      for r in sorted(sel)],
        "no_memories": {"chunk_refs": empty, "loss": float(loss0), "stage1_prefix_loss": stage1},
        "checks": {**errs, **ref_path},
        "tensors": index,
    }
    os.makedirs(a.out, exist_ok=True)
    np.save(os.path.join(a.out, "grads.npy"), flat)
    with open(os.path.join(a.out, "stage2.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"seed {seed}: loss {float(loss):.12f}, no-memory loss {float(loss0):.12f} (stage 1 + prefix "
          f"{stage1:.12f}), smallest selection gap {min(all_gaps):.4e}; logits vs memory_forward "
          f"{errs['vs_memory_forward']:.2e}; |grad attn_k0 - no-memory| {ref_path['attn_k0_grad_diff_norm']:.3e}; "
          f"{flat.size} gradients -> {a.out} ({time.time() - t0:.1f} s)")


def check(a):
    """Central finite differences (float64) of the loss against autograd on a few entries."""
    t0 = time.time()
    torch.set_num_threads(a.threads)
    cfg, weights, mem, prefix, _ = load(a.model)
    model = Stage2Model(cfg, weights, mem)
    tokens, targets = make_case(a.seed, a.B, a.T, cfg.n_vocab)
    refs = make_references(model, prefix, a.seed)
    loss, _, _ = model.forward(prefix, tokens, targets, refs, CHUNK_REFS)
    loss.backward()
    rng = np.random.RandomState(a.seed)
    only_ref = sorted({t for r in refs for t in r} - set(prefix) - {t for s in tokens for t in s})
    picks = [("token_embd.weight", (t, 3)) for t in only_ref[:2]]    # only in references: memory path only
    picks.append(("token_embd.weight", (refs[5][17], 11)))
    for name in ["blk.0.attn_k.weight", "blk.0.attn_q.weight", "blk.0.attn_v.weight", "blk.1.attn_k.weight",
                 "blk.1.attn_v.weight", "blk.0.ffn_down.weight", "blk.0.attn_norm.weight", "blk.2.attn_q.weight",
                 "blk.3.ffn_up.weight", "output_norm.weight", "output.weight"]:
        if name in model.p:
            picks.append((name, tuple(int(rng.randint(s)) for s in model.p[name].shape)))
    eps, worst, worst_abs = 1e-5, 0.0, 0.0
    for name, ix in picks:
        prm = model.p[name]
        analytic = float(prm.grad[ix])
        vals = []
        with torch.no_grad():
            orig = float(prm[ix])
            for d in (eps, -eps):
                prm[ix] = orig + d
                vals.append(float(model.forward(prefix, tokens, targets, refs, CHUNK_REFS)[0]))
            prm[ix] = orig
        fd = (vals[0] - vals[1]) / (2 * eps)
        rel = abs(fd - analytic) / max(abs(fd), abs(analytic), 1e-12)
        worst, worst_abs = max(worst, rel), max(worst_abs, abs(fd - analytic))
        print(f"  {name}{list(ix)}: autograd {analytic:+.10e}  fd {fd:+.10e}  rel {rel:.2e}")
        if rel > 1e-4 and abs(fd - analytic) > 1e-9:
            raise SystemExit(f"finite-difference check failed on {name}{list(ix)}")
    print(f"finite differences (eps {eps}): max relative error {worst:.2e}, max absolute error {worst_abs:.2e} "
          f"over {len(picks)} entries ({time.time() - t0:.1f} s)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", default="tests/data/golden/stage2")
    ap.add_argument("--B", type=int, default=2)
    ap.add_argument("--T", type=int, default=160)
    ap.add_argument("--seed", type=int, default=20240801, help="first seed tried for the case")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check", action="store_true", help="finite-difference check instead of goldens")
    a = ap.parse_args()
    check(a) if a.check else run(a)


if __name__ == "__main__":
    main()
