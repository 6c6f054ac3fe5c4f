// m3/bench.h — the speed measurements that `m3 bench` and the programs in bench/ share, so that
// every figure in docs/performance.md is measured one way: medians of several runs, next to this
// machine's limits measured in the same run (m3/probe.h).
//
// What each measures (T tokens, p0 cached positions, Lm memory layers):
//   decode    tokens/s of one-token steps after a short prompt, against the roofline
//             read bandwidth / bytes read per token (every matrix but the embedding table, + KV)
//   prefill   GFLOP/s of one batched Forward::eval over T tokens (weights 2·T per parameter,
//             causal attention 4·D per query, key and head, last token's logits)
//   memorize  GFLOP/s of MemoryWriter::write (the reference's tokens over the cached prefix, Lm
//             layers) and of the plain prefill of prefix + reference through the Lm layers
//   memory    decode tokens/s of a Session reading 5 memories per chunk from a bank (cache off)
//             against the same session without memories (the paper's Table 21 protocol)
//   train     training tokens/s (forward, backward, AdamW) against PyTorch on the same shape
// Speed goals live in the docs and the benchmarks, never in tests.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "m3/config.h"
#include "m3/dtype.h"
#include "m3/model.h"
#include "m3/thread_pool.h"

namespace m3::bench {

using Clock = std::chrono::steady_clock;
inline double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
// The median (mean of the middle two for an even count); 0 for none.
double median(std::vector<double> v);

// The source tree (data/embedded, tests/data, tools/reference): $M3_SOURCE_DIR, else the nearest
// parent of the running executable that holds data/embedded/moby-dick.txt; "" when neither.
std::string find_source_dir();

// A model of random weights for speed measurements (uniform values of std ~0.02: quick to make,
// meaningless to read), matrices stored as `type`, norms f32 ones, `tokenizer_proto` embedded
// when not empty (its vocabulary may be smaller than the config's).
void make_random_model(const std::string& path, const ModelConfig& c, DType type, const std::string& tokenizer_proto = "");

// Floating-point operations (2 per multiply-add) of a forward pass over T tokens after p0 cached
// positions through layers [0, n_layers): the weight matrices, causal attention (each query
// attends to p0 + t + 1 keys, plus extra_keys memories at the first extra_layers layers), and the
// output projection for logit_rows tokens.
double forward_flops(const ModelConfig& c, int64_t T, int64_t p0, int n_layers, int64_t logit_rows, int64_t extra_keys = 0,
                     int extra_layers = 0);

// Bytes one decoded token reads: every tensor but the embedding table, plus K and V of kv_len
// positions at every layer.
double decode_bytes_per_token(const Model& m, int kv_len);

struct DecodeResult {
  double tok_s = 0;            // median
  double bytes_per_token = 0;  // at the middle of the decoded span
};
// prompt_tokens then decode_tokens greedy steps, reps times after one warm-up run.
DecodeResult measure_decode(const Model& m, ThreadPool& pool, int prompt_tokens, int decode_tokens, int reps);

struct PrefillResult {
  int tokens = 0;
  double seconds = 0;  // median
  double gflops = 0;   // forward_flops / seconds
};
// One Forward::eval of `tokens` tokens from an empty cache (last token's logits), reps times after a warm-up.
PrefillResult measure_prefill(const Model& m, ThreadPool& pool, int tokens, int reps);

struct MemorizeResult {
  int refs = 0, reference_tokens = 0, prefix_tokens = 0, layers = 0;
  double write_refs_s = 0, write_gflops = 0;      // MemoryWriter::write
  double prefill_refs_s = 0, prefill_gflops = 0;  // Forward::eval(prefix + reference, Lm layers)
};
// bench_memorize's protocol: `refs` random references of reference_length tokens, reps times
// after a warm-up. The model needs a tokenizer (for the prefix) and memory layers.
MemorizeResult measure_memorize(const Model& m, ThreadPool& pool, int refs, int reps);

// A bf16 bank in `dir` of the first n_refs references (reference_length tokens) of `text`,
// written by MemoryWriter; kept when `dir` already holds one for this model with at least n_refs.
void ensure_bank(const Model& m, ThreadPool& pool, const std::string& dir, const std::string& text, int n_refs);

struct MemoryDecodeResult {
  double with_tok_s = 0, without_tok_s = 0;  // medians
  int64_t memories = 0;
  int per_chunk = 0;
};
// Decode speed of a Session over `prompt` (its first 64 tokens as the prompt, then
// decode_tokens steps fed with the prompt's tokens) reading the bank's memories (bm25, RAM cache
// off) vs no memories; reps alternating runs.
MemoryDecodeResult measure_memory_decode(const Model& m, ThreadPool& pool, const std::string& bank_dir,
                                         const std::vector<int32_t>& prompt, int decode_tokens, int reps);

struct TrainResult {
  double m3_tok_s = 0;
  double torch_tok_s = 0;    // 0 when PyTorch did not run
  std::string torch_status;  // "ran", or why it did not
};
// Training steps (forward, backward, AdamW) of a random model of shape c on B x T random tokens:
// the median of `steps` after one warm-up; with torch, the same shape, batch and threads through
// tools/reference/train_reference.py --bench under /usr/bin/python3 (skipped, with the reason in
// torch_status, when torch cannot be imported or the source tree is not found).
TrainResult measure_train(const ModelConfig& c, int B, int T, int threads, int steps, bool torch);

}  // namespace m3::bench
