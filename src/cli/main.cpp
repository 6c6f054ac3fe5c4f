// m3 — explicit-memory language models on CPU. Entry point: parse, dispatch, report errors as one line.
#include <cstdio>
#include <thread>

#include "cli/commands.h"
#include "m3/error.h"

namespace m3::cli {
int resolve_threads(int requested) {
  if (requested > 0) return requested;
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}
}  // namespace m3::cli

int main(int argc, char** argv) {
  CLI::App app{"m3 — a C++ engine for language models with explicit memory (Memory³).\n"
               "Models are GGUF files (architecture 'memory3' or 'llama') that carry their own tokenizer."};
  app.set_version_flag("--version", "m3 0.1.0");
  app.require_subcommand(1);
  app.fallthrough(false);
  m3::cli::register_init(app);
  m3::cli::register_inspect(app);
  m3::cli::register_quantize(app);
  m3::cli::register_generate(app);
  m3::cli::register_logits(app);
  m3::cli::register_tokenize(app);
  m3::cli::register_tokenizer(app);
  m3::cli::register_data(app);
  m3::cli::register_train(app);
  m3::cli::register_plot(app);
  m3::cli::register_memorize(app);
  m3::cli::register_bank(app);
  m3::cli::register_search(app);
  m3::cli::register_serve(app);
  m3::cli::register_chat(app);
  m3::cli::register_eval(app);
  m3::cli::register_bench(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const m3::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "m3: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "m3: internal error: %s\n", e.what());
    return 2;
  }
  return 0;
}
