// The transformer forward pass (Llama family: RMSNorm, GQA attention with RoPE, SwiGLU MLP).
//
//   x = embed(tokens)                                   x: [T, C]
//   per layer:
//     xn = rmsnorm(x) · attn_norm
//     q = xn·Wqᵀ [T, H·D]   k = xn·Wkᵀ [T, G·D]   v = xn·Wvᵀ [T, G·D]
//     rope(q), rope(k) at positions p0..p0+T-1; append k, v to the cache
//     att[t, h] = Σ_s softmax_s(q[t,h]·k[s,g]/√D) v[s,g],  s ≤ p0+t, g = h / (H/G)
//                 (plus, first in the softmax, the call's extra keys of layer l: Memory³ memories)
//     x += att·Woᵀ
//     xn = rmsnorm(x) · ffn_norm
//     x += (silu(xn·Wgateᵀ) ⊙ xn·Wupᵀ)·Wdownᵀ
//   logits = (rmsnorm(x) · output_norm)·Woutᵀ          [T, V]
#include "m3/forward.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "m3/error.h"
#include "m3/kernels.h"

namespace m3 {

KVCache::KVCache(const ModelConfig& c, int capacity)
    : capacity_(capacity),
      row_(static_cast<size_t>(c.n_kv_heads) * c.head_dim),
      k_(static_cast<size_t>(c.n_layers) * capacity * row_ * sizeof(float)),
      v_(static_cast<size_t>(c.n_layers) * capacity * row_ * sizeof(float)) {
  if (capacity <= 0) throw Error("KV cache capacity must be > 0");
}

void KVCache::truncate(int n) {
  if (n < 0 || n > n_) throw Error("KV cache truncate to " + std::to_string(n) + " outside 0.." + std::to_string(n_));
  n_ = n;
}

Forward::Forward(const Model& model, ThreadPool* pool, int max_batch) : model_(model), pool_(pool), max_batch_(max_batch) {
  model.prepare_kernels();
  const ModelConfig& c = model.config();
  const size_t T = static_cast<size_t>(max_batch), Q = size_t(c.n_heads) * c.head_dim, KV = size_t(c.n_kv_heads) * c.head_dim;
  x_ = Buffer(T * c.dim * 4);
  xn_ = Buffer(T * c.dim * 4);
  q_ = Buffer(T * Q * 4);
  k_ = Buffer(T * KV * 4);
  v_ = Buffer(T * KV * 4);
  att_ = Buffer(T * Q * 4);
  h_ = Buffer(T * std::max<size_t>(c.dim, c.ffn_dim) * 4);
  gate_ = Buffer(T * c.ffn_dim * 4);
  up_ = Buffer(T * c.ffn_dim * 4);
  q_raw_ = Buffer(T * Q * 4);
  k_raw_ = Buffer(T * KV * 4);
}

void Forward::eval(std::span<const int32_t> tokens, KVCache& cache, float* logits, bool all_logits) {
  eval(tokens, cache, logits, all_logits, EvalOptions{});
}

void Forward::eval(std::span<const int32_t> tokens, KVCache& cache, float* logits, bool all_logits, const EvalOptions& options) {
  const ModelConfig& c = model_.config();
  const int64_t end = int64_t(cache.size()) + int64_t(tokens.size());
  if (!tokens.empty() && cache.position(static_cast<int>(end - 1)) >= c.context_length)
    throw Error("sequence of " + std::to_string(end) + " tokens (last position " + std::to_string(cache.position(static_cast<int>(end - 1))) +
                ") exceeds the model's context length " + std::to_string(c.context_length));
  if (end > cache.capacity())
    throw Error("sequence of " + std::to_string(end) + " tokens exceeds the KV cache capacity " + std::to_string(cache.capacity()));
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size)
      throw Error("token id " + std::to_string(tokens[i]) + " at position " + std::to_string(i) + " is outside the vocabulary 0.." +
                  std::to_string(c.vocab_size - 1));
  if (options.n_layers > c.n_layers) throw Error("eval: n_layers " + std::to_string(options.n_layers) + " > model layers " + std::to_string(c.n_layers));
  if (options.n_layers >= 0 && options.n_layers < c.n_layers && logits) throw Error("eval: logits need all layers");
  for (size_t b = 0; b < tokens.size(); b += static_cast<size_t>(max_batch_)) {
    const size_t n = std::min(tokens.size() - b, static_cast<size_t>(max_batch_));
    const bool last = b + n == tokens.size();
    float* out = all_logits ? logits + b * c.vocab_size : (last ? logits : nullptr);
    eval_batch(tokens.subspan(b, n), cache, out, all_logits, options);
  }
}

// One (token, head) pair per work item: dot products against each key row. Used for short calls
// (decode), where a GEMM per head would be all overhead.
void Forward::attend_rows(int l, int64_t T, int p0, const ExtraKV& ex, const KVCache& cache) {
  const ModelConfig& c = model_.config();
  const int64_t H = c.n_heads, D = c.head_dim, Q = H * D, group = H / c.n_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const float* q = q_.as<float>();
  float* att = att_.as<float>();
  const size_t stride = scores_.size() / static_cast<size_t>(pool_ ? pool_->size() : 1);
  auto attend = [&](int64_t begin, int64_t end, int thread) {
    float* s = scores_.data() + static_cast<size_t>(thread) * stride;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / H, hd = item % H, g = hd / group;
      const int64_t n_keys = p0 + t + 1, ne = ex.n;
      const float* qh = q + t * Q + hd * D;
      const float* ek = ex.k + g * ne * D;
      const float* ev = ex.v + g * ne * D;
      for (int64_t j = 0; j < ne; ++j) s[j] = dot_f32(qh, ek + j * D, D) * scale;
      float* sc = s + ne;
      for (int64_t j = 0; j < n_keys; ++j) sc[j] = dot_f32(qh, cache.k(l, static_cast<int>(j)) + g * D, D) * scale;
      softmax(s, ne + n_keys);
      float* out = att + t * Q + hd * D;
      std::fill(out, out + D, 0.0f);
      for (int64_t j = 0; j < ne; ++j) {
        const float* vj = ev + j * D;
        const float p = s[j];
        for (int64_t d = 0; d < D; ++d) out[d] += p * vj[d];
      }
      for (int64_t j = 0; j < n_keys; ++j) {
        const float* vj = cache.v(l, static_cast<int>(j)) + g * D;
        const float p = sc[j];
        for (int64_t d = 0; d < D; ++d) out[d] += p * vj[d];
      }
    }
  };
  if (pool_) pool_->parallel_for(T * H, attend); else attend(0, T * H, 0);
}

// Prefill: one (head, tile of kAttnTile queries) per work item, as small GEMMs (m3::gemm,
// single-threaded inside each pool thread): S = scale · Q_tile · [E_k; K]ᵀ over the extra keys and the cache
// rows the tile's last query sees, a causal mask (row t keeps ne + p0 + t + 1 columns) with a
// softmax per row, then out = S · [E_v; V]. Masked entries are exact zeros, so the columns a query
// does not see add nothing; the waste is the upper triangle of each tile's last kAttnTile keys.
void Forward::attend_batched(int l, int64_t T, int p0, const ExtraKV& ex, const KVCache& cache) {
  const ModelConfig& c = model_.config();
  const int64_t H = c.n_heads, G = c.n_kv_heads, D = c.head_dim, Q = H * D, KV = G * D, group = H / G;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const float* q = q_.as<float>();
  float* att = att_.as<float>();
  const int64_t tiles = (T + kAttnTile - 1) / kAttnTile, ne = ex.n;
  const size_t stride = scores_.size() / static_cast<size_t>(pool_ ? pool_->size() : 1);
  auto attend = [&](int64_t begin, int64_t end, int thread) {
    float* s = scores_.data() + static_cast<size_t>(thread) * stride;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t hd = item / tiles, t0 = (item % tiles) * kAttnTile, t1 = std::min(T, t0 + kAttnTile);
      const int64_t g = hd / group, rows = t1 - t0, nk = p0 + t1, ld = ne + nk;
      const float* qt = q + t0 * Q + hd * D;
      float* out = att + t0 * Q + hd * D;
      if (ne > 0) gemm(rows, ne, D, scale, qt, Q, ex.k + g * ne * D, D, true, 0.0f, s, ld);
      gemm(rows, nk, D, scale, qt, Q, cache.k(l, 0) + g * D, KV, true, 0.0f, s + ne, ld);
      for (int64_t i = 0; i < rows; ++i) {
        float* row = s + i * ld;
        const int64_t keep = ne + p0 + t0 + i + 1;
        softmax(row, keep);
        std::fill(row + keep, row + ld, 0.0f);
      }
      if (ne > 0) gemm(rows, D, ne, 1.0f, s, ld, ex.v + g * ne * D, D, false, 0.0f, out, Q);
      gemm(rows, D, nk, 1.0f, s + ne, ld, cache.v(l, 0) + g * D, KV, false, ne > 0 ? 1.0f : 0.0f, out, Q);
    }
  };
  if (pool_) pool_->parallel_for(H * tiles, attend); else attend(0, H * tiles, 0);
}

void Forward::eval_batch(std::span<const int32_t> tokens, KVCache& cache, float* logits, bool all_logits, const EvalOptions& options) {
  const ModelConfig& c = model_.config();
  const int64_t T = static_cast<int64_t>(tokens.size());
  const int64_t C = c.dim, H = c.n_heads, G = c.n_kv_heads, D = c.head_dim, F = c.ffn_dim;
  const int64_t Q = H * D, KV = G * D;
  const int p0 = cache.size();
  float* x = x_.as<float>();
  float* xn = xn_.as<float>();
  float* q = q_.as<float>();
  float* k = k_.as<float>();
  float* v = v_.as<float>();
  float* att = att_.as<float>();
  float* h = h_.as<float>();
  float* gate = gate_.as<float>();
  float* up = up_.as<float>();
  int max_extra = 0;
  for (const ExtraKV& e : options.extra) max_extra = std::max(max_extra, e.n);
  const int n_threads = pool_ ? pool_->size() : 1;
  const size_t score_rows = T >= kAttnTile / 4 ? static_cast<size_t>(kAttnTile) : 1;
  const size_t need = static_cast<size_t>(n_threads) * score_rows * static_cast<size_t>(max_extra + p0 + T);
  if (scores_.size() < need) scores_.resize(need);
  // RoPE angles of this call's positions, shared by q and k of every layer.
  rope_.resize(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) rope_[t].set(D, cache.position(p0 + static_cast<int>(t)), c.rope_theta);

  for (int64_t t = 0; t < T; ++t) embedding(model_.token_embd, tokens[t], x + t * C);

  const int n_layers = options.n_layers < 0 ? c.n_layers : options.n_layers;
  for (int l = 0; l < n_layers; ++l) {
    const LayerWeights& w = model_.layers[l];
    const float* norm_w = static_cast<const float*>(w.attn_norm.data);
    for (int64_t t = 0; t < T; ++t) rmsnorm(xn + t * C, x + t * C, norm_w, C, c.rms_eps);
    const MatmulTarget qkv[] = {{&w.wq, q}, {&w.wk, k}, {&w.wv, v}};
    matmul_shared(qkv, xn, T, pool_);
    if (options.observer) {
      std::memcpy(q_raw_.data(), q, T * Q * sizeof(float));
      std::memcpy(k_raw_.data(), k, T * KV * sizeof(float));
    }
    for (int64_t t = 0; t < T; ++t) {
      rope_[t].apply(q + t * Q, H);
      rope_[t].apply(k + t * KV, G);
      std::memcpy(cache.k(l, p0 + static_cast<int>(t)), k + t * KV, KV * sizeof(float));
      std::memcpy(cache.v(l, p0 + static_cast<int>(t)), v + t * KV, KV * sizeof(float));
    }
    if (options.observer) options.observer->on_layer(l, T, q_raw_.as<float>(), k_raw_.as<float>(), cache, p0);
    // Causal attention. The extra keys (memories) come first in the softmax and are visible to
    // every query of the call.
    const ExtraKV none;
    const ExtraKV& ex = l < static_cast<int>(options.extra.size()) ? options.extra[l] : none;
    if (T >= kAttnTile / 4) attend_batched(l, T, p0, ex, cache);
    else attend_rows(l, T, p0, ex, cache);
    matmul(w.wo, att, h, T, pool_);
    for (int64_t i = 0; i < T * C; ++i) x[i] += h[i];

    const float* ffn_w = static_cast<const float*>(w.ffn_norm.data);
    for (int64_t t = 0; t < T; ++t) rmsnorm(xn + t * C, x + t * C, ffn_w, C, c.rms_eps);
    const MatmulTarget gate_up[] = {{&w.w_gate, gate}, {&w.w_up, up}};
    matmul_shared(gate_up, xn, T, pool_);
    swiglu(gate, gate, up, T * F);
    matmul(w.w_down, gate, h, T, pool_);
    for (int64_t i = 0; i < T * C; ++i) x[i] += h[i];
    if (options.observer) options.observer->on_hidden(l, T, x);
  }
  cache.advance(static_cast<int>(T));

  if (!logits || n_layers < c.n_layers) return;
  const float* out_w = static_cast<const float*>(model_.output_norm.data);
  const int64_t first = all_logits ? 0 : T - 1;
  for (int64_t t = first; t < T; ++t) rmsnorm(xn + (t - first) * C, x + t * C, out_w, C, c.rms_eps);
  matmul(model_.output, xn, logits, T - first, pool_);
}

}  // namespace m3
