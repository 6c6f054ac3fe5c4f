// m3/kernels.h — the numeric operations of the model.
//
// Every op exists twice: m3::ref::* is the plain scalar version, written to be read and kept as the
// oracle; m3::* is the fast version (AVX2/FMA/F16C, OpenBLAS, threads) that the model runs.
// tests/test_kernels.cpp checks each fast op against its reference.
//
// Shapes, one letter per dimension: M rows of activations (tokens), K input width, N output width,
// H heads, D head dim.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "m3/tensor.h"
#include "m3/thread_pool.h"

namespace m3 {

namespace ref {
// y[M,N] = x[M,K] · W[N,K]ᵀ where W is in any DType (dequantized row by row, f64 accumulation).
void matmul(const TensorView& W, const float* x, float* y, int64_t M);
// out[n] = x[n] / sqrt(mean(x²) + eps) * w[n]
void rmsnorm(float* out, const float* x, const float* w, int64_t n, float eps);
// Rotates adjacent pairs (2i, 2i+1) of each of H heads of width D at position pos:
// angle = pos * theta^(-2i/D). In place. (llama.cpp's "normal" RoPE, used by its llama arch.)
void rope(float* x, int64_t H, int64_t D, int64_t pos, float theta);
// In-place softmax over n values.
void softmax(float* x, int64_t n);
// out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g))
void swiglu(float* out, const float* gate, const float* up, int64_t n);
// out[K] = row `token` of table (any DType), as f32.
void embedding(const TensorView& table, int32_t token, float* out);
// Dot product of one weight row (any DType, n elements) with f32 x.
float dot_row(DType t, const void* w_row, const float* x, int64_t n);
}  // namespace ref

// --- the kernels' layout of quantized weights ------------------------------------------------------
// GGUF files keep ggml's row-major blocks; the GEMV reads Q8_0/Q4_0 matrices repacked in memory
// (Model::load, TensorView::packed) into packs of 8 rows x 64 columns (two 32-column blocks):
//   d[h][i]        fp16 scale of row i's block h (the 8 rows' scales of a block in one 16-byte load)
//   Q8_0: qs[h][32j + 4i + k] = q of row i, column 32h + 4j + k           (j = 0..7, k = 0..3)
//   Q4_0: qs[h][32j + 4i + k] = nibble of row i, column 32h + 8j + k       (low 4 bits)
//                             | nibble of row i, column 32h + 8j + 4 + k   (high 4 bits), j = 0..3
// so one 32-byte load holds 4 consecutive quants of each of the 8 rows, and the 4 matching
// activation bytes are broadcast to all rows: int8 dot products land one row per int32 lane with
// no horizontal sums, and one scale load serves 8 rows. Rows are padded to a multiple of 8 and
// columns to a multiple of 64 with zero blocks (scale 0, which adds exactly nothing).
constexpr int64_t kPackRows = 8, kPackCols = 64;
struct PackQ8_0 {
  uint16_t d[2][kPackRows];
  int8_t qs[2][kPackRows * kQuantBlock];
};
static_assert(sizeof(PackQ8_0) == 544, "8 rows x 2 blocks of Q8_0");
struct PackQ4_0 {
  uint16_t d[2][kPackRows];
  uint8_t qs[2][kPackRows * kQuantBlock / 2];
};
static_assert(sizeof(PackQ4_0) == 288, "8 rows x 2 blocks of Q4_0");
// Bytes of W in the packed layout; 0 when W's type is not repacked (only Q8_0 and Q4_0 are).
size_t packed_bytes(const TensorView& W);
// Writes W (its ggml-layout `data`) into out (packed_bytes(W) bytes, 32-byte aligned), rows split
// over the pool.
void pack_weights(const TensorView& W, void* out, ThreadPool* pool);
// Rows [r0, r1) of W as f32 into out[(r1 - r0) x K], from `packed` when set, else from `data`.
void dequantize_rows(const TensorView& W, int64_t r0, int64_t r1, float* out);

// Fast versions, same contracts. pool may be null (single-threaded).
// matmul: M == 1 uses m3's own SIMD GEMV split over rows. Q8_0/Q4_0 weights take x quantized once
// to Q8_0 blocks and integer dot products on the packed layout above (a view without `packed`
// is packed 8 rows at a time on the fly): every output is bit-identical to
// ref::dot_q8_0_q8_0 / ref::dot_q4_0_q8_0 of its row, whatever the thread count.
// M > 1 uses OpenBLAS sgemm (quantized and half-precision weights are dequantized tile by tile).
void matmul(const TensorView& W, const float* x, float* y, int64_t M, ThreadPool* pool);
// Several matmuls of the same x (q, k and v; gate and up), each y_i[M, N_i] = x · W_iᵀ, with the
// results of separate matmul calls: for M == 1 x is quantized once and one pass of the pool covers
// all their rows (one wake-up of the threads instead of one per matrix). The W_i share K.
struct MatmulTarget {
  const TensorView* W;
  float* y;
};
void matmul_shared(std::span<const MatmulTarget> targets, const float* x, int64_t M, ThreadPool* pool);
// C[M,N] = alpha · A[M,K] · B' + beta · C, row-major with leading dimensions; B' = Bᵀ of B [N,K]
// when b_transposed, else B [K,N]. OpenBLAS sgemm, single-threaded: callers split work over the
// pool (attention runs one per (head, query tile)).
void gemm(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B, int64_t ldb,
          bool b_transposed, float beta, float* C, int64_t ldc);
void rmsnorm(float* out, const float* x, const float* w, int64_t n, float eps);
void rope(float* x, int64_t H, int64_t D, int64_t pos, float theta);
void softmax(float* x, int64_t n);
void swiglu(float* out, const float* gate, const float* up, int64_t n);
void embedding(const TensorView& table, int32_t token, float* out);

// RoPE's cos/sin for one position, computed once and applied to any number of heads (the forward
// pass shares them between q and k of every layer). apply() gives exactly rope()'s result.
class RopeAngles {
 public:
  void set(int64_t D, int64_t pos, float theta);
  void apply(float* x, int64_t H) const;  // x (H, D)
 private:
  int64_t D_ = 0;
  std::vector<float> cos_, sin_;  // per lane: (c, c) and (-s, s) for each pair
};

// Single-row dot kernels used by matmul (exposed for tests and benchmarks).
float dot_f32(const float* a, const float* b, int64_t n);
float dot_f16_f32(const uint16_t* a, const float* b, int64_t n);
float dot_bf16_f32(const uint16_t* a, const float* b, int64_t n);
// x quantized to Q8_0 blocks (n/32 of them) by quantize_row(DType::Q8_0, ...).
float dot_q8_0_q8_0(const BlockQ8_0* w, const BlockQ8_0* x, int64_t n);
float dot_q4_0_q8_0(const BlockQ4_0* w, const BlockQ8_0* x, int64_t n);
namespace ref {
float dot_q8_0_q8_0(const BlockQ8_0* w, const BlockQ8_0* x, int64_t n);
float dot_q4_0_q8_0(const BlockQ4_0* w, const BlockQ8_0* x, int64_t n);
}  // namespace ref

}  // namespace m3
