// bench_kernels: decode GEMV (M = 1) bandwidth per weight type and prefill matmul (M = 128) GFLOP/s,
// with 1 and 2 threads.
//
// GEMV is reported in GB/s of weight bytes read: decode is bound by streaming weights, so this is
// the number to compare with the machine's memory bandwidth. Each run reads a different copy of the
// weight (enough copies to exceed the 32 MiB L3), so the figures are from DRAM, as in a real model
// whose layers do not all fit in cache. Median of 20 runs after 2 warm-ups. Q8_0/Q4_0 weights are
// packed as Model::load packs them (kernels.h); the "(no pack)" rows are views without a packed
// copy (--mmap models), packed 8 rows at a time on the fly.
//
// Usage: bench_kernels [--gemv]   (takes ~30 s; --gemv: only the GEMV table)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "m3/dtype.h"
#include "m3/kernels.h"
#include "m3/tensor.h"
#include "m3/thread_pool.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Weights {
  std::vector<m3::Buffer> copies, packed;
  std::vector<m3::TensorView> views;
};

Weights make_weights(m3::DType t, int64_t N, int64_t K, size_t min_total_bytes, bool pack) {
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  std::vector<float> row(static_cast<size_t>(K));
  const size_t bytes = m3::dtype_row_bytes(t, K) * static_cast<size_t>(N);
  const size_t n_copies = std::max<size_t>(1, (min_total_bytes + bytes - 1) / bytes);
  Weights w;
  w.copies.emplace_back(bytes);
  for (int64_t r = 0; r < N; ++r) {
    for (auto& v : row) v = nd(rng);
    m3::quantize_row(t, row.data(), w.copies[0].data() + static_cast<size_t>(r) * m3::dtype_row_bytes(t, K), K);
  }
  for (size_t c = 1; c < n_copies; ++c) {
    w.copies.emplace_back(bytes);
    std::copy_n(w.copies[0].data(), bytes, w.copies[c].data());
  }
  for (auto& b : w.copies) {
    m3::TensorView v;
    v.type = t;
    v.n_dims = 2;
    v.ne = {K, N, 1, 1};
    v.data = b.data();
    if (pack && m3::packed_bytes(v) > 0) {
      w.packed.emplace_back(m3::packed_bytes(v));
      m3::pack_weights(v, w.packed.back().data(), nullptr);
      v.packed = w.packed.back().data();
    }
    w.views.push_back(v);
  }
  if (pack) w.copies.clear();  // the kernels read only the packed copies
  if (pack && w.packed.empty()) return make_weights(t, N, K, min_total_bytes, false);
  return w;
}

template <class Fn>
double median_seconds(int warmup, int runs, Fn&& fn) {
  for (int i = 0; i < warmup; ++i) fn(i);
  std::vector<double> t;
  for (int i = 0; i < runs; ++i) {
    const auto t0 = Clock::now();
    fn(i);
    t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const bool gemv_only = argc > 1 && std::string(argv[1]) == "--gemv";
  const m3::DType types[] = {m3::DType::F32, m3::DType::F16, m3::DType::BF16, m3::DType::Q8_0, m3::DType::Q4_0};
  struct Shape { int64_t N, K; };
  const Shape shapes[] = {{4096, 4096}, {5632, 2048}};
  m3::ThreadPool pools[] = {m3::ThreadPool(1), m3::ThreadPool(2)};

  std::printf("GEMV y[N] = W[N,K] x[K] (M = 1), median of 20, weights streamed from DRAM\n");
  std::printf("%-16s %-12s %10s %12s %12s\n", "type", "N x K", "MiB", "1T GB/s", "2T GB/s");
  for (const Shape& s : shapes) {
    std::vector<float> x(static_cast<size_t>(s.K), 0.5f), y(static_cast<size_t>(s.N));
    for (int variant = 0; variant < 7; ++variant) {
      const m3::DType t = types[variant < 5 ? variant : variant - 2];
      const bool pack = variant < 5;
      Weights w = make_weights(t, s.N, s.K, 96u << 20, pack);
      const double bytes = static_cast<double>(w.views[0].nbytes());
      double gbs[2];
      for (int ti = 0; ti < 2; ++ti) {
        const double sec = median_seconds(2, 20, [&](int i) {
          m3::matmul(w.views[static_cast<size_t>(i) % w.views.size()], x.data(), y.data(), 1, &pools[ti]);
        });
        gbs[ti] = bytes / sec / 1e9;
      }
      const std::string name = std::string(m3::dtype_name(t)) + (pack ? "" : " (no pack)");
      std::printf("%-16s %5lld x %-5lld %10.1f %12.2f %12.2f\n", name.c_str(), static_cast<long long>(s.N),
                  static_cast<long long>(s.K), bytes / (1 << 20), gbs[0], gbs[1]);
    }
  }

  if (gemv_only) return 0;
  const int64_t M = 128;
  std::printf("\nmatmul y[M,N] = x[M,K] W[N,K]^T, M = %lld (OpenBLAS sgemm; non-f32 dequantized per tile), median of 5\n",
              static_cast<long long>(M));
  std::printf("%-6s %-12s %12s %12s\n", "type", "N x K", "1T GFLOP/s", "2T GFLOP/s");
  for (const Shape& s : shapes) {
    std::vector<float> x(static_cast<size_t>(M * s.K), 0.5f), y(static_cast<size_t>(M * s.N));
    for (m3::DType t : types) {
      Weights w = make_weights(t, s.N, s.K, 0, true);
      const double flop = 2.0 * static_cast<double>(M) * static_cast<double>(s.N) * static_cast<double>(s.K);
      double gf[2];
      for (int ti = 0; ti < 2; ++ti) {
        const double sec = median_seconds(1, 5, [&](int) { m3::matmul(w.views[0], x.data(), y.data(), M, &pools[ti]); });
        gf[ti] = flop / sec / 1e9;
      }
      std::printf("%-6s %5lld x %-5lld %12.1f %12.1f\n", m3::dtype_name(t), static_cast<long long>(s.N),
                  static_cast<long long>(s.K), gf[0], gf[1]);
    }
  }
  return 0;
}
