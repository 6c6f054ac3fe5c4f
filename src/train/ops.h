// train/ops.h — the layers of the training forward pass, each a forward/backward pair.
//
// Conventions (llm.c's):
//   - activations are row-major [N, ...] with N = B·T token rows (b major, t minor);
//   - a weight W of a linear layer is [OC, IC] (llama.cpp's layout, y = x·Wᵀ);
//   - every *_backward ADDS into its gradient outputs (d-inputs and d-weights), so the caller
//     zeroes an activation gradient once and several consumers can accumulate into it;
//     the one exception is crossentropy_backward, the start of the chain, which writes.
//   - pool may be null (single-threaded); OpenBLAS runs single-threaded inside the pool's threads.
#pragma once

#include <cstdint>
#include <vector>

#include "m3/thread_pool.h"

namespace m3::train {

// Runs fn(begin, end) over [0, n) on the pool, or inline when pool is null.
template <class Fn>
void parallel(ThreadPool* pool, int64_t n, Fn&& fn) {
  if (pool) pool->parallel_for(n, [&](int64_t b, int64_t e, int) { fn(b, e); });
  else if (n > 0) fn(0, n);
}

// ---- embedding: out[n] = table[tokens[n]]            out (N,C), table (V,C)
void embedding_forward(float* out, const int32_t* tokens, const float* table, int64_t N, int64_t C);
void embedding_backward(float* dtable, const float* dout, const int32_t* tokens, int64_t N, int64_t C);

// ---- rmsnorm: out = x / sqrt(mean(x²) + eps) · w     inp, out (N,C), weight (C), rstd (N) saved
void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int64_t N, int64_t C, float eps,
                     ThreadPool* pool);
void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                      const float* rstd, int64_t N, int64_t C);

// ---- matmul: out = inp · weightᵀ                     inp (N,IC), weight (OC,IC), out (N,OC)
// OpenBLAS sgemm, rows (or weight rows, for dweight) split over the pool.
void matmul_forward(float* out, const float* inp, const float* weight, int64_t N, int64_t IC, int64_t OC, ThreadPool* pool);
void matmul_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight, int64_t N,
                     int64_t IC, int64_t OC, ThreadPool* pool);

// ---- rope: rotate adjacent pairs (2i, 2i+1) of every head by angle (pos0 + t)·theta^(−2i/D),
// t = the row's index in its sequence. In place on x (B,T,nh,D).
struct RopeTable {
  int64_t T = 0, D = 0;
  std::vector<float> cos, sin;  // (T, D/2), angles computed in double as m3::rope does
};
RopeTable rope_table(int64_t T, int64_t D, float theta, int64_t pos0 = 0);
void rope_forward(float* x, const RopeTable& rope, int64_t B, int64_t nh);
void rope_backward(float* dx, const RopeTable& rope, int64_t B, int64_t nh);

// ---- causal grouped-query attention, optionally beside external keys and values
//   q (B,T,H,D), k v (B,T,G,D), out (B,T,H,D); g = h / (H/G).
//   Query rows go in blocks of `block` rows (a retrieval chunk). Rows of block c of sequence b
//   attend, in ONE softmax, to the block's external rows (AttentionExt: the prefix and the
//   chunk's memories, already rotated) and to their own causal keys s ≤ t:
//     out[b,t,h] = Σ_e att[b,h,t,e]·ext_v[b,c,e,g] + Σ_{s≤t} att[b,h,t,E+s]·v[b,s,g]
//   att (B,H,T,S) with S = E + T, E = ext.max_rows: columns [0, ext rows) the external keys,
//   [E, E+t] the own keys; the rest is 0 up to the end of t's block, unspecified after.
// Forward splits (b, h) over the pool; backward splits (b, g) so the query group's dk/dv (and
// d ext) sums stay in one thread. scratch: attention_scratch_floats(T, E, pool) floats.
struct AttentionExt {
  int64_t block = 64;          // query rows per block; every block has its own external rows
  int64_t max_rows = 0;        // E: external rows per block at most (0: plain causal attention)
  const float* k = nullptr;    // (B, n_blocks, E, G·D), n_blocks = ceil(T / block)
  const float* v = nullptr;
  const int32_t* rows = nullptr;  // (B, n_blocks): the block's external rows in use (≤ E)
  float* dk = nullptr;         // backward adds d k, d v of the external rows here (same layout)
  float* dv = nullptr;
};
int64_t attention_scratch_floats(int64_t T, int64_t E, const ThreadPool* pool);
void attention_forward(float* out, float* att, const float* q, const float* k, const float* v, int64_t B, int64_t T,
                       int64_t H, int64_t G, int64_t D, const AttentionExt& ext, ThreadPool* pool);
void attention_backward(float* dq, float* dk, float* dv, float* scratch, const float* dout, const float* q, const float* k,
                        const float* v, const float* att, int64_t B, int64_t T, int64_t H, int64_t G, int64_t D,
                        const AttentionExt& ext, ThreadPool* pool);
// Plain causal attention (no external rows, blocks of 64): att (B,H,T,T).
inline int64_t attention_scratch_floats(int64_t T, const ThreadPool* pool) { return attention_scratch_floats(T, 0, pool); }
inline void attention_forward(float* out, float* att, const float* q, const float* k, const float* v, int64_t B,
                              int64_t T, int64_t H, int64_t G, int64_t D, ThreadPool* pool) {
  attention_forward(out, att, q, k, v, B, T, H, G, D, AttentionExt{}, pool);
}
inline void attention_backward(float* dq, float* dk, float* dv, float* scratch, const float* dout, const float* q,
                               const float* k, const float* v, const float* att, int64_t B, int64_t T, int64_t H,
                               int64_t G, int64_t D, ThreadPool* pool) {
  attention_backward(dq, dk, dv, scratch, dout, q, k, v, att, B, T, H, G, D, AttentionExt{}, pool);
}

// ---- swiglu: out = silu(gate) · up, silu(g) = g·σ(g)     all (n) elementwise
void swiglu_forward(float* out, const float* gate, const float* up, int64_t n, ThreadPool* pool);
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n,
                     ThreadPool* pool);

// ---- cross-entropy over a softmax: losses[n] = −log softmax(logits[n])[targets[n]]
//   logits, probs (N,V) (probs may alias logits), losses (N); target −1: loss 0, no gradient.
// Returns the sum of the losses (double). Throws m3::Error for a target outside −1..V−1.
double crossentropy_forward(float* probs, float* losses, const float* logits, const int32_t* targets, int64_t N, int64_t V,
                            ThreadPool* pool);
// dlogits = (probs − onehot(target)) · dloss for every non-ignored row, 0 for ignored rows.
// WRITES dlogits (may alias probs): the loss is where backward starts.
void crossentropy_backward(float* dlogits, const float* probs, const int32_t* targets, float dloss, int64_t N, int64_t V,
                           ThreadPool* pool);

}  // namespace m3::train
