// Fast kernels: AVX2 + FMA + F16C, row-split threading, OpenBLAS for M > 1.
//
// Same contracts as m3::ref (kernels_ref.cpp), checked against it by tests/test_kernels.cpp.
//
// Decode (M == 1) is a matrix-vector product and is bound by reading the weight once, so it is
// done here: rows are split over the pool in contiguous 16-row-aligned ranges, each row is one dot
// product. Quantized weights take x quantized once to Q8_0 and integer dots, like llama.cpp:
// int8 x int8 products summed exactly in int32 per block, then one float fma per block scale.
// Prefill (M > 1) is compute bound and goes to OpenBLAS sgemm, run single-threaded inside each
// pool thread on a slice of W's rows; non-f32 weights are dequantized into a per-thread scratch
// tile first (the tile stays in L2/L3 while sgemm reads it).
#include <cblas.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
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

// --- matmul --------------------------------------------------------------------------------------

namespace {

// Two Q4_0 rows against the same Q8_0 x, for the GEMV. Cheaper per block than dot_q4_0_q8_0:
// x's block load, its fp16 scale (pre-converted in dx) and maddubs(8, x) serve both rows, and the
// nibbles stay unsigned: sum((q-8)*x) = maddubs(q, x) - maddubs(8, x) in int16 (|.| <= 3840, no
// saturation), so no sign/sub per row. Each lane sums the same 4 products as dot_q4_0_q8_0 and
// blocks alternate between the same two accumulators, so results are bit-identical to it.
void dot2_q4_0_q8_0(const BlockQ4_0* w0, const BlockQ4_0* w1, const BlockQ8_0* x, const float* dx,
                    int64_t nb, float* y) {
  const __m256i ones = _mm256_set1_epi16(1), eight = _mm256_set1_epi8(8), low4 = _mm256_set1_epi8(0x0F);
  auto nibbles = [&](const BlockQ4_0& b) {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs));
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), low4);
  };
  __m256 acc[2][2] = {{_mm256_setzero_ps(), _mm256_setzero_ps()}, {_mm256_setzero_ps(), _mm256_setzero_ps()}};
  auto step = [&](int64_t b, int a) {
    const __m256i xv = load_q8(x[b]);
    const __m256i x8 = _mm256_maddubs_epi16(eight, xv);
    const __m256i p0 = _mm256_madd_epi16(_mm256_sub_epi16(_mm256_maddubs_epi16(nibbles(w0[b]), xv), x8), ones);
    const __m256i p1 = _mm256_madd_epi16(_mm256_sub_epi16(_mm256_maddubs_epi16(nibbles(w1[b]), xv), x8), ones);
    // Same float product order as block_scale(): fp32(d_w) * fp32(d_x).
    const __m256 s0 = _mm256_set1_ps(half_to_float(w0[b].d) * dx[b]);
    const __m256 s1 = _mm256_set1_ps(half_to_float(w1[b].d) * dx[b]);
    acc[0][a] = _mm256_fmadd_ps(s0, _mm256_cvtepi32_ps(p0), acc[0][a]);
    acc[1][a] = _mm256_fmadd_ps(s1, _mm256_cvtepi32_ps(p1), acc[1][a]);
  };
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    step(b, 0);
    step(b + 1, 1);
  }
  if (b < nb) step(b, 0);
  y[0] = hsum(_mm256_add_ps(acc[0][0], acc[0][1]));
  y[1] = hsum(_mm256_add_ps(acc[1][0], acc[1][1]));
}

constexpr int64_t kGemvRows = 16;   // rows per work unit: thread ranges start on 16-row boundaries
constexpr int64_t kTileRows = 256;  // rows dequantized per sgemm call for non-f32 weights

// Runs fn(row_begin, row_end) over [0, rows) in 16-row-aligned contiguous ranges, one per thread.
template <class Fn>
void for_rows(int64_t rows, ThreadPool* pool, Fn&& fn) {
  if (!pool || pool->size() == 1 || rows <= kGemvRows) {
    fn(int64_t{0}, rows);
    return;
  }
  const int64_t units = (rows + kGemvRows - 1) / kGemvRows;
  pool->parallel_for(units, [&](int64_t begin, int64_t end, int) {
    fn(begin * kGemvRows, std::min(end * kGemvRows, rows));
  });
}

// y[N] = W[N,K] · x[K]
void gemv(const TensorView& W, const float* x, float* y, ThreadPool* pool) {
  const int64_t K = W.cols(), N = W.rows();
  const size_t rb = W.row_bytes();
  const auto* base = static_cast<const uint8_t*>(W.data);
  switch (W.type) {
    case DType::F32:
      for_rows(N, pool, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) y[r] = dot_f32(reinterpret_cast<const float*>(base + r * rb), x, K);
      });
      return;
    case DType::F16:
      for_rows(N, pool, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) y[r] = dot_f16_f32(reinterpret_cast<const uint16_t*>(base + r * rb), x, K);
      });
      return;
    case DType::BF16:
      for_rows(N, pool, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) y[r] = dot_bf16_f32(reinterpret_cast<const uint16_t*>(base + r * rb), x, K);
      });
      return;
    case DType::Q8_0:
    case DType::Q4_0: {
      // x is quantized once by the calling thread; every row's dot then reads the same blocks.
      thread_local std::vector<BlockQ8_0> xq;
      xq.resize(static_cast<size_t>(K / kQuantBlock));
      quantize_row(DType::Q8_0, x, xq.data(), K);
      const BlockQ8_0* xb = xq.data();
      if (W.type == DType::Q8_0) {
        for_rows(N, pool, [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r) y[r] = dot_q8_0_q8_0(reinterpret_cast<const BlockQ8_0*>(base + r * rb), xb, K);
        });
      } else {
        thread_local std::vector<float> dx;
        dx.resize(xq.size());
        for (size_t b = 0; b < xq.size(); ++b) dx[b] = half_to_float(xq[b].d);
        const float* dxp = dx.data();
        auto row = [&](int64_t r) { return reinterpret_cast<const BlockQ4_0*>(base + r * rb); };
        // Row pairs are (i, i + half) of the thread's range, not (i, i + 1): two long sequential
        // streams keep the hardware prefetchers ahead; adjacent pairs ran at half the speed once
        // the weight came from DRAM rather than L3 (measured, 4096x4096).
        for_rows(N, pool, [&](int64_t r0, int64_t r1) {
          const int64_t half = (r1 - r0) / 2;
          float pair[2];
          for (int64_t i = 0; i < half; ++i) {
            dot2_q4_0_q8_0(row(r0 + i), row(r0 + half + i), xb, dxp, K / kQuantBlock, pair);
            y[r0 + i] = pair[0];
            y[r0 + half + i] = pair[1];
          }
          if (r0 + 2 * half < r1) y[r1 - 1] = dot_q4_0_q8_0(row(r1 - 1), xb, K);
        });
      }
      return;
    }
  }
  throw Error("matmul '" + W.name + "': unsupported weight type " + dtype_name(W.type));
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
    gemv(W, x, y, pool);
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
      for (int64_t r = 0; r < t; ++r) dequantize_row(W.type, base + (n0 + r) * rb, tile + r * K, K);
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

void rope(float* x, int64_t H, int64_t D, int64_t pos, float theta) {
  // x (H, D). The D/2 angles are the same for every head: compute cos/sin once (in double, as the
  // reference does), laid out per lane so one rotation is v*cos + swap_pairs(v)*(∓sin).
  thread_local std::vector<float> cs, sn;
  cs.resize(static_cast<size_t>(D));
  sn.resize(static_cast<size_t>(D));
  const int64_t pairs = D / 2;
  for (int64_t i = 0; i < pairs; ++i) {
    const double freq = std::pow(static_cast<double>(theta), -2.0 * static_cast<double>(i) / D);
    const double angle = static_cast<double>(pos) * freq;
    const float c = static_cast<float>(std::cos(angle)), s = static_cast<float>(std::sin(angle));
    cs[2 * i] = c;
    cs[2 * i + 1] = c;
    sn[2 * i] = -s;  // even: a*c - b*s
    sn[2 * i + 1] = s;  // odd:  b*c + a*s
  }
  const int64_t vec = (2 * pairs) / 8 * 8;
  for (int64_t h = 0; h < H; ++h) {
    float* v = x + h * D;
    int64_t j = 0;
    for (; j < vec; j += 8) {
      const __m256 a = _mm256_loadu_ps(v + j);
      const __m256 swapped = _mm256_permute_ps(a, 0xB1);  // (b0, a0, b1, a1, ...)
      const __m256 r = _mm256_fmadd_ps(swapped, _mm256_loadu_ps(sn.data() + j),
                                       _mm256_mul_ps(a, _mm256_loadu_ps(cs.data() + j)));
      _mm256_storeu_ps(v + j, r);
    }
    for (; j < 2 * pairs; j += 2) {
      const float a = v[j], b = v[j + 1], c = cs[j], s = sn[j + 1];
      v[j] = a * c - b * s;
      v[j + 1] = a * s + b * c;
    }
  }
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
