// Stage 2: the model reads explicit memories it writes itself in the same step (spec §4.2,
// decisions.md "Training"), with gradients through the kept keys and values.
//
// forward:
//   1. prefix stack:    P = "<s>Reference:" tokens at 0..p−1, causal, all L layers
//   2. reference stack: every reference (padded to Tr rows) at p..p+Tr−1, memory layers only,
//                       each block of rows beside the prefix's keys/values of its layer; at each
//                       memory layer the observer selects the kept tokens from un-rotated q, k
//   3. context stack:   tokens at p+W.., all L layers; chunk c beside the prefix's rows and (at
//                       memory layers) the kept rows of its references, gathered per KV head
//   4. head:            output norm, logits, cross-entropy
// backward: head → context (d ext rows) → scatter to the references' and the prefix's keys and
// values → reference stack (d prefix rows) → prefix stack.
#include <algorithm>
#include <cstring>

#include "m3/error.h"
#include "m3/memory_writer.h"
#include "m3/train.h"
#include "train/activations.h"

namespace m3 {

using namespace train;


const std::vector<int32_t>& TrainableModel::kept_tokens(int r, int l, int g) const {
  if (!mem_ || r < 0 || r >= mem_->R || l < 0 || l >= config_.memory.memory_layers || g < 0 || g >= config_.n_kv_heads)
    throw Error("kept_tokens: no such reference/layer/head after the last memory_* call");
  const int K = config_.memory.tokens_per_head;
  const int32_t* k = mem_->kept.data() + ((int64_t(r) * config_.memory.memory_layers + l) * config_.n_kv_heads + g) * K;
  mem_->kept_view.assign(k, k + mem_->kept_count[size_t(r)]);
  return mem_->kept_view;
}

float TrainableModel::memory_forward(const MemoryBatch& bt) {
  const ModelConfig& c = config_;
  const MemoryConfig& mc = c.memory;
  const int L = c.n_layers, Lm = mc.memory_layers, H = c.n_heads, G = c.n_kv_heads, D = c.head_dim, GD = G * D,
            K = mc.tokens_per_head, W = mc.reference_length, CH = mc.chunk_length;
  const int B = bt.B, T = bt.T, p = static_cast<int>(bt.prefix.size());
  const char* what = "memory_forward_backward";
  if (Lm <= 0) throw Error(std::string(what) + ": the model has no memory layers");
  if (B <= 0 || T <= 0) throw Error(std::string(what) + ": B and T must be > 0");
  if (p < 1) throw Error(std::string(what) + ": the reference prefix is empty");
  if (int64_t(p) + W + T > c.context_length)
    throw Error(std::string(what) + ": prefix " + std::to_string(p) + " + reference window " + std::to_string(W) +
                " + T=" + std::to_string(T) + " exceeds the model's context length " + std::to_string(c.context_length));
  const int64_t N = int64_t(B) * T;
  if (int64_t(bt.tokens.size()) != N || int64_t(bt.targets.size()) != N)
    throw Error(std::string(what) + ": tokens/targets must hold B·T = " + std::to_string(N) + " ids");
  check_tokens(bt.tokens.data(), N, what);
  check_tokens(bt.prefix.data(), p, "memory_forward_backward (prefix)");
  const int R = static_cast<int>(bt.references.size());
  const int n_chunks = (T + CH - 1) / CH;
  if (int(bt.chunk_refs.size()) > B) throw Error(std::string(what) + ": chunk_refs has more sequences than B");
  for (const auto& seq : bt.chunk_refs) {
    if (int(seq.size()) > n_chunks) throw Error(std::string(what) + ": chunk_refs has more chunks than T holds");
    for (const auto& refs : seq)
      for (int32_t r : refs)
        if (r < 0 || r >= R) throw Error(std::string(what) + ": chunk_refs names reference " + std::to_string(r) + " of " + std::to_string(R));
  }
  int Tr = 1;
  for (int r = 0; r < R; ++r) {
    const auto& ref = bt.references[size_t(r)];
    if (ref.empty() || int(ref.size()) > W)
      throw Error(std::string(what) + ": reference " + std::to_string(r) + " has " + std::to_string(ref.size()) +
                  " tokens (1.." + std::to_string(W) + " allowed)");
    check_tokens(ref.data(), int64_t(ref.size()), "memory_forward_backward (reference)");
    Tr = std::max(Tr, int(ref.size()));
  }

  if (!mem_) mem_ = std::make_unique<MemoryActivations>();
  MemoryActivations& M = *mem_;
  M.p = p;
  M.R = R;
  M.Tr = Tr;
  M.n_chunks = n_chunks;
  const ParamViews w = views(params());

  // 1. the prefix, alone, through every layer
  StackShape ps;
  ps.B = 1;
  ps.T = p;
  ps.n_layers = L;
  M.prefix.reserve(c, ps, pool_);
  M.prefix.forward(c, w, bt.prefix.data(), nullptr, nullptr, pool_);

  // 2. the references behind the prefix, through the memory layers, selecting as they go
  M.ref_len.assign(size_t(R), 0);
  M.kept.assign(size_t(R) * Lm * G * K, -1);
  M.kept_count.assign(size_t(R), 0);
  if (R > 0) {
    M.ref_tokens.assign(size_t(R) * Tr, bt.prefix[0]);  // padding rows come after every real row: never read
    for (int r = 0; r < R; ++r) {
      const auto& ref = bt.references[size_t(r)];
      std::copy(ref.begin(), ref.end(), M.ref_tokens.begin() + int64_t(r) * Tr);
      M.ref_len[size_t(r)] = int(ref.size());
      M.kept_count[size_t(r)] = std::min(K, int(ref.size()));
    }
    const size_t layer_ext = size_t(R) * p * GD;
    M.ref_ext_k.assign(Lm * layer_ext, 0.0f);
    M.ref_ext_v.assign(Lm * layer_ext, 0.0f);
    M.ref_ext_dk.assign(Lm * layer_ext, 0.0f);
    M.ref_ext_dv.assign(Lm * layer_ext, 0.0f);
    M.ref_ext_rows.assign(size_t(R), p);
    M.ref_ext.assign(size_t(Lm), AttentionExt{});
    for (int l = 0; l < Lm; ++l) {
      for (int r = 0; r < R; ++r) {
        std::memcpy(M.ref_ext_k.data() + l * layer_ext + size_t(r) * p * GD, M.prefix.k(l), size_t(p) * GD * sizeof(float));
        std::memcpy(M.ref_ext_v.data() + l * layer_ext + size_t(r) * p * GD, M.prefix.v(l), size_t(p) * GD * sizeof(float));
      }
      AttentionExt& e = M.ref_ext[size_t(l)];
      e.block = Tr;  // one block per reference: all its rows beside the prefix
      e.max_rows = p;
      e.k = M.ref_ext_k.data() + l * layer_ext;
      e.v = M.ref_ext_v.data() + l * layer_ext;
      e.dk = M.ref_ext_dk.data() + l * layer_ext;
      e.dv = M.ref_ext_dv.data() + l * layer_ext;
      e.rows = M.ref_ext_rows.data();
    }
    StackShape rs;
    rs.B = R;
    rs.T = Tr;
    rs.n_layers = Lm;
    rs.pos0 = p;
    rs.block = Tr;
    rs.ext_rows = p;
    M.refs.reserve(c, rs, pool_);
    const QKObserver select = [&](int l, const float* q, const float* k) {
      parallel(pool_, int64_t(R) * G, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const int r = int(i / G), g = int(i % G);
          // the inference writer's rule (m3/memory_writer.h), so training writes the same memories
          const std::vector<int32_t> kept =
              select_kept_tokens(q + int64_t(r) * Tr * H * D, H * D, k + int64_t(r) * Tr * GD, GD, M.ref_len[size_t(r)], g, H / G, D, K);
          std::copy(kept.begin(), kept.end(), M.kept.begin() + ((int64_t(r) * Lm + l) * G + g) * K);
        }
      });
    };
    M.refs.forward(c, w, M.ref_tokens.data(), M.ref_ext.data(), select, pool_);
  }

  // 3. the context: chunk c beside the prefix and, at memory layers, its references' kept rows
  auto refs_of = [&](int b, int ch) -> const std::vector<int32_t>* {
    if (b >= int(bt.chunk_refs.size()) || ch >= int(bt.chunk_refs[size_t(b)].size())) return nullptr;
    return &bt.chunk_refs[size_t(b)][size_t(ch)];
  };
  int64_t E = p;
  for (int b = 0; b < B; ++b)
    for (int ch = 0; ch < n_chunks; ++ch) {
      int64_t rows = p;
      if (const auto* refs = refs_of(b, ch))
        for (int32_t r : *refs) rows += M.kept_count[size_t(r)];
      E = std::max(E, rows);
    }
  M.E = E;
  const size_t layer_ext = size_t(B) * n_chunks * E * GD;
  M.ctx_ext_k.assign(L * layer_ext, 0.0f);
  M.ctx_ext_v.assign(L * layer_ext, 0.0f);
  M.ctx_ext_dk.assign(L * layer_ext, 0.0f);
  M.ctx_ext_dv.assign(L * layer_ext, 0.0f);
  M.ctx_ext_rows.assign(size_t(L) * B * n_chunks, 0);
  M.ctx_ext.assign(size_t(L), AttentionExt{});
  for (int l = 0; l < L; ++l) {
    for (int b = 0; b < B; ++b)
      for (int ch = 0; ch < n_chunks; ++ch) {
        const size_t base = l * layer_ext + (size_t(b) * n_chunks + ch) * E * GD;
        float* ek = M.ctx_ext_k.data() + base;
        float* ev = M.ctx_ext_v.data() + base;
        std::memcpy(ek, M.prefix.k(l), size_t(p) * GD * sizeof(float));
        std::memcpy(ev, M.prefix.v(l), size_t(p) * GD * sizeof(float));
        int64_t row = p;
        const auto* refs = refs_of(b, ch);
        if (l < Lm && refs)
          for (int32_t r : *refs)
            for (int s = 0; s < M.kept_count[size_t(r)]; ++s, ++row)
              for (int g = 0; g < G; ++g) {
                const int32_t j = M.kept[((int64_t(r) * Lm + l) * G + g) * K + s];
                const int64_t src = (int64_t(r) * Tr + j) * GD + g * D;
                std::memcpy(ek + row * GD + g * D, M.refs.k(l) + src, size_t(D) * sizeof(float));
                std::memcpy(ev + row * GD + g * D, M.refs.v(l) + src, size_t(D) * sizeof(float));
              }
        M.ctx_ext_rows[(size_t(l) * B + b) * n_chunks + ch] = int32_t(row);
      }
    AttentionExt& e = M.ctx_ext[size_t(l)];
    e.block = CH;
    e.max_rows = E;
    e.k = M.ctx_ext_k.data() + l * layer_ext;
    e.v = M.ctx_ext_v.data() + l * layer_ext;
    e.dk = M.ctx_ext_dk.data() + l * layer_ext;
    e.dv = M.ctx_ext_dv.data() + l * layer_ext;
    e.rows = M.ctx_ext_rows.data() + size_t(l) * B * n_chunks;
  }
  StackShape cs;
  cs.B = B;
  cs.T = T;
  cs.n_layers = L;
  cs.pos0 = int64_t(p) + W;
  cs.block = CH;
  cs.ext_rows = E;
  M.ctx.reserve(c, cs, pool_);
  M.ctx.forward(c, w, bt.tokens.data(), M.ctx_ext.data(), nullptr, pool_);

  // 4. the head
  M.head.reserve(c, N);
  return head_forward(M.head, M.ctx.out(), bt.targets.data(), N);
}

void TrainableModel::memory_backward(const MemoryBatch& bt, int64_t loss_denominator) {
  const ModelConfig& c = config_;
  const int L = c.n_layers, Lm = c.memory.memory_layers, G = c.n_kv_heads, D = c.head_dim, GD = G * D,
            K = c.memory.tokens_per_head;
  MemoryActivations& M = *mem_;
  const int B = bt.B, T = bt.T, p = M.p, R = M.R, Tr = M.Tr, n_chunks = M.n_chunks;
  const int64_t N = int64_t(B) * T, E = M.E;
  const ParamViews w = views(params());
  const ParamViews dw = views(grads());

  const float* dtop = head_backward(M.head, M.ctx.out(), bt.targets.data(), N, loss_denominator);
  M.ctx.backward(c, w, dw, bt.tokens.data(), dtop, nullptr, nullptr, M.ctx_ext.data(), pool_);

  // the context's external rows were copies: their gradients go back to where they came from
  M.inj_pre_k.assign(size_t(L) * p * GD, 0.0f);
  M.inj_pre_v.assign(size_t(L) * p * GD, 0.0f);
  M.inj_ref_k.assign(size_t(Lm) * R * Tr * GD, 0.0f);
  M.inj_ref_v.assign(size_t(Lm) * R * Tr * GD, 0.0f);
  const size_t layer_ext = size_t(B) * n_chunks * E * GD;
  for (int l = 0; l < L; ++l)
    for (int b = 0; b < B; ++b)
      for (int ch = 0; ch < n_chunks; ++ch) {
        const size_t base = l * layer_ext + (size_t(b) * n_chunks + ch) * E * GD;
        const float* dk = M.ctx_ext_dk.data() + base;
        const float* dv = M.ctx_ext_dv.data() + base;
        float* pk = M.inj_pre_k.data() + size_t(l) * p * GD;
        float* pv = M.inj_pre_v.data() + size_t(l) * p * GD;
        for (int64_t i = 0; i < int64_t(p) * GD; ++i) {
          pk[i] += dk[i];
          pv[i] += dv[i];
        }
        if (l >= Lm || b >= int(bt.chunk_refs.size()) || ch >= int(bt.chunk_refs[size_t(b)].size())) continue;
        int64_t row = p;
        for (int32_t r : bt.chunk_refs[size_t(b)][size_t(ch)])
          for (int s = 0; s < M.kept_count[size_t(r)]; ++s, ++row)
            for (int g = 0; g < G; ++g) {
              const int32_t j = M.kept[((int64_t(r) * Lm + l) * G + g) * K + s];
              float* rk = M.inj_ref_k.data() + (size_t(l) * R * Tr + size_t(r) * Tr + j) * GD + g * D;
              float* rv = M.inj_ref_v.data() + (size_t(l) * R * Tr + size_t(r) * Tr + j) * GD + g * D;
              for (int d = 0; d < D; ++d) {
                rk[d] += dk[row * GD + g * D + d];
                rv[d] += dv[row * GD + g * D + d];
              }
            }
      }

  if (R > 0) {
    M.refs.backward(c, w, dw, M.ref_tokens.data(), nullptr, M.inj_ref_k.data(), M.inj_ref_v.data(), M.ref_ext.data(), pool_);
    const size_t ref_layer = size_t(R) * p * GD;
    for (int l = 0; l < Lm; ++l)
      for (int r = 0; r < R; ++r)
        for (int64_t i = 0; i < int64_t(p) * GD; ++i) {
          M.inj_pre_k[size_t(l) * p * GD + i] += M.ref_ext_dk[l * ref_layer + size_t(r) * p * GD + i];
          M.inj_pre_v[size_t(l) * p * GD + i] += M.ref_ext_dv[l * ref_layer + size_t(r) * p * GD + i];
        }
  }
  M.prefix.backward(c, w, dw, bt.prefix.data(), nullptr, M.inj_pre_k.data(), M.inj_pre_v.data(), nullptr, pool_);
}

float TrainableModel::memory_forward_backward(const MemoryBatch& batch, int64_t loss_denominator) {
  const float mean = memory_forward(batch);
  memory_backward(batch, loss_denominator);
  return mean;
}

float TrainableModel::memory_loss(const MemoryBatch& batch) { return memory_forward(batch); }

}  // namespace m3
