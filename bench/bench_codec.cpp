// bench_codec: bytes per vector, relative reconstruction error Σ‖x−x̂‖²/Σ‖x‖², training time and
// single-thread encode/decode µs per vector for every codec, at the paper's head dim 80 and at 64
// and 16, on synthetic structured vectors (a low-rank Gaussian mixture with uneven channel scales,
// like key/value heads). "pq" is the paper's OPQ-Residual-PQ scaled to D and narrowed to the sample
// (see codec_pq.cpp); the untrained paper form's size is printed for reference.
//
// Usage: bench_codec [--n-train N] [--paper] [--npy vectors.npy]
//   --n-train  training sample for pq (default 10000: 8-bit stages; ~1 min for all dims, most of it
//              OPQ training). The paper's 14/10-bit form needs N ≥ 638,976 and a long wait.
//   --paper    also train the paper's exact "pq:OPQ20_80,Residual2x14,PQ8x10" at D=80 on the same
//              sample (FAISS needs N ≥ 16,384 and warns below 638,976; minutes at N = 20,000).
//   --npy      also run on real vectors: a float32 .npy of shape [n, D] (e.g. memory keys or
//              values); the first 80% train pq, the rest are measured.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "m3/codec.h"
#include "m3/error.h"
#include "m3/npy.h"
#include "bench_util.h"

namespace {

using m3::bench::Clock;
using m3::bench::median;
using m3::bench::seconds_since;

// Same construction as tests/test_codec.cpp: 16 centres in an 8-dim subspace, within-cluster
// spread in that subspace, per-channel scales exp(N(0, 0.5²)), isotropic noise 0.1.
std::vector<float> mixture(int d, int64_t n, uint64_t model_seed, uint64_t sample_seed) {
  constexpr int kRank = 8, kClusters = 16;
  std::mt19937_64 g(model_seed);
  std::normal_distribution<float> n01;
  std::vector<float> basis(kRank * d), centres(kClusters * kRank), scale(d);
  for (auto& v : basis) v = n01(g);
  for (auto& v : centres) v = 3.0f * n01(g);
  for (auto& v : scale) v = std::exp(0.5f * n01(g));
  std::mt19937_64 s(sample_seed);
  std::vector<float> x(static_cast<size_t>(n) * d);
  for (int64_t v = 0; v < n; ++v) {
    const float* c = &centres[(s() % kClusters) * kRank];
    float coef[kRank];
    for (int i = 0; i < kRank; ++i) coef[i] = c[i] + n01(s);
    for (int j = 0; j < d; ++j) {
      float acc = 0.0f;
      for (int i = 0; i < kRank; ++i) acc += coef[i] * basis[i * d + j];
      x[v * d + j] = scale[j] * acc + 0.1f * n01(s);
    }
  }
  return x;
}

void run(const std::string& data_name, const std::string& spec, int d, const std::vector<float>& train,
         const std::vector<float>& test) {
  auto c = m3::make_codec(spec, d);
  const int64_t n_train = static_cast<int64_t>(train.size()) / d;
  const int64_t n_test = static_cast<int64_t>(test.size()) / d;
  double train_s = 0.0;
  if (c->needs_training()) {
    const auto t0 = Clock::now();
    try {
      c->train(train.data(), n_train);
    } catch (const m3::Error& e) {
      std::printf("%-8s %4d  %-34s  skipped: %s\n", data_name.c_str(), d, spec.c_str(), e.what());
      return;
    }
    train_s = seconds_since(t0);
  }
  std::vector<uint8_t> codes(static_cast<size_t>(n_test) * c->code_size());
  std::vector<float> y(test.size());
  auto t0 = Clock::now();
  c->encode(test.data(), n_test, codes.data());
  const double enc_us = seconds_since(t0) * 1e6 / static_cast<double>(n_test);
  t0 = Clock::now();
  c->decode(codes.data(), n_test, y.data());
  const double dec_us = seconds_since(t0) * 1e6 / static_cast<double>(n_test);
  const double err = m3::codec_relative_error(*c, test.data(), n_test);
  std::printf("%-8s %4d  %-34s %6zu %8.2f %10.2e %8.1f %8.2f %8.3f\n", data_name.c_str(), d,
              c->spec().c_str(), c->code_size(), 2.0 * d / static_cast<double>(c->code_size()), err,
              train_s, enc_us, dec_us);
  std::fflush(stdout);
}

void header() {
  std::printf("%-8s %4s  %-34s %6s %8s %10s %8s %8s %8s\n", "data", "D", "codec (spec after training)",
              "bytes", "bf16/x", "rel.err", "train s", "enc us", "dec us");
}

}  // namespace

int main(int argc, char** argv) {
  int64_t n_train = 10000;
  std::string npy;
  bool paper = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--n-train") == 0 && i + 1 < argc) {
      n_train = std::atoll(argv[++i]);
    } else if (std::strcmp(argv[i], "--paper") == 0) {
      paper = true;
    } else if (std::strcmp(argv[i], "--npy") == 0 && i + 1 < argc) {
      npy = argv[++i];
    } else {
      std::fprintf(stderr, "usage: bench_codec [--n-train N] [--paper] [--npy vectors.npy]\n");
      return 2;
    }
  }
  try {
    std::printf("The paper's form untrained: D=80 '%s' = %zu bytes (bf16: %zu bytes, ratio %.1f)\n\n",
                m3::make_codec("pq", 80)->spec().c_str(), m3::make_codec("pq", 80)->code_size(),
                m3::make_codec("bf16", 80)->code_size(),
                160.0 / static_cast<double>(m3::make_codec("pq", 80)->code_size()));
    header();
    const int64_t n_test = 5000;
    for (int d : {80, 64, 16}) {
      const auto train = mixture(d, n_train, 100 + d, 1);
      const auto test = mixture(d, n_test, 100 + d, 2);
      for (const char* spec : {"bf16", "f16", "int8", "pq"}) run("mixture", spec, d, train, test);
      if (d == 80)  // the same stages without OPQ, to show what the rotation buys
        run("mixture", "pq:Residual2x8,PQ8x8", d, train, test);
      if (d == 80 && paper) run("mixture", "pq:OPQ20_80,Residual2x14,PQ8x10", d, train, test);
    }
    if (!npy.empty()) {
      const m3::NpyArray a = m3::read_npy(npy);
      if (a.dtype != "<f4" || a.shape.size() != 2)
        throw m3::Error(npy + ": expected a float32 array of shape [n, D]");
      const int d = static_cast<int>(a.shape[1]);
      const int64_t n = a.shape[0], nt = n * 4 / 5;
      const std::vector<float> train(a.f32.begin(), a.f32.begin() + nt * d);
      const std::vector<float> test(a.f32.begin() + nt * d, a.f32.end());
      for (const char* spec : {"bf16", "f16", "int8", "pq"}) run("npy", spec, d, train, test);
    }
  } catch (const m3::Error& e) {
    std::fprintf(stderr, "bench_codec: %s\n", e.what());
    return 1;
  }
  return 0;
}
