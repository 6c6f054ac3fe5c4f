#!/usr/bin/python3
"""Copy a memory3 GGUF model with other memory settings: the kept tokens per (layer, KV head) and
the memories read per chunk are uint32 metadata, read at load; the weights are untouched.

    /usr/bin/python3 tools/set_memory_config.py IN.gguf OUT.gguf [--tokens-per-head K] [--per-chunk N]

How the demo model got K = 16 and 1 memory per chunk (docs/results.md, "Kept tokens"). Each key must
occur exactly once in the header as a uint32; `m3 inspect OUT.gguf` then validates the result
(K ≤ the reference length). A bank written with other settings is refused by the new model (its
fingerprint differs): memorize again.
"""

import argparse
import struct
import sys

GGUF_UINT32 = 4
KEYS = {"tokens_per_head": "memory3.memory.tokens_per_head", "per_chunk": "memory3.memory.per_chunk"}


def set_u32(data: bytearray, path: str, key: str, value: int) -> int:
    name = key.encode()
    # A key is stored as u64 length + bytes, then its u32 type and value.
    pattern = struct.pack("<Q", len(name)) + name
    at = data.find(pattern)
    if at < 0 or data.find(pattern, at + 1) >= 0:
        sys.exit("%s: expected exactly one metadata key %s" % (path, key))
    at += len(pattern)
    (vtype,) = struct.unpack_from("<I", data, at)
    if vtype != GGUF_UINT32:
        sys.exit("%s: %s has GGUF type %d, not uint32" % (path, key, vtype))
    (old,) = struct.unpack_from("<I", data, at + 4)
    struct.pack_into("<I", data, at + 4, value)
    return old


ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("input")
ap.add_argument("output")
ap.add_argument("--tokens-per-head", type=int)
ap.add_argument("--per-chunk", type=int)
args = ap.parse_args()
with open(args.input, "rb") as f:
    blob = bytearray(f.read())
if blob[:4] != b"GGUF":
    sys.exit("%s: not a GGUF file (magic %r)" % (args.input, bytes(blob[:4])))
for option, key in KEYS.items():
    value = getattr(args, option)
    if value is None:
        continue
    if value <= 0:
        sys.exit("--%s must be positive" % option.replace("_", "-"))
    print("%s: %d -> %d" % (key, set_u32(blob, args.input, key, value), value))
with open(args.output, "wb") as f:
    f.write(blob)
