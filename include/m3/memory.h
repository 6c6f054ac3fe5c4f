// m3/memory.h — one explicit memory (spec §2.1, decisions.md "Writing a memory").
//
// For each memory layer l < Lm and KV head g, the K (= 8) tokens of a reference that received
// the most attention: their positions j in the reference (the token was encoded at absolute
// position p + j, p = prefix length) and their post-RoPE keys and values. Layout, row-major:
//   positions [Lm][G][K]        int16, ascending within a (l, g); -1 marks an unused slot
//                               (a reference shorter than K tokens keeps all its tokens)
//   keys      [Lm][G][K][D]     f32 (zeros in unused slots)
//   values    [Lm][G][K][D]     f32
#pragma once

#include <cstdint>
#include <vector>

#include "m3/config.h"

namespace m3 {

struct MemoryShape {
  int layers = 0;    // Lm: memory layers (a prefix of the model's layers)
  int kv_heads = 0;  // G
  int kept = 0;      // K: tokens kept per (layer, KV head)
  int head_dim = 0;  // D
  int64_t slots() const { return int64_t(layers) * kv_heads * kept; }           // Lm·G·K
  int64_t floats() const { return slots() * head_dim; }                         // per keys or values
  static MemoryShape of(const ModelConfig& c) {
    return {c.memory.memory_layers, c.n_kv_heads, c.memory.tokens_per_head, c.head_dim};
  }
  bool operator==(const MemoryShape&) const = default;
};

struct ExplicitMemory {
  int64_t reference_id = -1;
  int n_tokens = 0;               // tokens of the reference (without the prefix)
  std::vector<int16_t> positions; // [Lm][G][K]
  std::vector<float> keys;        // [Lm][G][K][D]
  std::vector<float> values;      // [Lm][G][K][D]

  void resize(const MemoryShape& s) {
    positions.assign(static_cast<size_t>(s.slots()), -1);
    keys.assign(static_cast<size_t>(s.floats()), 0.0f);
    values.assign(static_cast<size_t>(s.floats()), 0.0f);
  }
  int kept_tokens(const MemoryShape& s) const { return n_tokens < s.kept ? n_tokens : s.kept; }
};

// Bytes of one memory stored raw in bf16: 2 (K and V) × Lm·G·K·D × 2 bytes (450,560 for the
// paper's 2.4B shape).
int64_t memory_bytes_bf16(const MemoryShape& s);

}  // namespace m3
