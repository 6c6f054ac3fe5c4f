// Memorize benchmark: references/s of MemoryWriter::write on 128-token references, next to the
// prefill throughput of the same Lm memory layers on the same tokens, in one run.
//
// Writing a memory (spec §2.2) is a prefill of prefix + reference through the first Lm layers plus
// token selection (un-rotated q·k scores over the reference, top K per (layer, KV head)). The
// writer keeps the prefix's keys and values, so its forward work is the reference's 128 tokens
// over a cached prefix; the rows below separate the two costs:
//   prefill p+128   Forward::eval(prefix + reference, EvalOptions{n_layers = Lm}) from an empty cache
//   prefill 128     the reference over the cached prefix (the writer's own forward work)
//   write           MemoryWriter::write (forward + selection + copying the kept keys and values)
//   write+append    write, then MemoryBank::append with bf16 codes (what `m3 memorize` does per reference)
// "vs prefill" is each row's references/s over the "prefill p+128" row's; GFLOP/s counts the
// forward pass (m3::bench::forward_flops: matrices, causal attention) and is compared with the
// sgemm peak measured in the same run (m3/probe.h). `m3 bench` runs the first and third rows.
//
// Usage: bench_memorize [--model PATH | --preset memory3-small] [--type f32] [--threads 2]
//                       [--refs 32] [--runs 5] [--tokenizer PATH] [--cache-dir /tmp/m3-bench]
// Without --model a model of random weights is generated once into the cache dir, with the test
// tokenizer (tests/data/test-tokenizer.model, 512 pieces, so the vocabulary is 512: the memory
// layers do not depend on it).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "m3/bank.h"
#include "m3/error.h"
#include "m3/forward.h"
#include "m3/memory_writer.h"
#include "m3/model.h"
#include "m3/probe.h"
#include "m3/tokenizer.h"
#include "bench_util.h"

using namespace m3;
using m3::bench::Clock;
using m3::bench::median;
using m3::bench::seconds_since;
namespace fs = std::filesystem;

namespace {

std::string read_file(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw Error(path + ": cannot open");
  std::string s;
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
  std::fclose(f);
  return s;
}

std::string make_model(const std::string& cache_dir, const std::string& preset, const std::string& type_name,
                       const std::string& tokenizer_path) {
  const auto type = dtype_from_name(type_name);
  if (!type) throw Error("unknown --type " + type_name);
  const std::string path = cache_dir + "/" + preset + "-" + type_name + "-tok.gguf";
  if (fs::exists(path)) return path;
  fs::create_directories(cache_dir);
  const std::string proto = read_file(tokenizer_path);
  ModelConfig c = model_preset(preset);
  c.vocab_size = Tokenizer::from_serialized(proto, tokenizer_path)->vocab_size();
  c.name = preset;
  std::fprintf(stderr, "generating %s ...\n", path.c_str());
  const auto t0 = Clock::now();
  if (*type == DType::F32) {
    save_model(path, c, proto, init_weights(c, 1));
  } else {
    save_model(path + ".f32.tmp", c, proto, init_weights(c, 1));
    quantize_model(path + ".f32.tmp", path, *type);
    fs::remove(path + ".f32.tmp");
  }
  std::fprintf(stderr, "  done in %.1f s\n", seconds_since(t0));
  return path;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path, preset = "memory3-small", type = "f32", cache_dir = "/tmp/m3-bench";
  std::string tokenizer = (fs::path(__FILE__).parent_path().parent_path() / "tests/data/test-tokenizer.model").string();
  int threads = static_cast<int>(std::max(1u, std::min(2u, std::thread::hardware_concurrency())));
  int n_refs = 32, runs = 5;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) { std::fprintf(stderr, "%s needs a value\n", a.c_str()); std::exit(2); }
      return argv[++i];
    };
    if (a == "--model") model_path = next();
    else if (a == "--preset") preset = next();
    else if (a == "--type") type = next();
    else if (a == "--threads") threads = std::stoi(next());
    else if (a == "--refs") n_refs = std::stoi(next());
    else if (a == "--runs") runs = std::stoi(next());
    else if (a == "--tokenizer") tokenizer = next();
    else if (a == "--cache-dir") cache_dir = next();
    else { std::fprintf(stderr, "unknown option %s\n", a.c_str()); return 2; }
  }
  try {
    if (model_path.empty()) model_path = make_model(cache_dir, preset, type, tokenizer);
    auto model = Model::load(model_path);
    const ModelConfig& c = model->config();
    const int Lm = c.memory.memory_layers, T = c.memory.reference_length;
    ThreadPool pool(threads);
    MemoryWriter writer(*model, &pool);
    const std::vector<int32_t>& prefix = writer.prefix();
    const int p = int(prefix.size());

    // n_refs references of T random tokens (byte pieces and merges, no control ids).
    std::mt19937 rng(7);
    std::uniform_int_distribution<int32_t> tok(3, c.vocab_size - 1);
    std::vector<std::vector<int32_t>> refs(static_cast<size_t>(n_refs), std::vector<int32_t>(static_cast<size_t>(T)));
    for (auto& r : refs)
      for (auto& t : r) t = tok(rng);

    std::printf("m3 memorize benchmark: %s (%s)\n", model_path.c_str(), c.summary().c_str());
    std::printf("Lm = %d memory layers, %d references of %d tokens, prefix %d tokens, %d threads, median of %d runs\n\n", Lm,
                n_refs, T, p, threads, runs);

    Forward fwd(*model, &pool, p + T);
    KVCache cache(c, p + T);
    EvalOptions lm;
    lm.n_layers = Lm;
    std::vector<int32_t> full(prefix);
    full.resize(size_t(p + T));
    const std::string bank_dir = cache_dir + "/bench-memorize-bank";
    fs::create_directories(cache_dir);

    std::vector<double> r_full, r_ref, r_write, r_append;
    for (int run = 0; run <= runs; ++run) {  // run 0 warms up
      auto t0 = Clock::now();
      for (const auto& r : refs) {
        std::copy(r.begin(), r.end(), full.begin() + p);
        cache.clear();
        fwd.eval(full, cache, nullptr, false, lm);
      }
      const double s_full = seconds_since(t0);

      cache.clear();
      fwd.eval(prefix, cache, nullptr, false, lm);
      t0 = Clock::now();
      for (const auto& r : refs) {
        cache.truncate(p);
        fwd.eval(r, cache, nullptr, false, lm);
      }
      const double s_ref = seconds_since(t0);

      t0 = Clock::now();
      for (const auto& r : refs) {
        const ExplicitMemory m = writer.write(r);
        if (m.n_tokens != T) throw Error("unexpected memory");
      }
      const double s_write = seconds_since(t0);

      fs::remove_all(bank_dir);
      auto bank = MemoryBank::create(bank_dir, *model, "bf16", "bf16");
      Document doc{"bench", "", "", ""};
      std::vector<ReferenceText> texts;
      for (const auto& r : refs) {
        ReferenceText t;
        t.doc_id = doc.id;
        t.tokens = r;
        texts.push_back(t);
      }
      bank->add_references({doc}, {texts});
      t0 = Clock::now();
      for (int64_t i = 0; i < n_refs; ++i) bank->append(writer.write(refs[size_t(i)], i));
      bank->flush();
      const double s_append = seconds_since(t0);
      bank.reset();

      if (run == 0) continue;
      r_full.push_back(n_refs / s_full);
      r_ref.push_back(n_refs / s_ref);
      r_write.push_back(n_refs / s_write);
      r_append.push_back(n_refs / s_append);
    }
    fs::remove_all(bank_dir);

    const double base = median(r_full), peak = measure_sgemm_peak(threads);
    const double f_full = bench::forward_flops(c, p + T, 0, Lm, 0), f_ref = bench::forward_flops(c, T, p, Lm, 0);
    std::printf("sgemm peak %.1f GFLOP/s (%d threads, 2048^3)\n", peak, threads);
    std::printf("%-44s %10s %12s %11s %9s %8s\n", "", "refs/s", "tokens/s", "vs prefill", "GFLOP/s", "of peak");
    auto row = [&](const char* name, double rps, int tokens, double flops) {
      std::printf("%-44s %10.1f %12.0f %10.2fx %9.1f %8.2f\n", name, rps, rps * tokens, rps / base, rps * flops / 1e9,
                  rps * flops / 1e9 / peak);
    };
    char name[96];
    std::snprintf(name, sizeof name, "prefill p+%d (%d tokens), %d layers", T, p + T, Lm);
    row(name, median(r_full), p + T, f_full);
    std::snprintf(name, sizeof name, "prefill %d over the cached prefix, %d layers", T, Lm);
    row(name, median(r_ref), T, f_ref);
    row("MemoryWriter::write", median(r_write), T, f_ref);
    row("write + MemoryBank::append (bf16) + fsync", median(r_append), T, f_ref);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_memorize: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
