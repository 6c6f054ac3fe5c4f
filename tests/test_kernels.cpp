// Tests for m3/kernels.h: every fast op against its m3::ref oracle on random inputs and awkward
// sizes, plus properties of the ops themselves (softmax sums to 1, rope is a rotation, ...).
//
// Error measure: NMSE = sum((fast - ref)^2) / sum(ref^2). Float paths differ from the reference only
// in summation order (<= 1e-10). The single-row quantized dots compute the same integers as the
// reference and differ only in float accumulation order (<= 1e-10). The quantized GEMV (packed
// 8-row layout, kernels.h) does the reference's steps in the reference's order and must equal
// ref::dot_q8_0_q8_0 / ref::dot_q4_0_q8_0 bit for bit, packed or not, on any pool; against the
// f64 ref::matmul it also carries x's Q8_0 quantization (<= 5e-4).
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "m3/dtype.h"
#include "m3/error.h"
#include "m3/kernels.h"
#include "m3/tensor.h"
#include "m3/thread_pool.h"

namespace {

using m3::BlockQ4_0;
using m3::BlockQ8_0;
using m3::DType;

constexpr DType kAllTypes[] = {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0};

double nmse(const float* a, const float* b, int64_t n) {
  double num = 0.0, den = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
  }
  return den == 0.0 ? num : num / den;
}
double nmse(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  return nmse(a.data(), b.data(), static_cast<int64_t>(b.size()));
}

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

// A weight matrix W (N rows of K) in the given type, quantized from random floats.
struct Weight {
  m3::Buffer bytes;
  m3::TensorView view;
};

Weight make_weight(DType t, int64_t N, int64_t K, uint32_t seed) {
  const std::vector<float> w = randn(static_cast<size_t>(N * K), seed, 0.5f);
  Weight out{m3::Buffer(m3::dtype_row_bytes(t, K) * static_cast<size_t>(N)), {}};
  out.view.name = std::string("w_") + m3::dtype_name(t);
  out.view.type = t;
  out.view.n_dims = 2;
  out.view.ne = {K, N, 1, 1};
  out.view.data = out.bytes.data();
  for (int64_t r = 0; r < N; ++r) {
    m3::quantize_row(t, w.data() + r * K, const_cast<void*>(out.view.row(r)), K);
  }
  return out;
}

// Gives w a packed copy (the layout Model::load makes for Q8_0/Q4_0); the buffer must outlive its use.
m3::Buffer pack(Weight& w) {
  m3::Buffer b(m3::packed_bytes(w.view));
  m3::pack_weights(w.view, b.data(), nullptr);
  w.view.packed = b.data();
  return b;
}

// Pools shared by all tests: nullptr, 1, 2 and 3 threads (3 > cores on the 2-core target).
std::vector<m3::ThreadPool*> pools() {
  static m3::ThreadPool p1(1), p2(2), p3(3);
  return {nullptr, &p1, &p2, &p3};
}
std::string pool_name(const m3::ThreadPool* p) { return p ? std::to_string(p->size()) + " threads" : "no pool"; }

// --- dot kernels ----------------------------------------------------------------------------------

TEST(Dot, FloatTypesMatchReference) {
  for (int64_t n : {1, 7, 8, 31, 32, 96, 100, 4096, 4128, 4133}) {
    const std::vector<float> x = randn(static_cast<size_t>(n), 10);
    for (DType t : {DType::F32, DType::F16, DType::BF16}) {
      const int rows = 16;
      Weight w = make_weight(t, rows, n, 11);
      std::vector<float> fast(rows), ref(rows);
      for (int r = 0; r < rows; ++r) {
        const void* row = w.view.row(r);
        ref[r] = m3::ref::dot_row(t, row, x.data(), n);
        if (t == DType::F32) fast[r] = m3::dot_f32(static_cast<const float*>(row), x.data(), n);
        if (t == DType::F16) fast[r] = m3::dot_f16_f32(static_cast<const uint16_t*>(row), x.data(), n);
        if (t == DType::BF16) fast[r] = m3::dot_bf16_f32(static_cast<const uint16_t*>(row), x.data(), n);
      }
      EXPECT_LE(nmse(fast, ref), 1e-10) << m3::dtype_name(t) << " n=" << n;
    }
  }
}

TEST(Dot, QuantizedMatchReference) {
  for (int64_t n : {32, 64, 96, 4096, 4128}) {
    const std::vector<float> x = randn(static_cast<size_t>(n), 20);
    std::vector<BlockQ8_0> xq(static_cast<size_t>(n / 32));
    m3::quantize_row(DType::Q8_0, x.data(), xq.data(), n);
    const int rows = 16;
    Weight w8 = make_weight(DType::Q8_0, rows, n, 21), w4 = make_weight(DType::Q4_0, rows, n, 22);
    std::vector<float> f8(rows), r8(rows), f4(rows), r4(rows);
    for (int r = 0; r < rows; ++r) {
      const auto* b8 = static_cast<const BlockQ8_0*>(w8.view.row(r));
      const auto* b4 = static_cast<const BlockQ4_0*>(w4.view.row(r));
      f8[r] = m3::dot_q8_0_q8_0(b8, xq.data(), n);
      r8[r] = m3::ref::dot_q8_0_q8_0(b8, xq.data(), n);
      f4[r] = m3::dot_q4_0_q8_0(b4, xq.data(), n);
      r4[r] = m3::ref::dot_q4_0_q8_0(b4, xq.data(), n);
    }
    EXPECT_LE(nmse(f8, r8), 1e-10) << "q8_0 n=" << n;
    EXPECT_LE(nmse(f4, r4), 1e-10) << "q4_0 n=" << n;
  }
}

// With every scale 1.0 the dots are exact integers, so fast and reference must agree exactly,
// including at the extremes of the int8 range the quantizers produce (±127, nibbles 0 and 15).
TEST(Dot, QuantizedExactIntegers) {
  std::mt19937 rng(30);
  std::uniform_int_distribution<int> q8(-127, 127), q4(0, 15);
  const int nb = 5;
  std::vector<BlockQ8_0> w8(nb), x8(nb);
  std::vector<BlockQ4_0> w4(nb);
  for (int b = 0; b < nb; ++b) {
    w8[b].d = x8[b].d = w4[b].d = 0x3C00;
    for (int j = 0; j < 32; ++j) {
      w8[b].qs[j] = static_cast<int8_t>(b == 0 ? 127 : q8(rng));
      x8[b].qs[j] = static_cast<int8_t>(b == 0 ? -127 : q8(rng));
    }
    for (int j = 0; j < 16; ++j) w4[b].qs[j] = static_cast<uint8_t>(b == 0 ? 0x0F : q4(rng) | q4(rng) << 4);
  }
  // Expected in plain integers, independent of both implementations.
  long long e8 = 0, e4 = 0;
  for (int b = 0; b < nb; ++b) {
    for (int j = 0; j < 32; ++j) e8 += w8[b].qs[j] * x8[b].qs[j];
    for (int j = 0; j < 16; ++j) {
      e4 += ((w4[b].qs[j] & 0xF) - 8) * x8[b].qs[j] + ((w4[b].qs[j] >> 4) - 8) * x8[b].qs[j + 16];
    }
  }
  EXPECT_EQ(m3::dot_q8_0_q8_0(w8.data(), x8.data(), nb * 32), static_cast<float>(e8));
  EXPECT_EQ(m3::ref::dot_q8_0_q8_0(w8.data(), x8.data(), nb * 32), static_cast<float>(e8));
  EXPECT_EQ(m3::dot_q4_0_q8_0(w4.data(), x8.data(), nb * 32), static_cast<float>(e4));
  EXPECT_EQ(m3::ref::dot_q4_0_q8_0(w4.data(), x8.data(), nb * 32), static_cast<float>(e4));
}

// Scales enter as the product of the two fp16 scales.
TEST(Dot, QuantizedScales) {
  BlockQ8_0 w{}, x{};
  BlockQ4_0 w4{};
  w.d = m3::fp32_to_fp16(0.5f);
  x.d = m3::fp32_to_fp16(-0.25f);
  w4.d = m3::fp32_to_fp16(3.0f);
  for (int j = 0; j < 32; ++j) w.qs[j] = 2, x.qs[j] = static_cast<int8_t>(j);
  for (int j = 0; j < 16; ++j) w4.qs[j] = 0x9A;  // low nibble 10 -> +2, high 9 -> +1
  // sum_j 2*j = 992; * 0.5 * -0.25
  EXPECT_FLOAT_EQ(m3::dot_q8_0_q8_0(&w, &x, 32), 992 * 0.5f * -0.25f);
  // 2 * sum_{j<16} j + 1 * sum_{j>=16} j = 240 + 376 = 616; * 3 * -0.25
  EXPECT_FLOAT_EQ(m3::dot_q4_0_q8_0(&w4, &x, 32), 616 * 3.0f * -0.25f);
  EXPECT_FLOAT_EQ(m3::ref::dot_q4_0_q8_0(&w4, &x, 32), 616 * 3.0f * -0.25f);
}

// --- matmul ---------------------------------------------------------------------------------------

class Matmul : public ::testing::TestWithParam<DType> {};

TEST_P(Matmul, MatchesReference) {
  const DType t = GetParam();
  const bool quant = t == DType::Q8_0 || t == DType::Q4_0;
  struct Shape { int64_t M, N, K; };
  std::vector<Shape> shapes = {
      {1, 1, 32},    {1, 17, 96},   {1, 67, 4096}, {1, 50, 4128}, {1, 301, 64},
      {2, 17, 96},   {2, 300, 96},  {7, 50, 4128}, {64, 67, 96},  {64, 33, 4096},
  };
  if (!quant) {  // float weights take any K
    shapes.push_back({1, 19, 100});
    shapes.push_back({3, 19, 7});
  }
  uint32_t seed = 100;
  for (const Shape& s : shapes) {
    Weight w = make_weight(t, s.N, s.K, seed++);
    const std::vector<float> x = randn(static_cast<size_t>(s.M * s.K), seed++);
    std::vector<float> ref(static_cast<size_t>(s.M * s.N));
    m3::ref::matmul(w.view, x.data(), ref.data(), s.M);

    // For M == 1 on quantized weights, also the exact oracle: ref integer dots with the same x
    // quantization the fast path does.
    std::vector<float> ref_q;
    if (quant && s.M == 1) {
      std::vector<BlockQ8_0> xq(static_cast<size_t>(s.K / 32));
      m3::quantize_row(DType::Q8_0, x.data(), xq.data(), s.K);
      for (int64_t r = 0; r < s.N; ++r) {
        ref_q.push_back(t == DType::Q8_0
                            ? m3::ref::dot_q8_0_q8_0(static_cast<const BlockQ8_0*>(w.view.row(r)), xq.data(), s.K)
                            : m3::ref::dot_q4_0_q8_0(static_cast<const BlockQ4_0*>(w.view.row(r)), xq.data(), s.K));
      }
    }
    for (m3::ThreadPool* pool : pools()) {
      std::vector<float> y(ref.size(), std::nanf(""));
      m3::matmul(w.view, x.data(), y.data(), s.M, pool);
      const std::string what = std::string(m3::dtype_name(t)) + " M=" + std::to_string(s.M) +
                               " N=" + std::to_string(s.N) + " K=" + std::to_string(s.K) + ", " +
                               pool_name(pool);
      const double tol = (quant && s.M == 1) ? 5e-4 : 1e-10;
      EXPECT_LE(nmse(y, ref), tol) << what;  // NaN (an unwritten output) fails this too
      if (!ref_q.empty()) {
        EXPECT_EQ(y, ref_q) << what << " vs integer-dot oracle";
      }
      if (quant) {  // the same through the packed copy Model::load makes
        m3::Buffer packed = pack(w);
        std::vector<float> yp(ref.size(), std::nanf(""));
        m3::matmul(w.view, x.data(), yp.data(), s.M, pool);
        w.view.packed = nullptr;
        if (s.M == 1) {
          EXPECT_EQ(yp, ref_q) << what << ", packed";
        } else {
          EXPECT_EQ(yp, y) << what << ", packed";  // dequantized tiles are the same floats
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, Matmul, ::testing::ValuesIn(kAllTypes),
                         [](const auto& p) { return std::string(m3::dtype_name(p.param)); });

// The same call twice (scratch buffers reused, pool reused) gives bit-identical results, and a
// threaded GEMV equals the single-threaded one bit for bit (each row is one thread's dot).
TEST(Matmul, DeterministicAcrossThreads) {
  for (DType t : kAllTypes) {
    Weight w = make_weight(t, 203, 256, 7);
    const std::vector<float> x = randn(256, 8);
    std::vector<float> y0(203), y1(203);
    m3::matmul(w.view, x.data(), y0.data(), 1, nullptr);
    for (m3::ThreadPool* pool : pools()) {
      m3::matmul(w.view, x.data(), y1.data(), 1, pool);
      EXPECT_EQ(std::memcmp(y0.data(), y1.data(), y0.size() * sizeof(float)), 0)
          << m3::dtype_name(t) << ", " << pool_name(pool);
    }
  }
}

// The quantized GEMV gives exactly the reference's per-row dots (ref::dot_*_q8_0 with the same x
// quantization), packed or packed on the fly, for row counts that leave a partial pack group,
// odd block counts (a zero padding block), and every pool.
TEST(Matmul, QuantizedGemvEqualsReferenceDots) {
  for (DType t : {DType::Q8_0, DType::Q4_0}) {
    for (int64_t K : {32, 96, 4128}) {
      for (int64_t N : {1, 8, 37, 64}) {
        Weight w = make_weight(t, N, K, static_cast<uint32_t>(9 + N + K));
        const std::vector<float> x = randn(static_cast<size_t>(K), 10);
        std::vector<BlockQ8_0> xq(static_cast<size_t>(K / 32));
        m3::quantize_row(DType::Q8_0, x.data(), xq.data(), K);
        std::vector<float> expect(static_cast<size_t>(N));
        for (int64_t r = 0; r < N; ++r) {
          expect[r] = t == DType::Q8_0 ? m3::ref::dot_q8_0_q8_0(static_cast<const BlockQ8_0*>(w.view.row(r)), xq.data(), K)
                                       : m3::ref::dot_q4_0_q8_0(static_cast<const BlockQ4_0*>(w.view.row(r)), xq.data(), K);
        }
        for (int packed = 0; packed < 2; ++packed) {
          m3::Buffer keep;
          if (packed) keep = pack(w);
          for (m3::ThreadPool* pool : pools()) {
            std::vector<float> y(static_cast<size_t>(N), std::nanf(""));
            m3::matmul(w.view, x.data(), y.data(), 1, pool);
            EXPECT_EQ(y, expect) << m3::dtype_name(t) << " N=" << N << " K=" << K << (packed ? " packed, " : ", ")
                                 << pool_name(pool);
          }
        }
      }
    }
  }
}

// matmul_shared (q, k, v in one pass) gives exactly what separate matmul calls give, for mixed
// types and row counts that end inside a 16-row unit, packed or not, M == 1 and M > 1.
TEST(Matmul, SharedEqualsSeparateCalls) {
  const int64_t K = 96;
  std::vector<Weight> ws;
  const DType types[] = {DType::Q8_0, DType::F32, DType::Q4_0, DType::Q4_0, DType::F16};
  const int64_t rows[] = {37, 16, 5, 64, 21};
  for (int i = 0; i < 5; ++i) ws.push_back(make_weight(types[i], rows[i], K, static_cast<uint32_t>(70 + i)));
  std::vector<m3::Buffer> keep;
  for (int i = 2; i < 4; ++i) keep.push_back(pack(ws[static_cast<size_t>(i)]));  // two packed, one not
  for (int64_t M : {1, 3}) {
    const std::vector<float> x = randn(static_cast<size_t>(M * K), 80);
    for (m3::ThreadPool* pool : pools()) {
      std::vector<std::vector<float>> sep(5), shared(5);
      std::vector<m3::MatmulTarget> targets;
      for (size_t i = 0; i < 5; ++i) {
        sep[i].assign(static_cast<size_t>(M * rows[i]), 0.0f);
        shared[i].assign(static_cast<size_t>(M * rows[i]), std::nanf(""));
        m3::matmul(ws[i].view, x.data(), sep[i].data(), M, pool);
        targets.push_back({&ws[i].view, shared[i].data()});
      }
      m3::matmul_shared(targets, x.data(), M, pool);
      for (size_t i = 0; i < 5; ++i) EXPECT_EQ(shared[i], sep[i]) << "matrix " << i << " M=" << M << ", " << pool_name(pool);
    }
  }
}

// Integer extremes through the packed GEMV with unit scales, where every result is an exact
// integer: Q8_0 weights at -128 (ggml's quantizer never writes it, other files may) and 127
// against activations at ±127, Q4_0 nibbles 0 and 15; expected values from plain integer sums.
TEST(Matmul, QuantizedGemvIntegerExtremes) {
  const int64_t N = 11, K = 96;
  std::mt19937 rng(31);
  std::uniform_int_distribution<int> q8(-128, 127), q4(0, 15);
  // x = ±127 * s exactly quantizes to ±127 with scale s = 1 (fp16 1.0): Q8_0 takes d = amax/127.
  std::vector<float> x(K);
  for (int64_t c = 0; c < K; ++c) x[c] = (c % 3 == 0 ? -127.0f : (c % 3 == 1 ? 127.0f : static_cast<float>(q8(rng) / 2)));
  for (int64_t b = 0; b < K / 32; ++b) x[b * 32] = -127.0f;  // keeps amax 127 per block
  std::vector<BlockQ8_0> xq(K / 32);
  m3::quantize_row(DType::Q8_0, x.data(), xq.data(), K);
  for (const auto& b : xq) ASSERT_EQ(b.d, 0x3C00);
  for (DType t : {DType::Q8_0, DType::Q4_0}) {
    Weight w{m3::Buffer(m3::dtype_row_bytes(t, K) * N), {}};
    w.view.name = "extremes";
    w.view.type = t;
    w.view.n_dims = 2;
    w.view.ne = {K, N, 1, 1};
    w.view.data = w.bytes.data();
    std::vector<float> expect(N);
    for (int64_t r = 0; r < N; ++r) {
      long long e = 0;
      for (int64_t b = 0; b < K / 32; ++b) {
        if (t == DType::Q8_0) {
          auto& blk = static_cast<BlockQ8_0*>(const_cast<void*>(w.view.row(r)))[b];
          blk.d = 0x3C00;
          for (int j = 0; j < 32; ++j) {
            blk.qs[j] = static_cast<int8_t>(r == 0 ? -128 : (r == 1 ? 127 : q8(rng)));
            e += blk.qs[j] * xq[b].qs[j];
          }
        } else {
          auto& blk = static_cast<BlockQ4_0*>(const_cast<void*>(w.view.row(r)))[b];
          blk.d = 0x3C00;
          for (int j = 0; j < 16; ++j) {
            blk.qs[j] = static_cast<uint8_t>(r == 0 ? 0x00 : (r == 1 ? 0xFF : (q4(rng) | q4(rng) << 4)));
            e += ((blk.qs[j] & 0xF) - 8) * xq[b].qs[j] + ((blk.qs[j] >> 4) - 8) * xq[b].qs[j + 16];
          }
        }
      }
      expect[r] = static_cast<float>(e);
    }
    m3::Buffer keep = pack(w);
    for (m3::ThreadPool* pool : pools()) {
      std::vector<float> y(N);
      m3::matmul(w.view, x.data(), y.data(), 1, pool);
      EXPECT_EQ(y, expect) << m3::dtype_name(t) << ", " << pool_name(pool);
    }
  }
}

// dequantize_rows from the packed copy equals dequantize_row of the ggml layout exactly, for
// ranges that start and end inside a pack group; float types read `data` and pack nothing.
TEST(Matmul, PackedDequantizeRowsIsExact) {
  for (DType t : kAllTypes) {
    const int64_t N = 29, K = 160;
    Weight w = make_weight(t, N, K, 41);
    std::vector<float> expect(static_cast<size_t>(N * K));
    for (int64_t r = 0; r < N; ++r) m3::dequantize_row(t, w.view.row(r), expect.data() + r * K, K);
    m3::Buffer keep;
    if (m3::packed_bytes(w.view) > 0) {
      keep = pack(w);
    } else {
      EXPECT_TRUE(t == DType::F32 || t == DType::F16 || t == DType::BF16);
    }
    for (auto [r0, r1] : {std::pair<int64_t, int64_t>{0, N}, {3, 21}, {8, 16}, {17, 29}, {28, 29}}) {
      std::vector<float> got(static_cast<size_t>((r1 - r0) * K), std::nanf(""));
      m3::dequantize_rows(w.view, r0, r1, got.data());
      EXPECT_EQ(0, std::memcmp(got.data(), expect.data() + r0 * K, got.size() * sizeof(float)))
          << m3::dtype_name(t) << " rows " << r0 << ".." << r1;
    }
  }
}

// The activation quantizer (dtype.cpp, SIMD) writes the bytes of ggml's scalar quantize_row_q8_0_ref,
// written out here: ties of roundf (halves away from zero) with amax = 127 (d = 1), tiny and zero
// blocks, and random scales.
TEST(Quantize, Q8_0MatchesScalarGgmlFormula) {
  auto ggml = [](const float* x, BlockQ8_0* y, int64_t nb) {
    for (int64_t b = 0; b < nb; ++b, x += 32) {
      float amax = 0.0f;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
      const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
      y[b].d = m3::fp32_to_fp16(d);
      for (int j = 0; j < 32; ++j) y[b].qs[j] = static_cast<int8_t>(std::roundf(x[j] * id));
    }
  };
  std::mt19937 rng(50);
  std::uniform_int_distribution<int> halves(-254, 254);
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t nb = 1 + trial % 7;
    std::vector<float> x = randn(static_cast<size_t>(nb * 32), 60 + trial, trial % 2 ? 1e-3f : 3.0f);
    if (trial % 3 == 0) {  // exact halves in [-127, 127] with amax 127: every tie of roundf
      for (auto& v : x) v = static_cast<float>(halves(rng)) / 2.0f;
      for (int64_t b = 0; b < nb; ++b) x[static_cast<size_t>(b * 32 + trial % 32)] = trial % 2 ? 127.0f : -127.0f;
    }
    if (trial % 10 == 1) std::fill(x.begin(), x.begin() + 32, 0.0f);  // a zero block
    if (trial % 10 == 2) for (auto& v : x) v *= 1e-30f;                 // d underflows in fp16
    std::vector<BlockQ8_0> fast(static_cast<size_t>(nb)), slow(static_cast<size_t>(nb));
    m3::quantize_row(DType::Q8_0, x.data(), fast.data(), nb * 32);
    ggml(x.data(), slow.data(), nb);
    ASSERT_EQ(0, std::memcmp(fast.data(), slow.data(), fast.size() * sizeof(BlockQ8_0))) << "trial " << trial;
  }
}

// --- elementwise ops ------------------------------------------------------------------------------

TEST(Rmsnorm, MatchesReference) {
  for (int64_t n : {1, 7, 16, 96, 4096, 4133}) {
    const std::vector<float> x = randn(static_cast<size_t>(n), 40, 3.0f), w = randn(static_cast<size_t>(n), 41);
    std::vector<float> a(static_cast<size_t>(n)), b(static_cast<size_t>(n));
    m3::rmsnorm(a.data(), x.data(), w.data(), n, 1e-5f);
    m3::ref::rmsnorm(b.data(), x.data(), w.data(), n, 1e-5f);
    EXPECT_LE(nmse(a, b), 1e-10) << "n=" << n;
  }
}

TEST(Rmsnorm, UnitWeightGivesUnitRms) {
  const int64_t n = 4096;
  const std::vector<float> x = randn(n, 42, 7.0f), w(n, 1.0f);
  std::vector<float> y(n);
  m3::ref::rmsnorm(y.data(), x.data(), w.data(), n, 0.0f);
  double ss = 0;
  for (float v : y) ss += static_cast<double>(v) * v;
  EXPECT_NEAR(ss / n, 1.0, 1e-6);
  // A constant vector c normalises to 1 (eps = 0): out = c / |c|.
  std::vector<float> c(n, -2.5f);
  m3::rmsnorm(y.data(), c.data(), w.data(), n, 0.0f);
  for (float v : y) ASSERT_FLOAT_EQ(v, -1.0f);
}

TEST(Rope, MatchesReference) {
  for (int64_t D : {2, 6, 8, 64, 128}) {
    for (int64_t pos : {0, 1, 17, 4095, 100000}) {
      for (float theta : {10000.0f, 500000.0f}) {
        const int64_t H = 5;
        std::vector<float> a = randn(static_cast<size_t>(H * D), 50), b = a;
        m3::rope(a.data(), H, D, pos, theta);
        m3::ref::rope(b.data(), H, D, pos, theta);
        for (size_t i = 0; i < a.size(); ++i) {
          ASSERT_NEAR(a[i], b[i], 1e-6f * std::max(1.0f, std::fabs(b[i])))
              << "D=" << D << " pos=" << pos << " theta=" << theta << " i=" << i;
        }
        EXPECT_LE(nmse(a, b), 1e-10);
      }
    }
  }
}

TEST(Rope, PositionZeroIsIdentity) {
  const std::vector<float> x = randn(4 * 64, 51);
  std::vector<float> a = x, b = x;
  m3::rope(a.data(), 4, 64, 0, 10000.0f);
  m3::ref::rope(b.data(), 4, 64, 0, 10000.0f);
  EXPECT_EQ(a, x);
  EXPECT_EQ(b, x);
}

// Hand-computed angles: pair i of a head rotates by pos * theta^(-2i/D), counter-clockwise,
// (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos).
TEST(Rope, KnownAngles) {
  for (bool fast : {false, true}) {
    // D = 4, theta = 10000: pair 0 rotates by pos, pair 1 by pos/100. pos = 100: angles 100 and 1.
    float v[8] = {1, 0, 1, 0, 0, 2, 0, 2};  // two heads
    if (fast) m3::rope(v, 2, 4, 100, 10000.0f);
    else m3::ref::rope(v, 2, 4, 100, 10000.0f);
    EXPECT_NEAR(v[0], std::cos(100.0), 1e-6);
    EXPECT_NEAR(v[1], std::sin(100.0), 1e-6);
    EXPECT_NEAR(v[2], std::cos(1.0), 1e-6);
    EXPECT_NEAR(v[3], std::sin(1.0), 1e-6);
    EXPECT_NEAR(v[4], -2 * std::sin(100.0), 2e-6);
    EXPECT_NEAR(v[5], 2 * std::cos(100.0), 2e-6);
    EXPECT_NEAR(v[6], -2 * std::sin(1.0), 2e-6);
    EXPECT_NEAR(v[7], 2 * std::cos(1.0), 2e-6);
  }
}

RC_GTEST_PROP(RopeProp, PreservesPairNorms, (uint16_t pos_in, uint8_t dsel)) {
  const int64_t D = 2 * (1 + dsel % 64), H = 3, pos = pos_in;
  std::vector<float> x = randn(static_cast<size_t>(H * D), pos_in + 7u * dsel), y = x;
  m3::rope(y.data(), H, D, pos, 10000.0f);
  for (int64_t i = 0; i < H * D; i += 2) {
    const double n0 = std::hypot(x[i], x[i + 1]), n1 = std::hypot(y[i], y[i + 1]);
    RC_ASSERT(std::fabs(n0 - n1) <= 1e-6 * std::max(1.0, n0));
  }
}

TEST(Softmax, MatchesReferenceAndSumsToOne) {
  for (int64_t n : {1, 3, 8, 9, 100, 4096, 4133}) {
    for (float scale : {0.1f, 1.0f, 30.0f}) {
      std::vector<float> a = randn(static_cast<size_t>(n), 60, scale), b = a;
      m3::softmax(a.data(), n);
      m3::ref::softmax(b.data(), n);
      EXPECT_LE(nmse(a, b), 1e-10) << "n=" << n << " scale=" << scale;
      double sum = 0.0;
      for (float v : a) {
        ASSERT_GE(v, 0.0f);
        sum += v;
      }
      EXPECT_NEAR(sum, 1.0, 1e-5) << "n=" << n << " scale=" << scale;
    }
  }
}

TEST(Softmax, LargeAndMaskedInputs) {
  // Large logits do not overflow (max subtraction); -inf (masked) entries give exactly 0.
  std::vector<float> x = {1000.0f, 999.0f, -INFINITY, 1000.0f, -INFINITY, -INFINITY, 0.0f, 998.0f, 1000.0f, -INFINITY};
  m3::softmax(x.data(), static_cast<int64_t>(x.size()));
  const double e1 = std::exp(-1.0), e2 = std::exp(-2.0), z = 3 + e1 + e2;
  EXPECT_NEAR(x[0], 1 / z, 1e-6);
  EXPECT_NEAR(x[1], e1 / z, 1e-6);
  EXPECT_NEAR(x[7], e2 / z, 1e-6);
  EXPECT_EQ(x[2], 0.0f);
  EXPECT_EQ(x[4], 0.0f);
  EXPECT_EQ(x[9], 0.0f);
  EXPECT_EQ(x[6], 0.0f);  // exp(-1000) underflows to 0
}

// exp accuracy, through softmax of two values: softmax([0, t])[1] = 1 / (1 + e^-t).
TEST(Softmax, ExpAccuracyOverRange) {
  std::vector<float> a(16), b(16);
  for (float t = -87.0f; t <= 0.0f; t += 0.37f) {
    for (int i = 0; i < 16; ++i) a[i] = (i % 2) ? t : 0.0f;
    b = a;
    m3::softmax(a.data(), 16);
    m3::ref::softmax(b.data(), 16);
    for (int i = 0; i < 16; ++i) ASSERT_NEAR(a[i], b[i], 4e-7f * b[i] + 1e-38f) << "t=" << t;
  }
}

TEST(Swiglu, MatchesReference) {
  for (int64_t n : {1, 7, 8, 100, 4096, 4133}) {
    for (float scale : {1.0f, 10.0f, 100.0f}) {
      const std::vector<float> g = randn(static_cast<size_t>(n), 70, scale), u = randn(static_cast<size_t>(n), 71);
      std::vector<float> a(static_cast<size_t>(n)), b(static_cast<size_t>(n));
      m3::swiglu(a.data(), g.data(), u.data(), n);
      m3::ref::swiglu(b.data(), g.data(), u.data(), n);
      EXPECT_LE(nmse(a, b), 1e-10) << "n=" << n << " scale=" << scale;
      for (int64_t i = 0; i < n; ++i) ASSERT_TRUE(std::isfinite(a[i])) << i;
    }
  }
}

TEST(Swiglu, KnownValues) {
  const float g[8] = {0.0f, 1.0f, -1.0f, 20.0f, -20.0f, 2.0f, -100.0f, 100.0f};
  const float u[8] = {5.0f, 1.0f, 1.0f, 1.0f, 1.0f, 3.0f, 1.0f, 1.0f};
  float out[8];
  m3::swiglu(out, g, u, 8);
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_NEAR(out[1], 1.0 / (1.0 + std::exp(-1.0)), 1e-7);
  EXPECT_NEAR(out[2], -1.0 / (1.0 + std::exp(1.0)), 1e-7);
  EXPECT_NEAR(out[3], 20.0, 1e-5);
  EXPECT_NEAR(out[4], -20.0 * std::exp(-20.0), 1e-12);
  EXPECT_NEAR(out[5], 3 * 2.0 / (1.0 + std::exp(-2.0)), 1e-6);
  EXPECT_NEAR(out[6], 0.0, 1e-30);
  EXPECT_NEAR(out[7], 100.0, 1e-4);
}

TEST(Embedding, MatchesReferenceForEveryType) {
  for (DType t : kAllTypes) {
    Weight table = make_weight(t, 11, 96, 80);
    std::vector<float> a(96), b(96);
    for (int32_t tok : {0, 5, 10}) {
      m3::embedding(table.view, tok, a.data());
      m3::ref::embedding(table.view, tok, b.data());
      EXPECT_EQ(a, b) << m3::dtype_name(t) << " token " << tok;
    }
    // Row 5 equals dequantizing row 5 by hand.
    std::vector<float> c(96);
    m3::dequantize_row(t, table.view.row(5), c.data(), 96);
    m3::embedding(table.view, 5, a.data());
    EXPECT_EQ(a, c);
    EXPECT_THROW(m3::embedding(table.view, 11, a.data()), m3::Error);
    EXPECT_THROW(m3::embedding(table.view, -1, a.data()), m3::Error);
    EXPECT_THROW(m3::ref::embedding(table.view, 11, a.data()), m3::Error);
  }
}

}  // namespace
