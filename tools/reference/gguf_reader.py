"""Minimal, self-contained GGUF reader for the m3 reference oracle.

Written from the GGUF v3 layout with nothing but struct / numpy / mmap (no `gguf` package), so
that it is independent of both llama.cpp's Python code and m3's C++ reader.

File layout (all little-endian):
    magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv x      { string key | u32 value_type | value }
    n_tensors x { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset }
    padding up to general.alignment (default 32)
    tensor data; each tensor at data_start + offset
A string is u64 length + bytes (UTF-8, no terminator). An ARRAY value is u32 element type,
u64 count, then the elements.

ne[0] is the innermost (fastest-varying) dimension, so a tensor with ne = {in, out} is returned as
a numpy array of shape [out, in] (torch order: the ne list reversed), row-major.

Dequantization of every supported ggml type is done here in numpy:
    F32 (0), F16 (1), Q4_0 (2), Q8_0 (8), BF16 (30).
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# ---- metadata value types --------------------------------------------------------------------
T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL, T_STRING, T_ARRAY, \
    T_UINT64, T_INT64, T_FLOAT64 = range(13)

# fixed-size scalar types: type -> (struct format, numpy dtype)
SCALAR_TYPES = {
    T_UINT8: ("<B", np.dtype("<u1")),
    T_INT8: ("<b", np.dtype("<i1")),
    T_UINT16: ("<H", np.dtype("<u2")),
    T_INT16: ("<h", np.dtype("<i2")),
    T_UINT32: ("<I", np.dtype("<u4")),
    T_INT32: ("<i", np.dtype("<i4")),
    T_FLOAT32: ("<f", np.dtype("<f4")),
    T_BOOL: ("<?", np.dtype("u1")),
    T_UINT64: ("<Q", np.dtype("<u8")),
    T_INT64: ("<q", np.dtype("<i8")),
    T_FLOAT64: ("<d", np.dtype("<f8")),
}
VALUE_TYPE_NAMES = {
    T_UINT8: "UINT8", T_INT8: "INT8", T_UINT16: "UINT16", T_INT16: "INT16", T_UINT32: "UINT32",
    T_INT32: "INT32", T_FLOAT32: "FLOAT32", T_BOOL: "BOOL", T_STRING: "STRING", T_ARRAY: "ARRAY",
    T_UINT64: "UINT64", T_INT64: "INT64", T_FLOAT64: "FLOAT64",
}

# ---- ggml tensor types -----------------------------------------------------------------------
GGML_F32, GGML_F16, GGML_Q4_0, GGML_Q8_0, GGML_BF16 = 0, 1, 2, 8, 30

QK = 32  # elements per block for Q4_0 and Q8_0

# type -> (name, block size in elements, bytes per block)
GGML_TYPES = {
    GGML_F32: ("f32", 1, 4),
    GGML_F16: ("f16", 1, 2),
    GGML_Q4_0: ("q4_0", QK, 2 + QK // 2),   # fp16 d, 16 bytes of nibbles -> 18 bytes
    GGML_Q8_0: ("q8_0", QK, 2 + QK),        # fp16 d, 32 int8            -> 34 bytes
    GGML_BF16: ("bf16", 1, 2),
}
GGML_TYPE_BY_NAME = {v[0]: k for k, v in GGML_TYPES.items()}

# numpy views of one block
Q8_0_BLOCK = np.dtype([("d", "<f2"), ("qs", "i1", (QK,))])
Q4_0_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])
assert Q8_0_BLOCK.itemsize == 34 and Q4_0_BLOCK.itemsize == 18

MAX_DIMS = 4


class GGUFError(ValueError):
    """Malformed or unsupported GGUF file."""


@dataclass
class TensorInfo:
    name: str
    ne: Tuple[int, ...]     # ggml order: ne[0] innermost
    ggml_type: int
    offset: int             # relative to the data section start
    n_elements: int
    n_bytes: int

    @property
    def shape(self) -> Tuple[int, ...]:
        """numpy / torch shape: ne reversed."""
        return tuple(reversed(self.ne))

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.ggml_type][0]


def tensor_nbytes(ne: Tuple[int, ...], ggml_type: int, name: str = "?") -> int:
    if ggml_type not in GGML_TYPES:
        raise GGUFError(f"tensor {name!r}: unsupported ggml type {ggml_type} "
                        f"(supported: {sorted(GGML_TYPES)})")
    tname, blck, tsize = GGML_TYPES[ggml_type]
    if ne[0] % blck != 0:
        raise GGUFError(f"tensor {name!r}: type {tname} needs ne[0]={ne[0]} to be a multiple "
                        f"of {blck}")
    n = 1
    for d in ne:
        n *= d
    return n // blck * tsize


# ---- dequantization ----------------------------------------------------------------------------

def fp16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """IEEE binary16 bit patterns (uint16) -> float32 (exact)."""
    return bits.astype("<u2").view("<f2").astype(np.float32)


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 = upper 16 bits of a float32 (exact)."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def dequant_q8_0(raw: np.ndarray, n: int) -> np.ndarray:
    """raw: uint8 buffer of n/32 blocks -> float32[n]. x = d * q."""
    blocks = raw.view(Q8_0_BLOCK)
    d = blocks["d"].astype(np.float32)[:, None]          # [nb, 1]
    q = blocks["qs"].astype(np.float32)                  # [nb, 32]
    out = (d * q).reshape(-1)
    assert out.size == n
    return out


def dequant_q4_0(raw: np.ndarray, n: int) -> np.ndarray:
    """raw: uint8 buffer of n/32 blocks -> float32[n].
    x[j] = ((qs[j] & 0xF) - 8) * d,  x[j+16] = ((qs[j] >> 4) - 8) * d,  j = 0..15."""
    blocks = raw.view(Q4_0_BLOCK)
    d = blocks["d"].astype(np.float32)[:, None]          # [nb, 1]
    qs = blocks["qs"]                                    # [nb, 16] uint8
    lo = (qs & 0x0F).astype(np.int16) - 8                # elements 0..15
    hi = (qs >> 4).astype(np.int16) - 8                  # elements 16..31
    q = np.concatenate([lo, hi], axis=1).astype(np.float32)  # [nb, 32]
    out = (d * q).reshape(-1)
    assert out.size == n
    return out


def dequantize(raw: np.ndarray, ggml_type: int, n: int) -> np.ndarray:
    """raw uint8 bytes of one tensor -> flat float32 array of n elements."""
    if ggml_type == GGML_F32:
        return raw.view("<f4").astype(np.float32)
    if ggml_type == GGML_F16:
        return fp16_bits_to_f32(raw.view("<u2"))
    if ggml_type == GGML_BF16:
        return bf16_bits_to_f32(raw.view("<u2"))
    if ggml_type == GGML_Q8_0:
        return dequant_q8_0(raw, n)
    if ggml_type == GGML_Q4_0:
        return dequant_q4_0(raw, n)
    raise GGUFError(f"unsupported ggml type {ggml_type}")


# ---- the reader ---------------------------------------------------------------------------------

class _Cursor:
    """Bounds-checked little-endian reader over a buffer."""

    def __init__(self, buf, size: int):
        self.buf = buf
        self.size = size
        self.pos = 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFError(f"truncated file: need {n} bytes for {what} at offset {self.pos}, "
                            f"file has {self.size}")

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        v = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v[0] if len(v) == 1 else v

    def u32(self, what: str) -> int:
        return self.unpack("<I", what)

    def u64(self, what: str) -> int:
        return self.unpack("<Q", what)

    def raw(self, n: int, what: str) -> bytes:
        self.need(n, what)
        b = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return b

    def string(self, what: str) -> str:
        n = self.u64(f"length of {what}")
        if n > self.size:
            raise GGUFError(f"{what}: string length {n} exceeds file size {self.size}")
        b = self.raw(n, what)
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError as e:
            raise GGUFError(f"{what}: invalid UTF-8 ({e})") from None


class GGUFFile:
    """A parsed GGUF file. `metadata` maps key -> Python value (arrays of numbers become numpy
    arrays, arrays of strings become lists, UINT8/INT8 arrays stay numpy arrays; use
    `metadata_bytes(key)` for a byte blob). `tensors` maps name -> TensorInfo, in file order."""

    def __init__(self, path: str):
        self.path = path
        self._f = open(path, "rb")
        size = os.fstat(self._f.fileno()).st_size
        if size == 0:
            raise GGUFError(f"{path}: empty file")
        self._mm = mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ)
        self.file_size = size
        self.metadata: Dict[str, Any] = {}
        self.metadata_types: Dict[str, int] = {}
        self.tensors: Dict[str, TensorInfo] = {}
        try:
            self._parse()
        except GGUFError as e:
            self.close()
            raise GGUFError(f"{path}: {e}") from None

    # -- lifecycle
    def close(self) -> None:
        if getattr(self, "_mm", None) is not None:
            try:
                self._mm.close()
            except BufferError:     # a caller still holds a view: let GC unmap it
                pass
            self._mm = None
        if getattr(self, "_f", None) is not None:
            self._f.close()
            self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- parsing
    def _read_value(self, c: _Cursor, vtype: int, what: str):
        if vtype in SCALAR_TYPES:
            fmt, _ = SCALAR_TYPES[vtype]
            v = c.unpack(fmt, what)
            return bool(v) if vtype == T_BOOL else v
        if vtype == T_STRING:
            return c.string(what)
        if vtype == T_ARRAY:
            etype = c.u32(f"element type of {what}")
            count = c.u64(f"element count of {what}")
            if etype in SCALAR_TYPES:
                _, dt = SCALAR_TYPES[etype]
                nbytes = count * dt.itemsize
                c.need(nbytes, what)
                arr = np.frombuffer(self._mm, dtype=dt, count=count, offset=c.pos).copy()
                c.pos += nbytes
                if etype == T_BOOL:
                    arr = arr.astype(bool)
                return arr
            if etype == T_STRING:
                if count > c.size:
                    raise GGUFError(f"{what}: array count {count} is impossible")
                return [c.string(f"{what}[{i}]") for i in range(count)]
            if etype == T_ARRAY:
                if count > c.size:
                    raise GGUFError(f"{what}: array count {count} is impossible")
                # nested arrays: each element is (type, count, elems) again
                return [self._read_value(c, T_ARRAY, f"{what}[{i}]") for i in range(count)]
            raise GGUFError(f"{what}: unknown array element type {etype}")
        raise GGUFError(f"{what}: unknown value type {vtype}")

    def _parse(self) -> None:
        c = _Cursor(self._mm, self.file_size)
        magic = c.raw(4, "magic")
        if magic != GGUF_MAGIC:
            raise GGUFError(f"bad magic {magic!r} (expected b'GGUF')")
        self.version = c.u32("version")
        if self.version not in (2, 3):
            raise GGUFError(f"unsupported GGUF version {self.version} (expected 3; 2 accepted)")
        n_tensors = c.u64("tensor count")
        n_kv = c.u64("metadata count")
        # every kv needs >= 12 bytes, every tensor info >= 24: reject absurd counts early
        if n_kv * 12 > self.file_size or n_tensors * 24 > self.file_size:
            raise GGUFError(f"impossible counts: n_tensors={n_tensors} n_kv={n_kv} for a "
                            f"{self.file_size}-byte file")

        for i in range(n_kv):
            key = c.string(f"metadata key #{i}")
            vtype = c.u32(f"type of metadata {key!r}")
            val = self._read_value(c, vtype, f"metadata {key!r}")
            if key in self.metadata:
                raise GGUFError(f"duplicate metadata key {key!r}")
            self.metadata[key] = val
            self.metadata_types[key] = vtype

        infos: List[TensorInfo] = []
        for i in range(n_tensors):
            name = c.string(f"tensor name #{i}")
            n_dims = c.u32(f"n_dims of tensor {name!r}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise GGUFError(f"tensor {name!r}: n_dims={n_dims} out of range 1..{MAX_DIMS}")
            ne = tuple(c.u64(f"ne[{d}] of tensor {name!r}") for d in range(n_dims))
            if any(d <= 0 for d in ne):
                raise GGUFError(f"tensor {name!r}: non-positive dimension in ne={ne}")
            gtype = c.u32(f"type of tensor {name!r}")
            offset = c.u64(f"offset of tensor {name!r}")
            nbytes = tensor_nbytes(ne, gtype, name)
            n = 1
            for d in ne:
                n *= d
            if name in self.tensors:
                raise GGUFError(f"duplicate tensor name {name!r}")
            ti = TensorInfo(name, ne, gtype, offset, n, nbytes)
            self.tensors[name] = ti
            infos.append(ti)

        align = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if "general.alignment" in self.metadata:
            if self.metadata_types["general.alignment"] != T_UINT32:
                raise GGUFError("general.alignment must be UINT32")
            if align <= 0 or align & (align - 1):
                raise GGUFError(f"general.alignment={align} is not a power of two")
        self.alignment = align
        self.header_end = c.pos
        self.data_start = (c.pos + align - 1) // align * align
        if self.data_start > self.file_size and infos:
            raise GGUFError(f"data section starts at {self.data_start}, past end of file "
                            f"({self.file_size})")

        spans = []
        for ti in infos:
            if ti.offset % align != 0:
                raise GGUFError(f"tensor {ti.name!r}: offset {ti.offset} not aligned to {align}")
            start = self.data_start + ti.offset
            end = start + ti.n_bytes
            if end > self.file_size:
                raise GGUFError(f"tensor {ti.name!r} ({ti.type_name}, ne={list(ti.ne)}): data "
                                f"[{start}, {end}) runs past end of file ({self.file_size})")
            spans.append((start, end, ti.name))
        spans.sort()
        for (s0, e0, n0), (s1, e1, n1) in zip(spans, spans[1:]):
            if s1 < e0:
                raise GGUFError(f"tensors {n0!r} and {n1!r} overlap in the data section")

    # -- access
    def _view(self, name: str) -> np.ndarray:
        """uint8 view into the mapping; must not outlive the call that made it."""
        if self._mm is None:
            raise GGUFError(f"{self.path}: file is closed")
        ti = self.tensor_info(name)
        start = self.data_start + ti.offset
        return np.frombuffer(self._mm, dtype=np.uint8, count=ti.n_bytes, offset=start)

    def raw_bytes(self, name: str) -> np.ndarray:
        """The tensor's stored bytes (a copy, so the file can be closed)."""
        return self._view(name).copy()

    def tensor_info(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise KeyError(f"{self.path}: no tensor named {name!r}")
        return self.tensors[name]

    def tensor(self, name: str, dtype=np.float32) -> np.ndarray:
        """Dequantized tensor in torch order (ne reversed), a fresh C-contiguous array."""
        ti = self.tensor_info(name)
        flat = dequantize(self._view(name), ti.ggml_type, ti.n_elements)
        return np.ascontiguousarray(flat.reshape(ti.shape), dtype=dtype)

    def has_tensor(self, name: str) -> bool:
        return name in self.tensors

    def metadata_bytes(self, key: str) -> bytes:
        v = self.metadata[key]
        if isinstance(v, np.ndarray) and v.dtype.itemsize == 1:
            return v.tobytes()
        raise GGUFError(f"metadata {key!r} is not a byte array")

    def describe(self, max_array: int = 8) -> str:
        lines = [f"{self.path}: GGUF v{self.version}, {len(self.metadata)} metadata keys, "
                 f"{len(self.tensors)} tensors, alignment {self.alignment}, "
                 f"data at {self.data_start}"]
        for k, v in self.metadata.items():
            t = VALUE_TYPE_NAMES.get(self.metadata_types[k], "?")
            if isinstance(v, np.ndarray):
                s = f"[{v.dtype} x {v.size}]" + (f" {v[:max_array].tolist()}..." if v.size else "")
            elif isinstance(v, list):
                s = f"[{len(v)} items] {v[:max_array]!r}..."
            else:
                s = repr(v)
            lines.append(f"  {k} ({t}) = {s}")
        for ti in self.tensors.values():
            lines.append(f"  tensor {ti.name}: {ti.type_name} shape={list(ti.shape)} "
                         f"(ne={list(ti.ne)}) offset={ti.offset}")
        return "\n".join(lines)


# ---- model hyperparameters ----------------------------------------------------------------------

@dataclass
class ModelConfig:
    arch: str
    n_ctx: int           # context_length
    n_embd: int          # C
    n_layer: int         # L
    n_ff: int            # F
    n_head: int          # H
    n_head_kv: int       # G
    head_dim: int        # D
    rms_eps: float
    rope_theta: float
    n_vocab: int         # V
    n_rot: int           # rotated dims per head (= D unless rope.dimension_count says less)
    tied_embeddings: bool


SUPPORTED_ARCHS = ("memory3", "llama")


def read_config(g: GGUFFile) -> ModelConfig:
    md = g.metadata
    arch = md.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise GGUFError(f"{g.path}: general.architecture={arch!r}, expected one of "
                        f"{SUPPORTED_ARCHS}")

    def get(key, default=None, required=True):
        full = f"{arch}.{key}"
        if full in md:
            return md[full]
        if not required:
            return default
        raise GGUFError(f"{g.path}: missing metadata key {full!r}")

    C = int(get("embedding_length"))
    H = int(get("attention.head_count"))
    G = int(get("attention.head_count_kv", H, required=False))
    D = int(get("attention.key_length", C // H if H else 0, required=False))
    Dv = int(get("attention.value_length", D, required=False))
    if Dv != D:
        raise GGUFError(f"{g.path}: value_length {Dv} != key_length {D} is not supported")
    if H <= 0 or G <= 0 or H % G != 0:
        raise GGUFError(f"{g.path}: head_count={H} must be a positive multiple of "
                        f"head_count_kv={G}")
    emb = g.tensor_info("token_embd.weight")
    V = int(get("vocab_size", emb.shape[0], required=False))
    n_rot = int(get("rope.dimension_count", D, required=False))
    if n_rot % 2 or n_rot > D:
        raise GGUFError(f"{g.path}: rope.dimension_count={n_rot} invalid for head dim {D}")
    return ModelConfig(
        arch=arch,
        n_ctx=int(get("context_length", 0, required=False)),
        n_embd=C,
        n_layer=int(get("block_count")),
        n_ff=int(get("feed_forward_length")),
        n_head=H,
        n_head_kv=G,
        head_dim=D,
        rms_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5, required=False)),
        rope_theta=float(get("rope.freq_base", 10000.0, required=False)),
        n_vocab=V,
        n_rot=n_rot,
        tied_embeddings=not g.has_tensor("output.weight"),
    )


def expected_shapes(cfg: ModelConfig) -> Dict[str, Tuple[int, ...]]:
    """Every tensor the model needs, with its torch-order shape."""
    C, F, H, G, D, V = cfg.n_embd, cfg.n_ff, cfg.n_head, cfg.n_head_kv, cfg.head_dim, cfg.n_vocab
    s = {"token_embd.weight": (V, C), "output_norm.weight": (C,)}
    if not cfg.tied_embeddings:
        s["output.weight"] = (V, C)
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        s[p + "attn_norm.weight"] = (C,)
        s[p + "attn_q.weight"] = (H * D, C)
        s[p + "attn_k.weight"] = (G * D, C)
        s[p + "attn_v.weight"] = (G * D, C)
        s[p + "attn_output.weight"] = (C, H * D)
        s[p + "ffn_norm.weight"] = (C,)
        s[p + "ffn_gate.weight"] = (F, C)
        s[p + "ffn_up.weight"] = (F, C)
        s[p + "ffn_down.weight"] = (C, F)
    return s


def load_weights(g: GGUFFile, cfg: Optional[ModelConfig] = None,
                 dtype=np.float64) -> Dict[str, np.ndarray]:
    """All model tensors, dequantized, shape-checked, as numpy arrays of `dtype`."""
    cfg = cfg or read_config(g)
    out = {}
    for name, shape in expected_shapes(cfg).items():
        if not g.has_tensor(name):
            raise GGUFError(f"{g.path}: missing tensor {name!r}")
        ti = g.tensor_info(name)
        if ti.shape != shape:
            raise GGUFError(f"{g.path}: tensor {name!r} has shape {list(ti.shape)}, "
                            f"expected {list(shape)}")
        out[name] = g.tensor(name, dtype=dtype)
    return out


if __name__ == "__main__":
    import sys
    for p in sys.argv[1:]:
        with GGUFFile(p) as gf:
            print(gf.describe())
            try:
                print(read_config(gf))
            except GGUFError as e:
                print(f"(not a loadable model: {e})")
