// m3/memory_writer.h — writing explicit memories (spec §2.2–2.3, decisions.md "Writing a memory").
//
// A reference (≤ reference_length tokens, no BOS) is encoded causally with RoPE behind the prefix
// "<s>Reference:" (p tokens, positions 0..p−1; reference token j at p+j) through the first Lm
// layers only. For each memory layer l and KV head g, reference token j gets the importance
//   w_j = Σ_i Σ_{h in g's query group} exp(q_i,h · k_j,g / √D − c_{l,g})
// with UN-rotated q and k, no mask, i and j over the reference's own tokens (prefix excluded), and
// c_{l,g} one constant per (l, g) (the maximum score) — never a per-row max, which would change
// the ranking. The K largest (ties: lower j first) are kept in ascending j, with their post-RoPE
// keys and their values.
//
// Shapes: Lm memory layers, G KV heads, K kept tokens, D head dim, T reference tokens.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "m3/forward.h"
#include "m3/memory.h"
#include "m3/model.h"
#include "m3/thread_pool.h"

namespace m3 {

// The fast writer. Holds the prefix's keys and values (computed once, in the constructor), one KV
// cache and the forward pass's scratch, so write() allocates little beyond the memory it returns.
// Not thread-safe: one writer per thread (they may share the Model and, used from one thread at a
// time, the pool). The model and pool must outlive the writer.
class MemoryWriter {
 public:
  // Throws m3::Error when the model has no tokenizer, no memory layers, or a prefix plus a full
  // reference that does not fit its context.
  MemoryWriter(const Model& model, ThreadPool* pool);
  ~MemoryWriter();
  MemoryWriter(const MemoryWriter&) = delete;
  MemoryWriter& operator=(const MemoryWriter&) = delete;

  // One memory. Throws m3::Error for an empty reference, one longer than reference_length, or a
  // token id outside the vocabulary (naming the limit). The result does not depend on what was
  // written before.
  ExplicitMemory write(std::span<const int32_t> reference_tokens, int64_t reference_id = -1);

  // One memory per reference, in order, each with reference_id −1 (ids are the caller's to give).
  // For now this simply calls write() per reference; encoding several references per GEMM is a
  // later performance step and must give the same memories.
  std::vector<ExplicitMemory> write_batch(const std::vector<std::vector<int32_t>>& references);

  // The prefix tokens: BOS followed by the tokens of the text after "<s>" of config.memory.prefix_text.
  const std::vector<int32_t>& prefix() const { return prefix_; }
  const MemoryShape& shape() const { return shape_; }

 private:
  class Selector;  // the LayerObserver that selects tokens layer by layer

  const Model& model_;
  ThreadPool* pool_;
  MemoryShape shape_;
  std::vector<int32_t> prefix_;
  Forward forward_;
  KVCache cache_;  // rows 0..p−1 hold the prefix (memory layers only); write() truncates back to p
  std::unique_ptr<Selector> selector_;
};

// The selection rule above for one layer and KV head g, in double: q holds n un-rotated query
// rows (row stride q_stride; query head h at h·D), k n un-rotated key rows (stride k_stride; KV
// head g at g·D); group = query heads per KV head. Returns the min(K, n) kept indices, ascending.
// The oracle writer below and stage-2 training (src/train/memory_train.cpp) both select with it.
std::vector<int32_t> select_kept_tokens(const float* q, int64_t q_stride, const float* k, int64_t k_stride, int64_t n, int g,
                                        int group, int D, int K);

namespace ref {
// The oracle beside MemoryWriter: one plain scalar pass over prefix + reference with m3::ref
// kernels (f64-accumulating matmul), causal attention written out, and selection in double.
// Slow; for tests. Same errors as MemoryWriter::write.
ExplicitMemory write_memory(const Model& model, std::span<const int32_t> reference);
}  // namespace ref

}  // namespace m3
