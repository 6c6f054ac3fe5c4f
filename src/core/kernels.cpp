// Fast kernels: AVX2 + FMA + F16C, row-split threading, OpenBLAS for M > 1.
//
// Same contracts as m3::ref (kernels_ref.cpp), checked against it by tests/test_kernels.cpp.
//
// Decode (M == 1) is a matrix-vector product and is bound by reading the weight once, so it is
// done here: rows are split over the pool in contiguous 16-row-aligned ranges (64 bytes of y: no
// two threads write one cache line). Float weights: one dot product per row. Q8_0/Q4_0 weights:
// x is quantized once to Q8_0, and the weights are read in the packed layout of kernels.h (8 rows
// interleaved 4 bytes at a time, made at load by Model::prepare_kernels): one 32-byte load holds 4
// quants of each of 8 rows, the 4 matching x bytes are broadcast, and maddubs/madd leave each
// row's exact int32 block sum in its own lane, with no horizontal sums and one scale load per 8
// rows; then one fma per block, in the reference's order (bit-identical results). Several
// matrices of one x (q, k, v; gate, up) run as one pass of the pool (matmul_shared).
// Prefill (M > 1) is compute bound and goes to OpenBLAS sgemm, run single-threaded inside each
// pool thread on a slice of W's rows; non-f32 weights are dequantized into a per-thread scratch
// tile first (the tile stays in L2/L3 while sgemm reads it).
#include <cblas.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <span>
#include <vector>

#include "m3/error.h"
#include "m3/kernels.h"

namespace m3 {

namespace {

// --- helpers -------------------------------------------------------------------------------------

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }

// 8 bf16 -> 8 f32: a bf16 is the top half of an f32.
inline __m256 load_bf16x8(const uint16_t* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

inline __m256 load_f16x8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// Sum of products of 32 signed bytes, in 8 int32 lanes (converted to float). maddubs wants one
// unsigned operand, so move w's sign onto x: |w| * (x * sign(w)) == w * x. With |w| <= 127 and
// |x| <= 128 each int16 pair sum is at most 2*127*128 = 32512: no saturation.
inline __m256 dot_i8x32(__m256i w, __m256i x) {
  const __m256i aw = _mm256_sign_epi8(w, w);
  const __m256i sx = _mm256_sign_epi8(x, w);
  const __m256i p16 = _mm256_maddubs_epi16(aw, sx);
  const __m256i p32 = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
  return _mm256_cvtepi32_ps(p32);
}

inline __m256i load_q8(const BlockQ8_0& b) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs));
}

// 16 bytes of nibbles -> 32 signed bytes in [-8, 7], element order: low nibbles then high.
inline __m256i load_q4(const BlockQ4_0& b) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs));
  const __m256i both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
  const __m256i q = _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
  return _mm256_sub_epi8(q, _mm256_set1_epi8(8));
}

inline __m256 block_scale(uint16_t dw, uint16_t dx) {
  return _mm256_set1_ps(half_to_float(dw) * half_to_float(dx));
}

// exp(x) for 8 floats, within ~1-2 ulp of expf over the range softmax and silu use.
// exp(x) = 2^n * exp(r), n = round(x/ln2), |r| <= ln2/2; exp(r) by Cephes' degree-6 polynomial.
// Inputs below ln(FLT_MIN) return 0 (expf would give a subnormal), above 88 are clamped (only
// reachable by silu of g < -88, where the result is 0 to float precision either way).
inline __m256 exp256(__m256 x) {
  const __m256 tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.33654f), _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.33654f)), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // r = x - n*ln2 with ln2 split in two so n*ln2_hi is exact.
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 r2 = _mm256_mul_ps(r, r);
  const __m256 e = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // 2^n built in the exponent field; n is in [-126, 127] after the clamps.
  const __m256i pow2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(tiny, _mm256_mul_ps(e, _mm256_castsi256_ps(pow2)));
}

}  // namespace

// --- dot products --------------------------------------------------------------------------------

float dot_f32(const float* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(),
         s3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  float sum = hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

float dot_f16_f32(const uint16_t* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(),
         s3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(load_f16x8(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(load_f16x8(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    s2 = _mm256_fmadd_ps(load_f16x8(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
    s3 = _mm256_fmadd_ps(load_f16x8(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(load_f16x8(a + i), _mm256_loadu_ps(b + i), s0);
  float sum = hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  for (; i < n; ++i) sum += half_to_float(a[i]) * b[i];
  return sum;
}

float dot_bf16_f32(const uint16_t* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(),
         s3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(load_bf16x8(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(load_bf16x8(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    s2 = _mm256_fmadd_ps(load_bf16x8(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
    s3 = _mm256_fmadd_ps(load_bf16x8(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(load_bf16x8(a + i), _mm256_loadu_ps(b + i), s0);
  float sum = hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  for (; i < n; ++i) sum += bf16_to_fp32(a[i]) * b[i];
  return sum;
}

// n is a multiple of 32 (whole blocks); two blocks per step on independent accumulators hide the
// latency of the int -> float -> fma chain.
float dot_q8_0_q8_0(const BlockQ8_0* w, const BlockQ8_0* x, int64_t n) {
  const int64_t nb = n / kQuantBlock;
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    acc0 = _mm256_fmadd_ps(block_scale(w[b].d, x[b].d), dot_i8x32(load_q8(w[b]), load_q8(x[b])), acc0);
    acc1 = _mm256_fmadd_ps(block_scale(w[b + 1].d, x[b + 1].d),
                           dot_i8x32(load_q8(w[b + 1]), load_q8(x[b + 1])), acc1);
  }
  if (b < nb) acc0 = _mm256_fmadd_ps(block_scale(w[b].d, x[b].d), dot_i8x32(load_q8(w[b]), load_q8(x[b])), acc0);
  return hsum(_mm256_add_ps(acc0, acc1));
}

float dot_q4_0_q8_0(const BlockQ4_0* w, const BlockQ8_0* x, int64_t n) {
  const int64_t nb = n / kQuantBlock;
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    acc0 = _mm256_fmadd_ps(block_scale(w[b].d, x[b].d), dot_i8x32(load_q4(w[b]), load_q8(x[b])), acc0);
    acc1 = _mm256_fmadd_ps(block_scale(w[b + 1].d, x[b + 1].d),
                           dot_i8x32(load_q4(w[b + 1]), load_q8(x[b + 1])), acc1);
  }
  if (b < nb) acc0 = _mm256_fmadd_ps(block_scale(w[b].d, x[b].d), dot_i8x32(load_q4(w[b]), load_q8(x[b])), acc0);
  return hsum(_mm256_add_ps(acc0, acc1));
}

// --- packed quantized weights (layout in kernels.h) -------------------------------------------------

namespace {

int64_t pack_groups(int64_t rows) { return (rows + kPackRows - 1) / kPackRows; }
int64_t packs_per_group(int64_t cols) { return (cols + kPackCols - 1) / kPackCols; }
size_t pack_size(DType t) { return t == DType::Q8_0 ? sizeof(PackQ8_0) : sizeof(PackQ4_0); }
bool is_packable(DType t) { return t == DType::Q8_0 || t == DType::Q4_0; }

// Transposes 8 rows of 8 dwords: out[j] holds dword j of rows 0..7 in its dwords 0..7.
inline void transpose8x8_epi32(const __m256i r[8], __m256i out[8]) {
  __m256i t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]);      // rows 2i, 2i+1: dwords 0, 1 | 4, 5
    t[2 * i + 1] = _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]);  // dwords 2, 3 | 6, 7
  }
  for (int i = 0; i < 2; ++i) {  // rows 4i..4i+3
    u[4 * i] = _mm256_unpacklo_epi64(t[4 * i], t[4 * i + 2]);          // dword 0 | 4
    u[4 * i + 1] = _mm256_unpackhi_epi64(t[4 * i], t[4 * i + 2]);      // dword 1 | 5
    u[4 * i + 2] = _mm256_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);  // dword 2 | 6
    u[4 * i + 3] = _mm256_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);  // dword 3 | 7
  }
  for (int j = 0; j < 4; ++j) {
    out[j] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x20);
    out[j + 4] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x31);
  }
}

// Writes rows 8g..8g+7 of W (ggml layout) as packs_per_group(K) packs; rows past the end and
// columns past K are zero blocks. Per block: the 8 rows' 32 quants (Q4_0: unpacked to one nibble
// per byte) as 8 vectors, an 8x8 dword transpose gives the chunks (Q4_0: chunks 2j and 2j+1
// share bytes as low and high nibbles).
void pack_group(const TensorView& W, int64_t g, void* dst) {
  const int64_t K = W.cols(), N = W.rows(), nb = K / kQuantBlock, np = packs_per_group(K);
  if (nb % 2) std::memset(static_cast<uint8_t*>(dst) + (np - 1) * pack_size(W.type), 0, pack_size(W.type));
  const int rows = static_cast<int>(std::min<int64_t>(kPackRows, N - g * kPackRows));
  const auto* base = static_cast<const uint8_t*>(W.data);
  const size_t rb = W.row_bytes();
  __m256i r[8], c[8];
  for (int64_t b = 0; b < nb; ++b) {
    const int h = static_cast<int>(b % 2);
    if (W.type == DType::Q8_0) {
      PackQ8_0& p = static_cast<PackQ8_0*>(dst)[b / 2];
      for (int i = 0; i < kPackRows; ++i) {
        if (i < rows) {
          const auto& blk = reinterpret_cast<const BlockQ8_0*>(base + (g * kPackRows + i) * rb)[b];
          p.d[h][i] = blk.d;
          r[i] = load_q8(blk);
        } else {
          p.d[h][i] = 0;
          r[i] = _mm256_setzero_si256();
        }
      }
      transpose8x8_epi32(r, c);
      for (int j = 0; j < 8; ++j) _mm256_store_si256(reinterpret_cast<__m256i*>(p.qs[h] + 32 * j), c[j]);
    } else {
      PackQ4_0& p = static_cast<PackQ4_0*>(dst)[b / 2];
      const __m256i low4 = _mm256_set1_epi8(0x0F);
      for (int i = 0; i < kPackRows; ++i) {
        if (i < rows) {
          const auto& blk = reinterpret_cast<const BlockQ4_0*>(base + (g * kPackRows + i) * rb)[b];
          p.d[h][i] = blk.d;
          const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.qs));
          r[i] = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), low4);  // byte c = column c
        } else {
          p.d[h][i] = 0;
          r[i] = _mm256_setzero_si256();
        }
      }
      transpose8x8_epi32(r, c);  // c[j]: columns 4j..4j+3 of each row
      for (int j = 0; j < 4; ++j)
        _mm256_store_si256(reinterpret_cast<__m256i*>(p.qs[h] + 32 * j),
                           _mm256_or_si256(c[2 * j], _mm256_slli_epi16(c[2 * j + 1], 4)));
    }
  }
}

// x quantized to Q8_0 once per GEMV, padded with zero blocks to whole packs, with what every
// pack needs per block: the scale as f32 and (for Q4_0's unsigned nibbles) 8·Σq.
struct QuantX {
  std::vector<BlockQ8_0> q;
  std::vector<float> d;
  std::vector<int32_t> sum8;
};

void quantize_x(const float* x, int64_t K, QuantX& qx) {
  const size_t nbp = static_cast<size_t>(2 * packs_per_group(K));
  qx.q.assign(nbp, BlockQ8_0{});
  quantize_row(DType::Q8_0, x, qx.q.data(), K);
  qx.d.resize(nbp);
  qx.sum8.resize(nbp);
  const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  for (size_t b = 0; b < nbp; ++b) {
    qx.d[b] = half_to_float(qx.q[b].d);
    const __m256i s32 = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, load_q8(qx.q[b])), ones16);
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
    qx.sum8[b] = 8 * _mm_cvtsi128_si32(s4);
  }
}

// 4 activation bytes broadcast to the 8 int32 lanes (one per row of a pack): vpbroadcastd from
// memory. (Pre-expanding x into 8 vectors per block once per GEMV was measured slower when the
// weights stream from DRAM: the 8x larger x competes with them for L1.)
inline __m256i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// y[0..8) = the 8 rows of one group · x. Per block, each row's exact integer dot lands in its own
// int32 lane, then acc = fma(float(isum), d_w·d_x, acc): the steps of ref::dot_q8_0_q8_0 in the
// same order, so each lane equals it bit for bit. |w| · (x · sign w): maddubs needs one unsigned
// operand; |w| <= 128 and |x| <= 127 keep each int16 pair sum below 32512 (no saturation).
void gemv_group_q8_0(const PackQ8_0* p, int64_t np, const QuantX& x, float* y) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t s = 0; s < np; ++s) {
    for (int h = 0; h < 2; ++h) {
      const int64_t b = 2 * s + h;
      const int8_t* xb = x.q[static_cast<size_t>(b)].qs;
      const auto* q = reinterpret_cast<const __m256i*>(p[s].qs[h]);
      __m256i i0 = _mm256_setzero_si256(), i1 = _mm256_setzero_si256();
      for (int j = 0; j < 8; j += 2) {
        const __m256i w0 = _mm256_load_si256(q + j), w1 = _mm256_load_si256(q + j + 1);
        const __m256i p0 = _mm256_maddubs_epi16(_mm256_abs_epi8(w0), _mm256_sign_epi8(bcast4(xb + 4 * j), w0));
        const __m256i p1 = _mm256_maddubs_epi16(_mm256_abs_epi8(w1), _mm256_sign_epi8(bcast4(xb + 4 * j + 4), w1));
        i0 = _mm256_add_epi32(i0, _mm256_madd_epi16(p0, ones));
        i1 = _mm256_add_epi32(i1, _mm256_madd_epi16(p1, ones));
      }
      const __m256 d = _mm256_mul_ps(_mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(p[s].d[h]))),
                                     _mm256_set1_ps(x.d[static_cast<size_t>(b)]));
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(i0, i1)), d, acc);
    }
  }
  _mm256_storeu_ps(y, acc);
}

// The same for Q4_0, as ref::dot_q4_0_q8_0. The nibbles q stay unsigned (maddubs' unsigned
// operand): Σ(q−8)·x = Σq·x − 8·Σx, with 8·Σx computed once per block of x. Each int16 lane
// sums 8 pair products of at most 2·15·127, |sum| <= 30480: the whole block adds up in int16
// before one madd widens it.
void gemv_group_q4_0(const PackQ4_0* p, int64_t np, const QuantX& x, float* y) {
  const __m256i ones = _mm256_set1_epi16(1), low4 = _mm256_set1_epi8(0x0F);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t s = 0; s < np; ++s) {
    for (int h = 0; h < 2; ++h) {
      const int64_t b = 2 * s + h;
      const int8_t* xb = x.q[static_cast<size_t>(b)].qs;
      const auto* q = reinterpret_cast<const __m256i*>(p[s].qs[h]);
      __m256i m[8];
      for (int j = 0; j < 4; ++j) {
        const __m256i v = _mm256_load_si256(q + j);
        m[2 * j] = _mm256_maddubs_epi16(_mm256_and_si256(v, low4), bcast4(xb + 8 * j));
        m[2 * j + 1] = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), low4), bcast4(xb + 8 * j + 4));
      }
      const __m256i s16 = _mm256_add_epi16(_mm256_add_epi16(_mm256_add_epi16(m[0], m[1]), _mm256_add_epi16(m[2], m[3])),
                                           _mm256_add_epi16(_mm256_add_epi16(m[4], m[5]), _mm256_add_epi16(m[6], m[7])));
      const __m256i isum = _mm256_sub_epi32(_mm256_madd_epi16(s16, ones), _mm256_set1_epi32(x.sum8[static_cast<size_t>(b)]));
      const __m256 d = _mm256_mul_ps(_mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(p[s].d[h]))),
                                     _mm256_set1_ps(x.d[static_cast<size_t>(b)]));
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), d, acc);
    }
  }
  _mm256_storeu_ps(y, acc);
}

// Rows of one pack group as f32: out[i * ldo + c] for rows i < n_rows, columns c < K. Two vectors
// P, Q of a block hold, at int32 lane i, 4 bytes of row i each (Q8_0: chunks j and j+1 = columns
// 4j..4j+7; Q4_0: the low and high nibbles of chunk j = columns 8j..8j+7); unpacking their 32-bit
// lanes puts each row's 8 consecutive columns in one 64-bit lane. Values are d·q exactly, as
// dequantize_row computes them.
void dequantize_group(DType t, const void* group, int64_t K, float* out, int64_t ldo, int n_rows) {
  const int64_t nb = K / kQuantBlock;
  alignas(32) int64_t lanes[2][4];
  // row i's 8 bytes are lanes[i / 2 % 2][(i % 2) + 2 * (i / 4)] (unpacklo: rows 0, 1, 4, 5).
  auto emit = [&](__m256i P, __m256i Q, const float* d, int64_t col, bool is_signed, int bias) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes[0]), _mm256_unpacklo_epi32(P, Q));
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes[1]), _mm256_unpackhi_epi32(P, Q));
    for (int i = 0; i < n_rows; ++i) {
      const __m128i b8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(&lanes[(i / 2) % 2][(i % 2) + 2 * (i / 4)]));
      __m256i v = is_signed ? _mm256_cvtepi8_epi32(b8) : _mm256_cvtepu8_epi32(b8);
      v = _mm256_sub_epi32(v, _mm256_set1_epi32(bias));
      _mm256_storeu_ps(out + i * ldo + col, _mm256_mul_ps(_mm256_set1_ps(d[i]), _mm256_cvtepi32_ps(v)));
    }
  };
  for (int64_t b = 0; b < nb; ++b) {
    const int h = static_cast<int>(b % 2);
    alignas(32) float d[kPackRows];
    if (t == DType::Q8_0) {
      const PackQ8_0& p = static_cast<const PackQ8_0*>(group)[b / 2];
      _mm256_store_ps(d, _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(p.d[h]))));
      const auto* q = reinterpret_cast<const __m256i*>(p.qs[h]);
      for (int j = 0; j < 8; j += 2)
        emit(_mm256_load_si256(q + j), _mm256_load_si256(q + j + 1), d, b * kQuantBlock + 4 * j, true, 0);
    } else {
      const PackQ4_0& p = static_cast<const PackQ4_0*>(group)[b / 2];
      _mm256_store_ps(d, _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(p.d[h]))));
      const auto* q = reinterpret_cast<const __m256i*>(p.qs[h]);
      const __m256i low4 = _mm256_set1_epi8(0x0F);
      for (int j = 0; j < 4; ++j) {
        const __m256i v = _mm256_load_si256(q + j);
        emit(_mm256_and_si256(v, low4), _mm256_and_si256(_mm256_srli_epi16(v, 4), low4), d, b * kQuantBlock + 8 * j,
             false, 8);
      }
    }
  }
}

}  // namespace

size_t packed_bytes(const TensorView& W) {
  if (!is_packable(W.type)) return 0;
  return static_cast<size_t>(pack_groups(W.rows()) * packs_per_group(W.cols())) * pack_size(W.type);
}

void pack_weights(const TensorView& W, void* out, ThreadPool* pool) {
  if (!is_packable(W.type)) throw Error("pack_weights '" + W.name + "': " + dtype_name(W.type) + " is not repacked");
  const size_t group_bytes = static_cast<size_t>(packs_per_group(W.cols())) * pack_size(W.type);
  auto run = [&](int64_t g0, int64_t g1, int) {
    for (int64_t g = g0; g < g1; ++g) pack_group(W, g, static_cast<uint8_t*>(out) + g * group_bytes);
  };
  if (pool) pool->parallel_for(pack_groups(W.rows()), run); else run(0, pack_groups(W.rows()), 0);
}

void dequantize_rows(const TensorView& W, int64_t r0, int64_t r1, float* out) {
  const int64_t K = W.cols();
  if (!W.packed || !is_packable(W.type)) {
    for (int64_t r = r0; r < r1; ++r) dequantize_row(W.type, W.row(r), out + (r - r0) * K, K);
    return;
  }
  const size_t group_bytes = static_cast<size_t>(packs_per_group(K)) * pack_size(W.type);
  const auto* base = static_cast<const uint8_t*>(W.packed);
  std::vector<float> tmp;
  for (int64_t g = r0 / kPackRows; g * kPackRows < r1; ++g) {
    const int64_t first = g * kPackRows, lo = std::max(first, r0), hi = std::min(first + kPackRows, r1);
    const int valid = static_cast<int>(std::min(first + kPackRows, W.rows()) - first);
    if (lo == first && hi - lo == kPackRows) {
      dequantize_group(W.type, base + g * group_bytes, K, out + (first - r0) * K, K, kPackRows);
    } else {  // a group cut by r0 or r1: through a scratch copy
      tmp.resize(static_cast<size_t>(kPackRows * K));
      dequantize_group(W.type, base + g * group_bytes, K, tmp.data(), K, valid);
      std::memcpy(out + (lo - r0) * K, tmp.data() + (lo - first) * K, static_cast<size_t>((hi - lo) * K) * sizeof(float));
    }
  }
}

// --- matmul --------------------------------------------------------------------------------------

namespace {

constexpr int64_t kGemvRows = 16;  // rows per work unit: thread ranges start on 16-row (64-byte) boundaries
constexpr int64_t kTileRows = 256;  // rows dequantized per sgemm call for non-f32 weights (x is repacked by each call)

// Rows [r0, r1) of y = W · x (r0 a multiple of 16, r1 one too or N). Q8_0/Q4_0 W read x quantized
// (qx, prepared once by the calling thread) and stream their contiguous range of pack groups (one
// sequential read per thread); without a packed copy each group is packed on the fly into a
// per-thread scratch first (same results, slower).
void gemv_rows(const TensorView& W, const float* x, const QuantX& qx, float* y, int64_t r0, int64_t r1) {
  const int64_t K = W.cols(), N = W.rows();
  const size_t rb = W.row_bytes();
  const auto* base = static_cast<const uint8_t*>(W.data);
  switch (W.type) {
    case DType::F32:
      for (int64_t r = r0; r < r1; ++r) y[r] = dot_f32(reinterpret_cast<const float*>(base + r * rb), x, K);
      return;
    case DType::F16:
      for (int64_t r = r0; r < r1; ++r) y[r] = dot_f16_f32(reinterpret_cast<const uint16_t*>(base + r * rb), x, K);
      return;
    case DType::BF16:
      for (int64_t r = r0; r < r1; ++r) y[r] = dot_bf16_f32(reinterpret_cast<const uint16_t*>(base + r * rb), x, K);
      return;
    case DType::Q8_0:
    case DType::Q4_0: {
      const int64_t np = packs_per_group(K);
      const size_t group_bytes = static_cast<size_t>(np) * pack_size(W.type);
      const auto* packed = static_cast<const uint8_t*>(W.packed);
      thread_local Buffer scratch;
      if (!packed && scratch.size() < group_bytes) scratch = Buffer(group_bytes);
      for (int64_t g = r0 / kPackRows; g * kPackRows < r1; ++g) {
        const uint8_t* src = packed ? packed + g * group_bytes : scratch.data();
        if (!packed) pack_group(W, g, scratch.data());
        float tail[kPackRows];
        const bool whole = (g + 1) * kPackRows <= N;
        float* out = whole ? y + g * kPackRows : tail;
        if (W.type == DType::Q8_0) gemv_group_q8_0(reinterpret_cast<const PackQ8_0*>(src), np, qx, out);
        else gemv_group_q4_0(reinterpret_cast<const PackQ4_0*>(src), np, qx, out);
        if (!whole) std::memcpy(y + g * kPackRows, tail, static_cast<size_t>(N - g * kPackRows) * sizeof(float));
      }
      return;
    }
  }
  throw Error("matmul '" + W.name + "': unsupported weight type " + dtype_name(W.type));
}

// ys[i][N_i] = Ws[i] · x for matrices that share x: x quantized once (when any is Q8_0/Q4_0),
// then one pass of the pool over all their rows in 16-row units. Threads take chunks of units
// from a shared counter rather than fixed halves: on a shared 2-core VM one thread is often
// slowed (memory traffic, interrupts, a neighbour), and with a static split the other then spins
// at the end of every matrix (measured: ~15% of a q4_0 token under load). A chunk (>= 64 rows)
// is still one long sequential read.
void gemv_multi(std::span<const MatmulTarget> targets, const float* x, ThreadPool* pool) {
  bool quantized = false;
  int64_t K = -1;
  for (const MatmulTarget& t : targets) {
    quantized = quantized || is_packable(t.W->type);
    if (K >= 0 && t.W->cols() != K) throw Error("matmul_shared '" + t.W->name + "': input width differs from the others'");
    K = t.W->cols();
  }
  thread_local QuantX qx;
  if (quantized) quantize_x(x, K, qx);
  const QuantX& xq = qx;
  // Unit u of the combined row space: matrix i owns units [first[i], first[i + 1]).
  thread_local std::vector<int64_t> first;
  first.assign(1, 0);
  for (const MatmulTarget& t : targets) first.push_back(first.back() + (t.W->rows() + kGemvRows - 1) / kGemvRows);
  const std::vector<int64_t>& units = first;
  auto run = [&](int64_t u0, int64_t u1, int) {
    for (size_t i = 0; i < targets.size(); ++i) {
      const int64_t a = std::max(u0, units[i]), b = std::min(u1, units[i + 1]);
      if (a >= b) continue;
      const int64_t N = targets[i].W->rows();
      gemv_rows(*targets[i].W, x, xq, targets[i].y, (a - units[i]) * kGemvRows, std::min((b - units[i]) * kGemvRows, N));
    }
  };
  const int64_t total = units.back();
  if (!pool || pool->size() == 1 || total <= 1) {
    run(0, total, 0);
    return;
  }
  // Guided: each chunk is 1/(2·threads) of what is left (at least 4 units), so the last chunks,
  // which decide how long the other thread waits, are small.
  thread_local std::vector<int64_t> bounds;
  bounds.assign(1, 0);
  const int64_t parts = 2 * pool->size();
  while (bounds.back() < total) {
    const int64_t left = total - bounds.back();
    bounds.push_back(bounds.back() + std::min(left, std::max<int64_t>(4, left / parts)));
  }
  const std::vector<int64_t>& chunks = bounds;
  const int64_t n_chunks = static_cast<int64_t>(chunks.size()) - 1;
  std::atomic<int64_t> next{0};
  pool->parallel_for(pool->size(), [&](int64_t, int64_t, int thread) {
    for (int64_t c = next.fetch_add(1, std::memory_order_relaxed); c < n_chunks; c = next.fetch_add(1, std::memory_order_relaxed))
      run(chunks[static_cast<size_t>(c)], chunks[static_cast<size_t>(c) + 1], thread);
  });
}

}  // namespace

namespace {
// OpenBLAS must not start threads of its own under the pool (see matmul); set once per process.
void blas_single_threaded() {
  static const bool done = [] {
    set_blas_threads(1);
    return true;
  }();
  (void)done;
}
}  // namespace

void matmul(const TensorView& W, const float* x, float* y, int64_t M, ThreadPool* pool) {
  // W (N, K) any DType, x (M, K), y (M, N)
  const int64_t K = W.cols(), N = W.rows();
  if (M <= 0 || N <= 0) return;
  if (M == 1) {
    const MatmulTarget t{&W, y};
    gemv_multi(std::span<const MatmulTarget>(&t, 1), x, pool);
    return;
  }
  // Batched: OpenBLAS sgemm, single-threaded inside each pool thread, each thread owning a
  // contiguous slice of W's rows (= columns of y). One set of threads on the cores: OpenBLAS's
  // own threads would spin against the pool's between the calls of a layer (measured ~35% slower
  // on 2 cores when both were active). Non-f32 weights are dequantized by the owning thread in
  // tiles into its own scratch, so dequantization is parallel too.
  const int m = static_cast<int>(M), k = static_cast<int>(K), ldy = static_cast<int>(N);
  const size_t rb = W.row_bytes();
  const auto* base = static_cast<const uint8_t*>(W.data);
  auto slice = [&](int64_t r0, int64_t r1) {
    if (W.type == DType::F32) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, static_cast<int>(r1 - r0), k, 1.0f, x, k,
                  reinterpret_cast<const float*>(base + r0 * rb), k, 0.0f, y + r0, ldy);
      return;
    }
    const int64_t tile_rows = std::min(kTileRows, r1 - r0);
    thread_local Buffer scratch;
    const size_t need = static_cast<size_t>(tile_rows * K) * sizeof(float);
    if (scratch.size() < need) scratch = Buffer(need);
    float* tile = scratch.as<float>();
    for (int64_t n0 = r0; n0 < r1; n0 += tile_rows) {
      const int64_t t = std::min(tile_rows, r1 - n0);
      dequantize_rows(W, n0, n0 + t, tile);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, static_cast<int>(t), k, 1.0f, x, k, tile, k, 0.0f,
                  y + n0, ldy);
    }
  };
  blas_single_threaded();
  // Slices of at least 64 rows keep each sgemm efficient.
  if (!pool || pool->size() == 1 || N < 128) {
    slice(0, N);
    return;
  }
  const int64_t units = (N + 63) / 64;
  pool->parallel_for(units, [&](int64_t begin, int64_t end, int) { slice(begin * 64, std::min(end * 64, N)); });
}

void matmul_shared(std::span<const MatmulTarget> targets, const float* x, int64_t M, ThreadPool* pool) {
  if (M == 1) {
    gemv_multi(targets, x, pool);
    return;
  }
  for (const MatmulTarget& t : targets) matmul(*t.W, x, t.y, M, pool);
}

void gemm(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B, int64_t ldb,
          bool b_transposed, float beta, float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  blas_single_threaded();
  cblas_sgemm(CblasRowMajor, CblasNoTrans, b_transposed ? CblasTrans : CblasNoTrans, static_cast<int>(M), static_cast<int>(N),
              static_cast<int>(K), alpha, A, static_cast<int>(lda), B, static_cast<int>(ldb), beta, C, static_cast<int>(ldc));
}

// --- elementwise ops -----------------------------------------------------------------------------

void rmsnorm(float* out, const float* x, const float* w, int64_t n, float eps) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
    s0 = _mm256_fmadd_ps(a, a, s0);
    s1 = _mm256_fmadd_ps(b, b, s1);
  }
  double ss = hsum(_mm256_add_ps(s0, s1));
  for (; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float scale = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
  const __m256 vs = _mm256_set1_ps(scale);
  i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), vs);
    _mm256_storeu_ps(out + i, _mm256_mul_ps(v, _mm256_loadu_ps(w + i)));
  }
  for (; i < n; ++i) out[i] = x[i] * scale * w[i];
}

void RopeAngles::set(int64_t D, int64_t pos, float theta) {
  // The D/2 angles are the same for every head: cos/sin in double, as the reference computes them,
  // laid out per lane so one rotation is v*cos + swap_pairs(v)*(∓sin).
  D_ = D;
  cos_.resize(static_cast<size_t>(D));
  sin_.resize(static_cast<size_t>(D));
  const int64_t pairs = D / 2;
  for (int64_t i = 0; i < pairs; ++i) {
    const double freq = std::pow(static_cast<double>(theta), -2.0 * static_cast<double>(i) / D);
    const double angle = static_cast<double>(pos) * freq;
    const float c = static_cast<float>(std::cos(angle)), s = static_cast<float>(std::sin(angle));
    cos_[2 * i] = c;
    cos_[2 * i + 1] = c;
    sin_[2 * i] = -s;  // even: a*c - b*s
    sin_[2 * i + 1] = s;  // odd:  b*c + a*s
  }
}

void RopeAngles::apply(float* x, int64_t H) const {
  const int64_t D = D_, pairs = D / 2;
  const int64_t vec = (2 * pairs) / 8 * 8;
  for (int64_t h = 0; h < H; ++h) {
    float* v = x + h * D;
    int64_t j = 0;
    for (; j < vec; j += 8) {
      const __m256 a = _mm256_loadu_ps(v + j);
      const __m256 swapped = _mm256_permute_ps(a, 0xB1);  // (b0, a0, b1, a1, ...)
      const __m256 r = _mm256_fmadd_ps(swapped, _mm256_loadu_ps(sin_.data() + j),
                                       _mm256_mul_ps(a, _mm256_loadu_ps(cos_.data() + j)));
      _mm256_storeu_ps(v + j, r);
    }
    for (; j < 2 * pairs; j += 2) {
      const float a = v[j], b = v[j + 1], c = cos_[j], s = sin_[j + 1];
      v[j] = a * c - b * s;
      v[j + 1] = a * s + b * c;
    }
  }
}

void rope(float* x, int64_t H, int64_t D, int64_t pos, float theta) {
  // x (H, D)
  thread_local RopeAngles angles;
  angles.set(D, pos, theta);
  angles.apply(x, H);
}

void softmax(float* x, int64_t n) {
  if (n <= 0) return;
  int64_t i = 0;
  __m256 vmax = _mm256_set1_ps(x[0]);
  for (; i + 8 <= n; i += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + i));
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  float max = _mm_cvtss_f32(m4);
  for (; i < n; ++i) max = std::max(max, x[i]);

  const __m256 vm = _mm256_set1_ps(max);
  __m256 vsum = _mm256_setzero_ps();
  i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    _mm256_storeu_ps(x + i, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  double sum = hsum(vsum);
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    sum += x[i];
  }
  const float inv = static_cast<float>(1.0 / sum);
  const __m256 vinv = _mm256_set1_ps(inv);
  i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vinv));
  for (; i < n; ++i) x[i] *= inv;
}

void swiglu(float* out, const float* gate, const float* up, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = exp256(_mm256_xor_ps(g, sign));  // exp(-g)
    const __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
  }
  for (; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void embedding(const TensorView& table, int32_t token, float* out) {
  if (token < 0 || token >= table.rows()) {
    throw Error("embedding '" + table.name + "': token " + std::to_string(token) +
                " out of range [0, " + std::to_string(table.rows()) + ")");
  }
  dequantize_row(table.type, table.row(token), out, table.cols());
}

}  // namespace m3
