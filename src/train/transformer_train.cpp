// TrainableModel: f32 weights + gradients in flat buffers, and the causal-LM forward/backward.
//
// The forward is the inference forward of src/model/forward.cpp (same ops, same order), run on
// B whole sequences at once and keeping what backward needs:
//
//   x = embed(tokens)                                      res[0]    (N,C)
//   per layer l:
//     xa = rmsnorm(res[l]) · attn_norm                     xa, rstd_a
//     q = xa·Wqᵀ (N,H·D)  k = xa·Wkᵀ (N,G·D)  v = xa·Wvᵀ (N,G·D);  rope(q), rope(k)
//     ao = causal GQA attention(q, k, v)                   ao (N,H·D), att (B,H,T,T)
//     mid[l] = res[l] + ao·Woᵀ
//     xf = rmsnorm(mid[l]) · ffn_norm                      xf, rstd_f
//     a = xf·Wgateᵀ (N,F)  u = xf·Wupᵀ (N,F)  m = silu(a)·u
//     res[l+1] = mid[l] + m·Wdownᵀ
//   xo = rmsnorm(res[L]) · output_norm;  logits = xo·Woutᵀ (N,V);  loss = CE(logits, targets)
//
// Backward runs the same list in reverse, each op's *_backward adding into the gradients.
#include <algorithm>
#include <cstring>

#include "m3/error.h"
#include "m3/train.h"
#include "train/ops.h"

namespace m3 {

using namespace train;

// Saved activations and gradient scratch for one (B, T); allocated once, reused every call.
struct TrainableModel::Activations {
  int B = 0, T = 0, threads = 0;
  Buffer res;      // (L+1, N, C) residual stream entering each layer (res[L] enters the output norm)
  Buffer mid;      // (L, N, C)   residual stream between attention and MLP
  Buffer xa, xf;   // (L, N, C)   normalized inputs of attention / MLP
  Buffer rstd_a, rstd_f;  // (L, N)
  Buffer q, ao;    // (L, N, H·D) q after RoPE; attention output before Wo
  Buffer k, v;     // (L, N, G·D) k after RoPE; v
  Buffer att;      // (L, B, H, T, T) softmax probabilities
  Buffer a, u, m;  // (L, N, F)   gate pre-activation, up, silu(a)·u
  Buffer xo;       // (N, C)
  Buffer rstd_o;   // (N)
  Buffer logits;   // (N, V) logits → probabilities → d logits, in place
  Buffer losses;   // (N)
  // gradient scratch, one layer's worth
  Buffer dres, dx, dq, dao, dk, dv, da, du, dm, attn_scratch;
  RopeTable rope;
};

namespace {
Buffer floats(int64_t n) { return Buffer(static_cast<size_t>(n) * sizeof(float)); }
std::string layer_name(int l, const char* what) { return "blk." + std::to_string(l) + "." + what + ".weight"; }
}  // namespace

TrainableModel::~TrainableModel() = default;

void TrainableModel::add(const std::string& name, std::vector<int64_t> ne) {
  ParamTensor t;
  t.name = name;
  t.size = 1;
  for (int64_t d : ne) t.size *= d;
  t.ne = std::move(ne);
  t.offset = n_params_;
  n_params_ += t.size;
  tensors_.push_back(std::move(t));
}

TrainableModel::TrainableModel(const ModelConfig& config, uint64_t seed) : config_(config) {
  set_blas_threads(1);
  const std::vector<OwnedTensor> init = init_weights(config, seed);
  for (const OwnedTensor& t : init) add(t.name, t.ne);
  params_ = floats(n_params_);
  grads_ = floats(n_params_);
  for (size_t i = 0; i < init.size(); ++i)
    std::memcpy(params() + tensors_[i].offset, init[i].data.data(), static_cast<size_t>(tensors_[i].size) * sizeof(float));
}

TrainableModel::TrainableModel(const Model& model) : config_(model.config()) {
  set_blas_threads(1);
  const ModelConfig& c = config_;
  // Same order as init_weights, so a loaded model and a fresh one have the same layout.
  std::vector<const TensorView*> views{&model.token_embd};
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& w = model.layers[static_cast<size_t>(l)];
    for (const TensorView* t : {&w.attn_norm, &w.wq, &w.wk, &w.wv, &w.wo, &w.ffn_norm, &w.w_gate, &w.w_up, &w.w_down})
      views.push_back(t);
  }
  views.push_back(&model.output_norm);
  if (!c.tied_embeddings) views.push_back(&model.output);
  for (const TensorView* t : views) add(t->name, std::vector<int64_t>(t->ne.begin(), t->ne.begin() + t->n_dims));
  params_ = floats(n_params_);
  grads_ = floats(n_params_);
  for (size_t i = 0; i < views.size(); ++i) {
    const TensorView& t = *views[i];
    float* dst = params() + tensors_[i].offset;
    for (int64_t r = 0; r < t.rows(); ++r) dequantize_row(t.type, t.row(r), dst + r * t.cols(), t.cols());
  }
}

const ParamTensor& TrainableModel::tensor(const std::string& name) const {
  for (const ParamTensor& t : tensors_)
    if (t.name == name) return t;
  throw Error("trainable model has no tensor '" + name + "'");
}

ParamViews TrainableModel::views(float* base) {
  auto at = [&](const std::string& name) { return base + tensor(name).offset; };
  ParamViews v;
  v.token_embd = at("token_embd.weight");
  v.output_norm = at("output_norm.weight");
  v.output = config_.tied_embeddings ? v.token_embd : at("output.weight");
  for (int l = 0; l < config_.n_layers; ++l)
    v.layers.push_back({at(layer_name(l, "attn_norm")), at(layer_name(l, "attn_q")), at(layer_name(l, "attn_k")),
                        at(layer_name(l, "attn_v")), at(layer_name(l, "attn_output")), at(layer_name(l, "ffn_norm")),
                        at(layer_name(l, "ffn_gate")), at(layer_name(l, "ffn_up")), at(layer_name(l, "ffn_down"))});
  return v;
}

void TrainableModel::zero_grad() { std::memset(grads_.data(), 0, grads_.size()); }

std::vector<OwnedTensor> TrainableModel::export_tensors() const {
  std::vector<OwnedTensor> out;
  for (const ParamTensor& t : tensors_) {
    OwnedTensor o;
    o.name = t.name;
    o.type = DType::F32;
    o.ne = t.ne;
    o.data = floats(t.size);
    std::memcpy(o.data.data(), params() + t.offset, static_cast<size_t>(t.size) * sizeof(float));
    out.push_back(std::move(o));
  }
  return out;
}

void TrainableModel::reserve(int B, int T) {
  const int threads = pool_ ? pool_->size() : 1;  // the attention scratch is per thread
  if (acts_ && acts_->B == B && acts_->T == T && acts_->threads == threads) return;
  const ModelConfig& c = config_;
  const int64_t L = c.n_layers, N = int64_t(B) * T, C = c.dim, HD = int64_t(c.n_heads) * c.head_dim,
                GD = int64_t(c.n_kv_heads) * c.head_dim, F = c.ffn_dim, V = c.vocab_size;
  acts_.reset();  // release the old set before allocating the new one
  auto a = std::make_unique<Activations>();
  a->B = B;
  a->T = T;
  a->threads = threads;
  a->res = floats((L + 1) * N * C);
  a->mid = floats(L * N * C);
  a->xa = floats(L * N * C);
  a->xf = floats(L * N * C);
  a->rstd_a = floats(L * N);
  a->rstd_f = floats(L * N);
  a->q = floats(L * N * HD);
  a->ao = floats(L * N * HD);
  a->k = floats(L * N * GD);
  a->v = floats(L * N * GD);
  a->att = floats(L * B * c.n_heads * int64_t(T) * T);
  a->a = floats(L * N * F);
  a->u = floats(L * N * F);
  a->m = floats(L * N * F);
  a->xo = floats(N * C);
  a->rstd_o = floats(N);
  a->logits = floats(N * V);
  a->losses = floats(N);
  a->dres = floats(N * C);
  a->dx = floats(N * C);
  a->dq = floats(N * HD);
  a->dao = floats(N * HD);
  a->dk = floats(N * GD);
  a->dv = floats(N * GD);
  a->da = floats(N * F);
  a->du = floats(N * F);
  a->dm = floats(N * F);
  a->attn_scratch = floats(attention_scratch_floats(T, pool_));
  a->rope = rope_table(T, c.head_dim, c.rope_theta);
  acts_ = std::move(a);
}

float TrainableModel::forward(const int32_t* tokens, const int32_t* targets, int B, int T) {
  const ModelConfig& c = config_;
  if (B <= 0 || T <= 0) throw Error("forward_backward: B and T must be > 0 (got B=" + std::to_string(B) + " T=" + std::to_string(T) + ")");
  if (T > c.context_length)
    throw Error("forward_backward: T=" + std::to_string(T) + " exceeds the model's context length " + std::to_string(c.context_length));
  const int64_t N = int64_t(B) * T;
  for (int64_t n = 0; n < N; ++n)
    if (tokens[n] < 0 || tokens[n] >= c.vocab_size)
      throw Error("forward_backward: token id " + std::to_string(tokens[n]) + " at row " + std::to_string(n) +
                  " is outside the vocabulary 0.." + std::to_string(c.vocab_size - 1));
  reserve(B, T);
  Activations& A = *acts_;
  const int64_t C = c.dim, H = c.n_heads, G = c.n_kv_heads, D = c.head_dim, HD = H * D, GD = G * D, F = c.ffn_dim,
                V = c.vocab_size, TT = int64_t(T) * T;
  const ParamViews w = views(params());
  float* scratch = A.dres.as<float>();  // (N,C) the projection added to the residual stream

  embedding_forward(A.res.as<float>(), tokens, w.token_embd, N, C);
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerParams& p = w.layers[static_cast<size_t>(l)];
    const float* res = A.res.as<float>() + l * N * C;
    float* mid = A.mid.as<float>() + l * N * C;
    float* res_next = A.res.as<float>() + (l + 1) * N * C;
    float* xa = A.xa.as<float>() + l * N * C;
    float* xf = A.xf.as<float>() + l * N * C;
    float* q = A.q.as<float>() + l * N * HD;
    float* k = A.k.as<float>() + l * N * GD;
    float* v = A.v.as<float>() + l * N * GD;
    float* ao = A.ao.as<float>() + l * N * HD;
    float* att = A.att.as<float>() + l * B * H * TT;
    float* ga = A.a.as<float>() + l * N * F;
    float* up = A.u.as<float>() + l * N * F;
    float* m = A.m.as<float>() + l * N * F;

    rmsnorm_forward(xa, A.rstd_a.as<float>() + l * N, res, p.attn_norm, N, C, c.rms_eps, pool_);
    matmul_forward(q, xa, p.wq, N, C, HD, pool_);
    matmul_forward(k, xa, p.wk, N, C, GD, pool_);
    matmul_forward(v, xa, p.wv, N, C, GD, pool_);
    rope_forward(q, A.rope, B, H);
    rope_forward(k, A.rope, B, G);
    attention_forward(ao, att, q, k, v, B, T, H, G, D, pool_);
    matmul_forward(scratch, ao, p.wo, N, HD, C, pool_);
    for (int64_t i = 0; i < N * C; ++i) mid[i] = res[i] + scratch[i];

    rmsnorm_forward(xf, A.rstd_f.as<float>() + l * N, mid, p.ffn_norm, N, C, c.rms_eps, pool_);
    matmul_forward(ga, xf, p.w_gate, N, C, F, pool_);
    matmul_forward(up, xf, p.w_up, N, C, F, pool_);
    swiglu_forward(m, ga, up, N * F, pool_);
    matmul_forward(scratch, m, p.w_down, N, F, C, pool_);
    for (int64_t i = 0; i < N * C; ++i) res_next[i] = mid[i] + scratch[i];
  }
  const float* res_last = A.res.as<float>() + int64_t(c.n_layers) * N * C;
  rmsnorm_forward(A.xo.as<float>(), A.rstd_o.as<float>(), res_last, w.output_norm, N, C, c.rms_eps, pool_);
  matmul_forward(A.logits.as<float>(), A.xo.as<float>(), w.output, N, C, V, pool_);
  const double sum = crossentropy_forward(A.logits.as<float>(), A.losses.as<float>(), A.logits.as<float>(), targets, N, V, pool_);
  int64_t count = 0;
  for (int64_t n = 0; n < N; ++n) count += targets[n] >= 0;
  return count ? static_cast<float>(sum / double(count)) : 0.0f;
}

void TrainableModel::backward(const int32_t* tokens, const int32_t* targets, int B, int T, int64_t loss_denominator) {
  const ModelConfig& c = config_;
  Activations& A = *acts_;
  const int64_t N = int64_t(B) * T, C = c.dim, H = c.n_heads, G = c.n_kv_heads, D = c.head_dim, HD = H * D, GD = G * D,
                F = c.ffn_dim, V = c.vocab_size, TT = int64_t(T) * T;
  const ParamViews w = views(params());
  const ParamViews dw = views(grads());
  auto zero = [](Buffer& b) { std::memset(b.data(), 0, b.size()); };
  float* dres = A.dres.as<float>();  // (N,C) d loss / d residual stream, carried down the layers
  float* dx = A.dx.as<float>();      // (N,C) d of a normalized input (xa, xf or xo)

  if (loss_denominator <= 0)
    for (int64_t n = 0; n < N; ++n) loss_denominator += targets[n] >= 0;
  // forward: loss = Σ_n losses[n] / denominator
  const float dloss = loss_denominator > 0 ? static_cast<float>(1.0 / double(loss_denominator)) : 0.0f;
  float* dlogits = A.logits.as<float>();  // the probabilities become d logits in place
  crossentropy_backward(dlogits, A.logits.as<float>(), targets, dloss, N, V, pool_);
  // forward: logits = xo · Woutᵀ;  xo = rmsnorm(res[L]) · output_norm
  zero(A.dx);
  matmul_backward(dx, dw.output, dlogits, A.xo.as<float>(), w.output, N, C, V, pool_);
  zero(A.dres);
  rmsnorm_backward(dres, dw.output_norm, dx, A.res.as<float>() + int64_t(c.n_layers) * N * C, w.output_norm,
                   A.rstd_o.as<float>(), N, C);

  for (int l = c.n_layers - 1; l >= 0; --l) {
    const LayerParams& p = w.layers[static_cast<size_t>(l)];
    const LayerParams& dp = dw.layers[static_cast<size_t>(l)];
    const float* res = A.res.as<float>() + l * N * C;
    const float* mid = A.mid.as<float>() + l * N * C;
    const float* xa = A.xa.as<float>() + l * N * C;
    const float* xf = A.xf.as<float>() + l * N * C;
    const float* q = A.q.as<float>() + l * N * HD;
    const float* k = A.k.as<float>() + l * N * GD;
    const float* v = A.v.as<float>() + l * N * GD;
    const float* ao = A.ao.as<float>() + l * N * HD;
    const float* att = A.att.as<float>() + l * B * H * TT;
    const float* ga = A.a.as<float>() + l * N * F;
    const float* up = A.u.as<float>() + l * N * F;
    const float* m = A.m.as<float>() + l * N * F;

    // forward: res[l+1] = mid + m · Wdownᵀ: dres flows on unchanged as d mid, and into the MLP
    zero(A.dm);
    matmul_backward(A.dm.as<float>(), dp.w_down, dres, m, p.w_down, N, F, C, pool_);
    // forward: m = silu(a) · u
    zero(A.da);
    zero(A.du);
    swiglu_backward(A.da.as<float>(), A.du.as<float>(), A.dm.as<float>(), ga, up, N * F, pool_);
    // forward: a = xf · Wgateᵀ, u = xf · Wupᵀ (both read xf, so their d xf add up)
    zero(A.dx);
    matmul_backward(dx, dp.w_gate, A.da.as<float>(), xf, p.w_gate, N, C, F, pool_);
    matmul_backward(dx, dp.w_up, A.du.as<float>(), xf, p.w_up, N, C, F, pool_);
    // forward: xf = rmsnorm(mid) · ffn_norm; d mid = dres (residual path) + this
    rmsnorm_backward(dres, dp.ffn_norm, dx, mid, p.ffn_norm, A.rstd_f.as<float>() + l * N, N, C);

    // forward: mid = res + ao · Woᵀ
    zero(A.dao);
    matmul_backward(A.dao.as<float>(), dp.wo, dres, ao, p.wo, N, HD, C, pool_);
    // forward: ao = attention(q, k, v)
    zero(A.dq);
    zero(A.dk);
    zero(A.dv);
    attention_backward(A.dq.as<float>(), A.dk.as<float>(), A.dv.as<float>(), A.attn_scratch.as<float>(), A.dao.as<float>(),
                       q, k, v, att, B, T, H, G, D, pool_);
    // forward: rope(q), rope(k) in place
    rope_backward(A.dq.as<float>(), A.rope, B, H);
    rope_backward(A.dk.as<float>(), A.rope, B, G);
    // forward: q = xa · Wqᵀ, k = xa · Wkᵀ, v = xa · Wvᵀ
    zero(A.dx);
    matmul_backward(dx, dp.wq, A.dq.as<float>(), xa, p.wq, N, C, HD, pool_);
    matmul_backward(dx, dp.wk, A.dk.as<float>(), xa, p.wk, N, C, GD, pool_);
    matmul_backward(dx, dp.wv, A.dv.as<float>(), xa, p.wv, N, C, GD, pool_);
    // forward: xa = rmsnorm(res) · attn_norm; d res = d mid (residual path) + this
    rmsnorm_backward(dres, dp.attn_norm, dx, res, p.attn_norm, A.rstd_a.as<float>() + l * N, N, C);
  }
  // forward: res[0] = token_embd[tokens]
  embedding_backward(dw.token_embd, dres, tokens, N, C);
}

float TrainableModel::forward_backward(const int32_t* tokens, const int32_t* targets, int B, int T, int64_t loss_denominator) {
  const float mean = forward(tokens, targets, B, T);
  backward(tokens, targets, B, T, loss_denominator);
  return mean;
}

float TrainableModel::loss(const int32_t* tokens, const int32_t* targets, int B, int T) { return forward(tokens, targets, B, T); }

}  // namespace m3
