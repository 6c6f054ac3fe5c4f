// m3 eval: QA exact match, multiple choice and perplexity with memory, without, and with RAG
// (m3/eval.h, docs/eval.md).
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "cli/commands.h"
#include "m3/error.h"
#include "m3/eval.h"
#include "m3/progress.h"

namespace m3::cli {

namespace {

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  if (!out) throw Error(path + ": cannot create");
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  if (!out) throw Error(path + ": write failed");
}

// "0.6667", "2/3" or "off" (a threshold above 1: no reference is dropped).
double parse_leakage(const std::string& s) {
  if (s == "off") return 2.0;
  auto number = [&](const std::string& t) {
    size_t used = 0;
    double v = 0;
    try {
      v = std::stod(t, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (t.empty() || used != t.size()) throw Error("--leakage '" + s + "': expected a threshold above 0 (0.6667, 2/3) or 'off'");
    return v;
  };
  const size_t slash = s.find('/');
  const double v = slash == std::string::npos ? number(s) : number(s.substr(0, slash)) / number(s.substr(slash + 1));
  if (!(v > 0) || !std::isfinite(v)) throw Error("--leakage '" + s + "': expected a threshold above 0 (0.6667, 2/3) or 'off'");
  return v;
}

}  // namespace

void register_eval(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "Evaluate a model with memory, without, and with RAG: QA exact match, multiple choice, perplexity");
  struct Opts {
    std::string model, bank, retriever = "bm25", modes, leakage = "2/3", out;
    std::vector<std::string> qa, mc, ppl;
    int memories = 0, threads = 0, rag_references = 5, limit = 0, max_new_tokens = 24, cache_mb = 256;
    bool json = false, mmap = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("-m,--model", o->model, "Model file (GGUF)")->required();
  cmd->add_option("--bank", o->bank, "Memory bank (m3 memorize) for the memory and rag modes");
  cmd->add_option("--retriever", o->retriever, "With --bank: bm25, dense, dense:exact, hybrid")->capture_default_str();
  cmd->add_option("--memories", o->memories, "Memories per chunk in memory mode (0: the model's)")->capture_default_str();
  cmd->add_option("-t,--threads", o->threads, "Threads (0 = all cores)")->capture_default_str();
  cmd->add_option("--qa", o->qa, "QA file, JSONL {\"id\",\"question\",\"answer\"}: greedy answer, exact match (repeatable)");
  cmd->add_option("--mc", o->mc, "Multiple-choice file, JSONL {\"id\",\"context\",\"choices\",\"gold\"} (repeatable)");
  cmd->add_option("--perplexity", o->ppl, "Documents, JSONL {\"text\"}: NLL per token and perplexity (repeatable)");
  cmd->add_option("--modes", o->modes, "Comma-separated: memory, none, rag (default: all three with --bank, none without)");
  cmd->add_option("--rag-references", o->rag_references, "References in front of the prompt in rag mode")->capture_default_str();
  cmd->add_option("--leakage", o->leakage, "Drop retrieved references whose Eq. 6 overlap with the item is >= this ('off': keep all)")
      ->capture_default_str();
  auto* limit = cmd->add_option("--limit", o->limit, "Only the first N items of each file");
  cmd->add_option("--max-new-tokens", o->max_new_tokens, "QA: answer length limit in tokens")->capture_default_str();
  cmd->add_option("--cache-mb", o->cache_mb, "Memory mode: RAM for decoded memories")->capture_default_str();
  cmd->add_option("-o,--out", o->out, "Write results.json, results.md and results.svg into this directory");
  cmd->add_flag("--json", o->json, "Print results.json to stdout instead of the Markdown table");
  cmd->add_flag("--mmap", o->mmap, "Map the model file instead of copying it");
  cmd->callback([o, limit] {
    // Everything that can be wrong with the input is checked before the model loads.
    if (o->qa.empty() && o->mc.empty() && o->ppl.empty()) throw Error("nothing to evaluate: give --qa, --mc or --perplexity files");
    if (limit->count() > 0 && o->limit < 1) throw Error("--limit must be >= 1 (it keeps the first N items of each file)");
    const std::vector<EvalMode> modes = parse_eval_modes(o->modes.empty() ? (o->bank.empty() ? "none" : "memory,none,rag") : o->modes);
    for (EvalMode m : modes)
      if (m != EvalMode::None && o->bank.empty())
        throw Error(std::string("mode '") + eval_mode_name(m) + "' needs a memory bank: give --bank (or --modes none)");
    EvalSettings s;
    s.bank = o->bank;
    s.retriever = o->retriever;
    s.memories = o->memories;
    s.rag_references = o->rag_references;
    s.leakage = parse_leakage(o->leakage);
    s.max_new_tokens = o->max_new_tokens;
    s.cache_mb = o->cache_mb;
    if (s.max_new_tokens < 1) throw Error("--max-new-tokens must be >= 1");
    std::vector<EvalTask> tasks;
    for (const auto& f : o->qa) tasks.push_back(load_eval_task(EvalTaskKind::Qa, f, o->limit));
    for (const auto& f : o->mc) tasks.push_back(load_eval_task(EvalTaskKind::MultipleChoice, f, o->limit));
    for (const auto& f : o->ppl) tasks.push_back(load_eval_task(EvalTaskKind::Perplexity, f, o->limit));

    auto model = Model::load(o->model, o->mmap ? FileLoad::Map : FileLoad::Read);
    const int threads = resolve_threads(o->threads);
    ThreadPool pool(threads);
    Evaluator ev(*model, &pool, s);
    EvalReport report;
    report.model_path = o->model;
    report.model_name = model->config().name;
    report.model_fingerprint = model->fingerprint();
    report.bank = o->bank;
    report.retriever = ev.retriever_spec();
    report.memories = s.memories > 0 ? s.memories : model->config().memory.memories_per_chunk;
    report.rag_references = s.rag_references;
    report.max_new_tokens = s.max_new_tokens;
    report.limit = o->limit;
    report.threads = threads;
    report.leakage = s.leakage;
    report.perplexity_window = ev.perplexity_window();
    report.modes = modes;
    for (const EvalTask& t : tasks) {
      for (EvalMode m : modes) {
        const bool skip = t.kind == EvalTaskKind::Perplexity && m == EvalMode::Rag;
        ProgressBar bar(std::string(eval_task_name(t.kind)) + ":" + t.name + " [" + eval_mode_name(m) + "]", skip ? 0 : int64_t(t.size()),
                        "item");
        EvalSliceResult r = ev.run(t, m, [&](int done) { bar.update(done); });
        char extra[96];
        if (r.skipped) std::snprintf(extra, sizeof extra, "skipped");
        else if (t.kind == EvalTaskKind::Perplexity) std::snprintf(extra, sizeof extra, "ppl %.3f", r.perplexity);
        else std::snprintf(extra, sizeof extra, "acc %.2f%%", 100.0 * r.accuracy);
        bar.finish(extra);
        report.results.push_back(std::move(r));
      }
    }
    const std::string md = eval_report_markdown(report);
    const std::string js = eval_report_json(report);
    if (!o->out.empty()) {
      std::filesystem::create_directories(o->out);
      write_file(o->out + "/results.json", js);
      write_file(o->out + "/results.md", md);
      write_file(o->out + "/results.svg", eval_report_svg(report));
      std::fprintf(stderr, "wrote %s/results.{json,md,svg}\n", o->out.c_str());
    }
    const std::string& text = o->json ? js : md;
    std::fwrite(text.data(), 1, text.size(), stdout);
  });
}

}  // namespace m3::cli
