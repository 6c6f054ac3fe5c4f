// train/layer_stack.h — the first n transformer layers over B sequences, forward and backward,
// keeping what backward needs. The one place the training forward of a layer is written; stage 1
// runs all layers of the context through it, stage 2 runs three stacks (the prefix, the
// references through the memory layers, the context) that feed each other's attention.
//
//   x = embed(tokens)                                      res[0]    (N,C)
//   per layer l < n:
//     xa = rmsnorm(res[l]) · attn_norm
//     q = xa·Wqᵀ  k = xa·Wkᵀ  v = xa·Wvᵀ          (observer sees q, k here, before RoPE)
//     rope(q), rope(k) at positions pos0 + t
//     ao = attention(q, k, v  beside the layer's external rows, AttentionExt)
//     mid[l] = res[l] + ao·Woᵀ
//     xf = rmsnorm(mid[l]) · ffn_norm;  m = silu(xf·Wgateᵀ) · (xf·Wupᵀ)
//     res[l+1] = mid[l] + m·Wdownᵀ
//
// Backward takes d res[n] (or nothing: a stack read only through its keys and values) and
// gradients to add to each layer's post-RoPE keys and values (what other stacks' attention sent
// back), adds every weight gradient, and the external rows' gradients into AttentionExt::dk/dv.
#pragma once

#include <cstdint>
#include <functional>

#include "m3/config.h"
#include "m3/tensor.h"
#include "m3/train.h"
#include "train/ops.h"

namespace m3::train {

struct StackShape {
  int B = 0, T = 0;        // sequences, rows per sequence
  int n_layers = 0;        // layers 0..n_layers−1
  int64_t pos0 = 0;        // RoPE position of row 0
  int64_t block = 64;      // attention query block (retrieval chunk)
  int64_t ext_rows = 0;    // external rows per block at most (E)
  bool operator==(const StackShape&) const = default;
};

// Called at every layer with that layer's un-rotated q (N, H·D) and k (N, G·D).
using QKObserver = std::function<void(int layer, const float* q, const float* k)>;

class LayerStack {
 public:
  void reserve(const ModelConfig& c, const StackShape& shape, ThreadPool* pool);
  const StackShape& shape() const { return shape_; }

  // ext: n_layers entries (null: no external rows at any layer; ext_rows must then be 0).
  void forward(const ModelConfig& c, const ParamViews& w, const int32_t* tokens, const AttentionExt* ext,
               const QKObserver& observer, ThreadPool* pool);
  // dtop: d res[n] (N,C), consumed (null: zero). inj_k, inj_v: (n_layers, N, G·D) gradients of
  // the post-RoPE keys / values (null: none). Adds into dw; external rows' gradients into ext[l].dk/dv.
  void backward(const ModelConfig& c, const ParamViews& w, const ParamViews& dw, const int32_t* tokens, const float* dtop,
                const float* inj_k, const float* inj_v, const AttentionExt* ext, ThreadPool* pool);

  int64_t rows() const { return int64_t(shape_.B) * shape_.T; }
  float* out() { return res_.as<float>() + int64_t(shape_.n_layers) * rows() * dim_; }  // res[n] (N,C)
  const float* k(int l) const { return k_.as<float>() + l * rows() * gd_; }  // post-RoPE (N, G·D)
  const float* v(int l) const { return v_.as<float>() + l * rows() * gd_; }

 private:
  StackShape shape_;
  int threads_ = 0;
  int64_t dim_ = 0, gd_ = 0;
  Buffer res_, mid_, xa_, xf_, rstd_a_, rstd_f_, q_, ao_, k_, v_, att_, a_, u_, m_;
  Buffer dres_, dx_, dq_, dao_, dk_, dv_, da_, du_, dm_, scratch_;
  RopeTable rope_;
};

}  // namespace m3::train
