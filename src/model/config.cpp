// Model shapes and presets.
#include "m3/config.h"

#include <sstream>

#include "m3/error.h"

namespace m3 {

void ModelConfig::validate() const {
  auto positive = [](const char* field, int v) {
    if (v <= 0) throw Error(std::string("model config: ") + field + " must be > 0 (got " + std::to_string(v) + ")");
  };
  positive("n_layers", n_layers);
  positive("dim", dim);
  positive("n_heads", n_heads);
  positive("n_kv_heads", n_kv_heads);
  positive("head_dim", head_dim);
  positive("ffn_dim", ffn_dim);
  positive("vocab_size", vocab_size);
  positive("context_length", context_length);
  if (n_heads % n_kv_heads != 0)
    throw Error("model config: n_heads (" + std::to_string(n_heads) + ") must be a multiple of n_kv_heads (" +
                std::to_string(n_kv_heads) + ")");
  if (head_dim % 2 != 0) throw Error("model config: head_dim (" + std::to_string(head_dim) + ") must be even for RoPE");
  if (!(rms_eps > 0)) throw Error("model config: rms_eps must be > 0");
  if (!(rope_theta > 0)) throw Error("model config: rope_theta must be > 0");
  if (memory.memory_layers < 0 || memory.memory_layers > n_layers)
    throw Error("model config: memory.memory_layers (" + std::to_string(memory.memory_layers) + ") must be in 0.." +
                std::to_string(n_layers));
  if (memory.reference_length <= 0 || memory.tokens_per_head <= 0 || memory.tokens_per_head > memory.reference_length)
    throw Error("model config: memory.tokens_per_head must be in 1..reference_length");
  if (memory.chunk_length <= 0 || memory.memories_per_chunk < 0)
    throw Error("model config: memory.chunk_length must be > 0 and memories_per_chunk >= 0");
}

int64_t ModelConfig::non_embedding_parameters() const {
  const int64_t C = dim, Q = int64_t(n_heads) * head_dim, KV = int64_t(n_kv_heads) * head_dim, F = ffn_dim;
  const int64_t per_layer = C * Q + 2 * C * KV + Q * C + 3 * C * F + 2 * C;
  return per_layer * n_layers + C;
}

int64_t ModelConfig::parameter_count() const {
  return non_embedding_parameters() + int64_t(vocab_size) * dim * (tied_embeddings ? 1 : 2);
}

std::string ModelConfig::summary() const {
  std::ostringstream s;
  s << "arch=" << architecture << " L=" << n_layers << " C=" << dim << " H=" << n_heads << " G=" << n_kv_heads
    << " D=" << head_dim << " F=" << ffn_dim << " V=" << vocab_size << " ctx=" << context_length
    << " memory_layers=" << memory.memory_layers << " params=" << parameter_count();
  return s.str();
}

namespace {
ModelConfig make(const char* name, int L, int C, int H, int G, int D, int F, int V, int ctx) {
  ModelConfig c;
  c.name = name;
  c.n_layers = L;
  c.dim = C;
  c.n_heads = H;
  c.n_kv_heads = G;
  c.head_dim = D;
  c.ffn_dim = F;
  c.vocab_size = V;
  c.context_length = ctx;
  c.memory.memory_layers = L / 2;  // the first half (spec §2.1)
  return c;
}
}  // namespace

std::vector<std::string> model_preset_names() {
  return {"memory3-2.4b", "memory3-1b", "memory3-small", "memory3-tiny", "memory3-test"};
}

ModelConfig model_preset(const std::string& name) {
  // The paper's Memory3-2B: 44 layers, width 3200, 40 heads / 8 KV heads of 80, MLP 3200.
  if (name == "memory3-2.4b") return make("memory3-2.4b", 44, 3200, 40, 8, 80, 3200, 60416, 2048);
  // A TinyLlama-1.1B-shaped model: the benchmark shape llama.cpp's figures use.
  if (name == "memory3-1b") return make("memory3-1b", 22, 2048, 32, 4, 64, 5632, 32000, 2048);
  // ~25M parameters: what two CPU cores can pretrain in hours.
  if (name == "memory3-small") return make("memory3-small", 8, 384, 6, 2, 64, 1024, 4096, 1024);
  // ~3M parameters: seconds-to-minutes experiments.
  if (name == "memory3-tiny") return make("memory3-tiny", 4, 128, 4, 2, 32, 384, 1024, 512);
  // A minute model for tests and goldens.
  if (name == "memory3-test") return make("memory3-test", 2, 64, 4, 2, 16, 160, 512, 256);
  std::string known;
  for (auto& n : model_preset_names()) known += (known.empty() ? "" : ", ") + n;
  throw Error("unknown model preset '" + name + "' (known: " + known + ")");
}

}  // namespace m3
