// m3/trainer.h — training runs (stage 1 pretraining, stage 2 continual training with memory): a config (TOML or flags), a training loop with a
// progress bar, a CSV log, validation, atomic checkpoints and exact resume, and GGUF export.
//
// A run is a directory:
//   config.toml            the run's full config as resolved (written at the start; a resumed run
//                          must match it on everything that changes the numbers)
//   log.csv                step,tokens,lr,loss,val_loss,grad_norm,tokens_per_s,elapsed_s — one row
//                          per step; val_loss empty when not evaluated at that step
//   checkpoints/latest     the name of the newest complete checkpoint ("step-00001200")
//   checkpoints/step-N/    model.gguf (f32 weights + tokenizer), optimizer.bin (AdamW state),
//                          state.json (step, data cursor, seed, elapsed time). Built in step-N.tmp,
//                          fsynced, renamed; only then does `latest` move (atomically).
//   model.gguf             the exported model (at the end), in config.export_type
//   loss.svg               the loss curves (at the end)
//
// Stage 2 (train.stage = 2, decisions.md "Training"): the run starts from a stage-1 model
// (model.init). The knowledge base (memory.kb) is split into references (≤ reference_length
// tokens) and indexed for bm25 in <run>/kb/ (rebuilt at every start: a function of the kb file).
// Each 64-token chunk of a training window retrieves with its own text and reads the best hit
// whose Eq. 6 overlap with the window is ≤ 0.9; it attends to its own and the previous four
// chunks' references, written on the fly by the current weights (TrainableModel::
// memory_forward_backward). Validation loss is measured the same way (with memory).
//
// Exact resume: the batch of step s is a pure function of (seed, s) (WindowSampler), the learning
// rate of s, and the weights and optimizer state are restored bit for bit, so a resumed run logs
// the same losses as an uninterrupted one with the same thread count.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "m3/config.h"
#include "m3/train.h"

namespace m3 {

struct TrainConfig {
  // [model]
  std::string preset = "memory3-tiny";
  int layers = 0, dim = 0, heads = 0, kv_heads = 0, head_dim = 0, ffn = 0, context = 0;  // 0: the preset's
  int memory_layers = -1;   // -1: the preset's rule (first half)
  std::string init;         // start from this model file's weights instead of random ones
  // [data]
  std::string data;         // token dataset directory (m3 data tokenize)
  // [train]
  int stage = 1;            // 1: plain LM; 2: continual training with memory (needs model.init, memory.kb)
  int batch = 8;            // sequences per micro-batch
  int seq_len = 256;
  int grad_accum = 1;       // micro-batches per step
  int64_t steps = 0;        // total steps; 0: derived from tokens
  int64_t tokens = 0;       // total training tokens (used when steps == 0)
  float lr = 1e-3f, min_lr = 1e-4f;
  int64_t warmup = 100;
  float decay_fraction = 0.1f;
  float weight_decay = 0.1f, grad_clip = 1.0f, beta1 = 0.9f, beta2 = 0.95f;
  uint64_t seed = 1;
  int threads = 0;          // 0: all cores
  // [memory] (stage 2)
  std::string kb;           // knowledge base the chunks retrieve from (a path m3 memorize --kb reads)
  int retrieve_k = 8;       // bm25 candidates per chunk; the best one that does not leak is read
  int references_per_chunk = 1;  // own references per chunk (1: the paper; up to memories_per_chunk)
  // [eval]
  int64_t eval_interval = 100;  // steps; 0: only at the end
  int64_t eval_tokens = 65536;  // validation tokens per evaluation (whole windows, from the start of the split)
  // [checkpoint]
  int64_t checkpoint_interval = 100;  // steps; 0: only at the end
  int keep_checkpoints = 2;
  // [output]
  std::string out;          // run directory
  std::string export_type = "f32";

  int64_t tokens_per_step() const { return static_cast<int64_t>(batch) * grad_accum * seq_len; }
};

// Reads a TOML config. Throws m3::Error naming the file, the key and the problem for a syntax
// error, an unknown section or key, or a value of the wrong type.
TrainConfig load_train_config(const std::string& path);
// The config as TOML that load_train_config reads back to an equal config.
std::string to_toml(const TrainConfig& config);
// Checks values that can be checked without data (positive sizes, export type, ...).
void validate(const TrainConfig& config);

struct TrainStep {
  int64_t step = 0;        // steps completed (1 after the first update)
  int64_t tokens = 0;      // training tokens consumed so far
  float lr = 0, loss = 0, val_loss = -1;  // val_loss < 0: not evaluated at this step
  double grad_norm = 0, tokens_per_s = 0, elapsed_s = 0;
};

struct TrainResult {
  int64_t steps_done = 0;         // total steps completed in the run so far
  int64_t resumed_at = -1;        // the checkpoint step this call continued from (-1: a new run)
  bool finished = false;          // reached the configured total
  float final_val_loss = -1;
  std::string model_path;         // exported model (when finished)
};

struct TrainRunOptions {
  bool resume = false;            // continue the run in config.out from its latest checkpoint
  int64_t stop_after = -1;        // stop (after checkpointing) once this many steps are done; tests
  bool progress = true;           // progress bar on stderr
  std::function<void(const TrainStep&)> on_step;  // called after every step (and its log row)
  std::function<void(int64_t resumed_at)> on_start;  // before the first step; -1 for a new run
};

// Runs (or resumes) the run. Everything about data, shapes and the run directory is checked
// before the first step; errors are m3::Error naming the file or key at fault.
TrainResult train(const TrainConfig& config, const TrainRunOptions& options);

// The model shape a config asks for, with vocab_size set to `vocab_size` (the data's).
ModelConfig resolve_model_config(const TrainConfig& config, int vocab_size);

}  // namespace m3
