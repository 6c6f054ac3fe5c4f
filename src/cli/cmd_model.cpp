// m3 init / inspect / quantize: making and examining model files.
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>

#include "cli/commands.h"
#include "m3/error.h"
#include "m3/model.h"

namespace m3::cli {

namespace {
std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) { b /= 1024; ++u; }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u ? "%.2f %s" : "%.0f %s", b, units[u]);
  return buf;
}

void register_init(CLI::App& app) {
  auto* cmd = app.add_subcommand("init", "Create a randomly initialised model file of a preset shape");
  struct Opts {
    std::string out, preset = "memory3-tiny", tokenizer_model, type = "f32";
    std::vector<std::string> train_files;
    int vocab = 0, layers = 0, dim = 0, heads = 0, kv_heads = 0, head_dim = 0, ffn = 0, ctx = 0, memory_layers = -1;
    uint64_t seed = 1;
    bool tied = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("-o,--output", o->out, "Model file to write (GGUF)")->required();
  std::string presets;
  for (auto& n : model_preset_names()) presets += (presets.empty() ? "" : ", ") + n;
  cmd->add_option("--preset", o->preset, "Shape preset: " + presets)->capture_default_str();
  cmd->add_option("--tokenizer", o->tokenizer_model, "SentencePiece model to embed (from `m3 tokenizer train`)");
  cmd->add_option("--train-tokenizer", o->train_files, "Train a tokenizer on these text files and embed it");
  cmd->add_option("--vocab", o->vocab, "Vocabulary size (with --train-tokenizer: the tokenizer's size)");
  cmd->add_option("--layers", o->layers, "Override the preset's layer count L");
  cmd->add_option("--dim", o->dim, "Override the model width C");
  cmd->add_option("--heads", o->heads, "Override the query head count H");
  cmd->add_option("--kv-heads", o->kv_heads, "Override the KV head count G");
  cmd->add_option("--head-dim", o->head_dim, "Override the head dimension D");
  cmd->add_option("--ffn", o->ffn, "Override the MLP width F");
  cmd->add_option("--context", o->ctx, "Override the context length");
  cmd->add_option("--memory-layers", o->memory_layers, "Memory layers (default: first half)");
  cmd->add_flag("--tied", o->tied, "Tie the output projection to the token embedding");
  cmd->add_option("--seed", o->seed, "Random seed")->capture_default_str();
  cmd->add_option("--type", o->type, "Weight type: f32, f16, bf16, q8_0, q4_0")->capture_default_str();
  cmd->callback([o] {
    ModelConfig c = model_preset(o->preset);
    auto set = [](int& field, int v) { if (v > 0) field = v; };
    set(c.n_layers, o->layers);
    set(c.dim, o->dim);
    set(c.n_heads, o->heads);
    set(c.n_kv_heads, o->kv_heads);
    set(c.head_dim, o->head_dim);
    set(c.ffn_dim, o->ffn);
    set(c.context_length, o->ctx);
    if (o->layers > 0) c.memory.memory_layers = c.n_layers / 2;
    if (o->memory_layers >= 0) c.memory.memory_layers = o->memory_layers;
    c.tied_embeddings = o->tied;
    const auto type = dtype_from_name(o->type);
    if (!type) throw Error("--type '" + o->type + "' is not one of f32, f16, bf16, q8_0, q4_0");
    std::string proto;
    if (!o->tokenizer_model.empty() && !o->train_files.empty())
      throw Error("give either --tokenizer or --train-tokenizer, not both");
    if (!o->tokenizer_model.empty()) proto = read_file(o->tokenizer_model);
    if (!o->train_files.empty()) {
      TokenizerTrainOptions opts;
      opts.vocab_size = o->vocab > 0 ? o->vocab : c.vocab_size;
      std::fprintf(stderr, "training a %d-piece tokenizer on %zu file(s)...\n", opts.vocab_size, o->train_files.size());
      proto = Tokenizer::train(o->train_files, opts);
    }
    if (!proto.empty()) {
      auto tok = Tokenizer::from_serialized(proto, o->tokenizer_model.empty() ? "trained tokenizer" : o->tokenizer_model);
      c.vocab_size = tok->vocab_size();
    } else if (o->vocab > 0) {
      c.vocab_size = o->vocab;
    }
    c.name = o->preset;
    c.validate();
    std::vector<OwnedTensor> w = init_weights(c, o->seed);
    if (*type == DType::F32) {
      save_model(o->out, c, proto, w);
    } else {
      save_model(o->out + ".f32.tmp", c, proto, w);
      quantize_model(o->out + ".f32.tmp", o->out, *type);
      std::remove((o->out + ".f32.tmp").c_str());
    }
    std::printf("wrote %s: %s\n", o->out.c_str(), c.summary().c_str());
  });
}

void register_inspect(CLI::App& app) {
  auto* cmd = app.add_subcommand("inspect", "Print a model file's config, memory settings, tokenizer, tensors and fingerprint");
  auto path = std::make_shared<std::string>();
  auto tensors = std::make_shared<bool>(false);
  auto verify = std::make_shared<bool>(false);
  cmd->add_option("file", *path, "Model file (GGUF)")->required();
  cmd->add_flag("--tensors", *tensors, "List every tensor");
  cmd->add_flag("--verify", *verify, "Recompute the fingerprint over all weights and compare with the stored one");
  cmd->callback([path, tensors, verify] {
    auto m = Model::load(*path, FileLoad::Map);
    const ModelConfig& c = m->config();
    const GGUFFile& f = m->file();
    std::printf("file          %s (GGUF v%u, %s)\n", path->c_str(), f.version(), human_bytes(static_cast<double>(f.mapping().size())).c_str());
    std::printf("architecture  %s   name %s\n", c.architecture.c_str(), c.name.c_str());
    std::printf("shape         L=%d C=%d H=%d G=%d D=%d F=%d V=%d context=%d %s\n", c.n_layers, c.dim, c.n_heads, c.n_kv_heads,
                c.head_dim, c.ffn_dim, c.vocab_size, c.context_length, c.tied_embeddings ? "tied" : "untied");
    std::printf("norm/rope     rms_eps=%g rope_theta=%g\n", c.rms_eps, c.rope_theta);
    std::printf("parameters    %lld (%lld non-embedding)\n", static_cast<long long>(c.parameter_count()),
                static_cast<long long>(c.non_embedding_parameters()));
    std::printf("memory        layers 0..%d (%d), reference <= %d tokens, %d kept per (layer, KV head), chunk %d, %d per chunk, prefix \"%s\"\n",
                c.memory.memory_layers - 1, c.memory.memory_layers, c.memory.reference_length, c.memory.tokens_per_head,
                c.memory.chunk_length, c.memory.memories_per_chunk, c.memory.prefix_text.c_str());
    // Bytes of one explicit memory at bf16: (memory layers, K and V, G, kept tokens, D) × 2 bytes.
    const double mem_bytes = 2.0 * c.memory.memory_layers * 2 * c.n_kv_heads * c.memory.tokens_per_head * c.head_dim;
    std::printf("memory size   %s per reference at bf16\n", human_bytes(mem_bytes).c_str());
    if (const Tokenizer* t = m->tokenizer()) {
      auto prefix = t->prefix_tokens(c.memory.prefix_text);
      std::string ids;
      for (int32_t id : prefix) ids += (ids.empty() ? "" : " ") + std::to_string(id);
      std::printf("tokenizer     sentencepiece, %d pieces, bos=%d eos=%d unk=%d, prefix tokens [%s]\n", t->vocab_size(), t->bos_id(),
                  t->eos_id(), t->unk_id(), ids.c_str());
    } else {
      std::printf("tokenizer     none\n");
    }
    std::map<std::string, std::pair<int, size_t>> by_type;
    for (const TensorView& tv : f.tensors()) {
      auto& e = by_type[dtype_name(tv.type)];
      e.first++;
      e.second += tv.nbytes();
    }
    std::printf("tensors       %zu:", f.tensors().size());
    for (auto& [name, e] : by_type) std::printf(" %d %s (%s)", e.first, name.c_str(), human_bytes(static_cast<double>(e.second)).c_str());
    std::printf("\nfingerprint   %s\n", m->fingerprint().c_str());
    if (*verify) {
      const std::string fp = m->compute_fingerprint();
      if (fp != m->fingerprint())
        throw Error(*path + ": fingerprint mismatch: stored " + m->fingerprint() + ", computed " + fp + " (weights changed or file corrupted)");
      std::printf("verify        ok (recomputed %s)\n", fp.c_str());
    }
    if (*tensors)
      for (const TensorView& tv : f.tensors())
        std::printf("  %-32s %-5s %-14s %s\n", tv.name.c_str(), dtype_name(tv.type), tv.shape_string().c_str(),
                    human_bytes(static_cast<double>(tv.nbytes())).c_str());
  });
}

void register_quantize(CLI::App& app) {
  auto* cmd = app.add_subcommand("quantize", "Convert a model's weight matrices to another type (norms stay f32)");
  auto in = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  auto type = std::make_shared<std::string>();
  cmd->add_option("input", *in, "Model file to read")->required();
  cmd->add_option("output", *out, "Model file to write")->required();
  cmd->add_option("-t,--type", *type, "Target type: f32, f16, bf16, q8_0, q4_0")->required();
  cmd->callback([in, out, type] {
    const auto t = dtype_from_name(*type);
    if (!t) throw Error("--type '" + *type + "' is not one of f32, f16, bf16, q8_0, q4_0");
    Model::load(*in, FileLoad::Map);  // validate the input fully before writing anything
    quantize_model(*in, *out, *t);
    auto m = Model::load(*out, FileLoad::Map);
    std::printf("wrote %s (%s, fingerprint %s)\n", out->c_str(), dtype_name(*t), m->fingerprint().c_str());
  });
}

}  // namespace m3::cli
