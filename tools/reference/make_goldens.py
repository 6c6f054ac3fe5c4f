#!/usr/bin/python3
"""Generate golden logits for a GGUF model with the reference oracle.

    /usr/bin/python3 tools/reference/make_goldens.py --model M.gguf --prompt-file P.txt \
        --out DIR [--name NAME]

Writes
    DIR/NAME.tokens.json   {"tokens": [...], "model": "<file name>", "prompt": "<text>"}
    DIR/NAME.logits.npy    float32 [T, V], the float64 whole-prompt forward
    DIR/NAME.decode.npy    float32 [T, V], the same tokens fed one at a time through the KV cache
Tokens are BOS + sentencepiece.encode(prompt) with the model's embedded SentencePiece model
(tokenizer.sentencepiece.model). The prompt file is used byte for byte (UTF-8), trailing newline
included; pass --strip to strip surrounding whitespace.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gguf_reader import GGUFError, GGUFFile, load_weights, read_config  # noqa: E402
from model import LlamaModel  # noqa: E402


def tokenize(g: GGUFFile, text: str, add_bos: bool = True):
    import sentencepiece as spm
    key = "tokenizer.sentencepiece.model"
    if key not in g.metadata:
        raise GGUFError(f"{g.path}: no {key} in the model; pass --tokens instead")
    sp = spm.SentencePieceProcessor(model_proto=g.metadata_bytes(key))
    bos = sp.bos_id()
    gbos = g.metadata.get("tokenizer.ggml.bos_token_id")
    if gbos is not None and int(gbos) != bos:
        print(f"warning: tokenizer.ggml.bos_token_id={gbos} but the SentencePiece model's "
              f"bos_id={bos}; using {bos}", file=sys.stderr)
    if add_bos and bos < 0:
        raise GGUFError("the SentencePiece model has no BOS piece")
    ids = list(sp.encode(text))
    return ([bos] if add_bos else []) + ids


def save_npy(path: str, a: np.ndarray) -> None:
    a = np.ascontiguousarray(a, dtype="<f4")
    with open(path, "wb") as f:
        np.lib.format.write_array(f, a, version=(1, 0), allow_pickle=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="GGUF model file")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt-file", help="UTF-8 prompt text")
    src.add_argument("--tokens", help="comma-separated token ids instead of a prompt")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--name", help="output name stem (default: model file stem)")
    ap.add_argument("--strip", action="store_true", help="strip whitespace around the prompt")
    ap.add_argument("--no-bos", action="store_true", help="do not prepend BOS")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--tol", type=float, default=1e-6,
                    help="max |prefill - decode| allowed, relative to max|logits| (float64)")
    args = ap.parse_args(argv)

    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    name = args.name or os.path.splitext(os.path.basename(args.model))[0]
    os.makedirs(args.out, exist_ok=True)

    t0 = time.time()
    with GGUFFile(args.model) as g:
        cfg = read_config(g)
        if args.prompt_file:
            with open(args.prompt_file, "rb") as f:
                prompt = f.read().decode("utf-8")
            if args.strip:
                prompt = prompt.strip()
            tokens = tokenize(g, prompt, add_bos=not args.no_bos)
        else:
            prompt = None
            tokens = [int(t) for t in args.tokens.split(",") if t.strip()]
        types = sorted({ti.type_name for ti in g.tensors.values()})
        weights = load_weights(g, cfg, dtype=np.float64)
    model = LlamaModel(cfg, weights, dtype)
    del weights
    t_load = time.time() - t0

    if not tokens:
        print("error: no tokens", file=sys.stderr)
        return 2
    if cfg.n_ctx and len(tokens) > cfg.n_ctx:
        print(f"warning: {len(tokens)} tokens exceed context_length {cfg.n_ctx}", file=sys.stderr)

    t0 = time.time()
    logits = model.forward(tokens).numpy()                              # [T, V]
    t_fwd = time.time() - t0
    t0 = time.time()
    dec = model.decode(tokens).numpy()                                  # [T, V]
    t_dec = time.time() - t0

    scale = max(1.0, float(np.abs(logits).max()))
    diff = float(np.abs(logits - dec).max())
    tol = args.tol if dtype == torch.float64 else max(args.tol, 1e-4)
    ok = diff <= tol * scale

    base = os.path.join(args.out, name)
    with open(base + ".tokens.json", "w", encoding="utf-8") as f:
        json.dump({"tokens": tokens, "model": os.path.basename(args.model), "prompt": prompt},
                  f, ensure_ascii=False, indent=1)
        f.write("\n")
    save_npy(base + ".logits.npy", logits)
    save_npy(base + ".decode.npy", dec)

    T, V = logits.shape
    last = logits[-1]
    top = np.argsort(-last, kind="stable")[:5]
    print(f"model     {args.model}  arch={cfg.arch} types={','.join(types)}")
    print(f"config    L={cfg.n_layer} C={cfg.n_embd} F={cfg.n_ff} H={cfg.n_head} "
          f"G={cfg.n_head_kv} D={cfg.head_dim} V={cfg.n_vocab} eps={cfg.rms_eps:g} "
          f"theta={cfg.rope_theta:g} n_rot={cfg.n_rot} tied={cfg.tied_embeddings}")
    print(f"tokens    T={T}: {tokens[:16]}{' ...' if T > 16 else ''}")
    print(f"logits    [{T}, {V}] {args.dtype}; mean={logits.mean():.6g} std={logits.std():.6g} "
          f"max|x|={np.abs(logits).max():.6g}")
    print(f"argmax    {logits.argmax(axis=1)[:16].tolist()}{' ...' if T > 16 else ''}")
    print(f"top5@last {[(int(i), round(float(last[i]), 4)) for i in top]}")
    print(f"decode    max|prefill - decode| = {diff:.3g} (limit {tol * scale:.3g}) "
          f"{'OK' if ok else 'MISMATCH'}")
    print(f"time      load {t_load:.2f}s  forward {t_fwd:.2f}s  decode {t_dec:.2f}s")
    print(f"wrote     {base}.tokens.json, {base}.logits.npy, {base}.decode.npy")
    if not ok:
        print("error: prefill and token-by-token decode disagree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except GGUFError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
