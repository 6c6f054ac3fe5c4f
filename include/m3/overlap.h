// m3/overlap.h — the paper's leakage measure (spec §4.3, Eq. 6).
//
//   overlap(t, r) = (1/|r|) · max{ N : i_1<…<i_N in t, j_1<…<j_N in r, i_N − i_1 ≤ 2|r|, t_{i_k} = r_{j_k} }
//
// the longest common subsequence of r and any window of t spanning at most 2|r|+1 tokens,
// normalised by |r|. 1 when r appears inside t (even with insertions up to |r| tokens); near 0
// for unrelated texts. Stage-2 training excludes pairs with overlap > 0.9; evaluation drops a
// retrieved reference whose overlap with the question is ≥ 2/3.
#pragma once

#include <cstdint>
#include <span>

namespace m3 {

// Tokens of t and r (any ids). Returns 0 when r is empty. O(|t|·|r|²) time, O(|r|) memory.
double overlap(std::span<const int32_t> t, std::span<const int32_t> r);

constexpr double kTrainingOverlapLimit = 0.9;     // pairs above this are never trained on
constexpr double kEvaluationOverlapLimit = 2.0 / 3.0;  // retrieved references at or above are dropped

}  // namespace m3
