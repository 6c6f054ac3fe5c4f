#!/usr/bin/python3
"""Self-test of the reference oracle (reader, quantizers, model), without the C++ side.

    /usr/bin/python3 tools/reference/selftest.py [--keep DIR]

Writes tiny random models with gguf_writer (f32, f16, bf16, q8_0, q4_0; memory3 and llama
architectures; tied and untied embeddings), reads them back and checks: block layouts against
hand-built bytes, dequantization error bounds, metadata round trip, reader errors on broken files,
the torch model against a naive loop implementation, prefill == token-by-token decode, RoPE
(norms, adjacent pairs, relative positions), the GQA head mapping, causality, and make_goldens.py
end to end. Exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import traceback

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from gguf_reader import (GGML_BF16, GGML_F16, GGML_F32, GGML_Q4_0, GGML_Q8_0, GGUFError,  # noqa
                         GGUFFile, Q4_0_BLOCK, Q8_0_BLOCK, load_weights, read_config)
from gguf_writer import (GGUFWriter, T_ARRAY, T_BOOL, T_FLOAT32, T_FLOAT64, T_INT8, T_INT16,  # noqa
                         T_INT32, T_INT64, T_STRING, T_UINT8, T_UINT16, T_UINT32, T_UINT64,
                         quantize_q4_0, quantize_q8_0, write_model)
from model import LlamaModel, attention, kv_head_of, rope, rope_cos_sin  # noqa: E402

FAILURES = []


def check(cond: bool, what: str) -> None:
    if cond:
        print(f"  ok    {what}")
    else:
        print(f"  FAIL  {what}")
        FAILURES.append(what)


# ---- a tiny model -------------------------------------------------------------------------------

CFG = dict(n_ctx=64, n_embd=64, n_layer=2, n_ff=96, n_head=4, n_head_kv=2, head_dim=16,
           rms_eps=1e-5, rope_theta=10000.0)


def random_weights(V: int, seed: int = 0, tied: bool = False, C=64, L=2, F=96, H=4, G=2, D=16):
    rng = np.random.default_rng(seed)

    def lin(o, i):
        return (rng.standard_normal((o, i)) / math.sqrt(i)).astype(np.float32)

    w = {"token_embd.weight": rng.standard_normal((V, C)).astype(np.float32),
         "output_norm.weight": (1 + 0.1 * rng.standard_normal(C)).astype(np.float32)}
    if not tied:
        w["output.weight"] = lin(V, C)
    for i in range(L):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = (1 + 0.1 * rng.standard_normal(C)).astype(np.float32)
        w[p + "attn_q.weight"] = 2 * lin(H * D, C)     # larger q/k: sharper attention
        w[p + "attn_k.weight"] = 2 * lin(G * D, C)
        w[p + "attn_v.weight"] = lin(G * D, C)
        w[p + "attn_output.weight"] = lin(C, H * D)
        w[p + "ffn_norm.weight"] = (1 + 0.1 * rng.standard_normal(C)).astype(np.float32)
        w[p + "ffn_gate.weight"] = lin(F, C)
        w[p + "ffn_up.weight"] = lin(F, C)
        w[p + "ffn_down.weight"] = lin(C, F)
    return w


def train_sentencepiece():
    """A small byte-fallback BPE model, like m3's tokenizer. None if training is unavailable."""
    try:
        import sentencepiece as spm
        text = ("The quick brown fox jumps over the lazy dog. Memory layers store keys and values "
                "of references. Retrieval happens every sixty-four tokens. ")
        lines = [f"{text} {i} {text[i % 40:]}" for i in range(300)]
        buf = io.BytesIO()
        devnull = os.open(os.devnull, os.O_WRONLY)
        saved = os.dup(2)
        os.dup2(devnull, 2)                     # the trainer logs a lot to stderr
        try:
            spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf,
                                           vocab_size=320, model_type="bpe", byte_fallback=True,
                                           character_coverage=1.0)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
        return buf.getvalue()
    except Exception as e:  # pragma: no cover
        print(f"  note  sentencepiece training unavailable ({e}); tokenizer test skipped")
        return None


# ---- a naive second implementation (numpy loops, complex-number RoPE) --------------------------

def naive_forward(w, cfg, tokens):
    C, H, G, D = cfg["n_embd"], cfg["n_head"], cfg["n_head_kv"], cfg["head_dim"]
    eps, theta = cfg["rms_eps"], cfg["rope_theta"]
    w = {k: v.astype(np.float64) for k, v in w.items()}
    out_w = w.get("output.weight", w["token_embd.weight"])
    T = len(tokens)

    def norm(x, g):
        return x / math.sqrt(sum(xx * xx for xx in x) / len(x) + eps) * g

    def rot(vec, pos):  # pairs (2i, 2i+1) as complex numbers, times e^{i pos theta^(-2i/D)}
        z = vec[0::2] + 1j * vec[1::2]
        z = z * np.exp(1j * pos * theta ** (-np.arange(D // 2) * 2.0 / D))
        out = np.empty(D)
        out[0::2], out[1::2] = z.real, z.imag
        return out

    xs = [w["token_embd.weight"][t].copy() for t in tokens]
    for li in range(cfg["n_layer"]):
        p = f"blk.{li}."
        ks, vs, qs = [], [], []
        for t in range(T):
            h = norm(xs[t], w[p + "attn_norm.weight"])
            q, k, v = w[p + "attn_q.weight"] @ h, w[p + "attn_k.weight"] @ h, w[p + "attn_v.weight"] @ h
            qs.append([rot(q[hh * D:(hh + 1) * D], t) for hh in range(H)])
            ks.append([rot(k[g * D:(g + 1) * D], t) for g in range(G)])
            vs.append([v[g * D:(g + 1) * D] for g in range(G)])
        for t in range(T):
            heads = []
            for hh in range(H):
                g = hh // (H // G)
                s = np.array([qs[t][hh] @ ks[j][g] / math.sqrt(D) for j in range(t + 1)])
                e = np.exp(s - s.max())
                pr = e / e.sum()
                heads.append(sum(pr[j] * vs[j][g] for j in range(t + 1)))
            xs[t] = xs[t] + w[p + "attn_output.weight"] @ np.concatenate(heads)
            h = norm(xs[t], w[p + "ffn_norm.weight"])
            a = w[p + "ffn_gate.weight"] @ h
            u = w[p + "ffn_up.weight"] @ h
            xs[t] = xs[t] + w[p + "ffn_down.weight"] @ (a / (1 + np.exp(-a)) * u)
    return np.stack([out_w @ norm(x, w["output_norm.weight"]) for x in xs])


# ---- tests --------------------------------------------------------------------------------------

def test_block_layouts(tmp):
    print("block layouts against hand-built bytes")
    # Q8_0: d = 0.5 (fp16 0x3800), q = -16..15  -> x = q/2
    q8 = struct.pack("<H", 0x3800) + bytes((np.arange(32) - 16).astype(np.int8).tobytes())
    # Q4_0: d = 1.0 (0x3C00), byte j = j | (15-j)<<4  -> x[j] = j-8, x[j+16] = 7-j
    q4 = struct.pack("<H", 0x3C00) + bytes(j | ((15 - j) << 4) for j in range(16))
    # second Q4_0 block with d = -2 (0xC000): nibbles all 0x0 low / 0xF high -> 16, -14
    q4 += struct.pack("<H", 0xC000) + bytes([0xF0] * 16)
    f16 = struct.pack("<4H", 0x3C00, 0xC000, 0x3555, 0x7BFF)   # 1, -2, 0.33325195, 65504
    bf16 = struct.pack("<4H", 0x3F80, 0xC000, 0x3EAB, 0x4049)  # 1, -2, 0.333984375, 3.140625
    f32 = struct.pack("<3f", 1.5, -0.25, 1e-3)
    w = GGUFWriter()
    w.add_string("general.architecture", "none")
    w.add_raw_tensor("q8", (32,), GGML_Q8_0, q8)
    w.add_raw_tensor("q4", (32, 2), GGML_Q4_0, q4)      # ne = {32, 2}: torch shape [2, 32]
    w.add_raw_tensor("f16", (2, 2), GGML_F16, f16)
    w.add_raw_tensor("bf16", (4,), GGML_BF16, bf16)
    w.add_raw_tensor("f32", (3,), GGML_F32, f32)
    path = os.path.join(tmp, "layouts.gguf")
    w.write(path)
    with GGUFFile(path) as g:
        check(np.array_equal(g.tensor("q8"), (np.arange(32) - 16) / 2), "Q8_0: x = d * q")
        exp4 = np.array([[j - 8 for j in range(16)] + [7 - j for j in range(16)],
                         [16.0] * 16 + [-14.0] * 16])
        check(g.tensor("q4").shape == (2, 32) and np.array_equal(g.tensor("q4"), exp4),
              "Q4_0: low nibbles = elements 0..15, high nibbles = 16..31, (q-8)*d; ne reversed")
        check(np.allclose(g.tensor("f16"), [[1, -2], [0.33325195, 65504]], rtol=0, atol=1e-7),
              "F16 bit patterns, shape [2, 2]")
        check(np.array_equal(g.tensor("bf16"), [1, -2, 0.333984375, 3.140625]),
              "BF16 = upper half of f32")
        check(np.array_equal(g.tensor("f32"), np.array([1.5, -0.25, 1e-3], np.float32)), "F32")


def test_quantizers(tmp):
    print("numpy quantizers + reader: dequantization error bounds")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 256)).astype(np.float32)
    x[0, :32] = 0                                  # all-zero block
    x[1, :32] *= 1e-6                              # tiny block
    x[2, :32] *= 1e3                               # large block
    x[3, 5] = -7.0                                 # negative extreme in a block
    x[4, 32:64] = np.linspace(-1, 1, 32)           # exact-ish grid
    x[5, 64:96] = 3.0                              # constant block
    w = GGUFWriter(alignment=64)
    w.add_string("general.architecture", "none")
    w.add_tensor("a8", x, "q8_0")
    w.add_tensor("a4", x, "q4_0")
    w.add_tensor("a16", x, "f16")
    w.add_tensor("ab16", x, "bf16")
    path = os.path.join(tmp, "quant.gguf")
    w.write(path)
    xb = x.reshape(-1, 32).astype(np.float64)
    with GGUFFile(path) as g:
        for nm, kind in (("a8", "q8_0"), ("a4", "q4_0")):
            y = g.tensor(nm, np.float64).reshape(-1, 32)
            blocks = g.raw_bytes(nm).view(Q8_0_BLOCK if kind == "q8_0" else Q4_0_BLOCK)
            d16 = np.abs(blocks["d"].astype(np.float64))
            amax = np.abs(xb).max(axis=1)
            if kind == "q8_0":
                d = amax / 127
                bound = 0.5 * d + 127 * np.abs(d - d16)
            else:
                d = amax / 8
                bound = 1.0 * d + 8 * np.abs(d - d16)   # q=16 clamps to 15: error up to |d|
            err = np.abs(y - xb).max(axis=1)
            ok = np.all(err <= bound * (1 + 1e-6) + 1e-30)
            rel = float(np.sqrt(((y - xb) ** 2).sum() / (xb ** 2).sum()))
            check(ok, f"{kind}: per-block max error <= bound (worst err/bound "
                      f"{float(np.max(err / np.maximum(bound, 1e-30))):.3f}, rel rms {rel:.4f})")
            check(np.all(y[0] == 0), f"{kind}: zero block dequantizes to zeros")
            cb = 5 * 8 + 2                         # x[5, 64:96]: row 5 has 8 blocks
            check(np.all(y[cb] == y[cb][0]) and abs(y[cb][0] - 3.0) <= bound[cb],
                  f"{kind}: constant block stays constant")
            if kind == "q8_0":
                check(int(np.abs(blocks["qs"]).max()) <= 127, "q8_0: |q| <= 127")
            else:
                # the extreme element maps to nibble 0 exactly: x = -8 d = m, so its only error
                # is fp16's rounding of d (large when d is an fp16 subnormal, as in the tiny block)
                i = np.argmax(np.abs(xb), axis=1)
                r = np.arange(len(i))
                e = np.abs(y[r, i] - xb[r, i])
                check(np.all(e <= 8 * np.abs(d - d16) * (1 + 1e-6)),
                      "q4_0: each block's max-|x| element is exact up to fp16(d)")
        check(np.allclose(g.tensor("a16"), x.astype(np.float16).astype(np.float32), 0, 0),
              "f16 round trip")
        bf = g.tensor("ab16", np.float64)
        check(np.all(np.abs(bf - x) <= np.abs(x) * 2 ** -8), "bf16 within half an ulp (2^-8 rel)")
    # cross-check: our q8 quantizer's q equals round(x/d) except possibly exact ties
    q8 = np.frombuffer(quantize_q8_0(x), Q8_0_BLOCK)
    d = np.abs(xb).max(axis=1) / 127
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(d[:, None] > 0, xb / d[:, None], 0)
    alt = np.trunc(r + np.copysign(0.5, r))
    check(np.mean(q8["qs"] == alt) > 0.999, f"q8_0 q == roundf(x/d) for "
                                            f"{np.mean(q8['qs'] == alt) * 100:.2f}% of elements")
    q4 = np.frombuffer(quantize_q4_0(x), Q4_0_BLOCK)
    check(q4.size == x.size // 32, "q4_0 block count")


def test_metadata(tmp):
    print("metadata round trip, extra keys, alignment, tensor order")
    w = GGUFWriter(alignment=64)
    vals = [("x.u8", 200, T_UINT8), ("x.i8", -100, T_INT8), ("x.u16", 60000, T_UINT16),
            ("x.i16", -30000, T_INT16), ("x.u32", 4000000000, T_UINT32),
            ("x.i32", -2000000000, T_INT32), ("x.f32", 0.5, T_FLOAT32), ("x.bool", True, T_BOOL),
            ("x.str", "héllo ✓", T_STRING), ("x.u64", 2 ** 63 + 5, T_UINT64),
            ("x.i64", -2 ** 62, T_INT64), ("x.f64", 1e-300, T_FLOAT64)]
    for k, v, t in vals:
        w.add(k, v, t)
    w.add("x.arr_f32", [1.0, 2.5, -3.0], T_ARRAY, T_FLOAT32)
    w.add("x.arr_str", ["a", "", "ünï"], T_ARRAY, T_STRING)
    w.add("x.arr_empty", [], T_ARRAY, T_INT32)
    w.add("x.bytes", list(range(256)), T_ARRAY, T_UINT8)
    rng = np.random.default_rng(2)
    ts = {"z": rng.standard_normal((3, 5)).astype(np.float32),
          "a": rng.standard_normal(7).astype(np.float32),
          "m": rng.standard_normal((2, 3, 4)).astype(np.float32)}
    for n, a in ts.items():
        w.add_tensor(n, a, "f32")
    path = os.path.join(tmp, "meta.gguf")
    w.write(path)
    with GGUFFile(path) as g:
        md = g.metadata
        ok = all(md[k] == v for k, v, t in vals if t != T_FLOAT32) and md["x.f32"] == 0.5
        check(ok, "all scalar types round-trip")
        check(md["x.arr_f32"].tolist() == [1.0, 2.5, -3.0] and md["x.arr_str"] == ["a", "", "ünï"]
              and md["x.arr_empty"].size == 0, "arrays (f32, string, empty)")
        check(g.metadata_bytes("x.bytes") == bytes(range(256)), "UINT8 array as bytes")
        check(g.alignment == 64 and g.data_start % 64 == 0, "general.alignment = 64 honoured")
        check(list(g.tensors) == ["z", "a", "m"] and all(
            np.array_equal(g.tensor(n), a) for n, a in ts.items()), "tensors in file order, 3-D ok")


def test_reader_errors(tmp):
    print("reader errors on broken files")
    w = random_weights(40, seed=3)
    good = os.path.join(tmp, "good.gguf")
    write_model(good, w, **CFG)
    data = open(good, "rb").read()

    def expect_error(blob, what, must_contain=""):
        p = os.path.join(tmp, "bad.gguf")
        open(p, "wb").write(blob)
        try:
            with GGUFFile(p) as g:
                load_weights(g, read_config(g))
        except GGUFError as e:
            check(must_contain in str(e), f"{what}: GGUFError ({str(e).split(': ', 1)[-1][:70]})")
            return
        except Exception as e:
            check(False, f"{what}: wrong exception {type(e).__name__}: {e}")
            return
        check(False, f"{what}: no error")

    expect_error(b"GGUG" + data[4:], "bad magic", "magic")
    expect_error(data[:4] + struct.pack("<I", 9) + data[8:], "version 9", "version")
    expect_error(data[:-10], "truncated data section", "past end of file")
    # every truncation inside the header must give a GGUFError, never another exception
    with GGUFFile(good) as g:
        hdr = g.header_end
    bad = 0
    for cut in range(0, hdr, max(1, hdr // 300)):
        p = os.path.join(tmp, "cut.gguf")
        open(p, "wb").write(data[:cut])
        try:
            GGUFFile(p).close()
            bad += 1
        except GGUFError:
            pass
        except Exception:
            bad += 1
    check(bad == 0, f"header truncated at ~300 points: always GGUFError ({bad} bad)")
    # a tensor with an unsupported ggml type
    ww = GGUFWriter()
    ww.add_raw_tensor("t", (32,), 3, bytes(20))           # Q4_1
    expect_error(ww.to_bytes(), "unsupported type Q4_1", "unsupported ggml type")
    # wrong shape for a model tensor
    w2 = dict(w)
    w2["blk.1.ffn_up.weight"] = w2["blk.1.ffn_up.weight"][:64]
    p = os.path.join(tmp, "shape.gguf")
    write_model(p, w2, **CFG)
    expect_error(open(p, "rb").read(), "wrong tensor shape", "expected")
    w3 = dict(w)
    del w3["blk.0.attn_k.weight"]
    write_model(p, w3, **CFG)
    expect_error(open(p, "rb").read(), "missing tensor", "missing tensor")


def test_rope_and_gqa():
    print("RoPE and GQA, hand-built cases")
    D = 8
    x = torch.randn(5, 3, D, dtype=torch.float64)
    pos = torch.tensor([0, 1, 7, 100, 4095])
    cos, sin = rope_cos_sin(pos, D, 10000.0, torch.float64)
    y = rope(x, cos, sin)
    check(torch.allclose(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-13, atol=0),
          "RoPE preserves every head vector's norm")
    check(torch.equal(y[0], x[0]), "RoPE is the identity at position 0")
    # adjacent pairs: e0 at position 1 -> (cos 1, sin 1, 0, ...); the half-split layout would
    # put sin 1 in dim D/2 instead
    e0 = torch.zeros(1, 1, D, dtype=torch.float64)
    e0[0, 0, 0] = 1
    c1, s1 = rope_cos_sin(torch.tensor([1]), D, 10000.0, torch.float64)
    r = rope(e0, c1, s1)[0, 0]
    exp = torch.zeros(D, dtype=torch.float64)
    exp[0], exp[1] = math.cos(1), math.sin(1)
    check(torch.allclose(r, exp, atol=1e-15), "RoPE rotates adjacent pairs (0,1): e0 -> (cos1, sin1)")
    # pair i turns by pos * theta^(-2i/D): e2 at position 3 -> angle 3 * 10000^(-2/8)
    e2 = torch.zeros(1, 1, D, dtype=torch.float64)
    e2[0, 0, 2] = 1
    c3, s3 = rope_cos_sin(torch.tensor([3]), D, 10000.0, torch.float64)
    r = rope(e2, c3, s3)[0, 0]
    ang = 3 * 10000.0 ** (-2 / 8)
    check(abs(r[2] - math.cos(ang)) < 1e-15 and abs(r[3] - math.sin(ang)) < 1e-15,
          "pair 1 angle = pos * theta^(-2/D)")
    # relative: <rope(q, m), rope(k, n)> depends on m - n only
    q, k = torch.randn(1, 1, D, dtype=torch.float64), torch.randn(1, 1, D, dtype=torch.float64)

    def dot(m, n):
        cm, sm = rope_cos_sin(torch.tensor([m]), D, 10000.0, torch.float64)
        cn, sn = rope_cos_sin(torch.tensor([n]), D, 10000.0, torch.float64)
        return float((rope(q, cm, sm) * rope(k, cn, sn)).sum())
    check(abs(dot(10, 3) - dot(107, 100)) < 1e-12 and abs(dot(10, 3) - dot(9, 3)) > 1e-6,
          "q.k after RoPE depends only on the position difference")

    # GQA: H=6 query heads, G=2 KV heads. KV head g has value (g+1) everywhere, so output head h
    # shows which KV head it read. Expected h // 3 -> [1,1,1,2,2,2] (not h % 2 -> [1,2,1,2,1,2]).
    H, G, T = 6, 2, 3
    qq = torch.randn(T, H, D, dtype=torch.float64)
    kk = torch.randn(T, G, D, dtype=torch.float64)
    vv = torch.stack([torch.full((T, D), g + 1.0, dtype=torch.float64) for g in range(G)], dim=1)
    p = torch.arange(T)
    out = attention(qq, kk, vv, p, p)
    got = out[:, :, 0].round().long()[0].tolist()
    check(got == [1, 1, 1, 2, 2, 2] and kv_head_of(H, G).tolist() == [0, 0, 0, 1, 1, 1],
          f"GQA: query head h reads KV head h // (H/G): heads -> {got}")
    # attention weights: query 0 sees only key 0
    vv2 = torch.randn(T, G, D, dtype=torch.float64)
    out = attention(qq, kk, vv2, p, p)
    check(torch.allclose(out[0, 0], vv2[0, 0]) and torch.allclose(out[0, 5], vv2[0, 1]),
          "position 0 attends only to itself")


def test_model(tmp, sp_model):
    print("model: f32 file vs naive loops, prefill vs decode, causality, variants")
    V = 320 if sp_model else 300
    w = random_weights(V, seed=4)
    extra = [("memory3.memory.layer_count", 1, T_UINT32, -1),
             ("memory3.memory.reference_prefix", "<s>Reference:", T_STRING, -1),
             ("zzz.unknown.f64s", [1.0, 2.0], T_ARRAY, T_FLOAT64)]
    f32 = os.path.join(tmp, "tiny-f32.gguf")
    write_model(f32, w, **CFG, sp_model=sp_model, extra_kv=extra, shuffle_seed=7)
    m = LlamaModel.from_gguf(f32)
    c = m.cfg
    check((c.arch, c.n_embd, c.n_layer, c.n_ff, c.n_head, c.n_head_kv, c.head_dim, c.n_vocab,
           c.tied_embeddings) == ("memory3", 64, 2, 96, 4, 2, 16, V, False),
          f"config read back: {c}")
    rng = np.random.default_rng(5)
    toks = [1] + rng.integers(0, V, 23).tolist()          # T = 24
    lg = m.forward(toks)
    check(tuple(lg.shape) == (24, V) and lg.dtype == torch.float64, "logits [T, V] float64")
    ref = naive_forward(w, CFG, toks)
    d = float(np.abs(lg.numpy() - ref).max())
    check(d < 1e-10, f"matches the naive loop implementation (complex RoPE): max diff {d:.2e}")
    # the logits are not degenerate (attention actually mixes positions)
    check(float(lg.std()) > 0.1 and not torch.allclose(lg[5], lg[6]), "logits not degenerate")

    dec = m.decode(toks)
    d1 = float((lg - dec).abs().max())
    check(d1 < 1e-12, f"prefill == token-by-token KV-cache decode: max diff {d1:.2e}")
    dec2 = m.decode(toks, prefill=10)
    d2 = float((lg - dec2).abs().max())
    check(d2 < 1e-12, f"prefill 10 then decode 14 == prefill: max diff {d2:.2e}")

    toks2 = list(toks)
    toks2[15] = (toks2[15] + 1) % V
    lg2 = m.forward(toks2)
    check(torch.equal(lg[:15], lg2[:15]) and not torch.allclose(lg[15:], lg2[15:]),
          "causal: changing token 15 leaves logits 0..14 bit-identical and changes 15..")

    m32 = LlamaModel.from_gguf(f32, dtype=torch.float32)
    d32 = float((m32.forward(toks).double() - lg).abs().max())
    check(d32 < 1e-3, f"float32 mode close to float64: max diff {d32:.2e}")

    # llama architecture, no key_length key (default C/H), tied embeddings
    wt = random_weights(V, seed=6, tied=True)
    pt = os.path.join(tmp, "tiny-llama-tied.gguf")
    write_model(pt, wt, arch="llama", write_key_length=False, **CFG)
    mt = LlamaModel.from_gguf(pt)
    dt = float(np.abs(mt.forward(toks).numpy() - naive_forward(wt, CFG, toks)).max())
    check(mt.cfg.arch == "llama" and mt.cfg.tied_embeddings and mt.cfg.head_dim == 16 and dt < 1e-10,
          f"llama arch, tied embeddings (no output.weight), default D=C/H: max diff {dt:.2e}")

    # a head dim that is not C/H (D=8 with C=64, H=4): key_length must be honoured
    cfg8 = dict(CFG, head_dim=8)
    w8 = random_weights(V, seed=8, D=8)
    p8 = os.path.join(tmp, "tiny-d8.gguf")
    write_model(p8, w8, **cfg8)
    m8 = LlamaModel.from_gguf(p8)
    d8 = float(np.abs(m8.forward(toks[:8]).numpy() - naive_forward(w8, cfg8, toks[:8])).max())
    check(m8.cfg.head_dim == 8 and d8 < 1e-10, f"key_length D=8 != C/H: max diff {d8:.2e}")

    # quantized and half-precision files
    print("model: quantized / half-precision files")
    for wtype, lim in (("f16", 0.01), ("bf16", 0.05), ("q8_0", 0.05), ("q4_0", 0.5)):
        pq = os.path.join(tmp, f"tiny-{wtype}.gguf")
        write_model(pq, w, **CFG, wtype=wtype, sp_model=sp_model)
        mq = LlamaModel.from_gguf(pq)
        with GGUFFile(pq) as g:
            types = {ti.type_name for n, ti in g.tensors.items() if len(ti.ne) == 2}
        lq = mq.forward(toks)
        rel = float((lq - lg).norm() / lg.norm())
        dq = float((mq.decode(toks) - lq).abs().max())
        check(types == {wtype} and rel < lim and dq < 1e-12,
              f"{wtype}: logits rel. error vs f32 {rel:.4f} (< {lim}), prefill==decode {dq:.1e}")
    return f32, toks


def test_make_goldens(tmp, f32_path, sp_model):
    print("make_goldens.py end to end")
    if sp_model is None:
        print("  skip  (no SentencePiece model)")
        return
    import sentencepiece as spm
    prompt = "The quick brown fox reads its memory. Ünïcode ✓ bytes 日本\n"
    pf = os.path.join(tmp, "prompt.txt")
    with open(pf, "w", encoding="utf-8") as f:
        f.write(prompt)
    out = os.path.join(tmp, "golden")
    r = subprocess.run([sys.executable, os.path.join(HERE, "make_goldens.py"), "--model", f32_path,
                        "--prompt-file", pf, "--out", out, "--name", "tiny"],
                       capture_output=True, text=True)
    print("\n".join("        | " + ln for ln in r.stdout.rstrip().splitlines()))
    if r.stderr.strip():
        print("\n".join("        ! " + ln for ln in r.stderr.rstrip().splitlines()))
    check(r.returncode == 0, "make_goldens.py exit status 0")
    if r.returncode != 0:
        return
    sp = spm.SentencePieceProcessor(model_proto=sp_model)
    exp = [sp.bos_id()] + sp.encode(prompt)
    j = json.load(open(os.path.join(out, "tiny.tokens.json"), encoding="utf-8"))
    check(j["tokens"] == exp and j["prompt"] == prompt and j["model"] == os.path.basename(f32_path),
          f"tokens.json: BOS + encode(prompt), {len(exp)} tokens")
    check(sp.decode(exp[1:]) == prompt.rstrip("\n") or sp.decode(exp[1:]) == prompt,
          "tokenization round-trips the prompt (byte fallback)")
    for nm in ("logits", "decode"):
        fn = os.path.join(out, f"tiny.{nm}.npy")
        head = open(fn, "rb").read(10)
        a = np.load(fn)
        check(head[:8] == b"\x93NUMPY\x01\x00" and a.dtype.str == "<f4" and a.flags.c_contiguous
              and a.shape == (len(exp), 320), f"{nm}.npy: v1.0, <f4, C order, shape {a.shape}")
    m = LlamaModel.from_gguf(f32_path)
    ref = m.forward(exp).numpy().astype(np.float32)
    check(np.array_equal(np.load(os.path.join(out, "tiny.logits.npy")), ref),
          "logits.npy == float32(float64 forward)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", help="write the test files here and keep them")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, numpy {np.__version__}")
    with tempfile.TemporaryDirectory() as td:
        tmp = args.keep or td
        os.makedirs(tmp, exist_ok=True)
        sp_model = train_sentencepiece()
        f32_path = None
        for fn in (lambda: test_block_layouts(tmp), lambda: test_quantizers(tmp),
                   lambda: test_metadata(tmp), lambda: test_reader_errors(tmp),
                   test_rope_and_gqa):
            try:
                fn()
            except Exception:
                traceback.print_exc()
                FAILURES.append("exception")
        try:
            f32_path, _ = test_model(tmp, sp_model)
            test_make_goldens(tmp, f32_path, sp_model)
        except Exception:
            traceback.print_exc()
            FAILURES.append("exception")
    if FAILURES:
        print(f"\nSELFTEST FAILED: {len(FAILURES)} check(s)")
        for f in FAILURES:
            print(f"  - {f}")
        return 1
    print("\nSELFTEST PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
