// Training benchmark: tokens/s of one stage-1 training step (forward, backward, AdamW with
// clipping) of m3's TrainableModel, and, in the same run, of PyTorch on the same model shape,
// batch and thread count (tools/reference/train_reference.py --bench, float32, torch.optim.AdamW),
// with the ratio m3 / PyTorch. The measurement is m3::bench::measure_train (m3/bench.h), shared
// with `m3 bench`.
//
// Usage: bench_train [--preset memory3-tiny] [--B 8] [--T 512] [--threads 2] [--steps 5] [--no-torch]
// The PyTorch side needs /usr/bin/python3 with torch and the source tree: it is found from
// $M3_SOURCE_DIR or by walking up from the executable's directory.
#include <cstdio>
#include <string>

#include "m3/bench.h"
#include "m3/error.h"

using namespace m3;

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
    std::printf("bench_train: %s, B=%d T=%d (%d tokens/step), %d threads, median of %d steps\n", c.summary().c_str(), B, T, B * T,
                threads, steps);
    const bench::TrainResult r = bench::measure_train(c, B, T, threads, steps, torch);
    std::printf("  m3:    %.0f tokens/s\n", r.m3_tok_s);
    if (r.torch_tok_s > 0)
      std::printf("  torch: %.0f tokens/s\n  m3 / torch = %.2fx\n", r.torch_tok_s, r.m3_tok_s / r.torch_tok_s);
    else
      std::printf("  torch: %s\n", r.torch_status.c_str());
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
