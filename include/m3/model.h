// m3/model.h — a model file: its config, its weights (views into the mapped GGUF) and its
// tokenizer; plus creating (init), quantizing and saving model files.
//
// Tensor names are llama.cpp's, so GGUF tooling understands our files and plain Llama GGUFs load:
//   token_embd.weight [V,C]   output_norm.weight [C]   output.weight [V,C] (absent when tied)
//   blk.N.{attn_norm [C], attn_q [H·D,C], attn_k [G·D,C], attn_v [G·D,C], attn_output [C,H·D],
//          ffn_norm [C], ffn_gate [F,C], ffn_up [F,C], ffn_down [C,F]}.weight
// (shapes written [rows, cols]; in GGUF's ne order they are {cols, rows}).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "m3/config.h"
#include "m3/gguf.h"
#include "m3/tensor.h"
#include "m3/tokenizer.h"

namespace m3 {

struct LayerWeights {
  TensorView attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down;
};

class Model {
 public:
  // Maps the file, reads the config, checks every tensor's presence, type and shape, and loads
  // the tokenizer when the file carries one. Throws m3::Error naming the file and the problem.
  // mode: FileLoad::Read (default) makes the kernels' copies of the weight matrices at once
  // (prepare_kernels); FileLoad::Map only maps the file (fast start for inspect, quantize, init
  // from a model) and leaves prepare_kernels to the first Forward.
  static std::unique_ptr<Model> load(const std::string& path, FileLoad mode = FileLoad::Read);

  // Makes the copies of the weight matrices (layers and output) that the kernels read, once;
  // thread-safe, and Forward's constructor calls it. Q8_0/Q4_0 matrices get a packed copy
  // (TensorView::packed, the 8-row interleaved layout of m3/kernels.h), in both modes. With
  // FileLoad::Read the f32/f16/bf16 matrices are also copied out of the mapped file, and `data`
  // points at the copy: decode streams every weight per token, and huge pages save the TLB misses
  // of 4 KiB file pages (f32 1.1B: 3.9 -> 14.3 tok/s). `data` of a quantized matrix keeps ggml's
  // layout in the mapped file, for everything that is not a kernel (the reference writer,
  // training init, fingerprints). Memory: about the size of the matrices, plus the page cache.
  void prepare_kernels() const;

  const ModelConfig& config() const { return config_; }
  const Tokenizer* tokenizer() const { return tokenizer_.get(); }  // null when the file has none
  const GGUFFile& file() const { return *file_; }
  // Hex XXH3-64 of the config and every tensor's bytes; stored at save time (m3.fingerprint) and
  // used by memory banks to refuse memories written by other weights.
  const std::string& fingerprint() const { return fingerprint_; }
  std::string compute_fingerprint() const;

  TensorView token_embd, output_norm, output;
  std::vector<LayerWeights> layers;

 private:
  Model() = default;
  std::unique_ptr<GGUFFile> file_;
  ModelConfig config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::string fingerprint_;
  FileLoad mode_ = FileLoad::Read;
  mutable std::once_flag kernels_once_;
  mutable std::vector<Buffer> kernel_copies_;
};

// Weights held in memory (for init, quantize, and later training export).
struct OwnedTensor {
  std::string name;
  DType type = DType::F32;
  std::vector<int64_t> ne;  // GGUF order
  Buffer data;
};

// Writes a model file: config, memory hyperparameters, tokenizer (serialized SentencePiece proto,
// may be empty) and tensors in the given order. Computes and stores the fingerprint.
void save_model(const std::string& path, const ModelConfig& config, const std::string& tokenizer_proto,
                const std::vector<OwnedTensor>& tensors);

// Random initialisation (normal, std 0.02; output projections scaled by 1/sqrt(2L); norms 1),
// f32, deterministic for a seed.
std::vector<OwnedTensor> init_weights(const ModelConfig& config, uint64_t seed);

// Converts a model file's weight matrices to `type` (norm vectors stay f32); writes `out_path`.
void quantize_model(const std::string& in_path, const std::string& out_path, DType type);

// The fingerprint of a config plus tensors (the same function Model::compute_fingerprint uses).
std::string fingerprint_of(const ModelConfig& config, const std::vector<const TensorView*>& tensors);

}  // namespace m3
