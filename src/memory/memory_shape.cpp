// Sizes of explicit memories (spec §2.5 arithmetic, used by `m3 bank info`).
#include "m3/memory.h"

namespace m3 {

// Nothing here yet beyond the header's inline helpers; the translation unit anchors m3_memory.
int64_t memory_bytes_bf16(const MemoryShape& s) { return 2 /*K,V*/ * s.floats() * 2 /*bytes*/; }

}  // namespace m3
