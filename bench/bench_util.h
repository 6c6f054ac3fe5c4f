// Timing helpers shared by the benchmarks (bench/bench_*.cpp): one definition of "median" and of
// "seconds since", so every figure in docs/performance.md is computed the same way.
#pragma once

#include <algorithm>
#include <chrono>
#include <vector>

namespace m3::bench {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// The median (mean of the middle two for an even count); the benchmarks quote medians because
// this machine is noisy.
inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace m3::bench
