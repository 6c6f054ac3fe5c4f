// Running evaluation items in the memory, none and rag modes (m3/eval.h).
//
// Every mode goes through a Session, so the three share one code path for the forward pass:
//   memory  Session(prefix, BankMemorySource) — the read path, chunk by chunk;
//   none    Session(no prefix, no source)     — a plain LM, context token t at position t;
//   rag     the same plain Session, the prompt preceded by rag_block(references).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <unordered_set>

#include "m3/bank.h"
#include "m3/bank_memory_source.h"
#include "m3/bank_retriever.h"
#include "m3/error.h"
#include "m3/eval.h"
#include "m3/generate.h"
#include "m3/memory_cache.h"
#include "m3/rag.h"
#include "m3/session.h"

namespace m3 {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// log softmax(logits)[target] over V entries, in double.
double log_prob(const float* logits, int V, int32_t target) {
  const float m = *std::max_element(logits, logits + V);
  double s = 0;
  for (int v = 0; v < V; ++v) s += std::exp(static_cast<double>(logits[v]) - m);
  return static_cast<double>(logits[target]) - m - std::log(s);
}

size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  size_t n = 0;
  while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
  return n;
}

std::string where(const EvalTask& task, int line, const std::string& id) {
  return task.path + ":" + std::to_string(line) + " (id " + id + ")";
}

}  // namespace

const char* eval_mode_name(EvalMode mode) {
  switch (mode) {
    case EvalMode::Memory: return "memory";
    case EvalMode::None: return "none";
    case EvalMode::Rag: return "rag";
  }
  return "?";
}

std::vector<EvalMode> parse_eval_modes(const std::string& list) {
  std::vector<EvalMode> out;
  size_t at = 0;
  while (at <= list.size()) {
    const size_t comma = std::min(list.find(',', at), list.size());
    const std::string name = eval_trim(list.substr(at, comma - at));
    EvalMode m;
    if (name == "memory") m = EvalMode::Memory;
    else if (name == "none") m = EvalMode::None;
    else if (name == "rag") m = EvalMode::Rag;
    else throw Error("unknown mode '" + name + "' in --modes '" + list + "' (memory, none, rag)");
    if (std::find(out.begin(), out.end(), m) != out.end()) throw Error("mode '" + name + "' given twice in --modes '" + list + "'");
    out.push_back(m);
    at = comma + 1;
  }
  return out;
}

std::string eval_trim(const std::string& s) {
  const char* ws = " \t\r\n\f\v";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

bool eval_exact_match(const std::string& answer, const std::vector<std::string>& golds, bool ignore_case) {
  auto fold = [&](std::string s) {
    s = eval_trim(s);
    if (ignore_case)
      for (char& c : s)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    return s;
  };
  const std::string a = fold(answer);
  for (const std::string& g : golds)
    if (fold(g) == a) return true;
  return false;
}

// ---- Evaluator -----------------------------------------------------------------------------------

struct Evaluator::Impl {
  const Model& model;
  ThreadPool* pool;
  EvalSettings s;
  const Tokenizer& tok;
  int per_chunk = 0;
  std::unique_ptr<MemoryBank> bank;
  BankRetriever retriever;
  std::unique_ptr<MemoryCache> cache;
  std::unique_ptr<PrefixKV> prefix;  // made on the first memory-mode item

  Impl(const Model& m, ThreadPool* p, EvalSettings settings, const Tokenizer& t)
      : model(m), pool(p), s(std::move(settings)), tok(t) {}

  bool filtering() const { return s.leakage <= 1.0; }

  void need_bank(EvalMode mode) const {
    if (!bank) throw Error(std::string(eval_mode_name(mode)) + " mode needs a memory bank (--bank)");
  }

  // The most context tokens a session of this mode holds.
  int capacity(EvalMode mode) const {
    const ModelConfig& c = model.config();
    if (mode != EvalMode::Memory) return c.context_length;
    return std::max(0, c.context_length - static_cast<int>(tok.prefix_tokens(c.memory.prefix_text).size()) - c.memory.reference_length);
  }

  // A memory source for one item: the leakage filter compares with `leak` (empty: each chunk's
  // own query). Per item, so that its stats count this item's drops.
  std::unique_ptr<BankMemorySource> source(std::vector<int32_t> leak) {
    if (!prefix) prefix = std::make_unique<PrefixKV>(model, pool);
    BankMemoryOptions bo;
    bo.per_chunk = per_chunk;
    bo.max_overlap = s.leakage;
    bo.tokenizer = &tok;
    bo.leakage_tokens = std::move(leak);
    return std::make_unique<BankMemorySource>(*bank, *retriever.retriever, cache.get(), std::move(bo));
  }

  RagReferences rag(const std::string& query, std::vector<int32_t> leak) {
    RagOptions ro;
    ro.references = s.rag_references;
    ro.max_overlap = s.leakage;
    ro.tokenizer = &tok;
    ro.leakage_tokens = std::move(leak);
    return retrieve_rag_references(*bank, *retriever.retriever, query, ro);
  }

  // The references a memory-mode session read, in first-use order.
  void collect(const Session& session, std::vector<EvalReference>& out, std::unordered_set<int64_t>& seen, bool with_text) {
    for (const ChunkRecord& ch : session.chunks())
      for (int64_t id : ch.reference_ids)
        if (seen.insert(id).second) out.push_back({id, with_text ? bank->reference(id).text : std::string()});
  }

  static void keep_rag(const RagReferences& r, EvalRecord& rec) {
    for (const ReferenceInfo& ref : r.references) rec.references.push_back({ref.id, ref.text});
    rec.dropped = r.dropped;
  }
};

Evaluator::Evaluator(const Model& model, ThreadPool* pool, EvalSettings settings) {
  if (!model.tokenizer()) throw Error("the model carries no tokenizer: it cannot be evaluated on text");
  impl_ = std::make_unique<Impl>(model, pool, std::move(settings), *model.tokenizer());
  Impl& d = *impl_;
  const ModelConfig& c = model.config();
  const int max_per_chunk = c.memory.memories_per_chunk;
  if (d.s.memories < 0 || d.s.memories > max_per_chunk)
    throw Error("--memories " + std::to_string(d.s.memories) + " is outside 0.." + std::to_string(max_per_chunk) +
                " (the model's memories per chunk)");
  d.per_chunk = d.s.memories > 0 ? d.s.memories : max_per_chunk;
  if (d.s.rag_references < 0) throw Error("--rag-references must be >= 0");
  if (d.s.max_new_tokens < 1) throw Error("--max-new-tokens must be >= 1");
  if (!(d.s.leakage > 0)) throw Error("--leakage must be a number above 0 (or 'off')");
  if (d.s.cache_mb < 0) throw Error("--cache-mb must be >= 0");
  if (!d.s.bank.empty()) {
    d.bank = MemoryBank::open(d.s.bank, &model, false);
    d.retriever = open_bank_retriever(*d.bank, &model, d.s.retriever, pool);
    d.cache = std::make_unique<MemoryCache>(MemoryCache::capacity_for_bytes(int64_t(d.s.cache_mb) << 20, d.bank->shape()));
  }
  window_ = d.capacity(c.memory.memory_layers > 0 ? EvalMode::Memory : EvalMode::None);
  if (window_ < 2) throw Error("the model's context length " + std::to_string(c.context_length) + " leaves no room for a perplexity window");
}

Evaluator::~Evaluator() = default;

bool Evaluator::has_bank() const { return impl_->bank != nullptr; }
std::string Evaluator::retriever_spec() const { return impl_->bank ? impl_->retriever.retriever->spec() : std::string(); }

EvalRecord Evaluator::answer(const EvalTask& task, const QaItem& item, EvalMode mode) {
  Impl& d = *impl_;
  const auto t0 = Clock::now();
  EvalRecord rec;
  rec.id = item.id;
  rec.line = item.line;
  if (mode != EvalMode::None) d.need_bank(mode);
  const int cap = d.capacity(mode);
  std::vector<int32_t> ids = d.tok.encode(item.prompt, true);
  std::unique_ptr<BankMemorySource> source;
  if (mode == EvalMode::Memory) {
    source = d.source(d.filtering() ? d.tok.encode(item.question) : std::vector<int32_t>{});
  } else if (mode == EvalMode::Rag) {
    // Retrieved once with the question's text (spec Table 20); as many references as leave
    // room for the answer.
    RagReferences r = d.rag(item.question, d.filtering() ? d.tok.encode(item.question) : std::vector<int32_t>{});
    for (;;) {
      std::vector<int32_t> with = d.tok.encode(rag_block(r.references) + item.prompt, true);
      if (r.references.empty() || static_cast<int>(with.size()) + d.s.max_new_tokens <= cap) {
        ids = std::move(with);
        break;
      }
      r.references.pop_back();
    }
    Impl::keep_rag(r, rec);
  }
  if (static_cast<int>(ids.size()) >= cap)
    throw Error(where(task, item.line, item.id) + ": the prompt has " + std::to_string(ids.size()) + " tokens; a " +
                eval_mode_name(mode) + "-mode session holds " + std::to_string(cap) + " (the answer needs room too)");
  Session session(d.model, d.pool, mode == EvalMode::Memory ? d.prefix.get() : nullptr, source.get(),
                  std::min(cap, static_cast<int>(ids.size()) + d.s.max_new_tokens));
  GenerateOptions go;
  go.max_tokens = d.s.max_new_tokens;
  go.sampler.temperature = 0;  // greedy
  go.stop = {"\n"};
  const GenerateResult g = generate(session, ids, go);
  rec.golds = item.answers;
  rec.answer = eval_trim(g.text);
  rec.exact = eval_exact_match(rec.answer, item.answers, false);
  rec.exact_ci = eval_exact_match(rec.answer, item.answers, true);
  if (source) {
    std::unordered_set<int64_t> seen;
    d.collect(session, rec.references, seen, true);
    rec.dropped = static_cast<int>(source->stats().dropped);
  }
  rec.seconds = since(t0);
  return rec;
}

EvalRecord Evaluator::score_choices(const EvalTask& task, const McItem& item, EvalMode mode) {
  Impl& d = *impl_;
  const auto t0 = Clock::now();
  EvalRecord rec;
  rec.id = item.id;
  rec.line = item.line;
  if (mode != EvalMode::None) d.need_bank(mode);
  const int cap = d.capacity(mode);
  const int V = d.model.config().vocab_size;
  const std::vector<int32_t> leak = d.filtering() && mode != EvalMode::None ? d.tok.encode(item.context) : std::vector<int32_t>{};

  // Tokens of context and context+choice; a choice's scored tokens are those after the two
  // tokenizations' common prefix (the context's own tokens unless the tokenizer merges across the
  // boundary, in which case the merged tokens count for the choice).
  std::string context = item.context;
  std::vector<int32_t> ctx;
  std::vector<std::vector<int32_t>> whole(item.choices.size());
  size_t longest = 0;
  auto tokenize = [&] {
    ctx = d.tok.encode(context, true);
    longest = 0;
    for (size_t i = 0; i < item.choices.size(); ++i) {
      whole[i] = d.tok.encode(context + item.choices[i], true);
      longest = std::max(longest, whole[i].size());
    }
  };
  std::unique_ptr<BankMemorySource> source;
  if (mode == EvalMode::Memory) {
    source = d.source(leak);
    tokenize();
  } else if (mode == EvalMode::Rag) {
    RagReferences r = d.rag(item.context, leak);
    for (;;) {
      context = rag_block(r.references) + item.context;
      tokenize();
      if (r.references.empty() || static_cast<int>(longest) <= cap) break;
      r.references.pop_back();
    }
    Impl::keep_rag(r, rec);
  } else {
    tokenize();
  }
  if (static_cast<int>(longest) > cap)
    throw Error(where(task, item.line, item.id) + ": context and choice take " + std::to_string(longest) + " tokens; a " +
                eval_mode_name(mode) + "-mode session holds " + std::to_string(cap));
  std::vector<size_t> from(item.choices.size());
  size_t shared = ctx.size();
  for (size_t i = 0; i < item.choices.size(); ++i) {
    from[i] = std::max<size_t>(1, common_prefix(ctx, whole[i]));
    if (from[i] >= whole[i].size())
      throw Error(where(task, item.line, item.id) + ": choices[" + std::to_string(i) + "] adds no tokens to the context");
    shared = std::min(shared, from[i]);
  }

  // The shared prefix once; each choice after it, truncating back in between.
  Session session(d.model, d.pool, mode == EvalMode::Memory ? d.prefix.get() : nullptr, source.get(), static_cast<int>(longest));
  std::vector<float> last(static_cast<size_t>(V)), all;
  session.prompt(std::span<const int32_t>(ctx.data(), shared), last.data());
  std::unordered_set<int64_t> seen;
  int best = -1, best_norm = -1;
  double best_ll = 0, best_norm_ll = 0;
  for (size_t i = 0; i < item.choices.size(); ++i) {
    if (i > 0) session.truncate(static_cast<int>(shared));
    const std::vector<int32_t>& w = whole[i];
    const size_t rest = w.size() - shared;
    all.resize(rest * static_cast<size_t>(V));
    session.prompt(std::span<const int32_t>(w.data() + shared, rest), nullptr, all.data());
    double ll = 0;
    for (size_t t = from[i]; t < w.size(); ++t) {
      // Token t is predicted by the logits of token t−1.
      const float* row = t == shared ? last.data() : all.data() + (t - 1 - shared) * static_cast<size_t>(V);
      ll += log_prob(row, V, w[t]);
    }
    rec.loglik.push_back(ll);
    rec.choice_tokens.push_back(static_cast<int>(w.size() - from[i]));
    const double norm = ll / static_cast<double>(item.choices[i].size());
    if (best < 0 || ll > best_ll) best = static_cast<int>(i), best_ll = ll;
    if (best_norm < 0 || norm > best_norm_ll) best_norm = static_cast<int>(i), best_norm_ll = norm;
    if (mode == EvalMode::Memory) d.collect(session, rec.references, seen, true);
  }
  rec.gold = item.gold;
  rec.pred = best;
  rec.pred_norm = best_norm;
  if (source) rec.dropped = static_cast<int>(source->stats().dropped);
  rec.seconds = since(t0);
  return rec;
}

EvalRecord Evaluator::score_text(const EvalTask& task, const TextItem& item, EvalMode mode) {
  Impl& d = *impl_;
  const auto t0 = Clock::now();
  EvalRecord rec;
  rec.id = item.id;
  rec.line = item.line;
  if (mode == EvalMode::Rag) throw Error("rag mode does not score perplexity (references are retrieved once per question)");
  if (mode == EvalMode::Memory) d.need_bank(mode);
  const ModelConfig& c = d.model.config();
  const int V = c.vocab_size;
  const int chunk = c.memory.chunk_length > 0 ? c.memory.chunk_length : 64;
  const std::vector<int32_t> doc = d.tok.encode(item.text);
  if (doc.empty()) throw Error(where(task, item.line, item.id) + ": the text has no tokens");
  // Memory mode: each chunk retrieves with its own text and the filter compares with it.
  std::unique_ptr<BankMemorySource> source;
  if (mode == EvalMode::Memory) source = d.source({});
  std::unordered_set<int64_t> seen;
  std::vector<float> logits;
  std::vector<int32_t> seq;
  // Windows of BOS + up to window−1 document tokens, each document token scored once.
  for (size_t begin = 0; begin < doc.size(); begin += static_cast<size_t>(window_ - 1)) {
    const size_t end = std::min(doc.size(), begin + static_cast<size_t>(window_ - 1));
    seq.assign(1, d.tok.bos_id());
    seq.insert(seq.end(), doc.begin() + static_cast<std::ptrdiff_t>(begin), doc.begin() + static_cast<std::ptrdiff_t>(end));
    Session session(d.model, d.pool, mode == EvalMode::Memory ? d.prefix.get() : nullptr, source.get(), static_cast<int>(seq.size()));
    // Chunk by chunk, so that each chunk's query is its whole text and the logits stay small.
    for (size_t at = 0; at < seq.size(); at += static_cast<size_t>(chunk)) {
      const size_t n = std::min(seq.size() - at, static_cast<size_t>(chunk));
      logits.resize(n * static_cast<size_t>(V));
      session.prompt(std::span<const int32_t>(seq.data() + at, n), nullptr, logits.data());
      for (size_t j = 0; j < n && at + j + 1 < seq.size(); ++j) {
        rec.nll -= log_prob(logits.data() + j * static_cast<size_t>(V), V, seq[at + j + 1]);
        ++rec.tokens;
      }
    }
    if (source) d.collect(session, rec.references, seen, false);
  }
  if (source) rec.dropped = static_cast<int>(source->stats().dropped);
  rec.seconds = since(t0);
  return rec;
}

EvalSliceResult Evaluator::run(const EvalTask& task, EvalMode mode, const std::function<void(int)>& progress) {
  EvalSliceResult r;
  r.slice = task.name;
  r.path = task.path;
  r.kind = task.kind;
  r.mode = mode;
  if (task.kind == EvalTaskKind::Perplexity && mode == EvalMode::Rag) {
    r.skipped = true;
    r.note = "rag retrieves once per question; a document has none (and retrieving with the scored text leaks it)";
    return r;
  }
  double seconds = 0;
  int hits = 0, hits_ci = 0;
  for (size_t i = 0; i < task.size(); ++i) {
    EvalRecord rec = task.kind == EvalTaskKind::Qa               ? answer(task, task.qa[i], mode)
                     : task.kind == EvalTaskKind::MultipleChoice ? score_choices(task, task.mc[i], mode)
                                                                 : score_text(task, task.texts[i], mode);
    seconds += rec.seconds;
    r.dropped += rec.dropped;
    if (task.kind == EvalTaskKind::Qa) {
      hits += rec.exact;
      hits_ci += rec.exact_ci;
    } else if (task.kind == EvalTaskKind::MultipleChoice) {
      hits += rec.pred == task.mc[i].gold;
      hits_ci += rec.pred_norm == task.mc[i].gold;
    } else {
      r.tokens += rec.tokens;
      r.nll_per_token += rec.nll;  // the sum until the end
    }
    r.records.push_back(std::move(rec));
    if (progress) progress(static_cast<int>(i + 1));
  }
  r.n = static_cast<int>(task.size());
  r.seconds_per_item = seconds / r.n;
  if (task.kind == EvalTaskKind::Qa) {
    r.accuracy = static_cast<double>(hits) / r.n;
    r.accuracy_ci = static_cast<double>(hits_ci) / r.n;
  } else if (task.kind == EvalTaskKind::MultipleChoice) {
    r.accuracy = static_cast<double>(hits) / r.n;
    r.accuracy_norm = static_cast<double>(hits_ci) / r.n;
  } else {
    r.nll_per_token = r.tokens > 0 ? r.nll_per_token / static_cast<double>(r.tokens) : 0.0;
    r.perplexity = std::exp(r.nll_per_token);
  }
  return r;
}

}  // namespace m3
