// The m3 command-line tool: each subcommand registers itself on the CLI11 app.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>

#include "m3/sampler.h"

namespace m3::cli {

// Every register_* adds one subcommand and sets its callback; the callback throws m3::Error on
// bad input, which main() prints as one line with exit code 1.
void register_init(CLI::App& app);
void register_inspect(CLI::App& app);
void register_quantize(CLI::App& app);
void register_generate(CLI::App& app);
void register_logits(CLI::App& app);
void register_tokenize(CLI::App& app);
void register_tokenizer(CLI::App& app);
void register_memorize(CLI::App& app);  // cmd_memory.cpp
void register_bank(CLI::App& app);      // cmd_memory.cpp
void register_search(CLI::App& app);    // cmd_memory.cpp
void register_data(CLI::App& app);      // cmd_train.cpp
void register_train(CLI::App& app);     // cmd_train.cpp
void register_plot(CLI::App& app);      // cmd_plot.cpp
void register_serve(CLI::App& app);     // cmd_serve.cpp
void register_chat(CLI::App& app);      // cmd_chat.cpp
void register_eval(CLI::App& app);      // cmd_eval.cpp
void register_bench(CLI::App& app);     // cmd_bench.cpp

// --seed --temp --top-k --top-p --min-p --repeat-penalty --repeat-last-n (generate, chat).
void add_sampler_options(CLI::App* cmd, SamplerParams& sp);

// "512 B", "3.25 MiB": sizes for people (inspect, bank info).
std::string human_bytes(double bytes);

// Threads option shared by compute commands: 0 = all cores.
int resolve_threads(int requested);

}  // namespace m3::cli
