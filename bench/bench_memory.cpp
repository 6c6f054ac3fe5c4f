// Memory³ read-path benchmark, the paper's Table 21 protocol at batch 1, on one model in one run:
//   1. decode tokens/s with memory (5 memories per 64-token chunk, the RAM cache OFF: every
//      memory read and decoded from the bank) vs the same session without memory;
//   2. a 128-token prompt + 128 generated tokens, with memory vs RAG (the 5 retrieved references
//      of ~128 tokens as text in front of the prompt, retrieved once): time to first token and
//      end-to-end time.
// Medians over --reps runs. Goals (issue 5): memory costs <= 10% of decode speed, first token
// >= 4x sooner than RAG, end to end faster than RAG (the paper: 1.46x).
//
// Usage: bench_memory [--model M.gguf] [--threads 2] [--reps 3] [--cache-dir /tmp/m3-bench]
// Without --model: a random memory3-1b-shaped q8_0 model with the test tokenizer (vocab 512), made
// once in the cache dir; the bank is built there too (64 references of data/embedded/moby-dick.txt).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "m3/bank.h"
#include "m3/bank_memory_source.h"
#include "m3/bank_retriever.h"
#include "m3/error.h"
#include "m3/file_io.h"
#include "m3/generate.h"
#include "m3/model.h"
#include "m3/session.h"
#include "bench_util.h"

using namespace m3;
namespace fs = std::filesystem;
using m3::bench::Clock;
using m3::bench::median;
using m3::bench::seconds_since;

namespace {

std::string source_dir() {
  const std::string d = bench::find_source_dir();
  if (d.empty()) throw Error("cannot find the source tree (set M3_SOURCE_DIR)");
  return d;
}

std::string default_model(const std::string& cache_dir, const std::string& src) {
  const std::string path = cache_dir + "/memory3-1b-v512-q8_0.gguf";
  if (fs::exists(path)) return path;
  fs::create_directories(cache_dir);
  std::fprintf(stderr, "making %s (random memory3-1b shape, test tokenizer)...\n", path.c_str());
  const std::string proto = read_file(src + "/tests/data/test-tokenizer.model");
  ModelConfig c = model_preset("memory3-1b");
  c.vocab_size = Tokenizer::from_serialized(proto, "test tokenizer")->vocab_size();
  save_model(path + ".f32.tmp", c, proto, init_weights(c, 5));
  quantize_model(path + ".f32.tmp", path, DType::Q8_0);
  fs::remove(path + ".f32.tmp");
  return path;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string model_path, cache_dir = "/tmp/m3-bench";
    int threads = 2, reps = 3, decode_tokens = 192;
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto next = [&]() -> std::string {
        if (i + 1 >= argc) throw Error(a + " needs a value");
        return argv[++i];
      };
      if (a == "--model") model_path = next();
      else if (a == "--threads") threads = std::stoi(next());
      else if (a == "--reps") reps = std::stoi(next());
      else if (a == "--cache-dir") cache_dir = next();
      else if (a == "--decode-tokens") decode_tokens = std::stoi(next());
      else throw Error("unknown argument " + a + " (see the comment at the top of bench/bench_memory.cpp)");
    }
    const std::string src = source_dir();
    if (model_path.empty()) model_path = default_model(cache_dir, src);
    auto model = Model::load(model_path);
    const ModelConfig& c = model->config();
    const Tokenizer& tok = *model->tokenizer();
    ThreadPool pool(threads);
    const std::string bank_dir = cache_dir + "/bank-" + model->fingerprint().substr(0, 12);
    const std::string text = read_file(src + "/data/embedded/moby-dick.txt");
    bench::ensure_bank(*model, pool, bank_dir, text, 64);
    auto bank = MemoryBank::open(bank_dir, model.get(), false);
    BankRetriever retriever = open_bank_retriever(*bank, model.get(), "bm25", &pool);
    PrefixKV prefix(*model, &pool);
    BankMemoryOptions bo;
    bo.per_chunk = c.memory.memories_per_chunk;
    BankMemorySource source(*bank, *retriever.retriever, nullptr, bo);  // no cache: every read from the bank

    // A 128-token prompt about the bank's text (so retrieval finds references).
    std::vector<int32_t> prompt = tok.encode(text.substr(20000, 4000), true);
    prompt.resize(128);
    std::printf("model %s: %s, %d threads; bank %lld memories (bf16), %d per chunk, cache off\n", model_path.c_str(),
                c.summary().c_str(), threads, static_cast<long long>(bank->memory_count()), bo.per_chunk);

    // 1. Decode speed: the same tokens through the session with and without memories
    //    (m3::bench::measure_memory_decode, shared with `m3 bench`).
    const bench::MemoryDecodeResult md = bench::measure_memory_decode(*model, pool, bank_dir, prompt, decode_tokens, reps);
    const double dw = md.with_tok_s, dn = md.without_tok_s;
    std::printf("\ndecode (%d tokens after a 64-token prompt, chunks swap memories every 64 tokens):\n", decode_tokens);
    std::printf("  without memory   %8.2f tok/s\n  with memory      %8.2f tok/s   ratio %.3f   (goal >= 0.90; paper 0.65)\n", dn, dw, dw / dn);

    // 2. 128-token prompt + 128 generated: memory vs RAG.
    GenerateOptions go;
    go.max_tokens = 128;
    go.ignore_eos = true;
    go.sampler.temperature = 0;
    auto run_memory = [&](double* ttft) {
      Session s(*model, &pool, &prefix, &source);
      const auto t0 = Clock::now();
      const GenerateResult r = generate(s, prompt, go);
      *ttft = r.prompt_seconds;
      return std::chrono::duration<double>(Clock::now() - t0).count();
    };
    int rag_prompt_tokens = 0;
    auto run_rag = [&](double* ttft) {
      const auto t0 = Clock::now();
      // Retrieve once with the prompt; the references' text goes in front of it.
      const std::vector<SearchHit> hits = retriever.retriever->search(tok.decode(prompt), bo.per_chunk);
      std::vector<int32_t> rag = {tok.bos_id()};
      for (const SearchHit& h : hits) {
        const std::vector<int32_t> t = tok.encode("Reference: " + bank->reference(h.id).text + "\n");
        rag.insert(rag.end(), t.begin(), t.end());
      }
      rag.insert(rag.end(), prompt.begin() + 1, prompt.end());
      rag_prompt_tokens = static_cast<int>(rag.size());
      Session s(*model, &pool, nullptr, nullptr);
      const GenerateResult r = generate(s, rag, go);
      *ttft = std::chrono::duration<double>(Clock::now() - t0).count() - r.decode_seconds;
      return std::chrono::duration<double>(Clock::now() - t0).count();
    };
    std::vector<double> mem_ttft, mem_e2e, rag_ttft, rag_e2e;
    for (int r = 0; r < reps; ++r) {
      double t;
      mem_e2e.push_back(run_memory(&t));
      mem_ttft.push_back(t);
      rag_e2e.push_back(run_rag(&t));
      rag_ttft.push_back(t);
    }
    const double mt = median(mem_ttft), me = median(mem_e2e), rt = median(rag_ttft), re = median(rag_e2e);
    std::printf("\n128-token prompt + 128 generated tokens (RAG prompt: %d tokens):\n", rag_prompt_tokens);
    std::printf("  first token   memory %7.3f s   RAG %7.3f s   RAG/memory %.2fx   (goal >= 4x)\n", mt, rt, rt / mt);
    std::printf("  end to end    memory %7.3f s   RAG %7.3f s   RAG/memory %.2fx   (goal > 1x; paper 1.46x)\n", me, re, re / me);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_memory: %s\n", e.what());
    return 1;
  }
}
