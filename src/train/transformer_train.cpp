// TrainableModel: f32 weights + gradients in flat buffers, and the causal-LM forward/backward.
//
// The forward is the inference forward of src/model/forward.cpp (same ops, same order), run on
// B whole sequences at once through a LayerStack (train/layer_stack.h, which keeps what backward
// needs), then
//   xo = rmsnorm(res[L]) · output_norm;  logits = xo·Woutᵀ (N,V);  loss = CE(logits, targets)
// Backward runs the same list in reverse, each op's *_backward adding into the gradients.
// Stage 2 (memory_train.cpp) uses the same stack and head.
#include <algorithm>
#include <cstring>

#include "m3/error.h"
#include "m3/train.h"
#include "train/activations.h"

namespace m3 {

using namespace train;

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
  if (!acts_) acts_ = std::make_unique<Activations>();
  StackShape shape;
  shape.B = B;
  shape.T = T;
  shape.n_layers = config_.n_layers;
  acts_->stack.reserve(config_, shape, pool_);
  acts_->head.reserve(config_, int64_t(B) * T);
}

void TrainableModel::check_tokens(const int32_t* tokens, int64_t n, const char* what) const {
  for (int64_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= config_.vocab_size)
      throw Error(std::string(what) + ": token id " + std::to_string(tokens[i]) + " at row " + std::to_string(i) +
                  " is outside the vocabulary 0.." + std::to_string(config_.vocab_size - 1));
}

void TrainableModel::Head::reserve(const ModelConfig& c, int64_t N) {
  if (rows == N) return;
  rows = N;
  xo = floats(N * c.dim);
  rstd_o = floats(N);
  logits = floats(N * c.vocab_size);
  losses = floats(N);
  dx = floats(N * c.dim);
  dres = floats(N * c.dim);
}

float TrainableModel::head_forward(Head& h, const float* res_last, const int32_t* targets, int64_t N) {
  const ModelConfig& c = config_;
  const ParamViews w = views(params());
  rmsnorm_forward(h.xo.as<float>(), h.rstd_o.as<float>(), res_last, w.output_norm, N, c.dim, c.rms_eps, pool_);
  matmul_forward(h.logits.as<float>(), h.xo.as<float>(), w.output, N, c.dim, c.vocab_size, pool_);
  const double sum =
      crossentropy_forward(h.logits.as<float>(), h.losses.as<float>(), h.logits.as<float>(), targets, N, c.vocab_size, pool_);
  int64_t count = 0;
  for (int64_t n = 0; n < N; ++n) count += targets[n] >= 0;
  return count ? static_cast<float>(sum / double(count)) : 0.0f;
}

const float* TrainableModel::head_backward(Head& h, const float* res_last, const int32_t* targets, int64_t N,
                                           int64_t loss_denominator) {
  const ModelConfig& c = config_;
  const ParamViews w = views(params());
  const ParamViews dw = views(grads());
  if (loss_denominator <= 0)
    for (int64_t n = 0; n < N; ++n) loss_denominator += targets[n] >= 0;
  // forward: loss = Σ_n losses[n] / denominator
  const float dloss = loss_denominator > 0 ? static_cast<float>(1.0 / double(loss_denominator)) : 0.0f;
  float* dlogits = h.logits.as<float>();  // the probabilities become d logits in place
  crossentropy_backward(dlogits, h.logits.as<float>(), targets, dloss, N, c.vocab_size, pool_);
  // forward: logits = xo · Woutᵀ;  xo = rmsnorm(res[L]) · output_norm
  std::memset(h.dx.data(), 0, h.dx.size());
  matmul_backward(h.dx.as<float>(), dw.output, dlogits, h.xo.as<float>(), w.output, N, c.dim, c.vocab_size, pool_);
  std::memset(h.dres.data(), 0, h.dres.size());
  rmsnorm_backward(h.dres.as<float>(), dw.output_norm, h.dx.as<float>(), res_last, w.output_norm, h.rstd_o.as<float>(), N,
                   c.dim);
  return h.dres.as<float>();
}

float TrainableModel::forward(const int32_t* tokens, const int32_t* targets, int B, int T) {
  const ModelConfig& c = config_;
  if (B <= 0 || T <= 0) throw Error("forward_backward: B and T must be > 0 (got B=" + std::to_string(B) + " T=" + std::to_string(T) + ")");
  if (T > c.context_length)
    throw Error("forward_backward: T=" + std::to_string(T) + " exceeds the model's context length " + std::to_string(c.context_length));
  const int64_t N = int64_t(B) * T;
  check_tokens(tokens, N, "forward_backward");
  reserve(B, T);
  Activations& A = *acts_;
  A.stack.forward(c, views(params()), tokens, nullptr, nullptr, pool_);
  return head_forward(A.head, A.stack.out(), targets, N);
}

void TrainableModel::backward(const int32_t* tokens, const int32_t* targets, int B, int T, int64_t loss_denominator) {
  Activations& A = *acts_;
  const int64_t N = int64_t(B) * T;
  const float* dtop = head_backward(A.head, A.stack.out(), targets, N, loss_denominator);
  A.stack.backward(config_, views(params()), views(grads()), tokens, dtop, nullptr, nullptr, nullptr, pool_);
}

float TrainableModel::forward_backward(const int32_t* tokens, const int32_t* targets, int B, int T, int64_t loss_denominator) {
  const float mean = forward(tokens, targets, B, T);
  backward(tokens, targets, B, T, loss_denominator);
  return mean;
}

float TrainableModel::loss(const int32_t* tokens, const int32_t* targets, int B, int T) { return forward(tokens, targets, B, T); }

}  // namespace m3
