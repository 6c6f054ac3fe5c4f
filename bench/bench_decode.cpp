// Decode benchmark: tokens/s of single-token decode for f32, q8_0 and q4_0 weights on a random
// ~1.1B-parameter Llama-shaped model (preset memory3-1b: TinyLlama's shape, the one llama.cpp's
// figures in docs/performance.md use), next to this machine's measured memory bandwidth.
//
// Decode reads every weight once per token, so its limit is bandwidth / bytes-per-token. The
// "roofline fraction" printed is (bytes read per token × tokens/s) / measured bandwidth.
// The measurement itself is m3::bench::measure_decode (m3/bench.h), shared with `m3 bench`.
//
// Usage: bench_decode [--preset memory3-1b] [--threads 2] [--tokens 32] [--runs 3]
//                     [--types f32,q8_0,q4_0] [--cache-dir /tmp/m3-bench] [--mmap]
// --mmap maps the file instead of copying the weights into huge-page memory (Model::load).
// Model files are generated once into the cache dir and reused (4.4 GB for f32 at 1.1B).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "m3/bench.h"
#include "m3/error.h"
#include "m3/model.h"
#include "m3/probe.h"

using namespace m3;
using m3::bench::Clock;
using m3::bench::seconds_since;

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
                runs, use_mmap ? "mmap'd (quantized ones packed at the first Forward)" : "copied/packed into huge-page memory");
    const double bw1 = measure_read_bandwidth(1), bw = measure_read_bandwidth(threads);
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
        bench::make_random_model(path, c, *type);
        std::fprintf(stderr, "  done in %.1f s\n", seconds_since(t0));
      }
      auto model = Model::load(path, use_mmap ? FileLoad::Map : FileLoad::Read);
      const bench::DecodeResult r = bench::measure_decode(*model, pool, prompt, n_tokens, runs);
      std::printf("%-6s %10.2f %12.3e %10.2f %14.1f %11.0f%%\n", tname.c_str(), model->file().mapping().size() / 1e9,
                  r.bytes_per_token, r.tok_s, r.tok_s * r.bytes_per_token / 1e9, 100.0 * r.tok_s * r.bytes_per_token / 1e9 / bw);
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_decode: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
