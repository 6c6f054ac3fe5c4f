// m3/train.h — the numerical core of stage-1 training (decisions.md "Training"): an f32 copy of
// a model's weights with a gradient buffer of the same layout, one causal-LM forward + backward,
// AdamW with global-norm clipping, and the warmup-stable-decay learning-rate schedule.
//
// What it is: the clean, readable CPU reference for training, f32 everywhere, every op a
// forward/backward pair (src/train/ops.h), checked against the PyTorch oracle
// (tools/reference/train_reference.py) and by finite differences (tests/test_train.cpp).
// Stage 2 (memory_forward_backward): the same model reading explicit memories that it writes
// itself in the same step, gradients flowing through the kept keys and values (src/train/
// memory_train.cpp; oracle tools/reference/stage2_reference.py).
// What it is not (yet): mixed precision, a data loader.
//
// Shapes, one letter per dimension: B sequences, T tokens per sequence, N = B·T, L layers,
// C model width, H query heads, G KV heads, D head dim, F MLP width, V vocabulary.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "m3/config.h"
#include "m3/model.h"
#include "m3/tensor.h"
#include "m3/thread_pool.h"

namespace m3 {

// One named tensor inside TrainableModel's flat buffers.
struct ParamTensor {
  std::string name;          // llama.cpp name, e.g. "blk.0.attn_q.weight"
  std::vector<int64_t> ne;   // GGUF order: ne[0] innermost (a [rows, cols] matrix is {cols, rows})
  int64_t offset = 0;        // first float of this tensor in params() / grads()
  int64_t size = 0;          // elements
  bool is_vector() const { return ne.size() == 1; }  // norm weights
};

// Pointers into one of the flat buffers (parameters or gradients), per tensor.
struct LayerParams {
  float* attn_norm;  // [C]
  float* wq;         // [H·D, C]
  float* wk;         // [G·D, C]
  float* wv;         // [G·D, C]
  float* wo;         // [C, H·D]
  float* ffn_norm;   // [C]
  float* w_gate;     // [F, C]
  float* w_up;       // [F, C]
  float* w_down;     // [C, F]
};
struct ParamViews {
  float* token_embd;   // [V, C]
  float* output_norm;  // [C]
  float* output;       // [V, C]; == token_embd when the embeddings are tied
  std::vector<LayerParams> layers;
};

// One stage-2 batch (decisions.md "Training"): B context sequences of T tokens and the references
// their chunks read. The prefix ("<s>Reference:" as tokens, p of them) sits at positions 0..p−1;
// reference token j at p+j; context token t at p + reference_length + t. Context chunk c = rows
// [c·chunk_length, (c+1)·chunk_length) attends at the memory layers to the memories of
// chunk_refs[b][c] (indices into references), written on the fly by the current weights: each
// reference encoded causally behind the prefix through the memory layers, its top
// tokens_per_head tokens per (layer, KV head) kept (importance as in m3/memory_writer.h; the
// choice is not differentiated, the kept keys and values are).
struct MemoryBatch {
  int B = 0, T = 0;
  std::vector<int32_t> prefix;                            // p ≥ 1 tokens
  std::vector<int32_t> tokens, targets;                   // [B·T]; target −1: ignored
  std::vector<std::vector<int32_t>> references;           // 1..reference_length tokens each, no BOS
  std::vector<std::vector<std::vector<int32_t>>> chunk_refs;  // [B][n_chunks or fewer] reference indices
};

// The model's weights as f32 in one contiguous buffer, in init_weights()'s tensor order
// (token_embd, per layer attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate,
// ffn_up, ffn_down, then output_norm, output), and a gradient buffer of the same layout.
// Not thread-safe: one forward_backward at a time (it uses the pool itself).
class TrainableModel {
 public:
  // Random init, bit-identical to init_weights(config, seed) (and so to `m3 init --seed`).
  TrainableModel(const ModelConfig& config, uint64_t seed);
  // The weights of a loaded model, dequantized to f32.
  explicit TrainableModel(const Model& model);
  ~TrainableModel();
  TrainableModel(const TrainableModel&) = delete;
  TrainableModel& operator=(const TrainableModel&) = delete;

  const ModelConfig& config() const { return config_; }
  const std::vector<ParamTensor>& tensors() const { return tensors_; }
  const ParamTensor& tensor(const std::string& name) const;  // throws m3::Error for an unknown name
  int64_t size() const { return n_params_; }                 // parameters, all tensors

  float* params() { return params_.as<float>(); }
  const float* params() const { return params_.as<float>(); }
  float* grads() { return grads_.as<float>(); }
  const float* grads() const { return grads_.as<float>(); }
  float* param(const std::string& name) { return params() + tensor(name).offset; }
  float* grad(const std::string& name) { return grads() + tensor(name).offset; }
  ParamViews param_views() { return views(params()); }
  ParamViews grad_views() { return views(grads()); }

  // The pool forward_backward splits its work over (null: single-threaded). OpenBLAS is set to
  // one thread, so the pool is the only source of parallelism.
  void set_thread_pool(ThreadPool* pool) { pool_ = pool; }

  void zero_grad();

  // Causal LM on B sequences of T tokens (tokens and targets are [B, T], positions 0..T-1 in
  // every sequence). Returns the mean cross-entropy over the targets that are not -1 (ignored)
  // and ADDS the gradient of
  //     sum of the per-target losses / loss_denominator
  // into grads(), so micro-batches accumulate. loss_denominator <= 0 means "this call's count of
  // non-ignored targets" (the gradient of the returned mean); give the whole batch's count when
  // accumulating, and the sum over micro-batches equals the full batch's gradient.
  // Throws m3::Error for a token or target outside the vocabulary or T > context_length.
  float forward_backward(const int32_t* tokens, const int32_t* targets, int B, int T, int64_t loss_denominator = 0);
  // The same loss without backward (evaluation); grads() untouched.
  float loss(const int32_t* tokens, const int32_t* targets, int B, int T);

  // Stage 2: the same contract as forward_backward for a MemoryBatch. Throws m3::Error for a bad
  // token, an out-of-range or too long reference, a model without memory layers, or positions
  // beyond the context length (p + reference_length + T).
  float memory_forward_backward(const MemoryBatch& batch, int64_t loss_denominator = 0);
  float memory_loss(const MemoryBatch& batch);
  // The kept token indices of reference r at memory layer l and KV head g after the last
  // memory_* call (ascending; min(tokens_per_head, length) of them). For tests and tools.
  const std::vector<int32_t>& kept_tokens(int r, int l, int g) const;

  // The weights as f32 tensors for save_model (tied models have no output.weight).
  std::vector<OwnedTensor> export_tensors() const;

 private:
  struct Activations;
  struct MemoryActivations;
  struct Head {  // output norm, logits, cross-entropy, and their gradients
    int64_t rows = 0;
    Buffer xo, rstd_o, logits, losses, dx, dres;
    void reserve(const ModelConfig& c, int64_t N);
  };
  void check_tokens(const int32_t* tokens, int64_t n, const char* what) const;
  float head_forward(Head& h, const float* res_last, const int32_t* targets, int64_t N);
  const float* head_backward(Head& h, const float* res_last, const int32_t* targets, int64_t N, int64_t loss_denominator);
  float memory_forward(const MemoryBatch& batch);
  void memory_backward(const MemoryBatch& batch, int64_t loss_denominator);
  void add(const std::string& name, std::vector<int64_t> ne);
  ParamViews views(float* base);
  void reserve(int B, int T);
  float forward(const int32_t* tokens, const int32_t* targets, int B, int T);
  void backward(const int32_t* tokens, const int32_t* targets, int B, int T, int64_t loss_denominator);

  ModelConfig config_;
  std::vector<ParamTensor> tensors_;
  int64_t n_params_ = 0;
  Buffer params_, grads_;
  ThreadPool* pool_ = nullptr;
  std::unique_ptr<Activations> acts_;  // sized for the largest (B, T) seen; reused across calls
  std::unique_ptr<MemoryActivations> mem_;  // stage 2
};

// Global L2 norm of all gradients (accumulated in double).
double grad_norm(const TrainableModel& model);
// Scales the gradients so their global norm is at most max_norm, as torch.nn.utils.clip_grad_norm_:
// scale = min(1, max_norm / (norm + 1e-6)). Returns the norm before clipping. max_norm <= 0: no-op.
double clip_grad_norm(TrainableModel& model, double max_norm);

struct AdamWConfig {
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.1f;       // decoupled; never applied to norm weights (1-D tensors)
  bool decay_embeddings = false;   // whether token_embd.weight decays (output.weight always does)
  float grad_clip = 1.0f;          // global-norm clipping before the update; <= 0: off
};

// AdamW (Loshchilov & Hutter), bias-corrected, with PyTorch's update order:
//   p ← p·(1 − lr·wd)                      (decayed tensors only)
//   m ← β1·m + (1−β1)·g,  v ← β2·v + (1−β2)·g²
//   p ← p − lr/(1−β1^t) · m / (sqrt(v)/sqrt(1−β2^t) + ε)
// State (step count, m, v) saves and loads byte-exactly, so a resumed run continues bit-for-bit.
class AdamW {
 public:
  AdamW(const TrainableModel& model, const AdamWConfig& config);

  // Clips (config.grad_clip), then updates every parameter at learning rate lr; grads are left
  // as clipped (zero_grad() is the caller's). Returns the gradient norm before clipping.
  double step(TrainableModel& model, float lr);

  int64_t step_count() const { return t_; }
  const AdamWConfig& config() const { return config_; }

  // Binary state: magic "M3ADAMW1", u64 parameter count, i64 step, f32 m[n], f32 v[n].
  std::string save_state() const;
  void load_state(const std::string& bytes);  // throws m3::Error on a wrong magic or size
  void save(const std::string& path) const;
  void load(const std::string& path);

 private:
  AdamWConfig config_;
  int64_t n_;
  int64_t t_ = 0;
  std::vector<float> m_, v_;
  std::vector<uint8_t> decay_;  // per parameter tensor, in model.tensors() order
  std::vector<std::pair<int64_t, int64_t>> ranges_;  // (offset, size) per tensor
};

// Warmup-stable-decay learning rate (MiniCPM's WSD; spec §4.2: the last ~10% decays fast).
// For the step about to be taken, s = 0, 1, ...:
//   s <  warmup_steps:      peak_lr · (s+1) / warmup_steps          (linear warmup, never 0)
//   s <  decay_start:       peak_lr                                  (stable)
//   s <  total_steps:       linear from peak_lr to min_lr: peak_lr + (min_lr − peak_lr) · (s+1−decay_start) / decay_steps
//   s >= total_steps:       min_lr                                   (the floor)
// with decay_steps = round(decay_fraction · total_steps) and decay_start = total_steps − decay_steps,
// so the last step runs at min_lr. The decay starts after the warmup at the earliest.
struct WSDSchedule {
  float peak_lr = 1e-3f;
  float min_lr = 0.0f;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  float decay_fraction = 0.1f;

  int64_t decay_start() const;
  float lr(int64_t step) const;
};

}  // namespace m3
