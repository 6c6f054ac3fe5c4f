// m3/config.h — the shape of a model and its explicit-memory hyperparameters.
//
// Letters used in shapes throughout m3: L layers, C model width, H query heads, G KV heads,
// D head dim, F MLP width, V vocabulary.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace m3 {

// Memory³ hyperparameters (decisions.md "Model"); stored in the model file under memory3.memory.*.
struct MemoryConfig {
  int memory_layers = 0;           // the first memory_layers layers read memories (a prefix of layers)
  int reference_length = 128;      // tokens per reference (knowledge chunk), at most
  int tokens_per_head = 8;         // tokens kept per (layer, KV head)
  int chunk_length = 64;           // context tokens per retrieval chunk
  int memories_per_chunk = 5;      // memories retrieved per chunk
  std::string prefix_text = "<s>Reference:";  // literal text, BOS + tokens of "Reference:"
};

struct ModelConfig {
  std::string architecture = "memory3";  // "memory3" or "llama" (plain Llama-family files load too)
  std::string name;
  int n_layers = 0;       // L
  int dim = 0;            // C
  int n_heads = 0;        // H
  int n_kv_heads = 0;     // G
  int head_dim = 0;       // D
  int ffn_dim = 0;        // F
  int vocab_size = 0;     // V
  int context_length = 0; // maximum positions
  float rms_eps = 1e-5f;
  float rope_theta = 10000.0f;
  bool tied_embeddings = false;
  MemoryConfig memory;

  // Throws m3::Error naming the field when the shape is impossible (e.g. H not a multiple of G).
  void validate() const;
  int64_t parameter_count() const;        // all weights, embeddings included
  int64_t non_embedding_parameters() const;
  std::string summary() const;            // one line: "L=44 C=3200 H=40 G=8 D=80 F=3200 V=60416 ctx=2048 ..."
};

// Named shapes. memory3-2.4b is the paper's model; the others fit this machine.
ModelConfig model_preset(const std::string& name);  // throws m3::Error listing the known names
std::vector<std::string> model_preset_names();

}  // namespace m3
