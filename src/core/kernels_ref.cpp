/*
Reference kernels: the model's numeric ops written as plainly as possible.

What this is: the oracle. Each function here is the definition of its op; tests/test_kernels.cpp
checks the fast versions (src/core/kernels.cpp) against these on random inputs. They are scalar,
single-threaded, and accumulate in double where a sum is long, so that their own rounding error is
far below the tolerances the tests allow the fast ones.

What this is not: fast, or used by the model at run time. Do not optimise this file; if an op is
unclear, make it clearer here first.

Shapes (see kernels.h): M rows of activations, K input width, N output width, H heads, D head dim.
*/
#include <cmath>
#include <vector>

#include "m3/error.h"
#include "m3/kernels.h"

namespace m3::ref {

float dot_row(DType t, const void* w_row, const float* x, int64_t n) {
  // w_row (n elements of type t), x (n floats)
  std::vector<float> w(static_cast<size_t>(n));
  dequantize_row(t, w_row, w.data(), n);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(w[i]) * x[i];
  return static_cast<float>(sum);
}

void matmul(const TensorView& W, const float* x, float* y, int64_t M) {
  // W (N, K) in any DType, x (M, K), y (M, N)
  const int64_t K = W.cols(), N = W.rows();
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) y[m * N + n] = dot_row(W.type, W.row(n), x + m * K, K);
  }
}

void rmsnorm(float* out, const float* x, const float* w, int64_t n, float eps) {
  // out (n), x (n), w (n)
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const double scale = 1.0 / std::sqrt(ss / static_cast<double>(n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(x[i] * scale) * w[i];
}

void rope(float* x, int64_t H, int64_t D, int64_t pos, float theta) {
  // x (H, D): each head's pairs (2i, 2i+1) are rotated by the angle pos * theta^(-2i/D)
  for (int64_t h = 0; h < H; ++h) {
    float* v = x + h * D;
    for (int64_t i = 0; i < D / 2; ++i) {
      const double freq = std::pow(static_cast<double>(theta), -2.0 * static_cast<double>(i) / D);
      const double angle = static_cast<double>(pos) * freq;
      const float c = static_cast<float>(std::cos(angle)), s = static_cast<float>(std::sin(angle));
      const float a = v[2 * i], b = v[2 * i + 1];
      v[2 * i] = a * c - b * s;
      v[2 * i + 1] = a * s + b * c;
    }
  }
}

void softmax(float* x, int64_t n) {
  // x (n), in place; subtracting the max keeps exp() from overflowing and changes nothing else
  if (n <= 0) return;
  float max = x[0];
  for (int64_t i = 1; i < n; ++i) max = x[i] > max ? x[i] : max;
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    sum += x[i];
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void swiglu(float* out, const float* gate, const float* up, int64_t n) {
  // out (n), gate (n), up (n)
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void embedding(const TensorView& table, int32_t token, float* out) {
  // table (V, K) in any DType, out (K)
  if (token < 0 || token >= table.rows()) {
    throw Error("embedding '" + table.name + "': token " + std::to_string(token) +
                " out of range [0, " + std::to_string(table.rows()) + ")");
  }
  dequantize_row(table.type, table.row(token), out, table.cols());
}

// The quantized dots are ggml's scalar definitions: an exact integer dot product per 32-element
// block, scaled by the product of the two block scales, summed in float in block order. The sum
// step is written as std::fma (one rounding): compilers fuse `sum += sumi * scale` into an fma on
// FMA targets anyway, and spelling it out makes the oracle the same under every compiler and
// flag, so the GEMV (kernels.cpp), which does the same steps per row, can match it bit for bit.

float dot_q8_0_q8_0(const BlockQ8_0* w, const BlockQ8_0* x, int64_t n) {
  // w (n/32 blocks), x (n/32 blocks)
  float sum = 0.0f;
  for (int64_t b = 0; b < n / kQuantBlock; ++b) {
    int sumi = 0;
    for (int j = 0; j < kQuantBlock; ++j) sumi += w[b].qs[j] * x[b].qs[j];
    sum = std::fma(static_cast<float>(sumi), fp16_to_fp32(w[b].d) * fp16_to_fp32(x[b].d), sum);
  }
  return sum;
}

float dot_q4_0_q8_0(const BlockQ4_0* w, const BlockQ8_0* x, int64_t n) {
  // w (n/32 blocks), x (n/32 blocks); w's byte j holds element j (low nibble) and j+16 (high)
  float sum = 0.0f;
  for (int64_t b = 0; b < n / kQuantBlock; ++b) {
    int sumi = 0;
    for (int j = 0; j < kQuantBlock / 2; ++j) {
      const int lo = (w[b].qs[j] & 0x0F) - 8, hi = (w[b].qs[j] >> 4) - 8;
      sumi += lo * x[b].qs[j] + hi * x[b].qs[j + 16];
    }
    sum = std::fma(static_cast<float>(sumi), fp16_to_fp32(w[b].d) * fp16_to_fp32(x[b].d), sum);
  }
  return sum;
}

}  // namespace m3::ref
