// m3/embedder.h — text → one unit vector, the key of dense retrieval (spec §3.2).
//
// The paper embeds references and queries with BGE-M3's <cls> vector. No embedding weights can be
// downloaded here, so the first embedder pools the language model's own hidden states
// (decisions.md, "Retrieval"); a GGUF embedding model a user brings is another implementation of
// the same interface. The retriever stores spec() next to its vectors and refuses to mix vectors
// of two different embedders.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace m3 {

class Model;
class Forward;
class KVCache;
class ThreadPool;

class Embedder {
 public:
  virtual ~Embedder() = default;
  // Length of every vector embed() returns.
  virtual int dim() const = 0;
  // dim() floats with L2 norm 1, or all zeros when the text has nothing to embed (empty text).
  // Deterministic: the same text always gives the same vector. Throws m3::Error on bad input
  // (e.g. invalid UTF-8). Thread safety is the implementation's to state.
  virtual std::vector<float> embed(const std::string& text) const = 0;
  // Says exactly how vectors are made, so vectors of different embedders are never compared,
  // e.g. "model-mean:layer=3:max_tokens=512:fp=1f2e3d4c5b6a7988".
  virtual std::string spec() const = 0;
};

// Mean over the text's tokens (tokenizer.encode without BOS, truncated to max_tokens) of the
// residual stream x [T, C] after layer `layer` (0-based), L2-normalised. Runs only layers
// 0..layer of the model, on a KV cache of its own. dim() = C.
// Thread-safe: concurrent embed() calls are serialised, because they share the scratch buffers
// and `pool` (whose loops must not be entered from two threads at once). The model and the pool
// must outlive the embedder.
class ModelEmbedder : public Embedder {
 public:
  // Throws m3::Error when the model has no tokenizer or `layer` is outside 0..L-1.
  // max_tokens is capped by the model's context length.
  ModelEmbedder(const Model& model, int layer, ThreadPool* pool, int max_tokens = 512);
  ~ModelEmbedder() override;
  ModelEmbedder(const ModelEmbedder&) = delete;
  ModelEmbedder& operator=(const ModelEmbedder&) = delete;

  int dim() const override;
  std::vector<float> embed(const std::string& text) const override;
  std::string spec() const override;

  int layer() const { return layer_; }
  int max_tokens() const { return max_tokens_; }

 private:
  const Model& model_;
  int layer_;
  ThreadPool* pool_;
  int max_tokens_;
  mutable std::mutex mutex_;
  mutable std::unique_ptr<Forward> forward_;  // made on first use
  mutable std::unique_ptr<KVCache> cache_;
};

// Scales v to unit L2 norm in place (accumulating in double); a zero vector stays zero.
// Returns the norm it had.
double l2_normalize(float* v, int n);

}  // namespace m3
