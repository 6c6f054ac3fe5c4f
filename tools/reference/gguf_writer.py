"""Small GGUF v3 writer plus numpy quantizers, used only by the reference self-tests
(writing random models from Python so the reader and the model can be tested without m3).

The quantizers follow ggml's reference (`quantize_row_q8_0_ref`, `quantize_row_q4_0_ref`):
  Q8_0: amax = max|x|, d = amax/127, id = 1/d, q = roundf(x*id) (half away from zero), store fp16(d)
  Q4_0: m = the element with the largest |x| (first one on ties), sign kept; d = m/-8, id = 1/d,
        q = min(15, trunc(x*id + 8.5)), byte j = q[j] | q[j+16] << 4, store fp16(d)
All arithmetic is done in float32 like the C code; fp16 conversion rounds to nearest even.
"""

from __future__ import annotations

import struct
from typing import Any, List, Tuple

import numpy as np

from gguf_reader import (DEFAULT_ALIGNMENT, GGML_BF16, GGML_F16, GGML_F32, GGML_Q4_0, GGML_Q8_0,
                         GGML_TYPE_BY_NAME, GGUF_MAGIC, QK, Q4_0_BLOCK, Q8_0_BLOCK, T_ARRAY,
                         T_BOOL, T_FLOAT32, T_FLOAT64, T_INT8, T_INT16, T_INT32, T_INT64,
                         T_STRING, T_UINT8, T_UINT16, T_UINT32, T_UINT64, SCALAR_TYPES)


# ---- quantizers --------------------------------------------------------------------------------

def _round_half_away(v: np.ndarray) -> np.ndarray:
    """C roundf on float32 values. Done in float64, where |v| + 0.5 is exact for |v| < 2^28."""
    v = v.astype(np.float64)
    return np.trunc(v + np.copysign(0.5, v))


def quantize_q8_0(x: np.ndarray) -> bytes:
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, QK)            # [nb, 32]
    amax = np.abs(x).max(axis=1)                                              # [nb]
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        idv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    q = _round_half_away((x * idv[:, None]).astype(np.float32))
    blocks = np.zeros(x.shape[0], dtype=Q8_0_BLOCK)
    blocks["d"] = d.astype(np.float16)
    blocks["qs"] = q.astype(np.int8)
    return blocks.tobytes()


def quantize_q4_0(x: np.ndarray) -> bytes:
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, QK)            # [nb, 32]
    idx = np.argmax(np.abs(x), axis=1)                                        # first max |x|
    m = x[np.arange(x.shape[0]), idx]                                         # signed
    d = (m / np.float32(-8)).astype(np.float32)
    with np.errstate(divide="ignore"):
        idv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    v = (x * idv[:, None]).astype(np.float32) + np.float32(8.5)
    q = np.minimum(15, np.trunc(v.astype(np.float32)).astype(np.int8).astype(np.int32))
    q = q.astype(np.uint8)
    blocks = np.zeros(x.shape[0], dtype=Q4_0_BLOCK)
    blocks["d"] = d.astype(np.float16)
    blocks["qs"] = q[:, :QK // 2] | (q[:, QK // 2:] << 4)
    return blocks.tobytes()


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even to bfloat16 (NaN kept quiet), as ggml_compute_fp32_to_bf16."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = (u + (0x7FFF + ((u >> 16) & 1))) >> 16
    r = np.where(nan, (u >> 16) | 64, r)
    return r.astype(np.uint16)


def encode_tensor(x: np.ndarray, ggml_type: int) -> bytes:
    if ggml_type == GGML_F32:
        return np.ascontiguousarray(x, dtype="<f4").tobytes()
    if ggml_type == GGML_F16:
        return np.ascontiguousarray(x, dtype="<f2").tobytes()
    if ggml_type == GGML_BF16:
        return f32_to_bf16_bits(x).astype("<u2").tobytes()
    if ggml_type == GGML_Q8_0:
        return quantize_q8_0(x)
    if ggml_type == GGML_Q4_0:
        return quantize_q4_0(x)
    raise ValueError(f"unsupported type {ggml_type}")


# ---- writer -------------------------------------------------------------------------------------

def _s(b: bytearray, text: str) -> None:
    e = text.encode("utf-8")
    b += struct.pack("<Q", len(e)) + e


class GGUFWriter:
    def __init__(self, alignment: int = DEFAULT_ALIGNMENT):
        self.kv: List[Tuple[str, int, Any, int]] = []   # key, type, value, elem type for arrays
        self.tensors: List[Tuple[str, Tuple[int, ...], int, bytes]] = []
        self.alignment = alignment
        if alignment != DEFAULT_ALIGNMENT:
            self.add("general.alignment", alignment, T_UINT32)

    def add(self, key: str, value: Any, vtype: int, elem_type: int = -1) -> None:
        self.kv.append((key, vtype, value, elem_type))

    def add_string(self, k, v): self.add(k, v, T_STRING)
    def add_u32(self, k, v): self.add(k, v, T_UINT32)
    def add_f32(self, k, v): self.add(k, v, T_FLOAT32)
    def add_bool(self, k, v): self.add(k, v, T_BOOL)
    def add_array(self, k, v, elem_type): self.add(k, v, T_ARRAY, elem_type)

    def add_tensor(self, name: str, x: np.ndarray, ggml_type) -> None:
        """x in torch order; stored with ne = reversed shape."""
        if isinstance(ggml_type, str):
            ggml_type = GGML_TYPE_BY_NAME[ggml_type]
        ne = tuple(reversed(x.shape))
        self.tensors.append((name, ne, ggml_type, encode_tensor(x, ggml_type)))

    def add_raw_tensor(self, name: str, ne: Tuple[int, ...], ggml_type: int, data: bytes) -> None:
        self.tensors.append((name, tuple(ne), ggml_type, bytes(data)))

    def _value(self, b: bytearray, vtype: int, v: Any, elem_type: int) -> None:
        if vtype == T_STRING:
            _s(b, v)
        elif vtype in SCALAR_TYPES:
            b += struct.pack(SCALAR_TYPES[vtype][0], v)
        elif vtype == T_ARRAY:
            if elem_type in SCALAR_TYPES:
                arr = np.asarray(v, dtype=SCALAR_TYPES[elem_type][1])
                b += struct.pack("<IQ", elem_type, arr.size) + arr.tobytes()
            elif elem_type == T_STRING:
                b += struct.pack("<IQ", elem_type, len(v))
                for s in v:
                    _s(b, s)
            else:
                raise ValueError(f"unsupported array element type {elem_type}")
        else:
            raise ValueError(f"unsupported value type {vtype}")

    def to_bytes(self) -> bytes:
        a = self.alignment
        b = bytearray(GGUF_MAGIC)
        b += struct.pack("<IQQ", 3, len(self.tensors), len(self.kv))
        for key, vtype, v, et in self.kv:
            _s(b, key)
            b += struct.pack("<I", vtype)
            self._value(b, vtype, v, et)
        offsets, off = [], 0
        for _, _, _, data in self.tensors:
            offsets.append(off)
            off = (off + len(data) + a - 1) // a * a
        for (name, ne, t, _), o in zip(self.tensors, offsets):
            _s(b, name)
            b += struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
            b += struct.pack("<IQ", t, o)
        b += b"\0" * ((-len(b)) % a)
        start = len(b)
        for (_, _, _, data), o in zip(self.tensors, offsets):
            b += b"\0" * (start + o - len(b))
            b += data
        return bytes(b)

    def write(self, path: str) -> None:
        with open(path, "wb") as f:
            f.write(self.to_bytes())


# ---- convenience: a whole model ---------------------------------------------------------------

def write_model(path: str, weights: dict, *, arch: str = "memory3", n_ctx: int, n_embd: int,
                n_layer: int, n_ff: int, n_head: int, n_head_kv: int, head_dim: int,
                rms_eps: float = 1e-5, rope_theta: float = 10000.0, wtype="f32",
                sp_model: bytes = None, extra_kv=(), shuffle_seed=None,
                alignment: int = DEFAULT_ALIGNMENT, write_key_length: bool = True) -> None:
    """weights: name -> float array (torch order). 2-D weights get `wtype`; 1-D norms stay f32
    (as llama.cpp does)."""
    w = GGUFWriter(alignment)
    A = arch
    w.add_string("general.architecture", arch)
    w.add_string("general.name", "m3-reference-selftest")
    for k, v, t, et in extra_kv:
        w.add(k, v, t, et)
    w.add_u32(f"{A}.context_length", n_ctx)
    w.add_u32(f"{A}.embedding_length", n_embd)
    w.add_u32(f"{A}.block_count", n_layer)
    w.add_u32(f"{A}.feed_forward_length", n_ff)
    w.add_u32(f"{A}.attention.head_count", n_head)
    w.add_u32(f"{A}.attention.head_count_kv", n_head_kv)
    if write_key_length:
        w.add_u32(f"{A}.attention.key_length", head_dim)
    w.add_f32(f"{A}.attention.layer_norm_rms_epsilon", rms_eps)
    w.add_f32(f"{A}.rope.freq_base", rope_theta)
    w.add_u32(f"{A}.vocab_size", weights["token_embd.weight"].shape[0])
    if sp_model is not None:
        w.add_string("tokenizer.ggml.model", "llama")
        w.add_array("tokenizer.sentencepiece.model", np.frombuffer(sp_model, np.uint8), T_UINT8)
    names = list(weights)
    if shuffle_seed is not None:
        np.random.default_rng(shuffle_seed).shuffle(names)
    for n in names:
        x = weights[n]
        w.add_tensor(n, x, wtype if x.ndim == 2 else "f32")
    w.write(path)


__all__ = ["GGUFWriter", "quantize_q8_0", "quantize_q4_0", "f32_to_bf16_bits", "encode_tensor",
           "write_model", "T_UINT8", "T_INT8", "T_UINT16", "T_INT16", "T_UINT32", "T_INT32",
           "T_FLOAT32", "T_BOOL", "T_STRING", "T_ARRAY", "T_UINT64", "T_INT64", "T_FLOAT64"]
