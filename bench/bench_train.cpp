// Training benchmark: tokens/s of one stage-1 training step (forward, backward, AdamW with
// clipping) of m3's TrainableModel, and, in the same run, of PyTorch on the same model shape,
// batch and thread count (tools/reference/train_reference.py --bench, float32, torch.optim.AdamW),
// with the ratio m3 / PyTorch.
//
// Usage: bench_train [--preset memory3-tiny] [--B 8] [--T 512] [--threads 2] [--steps 5] [--no-torch]
// The PyTorch side needs /usr/bin/python3 with torch and the source tree: it is found from
// $M3_SOURCE_DIR or by walking up from the executable's directory.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "m3/error.h"
#include "m3/train.h"
#include "bench_util.h"

using namespace m3;
using m3::bench::Clock;
using m3::bench::median;
using m3::bench::seconds_since;

namespace {

std::string find_oracle() {
  const std::string rel = "tools/reference/train_reference.py";
  if (const char* dir = std::getenv("M3_SOURCE_DIR")) return (std::filesystem::path(dir) / rel).string();
  std::error_code ec;
  std::filesystem::path p = std::filesystem::read_symlink("/proc/self/exe", ec).parent_path();
  for (int up = 0; up < 6 && !p.empty(); ++up, p = p.parent_path())
    if (std::filesystem::exists(p / rel)) return (p / rel).string();
  return "";
}

// Runs the command and returns the value of "tokens_per_s" in its JSON output line (0: failed).
double run_torch(const std::string& cmd) {
  FILE* f = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!f) return 0;
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  const int status = ::pclose(f);
  const size_t at = out.find("\"tokens_per_s\":");
  if (status != 0 || at == std::string::npos) {
    std::fprintf(stderr, "PyTorch run failed:\n%s\n", out.c_str());
    return 0;
  }
  std::printf("  torch: %s", out.substr(out.rfind('{', at)).c_str());
  return std::strtod(out.c_str() + at + 15, nullptr);
}

}  // namespace

int main(int argc, char** argv) {
  std::string preset = "memory3-tiny";
  int B = 8, T = 512, threads = 2, steps = 5;
  bool torch = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw Error("missing value after " + a);
      return argv[++i];
    };
    if (a == "--preset") preset = next();
    else if (a == "--B") B = std::stoi(next());
    else if (a == "--T") T = std::stoi(next());
    else if (a == "--threads") threads = std::stoi(next());
    else if (a == "--steps") steps = std::stoi(next());
    else if (a == "--no-torch") torch = false;
    else {
      std::fprintf(stderr, "usage: bench_train [--preset P] [--B 8] [--T 512] [--threads 2] [--steps 5] [--no-torch]\n");
      return 2;
    }
  }
  try {
    const ModelConfig c = model_preset(preset);
    std::printf("bench_train: %s, B=%d T=%d (%d tokens/step), %d threads\n", c.summary().c_str(), B, T, B * T, threads);
    TrainableModel model(c, 1);
    ThreadPool pool(threads);
    model.set_thread_pool(&pool);
    AdamW opt(model, AdamWConfig{});
    std::mt19937 rng(0);
    std::vector<int32_t> tokens(size_t(B) * T), targets(size_t(B) * T);
    for (auto& t : tokens) t = int32_t(rng() % uint32_t(c.vocab_size));
    for (auto& t : targets) t = int32_t(rng() % uint32_t(c.vocab_size));

    auto step = [&] {
      model.zero_grad();
      model.forward_backward(tokens.data(), targets.data(), B, T);
      opt.step(model, 1e-4f);
    };
    step();  // warm-up: allocates the activations
    std::vector<double> times, fwd;
    for (int s = 0; s < steps; ++s) {
      auto t0 = Clock::now();
      step();
      times.push_back(seconds_since(t0));
    }
    for (int s = 0; s < std::max(1, steps / 2); ++s) {
      auto t0 = Clock::now();
      model.loss(tokens.data(), targets.data(), B, T);
      fwd.push_back(seconds_since(t0));
    }
    const double med = median(times), m3_tps = double(B) * T / med;
    std::printf("  m3:    %.1f ms/step (forward %.1f ms), %.0f tokens/s\n", 1e3 * med, 1e3 * median(fwd), m3_tps);

    if (!torch) return 0;
    const std::string oracle = find_oracle();
    if (oracle.empty()) {
      std::printf("  torch: tools/reference/train_reference.py not found (set M3_SOURCE_DIR)\n");
      return 0;
    }
    const std::string cmd = "/usr/bin/python3 " + oracle + " --bench --B " + std::to_string(B) + " --T " + std::to_string(T) +
                            " --threads " + std::to_string(threads) + " --steps " + std::to_string(steps) + " --layers " +
                            std::to_string(c.n_layers) + " --dim " + std::to_string(c.dim) + " --heads " +
                            std::to_string(c.n_heads) + " --kv-heads " + std::to_string(c.n_kv_heads) + " --head-dim " +
                            std::to_string(c.head_dim) + " --ffn " + std::to_string(c.ffn_dim) + " --vocab " +
                            std::to_string(c.vocab_size);
    std::printf("  running: %s\n", cmd.c_str());
    const double torch_tps = run_torch(cmd);
    if (torch_tps > 0) std::printf("  m3 / torch = %.2fx (%.0f vs %.0f tokens/s)\n", m3_tps / torch_tps, m3_tps, torch_tps);
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
