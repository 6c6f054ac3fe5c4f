// Machine limits for the benchmarks' rooflines (m3/probe.h).
#include "m3/probe.h"

#include <cblas.h>
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "m3/tensor.h"
#include "m3/thread_pool.h"

namespace m3 {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

double measure_read_bandwidth(int threads, size_t bytes, int reps) {
  threads = std::max(1, threads);
  Buffer buf(bytes);  // zeroed: every page is touched before timing
  const float* p = buf.as<float>();
  const size_t n = bytes / sizeof(float);
  ThreadPool pool(threads);
  std::vector<float> sink(static_cast<size_t>(threads));
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    pool.parallel_for(threads, [&](int64_t b, int64_t e, int) {
      for (int64_t part = b; part < e; ++part) {
        const size_t lo = n / threads * part / 8 * 8, hi = part + 1 == threads ? n : n / threads * (part + 1) / 8 * 8;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        size_t i = lo;
        for (; i + 32 <= hi; i += 32) {
          a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
          a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
          a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
          a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
        }
        alignas(32) float out[8];
        _mm256_store_ps(out, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
        sink[static_cast<size_t>(part)] = out[0];
      }
    });
    best = std::max(best, static_cast<double>(bytes) / seconds_since(t0) / 1e9);
  }
  volatile float keep = sink[0];
  (void)keep;
  return best;
}

double measure_sgemm_peak(int threads, int n, int reps) {
  std::vector<float> a(static_cast<size_t>(n) * n, 0.5f), b(static_cast<size_t>(n) * n, 0.25f), c(static_cast<size_t>(n) * n);
  set_blas_threads(std::max(1, threads));
  double best = 0;
  for (int r = 0; r <= reps; ++r) {  // the first call warms up OpenBLAS's threads and buffers
    const auto t0 = std::chrono::steady_clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    const double s = seconds_since(t0);
    if (r > 0) best = std::max(best, 2.0 * n * n * static_cast<double>(n) / s / 1e9);
  }
  set_blas_threads(1);
  return best;
}

}  // namespace m3
