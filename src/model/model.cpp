// Model files: load (validate every tensor), save, random init, quantize, fingerprint.
#include "m3/model.h"

#include <xxhash.h>

#include <cmath>
#include <cstring>
#include <random>

#include "m3/error.h"
#include "m3/kernels.h"

namespace m3 {

namespace {

const char* kTokenizerProtoKey = "tokenizer.sentencepiece.model";
const char* kFingerprintKey = "m3.fingerprint";

std::string layer_name(int l, const char* what) { return "blk." + std::to_string(l) + "." + what + ".weight"; }

// Reads the config from GGUF metadata; `arch` prefixes the keys (llama.cpp convention).
ModelConfig read_config(const GGUFFile& f) {
  ModelConfig c;
  c.architecture = f.get_string("general.architecture");
  if (c.architecture != "memory3" && c.architecture != "llama")
    throw Error(f.path() + ": unknown architecture '" + c.architecture + "' (m3 runs 'memory3' and 'llama')");
  const std::string a = c.architecture + ".";
  c.name = f.get_string_opt("general.name").value_or("");
  auto as_int = [&](const std::string& key) {
    const int64_t v = f.get_int(key);
    if (v <= 0 || v > (1 << 30)) throw Error(f.path() + ": metadata key '" + key + "' = " + std::to_string(v) + " is out of range");
    return static_cast<int>(v);
  };
  c.n_layers = as_int(a + "block_count");
  c.dim = as_int(a + "embedding_length");
  c.n_heads = as_int(a + "attention.head_count");
  c.n_kv_heads = f.get_int_opt(a + "attention.head_count_kv") ? as_int(a + "attention.head_count_kv") : c.n_heads;
  c.head_dim = f.get_int_opt(a + "attention.key_length") ? as_int(a + "attention.key_length") : c.dim / c.n_heads;
  c.ffn_dim = as_int(a + "feed_forward_length");
  c.context_length = as_int(a + "context_length");
  c.rms_eps = static_cast<float>(f.get_float_opt(a + "attention.layer_norm_rms_epsilon").value_or(1e-5));
  c.rope_theta = static_cast<float>(f.get_float_opt(a + "rope.freq_base").value_or(10000.0));
  const TensorView* embd = f.find_tensor("token_embd.weight");
  if (!embd) throw Error(f.path() + ": missing tensor 'token_embd.weight'");
  c.vocab_size = f.get_int_opt(a + "vocab_size") ? as_int(a + "vocab_size") : static_cast<int>(embd->ne[1]);
  c.tied_embeddings = f.find_tensor("output.weight") == nullptr;
  if (c.architecture == "memory3") {
    c.memory.memory_layers = static_cast<int>(f.get_int("memory3.memory.layer_count"));
    c.memory.reference_length = static_cast<int>(f.get_int("memory3.memory.reference_length"));
    c.memory.tokens_per_head = static_cast<int>(f.get_int("memory3.memory.tokens_per_head"));
    c.memory.chunk_length = static_cast<int>(f.get_int("memory3.memory.chunk_length"));
    c.memory.memories_per_chunk = static_cast<int>(f.get_int("memory3.memory.per_chunk"));
    c.memory.prefix_text = f.get_string("memory3.memory.prefix");
  } else {
    c.memory.memory_layers = 0;  // a plain Llama file has no memory layers
  }
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(f.path() + ": " + e.what());
  }
  return c;
}

TensorView require(const GGUFFile& f, const std::string& name, int64_t cols, int64_t rows) {
  const TensorView* t = f.find_tensor(name);
  if (!t) throw Error(f.path() + ": missing tensor '" + name + "'");
  const bool is_vector = rows == 0;
  const bool ok = is_vector ? (t->n_dims == 1 && t->ne[0] == cols)
                            : (t->n_dims == 2 && t->ne[0] == cols && t->ne[1] == rows);
  if (!ok) {
    const std::string want = is_vector ? "[" + std::to_string(cols) + "]"
                                       : "[" + std::to_string(cols) + ", " + std::to_string(rows) + "]";
    throw Error(f.path() + ": tensor '" + name + "' has shape " + t->shape_string() + ", expected " + want);
  }
  if (is_vector && t->type != DType::F32)
    throw Error(f.path() + ": tensor '" + name + "' is " + dtype_name(t->type) + ", norm weights must be f32");
  return *t;
}

}  // namespace

std::string fingerprint_of(const ModelConfig& c, const std::vector<const TensorView*>& tensors) {
  XXH3_state_t* st = XXH3_createState();
  XXH3_64bits_reset(st);
  const std::string cfg = c.summary() + " eps=" + std::to_string(c.rms_eps) + " theta=" + std::to_string(c.rope_theta);
  XXH3_64bits_update(st, cfg.data(), cfg.size());
  for (const TensorView* t : tensors) {
    XXH3_64bits_update(st, t->name.data(), t->name.size());
    const uint32_t type = static_cast<uint32_t>(t->type);
    XXH3_64bits_update(st, &type, sizeof(type));
    XXH3_64bits_update(st, t->ne.data(), sizeof(int64_t) * 4);
    XXH3_64bits_update(st, t->data, t->nbytes());
  }
  const uint64_t h = XXH3_64bits_digest(st);
  XXH3_freeState(st);
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::unique_ptr<Model> Model::load(const std::string& path, FileLoad mode) {
  std::unique_ptr<Model> m(new Model());
  // Always mapped: FileLoad::Read's copies are the kernels' own (prepare_kernels), so the matrices
  // are not held twice.
  m->file_ = GGUFFile::open(path, FileLoad::Map);
  m->mode_ = mode;
  const GGUFFile& f = *m->file_;
  m->config_ = read_config(f);
  const ModelConfig& c = m->config_;
  const int64_t C = c.dim, Q = int64_t(c.n_heads) * c.head_dim, KV = int64_t(c.n_kv_heads) * c.head_dim, F = c.ffn_dim;
  m->token_embd = require(f, "token_embd.weight", C, c.vocab_size);
  m->output_norm = require(f, "output_norm.weight", C, 0);
  m->output = c.tied_embeddings ? m->token_embd : require(f, "output.weight", C, c.vocab_size);
  for (int l = 0; l < c.n_layers; ++l) {
    LayerWeights w;
    w.attn_norm = require(f, layer_name(l, "attn_norm"), C, 0);
    w.wq = require(f, layer_name(l, "attn_q"), C, Q);
    w.wk = require(f, layer_name(l, "attn_k"), C, KV);
    w.wv = require(f, layer_name(l, "attn_v"), C, KV);
    w.wo = require(f, layer_name(l, "attn_output"), Q, C);
    w.ffn_norm = require(f, layer_name(l, "ffn_norm"), C, 0);
    w.w_gate = require(f, layer_name(l, "ffn_gate"), C, F);
    w.w_up = require(f, layer_name(l, "ffn_up"), C, F);
    w.w_down = require(f, layer_name(l, "ffn_down"), F, C);
    m->layers.push_back(std::move(w));
  }
  if (const GGUFValue* tok = f.find(kTokenizerProtoKey)) {
    if (tok->type != GGUFType::ARRAY || tok->array_type != GGUFType::UINT8)
      throw Error(path + ": metadata key '" + kTokenizerProtoKey + "' must be an array of uint8");
    m->tokenizer_ = Tokenizer::from_serialized(std::string(tok->bytes.begin(), tok->bytes.end()), path);
    if (m->tokenizer_->vocab_size() > c.vocab_size)
      throw Error(path + ": tokenizer has " + std::to_string(m->tokenizer_->vocab_size()) + " tokens but the model's vocabulary is " +
                  std::to_string(c.vocab_size));
  }
  m->fingerprint_ = f.get_string_opt(kFingerprintKey).value_or("");
  if (m->fingerprint_.empty()) m->fingerprint_ = m->compute_fingerprint();
  if (mode == FileLoad::Read) m->prepare_kernels();
  return m;
}

void Model::prepare_kernels() const {
  std::call_once(kernels_once_, [this] {
    // The views are the model's own; only their data/packed pointers change, before any kernel
    // reads them (call_once orders this before every caller's return).
    Model& self = const_cast<Model&>(*this);
    std::vector<TensorView*> matrices;
    for (LayerWeights& w : self.layers)
      for (TensorView* t : {&w.wq, &w.wk, &w.wv, &w.wo, &w.w_gate, &w.w_up, &w.w_down}) matrices.push_back(t);
    matrices.push_back(&self.output);
    for (TensorView* t : matrices) {
      if (const size_t bytes = packed_bytes(*t)) {
        Buffer b(bytes);
        pack_weights(*t, b.data(), nullptr);
        t->packed = b.data();
        kernel_copies_.push_back(std::move(b));
      } else if (mode_ == FileLoad::Read) {
        Buffer b(t->nbytes());
        std::memcpy(b.data(), t->data, t->nbytes());
        t->data = b.data();
        kernel_copies_.push_back(std::move(b));
      }
    }
  });
}

std::string Model::compute_fingerprint() const {
  std::vector<const TensorView*> ts;
  for (const TensorView& t : file_->tensors()) ts.push_back(&t);
  return fingerprint_of(config_, ts);
}

void save_model(const std::string& path, const ModelConfig& c, const std::string& tokenizer_proto,
                const std::vector<OwnedTensor>& tensors) {
  c.validate();
  GGUFWriter w;
  const std::string a = c.architecture + ".";
  w.set_string("general.architecture", c.architecture);
  w.set_string("general.name", c.name.empty() ? "m3-model" : c.name);
  w.set_u32("general.alignment", static_cast<uint32_t>(kGGUFAlignment));
  w.set_u32(a + "context_length", c.context_length);
  w.set_u32(a + "embedding_length", c.dim);
  w.set_u32(a + "block_count", c.n_layers);
  w.set_u32(a + "feed_forward_length", c.ffn_dim);
  w.set_u32(a + "attention.head_count", c.n_heads);
  w.set_u32(a + "attention.head_count_kv", c.n_kv_heads);
  w.set_u32(a + "attention.key_length", c.head_dim);
  w.set_u32(a + "attention.value_length", c.head_dim);
  w.set_f32(a + "attention.layer_norm_rms_epsilon", c.rms_eps);
  w.set_f32(a + "rope.freq_base", c.rope_theta);
  w.set_u32(a + "rope.dimension_count", c.head_dim);
  w.set_u32(a + "vocab_size", c.vocab_size);
  if (c.architecture == "memory3") {
    w.set_u32("memory3.memory.layer_count", c.memory.memory_layers);
    w.set_u32("memory3.memory.reference_length", c.memory.reference_length);
    w.set_u32("memory3.memory.tokens_per_head", c.memory.tokens_per_head);
    w.set_u32("memory3.memory.chunk_length", c.memory.chunk_length);
    w.set_u32("memory3.memory.per_chunk", c.memory.memories_per_chunk);
    w.set_string("memory3.memory.prefix", c.memory.prefix_text);
  }
  if (!tokenizer_proto.empty()) {
    auto tok = Tokenizer::from_serialized(tokenizer_proto, path + " (tokenizer)");
    // llama.cpp's tokenizer keys, so other GGUF tools can read our vocabulary; the proto is what
    // m3 itself tokenizes with (exactly SentencePiece's behaviour).
    std::vector<std::string> pieces;
    std::vector<float> scores;
    std::vector<int32_t> types;
    for (int32_t i = 0; i < tok->vocab_size(); ++i) {
      pieces.push_back(tok->piece(i));
      scores.push_back(tok->score(i));
      types.push_back(static_cast<int32_t>(tok->type(i)));
    }
    w.set_string("tokenizer.ggml.model", "llama");
    w.set_strings("tokenizer.ggml.tokens", pieces);
    w.set_f32s("tokenizer.ggml.scores", scores);
    w.set_i32s("tokenizer.ggml.token_type", types);
    w.set_u32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(tok->bos_id()));
    w.set_u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(tok->eos_id()));
    w.set_u32("tokenizer.ggml.unknown_token_id", static_cast<uint32_t>(tok->unk_id()));
    w.set_bool("tokenizer.ggml.add_bos_token", true);
    w.set_bytes(kTokenizerProtoKey, tokenizer_proto);
  }
  std::vector<TensorView> views;
  views.reserve(tensors.size());
  for (const OwnedTensor& t : tensors) {
    TensorView v;
    v.name = t.name;
    v.type = t.type;
    v.n_dims = static_cast<int>(t.ne.size());
    for (size_t d = 0; d < t.ne.size(); ++d) v.ne[d] = t.ne[d];
    v.data = t.data.data();
    if (t.data.size() < v.nbytes()) throw Error("save_model: tensor '" + t.name + "' buffer is too small");
    views.push_back(v);
    w.add_tensor(t.name, t.type, t.ne, t.data.data());
  }
  std::vector<const TensorView*> ptrs;
  for (auto& v : views) ptrs.push_back(&v);
  w.set_string(kFingerprintKey, fingerprint_of(c, ptrs));
  w.write(path);
}

std::vector<OwnedTensor> init_weights(const ModelConfig& c, uint64_t seed) {
  c.validate();
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<OwnedTensor> out;
  auto add = [&](const std::string& name, int64_t cols, int64_t rows, float std_dev) {
    OwnedTensor t;
    t.name = name;
    t.type = DType::F32;
    t.ne = rows ? std::vector<int64_t>{cols, rows} : std::vector<int64_t>{cols};
    const int64_t n = cols * (rows ? rows : 1);
    t.data = Buffer(static_cast<size_t>(n) * sizeof(float));
    float* p = t.data.as<float>();
    for (int64_t i = 0; i < n; ++i) p[i] = std_dev > 0 ? std_dev * normal(rng) : 1.0f;
    out.push_back(std::move(t));
  };
  const int64_t C = c.dim, Q = int64_t(c.n_heads) * c.head_dim, KV = int64_t(c.n_kv_heads) * c.head_dim, F = c.ffn_dim;
  const float s = 0.02f, s_out = 0.02f / std::sqrt(2.0f * c.n_layers);
  add("token_embd.weight", C, c.vocab_size, s);
  for (int l = 0; l < c.n_layers; ++l) {
    add(layer_name(l, "attn_norm"), C, 0, 0);
    add(layer_name(l, "attn_q"), C, Q, s);
    add(layer_name(l, "attn_k"), C, KV, s);
    add(layer_name(l, "attn_v"), C, KV, s);
    add(layer_name(l, "attn_output"), Q, C, s_out);
    add(layer_name(l, "ffn_norm"), C, 0, 0);
    add(layer_name(l, "ffn_gate"), C, F, s);
    add(layer_name(l, "ffn_up"), C, F, s);
    add(layer_name(l, "ffn_down"), F, C, s_out);
  }
  add("output_norm.weight", C, 0, 0);
  if (!c.tied_embeddings) add("output.weight", C, c.vocab_size, s);
  return out;
}

void quantize_model(const std::string& in_path, const std::string& out_path, DType type) {
  auto f = GGUFFile::open(in_path);
  ModelConfig c = read_config(*f);
  std::string proto;
  if (const GGUFValue* tok = f->find(kTokenizerProtoKey)) proto.assign(tok->bytes.begin(), tok->bytes.end());
  std::vector<OwnedTensor> out;
  std::vector<float> row;
  for (const TensorView& t : f->tensors()) {
    OwnedTensor o;
    o.name = t.name;
    o.ne.assign(t.ne.begin(), t.ne.begin() + t.n_dims);
    // Matrices change type; vectors (norms) stay f32 as llama.cpp keeps them.
    const bool matrix = t.n_dims >= 2 && t.ne[0] % dtype_block_elems(type) == 0;
    o.type = matrix ? type : t.type;
    o.data = Buffer(dtype_row_bytes(o.type, t.ne[0]) * static_cast<size_t>(t.rows()));
    if (o.type == t.type) {
      std::memcpy(o.data.data(), t.data, t.nbytes());
    } else {
      row.resize(static_cast<size_t>(t.ne[0]));
      const size_t ob = dtype_row_bytes(o.type, t.ne[0]);
      for (int64_t r = 0; r < t.rows(); ++r) {
        dequantize_row(t.type, t.row(r), row.data(), t.ne[0]);
        quantize_row(o.type, row.data(), o.data.data() + r * ob, t.ne[0]);
      }
    }
    out.push_back(std::move(o));
  }
  c.name = c.name.empty() ? std::string(dtype_name(type)) : c.name;
  save_model(out_path, c, proto, out);
}

}  // namespace m3
