// ModelEmbedder: mean-pooled residual stream of one layer, L2-normalised.
#include "m3/embedder.h"

#include <cmath>

#include "m3/error.h"
#include "m3/forward.h"
#include "m3/model.h"

namespace m3 {

double l2_normalize(float* v, int n) {
  double ss = 0.0;
  for (int i = 0; i < n; ++i) ss += double(v[i]) * double(v[i]);
  const double norm = std::sqrt(ss);
  if (norm > 0.0) {
    const double inv = 1.0 / norm;
    for (int i = 0; i < n; ++i) v[i] = static_cast<float>(v[i] * inv);
  }
  return norm;
}

namespace {

// Sums x [T, C] after one layer over its T rows; eval may call it once per batch.
class MeanPool : public LayerObserver {
 public:
  MeanPool(int layer, int64_t C) : layer_(layer), sum_(static_cast<size_t>(C), 0.0) {}
  void on_hidden(int layer, int64_t T, const float* x) override {
    if (layer != layer_) return;
    const size_t C = sum_.size();
    for (int64_t t = 0; t < T; ++t)
      for (size_t c = 0; c < C; ++c) sum_[c] += x[static_cast<size_t>(t) * C + c];
    rows_ += T;
  }
  const std::vector<double>& sum() const { return sum_; }
  int64_t rows() const { return rows_; }

 private:
  int layer_;
  std::vector<double> sum_;  // double: a 512-token sum must not depend on batch boundaries
  int64_t rows_ = 0;
};

}  // namespace

ModelEmbedder::ModelEmbedder(const Model& model, int layer, ThreadPool* pool, int max_tokens)
    : model_(model), layer_(layer), pool_(pool), max_tokens_(max_tokens) {
  const ModelConfig& c = model.config();
  if (!model.tokenizer()) throw Error("ModelEmbedder: the model file has no tokenizer");
  if (layer < 0 || layer >= c.n_layers)
    throw Error("ModelEmbedder: layer " + std::to_string(layer) + " is outside 0.." + std::to_string(c.n_layers - 1));
  if (max_tokens < 1) throw Error("ModelEmbedder: max_tokens " + std::to_string(max_tokens) + " < 1");
  if (max_tokens_ > c.context_length) max_tokens_ = c.context_length;
}

ModelEmbedder::~ModelEmbedder() = default;

int ModelEmbedder::dim() const { return model_.config().dim; }

std::string ModelEmbedder::spec() const {
  return "model-mean:layer=" + std::to_string(layer_) + ":max_tokens=" + std::to_string(max_tokens_) +
         ":fp=" + model_.fingerprint();
}

std::vector<float> ModelEmbedder::embed(const std::string& text) const {
  std::vector<int32_t> tokens = model_.tokenizer()->encode(text);
  if (tokens.size() > static_cast<size_t>(max_tokens_)) tokens.resize(static_cast<size_t>(max_tokens_));
  const int C = dim();
  std::vector<float> out(static_cast<size_t>(C), 0.0f);
  if (tokens.empty()) return out;

  std::lock_guard<std::mutex> lock(mutex_);
  if (!forward_) {
    forward_ = std::make_unique<Forward>(model_, pool_, max_tokens_);
    cache_ = std::make_unique<KVCache>(model_.config(), max_tokens_);
  }
  cache_->clear();
  MeanPool pool(layer_, C);
  EvalOptions options;
  options.n_layers = layer_ + 1;
  options.observer = &pool;
  forward_->eval(tokens, *cache_, nullptr, false, options);
  if (pool.rows() != static_cast<int64_t>(tokens.size()))
    throw Error("ModelEmbedder: saw " + std::to_string(pool.rows()) + " hidden rows for " + std::to_string(tokens.size()) + " tokens");
  const double inv = 1.0 / static_cast<double>(pool.rows());
  for (int c = 0; c < C; ++c) out[static_cast<size_t>(c)] = static_cast<float>(pool.sum()[static_cast<size_t>(c)] * inv);
  l2_normalize(out.data(), C);
  return out;
}

}  // namespace m3
