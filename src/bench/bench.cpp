// The shared speed measurements (m3/bench.h): what `m3 bench` prints and bench/* reports.
#include "m3/bench.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <span>

#include "m3/bank.h"
#include "m3/bank_memory_source.h"
#include "m3/bank_retriever.h"
#include "m3/error.h"
#include "m3/forward.h"
#include "m3/knowledge.h"
#include "m3/memory_writer.h"
#include "m3/session.h"
#include "m3/train.h"

namespace m3::bench {

namespace fs = std::filesystem;

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string find_source_dir() {
  if (const char* d = std::getenv("M3_SOURCE_DIR")) return d;
  std::error_code ec;
  fs::path p = fs::read_symlink("/proc/self/exe", ec).parent_path();
  for (int up = 0; up < 6 && !p.empty(); ++up, p = p.parent_path())
    if (fs::exists(p / "data/embedded/moby-dick.txt")) return p.string();
  return "";
}

namespace {

// xorshift64, uniform in ±0.035 (std ~0.02).
void fill_row(float* x, int64_t n, uint64_t& s) {
  for (int64_t i = 0; i < n; ++i) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    x[i] = (static_cast<float>(s >> 40) / float(1 << 24) - 0.5f) * 0.07f;
  }
}

// The reference's tokens as the memory writer sees them: random non-control ids.
std::vector<std::vector<int32_t>> random_references(const ModelConfig& c, const Model& m, int n) {
  const int vocab = m.tokenizer() ? std::min(c.vocab_size, m.tokenizer()->vocab_size()) : c.vocab_size;
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> tok(3, vocab - 1);
  std::vector<std::vector<int32_t>> refs(static_cast<size_t>(n), std::vector<int32_t>(static_cast<size_t>(c.memory.reference_length)));
  for (auto& r : refs)
    for (auto& t : r) t = tok(rng);
  return refs;
}

}  // namespace

void make_random_model(const std::string& path, const ModelConfig& c, DType type, const std::string& tokenizer_proto) {
  std::vector<OwnedTensor> ts;
  uint64_t seed = 0x9E3779B97F4A7C15ull;
  std::vector<float> row;
  auto add = [&](const std::string& name, int64_t cols, int64_t rows) {
    OwnedTensor t;
    t.name = name;
    t.type = rows ? type : DType::F32;
    t.ne = rows ? std::vector<int64_t>{cols, rows} : std::vector<int64_t>{cols};
    const int64_t nrows = rows ? rows : 1;
    const size_t rb = dtype_row_bytes(t.type, cols);
    t.data = Buffer(rb * static_cast<size_t>(nrows));
    row.resize(static_cast<size_t>(cols));
    for (int64_t r = 0; r < nrows; ++r) {
      if (rows) fill_row(row.data(), cols, seed); else std::fill(row.begin(), row.end(), 1.0f);
      quantize_row(t.type, row.data(), t.data.data() + static_cast<size_t>(r) * rb, cols);
    }
    ts.push_back(std::move(t));
  };
  const int64_t C = c.dim, Q = int64_t(c.n_heads) * c.head_dim, KV = int64_t(c.n_kv_heads) * c.head_dim, F = c.ffn_dim;
  add("token_embd.weight", C, c.vocab_size);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    add(b + "attn_norm.weight", C, 0);
    add(b + "attn_q.weight", C, Q);
    add(b + "attn_k.weight", C, KV);
    add(b + "attn_v.weight", C, KV);
    add(b + "attn_output.weight", Q, C);
    add(b + "ffn_norm.weight", C, 0);
    add(b + "ffn_gate.weight", C, F);
    add(b + "ffn_up.weight", C, F);
    add(b + "ffn_down.weight", F, C);
  }
  add("output_norm.weight", C, 0);
  if (!c.tied_embeddings) add("output.weight", C, c.vocab_size);
  save_model(path, c, tokenizer_proto, ts);
}

double forward_flops(const ModelConfig& c, int64_t T, int64_t p0, int n_layers, int64_t logit_rows, int64_t extra_keys,
                     int extra_layers) {
  const double C = c.dim, Q = double(c.n_heads) * c.head_dim, KV = double(c.n_kv_heads) * c.head_dim, F = c.ffn_dim;
  const double per_token_layer = 2.0 * (C * Q + 2 * C * KV + Q * C + 3 * C * F);
  const double keys = double(T) * double(p0) + double(T) * double(T + 1) / 2;  // Σ_t (p0 + t + 1)
  const double attn = 4.0 * c.head_dim * c.n_heads;                              // QK and PV per (query, key)
  double f = n_layers * (per_token_layer * double(T) + attn * keys);
  f += std::min(extra_layers, n_layers) * attn * double(T) * double(extra_keys);
  f += 2.0 * C * c.vocab_size * double(logit_rows);
  return f;
}

double decode_bytes_per_token(const Model& m, int kv_len) {
  double b = 0;
  for (const TensorView& t : m.file().tensors())
    if (t.name != "token_embd.weight") b += static_cast<double>(t.nbytes());
  const ModelConfig& c = m.config();
  b += 2.0 * c.n_layers * kv_len * c.n_kv_heads * c.head_dim * sizeof(float);
  return b;
}

DecodeResult measure_decode(const Model& m, ThreadPool& pool, int prompt_tokens, int decode_tokens, int reps) {
  const ModelConfig& c = m.config();
  std::vector<int32_t> ids(static_cast<size_t>(prompt_tokens));
  for (int i = 0; i < prompt_tokens; ++i) ids[static_cast<size_t>(i)] = 1 + (i * 7919) % (c.vocab_size - 1);
  std::vector<float> logits(static_cast<size_t>(c.vocab_size));
  Forward fwd(m, &pool);
  std::vector<double> rates;
  for (int r = 0; r <= reps; ++r) {  // run 0 warms caches and the pool
    KVCache cache(c, prompt_tokens + decode_tokens + 1);
    fwd.eval(ids, cache, logits.data(), false);
    int32_t tok = 5;
    const auto t0 = Clock::now();
    for (int i = 0; i < decode_tokens; ++i) {
      fwd.eval(std::span<const int32_t>(&tok, 1), cache, logits.data(), false);
      tok = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    }
    if (r > 0) rates.push_back(decode_tokens / seconds_since(t0));
  }
  return {median(rates), decode_bytes_per_token(m, prompt_tokens + decode_tokens / 2)};
}

PrefillResult measure_prefill(const Model& m, ThreadPool& pool, int tokens, int reps) {
  const ModelConfig& c = m.config();
  std::vector<int32_t> ids(static_cast<size_t>(tokens));
  for (int i = 0; i < tokens; ++i) ids[static_cast<size_t>(i)] = 1 + (i * 7919) % (c.vocab_size - 1);
  std::vector<float> logits(static_cast<size_t>(c.vocab_size));
  Forward fwd(m, &pool, tokens);
  KVCache cache(c, tokens);
  std::vector<double> secs;
  for (int r = 0; r <= reps; ++r) {
    cache.clear();
    const auto t0 = Clock::now();
    fwd.eval(ids, cache, logits.data(), false);
    if (r > 0) secs.push_back(seconds_since(t0));
  }
  PrefillResult out;
  out.tokens = tokens;
  out.seconds = median(secs);
  out.gflops = forward_flops(c, tokens, 0, c.n_layers, 1) / out.seconds / 1e9;
  return out;
}

MemorizeResult measure_memorize(const Model& m, ThreadPool& pool, int refs, int reps) {
  const ModelConfig& c = m.config();
  MemoryWriter writer(m, &pool);
  const std::vector<int32_t>& prefix = writer.prefix();
  const int p = static_cast<int>(prefix.size()), T = c.memory.reference_length, Lm = c.memory.memory_layers;
  const auto texts = random_references(c, m, refs);
  Forward fwd(m, &pool, p + T);
  KVCache cache(c, p + T);
  EvalOptions lm;
  lm.n_layers = Lm;
  std::vector<int32_t> full(prefix);
  full.resize(static_cast<size_t>(p + T));
  std::vector<double> s_prefill, s_write;
  for (int r = 0; r <= reps; ++r) {
    auto t0 = Clock::now();
    for (const auto& ref : texts) {
      std::copy(ref.begin(), ref.end(), full.begin() + p);
      cache.clear();
      fwd.eval(full, cache, nullptr, false, lm);
    }
    const double sp = seconds_since(t0);
    t0 = Clock::now();
    for (const auto& ref : texts) {
      const ExplicitMemory mem = writer.write(ref);
      if (mem.n_tokens != T) throw Error("measure_memorize: unexpected memory length");
    }
    const double sw = seconds_since(t0);
    if (r > 0) {
      s_prefill.push_back(sp);
      s_write.push_back(sw);
    }
  }
  MemorizeResult out;
  out.refs = refs;
  out.reference_tokens = T;
  out.prefix_tokens = p;
  out.layers = Lm;
  const double sp = median(s_prefill), sw = median(s_write);
  out.prefill_refs_s = refs / sp;
  out.write_refs_s = refs / sw;
  out.prefill_gflops = refs * forward_flops(c, p + T, 0, Lm, 0) / sp / 1e9;
  out.write_gflops = refs * forward_flops(c, T, p, Lm, 0) / sw / 1e9;
  return out;
}

void ensure_bank(const Model& m, ThreadPool& pool, const std::string& dir, const std::string& text, int n_refs) {
  if (MemoryBank::exists(dir)) {
    try {
      auto b = MemoryBank::open(dir, &m, false);
      if (b->memory_count() == b->reference_count() && b->memory_count() >= n_refs) return;
    } catch (const Error& e) {
      std::fprintf(stderr, "rebuilding the bench bank (%s)\n", e.what());
    }
    fs::remove_all(dir);
  }
  if (!m.tokenizer()) throw Error("ensure_bank: the model has no tokenizer");
  Document doc;
  doc.id = "bench";
  doc.text = text;
  std::vector<ReferenceText> refs = split_into_references(doc, *m.tokenizer(), m.config().memory.reference_length);
  if (static_cast<int>(refs.size()) > n_refs) refs.resize(static_cast<size_t>(n_refs));
  auto bank = MemoryBank::create(dir, m, "bf16", "bf16");
  bank->add_references({doc}, {refs});
  MemoryWriter writer(m, &pool);
  for (size_t i = 0; i < refs.size(); ++i) bank->append(writer.write(refs[i].tokens, static_cast<int64_t>(i)));
  bank->flush();
}

MemoryDecodeResult measure_memory_decode(const Model& m, ThreadPool& pool, const std::string& bank_dir,
                                         const std::vector<int32_t>& prompt, int decode_tokens, int reps) {
  const ModelConfig& c = m.config();
  if (prompt.size() < 128) throw Error("measure_memory_decode: the prompt needs 128 tokens");
  auto bank = MemoryBank::open(bank_dir, &m, false);
  BankRetriever retriever = open_bank_retriever(*bank, &m, "bm25", &pool);
  PrefixKV prefix(m, &pool);
  BankMemoryOptions bo;
  bo.per_chunk = c.memory.memories_per_chunk;
  BankMemorySource source(*bank, *retriever.retriever, nullptr, bo);  // no cache: every read from the bank
  std::vector<float> logits(static_cast<size_t>(c.vocab_size));
  auto rate = [&](MemorySource* mem, int n) {
    Session s(m, &pool, &prefix, mem);
    s.prompt(std::span<const int32_t>(prompt.data(), 64), logits.data());
    const auto t0 = Clock::now();
    for (int i = 0; i < n; ++i) s.decode(prompt[static_cast<size_t>(64 + i % 64)], logits.data());
    return n / seconds_since(t0);
  };
  rate(nullptr, 8);  // warm-up: first touches of the weights, the bank's files, the pool
  rate(&source, 8);
  std::vector<double> with, without;
  for (int r = 0; r < reps; ++r) {
    without.push_back(rate(nullptr, decode_tokens));
    with.push_back(rate(&source, decode_tokens));
  }
  MemoryDecodeResult out;
  out.with_tok_s = median(with);
  out.without_tok_s = median(without);
  out.memories = bank->memory_count();
  out.per_chunk = bo.per_chunk;
  return out;
}

namespace {

std::string run_capture(const std::string& cmd, int* status) {
  FILE* f = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!f) {
    *status = -1;
    return "";
  }
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  *status = ::pclose(f);
  return out;
}

}  // namespace

TrainResult measure_train(const ModelConfig& c, int B, int T, int threads, int steps, bool torch) {
  TrainResult out;
  {
    TrainableModel model(c, 1);
    ThreadPool pool(threads);
    model.set_thread_pool(&pool);
    AdamW opt(model, AdamWConfig{});
    std::mt19937 rng(0);
    std::vector<int32_t> tokens(static_cast<size_t>(B) * T), targets(static_cast<size_t>(B) * T);
    for (auto& t : tokens) t = static_cast<int32_t>(rng() % uint32_t(c.vocab_size));
    for (auto& t : targets) t = static_cast<int32_t>(rng() % uint32_t(c.vocab_size));
    auto step = [&] {
      model.zero_grad();
      model.forward_backward(tokens.data(), targets.data(), B, T);
      opt.step(model, 1e-4f);
    };
    step();  // warm-up: allocates the activations
    std::vector<double> times;
    for (int s = 0; s < steps; ++s) {
      const auto t0 = Clock::now();
      step();
      times.push_back(seconds_since(t0));
    }
    out.m3_tok_s = double(B) * T / median(times);
  }
  if (!torch) {
    out.torch_status = "not requested";
    return out;
  }
  const std::string src = find_source_dir();
  const std::string oracle = src + "/tools/reference/train_reference.py";
  if (src.empty() || !fs::exists(oracle)) {
    out.torch_status = "skipped: tools/reference/train_reference.py not found (set M3_SOURCE_DIR)";
    return out;
  }
  int status = 0;
  const std::string probe = run_capture("/usr/bin/python3 -c 'import torch'", &status);
  if (status != 0) {
    out.torch_status = "skipped: /usr/bin/python3 cannot import torch";
    return out;
  }
  const std::string cmd = "/usr/bin/python3 " + oracle + " --bench --B " + std::to_string(B) + " --T " + std::to_string(T) +
                          " --threads " + std::to_string(threads) + " --steps " + std::to_string(steps) + " --layers " +
                          std::to_string(c.n_layers) + " --dim " + std::to_string(c.dim) + " --heads " + std::to_string(c.n_heads) +
                          " --kv-heads " + std::to_string(c.n_kv_heads) + " --head-dim " + std::to_string(c.head_dim) + " --ffn " +
                          std::to_string(c.ffn_dim) + " --vocab " + std::to_string(c.vocab_size);
  const std::string text = run_capture(cmd, &status);
  const size_t at = text.find("\"tokens_per_s\":");
  if (status != 0 || at == std::string::npos) {
    out.torch_status = "failed: " + text.substr(0, 400);
    return out;
  }
  out.torch_tok_s = std::strtod(text.c_str() + at + 15, nullptr);
  out.torch_status = "ran";
  return out;
}

}  // namespace m3::bench
