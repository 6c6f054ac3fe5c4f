// m3::overlap (paper Eq. 6, spec §4.3) against hand-made cases and a brute-force oracle.
//
// The oracle enumerates every window t[a..b] with b − a ≤ 2|r| and computes the textbook LCS of
// the window and r with a full (|window|+1)×(|r|+1) table; overlap is the best LCS / |r|.
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <algorithm>
#include <vector>

#include "m3/overlap.h"

namespace m3 {
namespace {

using Ids = std::vector<int32_t>;

int lcs(const int32_t* a, size_t na, const Ids& b) {
  std::vector<std::vector<int>> L(na + 1, std::vector<int>(b.size() + 1, 0));
  for (size_t i = 1; i <= na; ++i)
    for (size_t j = 1; j <= b.size(); ++j)
      L[i][j] = a[i - 1] == b[j - 1] ? L[i - 1][j - 1] + 1 : std::max(L[i - 1][j], L[i][j - 1]);
  return L[na][b.size()];
}

double oracle(const Ids& t, const Ids& r) {
  if (r.empty() || t.empty()) return 0.0;
  int best = 0;
  for (size_t a = 0; a < t.size(); ++a)
    for (size_t b = a; b < t.size() && b - a <= 2 * r.size(); ++b) best = std::max(best, lcs(t.data() + a, b - a + 1, r));
  return static_cast<double>(best) / static_cast<double>(r.size());
}

TEST(Overlap, IdenticalIsOne) {
  const Ids x = {5, 9, 2, 7, 7, 1, 30};
  EXPECT_EQ(overlap(x, x), 1.0);
}

TEST(Overlap, EmptyIsZero) {
  const Ids x = {1, 2, 3};
  EXPECT_EQ(overlap(x, Ids{}), 0.0);
  EXPECT_EQ(overlap(Ids{}, x), 0.0);
}

TEST(Overlap, DisjointIsZero) {
  EXPECT_EQ(overlap(Ids{1, 2, 3, 4, 5, 6}, Ids{7, 8, 9}), 0.0);
}

TEST(Overlap, ReferenceInsideLongTextIsOne) {
  const Ids r = {100, 101, 102, 103, 104, 105, 106, 107};
  Ids t(500, 1);
  std::copy(r.begin(), r.end(), t.begin() + 300);
  EXPECT_EQ(overlap(t, r), 1.0);
}

TEST(Overlap, InsertionsUpToReferenceLengthStillOne) {
  // r's tokens spread with |r| inserted tokens in total: the span is 2|r| − 1 ≤ 2|r|.
  const Ids r = {10, 11, 12, 13, 14, 15};
  Ids t = {0, 0, 0};
  for (size_t j = 0; j < r.size(); ++j) {
    t.push_back(r[j]);
    t.push_back(99);  // one filler after each: |r| inserted, span 2|r| − 2 between first and last
  }
  t.insert(t.end(), {0, 0});
  EXPECT_EQ(overlap(t, r), 1.0);
  // Also with all |r| insertions in one gap.
  Ids u = {10, 11, 12};
  u.insert(u.end(), r.size(), 77);
  u.insert(u.end(), {13, 14, 15});
  EXPECT_EQ(overlap(u, r), 1.0);
}

TEST(Overlap, MatchesSpreadWiderThanTwiceTheReferenceDoNotCount) {
  // r = {1, 2}: 2|r| = 4, so the matched span i_N − i_1 may be at most 4.
  const Ids r = {1, 2};
  EXPECT_EQ(overlap(Ids{1, 0, 0, 0, 2}, r), 1.0);     // span 4: counts
  EXPECT_EQ(overlap(Ids{1, 0, 0, 0, 0, 2}, r), 0.5);  // span 5: only one token matches
  // Longer r: first and last tokens far apart, middle ones close to either end.
  const Ids r4 = {1, 2, 3, 4};                        // 2|r| = 8
  Ids t = {1, 2, 3};
  t.insert(t.end(), 10, 0);
  t.push_back(4);                                     // 4 sits 12 after the 1
  EXPECT_DOUBLE_EQ(overlap(t, r4), 0.75);
  EXPECT_DOUBLE_EQ(oracle(t, r4), 0.75);
}

TEST(Overlap, OrderMatters) {
  // A subsequence, not a multiset: reversed r matches one token.
  EXPECT_DOUBLE_EQ(overlap(Ids{4, 3, 2, 1}, Ids{1, 2, 3, 4}), 0.25);
}

TEST(Overlap, Thresholds) {
  EXPECT_DOUBLE_EQ(kTrainingOverlapLimit, 0.9);
  EXPECT_DOUBLE_EQ(kEvaluationOverlapLimit, 2.0 / 3.0);
}

// Small alphabets make matches frequent and short references make the 2|r| window bind, so both
// the LCS and the bound matter. Each case checks 20 pairs (2,000 per run).
RC_GTEST_PROP(OverlapProp, MatchesBruteForceOracle, ()) {
  for (int rep = 0; rep < 20; ++rep) {
    const int alphabet = *rc::gen::inRange(1, 8);
    const auto tok = rc::gen::inRange<int32_t>(0, alphabet);
    const int nr = *rc::gen::inRange(1, 7), nt = *rc::gen::inRange(0, 41);
    const Ids r = *rc::gen::container<Ids>(static_cast<size_t>(nr), tok);
    const Ids t = *rc::gen::container<Ids>(static_cast<size_t>(nt), tok);
    RC_ASSERT(overlap(t, r) == oracle(t, r));
  }
}

RC_GTEST_PROP(OverlapProp, BetweenZeroAndOne, ()) {
  const auto tok = rc::gen::inRange<int32_t>(0, 20);
  const Ids r = *rc::gen::container<Ids>(tok);
  const Ids t = *rc::gen::container<Ids>(tok);
  const double o = overlap(t, r);
  RC_ASSERT(o >= 0.0);
  RC_ASSERT(o <= 1.0);
}

RC_GTEST_PROP(OverlapProp, ReferenceEmbeddedWithFillerIsOne, ()) {
  // r inserted into random text with at most |r| filler tokens interleaved: overlap 1.
  const Ids r = *rc::gen::nonEmpty(rc::gen::resize(12, rc::gen::container<Ids>(rc::gen::inRange<int32_t>(0, 50))));
  const Ids before = *rc::gen::resize(30, rc::gen::container<Ids>(rc::gen::inRange<int32_t>(0, 50)));
  const Ids after = *rc::gen::resize(30, rc::gen::container<Ids>(rc::gen::inRange<int32_t>(0, 50)));
  const auto fill = *rc::gen::container<std::vector<int>>(r.size(), rc::gen::inRange(0, 3));
  Ids t = before;
  int budget = static_cast<int>(r.size());
  for (size_t j = 0; j < r.size(); ++j) {
    t.push_back(r[j]);
    const int n = j + 1 < r.size() ? std::min(fill[j], budget) : 0;
    for (int f = 0; f < n; ++f) t.push_back(1000 + f);
    budget -= n;
  }
  t.insert(t.end(), after.begin(), after.end());
  RC_ASSERT(overlap(t, r) == 1.0);
}

}  // namespace
}  // namespace m3
