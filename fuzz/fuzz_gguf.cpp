// fuzz_gguf — the GGUF reader (src/model/gguf.cpp) and the model loader on top of it
// (Model::load: config, tensor shapes, the tokenizer carried in the file).
//
// An input is one of two things:
//   * a whole file (any input not starting with 'P'): written to disk as is and opened;
//   * 'P', a template number t, then patches (u16 offset, u8 length n, n bytes) applied to one of
//     the valid model files built at start-up (t % 2: 0 = a tiny model without a tokenizer,
//     1 = one carrying the test SentencePiece model). Offsets wrap around the file; n = 0
//     truncates it at the offset. This keeps the header valid while single fields change, so the
//     fuzzer reaches the tensor table, the config checks and the tokenizer instead of stopping
//     at the magic.
// For every input: GGUFFile::open, each metadata key through every typed getter, each tensor's
// bytes checked to lie inside the file and its first row dequantized, then Model::load and (when
// it loads) a tokenizer round trip. Success or m3::Error; anything else is a finding.
//
// M3_FUZZ_WRITE_SEEDS=DIR fuzz_gguf  writes the seed files of fuzz/corpus/gguf and exits.
#include <cstring>
#include <vector>

#include "fuzz_common.h"
#include "m3/error.h"
#include "m3/gguf.h"
#include "m3/model.h"

namespace {

using namespace m3;

// L=1, C=8, H=2, G=1, D=4, F=8: every tensor a few hundred bytes.
ModelConfig tiny_config(int vocab) {
  ModelConfig c;
  c.name = "fuzz-tiny";
  c.n_layers = 1;
  c.dim = 8;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.head_dim = 4;
  c.ffn_dim = 8;
  c.vocab_size = vocab;
  c.context_length = 64;
  c.memory.memory_layers = 1;
  c.memory.reference_length = 16;
  c.memory.tokens_per_head = 4;
  c.memory.chunk_length = 8;
  c.memory.memories_per_chunk = 2;
  return c;
}

std::string tokenizer_proto() { return fuzz::read_file(std::string(M3_SOURCE_DIR) + "/tests/data/test-tokenizer.model"); }

std::vector<std::string> g_templates;  // the valid model files patch inputs start from

std::string build_model(const std::string& path, bool with_tokenizer) {
  std::string proto;
  int vocab = 16;
  if (with_tokenizer) {
    proto = tokenizer_proto();
    vocab = Tokenizer::from_serialized(proto, "test-tokenizer.model")->vocab_size();
  }
  const ModelConfig c = tiny_config(vocab);
  save_model(path, c, proto, init_weights(c, 7));
  return fuzz::read_file(path);
}

// Seeds: hand-made files covering each value type, each tensor type, and small models.
void write_seeds(const std::string& dir) {
  std::filesystem::create_directories(dir);
  fuzz::write_file(dir + "/tiny-model.gguf", g_templates[0]);
  {
    GGUFWriter w;  // every metadata value type, no tensors
    w.set_string("general.architecture", "memory3");
    w.set_string("general.name", "seed");
    w.set_u32("general.alignment", 32);
    w.set_i32("seed.i32", -5);
    w.set_u64("seed.u64", 1ull << 40);
    w.set_f32("seed.f32", 0.5f);
    w.set_bool("seed.bool", true);
    w.set_strings("seed.strings", {"a", "", "\xE2\x96\x81word"});
    w.set_f32s("seed.f32s", {1.0f, -2.0f});
    w.set_i32s("seed.i32s", {3, -4, 5});
    w.set_bytes("seed.bytes", std::string("\x00\x01\xff", 3));
    w.write(dir + "/metadata-only.gguf");
  }
  {
    GGUFWriter w;  // one tensor of each type m3 reads
    std::vector<uint8_t> data(4096, 0x3c);
    w.set_string("general.architecture", "llama");
    w.add_tensor("t.f32", DType::F32, {4, 2}, data.data());
    w.add_tensor("t.f16", DType::F16, {8}, data.data());
    w.add_tensor("t.bf16", DType::BF16, {2, 2, 2}, data.data());
    w.add_tensor("t.q8_0", DType::Q8_0, {32, 2}, data.data());
    w.add_tensor("t.q4_0", DType::Q4_0, {64, 1, 1, 1}, data.data());
    w.write(dir + "/tensor-types.gguf");
  }
  // Patch inputs: the version, the tensor count, general.alignment's value, a truncation.
  auto patch = [&](const std::string& name, int templ, std::vector<std::pair<uint16_t, std::string>> edits) {
    std::string s = "P";
    s += static_cast<char>(templ);
    for (auto& [off, bytes] : edits) {
      s += static_cast<char>(off & 0xff);
      s += static_cast<char>(off >> 8);
      s += static_cast<char>(bytes.size());
      s += bytes;
    }
    fuzz::write_file(dir + "/" + name, s);
  };
  patch("patch-version", 0, {{4, std::string("\x02\x00\x00\x00", 4)}});
  patch("patch-tensor-count", 1, {{8, std::string("\x05\x00\x00\x00\x00\x00\x00\x00", 8)}});
  patch("patch-truncate", 1, {{600, ""}});
  patch("patch-nothing", 1, {});
}

// Reads a value through every getter; each must return or throw m3::Error.
void probe_key(const GGUFFile& f, const std::string& key) {
  try { (void)f.get_string(key); } catch (const Error&) {}
  try { (void)f.get_int(key); } catch (const Error&) {}
  try { (void)f.get_float(key); } catch (const Error&) {}
  try { (void)f.get_bool(key); } catch (const Error&) {}
}

void check_tensors(const GGUFFile& f) {
  const uint8_t* begin = f.mapping().data();
  const uint8_t* end = begin + f.mapping().size();
  std::vector<float> row;
  for (const TensorView& t : f.tensors()) {
    const auto* p = static_cast<const uint8_t*>(t.data);
    // The reader's promise: every tensor lies inside the file.
    if (p < begin || p > end || t.nbytes() > static_cast<size_t>(end - p)) {
      std::fprintf(stderr, "fuzz_gguf: tensor '%s' (%zu bytes) lies outside the file\n", t.name.c_str(), t.nbytes());
      std::abort();
    }
    if (t.ne[0] <= (1 << 16)) {
      row.resize(static_cast<size_t>(t.ne[0]));
      dequantize_row(t.type, t.data, row.data(), t.ne[0]);
    }
  }
}

void run(const std::string& path) {
  try {
    auto f = GGUFFile::open(path, FileLoad::Map);
    for (const std::string& key : f->key_order()) probe_key(*f, key);
    probe_key(*f, "no.such.key");
    check_tensors(*f);
  } catch (const Error&) {
    return;  // a clear refusal; Model::load would refuse the same way
  }
  try {
    auto model = Model::load(path, FileLoad::Map);
    if (const Tokenizer* tok = model->tokenizer()) {
      const std::vector<int32_t> ids = tok->encode("Reference: fuzz \xC3\xA9t\xC3\xA9", true);
      (void)tok->decode(ids);
    }
    (void)model->compute_fingerprint();
  } catch (const Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const std::string dir = fuzz::scratch_dir();
  g_templates.push_back(build_model(dir + "/template0.gguf", false));
  g_templates.push_back(build_model(dir + "/template1.gguf", true));
  if (const char* seeds = std::getenv("M3_FUZZ_WRITE_SEEDS")) {
    write_seeds(seeds);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = fuzz::scratch_dir() + "/input.gguf";
  if (size > 0 && data[0] == 'P') {
    fuzz::Bytes in(data + 1, size - 1);
    std::string file = g_templates[in.u8() % g_templates.size()];
    while (!in.empty() && !file.empty()) {
      const size_t off = in.u16() % file.size();
      const uint8_t n = in.u8();
      if (n == 0) {
        file.resize(off);
        continue;
      }
      const std::string bytes = in.take(n);
      file.replace(off, std::min(bytes.size(), file.size() - off), bytes);
    }
    fuzz::write_file(path, file);
  } else {
    fuzz::write_file(path, data, size);
  }
  run(path);
  return 0;
}
