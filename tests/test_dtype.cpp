// Tests for m3/dtype.h: fp16/bf16 conversions (bit patterns, rounding, specials, exhaustive checks
// against the F16C hardware), ggml-compatible Q8_0/Q4_0 block bytes, round-trip error bounds.
#include <gtest/gtest.h>
#include <immintrin.h>
#include <rapidcheck/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "m3/dtype.h"
#include "m3/error.h"

namespace {

using m3::BlockQ4_0;
using m3::BlockQ8_0;
using m3::DType;

float f(uint32_t bits) { return std::bit_cast<float>(bits); }
uint32_t bits(float x) { return std::bit_cast<uint32_t>(x); }

// --- names and sizes ------------------------------------------------------------------------------

TEST(DType, NamesRoundTrip) {
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0}) {
    auto back = m3::dtype_from_name(m3::dtype_name(t));
    ASSERT_TRUE(back.has_value()) << m3::dtype_name(t);
    EXPECT_EQ(*back, t);
    EXPECT_TRUE(m3::dtype_is_supported(static_cast<uint32_t>(t)));
  }
  EXPECT_FALSE(m3::dtype_from_name("q4_1").has_value());
  EXPECT_FALSE(m3::dtype_is_supported(3));   // ggml Q4_1
  EXPECT_FALSE(m3::dtype_is_supported(12));  // ggml Q4_K
  EXPECT_STREQ(m3::dtype_name(DType::Q4_0), "q4_0");
}

TEST(DType, SizesMatchGgml) {
  EXPECT_EQ(m3::dtype_block_elems(DType::F32), 1);
  EXPECT_EQ(m3::dtype_block_elems(DType::Q8_0), 32);
  EXPECT_EQ(m3::dtype_block_bytes(DType::Q8_0), 34u);
  EXPECT_EQ(m3::dtype_block_bytes(DType::Q4_0), 18u);
  EXPECT_EQ(m3::dtype_row_bytes(DType::F32, 10), 40u);
  EXPECT_EQ(m3::dtype_row_bytes(DType::F16, 7), 14u);
  EXPECT_EQ(m3::dtype_row_bytes(DType::BF16, 3), 6u);
  EXPECT_EQ(m3::dtype_row_bytes(DType::Q8_0, 4096), 4096u / 32 * 34);
  EXPECT_EQ(m3::dtype_row_bytes(DType::Q4_0, 64), 36u);
  EXPECT_EQ(m3::dtype_row_bytes(DType::Q4_0, 0), 0u);
}

TEST(DType, RowBytesRejectsPartialBlocks) {
  EXPECT_THROW(m3::dtype_row_bytes(DType::Q8_0, 33), m3::Error);
  EXPECT_THROW(m3::dtype_row_bytes(DType::Q4_0, 16), m3::Error);
  EXPECT_THROW(m3::dtype_row_bytes(DType::F32, -1), m3::Error);
  try {
    m3::dtype_row_bytes(DType::Q4_0, 100);
    FAIL() << "no throw";
  } catch (const m3::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("q4_0"), std::string::npos) << msg;
    EXPECT_NE(msg.find("100"), std::string::npos) << msg;
  }
  std::vector<float> x(40);
  std::vector<uint8_t> y(64);
  EXPECT_THROW(m3::quantize_row(DType::Q8_0, x.data(), y.data(), 40), m3::Error);
  EXPECT_THROW(m3::dequantize_row(DType::Q4_0, y.data(), x.data(), 40), m3::Error);
}

// --- fp16 -----------------------------------------------------------------------------------------

TEST(Fp16, KnownBitPatterns) {
  EXPECT_EQ(m3::fp32_to_fp16(1.0f), 0x3C00);
  EXPECT_EQ(m3::fp32_to_fp16(-2.0f), 0xC000);
  EXPECT_EQ(m3::fp32_to_fp16(0.5f), 0x3800);
  EXPECT_EQ(m3::fp32_to_fp16(0.1f), 0x2E66);
  EXPECT_EQ(m3::fp32_to_fp16(0.0f), 0x0000);
  EXPECT_EQ(m3::fp32_to_fp16(-0.0f), 0x8000);
  EXPECT_EQ(m3::fp32_to_fp16(65504.0f), 0x7BFF);  // largest finite half
  EXPECT_EQ(m3::fp32_to_fp16(65519.0f), 0x7BFF);  // just below the tie: stays finite
  EXPECT_EQ(m3::fp32_to_fp16(65520.0f), 0x7C00);  // tie, 0x7BFF is odd: rounds up to inf
  EXPECT_EQ(m3::fp32_to_fp16(1e6f), 0x7C00);
  EXPECT_EQ(m3::fp32_to_fp16(std::numeric_limits<float>::infinity()), 0x7C00);
  EXPECT_EQ(m3::fp32_to_fp16(-std::numeric_limits<float>::infinity()), 0xFC00);
  EXPECT_EQ(m3::fp32_to_fp16(std::ldexp(1.0f, -14)), 0x0400);         // smallest normal
  EXPECT_EQ(m3::fp32_to_fp16(std::ldexp(1.0f, -24)), 0x0001);         // smallest subnormal
  EXPECT_EQ(m3::fp32_to_fp16(std::ldexp(1023.0f, -24)), 0x03FF);      // largest subnormal
  EXPECT_EQ(m3::fp32_to_fp16(std::ldexp(1.0f, -25)), 0x0000);         // tie with 0: even is 0
  EXPECT_EQ(m3::fp32_to_fp16(std::ldexp(3.0f, -25)), 0x0002);         // tie 1|2: even is 2
  EXPECT_EQ(m3::fp32_to_fp16(std::ldexp(1.5f, -25)), 0x0001);         // above the tie
  EXPECT_EQ(m3::fp32_to_fp16(std::ldexp(1.0f, -30)), 0x0000);         // underflow
  EXPECT_EQ(m3::fp32_to_fp16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);  // tie, 0x3C00 even
  EXPECT_EQ(m3::fp32_to_fp16(1.0f + std::ldexp(3.0f, -11)), 0x3C02);  // tie, 0x3C01 odd
  EXPECT_EQ(m3::fp32_to_fp16(1.0f + std::ldexp(1.0f, -12) * 3), 0x3C01);  // above half: up
  // Largest subnormal + half a step rounds to even, which is the smallest normal.
  EXPECT_EQ(m3::fp32_to_fp16(std::ldexp(1023.5f, -24)), 0x0400);

  EXPECT_EQ(m3::fp16_to_fp32(0x3C00), 1.0f);
  EXPECT_EQ(m3::fp16_to_fp32(0x7BFF), 65504.0f);
  EXPECT_EQ(m3::fp16_to_fp32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(m3::fp16_to_fp32(0x03FF), std::ldexp(1023.0f, -24));
  EXPECT_EQ(bits(m3::fp16_to_fp32(0x8000)), 0x80000000u);
  EXPECT_TRUE(std::isinf(m3::fp16_to_fp32(0xFC00)));
  EXPECT_LT(m3::fp16_to_fp32(0xFC00), 0.0f);
  EXPECT_TRUE(std::isnan(m3::fp16_to_fp32(0x7E00)));
  EXPECT_TRUE(std::isnan(m3::fp16_to_fp32(0x7C01)));  // signalling NaN must not become inf
}

TEST(Fp16, NanStaysNan) {
  for (uint32_t u : {0x7FC00000u, 0x7F800001u, 0xFF800001u, 0x7FFFFFFFu, 0x7F802000u}) {
    const uint16_t h = m3::fp32_to_fp16(f(u));
    EXPECT_EQ(h & 0x7C00, 0x7C00) << std::hex << u;
    EXPECT_NE(h & 0x03FF, 0) << std::hex << u;
    EXPECT_EQ(h >> 15, u >> 31) << std::hex << u;
  }
}

// Every one of the 65536 halves converts exactly as the F16C instruction does, and every
// non-NaN half survives half -> float -> half unchanged.
TEST(Fp16, ExhaustiveAgainstF16C) {
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    const float mine = m3::fp16_to_fp32(static_cast<uint16_t>(h));
    const float hw = _cvtsh_ss(static_cast<unsigned short>(h));
    ASSERT_EQ(bits(mine), bits(hw)) << "half 0x" << std::hex << h;
    const uint16_t back = m3::fp32_to_fp16(mine);
    if (!std::isnan(mine)) {
      ASSERT_EQ(back, h) << "half 0x" << std::hex << h;
    }
  }
}

TEST(Fp16, RandomFloatsAgainstF16C) {
  std::mt19937 rng(1);
  for (int i = 0; i < 2000000; ++i) {
    uint32_t u = rng();
    // Half of the samples concentrated on the half-precision range, where rounding happens.
    if (i & 1) u = (u & 0x80FFFFFFu) | ((0x66u + (u >> 24) % 0x1Bu) << 23);
    const float x = f(u);
    ASSERT_EQ(m3::fp32_to_fp16(x), _cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT)) << "float 0x" << std::hex << u;
  }
}

RC_GTEST_PROP(Fp16Prop, MatchesHardware, (uint32_t u)) {
  const float x = f(u);
  RC_ASSERT(m3::fp32_to_fp16(x) == _cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT));
}

RC_GTEST_PROP(Fp16Prop, NearestRepresentable, (int32_t a)) {
  // x in the normal half range: the result is within half an ulp (2^-11 relative).
  const float x = static_cast<float>(a % 60000) + 0.37f * static_cast<float>(a % 7);
  if (std::fabs(x) < std::ldexp(1.0f, -14)) return;
  const float y = m3::fp16_to_fp32(m3::fp32_to_fp16(x));
  RC_ASSERT(std::fabs(y - x) <= std::ldexp(std::fabs(x), -11));
}

// --- bf16 -----------------------------------------------------------------------------------------

TEST(Bf16, KnownBitPatterns) {
  EXPECT_EQ(m3::fp32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(m3::fp32_to_bf16(-2.0f), 0xC000);
  EXPECT_EQ(m3::fp32_to_bf16(0.0f), 0x0000);
  EXPECT_EQ(m3::fp32_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(m3::fp32_to_bf16(f(0x3F808000)), 0x3F80);  // tie, 0x3F80 even: down
  EXPECT_EQ(m3::fp32_to_bf16(f(0x3F818000)), 0x3F82);  // tie, 0x3F81 odd: up
  EXPECT_EQ(m3::fp32_to_bf16(f(0x3F808001)), 0x3F81);  // above the tie
  EXPECT_EQ(m3::fp32_to_bf16(f(0x3F807FFF)), 0x3F80);  // below the tie
  EXPECT_EQ(m3::fp32_to_bf16(std::numeric_limits<float>::max()), 0x7F80);  // rounds to inf
  EXPECT_EQ(m3::fp32_to_bf16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(m3::fp32_to_bf16(-std::numeric_limits<float>::infinity()), 0xFF80);
  EXPECT_EQ(m3::fp32_to_bf16(f(0x00010000)), 0x0001);  // subnormals are just bits
  EXPECT_EQ(m3::bf16_to_fp32(0x3F80), 1.0f);
  EXPECT_EQ(bits(m3::bf16_to_fp32(0xC049)), 0xC0490000u);
}

TEST(Bf16, NanStaysNan) {
  // 0x7F800001: payload only in the dropped bits; rounding by addition would have made it inf
  // or carried it; truncation would have made it inf.
  for (uint32_t u : {0x7FC00000u, 0x7F800001u, 0xFF800001u, 0x7FFFFFFFu, 0xFFFFFFFFu}) {
    const float back = m3::bf16_to_fp32(m3::fp32_to_bf16(f(u)));
    EXPECT_TRUE(std::isnan(back)) << std::hex << u;
    EXPECT_EQ(bits(back) >> 31, u >> 31) << std::hex << u;
  }
}

RC_GTEST_PROP(Bf16Prop, RoundsToNearest, (uint32_t u)) {
  const float x = f(u);
  const uint16_t h = m3::fp32_to_bf16(x);
  if (std::isnan(x)) {
    RC_ASSERT(std::isnan(m3::bf16_to_fp32(h)));
    return;
  }
  // The two bf16 neighbours of x are the truncation t and t+1 (same sign); the chosen one must be
  // at least as close, and on a tie, even.
  const uint16_t t = static_cast<uint16_t>(u >> 16);
  const double dx = x, d0 = m3::bf16_to_fp32(t), d1 = m3::bf16_to_fp32(static_cast<uint16_t>(t + 1));
  // Past the largest finite bf16 the next step up is 2^128 (which then is inf), as in IEEE.
  const double up = std::isinf(d1) ? std::copysign(std::ldexp(1.0, 128), dx) : d1;
  const double e0 = std::fabs(d0 - dx), e1 = std::fabs(up - dx);
  if ((t & 0x7F80) == 0x7F80) {
    RC_ASSERT(h == t);  // x is ±inf
  } else if ((u & 0xFFFF) == 0x8000) {
    RC_ASSERT(h == ((t & 1) ? t + 1 : t));
  } else {
    RC_ASSERT(h == (e0 < e1 ? t : static_cast<uint16_t>(t + 1)));
  }
}

// --- float rows ------------------------------------------------------------------------------------

TEST(Rows, HalfRowsMatchScalar) {
  std::mt19937 rng(2);
  std::normal_distribution<float> nd(0.0f, 100.0f);
  const int64_t n = 37;  // not a multiple of 8: exercises the vector body and the scalar tail
  std::vector<float> x(n), y(n);
  for (auto& v : x) v = nd(rng);
  x[3] = std::ldexp(1.0f, -20);  // subnormal in half
  x[5] = 1e6f;                   // inf in half, finite in bf16
  std::vector<uint16_t> h(n);
  m3::quantize_row(DType::F16, x.data(), h.data(), n);
  m3::dequantize_row(DType::F16, h.data(), y.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_EQ(h[i], m3::fp32_to_fp16(x[i])) << i;
    EXPECT_EQ(bits(y[i]), bits(m3::fp16_to_fp32(h[i]))) << i;
  }
  m3::quantize_row(DType::BF16, x.data(), h.data(), n);
  m3::dequantize_row(DType::BF16, h.data(), y.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_EQ(h[i], m3::fp32_to_bf16(x[i])) << i;
    EXPECT_EQ(bits(y[i]), bits(m3::bf16_to_fp32(h[i]))) << i;
  }
  m3::quantize_row(DType::F32, x.data(), y.data(), n);
  EXPECT_EQ(std::memcmp(x.data(), y.data(), n * sizeof(float)), 0);
}

// --- Q8_0 -----------------------------------------------------------------------------------------

TEST(Q8_0, HandComputedBlock) {
  // amax = 127 makes d = 1 and id = 1, so q = roundf(x): halves round away from zero.
  float x[32] = {127.0f, -127.0f, 0.5f, -0.5f, 1.5f, 2.5f, -2.5f, 0.49f, 3.7f, -100.2f};
  for (int j = 10; j < 32; ++j) x[j] = static_cast<float>(j) - 20.0f;  // -10 .. 11
  const int8_t expect_q[32] = {127, -127, 1, -1, 2, 3, -3, 0, 4, -100, -10, -9, -8, -7, -6, -5,
                               -4,  -3,   -2, -1, 0, 1, 2, 3, 4, 5,   6,   7,  8,  9,  10, 11};
  BlockQ8_0 b;
  m3::quantize_row(DType::Q8_0, x, &b, 32);
  uint8_t bytes[34];
  std::memcpy(bytes, &b, 34);
  EXPECT_EQ(bytes[0], 0x00);  // fp16(1.0) = 0x3C00, little endian
  EXPECT_EQ(bytes[1], 0x3C);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(static_cast<int8_t>(bytes[2 + j]), expect_q[j]) << j;

  float y[32];
  m3::dequantize_row(DType::Q8_0, &b, y, 32);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], static_cast<float>(expect_q[j])) << j;
}

TEST(Q8_0, ScaledBlockAndZeroBlock) {
  // Second case: amax = 2, d = 2/127 (stored as fp16), q = roundf(x * 63.5).
  float x[64] = {};
  x[0] = 2.0f;
  x[1] = -1.01f;  // -64.135 -> -64
  x[2] = 0.25f;   // 15.875 -> 16
  x[3] = -2.0f;
  BlockQ8_0 b[2];
  m3::quantize_row(DType::Q8_0, x, b, 64);
  EXPECT_EQ(b[0].d, m3::fp32_to_fp16(2.0f / 127.0f));
  EXPECT_EQ(b[0].qs[0], 127);
  EXPECT_EQ(b[0].qs[1], -64);
  EXPECT_EQ(b[0].qs[2], 16);
  EXPECT_EQ(b[0].qs[3], -127);
  for (int j = 4; j < 32; ++j) EXPECT_EQ(b[0].qs[j], 0);
  // An all-zero block has d = 0 and no NaNs from 0/0.
  EXPECT_EQ(b[1].d, 0);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(b[1].qs[j], 0);
  float y[64];
  m3::dequantize_row(DType::Q8_0, b, y, 64);
  for (int j = 32; j < 64; ++j) EXPECT_EQ(y[j], 0.0f);
}

// Error bound, derived: q = round(x/d) with d = amax/127, stored as d' = fp16(d). Then
// |x - q d'| <= |x - q d| + |q| |d - d'| <= d/2 + 127 |d - d'| (+ float rounding of x*id, ~1 ulp
// of 127, i.e. 127*2^-23 * d).
TEST(Q8_0, RoundTripErrorBound) {
  std::mt19937 rng(3);
  for (float scale : {1e-3f, 0.1f, 1.0f, 37.0f, 1e4f}) {
    std::normal_distribution<float> nd(0.0f, scale);
    const int64_t n = 32 * 64;
    std::vector<float> x(n), y(n);
    for (auto& v : x) v = nd(rng);
    std::vector<BlockQ8_0> q(n / 32);
    m3::quantize_row(DType::Q8_0, x.data(), q.data(), n);
    m3::dequantize_row(DType::Q8_0, q.data(), y.data(), n);
    for (int64_t b = 0; b < n / 32; ++b) {
      float amax = 0.0f;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
      const float d = amax / 127.0f, d16 = m3::fp16_to_fp32(q[b].d);
      const float bound = d / 2 + 127 * std::fabs(d - d16) + 127 * d * 1.2e-7f;
      for (int j = 0; j < 32; ++j) {
        ASSERT_LE(std::fabs(x[b * 32 + j] - y[b * 32 + j]), bound) << "scale " << scale << " block " << b;
      }
    }
  }
}

// --- Q4_0 -----------------------------------------------------------------------------------------

TEST(Q4_0, HandComputedBlockNegativeMax) {
  // max by magnitude is -8 -> d = -8 / -8 = 1, id = 1, q = min(15, trunc(x + 8.5)).
  float x[32] = {};
  x[0] = -8.0f;   // q 0
  x[16] = 7.0f;   // q 15
  x[1] = 7.6f;    // 16.1 -> 16 -> clamped 15
  x[17] = 0.0f;   // q 8
  x[2] = 0.5f;    // 9.0 -> 9 (half rounds up)
  x[18] = -0.5f;  // 8.0 -> 8 (half rounds up)
  x[3] = -1.5f;   // 7.0 -> 7
  x[19] = 1.49f;  // 9.99 -> 9
  BlockQ4_0 b;
  m3::quantize_row(DType::Q4_0, x, &b, 32);
  uint8_t bytes[18];
  std::memcpy(bytes, &b, 18);
  const uint8_t expect[18] = {0x00, 0x3C,  // fp16(1.0)
                              0xF0, 0x8F, 0x89, 0x97, 0x88, 0x88, 0x88, 0x88,
                              0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88};
  for (int j = 0; j < 18; ++j) EXPECT_EQ(bytes[j], expect[j]) << "byte " << j;

  float y[32];
  m3::dequantize_row(DType::Q4_0, &b, y, 32);
  EXPECT_EQ(y[0], -8.0f);
  EXPECT_EQ(y[16], 7.0f);
  EXPECT_EQ(y[1], 7.0f);
  EXPECT_EQ(y[2], 1.0f);
  EXPECT_EQ(y[18], 0.0f);
  EXPECT_EQ(y[3], -1.0f);
  EXPECT_EQ(y[19], 1.0f);
  EXPECT_EQ(y[31], 0.0f);
}

TEST(Q4_0, HandComputedBlockPositiveMax) {
  // max = +4 -> d = 4 / -8 = -0.5, id = -2, q = min(15, trunc(-2x + 8.5)).
  float x[32] = {};
  x[5] = 4.0f;    // 0.5 -> 0
  x[6] = -4.0f;   // 16.5 -> 16 -> clamped 15
  x[21] = 1.0f;   // 6.5 -> 6
  x[22] = -3.0f;  // 14.5 -> 14
  x[7] = -4.0f;   // ties on |x| with x[5]: the first (x[5], positive) defines max
  BlockQ4_0 b;
  m3::quantize_row(DType::Q4_0, x, &b, 32);
  EXPECT_EQ(b.d, 0xB800);  // fp16(-0.5)
  for (int j = 0; j < 16; ++j) {
    uint8_t lo = 8, hi = 8;
    if (j == 5) lo = 0, hi = 6;
    if (j == 6) lo = 15, hi = 14;
    if (j == 7) lo = 15;
    EXPECT_EQ(b.qs[j], static_cast<uint8_t>(lo | hi << 4)) << j;
  }
}

TEST(Q4_0, ZeroBlock) {
  float x[32] = {};
  BlockQ4_0 b;
  m3::quantize_row(DType::Q4_0, x, &b, 32);
  EXPECT_EQ(b.d, 0x8000);  // d = 0 / -8 = -0.0, exactly what ggml writes
  for (int j = 0; j < 16; ++j) EXPECT_EQ(b.qs[j], 0x88);
}

// Error bound, derived: x/d lies in [-8, 8] (the max maps to -8). For x/d < 7.5, q-8 is x/d rounded
// (half up), error <= |d|/2; in [7.5, 8] the clamp to 7 gives error <= |d|. Storing d as fp16 adds
// |q-8| |d - d'| <= 8 |d - d'|.
TEST(Q4_0, RoundTripErrorBound) {
  std::mt19937 rng(4);
  for (float scale : {1e-3f, 1.0f, 37.0f, 1e3f}) {
    std::normal_distribution<float> nd(0.0f, scale);
    const int64_t n = 32 * 64;
    std::vector<float> x(n), y(n);
    for (auto& v : x) v = nd(rng);
    std::vector<BlockQ4_0> q(n / 32);
    m3::quantize_row(DType::Q4_0, x.data(), q.data(), n);
    m3::dequantize_row(DType::Q4_0, q.data(), y.data(), n);
    for (int64_t b = 0; b < n / 32; ++b) {
      float amax = 0.0f, max = 0.0f;
      for (int j = 0; j < 32; ++j) {
        if (std::fabs(x[b * 32 + j]) > amax) amax = std::fabs(x[b * 32 + j]), max = x[b * 32 + j];
      }
      const float d = max / -8.0f, d16 = m3::fp16_to_fp32(q[b].d);
      const float slack = 8 * std::fabs(d - d16) + amax * 1e-6f;
      for (int j = 0; j < 32; ++j) {
        const float xi = x[b * 32 + j], err = std::fabs(xi - y[b * 32 + j]);
        const float bound = (xi / d < 7.5f ? std::fabs(d) / 2 : std::fabs(d)) + slack;
        ASSERT_LE(err, bound) << "scale " << scale << " block " << b << " elem " << j;
      }
      // The extreme element itself comes back up to the fp16 rounding of d.
      ASSERT_NEAR(m3::fp16_to_fp32(q[b].d) * -8.0f, max, 8 * std::fabs(d - d16) + 1e-30f);
    }
  }
}

}  // namespace
