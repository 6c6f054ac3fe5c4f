// m3/probe.h — this machine's limits, measured: memory read bandwidth and the sgemm peak. The
// benchmarks (bench/, `m3 bench`) report speeds as fractions of these, measured in the same run,
// because the shared VMs m3 is developed on vary by 2x from hour to hour.
#pragma once

#include <cstddef>

namespace m3 {

// Read bandwidth in GB/s: the best of `reps` AVX2 passes summing a buffer much larger than the L3
// cache (1 GiB by default), split over `threads` threads. The best pass is the limit a kernel can
// approach at best, so a roofline built on it is a strict one.
double measure_read_bandwidth(int threads, size_t bytes = size_t(1) << 30, int reps = 7);

// GFLOP/s of a large square single-precision GEMM (n x n x n, OpenBLAS with its own `threads`
// threads): the best of `reps`. OpenBLAS is set back to one thread afterwards, as m3's kernels
// expect (they split work over m3's ThreadPool).
double measure_sgemm_peak(int threads, int n = 2048, int reps = 5);

}  // namespace m3
