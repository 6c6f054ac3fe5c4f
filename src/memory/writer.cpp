// Writing explicit memories (spec §2.2–2.3, decisions.md "Writing a memory").
//
// Fast path (MemoryWriter): the prefix "<s>Reference:" is encoded once through the memory layers;
// each reference then runs on top of it with Forward::eval(n_layers = Lm) and a LayerObserver that
// selects the kept tokens of each layer while the layer's un-rotated q and k are at hand:
//   scores s[h][i][j] = q_i,h · k_j,g / √D      (un-rotated, no mask, reference rows only;
//                                                at layer 0 repeated tokens share one key, bitwise)
//   c_g               = max over g's query group of s     (one constant per (layer, KV head))
//   w[g][j]           = Σ_{h in group} Σ_i exp(s[h][i][j] − c_g)
//   keep the K largest w (ties: lower j first), in ascending j; copy the post-RoPE key and the
//   value of each from the cache (row p + j).
// Reference path (ref::write_memory): the same definition, written as a plain scalar layer loop
// over prefix + reference with m3::ref kernels and selection in double; it is the oracle the
// tests hold the fast path to.
//
// Shapes: T reference tokens, p prefix tokens, H query heads, G KV heads, D head dim, C model
// width, F MLP width, Lm memory layers, K kept tokens per (layer, KV head).
#include "m3/memory_writer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>

#include "m3/error.h"
#include "m3/kernels.h"

namespace m3 {

namespace {

std::string model_name(const Model& model) { return model.file().path(); }

// The prefix tokens, after checking that the model can write memories at all.
std::vector<int32_t> memory_prefix(const Model& model) {
  const ModelConfig& c = model.config();
  const MemoryConfig& m = c.memory;
  if (!model.tokenizer())
    throw Error(model_name(model) + ": the model file carries no tokenizer, needed to encode the memory prefix '" + m.prefix_text + "'");
  if (m.memory_layers <= 0 || m.memory_layers > c.n_layers)
    throw Error(model_name(model) + ": memory layers " + std::to_string(m.memory_layers) + " outside 1.." + std::to_string(c.n_layers) +
                "; this model cannot write memories");
  if (m.tokens_per_head <= 0)
    throw Error(model_name(model) + ": memory tokens_per_head " + std::to_string(m.tokens_per_head) + " must be > 0");
  // Positions are stored as int16.
  if (m.reference_length <= 0 || m.reference_length > 32767)
    throw Error(model_name(model) + ": memory reference_length " + std::to_string(m.reference_length) + " outside 1..32767");
  std::vector<int32_t> prefix = model.tokenizer()->prefix_tokens(m.prefix_text);
  if (prefix.empty()) throw Error(model_name(model) + ": the memory prefix '" + m.prefix_text + "' encodes to no tokens");
  const int64_t need = int64_t(prefix.size()) + m.reference_length;
  if (need > c.context_length)
    throw Error(model_name(model) + ": prefix (" + std::to_string(prefix.size()) + " tokens) plus a reference of reference_length " +
                std::to_string(m.reference_length) + " exceeds the context length " + std::to_string(c.context_length));
  return prefix;
}

void check_reference(const ModelConfig& c, std::span<const int32_t> reference) {
  const int limit = c.memory.reference_length;
  if (reference.empty()) throw Error("reference is empty (a reference holds 1.." + std::to_string(limit) + " tokens)");
  if (reference.size() > static_cast<size_t>(limit))
    throw Error("reference of " + std::to_string(reference.size()) + " tokens exceeds the model's reference_length " + std::to_string(limit));
  for (size_t i = 0; i < reference.size(); ++i)
    if (reference[i] < 0 || reference[i] >= c.vocab_size)
      throw Error("reference token id " + std::to_string(reference[i]) + " at index " + std::to_string(i) + " is outside the vocabulary 0.." +
                  std::to_string(c.vocab_size - 1));
}

}  // namespace

// ---- fast path -----------------------------------------------------------------------------------

// Selects the kept tokens of each memory layer as Forward::eval reaches it, writing into `out`.
class MemoryWriter::Selector final : public LayerObserver {
 public:
  Selector(const ModelConfig& c, ThreadPool* pool)
      : H_(c.n_heads), G_(c.n_kv_heads), D_(c.head_dim), K_(c.memory.tokens_per_head), pool_(pool),
        scores_(size_t(H_) * c.memory.reference_length * c.memory.reference_length),
        weights_(size_t(G_) * c.memory.reference_length),
        shift_(size_t(G_)),
        order_(size_t(c.memory.reference_length)),
        first_keys_(size_t(c.memory.reference_length) * c.n_kv_heads * c.head_dim) {}

  // Begins a reference: where its memory goes, and for each token the index of its first copy
  // (a linear search; T ≤ reference_length is small).
  void start(ExplicitMemory* out, std::span<const int32_t> tokens) {
    out_ = out;
    first_copy_.resize(tokens.size());
    for (size_t j = 0; j < tokens.size(); ++j)
      first_copy_[j] = static_cast<int>(std::find(tokens.begin(), tokens.end(), tokens[j]) - tokens.begin());
  }

  // q_raw [T, H·D], k_raw [T, G·D]: the reference's T tokens only (the prefix was cached before,
  // so these are exactly the rows selection looks at); their post-RoPE keys and values are in the
  // cache at rows p..p+T−1.
  void on_layer(int l, int64_t T, const float* q_raw, const float* k_raw, const KVCache& cache, int p) override {
    const int64_t H = H_, G = G_, D = D_, group = H / G, Q = H * D, KV = G * D;
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    float* s = scores_.data();  // [H][T][T]
    double* w = weights_.data();  // [G][T]

    // 0. At layer 0 a token's un-rotated key depends on its id alone, so repeated tokens tie
    //    exactly and the tie rule (lower j) must pick among them. sgemm's rounding depends on a
    //    row's place in the batch, which would let noise pick instead: score every copy with the
    //    key of the first copy, bitwise. (The stored keys still come from the cache.)
    if (l == 0) {
      float* k0 = first_keys_.data();  // [T, G·D]
      for (int64_t j = 0; j < T; ++j) std::memcpy(k0 + j * KV, k_raw + first_copy_[j] * KV, KV * sizeof(float));
      k_raw = k0;
    }

    // 1. Scores, one (query head, query token) row per work item.
    run(H * T, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t h = item / T, i = item % T, g = h / group;
        const float* qi = q_raw + i * Q + h * D;
        float* row = s + item * T;
        for (int64_t j = 0; j < T; ++j) row[j] = dot_f32(qi, k_raw + j * KV + g * D, D) * scale;
      }
    });

    // 2. One shift per KV head: the largest score of its query group (a per-row max would change
    //    the ranking of the un-normalised sums).
    float* shift = shift_.data();  // [G]
    for (int64_t g = 0; g < G; ++g) {
      const float* first = s + g * group * T * T;
      shift[g] = *std::max_element(first, first + group * T * T);
    }

    // 3. Importance: column sums of exp(s − c), one (g, j) per work item. In double: float's exp
    //    underflows 103 below the max, where sharp heads still have columns to rank.
    run(G * T, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t g = item / T, j = item % T;
        const double c = shift[g];
        double sum = 0.0;
        for (int64_t h = g * group; h < (g + 1) * group; ++h)
          for (int64_t i = 0; i < T; ++i) sum += std::exp(double(s[(h * T + i) * T + j]) - c);
        w[g * T + j] = sum;
      }
    });

    // 4. Keep the top K of each KV head in ascending position order, with their cached K and V.
    const int64_t keep = std::min<int64_t>(K_, T);
    for (int64_t g = 0; g < G; ++g) {
      const double* wg = w + g * T;
      int* order = order_.data();
      std::iota(order, order + T, 0);
      std::partial_sort(order, order + keep, order + T, [wg](int a, int b) { return wg[a] > wg[b] || (wg[a] == wg[b] && a < b); });
      std::sort(order, order + keep);
      for (int64_t slot = 0; slot < keep; ++slot) {
        const int j = order[slot];
        const size_t at = (size_t(l) * G + g) * K_ + slot;  // [Lm][G][K]
        out_->positions[at] = static_cast<int16_t>(j);
        std::memcpy(out_->keys.data() + at * D, cache.k(l, p + j) + g * D, D * sizeof(float));
        std::memcpy(out_->values.data() + at * D, cache.v(l, p + j) + g * D, D * sizeof(float));
      }
    }
  }

 private:
  template <class Fn>
  void run(int64_t n, Fn&& fn) {
    if (pool_) pool_->parallel_for(n, [&](int64_t begin, int64_t end, int) { fn(begin, end); });
    else fn(0, n);
  }

  const int H_, G_, D_, K_;
  ThreadPool* pool_;
  ExplicitMemory* out_ = nullptr;
  std::vector<float> scores_;   // [H][T][T]
  std::vector<double> weights_; // [G][T]
  std::vector<float> shift_;    // [G]
  std::vector<int> order_;      // [T]
  std::vector<int> first_copy_; // [T]: index of the first token equal to token j
  std::vector<float> first_keys_;  // [T, G·D]: layer-0 keys, each copied from its token's first copy
};

MemoryWriter::MemoryWriter(const Model& model, ThreadPool* pool)
    : model_(model),
      pool_(pool),
      shape_(MemoryShape::of(model.config())),
      prefix_(memory_prefix(model)),
      forward_(model, pool, std::max(static_cast<int>(prefix_.size()), model.config().memory.reference_length)),
      cache_(model.config(), static_cast<int>(prefix_.size()) + model.config().memory.reference_length),
      selector_(std::make_unique<Selector>(model.config(), pool)) {
  // The prefix's keys and values are the same for every reference: compute them once. Later
  // writes only truncate the cache back to p, so these rows are never recomputed.
  EvalOptions options;
  options.n_layers = shape_.layers;
  forward_.eval(prefix_, cache_, nullptr, false, options);
}

MemoryWriter::~MemoryWriter() = default;

ExplicitMemory MemoryWriter::write(std::span<const int32_t> reference_tokens, int64_t reference_id) {
  check_reference(model_.config(), reference_tokens);
  ExplicitMemory m;
  m.reference_id = reference_id;
  m.n_tokens = static_cast<int>(reference_tokens.size());
  m.resize(shape_);
  cache_.truncate(static_cast<int>(prefix_.size()));
  selector_->start(&m, reference_tokens);
  EvalOptions options;
  options.n_layers = shape_.layers;
  options.observer = selector_.get();
  forward_.eval(reference_tokens, cache_, nullptr, false, options);
  selector_->start(nullptr, {});
  return m;
}

std::vector<ExplicitMemory> MemoryWriter::write_batch(const std::vector<std::vector<int32_t>>& references) {
  std::vector<ExplicitMemory> out;
  out.reserve(references.size());
  for (const auto& r : references) out.push_back(write(r));
  return out;
}

// ---- reference path ------------------------------------------------------------------------------

std::vector<int32_t> select_kept_tokens(const float* q, int64_t q_stride, const float* k, int64_t k_stride, int64_t n, int g,
                                        int group, int D, int K) {
  std::vector<double> s(static_cast<size_t>(group * n * n));  // [group][n][n]
  for (int64_t hh = 0; hh < group; ++hh)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) {
        const float* qi = q + i * q_stride + (int64_t(g) * group + hh) * D;
        const float* kj = k + j * k_stride + int64_t(g) * D;
        double dot = 0.0;
        for (int64_t d = 0; d < D; ++d) dot += double(qi[d]) * double(kj[d]);
        s[size_t((hh * n + i) * n + j)] = dot / std::sqrt(double(D));
      }
  const double shift = *std::max_element(s.begin(), s.end());
  std::vector<double> w(static_cast<size_t>(n), 0.0);
  for (int64_t hh = 0; hh < group; ++hh)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) w[size_t(j)] += std::exp(s[size_t((hh * n + i) * n + j)] - shift);
  std::vector<int32_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return w[size_t(a)] > w[size_t(b)] || (w[size_t(a)] == w[size_t(b)] && a < b); });
  order.resize(size_t(std::min<int64_t>(K, n)));
  std::sort(order.begin(), order.end());
  return order;
}

namespace ref {

ExplicitMemory write_memory(const Model& model, std::span<const int32_t> reference) {
  const ModelConfig& c = model.config();
  const std::vector<int32_t> prefix = memory_prefix(model);
  check_reference(c, reference);
  const MemoryShape shape = MemoryShape::of(c);
  const int64_t p = static_cast<int64_t>(prefix.size()), T = static_cast<int64_t>(reference.size()), N = p + T;
  const int64_t C = c.dim, H = c.n_heads, G = c.n_kv_heads, D = c.head_dim, F = c.ffn_dim, K = shape.kept;
  const int64_t Q = H * D, KV = G * D, group = H / G;

  ExplicitMemory m;
  m.n_tokens = static_cast<int>(T);
  m.resize(shape);

  std::vector<int32_t> tokens(prefix);
  tokens.insert(tokens.end(), reference.begin(), reference.end());
  std::vector<float> x(N * C), xn(N * C), q(N * Q), k(N * KV), v(N * KV), q_raw, k_raw, att(N * Q), h(N * C), gate(N * F), up(N * F);
  for (int64_t t = 0; t < N; ++t) ref::embedding(model.token_embd, tokens[t], &x[t * C]);

  for (int l = 0; l < shape.layers; ++l) {
    const LayerWeights& lw = model.layers[l];
    for (int64_t t = 0; t < N; ++t) ref::rmsnorm(&xn[t * C], &x[t * C], static_cast<const float*>(lw.attn_norm.data), C, c.rms_eps);
    ref::matmul(lw.wq, xn.data(), q.data(), N);  // [N, H·D]
    ref::matmul(lw.wk, xn.data(), k.data(), N);  // [N, G·D]
    ref::matmul(lw.wv, xn.data(), v.data(), N);  // [N, G·D]
    q_raw = q;
    k_raw = k;
    for (int64_t t = 0; t < N; ++t) {
      ref::rope(&q[t * Q], H, D, t, c.rope_theta);
      ref::rope(&k[t * KV], G, D, t, c.rope_theta);
    }

    // Selection for this layer, in double, over the reference rows p..N−1 only.
    for (int64_t g = 0; g < G; ++g) {
      const std::vector<int32_t> order = select_kept_tokens(&q_raw[p * Q], Q, &k_raw[p * KV], KV, T, int(g), int(group), int(D), int(K));
      for (size_t slot = 0; slot < order.size(); ++slot) {
        const int64_t j = order[slot], at = (int64_t(l) * G + g) * K + int64_t(slot);
        m.positions[at] = static_cast<int16_t>(j);
        for (int64_t d = 0; d < D; ++d) {
          m.keys[at * D + d] = k[(p + j) * KV + g * D + d];
          m.values[at * D + d] = v[(p + j) * KV + g * D + d];
        }
      }
    }
    // The last memory layer's keys and values are all a memory needs: nothing after them matters.
    if (l + 1 == shape.layers) break;

    // Causal attention with RoPE; query head h reads KV head h / group.
    std::vector<float> probs(static_cast<size_t>(N));
    for (int64_t t = 0; t < N; ++t)
      for (int64_t hd = 0; hd < H; ++hd) {
        const int64_t g = hd / group;
        for (int64_t j = 0; j <= t; ++j) {
          double dot = 0.0;
          for (int64_t d = 0; d < D; ++d) dot += double(q[t * Q + hd * D + d]) * double(k[j * KV + g * D + d]);
          probs[j] = static_cast<float>(dot / std::sqrt(double(D)));
        }
        ref::softmax(probs.data(), t + 1);
        for (int64_t d = 0; d < D; ++d) {
          double sum = 0.0;
          for (int64_t j = 0; j <= t; ++j) sum += double(probs[j]) * double(v[j * KV + g * D + d]);
          att[t * Q + hd * D + d] = static_cast<float>(sum);
        }
      }
    ref::matmul(lw.wo, att.data(), h.data(), N);
    for (int64_t i = 0; i < N * C; ++i) x[i] += h[i];

    for (int64_t t = 0; t < N; ++t) ref::rmsnorm(&xn[t * C], &x[t * C], static_cast<const float*>(lw.ffn_norm.data), C, c.rms_eps);
    ref::matmul(lw.w_gate, xn.data(), gate.data(), N);
    ref::matmul(lw.w_up, xn.data(), up.data(), N);
    ref::swiglu(gate.data(), gate.data(), up.data(), N * F);
    ref::matmul(lw.w_down, gate.data(), h.data(), N);
    for (int64_t i = 0; i < N * C; ++i) x[i] += h[i];
  }
  return m;
}

}  // namespace ref

}  // namespace m3
