// m3/eval.h — evaluation of a model with and without explicit memory (spec §5): exact-match
// question answering, lm-evaluation-harness-style multiple choice and perplexity, each in three
// modes that share one model, bank and retriever:
//
//   memory  the read path: a Session with the memory prefix, every 64-token chunk reading the
//           memories its text retrieves (BankMemorySource);
//   none    a plain language model: no prefix, no memories (`m3 generate` without --bank);
//   rag     the RAG baseline (m3/rag.h): references retrieved once with the question's text go in
//           front of the prompt as text, a plain language model (`m3 generate --rag`).
//
// The leakage filter (paper Eq. 6, threshold 2/3) drops a retrieved reference whose overlap with
// the evaluated item — the question (QA), the context (multiple choice), the chunk's own text
// (perplexity) — is at or above the threshold, in memory and rag modes alike.
//
// What this is not: a harness of few-shot prompts or task formats. Items come as JSONL files whose
// text is used as given (docs/eval.md describes the formats and every definition).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "m3/model.h"
#include "m3/overlap.h"
#include "m3/thread_pool.h"

namespace m3 {

enum class EvalMode { Memory, None, Rag };
enum class EvalTaskKind { Qa, MultipleChoice, Perplexity };

const char* eval_mode_name(EvalMode mode);           // "memory", "none", "rag"
const char* eval_task_name(EvalTaskKind kind);       // "qa", "mc", "perplexity"
// "memory,none,rag" → modes in the order given; throws m3::Error on an unknown or repeated mode.
std::vector<EvalMode> parse_eval_modes(const std::string& list);

// ---- items ---------------------------------------------------------------------------------------

// {"id", "question", "answer": "..." or ["...", ...], "prompt"?}: greedy generation from the
// prompt, stopped at a newline. The prompt is "prompt" when given, else the question itself when
// it already ends with "A:" ("Q: What is the capital of Chad?\nA:"), else "Q: <question>\nA:".
struct QaItem {
  std::string id, question, prompt;
  std::vector<std::string> answers;  // any of them counts as a match
  int line = 0;                      // in the file
};

// {"id", "context", "choices": [...], "gold": int}: the choice with the highest log-likelihood
// given the context is the prediction.
struct McItem {
  std::string id, context;
  std::vector<std::string> choices;
  int gold = 0;
  int line = 0;
};

// {"id"?, "text"}: a document whose tokens are scored.
struct TextItem {
  std::string id, text;
  int line = 0;
};

// One input file: its slice name is the file's stem ("data/capitals.jsonl" → "capitals").
struct EvalTask {
  EvalTaskKind kind = EvalTaskKind::Qa;
  std::string name, path;
  std::vector<QaItem> qa;        // kind Qa
  std::vector<McItem> mc;        // kind MultipleChoice
  std::vector<TextItem> texts;   // kind Perplexity
  size_t size() const;
};

// Reads and validates a JSONL file (blank lines skipped); limit > 0 keeps the first `limit` items.
// Throws m3::Error naming the file, line and field: unreadable file, invalid JSON, a missing or
// mistyped field, empty choices or an empty choice, gold out of range, a file without items.
EvalTask load_eval_task(EvalTaskKind kind, const std::string& path, int limit = 0);

// ---- settings and results ------------------------------------------------------------------------

struct EvalSettings {
  std::string bank;                  // memory bank directory (needed by memory and rag modes)
  std::string retriever = "bm25";    // make_retriever spec over the bank
  int memories = 0;                  // per chunk in memory mode (0: the model's memories_per_chunk)
  int rag_references = 5;            // references in front of the prompt in rag mode
  double leakage = kEvaluationOverlapLimit;  // drop references with overlap >= this; > 1 turns the filter off
  int max_new_tokens = 24;           // QA answer length limit
  int cache_mb = 256;                // decoded-memory cache (MemoryCache) in memory mode
};

struct EvalReference {
  int64_t id = -1;
  std::string text;
};

// One item evaluated in one mode.
struct EvalRecord {
  std::string id;
  int line = 0;
  double seconds = 0;                       // wall time for the item, retrieval included
  std::vector<EvalReference> references;    // read (memory: every chunk's, first use order) or in the prompt (rag)
  int dropped = 0;                          // retrieved references the leakage filter dropped
  // QA
  std::vector<std::string> golds;           // the item's answers
  std::string answer;                       // the generated answer, trimmed
  bool exact = false, exact_ci = false;
  // MC
  std::vector<double> loglik;               // per choice: Σ log p(choice tokens | context)
  std::vector<int> choice_tokens;           // per choice: tokens scored
  int gold = -1;
  int pred = -1, pred_norm = -1;            // argmax of loglik, of loglik / choice bytes
  // perplexity
  int64_t tokens = 0;                       // tokens scored
  double nll = 0;                           // Σ −log p over them
};

// One slice (file) in one mode.
struct EvalSliceResult {
  std::string slice, path;
  EvalTaskKind kind = EvalTaskKind::Qa;
  EvalMode mode = EvalMode::None;
  bool skipped = false;       // the mode does not apply (rag for perplexity)
  std::string note;           // why it was skipped
  int n = 0;                  // items
  double accuracy = 0;        // QA: exact match; MC: acc
  double accuracy_ci = 0;     // QA: exact match ignoring ASCII case
  double accuracy_norm = 0;   // MC: acc_norm
  int64_t tokens = 0;         // perplexity: tokens scored
  double nll_per_token = 0, perplexity = 0;
  double seconds_per_item = 0;
  int64_t dropped = 0;        // leakage-filtered references over all items
  std::vector<EvalRecord> records;
};

struct EvalReport {
  std::string model_path, model_name, model_fingerprint;
  std::string bank, retriever;  // retriever: the canonical spec ("" without a bank)
  int memories = 0, rag_references = 0, max_new_tokens = 0, limit = 0, threads = 0;
  double leakage = 2.0;         // > 1: off
  int perplexity_window = 0;    // tokens per scored window, BOS included
  std::vector<EvalMode> modes;
  std::vector<EvalSliceResult> results;  // per task in input order, then per mode
};

// ---- running -------------------------------------------------------------------------------------

// Owns the bank, retriever, memory prefix and cache for one model. Items run one after another;
// the pool parallelises inside the forward passes. Not thread-safe.
class Evaluator {
 public:
  // The bank is opened when settings.bank is set (and must then belong to the model). Throws
  // m3::Error for a model without a tokenizer, a bad bank or retriever spec, or memories outside
  // 0..the model's memories_per_chunk.
  Evaluator(const Model& model, ThreadPool* pool, EvalSettings settings);
  ~Evaluator();
  Evaluator(const Evaluator&) = delete;
  Evaluator& operator=(const Evaluator&) = delete;

  bool has_bank() const;
  std::string retriever_spec() const;  // canonical; "" without a bank
  // Tokens per perplexity window, BOS included: the memory session's capacity (the context
  // length less the memory prefix and window) when the model has memory layers, so that every
  // mode scores the same windows; the context length otherwise.
  int perplexity_window() const { return window_; }

  // One item in one mode. Throws m3::Error (naming the file and line) when the item does not fit
  // the context, or when memory/rag mode is asked for without a bank.
  EvalRecord answer(const EvalTask& task, const QaItem& item, EvalMode mode);
  EvalRecord score_choices(const EvalTask& task, const McItem& item, EvalMode mode);
  EvalRecord score_text(const EvalTask& task, const TextItem& item, EvalMode mode);

  // All items of a task in one mode, with the slice's aggregates. progress(done) after each item.
  EvalSliceResult run(const EvalTask& task, EvalMode mode, const std::function<void(int)>& progress = {});

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int window_ = 0;
};

// ---- reports -------------------------------------------------------------------------------------

std::string eval_report_markdown(const EvalReport& report);  // tables per task kind
std::string eval_report_json(const EvalReport& report);      // everything, per-item details included
std::string eval_report_svg(const EvalReport& report);       // grouped bars: accuracy per slice and mode

// Exact-match helpers (exposed for tests): whitespace trimmed at both ends; ASCII case folded.
std::string eval_trim(const std::string& s);
bool eval_exact_match(const std::string& answer, const std::vector<std::string>& golds, bool ignore_case);

}  // namespace m3
