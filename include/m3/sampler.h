// m3/sampler.h — picks the next token from logits.
//
// Order of operations (llama.cpp's default chain): repetition penalty → top-k → temperature →
// softmax → top-p → min-p → draw. temperature <= 0 means greedy (argmax, ties to the lower id).
// Seeded: the same seed, logits and history give the same tokens.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace m3 {

struct SamplerParams {
  float temperature = 0.8f;
  int top_k = 40;              // <= 0: off
  float top_p = 0.95f;         // >= 1: off
  float min_p = 0.05f;         // <= 0: off
  float repeat_penalty = 1.0f; // 1: off. Logit l of a recent token → l/p if l > 0 else l*p
  int repeat_last_n = 64;      // how many recent tokens the penalty looks at
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplerParams& params);
  // Returns the chosen id. logits (n_vocab values) may be modified.
  int32_t sample(float* logits, int32_t n_vocab);
  // Records a token in the history used by the repetition penalty (prompt tokens too).
  void accept(int32_t token);
  void reset();
  const SamplerParams& params() const { return params_; }

 private:
  SamplerParams params_;
  std::mt19937_64 rng_;
  std::vector<int32_t> history_;
};

}  // namespace m3
