// m3/forward.h — the transformer forward pass over a KV cache.
//
// One call of Forward::eval runs T new tokens (a prefill batch, or T = 1 for decode) at positions
// cache.size() .. cache.size()+T-1, appends their keys and values to the cache, and returns
// logits. Batched paths go through sgemm; T = 1 through the SIMD GEMV kernels.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "m3/kernels.h"
#include "m3/model.h"
#include "m3/tensor.h"
#include "m3/thread_pool.h"

namespace m3 {

// Keys (post-RoPE) and values of every layer for up to `capacity` positions.
// Layout per layer: k[t][G][D], v[t][G][D].
class KVCache {
 public:
  KVCache(const ModelConfig& config, int capacity);
  int size() const { return n_; }
  int capacity() const { return capacity_; }
  void clear() { n_ = 0; }
  void truncate(int n);
  float* k(int layer, int t) { return k_.as<float>() + (static_cast<size_t>(layer) * capacity_ + t) * row_; }
  float* v(int layer, int t) { return v_.as<float>() + (static_cast<size_t>(layer) * capacity_ + t) * row_; }
  const float* k(int layer, int t) const { return k_.as<float>() + (static_cast<size_t>(layer) * capacity_ + t) * row_; }
  const float* v(int layer, int t) const { return v_.as<float>() + (static_cast<size_t>(layer) * capacity_ + t) * row_; }
  void advance(int n) { n_ += n; }

  // RoPE position of cache row r: r, plus `gap` for rows at or after `from_row`. Memory³ puts the
  // prefix at rows (= positions) 0..p−1 and the context after a window of reference_length
  // positions that the memories share, so it sets a gap of reference_length from row p.
  void set_position_gap(int from_row, int gap) { gap_from_ = from_row; gap_ = gap; }
  int position(int row) const { return row >= gap_from_ ? row + gap_ : row; }

 private:
  int n_ = 0;
  int gap_from_ = 0, gap_ = 0;
  int capacity_;
  size_t row_;  // G·D
  Buffer k_, v_;
};

// Sees each layer's intermediate values during Forward::eval (the memory writer uses it to select
// tokens from un-rotated queries and keys). Pointers are valid only during the call.
//   q_raw [T, H·D] and k_raw [T, G·D]: projections before RoPE
//   the post-RoPE keys and the values of these T tokens are in the cache at rows cache_begin..
class LayerObserver {
 public:
  virtual ~LayerObserver() = default;
  virtual void on_layer(int layer, int64_t T, const float* q_raw, const float* k_raw, const KVCache& cache, int cache_begin) {
    (void)layer; (void)T; (void)q_raw; (void)k_raw; (void)cache; (void)cache_begin;
  }
  // The residual stream x [T, C] after layer `layer` (embedders pool it).
  virtual void on_hidden(int layer, int64_t T, const float* x) { (void)layer; (void)T; (void)x; }
};

// Keys and values that every query of one eval call attends to besides the cache, never written
// into it (Memory³: the current chunk's explicit memories at a memory layer). Layout head-major,
// because each KV head kept its own tokens: k, v [G][n][D], keys already rotated.
struct ExtraKV {
  const float* k = nullptr;
  const float* v = nullptr;
  int n = 0;
};

struct EvalOptions {
  int n_layers = -1;                 // run only the first n_layers (-1: all); no logits unless all run
  LayerObserver* observer = nullptr; // called after each layer's keys and values are cached
  std::span<const ExtraKV> extra;    // extra[l] for layer l; none for layers >= extra.size()
};

class Forward {
 public:
  // max_batch: the most tokens one eval call may carry (bounds the scratch buffers).
  Forward(const Model& model, ThreadPool* pool, int max_batch = 512);

  // Runs tokens; writes logits of every token ([T, V]) when all_logits, else of the last ([V]).
  // Throws m3::Error when a token id is out of range or the cache would overflow (naming the limit).
  void eval(std::span<const int32_t> tokens, KVCache& cache, float* logits, bool all_logits);
  // The same with options: a prefix of the layers (logits must then be null) and an observer.
  void eval(std::span<const int32_t> tokens, KVCache& cache, float* logits, bool all_logits, const EvalOptions& options);

  const Model& model() const { return model_; }

 private:
  static constexpr int64_t kAttnTile = 64;  // queries per attention work item in prefill
  void eval_batch(std::span<const int32_t> tokens, KVCache& cache, float* logits, bool all_logits, const EvalOptions& options);
  void attend_rows(int layer, int64_t T, int p0, const ExtraKV& extra, const KVCache& cache);
  void attend_batched(int layer, int64_t T, int p0, const ExtraKV& extra, const KVCache& cache);
  const Model& model_;
  ThreadPool* pool_;
  int max_batch_;
  Buffer x_, xn_, q_, k_, v_, att_, h_, gate_, up_, q_raw_, k_raw_;
  std::vector<float> scores_;  // attention scores, one slice per pool thread
  std::vector<RopeAngles> rope_;  // per token of the current call
};

}  // namespace m3
