// sampler.cpp — next-token choice from logits: llama.cpp's default chain, seeded.
//
//   repetition penalty → top-k → temperature → softmax → top-p → min-p → draw
//
// Determinism: the only randomness is one 64-bit draw of std::mt19937_64 per sampled token (its
// output sequence is fixed by the standard), turned into a double in [0, 1) with our own bit
// arithmetic, because std::uniform_real_distribution's algorithm differs between standard
// libraries. Candidate order is a total order (logit descending, then id ascending), so
// nth_element/sort give the same result everywhere and ties resolve to the lower id.
#include "m3/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <unordered_set>

#include "m3/error.h"

namespace m3 {

namespace {

struct Candidate {
  float logit;
  int32_t id;
};

// Higher logit first; equal logits: lower id first.
bool better(const Candidate& a, const Candidate& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

// NaN would break the strict weak ordering the sorts rely on; treat it as "never pick".
float sanitize(float x) { return std::isnan(x) ? -std::numeric_limits<float>::infinity() : x; }

// 53 random bits → a double uniform in [0, 1).
double uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

}  // namespace

Sampler::Sampler(const SamplerParams& params) : params_(params), rng_(params.seed) {}

void Sampler::accept(int32_t token) {
  history_.push_back(token);
  // Keep the history bounded when only the last n tokens matter; trim in batches so accept() stays
  // amortised O(1). repeat_last_n < 0 means the whole history, as in llama.cpp.
  const int n = params_.repeat_last_n;
  if (n >= 0 && history_.size() > 2 * static_cast<size_t>(n) + 64)
    history_.erase(history_.begin(), history_.end() - n);
}

void Sampler::reset() {
  history_.clear();
  rng_.seed(params_.seed);
}

int32_t Sampler::sample(float* logits, int32_t n_vocab) {
  if (n_vocab <= 0) throw Error("sampler: n_vocab must be positive, got " + std::to_string(n_vocab));

  // 1. Repetition penalty (llama.cpp's rule): each distinct token among the last repeat_last_n
  //    accepted ones is penalised once, pushing its logit towards "less likely" whatever its sign.
  //    repeat_last_n == 0 disables it, < 0 looks at the whole history.
  if (params_.repeat_penalty != 1.0f && params_.repeat_last_n != 0 && !history_.empty()) {
    const size_t n = params_.repeat_last_n < 0 ? history_.size()
                                               : std::min(history_.size(), static_cast<size_t>(params_.repeat_last_n));
    std::unordered_set<int32_t> seen;
    for (auto it = history_.end() - static_cast<std::ptrdiff_t>(n); it != history_.end(); ++it) {
      const int32_t t = *it;
      if (t < 0 || t >= n_vocab || !seen.insert(t).second) continue;
      float& l = logits[t];
      l = l > 0 ? l / params_.repeat_penalty : l * params_.repeat_penalty;
    }
  }

  // Greedy: the argmax, ties to the lower id. It consumes no random number.
  if (params_.temperature <= 0.0f) {
    int32_t best = 0;
    float best_l = sanitize(logits[0]);
    for (int32_t i = 1; i < n_vocab; ++i) {
      const float l = sanitize(logits[i]);
      if (l > best_l) best_l = l, best = i;
    }
    return best;
  }

  // Scratch reused across calls on this thread: the hot loop allocates nothing after the first
  // token.
  thread_local std::vector<Candidate> cand;
  cand.resize(static_cast<size_t>(n_vocab));
  for (int32_t i = 0; i < n_vocab; ++i) cand[static_cast<size_t>(i)] = {sanitize(logits[i]), i};

  // 2. Top-k: the k best by (logit, id), found in O(V) and then sorted (k is small).
  const bool use_top_p = params_.top_p < 1.0f;
  size_t n = cand.size();
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < n) {
    n = static_cast<size_t>(params_.top_k);
    std::nth_element(cand.begin(), cand.begin() + static_cast<std::ptrdiff_t>(n) - 1, cand.end(), better);
    std::sort(cand.begin(), cand.begin() + static_cast<std::ptrdiff_t>(n), better);
  } else if (use_top_p) {
    std::sort(cand.begin(), cand.end(), better);  // top-p needs the whole vocabulary in order
  } else {
    // Only the maximum matters below (softmax shift, min-p threshold): bring it to the front.
    std::iter_swap(cand.begin(), std::min_element(cand.begin(), cand.end(), better));
  }
  // From here cand[0..n) holds the candidates and cand[0] is the best of them.
  if (n == 1 || cand[0].logit == -std::numeric_limits<float>::infinity()) return cand[0].id;

  // 3–4. Temperature, softmax. p_i = exp((l_i - l_max) / T); normalisation is deferred because
  //      top-p and min-p only compare ratios and cumulative fractions.
  thread_local std::vector<double> p;
  p.resize(n);
  const double inv_t = 1.0 / static_cast<double>(params_.temperature);
  const double l_max = cand[0].logit;
  double total = 0;
  for (size_t i = 0; i < n; ++i) {
    p[i] = std::exp((static_cast<double>(cand[i].logit) - l_max) * inv_t);
    total += p[i];
  }

  // 5. Top-p (nucleus): the shortest prefix (in descending order) whose probability mass reaches
  //    top_p; the token that crosses the threshold is kept. Needs cand sorted, which it is when
  //    use_top_p (either the top-k sort or the full sort above).
  if (use_top_p) {
    const double target = static_cast<double>(params_.top_p) * total;
    double cum = 0;
    size_t keep = n;
    for (size_t i = 0; i < n; ++i) {
      cum += p[i];
      if (cum >= target) {
        keep = i + 1;
        break;
      }
    }
    n = std::max<size_t>(1, keep);
  }

  // 6. Min-p: drop tokens whose probability is below min_p times the best one's (p[0] = 1 before
  //    normalisation, so the threshold is min_p itself). Order is not required.
  if (params_.min_p > 0.0f) {
    const double threshold = static_cast<double>(params_.min_p) * p[0];
    size_t kept = 0;
    for (size_t i = 0; i < n; ++i) {
      if (p[i] >= threshold) {
        cand[kept] = cand[i];
        p[kept] = p[i];
        ++kept;
      }
    }
    n = kept;  // >= 1: the best token always passes
  }

  // 7. Draw from what is left, renormalised.
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += p[i];
  const double u = uniform01(rng_) * sum;
  double cum = 0;
  for (size_t i = 0; i < n; ++i) {
    cum += p[i];
    if (u < cum) return cand[i].id;
  }
  return cand[n - 1].id;  // rounding left u at the very top of the range
}

}  // namespace m3
