// Element types: names, sizes, scalar fp16/bf16 conversions and row (de)quantization.
//
// The scalar conversions are written out in integer arithmetic so they are bit exact on any CPU
// (round to nearest even, subnormals, inf and NaN included) and can be checked against F16C.
// quantize_row reproduces ggml's reference quantizers (quantize_row_q8_0_ref / _q4_0_ref) rounding
// for rounding, so a tensor quantized here is byte-identical to one quantized by llama.cpp.
// dequantize_row is on the hot path of embedding lookups and of the tiled sgemm, so its float
// paths use F16C/AVX2; the results are the same exact values the scalar formulas give.
#include "m3/dtype.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "m3/error.h"

namespace m3 {

namespace {

uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

void check_multiple(DType t, int64_t n) {
  const int64_t b = dtype_block_elems(t);
  if (n < 0 || n % b != 0) {
    throw Error(std::string("row of ") + std::to_string(n) + " elements is not a multiple of the " +
                dtype_name(t) + " block size " + std::to_string(b));
  }
}

}  // namespace

bool dtype_is_supported(uint32_t ggml_type) {
  switch (ggml_type) {
    case static_cast<uint32_t>(DType::F32):
    case static_cast<uint32_t>(DType::F16):
    case static_cast<uint32_t>(DType::BF16):
    case static_cast<uint32_t>(DType::Q8_0):
    case static_cast<uint32_t>(DType::Q4_0):
      return true;
    default:
      return false;
  }
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::F16: return "f16";
    case DType::BF16: return "bf16";
    case DType::Q8_0: return "q8_0";
    case DType::Q4_0: return "q4_0";
  }
  return "unknown";
}

std::optional<DType> dtype_from_name(const std::string& name) {
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0}) {
    if (name == dtype_name(t)) return t;
  }
  return std::nullopt;
}

int64_t dtype_block_elems(DType t) {
  return (t == DType::Q8_0 || t == DType::Q4_0) ? kQuantBlock : 1;
}

size_t dtype_block_bytes(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::Q8_0: return sizeof(BlockQ8_0);
    case DType::Q4_0: return sizeof(BlockQ4_0);
  }
  throw Error("unknown dtype id " + std::to_string(static_cast<uint32_t>(t)));
}

size_t dtype_row_bytes(DType t, int64_t n) {
  check_multiple(t, n);
  return static_cast<size_t>(n / dtype_block_elems(t)) * dtype_block_bytes(t);
}

// --- fp16 -----------------------------------------------------------------------------------------
// half: 1 sign, 5 exponent (bias 15), 10 mantissa. float: 1, 8 (bias 127), 23.

float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1F;
  uint32_t mant = h & 0x3FF;
  if (exp == 0x1F) {
    // inf stays inf; NaN keeps its payload and is made quiet (what vcvtph2ps does).
    return bits_f32(sign | 0x7F800000u | (mant << 13) | (mant ? 0x400000u : 0u));
  }
  if (exp == 0) {
    if (mant == 0) return bits_f32(sign);  // ±0
    // Subnormal half = mant * 2^-24: normalise it, every half subnormal is a normal float.
    int e = -1;
    do {
      mant <<= 1;
      ++e;
    } while ((mant & 0x400) == 0);
    mant &= 0x3FF;
    return bits_f32(sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (mant << 13));
  }
  return bits_f32(sign | (exp + 127 - 15) << 23 | (mant << 13));
}

uint16_t fp32_to_fp16(float f) {
  const uint32_t u = f32_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000);
  const uint32_t exp = (u >> 23) & 0xFF;
  const uint32_t mant = u & 0x7FFFFF;
  if (exp == 0xFF) {
    if (mant == 0) return sign | 0x7C00;  // inf
    // NaN: keep the top payload bits, force quiet so it cannot collapse into inf.
    return static_cast<uint16_t>(sign | 0x7E00 | (mant >> 13));
  }
  const int e = static_cast<int>(exp) - 127 + 15;  // biased half exponent
  if (e >= 0x1F) return sign | 0x7C00;            // too large even before rounding: inf
  if (e <= 0) {
    // Half subnormal (or zero): value = m * 2^-24 with m = full_mant >> shift, rounded to even.
    if (e < -10) return sign;  // below half the smallest subnormal: rounds to ±0
    const uint32_t full = mant | 0x800000;  // implicit bit
    const int shift = 14 - e;               // 14..24
    uint32_t m = full >> shift;
    const uint32_t rem = full & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (m & 1))) ++m;  // may carry into the smallest normal: fine
    return static_cast<uint16_t>(sign | m);
  }
  // Normal: drop 13 mantissa bits with round to nearest even; a carry propagates into the
  // exponent, and from the largest finite value into inf, which is the correct result.
  uint32_t h = static_cast<uint32_t>(e) << 10 | (mant >> 13);
  const uint32_t rem = mant & 0x1FFF;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;
  return static_cast<uint16_t>(sign | h);
}

// --- bf16 -----------------------------------------------------------------------------------------

float bf16_to_fp32(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }

uint16_t fp32_to_bf16(float f) {
  const uint32_t u = f32_bits(f);
  // NaN: truncating could clear every payload bit left and turn it into inf; set the quiet bit.
  if ((u & 0x7FFFFFFF) > 0x7F800000) return static_cast<uint16_t>((u >> 16) | 0x40);
  // Round to nearest even on the 16 dropped bits (overflow to inf is the correct rounding).
  return static_cast<uint16_t>((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

// --- rows -----------------------------------------------------------------------------------------

namespace {

// ggml's quantize_row_q8_0_ref, 32 values at a time: d = amax / 127, q = roundf(x * (1 / d)).
// Every step is the scalar one lane by lane (max is exact in any order; roundf's half away from
// zero is t = trunc(v), then ±1 where |v − t| >= 0.5, v − t being exact), and d goes to fp16 with
// the hardware's round to nearest even, so the bytes are identical to the scalar formula. Decode
// quantizes every matmul's activation row with it: ~10x faster than the scalar loop.
void quantize_q8_0(const float* x, BlockQ8_0* y, int64_t nb) {
  const __m256 sign = _mm256_set1_ps(-0.0f), half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t b = 0; b < nb; ++b, x += kQuantBlock) {
    __m256 v[4];
    for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(x + 8 * i);
    __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                             _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = static_cast<uint16_t>(_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    __m256i q[4];
    for (int i = 0; i < 4; ++i) {
      const __m256 s = _mm256_mul_ps(v[i], _mm256_set1_ps(id));
      const __m256 t = _mm256_round_ps(s, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
      const __m256 away = _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_sub_ps(s, t)), half, _CMP_GE_OQ);
      const __m256 step = _mm256_and_ps(away, _mm256_or_ps(one, _mm256_and_ps(sign, s)));  // ±1 or 0
      q[i] = _mm256_cvttps_epi32(_mm256_add_ps(t, step));
    }
    const __m256i q16 = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[b].qs), _mm256_permutevar8x32_epi32(q16, order));
  }
}

void quantize_q4_0(const float* x, BlockQ4_0* y, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, x += kQuantBlock) {
    // The signed value of largest magnitude (first one wins a tie) maps to -8, so the full
    // 16-level range [-8, 7] is used on the side that needs it.
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < kQuantBlock; ++j) {
      if (std::fabs(x[j]) > amax) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = fp32_to_fp16(d);
    for (int j = 0; j < kQuantBlock / 2; ++j) {
      // x*id lies in [-8, 8]; +8.5 then truncation is round-half-up into [0, 16], and the 16
      // that values near -max (the far side) reach is clamped to 15.
      const int q0 = std::min(15, static_cast<int>(static_cast<int8_t>(x[j] * id + 8.5f)));
      const int q1 = std::min(15, static_cast<int>(static_cast<int8_t>(x[j + 16] * id + 8.5f)));
      y[b].qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

void dequantize_f16(const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))));
  }
  for (; i < n; ++i) y[i] = fp16_to_fp32(x[i]);
}

void dequantize_bf16(const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), _mm256_slli_epi32(w, 16));
  }
  for (; i < n; ++i) y[i] = bf16_to_fp32(x[i]);
}

void dequantize_q8_0(const BlockQ8_0* x, float* y, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, y += kQuantBlock) {
    const __m256 d = _mm256_set1_ps(fp16_to_fp32(x[b].d));
    for (int j = 0; j < kQuantBlock; j += 8) {
      const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(x[b].qs + j));
      _mm256_storeu_ps(y + j, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q))));
    }
  }
}

void dequantize_q4_0(const BlockQ4_0* x, float* y, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, y += kQuantBlock) {
    const float d = fp16_to_fp32(x[b].d);
    for (int j = 0; j < kQuantBlock / 2; ++j) {
      y[j] = static_cast<float>((x[b].qs[j] & 0x0F) - 8) * d;
      y[j + 16] = static_cast<float>((x[b].qs[j] >> 4) - 8) * d;
    }
  }
}

}  // namespace

void quantize_row(DType t, const float* x, void* y, int64_t n) {
  check_multiple(t, n);
  switch (t) {
    case DType::F32:
      std::memcpy(y, x, static_cast<size_t>(n) * sizeof(float));
      return;
    case DType::F16: {
      auto* h = static_cast<uint16_t*>(y);
      for (int64_t i = 0; i < n; ++i) h[i] = fp32_to_fp16(x[i]);
      return;
    }
    case DType::BF16: {
      auto* h = static_cast<uint16_t*>(y);
      for (int64_t i = 0; i < n; ++i) h[i] = fp32_to_bf16(x[i]);
      return;
    }
    case DType::Q8_0:
      quantize_q8_0(x, static_cast<BlockQ8_0*>(y), n / kQuantBlock);
      return;
    case DType::Q4_0:
      quantize_q4_0(x, static_cast<BlockQ4_0*>(y), n / kQuantBlock);
      return;
  }
}

void dequantize_row(DType t, const void* x, float* y, int64_t n) {
  check_multiple(t, n);
  switch (t) {
    case DType::F32:
      std::memcpy(y, x, static_cast<size_t>(n) * sizeof(float));
      return;
    case DType::F16:
      dequantize_f16(static_cast<const uint16_t*>(x), y, n);
      return;
    case DType::BF16:
      dequantize_bf16(static_cast<const uint16_t*>(x), y, n);
      return;
    case DType::Q8_0:
      dequantize_q8_0(static_cast<const BlockQ8_0*>(x), y, n / kQuantBlock);
      return;
    case DType::Q4_0:
      dequantize_q4_0(static_cast<const BlockQ4_0*>(x), y, n / kQuantBlock);
      return;
  }
}

}  // namespace m3
