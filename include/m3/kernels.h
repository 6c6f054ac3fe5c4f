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

// Fast versions, same contracts. pool may be null (single-threaded).
// matmul: M == 1 uses m3's own SIMD GEMV split over rows (Q8_0/Q4_0 quantize x to Q8_0 blocks
// and use integer dot products, as llama.cpp does); M > 1 uses OpenBLAS sgemm (quantized and
// half-precision weights are dequantized tile by tile).
void matmul(const TensorView& W, const float* x, float* y, int64_t M, ThreadPool* pool);
void rmsnorm(float* out, const float* x, const float* w, int64_t n, float eps);
void rope(float* x, int64_t H, int64_t D, int64_t pos, float theta);
void softmax(float* x, int64_t n);
void swiglu(float* out, const float* gate, const float* up, int64_t n);
void embedding(const TensorView& table, int32_t token, float* out);

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
