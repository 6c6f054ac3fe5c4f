// train/activations.h — what TrainableModel keeps between its forward and backward (stage 1 and
// stage 2); private to src/train.
#pragma once

#include <cstdint>
#include <vector>

#include "m3/train.h"
#include "train/layer_stack.h"
#include "train/ops.h"

namespace m3 {

// Stage 1: every layer over the B·T tokens, then the head. Allocated once per (B, T).
struct TrainableModel::Activations {
  train::LayerStack stack;
  Head head;
};

// Stage 2: three stacks. The prefix (all layers, positions 0..p−1); the references (R padded to
// Tr rows, memory layers only, each behind the prefix); the context (all layers, each chunk
// beside the prefix and its memories). External rows are gathered copies; their gradients are
// scattered back to the stack that produced them.
struct TrainableModel::MemoryActivations {
  int p = 0, R = 0, Tr = 0, n_chunks = 0;
  int64_t E = 0;  // context external rows per chunk at most
  train::LayerStack prefix, refs, ctx;
  Head head;
  std::vector<int32_t> ref_tokens;     // [R·Tr], padded after each reference's length
  std::vector<int32_t> ref_len;        // [R]
  std::vector<int32_t> kept;           // [R][Lm][G][K]: kept token index, ascending; −1 unused
  std::vector<int32_t> kept_count;     // [R] = min(K, length)
  mutable std::vector<int32_t> kept_view;
  // the references' external rows (the prefix), one block per reference: [Lm][R][p][G·D]
  std::vector<float> ref_ext_k, ref_ext_v, ref_ext_dk, ref_ext_dv;
  std::vector<int32_t> ref_ext_rows;   // [R] = p
  std::vector<train::AttentionExt> ref_ext;  // per memory layer
  // the context's external rows: [L][B][n_chunks][E][G·D], rows [L][B][n_chunks]
  std::vector<float> ctx_ext_k, ctx_ext_v, ctx_ext_dk, ctx_ext_dv;
  std::vector<int32_t> ctx_ext_rows;
  std::vector<train::AttentionExt> ctx_ext;  // per layer
  // gradients of the post-RoPE keys/values sent back: to the references [Lm][R·Tr][G·D] and
  // to the prefix [L][p][G·D]
  std::vector<float> inj_ref_k, inj_ref_v, inj_pre_k, inj_pre_v;
};

}  // namespace m3
