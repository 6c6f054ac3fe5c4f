#!/usr/bin/python3
"""Reference memory writer: Memory³ explicit memories computed in float64 from the spec alone.

    # goldens for one model
    /usr/bin/python3 tools/reference/memory_writer.py --model M.gguf --references REFS.json \\
        --out DIR [--name NAME]
    # the references file itself (token slices of real text, tokenized by M's tokenizer)
    /usr/bin/python3 tools/reference/memory_writer.py --model M.gguf --make-references TEXT.txt \\
        --out-references REFS.json

What a memory is (memory3-spec.md §2.1–2.3, docs decisions.md "Writing a memory"):
    prefix = BOS + encode("Reference:")           (the text after "<s>" of memory3.memory.prefix)
    encode prefix + reference causally with RoPE, positions 0..p+T-1, through the first Lm layers
    for each memory layer l and KV head g:
        s[h, i, j] = q_raw[p+i, h] . k_raw[p+j, g] / sqrt(D)   h in g's query group, i, j < T
                     (un-rotated q and k, NO mask, reference rows only: the prefix is excluded)
        c          = max over (h, i, j) of s                    (one constant per (l, g))
        w[j]       = sum_h sum_i exp(s[h, i, j] - c)
        keep the K largest w (ties: lower j first), in ascending j;
        store j, the post-RoPE key k[p+j, g] and the value v[p+j, g]
    T < K keeps all T tokens; unused slots hold position -1 and zero vectors.

Outputs under DIR (R references, Lm memory layers, G KV heads, K kept, D head dim), .npy v1.0:
    NAME.positions.npy  int32   [R, Lm, G, K]
    NAME.keys.npy       float32 [R, Lm, G, K, D]   computed in float64, stored as float32
    NAME.values.npy     float32 [R, Lm, G, K, D]
    NAME.json           index: model, prefix tokens, shape, and per reference its id, n_tokens and
                        the tie check (smallest relative gap between the K-th and (K+1)-th largest
                        importance over all (l, g), and how many boundary ties are exact because
                        the two tokens' un-rotated keys are equal, as repeated tokens' are at
                        layer 0: equal keys get exactly equal importance, so the tie rule decides).
The forward pass is tools/reference/model.py (LlamaModel.encode_layers); nothing is shared with
the C++ engine.
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

from gguf_reader import GGUFError, GGUFFile  # noqa: E402
from model import LlamaModel  # noqa: E402

BOS_TEXT = "<s>"
# Below this relative gap between the K-th and (K+1)-th importance, float32 engines may rank the
# two the other way: such a reference is flagged and not used as a golden for positions.
TIE_RTOL = 1e-9


def memory_settings(g: GGUFFile) -> dict:
    md = g.metadata
    need = ["memory3.memory.layer_count", "memory3.memory.reference_length",
            "memory3.memory.tokens_per_head", "memory3.memory.prefix"]
    for k in need:
        if k not in md:
            raise GGUFError(f"{g.path}: missing metadata key {k!r}")
    return {"layers": int(md["memory3.memory.layer_count"]),
            "reference_length": int(md["memory3.memory.reference_length"]),
            "kept": int(md["memory3.memory.tokens_per_head"]),
            "prefix_text": str(md["memory3.memory.prefix"])}


def sentencepiece_of(g: GGUFFile):
    import sentencepiece as spm
    key = "tokenizer.sentencepiece.model"
    if key not in g.metadata:
        raise GGUFError(f"{g.path}: no {key}; memories need the model's tokenizer")
    return spm.SentencePieceProcessor(model_proto=g.metadata_bytes(key))


def prefix_tokens(sp, prefix_text: str):
    """'<s>Reference:' is BOS followed by the tokens of 'Reference:' (literal text)."""
    if prefix_text.startswith(BOS_TEXT):
        return [sp.bos_id()] + list(sp.encode(prefix_text[len(BOS_TEXT):]))
    return list(sp.encode(prefix_text))


def equal_rows(x: torch.Tensor) -> torch.Tensor:
    """x: [T, D] -> [T, T] bool, rows equal up to float64 rounding (1e-12 of the largest |x|)."""
    tol = 1e-12 * float(x.abs().max())
    return (x[:, None, :] - x[None, :, :]).abs().amax(dim=-1) <= tol


def write_memory(model: LlamaModel, prefix, reference, n_layers: int, K: int):
    """-> positions [Lm, G, K] int, keys/values [Lm, G, K, D] float64, and the tie check
    (min relative gap at the K/K+1 boundary, exact boundary ties from identical keys)."""
    cfg = model.cfg
    H, G, D = cfg.n_head, cfg.n_head_kv, cfg.head_dim
    group = H // G
    p, T = len(prefix), len(reference)
    if T == 0:
        raise ValueError("empty reference")
    layers = model.encode_layers(list(prefix) + list(reference), n_layers)
    positions = np.full((n_layers, G, K), -1, dtype=np.int64)
    keys = np.zeros((n_layers, G, K, D))
    values = np.zeros((n_layers, G, K, D))
    min_gap, exact_ties = math.inf, 0
    for l, t in enumerate(layers):
        q_raw = t["q_raw"][p:]                       # [T, H, D]  reference rows only
        k_raw = t["k_raw"][p:]                       # [T, G, D]
        for g in range(G):
            qg = q_raw[:, g * group:(g + 1) * group, :]                      # [T, group, D]
            s = torch.einsum("ihd,jd->hij", qg, k_raw[:, g, :]) / math.sqrt(D)  # [group, T, T]
            w = torch.exp(s - s.max()).sum(dim=(0, 1)).numpy()              # [T]
            # Equal keys mean equal importance, exactly. Repeated tokens have equal un-rotated
            # keys at layer 0, but BLAS rounding (row tiles, reduction order) can make their w
            # differ in the last bit; give each the w of its first copy so the tie rule, not
            # rounding noise, orders them.
            same = equal_rows(k_raw[:, g, :])                                 # [T, T]
            first = same.to(torch.int8).argmax(dim=1).numpy()                 # [T] first equal row
            w = w[first]
            order = np.argsort(-w, kind="stable")    # stable: equal w keep lower j first
            keep = np.sort(order[:K])
            n = len(keep)
            positions[l, g, :n] = keep
            keys[l, g, :n] = t["k"][p + keep, g, :].numpy()
            values[l, g, :n] = t["v"][p + keep, g, :].numpy()
            if T > K:
                a, b = int(order[K - 1]), int(order[K])
                if same[a, b]:
                    exact_ties += 1      # equal keys: the tie rule (lower j first) decides
                else:
                    min_gap = min(min_gap, float((w[a] - w[b]) / w[a]))
    return positions, keys, values, min_gap, exact_ties


def save_npy(path: str, a: np.ndarray, dtype: str) -> None:
    with open(path, "wb") as f:
        np.lib.format.write_array(f, np.ascontiguousarray(a, dtype=dtype), version=(1, 0),
                                  allow_pickle=False)


def make_references(model_path: str, text_path: str, out_path: str) -> None:
    """Token slices of real text: for each length n, the first n tokens (no BOS) of the text
    starting at a chosen paragraph (following paragraphs appended when it is shorter)."""
    with GGUFFile(model_path) as g:
        sp = sentencepiece_of(g)
        limit = memory_settings(g)["reference_length"]
    with open(text_path, encoding="utf-8") as f:
        paragraphs = [line.rstrip("\n") for line in f if line.strip()]
    lengths = [1, 2, 3, 5, 7, 8, 9, 10, 12, 16, 20, 24, 31, 32, 33, 40, 48, 57, 64, 65, 80, 96,
               100, 111, 127, 128]
    refs = []
    for r, n in enumerate(lengths):
        assert n <= limit
        start = (37 + 97 * r) % len(paragraphs)
        ids, k = [], start
        while len(ids) < n:
            ids += list(sp.encode(paragraphs[k % len(paragraphs)] + (" " if ids else "")))
            k += 1
        ids = ids[:n]
        refs.append({"id": r, "paragraph": start, "text": sp.decode(ids), "tokens": ids})
    doc = {"source": os.path.basename(text_path), "tokenizer_of": os.path.basename(model_path),
           "references": refs}
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {len(refs)} references to {out_path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="GGUF model file")
    ap.add_argument("--references", help="references JSON ({'references': [{'id', 'tokens'}]})")
    ap.add_argument("--out", help="output directory for the goldens")
    ap.add_argument("--name", help="output name stem (default: model file stem)")
    ap.add_argument("--make-references", metavar="TEXT", help="write a references file instead")
    ap.add_argument("--out-references", help="where --make-references writes")
    args = ap.parse_args(argv)

    if args.make_references:
        if not args.out_references:
            ap.error("--make-references needs --out-references")
        make_references(args.model, args.make_references, args.out_references)
        return 0
    if not args.references or not args.out:
        ap.error("--references and --out are required")

    name = args.name or os.path.splitext(os.path.basename(args.model))[0]
    with GGUFFile(args.model) as g:
        mem = memory_settings(g)
        prefix = prefix_tokens(sentencepiece_of(g), mem["prefix_text"])
    model = LlamaModel.from_gguf(args.model, torch.float64)
    cfg = model.cfg
    Lm, K = mem["layers"], mem["kept"]
    if not 0 < Lm <= cfg.n_layer:
        raise GGUFError(f"{args.model}: memory layer_count {Lm} outside 1..{cfg.n_layer}")
    with open(args.references, encoding="utf-8") as f:
        refs = json.load(f)["references"]

    all_pos, all_k, all_v, entries = [], [], [], []
    for r in refs:
        toks = r["tokens"]
        if not 0 < len(toks) <= mem["reference_length"]:
            raise ValueError(f"reference {r['id']}: {len(toks)} tokens outside "
                             f"1..{mem['reference_length']}")
        pos, k, v, gap, ties = write_memory(model, prefix, toks, Lm, K)
        all_pos.append(pos)
        all_k.append(k)
        all_v.append(v)
        entries.append({"id": r["id"], "n_tokens": len(toks),
                        "min_boundary_gap": None if math.isinf(gap) else gap,
                        "exact_boundary_ties": ties,
                        "golden_positions": bool(gap >= TIE_RTOL)})
    os.makedirs(args.out, exist_ok=True)
    save_npy(os.path.join(args.out, f"{name}.positions.npy"), np.stack(all_pos), "<i4")
    save_npy(os.path.join(args.out, f"{name}.keys.npy"), np.stack(all_k), "<f4")
    save_npy(os.path.join(args.out, f"{name}.values.npy"), np.stack(all_v), "<f4")
    gaps = [e["min_boundary_gap"] for e in entries if e["min_boundary_gap"] is not None]
    index = {"model": os.path.basename(args.model), "references": os.path.basename(args.references),
             "prefix": prefix, "shape": {"layers": Lm, "kv_heads": cfg.n_head_kv, "kept": K,
                                         "head_dim": cfg.head_dim},
             "tie_rtol": TIE_RTOL, "min_boundary_gap": min(gaps) if gaps else None,
             "exact_boundary_ties": sum(e["exact_boundary_ties"] for e in entries),
             "entries": entries}
    with open(os.path.join(args.out, f"{name}.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=1)
        f.write("\n")
    flagged = [e["id"] for e in entries if not e["golden_positions"]]
    print(f"{name}: {len(entries)} memories (Lm={Lm}, G={cfg.n_head_kv}, K={K}, D={cfg.head_dim}), "
          f"prefix {len(prefix)} tokens, smallest boundary gap {index['min_boundary_gap']:.3e}, "
          f"exact boundary ties {index['exact_boundary_ties']}, flagged {flagged}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
