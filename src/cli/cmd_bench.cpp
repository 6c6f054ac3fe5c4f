// m3 bench: every speed figure of docs/performance.md in one run, each as a ratio to this
// machine's limits measured in the same run (m3/probe.h) or to a baseline run beside it:
//   decode    tok/s of f32, q8_0, q4_0 random models vs the bandwidth roofline
//   prefill   GFLOP/s of a T-token prefill vs the sgemm peak
//   memorize  GFLOP/s of writing memories (and of the plain prefill they replace) vs the sgemm peak
//   memory    decode with 5 memories per chunk (bank, cache off) vs without
//   train     training tokens/s vs PyTorch 1.13 on the same shape (when /usr/bin/python3 has torch)
// The measurements are m3::bench's (m3/bench.h), shared with bench/*. Random models are written to
// a temporary directory that is removed at the end (or kept in --dir and reused).
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "m3/bench.h"
#include "m3/error.h"
#include "m3/file_io.h"
#include "m3/probe.h"
#include "m3/tokenizer.h"

namespace m3::cli {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct BenchOpts {
  std::string preset = "memory3-1b", parts = "decode,prefill,memorize,memory,train", types = "f32,q8_0,q4_0";
  std::string memorize_type = "f32", memory_type = "q8_0", train_preset = "memory3-tiny", dir;
  int threads = 0, reps = 3, decode_tokens = 32, decode_prompt = 16, prefill_tokens = 256, memorize_refs = 4;
  int bank_refs = 16, memory_tokens = 128, train_batch = 8, train_seq = 512;
  bool no_torch = false, json = false;
};

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

bool has(const std::vector<std::string>& v, const std::string& x) { return std::find(v.begin(), v.end(), x) != v.end(); }

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M UTC", std::gmtime(&t));
  return buf;
}

std::string cpu_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

// A finite ratio or JSON null.
json ratio(double a, double b) { return (b > 0 && std::isfinite(a / b)) ? json(a / b) : json(nullptr); }

// The temporary directory, removed on every way out unless the user gave --dir.
struct WorkDir {
  std::string path;
  bool remove = false;
  ~WorkDir() {
    std::error_code ec;
    if (remove) fs::remove_all(path, ec);
  }
};

void run_bench(const BenchOpts& o) {
  const std::vector<std::string> parts = split_list(o.parts), types = split_list(o.types);
  for (const auto& p : parts)
    if (!has({"decode", "prefill", "memorize", "memory", "train"}, p))
      throw Error("--parts: unknown part '" + p + "' (decode, prefill, memorize, memory, train)");
  for (const auto& t : types)
    if (!dtype_from_name(t)) throw Error("--types: unknown weight type '" + t + "'");
  if (!dtype_from_name(o.memorize_type)) throw Error("--memorize-type: unknown weight type '" + o.memorize_type + "'");
  if (!dtype_from_name(o.memory_type)) throw Error("--memory-type: unknown weight type '" + o.memory_type + "'");
  if (o.reps < 1) throw Error("--reps must be at least 1");
  const int threads = resolve_threads(o.threads);
  const ModelConfig c = model_preset(o.preset);
  // Text goes to stderr when stdout carries the JSON.
  FILE* out = o.json ? stderr : stdout;
  auto say = [&](const char* fmt, auto... args) {
    std::fprintf(out, fmt, args...);
    std::fflush(out);
  };

  WorkDir work;
  if (o.dir.empty()) {
    std::string tmpl = (fs::temp_directory_path() / "m3-bench-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw Error("cannot create a temporary directory under " + fs::temp_directory_path().string());
    work.path = tmpl;
    work.remove = true;
  } else {
    work.path = o.dir;
    fs::create_directories(work.path);
  }
  const std::string src = bench::find_source_dir();
  std::string tokenizer_proto;
  if (!src.empty() && fs::exists(src + "/tests/data/test-tokenizer.model")) tokenizer_proto = read_file(src + "/tests/data/test-tokenizer.model");

  json j;
  j["time"] = utc_now();
  j["threads"] = threads;
  j["reps"] = o.reps;
  j["preset"] = o.preset;
  double load[3] = {0, 0, 0};
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3) load[0] = load[1] = load[2] = 0;
    std::fclose(f);
  }
  j["load_average"] = {load[0], load[1], load[2]};
  say("m3 bench, %s: %s, %d threads, medians of %d runs; load average %.2f %.2f %.2f%s\n", j["time"].get<std::string>().c_str(),
      o.preset.c_str(), threads, o.reps, load[0], load[1], load[2],
      load[0] > 0.5 ? " (other work on the machine lowers every figure; decode most)" : "");
  say("model: %s\n", c.summary().c_str());

  const bool need_bw = has(parts, "decode"), need_peak = has(parts, "prefill") || has(parts, "memorize");
  double bw1 = 0, bw = 0, peak = 0;
  if (need_bw) {
    bw1 = measure_read_bandwidth(1);
    bw = measure_read_bandwidth(threads);
  }
  if (need_peak) peak = measure_sgemm_peak(threads);
  j["machine"] = {{"cpu", cpu_name()}, {"read_gbs_1_thread", bw1}, {"read_gbs", bw}, {"sgemm_peak_gflops", peak}};
  say("machine: %s", cpu_name().c_str());
  if (need_bw) say("; read bandwidth %.1f GB/s (1 thread), %.1f GB/s (%d) [best of 7 passes over 1 GiB]", bw1, bw, threads);
  if (need_peak) say("; sgemm peak %.1f GFLOP/s (%d threads, 2048^3, best of 5)", peak, threads);
  say("%s", "\n");

  ThreadPool pool(threads);
  // Each weight type's model is made, measured by every part that uses it, and removed.
  std::vector<std::string> model_types;
  auto want = [&](const std::string& t) {
    if (!has(model_types, t)) model_types.push_back(t);
  };
  if (has(parts, "decode") || has(parts, "prefill"))
    for (const auto& t : types) want(t);
  const bool can_memory = !tokenizer_proto.empty() && c.memory.memory_layers > 0;
  if (has(parts, "memorize") && can_memory) want(o.memorize_type);
  if (has(parts, "memory") && can_memory) want(o.memory_type);
  if ((has(parts, "memorize") || has(parts, "memory")) && !can_memory) {
    const std::string why = tokenizer_proto.empty() ? "the source tree (tests/data/test-tokenizer.model) was not found; set M3_SOURCE_DIR"
                                                    : "the preset has no memory layers";
    say("memorize, memory: skipped (%s)\n", why.c_str());
    if (has(parts, "memorize")) j["memorize"] = {{"skipped", why}};
    if (has(parts, "memory")) j["memory"] = {{"skipped", why}};
  }
  j["decode"] = json::array();
  j["prefill"] = json::array();
  for (const std::string& tname : model_types) {
    const DType type = *dtype_from_name(tname);
    const std::string path = work.path + "/" + o.preset + "-" + tname + ".gguf";
    if (!fs::exists(path)) {
      say("\n[%s] writing a random %s model ...\n", tname.c_str(), o.preset.c_str());
      const auto t0 = bench::Clock::now();
      bench::make_random_model(path, c, type, tokenizer_proto);
      say("[%s] written in %.1f s\n", tname.c_str(), bench::seconds_since(t0));
    }
    {
      auto model = Model::load(path);
      const bool listed = has(types, tname);
      if (has(parts, "decode") && listed) {
        const bench::DecodeResult r = bench::measure_decode(*model, pool, o.decode_prompt, o.decode_tokens, o.reps);
        const double gbs = r.tok_s * r.bytes_per_token / 1e9;
        j["decode"].push_back({{"type", tname},
                               {"tok_s", r.tok_s},
                               {"bytes_per_token", r.bytes_per_token},
                               {"gbs", gbs},
                               {"roofline_tok_s", bw > 0 ? bw * 1e9 / r.bytes_per_token : 0.0},
                               {"of_roofline", ratio(gbs, bw)}});
        say("[%s] decode: %.2f tok/s, %.1f GB/s read = %.2f of the bandwidth roofline (%.1f tok/s)\n", tname.c_str(), r.tok_s, gbs,
            gbs / bw, bw * 1e9 / r.bytes_per_token);
      }
      if (has(parts, "prefill") && listed) {
        const bench::PrefillResult r = bench::measure_prefill(*model, pool, o.prefill_tokens, o.reps);
        j["prefill"].push_back({{"type", tname},
                                {"tokens", r.tokens},
                                {"seconds", r.seconds},
                                {"tok_s", r.tokens / r.seconds},
                                {"gflops", r.gflops},
                                {"of_sgemm_peak", ratio(r.gflops, peak)}});
        say("[%s] prefill %d tokens: %.3f s, %.1f GFLOP/s = %.2f of the sgemm peak\n", tname.c_str(), r.tokens, r.seconds, r.gflops,
            r.gflops / peak);
      }
      if (has(parts, "memorize") && can_memory && tname == o.memorize_type) {
        const bench::MemorizeResult r = bench::measure_memorize(*model, pool, o.memorize_refs, o.reps);
        j["memorize"] = {{"type", tname},
                         {"refs", r.refs},
                         {"reference_tokens", r.reference_tokens},
                         {"prefix_tokens", r.prefix_tokens},
                         {"layers", r.layers},
                         {"write_refs_s", r.write_refs_s},
                         {"write_gflops", r.write_gflops},
                         {"write_of_sgemm_peak", ratio(r.write_gflops, peak)},
                         {"prefill_refs_s", r.prefill_refs_s},
                         {"prefill_gflops", r.prefill_gflops},
                         {"prefill_of_sgemm_peak", ratio(r.prefill_gflops, peak)}};
        say("[%s] memorize (%d refs of %d tokens, %d layers): write %.2f refs/s, %.1f GFLOP/s = %.2f of peak; "
            "prefill p+%d %.2f refs/s, %.1f GFLOP/s = %.2f of peak\n",
            tname.c_str(), r.refs, r.reference_tokens, r.layers, r.write_refs_s, r.write_gflops, r.write_gflops / peak,
            r.reference_tokens, r.prefill_refs_s, r.prefill_gflops, r.prefill_gflops / peak);
      }
      if (has(parts, "memory") && can_memory && tname == o.memory_type) {
        const std::string text = read_file(src + "/data/embedded/moby-dick.txt");
        const std::string bank_dir = work.path + "/bank-" + model->fingerprint().substr(0, 12);
        say("[%s] memorizing %d references into a bf16 bank ...\n", tname.c_str(), o.bank_refs);
        bench::ensure_bank(*model, pool, bank_dir, text, o.bank_refs);
        std::vector<int32_t> prompt = model->tokenizer()->encode(text.substr(std::min<size_t>(20000, text.size() / 2), 4000), true);
        if (prompt.size() < 128) throw Error("the bench text is too short for a 128-token prompt");
        prompt.resize(128);
        const bench::MemoryDecodeResult r = bench::measure_memory_decode(*model, pool, bank_dir, prompt, o.memory_tokens, o.reps);
        j["memory"] = {{"type", tname},
                       {"memories", r.memories},
                       {"per_chunk", r.per_chunk},
                       {"decode_tokens", o.memory_tokens},
                       {"with_tok_s", r.with_tok_s},
                       {"without_tok_s", r.without_tok_s},
                       {"ratio", ratio(r.with_tok_s, r.without_tok_s)}};
        say("[%s] decode with memory %.2f tok/s vs without %.2f tok/s = %.3f (%d memories per chunk, bank of %lld, cache off)\n",
            tname.c_str(), r.with_tok_s, r.without_tok_s, r.with_tok_s / r.without_tok_s, r.per_chunk,
            static_cast<long long>(r.memories));
      }
    }
    if (work.remove) fs::remove(path);
  }

  if (has(parts, "train")) {
    const ModelConfig tc = model_preset(o.train_preset);
    say("\n[train] %s, B=%d T=%d ...\n", o.train_preset.c_str(), o.train_batch, o.train_seq);
    const bench::TrainResult r = bench::measure_train(tc, o.train_batch, o.train_seq, threads, std::max(3, o.reps), !o.no_torch);
    j["train"] = {{"preset", o.train_preset},
                  {"batch", o.train_batch},
                  {"seq", o.train_seq},
                  {"m3_tok_s", r.m3_tok_s},
                  {"torch_tok_s", r.torch_tok_s > 0 ? json(r.torch_tok_s) : json(nullptr)},
                  {"torch", r.torch_status},
                  {"ratio", ratio(r.m3_tok_s, r.torch_tok_s)}};
    if (r.torch_tok_s > 0)
      say("[train] m3 %.0f tokens/s vs PyTorch %.0f tokens/s = %.2fx\n", r.m3_tok_s, r.torch_tok_s, r.m3_tok_s / r.torch_tok_s);
    else
      say("[train] m3 %.0f tokens/s; PyTorch %s\n", r.m3_tok_s, r.torch_status.c_str());
  }

  // The summary: one line per ratio, the figures docs/performance.md records.
  say("\nsummary (%s, %d threads, medians of %d):\n", o.preset.c_str(), threads, o.reps);
  for (const auto& d : j["decode"])
    say("  decode %-5s  %8.2f tok/s   %5.2f of roofline\n", d["type"].get<std::string>().c_str(), d["tok_s"].get<double>(),
        d["of_roofline"].is_null() ? 0.0 : d["of_roofline"].get<double>());
  for (const auto& d : j["prefill"])
    say("  prefill %-5s %8.1f GFLOP/s %5.2f of sgemm peak (%d tokens)\n", d["type"].get<std::string>().c_str(),
        d["gflops"].get<double>(), d["of_sgemm_peak"].is_null() ? 0.0 : d["of_sgemm_peak"].get<double>(), d["tokens"].get<int>());
  if (j.contains("memorize") && j["memorize"].contains("write_gflops"))
    say("  memorize      %8.1f GFLOP/s %5.2f of sgemm peak (write; prefill p+128: %.2f)\n", j["memorize"]["write_gflops"].get<double>(),
        j["memorize"]["write_of_sgemm_peak"].is_null() ? 0.0 : j["memorize"]["write_of_sgemm_peak"].get<double>(),
        j["memorize"]["prefill_of_sgemm_peak"].is_null() ? 0.0 : j["memorize"]["prefill_of_sgemm_peak"].get<double>());
  if (j.contains("memory") && j["memory"].contains("ratio"))
    say("  memory        %8.3f with / without memory (decode)\n", j["memory"]["ratio"].is_null() ? 0.0 : j["memory"]["ratio"].get<double>());
  if (j.contains("train") && !j["train"]["ratio"].is_null())
    say("  train         %8.2fx PyTorch (tokens/s)\n", j["train"]["ratio"].get<double>());
  if (o.json) std::printf("%s\n", j.dump(2).c_str());
}

}  // namespace

void register_bench(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "Measure decode, prefill, memorize, memory and training speed against this machine's limits");
  auto o = std::make_shared<BenchOpts>();
  cmd->add_option("--preset", o->preset, "Model shape for decode, prefill, memorize, memory (memory3-tiny: a quick run)")
      ->capture_default_str();
  cmd->add_option("-t,--threads", o->threads, "Threads (0 = all cores)")->capture_default_str();
  cmd->add_option("--reps", o->reps, "Runs per measurement (medians are reported)")->capture_default_str();
  cmd->add_option("--parts", o->parts, "Which parts, comma-separated")->capture_default_str();
  cmd->add_option("--types", o->types, "Weight types for decode and prefill")->capture_default_str();
  cmd->add_option("--decode-tokens", o->decode_tokens, "Decoded tokens per decode run (after a 16-token prompt)")->capture_default_str();
  cmd->add_option("--prefill-tokens", o->prefill_tokens, "Prompt length of the prefill runs")->capture_default_str();
  cmd->add_option("--memorize-type", o->memorize_type, "Weight type of the memorize runs")->capture_default_str();
  cmd->add_option("--memorize-refs", o->memorize_refs, "References written per memorize run")->capture_default_str();
  cmd->add_option("--memory-type", o->memory_type, "Weight type of the memory runs")->capture_default_str();
  cmd->add_option("--bank-refs", o->bank_refs, "References in the memory runs' bank")->capture_default_str();
  cmd->add_option("--memory-tokens", o->memory_tokens, "Decoded tokens per memory run (64-token chunks)")->capture_default_str();
  cmd->add_option("--train-preset", o->train_preset, "Model shape of the training runs")->capture_default_str();
  cmd->add_option("--train-batch", o->train_batch, "Training batch (sequences)")->capture_default_str();
  cmd->add_option("--train-seq", o->train_seq, "Training sequence length")->capture_default_str();
  cmd->add_flag("--no-torch", o->no_torch, "Do not run the PyTorch baseline");
  cmd->add_option("--dir", o->dir, "Keep the random models and the bank here and reuse them (default: a temporary directory, removed)");
  cmd->add_flag("--json", o->json, "Print the results as JSON on stdout (the text goes to stderr)");
  cmd->callback([o] { run_bench(*o); });
}

}  // namespace m3::cli
