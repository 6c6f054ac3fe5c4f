// test_sampler.cpp — m3::Sampler: greedy, seeding, and each filter of the chain
// (repetition penalty → top-k → temperature → softmax → top-p → min-p → draw).
//
// Filters are checked on hand-built logits whose surviving set is known, by drawing many times:
// tokens outside the set must never appear and those inside must appear in proportion to their
// renormalised probabilities (tolerance ≈ 6 standard deviations of the empirical frequency).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "m3/error.h"
#include "m3/sampler.h"

using m3::Sampler;
using m3::SamplerParams;

namespace {

// Every filter off: plain softmax sampling at temperature 1.
SamplerParams plain(uint64_t seed = 7) {
  SamplerParams p;
  p.temperature = 1.0f;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  p.repeat_penalty = 1.0f;
  p.seed = seed;
  return p;
}

int32_t sample_copy(Sampler& s, const std::vector<float>& logits) {
  std::vector<float> l = logits;  // sample() may modify its input
  return s.sample(l.data(), static_cast<int32_t>(l.size()));
}

std::vector<double> frequencies(Sampler& s, const std::vector<float>& logits, int draws) {
  std::vector<double> f(logits.size(), 0.0);
  for (int i = 0; i < draws; ++i) f[static_cast<size_t>(sample_copy(s, logits))] += 1.0;
  for (double& x : f) x /= draws;
  return f;
}

// Logits whose softmax at temperature 1 is exactly `probs`, placed at the ids `order` names so the
// candidates are not already sorted by id.
std::vector<float> logits_for(const std::vector<double>& probs, const std::vector<int>& order) {
  std::vector<float> l(probs.size());
  for (size_t i = 0; i < probs.size(); ++i) l[static_cast<size_t>(order[i])] = static_cast<float>(std::log(probs[i]));
  return l;
}

// Checks empirical frequencies against expected probabilities (0 = must never be drawn).
void expect_distribution(const std::vector<double>& freq, const std::vector<double>& expected, int draws) {
  ASSERT_EQ(freq.size(), expected.size());
  for (size_t i = 0; i < freq.size(); ++i) {
    if (expected[i] == 0.0) {
      EXPECT_EQ(freq[i], 0.0) << "token " << i << " is outside the kept set but was drawn";
    } else {
      const double sd = std::sqrt(expected[i] * (1 - expected[i]) / draws);
      EXPECT_NEAR(freq[i], expected[i], 6 * sd + 1e-12) << "token " << i;
    }
  }
}

}  // namespace

// ---- greedy --------------------------------------------------------------------------------------

TEST(Sampler, GreedyIsArgmaxTiesToLowerId) {
  SamplerParams p = plain();
  p.temperature = 0.0f;
  Sampler s(p);
  EXPECT_EQ(sample_copy(s, {1.0f, 5.0f, 5.0f, 2.0f}), 1);
  EXPECT_EQ(sample_copy(s, {7.0f, 7.0f}), 0);
  EXPECT_EQ(sample_copy(s, {-3.0f, -1.0f, -2.0f}), 1);
  p.temperature = -1.0f;
  Sampler neg(p);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<float> l(1000);
    for (float& x : l) x = std::round(nd(rng) * 4) / 4;  // coarse values: plenty of ties
    const auto best = std::max_element(l.begin(), l.end()) - l.begin();  // first maximum
    EXPECT_EQ(sample_copy(neg, l), best);
  }
}

TEST(Sampler, NanLogitsAreNeverChosen) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  SamplerParams g = plain();
  g.temperature = 0.0f;
  Sampler greedy(g);
  EXPECT_EQ(sample_copy(greedy, {nan, 1.0f, nan, 0.5f}), 1);
  Sampler s(plain());
  for (int i = 0; i < 1000; ++i) {
    const int32_t t = sample_copy(s, {nan, 1.0f, nan, 0.5f});
    ASSERT_TRUE(t == 1 || t == 3);
  }
}

TEST(Sampler, RejectsEmptyVocabulary) {
  Sampler s(plain());
  float x = 0.0f;
  EXPECT_THROW(s.sample(&x, 0), m3::Error);
}

// ---- seeding -------------------------------------------------------------------------------------

TEST(Sampler, SameSeedSameSequenceDifferentSeedDifferent) {
  std::vector<float> logits(64);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = static_cast<float>(std::sin(static_cast<double>(i)));
  auto run = [&](uint64_t seed) {
    Sampler s(plain(seed));
    std::vector<int32_t> out;
    for (int i = 0; i < 300; ++i) out.push_back(sample_copy(s, logits));
    return out;
  };
  const auto a = run(11);
  EXPECT_EQ(run(11), a);
  // 300 draws over 64 roughly even tokens: two seeds agreeing everywhere has probability ~0.
  const auto b = run(12);
  const auto same = std::inner_product(a.begin(), a.end(), b.begin(), 0, std::plus<>(), std::equal_to<>());
  EXPECT_LT(same, 60);
  // reset() restarts the stream.
  Sampler s(plain(11));
  for (int i = 0; i < 10; ++i) sample_copy(s, logits);
  s.reset();
  std::vector<int32_t> again;
  for (int i = 0; i < 300; ++i) again.push_back(sample_copy(s, logits));
  EXPECT_EQ(again, a);
}

// The draw is one 64-bit mt19937_64 output mapped to [0, 1) with 53 bits — no
// std::uniform_real_distribution, whose algorithm is library-specific. With ten equal logits the
// token is floor(10·u), computable here independently.
TEST(Sampler, DrawIsPlatformIndependent) {
  Sampler s(plain(42));
  std::mt19937_64 ref(42);
  const std::vector<float> flat(10, 0.0f);
  for (int i = 0; i < 1000; ++i) {
    const double u = static_cast<double>(ref() >> 11) * 0x1.0p-53;
    ASSERT_EQ(sample_copy(s, flat), static_cast<int32_t>(u * 10)) << "draw " << i;
  }
}

// ---- top-k ---------------------------------------------------------------------------------------

TEST(Sampler, TopKOneIsArgmaxEvenWhenHot) {
  SamplerParams p = plain();
  p.top_k = 1;
  p.temperature = 100.0f;
  Sampler s(p);
  const std::vector<float> l = {0.1f, 0.3f, 0.2f, 0.3f, -5.0f};
  for (int i = 0; i < 2000; ++i) ASSERT_EQ(sample_copy(s, l), 1);  // tie 1 vs 3 → lower id
}

TEST(Sampler, TopKKeepsTheKBestInProportion) {
  SamplerParams p = plain();
  p.top_k = 3;
  p.temperature = 2.0f;
  Sampler s(p);
  const std::vector<float> l = {0.0f, 3.0f, -1.0f, 2.0f, 1.0f, 2.5f};  // best three: ids 1, 5, 3
  std::vector<double> expected(l.size(), 0.0);
  double z = 0;
  for (const int id : {1, 5, 3}) z += std::exp(l[static_cast<size_t>(id)] / 2.0);
  for (const int id : {1, 5, 3}) expected[static_cast<size_t>(id)] = std::exp(l[static_cast<size_t>(id)] / 2.0) / z;
  const int draws = 100000;
  expect_distribution(frequencies(s, l, draws), expected, draws);
}

TEST(Sampler, TopKOnALargeVocabulary) {
  SamplerParams p = plain();
  p.top_k = 40;
  Sampler s(p);
  std::vector<float> l(32000);
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> ud(-10, 10);
  for (float& x : l) x = ud(rng);
  std::vector<float> sorted = l;
  std::sort(sorted.begin(), sorted.end(), std::greater<>());
  const float kth = sorted[39];
  for (int i = 0; i < 500; ++i) ASSERT_GE(l[static_cast<size_t>(sample_copy(s, l))], kth);
}

// ---- top-p ---------------------------------------------------------------------------------------

TEST(Sampler, TopPKeepsTheSmallestPrefixReachingP) {
  // Probabilities 0.5, 0.25, 0.15, 0.07, 0.03 at scrambled ids.
  const std::vector<double> probs = {0.5, 0.25, 0.15, 0.07, 0.03};
  const std::vector<int> order = {3, 0, 4, 1, 2};
  const auto l = logits_for(probs, order);
  const int draws = 100000;
  struct Case {
    float top_p;
    size_t kept;  // how many of the best survive
  };
  // 0.5 < 0.8 ≤ 0.5+0.25+0.15: three kept (the one crossing p stays); 0.74: two; 0.3: one.
  for (const Case c : {Case{0.8f, 3}, Case{0.74f, 2}, Case{0.3f, 1}, Case{0.99f, 5}}) {
    SCOPED_TRACE(c.top_p);
    SamplerParams p = plain();
    p.top_p = c.top_p;
    Sampler s(p);
    std::vector<double> expected(probs.size(), 0.0);
    const double mass = std::accumulate(probs.begin(), probs.begin() + static_cast<std::ptrdiff_t>(c.kept), 0.0);
    for (size_t i = 0; i < c.kept; ++i) expected[static_cast<size_t>(order[i])] = probs[i] / mass;
    expect_distribution(frequencies(s, l, draws), expected, draws);
  }
}

// ---- min-p ---------------------------------------------------------------------------------------

TEST(Sampler, MinPKeepsTokensAboveAFractionOfTheBest) {
  const std::vector<double> probs = {0.4, 0.3, 0.2, 0.06, 0.04};
  const std::vector<int> order = {2, 4, 0, 3, 1};
  const auto l = logits_for(probs, order);
  const int draws = 100000;
  // min_p 0.125 → threshold 0.05: the 0.04 token goes. min_p 0.6 → threshold 0.24: two stay.
  for (const auto& [min_p, kept] : std::vector<std::pair<float, size_t>>{{0.125f, 4}, {0.6f, 2}}) {
    SCOPED_TRACE(min_p);
    SamplerParams p = plain();
    p.min_p = min_p;
    Sampler s(p);
    std::vector<double> expected(probs.size(), 0.0);
    const double mass = std::accumulate(probs.begin(), probs.begin() + static_cast<std::ptrdiff_t>(kept), 0.0);
    for (size_t i = 0; i < kept; ++i) expected[static_cast<size_t>(order[i])] = probs[i] / mass;
    expect_distribution(frequencies(s, l, draws), expected, draws);
  }
}

// Temperature comes before min-p in the chain: heating flattens the distribution so that a token
// min-p dropped at T=1 survives at T=2 (ratio e^-3 ≈ 0.05 < 0.1, but e^-1.5 ≈ 0.22 > 0.1).
TEST(Sampler, TemperatureActsBeforeMinP) {
  const std::vector<float> l = {0.0f, -3.0f};
  SamplerParams p = plain();
  p.min_p = 0.1f;
  Sampler cold(p);
  EXPECT_EQ(frequencies(cold, l, 20000)[1], 0.0);
  p.temperature = 2.0f;
  Sampler hot(p);
  const int draws = 100000;
  const double e = std::exp(-1.5);
  expect_distribution(frequencies(hot, l, draws), {1 / (1 + e), e / (1 + e)}, draws);
}

// ---- repetition penalty --------------------------------------------------------------------------

TEST(Sampler, RepetitionPenaltyChangesTheArgmax) {
  SamplerParams p = plain();
  p.temperature = 0.0f;
  p.repeat_penalty = 1.2f;
  p.repeat_last_n = 4;
  {
    Sampler s(p);
    EXPECT_EQ(sample_copy(s, {2.0f, 1.9f, 0.0f}), 0);
    s.accept(0);
    std::vector<float> l = {2.0f, 1.9f, 0.0f};
    EXPECT_EQ(s.sample(l.data(), 3), 1);  // 2.0 / 1.2 ≈ 1.67 < 1.9
    EXPECT_FLOAT_EQ(l[0], 2.0f / 1.2f);   // the logits are penalised in place
    EXPECT_FLOAT_EQ(l[1], 1.9f);
  }
  {
    // Negative logits are multiplied: -1.0 · 1.2 = -1.2 < -1.1.
    Sampler s(p);
    s.accept(0);
    EXPECT_EQ(sample_copy(s, {-1.0f, -1.1f}), 1);
  }
  {
    // A token repeated in the window is penalised once: 2.0 / 1.2 ≈ 1.67 still beats 1.5
    // (penalising twice would give 1.39).
    Sampler s(p);
    s.accept(0);
    s.accept(0);
    s.accept(0);
    EXPECT_EQ(sample_copy(s, {2.0f, 1.5f}), 0);
  }
  {
    // Only the last repeat_last_n accepted tokens count.
    Sampler s(p);
    s.accept(0);
    for (int i = 0; i < 4; ++i) s.accept(2);
    EXPECT_EQ(sample_copy(s, {2.0f, 1.9f, 0.0f}), 0);
    s.accept(0);
    EXPECT_EQ(sample_copy(s, {2.0f, 1.9f, 0.0f}), 1);
    // reset() forgets the history.
    s.reset();
    EXPECT_EQ(sample_copy(s, {2.0f, 1.9f, 0.0f}), 0);
  }
  {
    // repeat_last_n = 0 disables the penalty; a long history stays correct after trimming.
    SamplerParams off = p;
    off.repeat_last_n = 0;
    Sampler s(off);
    s.accept(0);
    EXPECT_EQ(sample_copy(s, {2.0f, 1.9f}), 0);
    Sampler t(p);
    for (int i = 0; i < 1000; ++i) t.accept(i % 2 == 0 ? 5 : 6);
    t.accept(0);
    EXPECT_EQ(sample_copy(t, {2.0f, 1.9f}), 1);
  }
}

// The penalty applies before top-k: a penalised favourite can fall out of a top-1 set.
TEST(Sampler, RepetitionPenaltyActsBeforeTopK) {
  SamplerParams p = plain();
  p.top_k = 1;
  p.temperature = 5.0f;
  p.repeat_penalty = 2.0f;
  Sampler s(p);
  s.accept(0);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(sample_copy(s, {2.0f, 1.5f, 1.0f}), 1);
}
