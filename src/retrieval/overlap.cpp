// Eq. 6 overlap: for every window start i_1 in t, the LCS of r with t[i_1 .. i_1+2|r|], by the
// classic DP kept to one row (the match at i_1 is not required: a window starting earlier covers
// any LCS whose first match is later, so taking the max over starts is exact).
#include "m3/overlap.h"

#include <algorithm>
#include <vector>

namespace m3 {

double overlap(std::span<const int32_t> t, std::span<const int32_t> r) {
  const int64_t R = static_cast<int64_t>(r.size()), T = static_cast<int64_t>(t.size());
  if (R == 0 || T == 0) return 0.0;
  const int64_t span = 2 * R + 1;  // i_N − i_1 ≤ 2|r|
  std::vector<int32_t> row(static_cast<size_t>(R + 1)), prev(static_cast<size_t>(R + 1));
  int64_t best = 0;
  for (int64_t start = 0; start < T && best < R; ++start) {
    // Windows are only worth starting on a token that occurs in r.
    if (std::find(r.begin(), r.end(), t[start]) == r.end()) continue;
    std::fill(prev.begin(), prev.end(), 0);
    const int64_t end = std::min(T, start + span);
    for (int64_t i = start; i < end; ++i) {
      row[0] = 0;
      for (int64_t j = 1; j <= R; ++j)
        row[j] = t[i] == r[j - 1] ? prev[j - 1] + 1 : std::max(prev[j], row[j - 1]);
      std::swap(row, prev);
    }
    best = std::max<int64_t>(best, prev[R]);
  }
  return static_cast<double>(best) / static_cast<double>(R);
}

}  // namespace m3
