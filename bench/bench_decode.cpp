// Decode benchmark: tokens/s of single-token decode for f32, q8_0 and q4_0 weights on a random
// ~1.1B-parameter Llama-shaped model (preset memory3-1b: TinyLlama's shape, the one llama.cpp's
// figures in docs/performance.md use), next to this machine's measured memory bandwidth.
//
// Decode reads every weight once per token, so its limit is bandwidth / bytes-per-token. The
// "roofline fraction" printed is (bytes read per token × tokens/s) / measured bandwidth.
//
// Usage: bench_decode [--preset memory3-1b] [--threads 2] [--tokens 32] [--runs 3]
//                     [--types f32,q8_0,q4_0] [--cache-dir /tmp/m3-bench] [--mmap]
// --mmap decodes from the mapped file (4 KiB pages) instead of huge-page memory.
// Model files are generated once into the cache dir and reused (4.4 GB for f32 at 1.1B).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <immintrin.h>

#include "m3/error.h"
#include "m3/forward.h"
#include "m3/model.h"
#include "bench_util.h"

using namespace m3;
using m3::bench::Clock;
using m3::bench::median;
using m3::bench::seconds_since;

namespace {

// Read bandwidth: AVX2 sum over a buffer much larger than the L3 cache, split over threads.
// Returns the best of `reps` passes in GB/s (the roofline is what the machine can do at best).
double measure_bandwidth(int threads, size_t bytes = size_t(1) << 30, int reps = 7) {
  Buffer buf(bytes);
  float* p = buf.as<float>();
  const size_t n = bytes / sizeof(float);
  for (size_t i = 0; i < n; i += 1024) p[i] = 1.0f;  // touch every page
  ThreadPool pool(threads);
  std::vector<float> sink(threads);
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    pool.parallel_for(threads, [&](int64_t b, int64_t e, int) {
      for (int64_t part = b; part < e; ++part) {
        const size_t lo = n / threads * part, hi = part + 1 == threads ? n : n / threads * (part + 1);
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (size_t i = lo; i + 32 <= hi; i += 32) {
          a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
          a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
          a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
          a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
        }
        alignas(32) float out[8];
        _mm256_store_ps(out, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
        sink[part] = out[0];
      }
    });
    best = std::max(best, bytes / seconds_since(t0) / 1e9);
  }
  volatile float keep = sink[0];
  (void)keep;
  return best;
}

// Fast deterministic fill (xorshift, uniform with std ~0.02): quality is irrelevant for speed.
void fill_row(float* x, int64_t n, uint64_t& s) {
  for (int64_t i = 0; i < n; ++i) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    x[i] = (static_cast<float>(s >> 40) / float(1 << 24) - 0.5f) * 0.07f;
  }
}

void make_model(const std::string& path, const ModelConfig& c, DType type) {
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
    t.data = Buffer(rb * nrows);
    row.resize(cols);
    for (int64_t r = 0; r < nrows; ++r) {
      if (rows) fill_row(row.data(), cols, seed); else std::fill(row.begin(), row.end(), 1.0f);
      quantize_row(t.type, row.data(), t.data.data() + r * rb, cols);
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
  add("output.weight", C, c.vocab_size);
  save_model(path, c, "", ts);
}

// Bytes one decoded token reads: every weight matrix except the embedding table (one row of it).
double bytes_per_token(const Model& m, int kv_len) {
  double b = 0;
  for (const TensorView& t : m.file().tensors())
    if (t.name != "token_embd.weight") b += static_cast<double>(t.nbytes());
  const ModelConfig& c = m.config();
  b += 2.0 * c.n_layers * kv_len * c.n_kv_heads * c.head_dim * sizeof(float);  // K and V read by attention
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  std::string preset = "memory3-1b", types_arg = "f32,q8_0,q4_0", cache_dir = "/tmp/m3-bench";
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  int n_tokens = 32, runs = 3, prompt = 16;
  bool use_mmap = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) { std::fprintf(stderr, "%s needs a value\n", a.c_str()); std::exit(2); }
      return argv[++i];
    };
    if (a == "--preset") preset = next();
    else if (a == "--threads") threads = std::stoi(next());
    else if (a == "--tokens") n_tokens = std::stoi(next());
    else if (a == "--runs") runs = std::stoi(next());
    else if (a == "--types") types_arg = next();
    else if (a == "--cache-dir") cache_dir = next();
    else if (a == "--mmap") use_mmap = true;
    else { std::fprintf(stderr, "unknown option %s\n", a.c_str()); return 2; }
  }
  try {
    ModelConfig c = model_preset(preset);
    std::filesystem::create_directories(cache_dir);
    std::printf("m3 decode benchmark: preset %s (%s)\n", preset.c_str(), c.summary().c_str());
    std::printf("threads %d, prompt %d tokens, %d decoded tokens per run, median of %d runs, weights %s\n", threads, prompt, n_tokens,
                runs, use_mmap ? "mmap'd" : "in huge-page memory");
    const double bw1 = measure_bandwidth(1), bw = measure_bandwidth(threads);
    std::printf("measured read bandwidth: %.1f GB/s (1 thread), %.1f GB/s (%d threads) [best of 7 passes over 1 GiB]\n\n", bw1, bw,
                threads);
    std::printf("%-6s %10s %12s %10s %14s %12s\n", "type", "size GB", "bytes/token", "tok/s", "achieved GB/s", "of roofline");
    std::stringstream ss(types_arg);
    std::string tname;
    ThreadPool pool(threads);
    while (std::getline(ss, tname, ',')) {
      const auto type = dtype_from_name(tname);
      if (!type) throw Error("unknown type " + tname);
      const std::string path = cache_dir + "/" + preset + "-" + tname + ".gguf";
      if (!std::filesystem::exists(path)) {
        std::fprintf(stderr, "generating %s ...\n", path.c_str());
        auto t0 = Clock::now();
        make_model(path, c, *type);
        std::fprintf(stderr, "  done in %.1f s\n", seconds_since(t0));
      }
      auto model = Model::load(path, use_mmap ? FileLoad::Map : FileLoad::Read);
      std::vector<int32_t> ids(prompt);
      for (int i = 0; i < prompt; ++i) ids[i] = 1 + (i * 7919) % (c.vocab_size - 1);
      std::vector<float> logits(c.vocab_size);
      Forward fwd(*model, &pool);
      std::vector<double> rates;
      for (int r = 0; r < runs + 1; ++r) {  // first run warms the page cache
        KVCache cache(c, prompt + n_tokens + 1);
        fwd.eval(ids, cache, logits.data(), false);
        int32_t tok = 5;
        auto t0 = Clock::now();
        for (int i = 0; i < n_tokens; ++i) {
          fwd.eval(std::span<const int32_t>(&tok, 1), cache, logits.data(), false);
          tok = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
        }
        if (r > 0) rates.push_back(n_tokens / seconds_since(t0));
      }
      const double tps = median(rates);
      const double bpt = bytes_per_token(*model, prompt + n_tokens / 2);
      std::printf("%-6s %10.2f %12.3e %10.2f %14.1f %11.0f%%\n", tname.c_str(), model->file().mapping().size() / 1e9, bpt, tps,
                  tps * bpt / 1e9, 100.0 * tps * bpt / 1e9 / bw);
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_decode: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
