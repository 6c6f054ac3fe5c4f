// `m3 serve`: the OpenAI-compatible HTTP server (m3/server.h). Sections: setup (bank, retriever,
// slots), admission (slots and the queue), one completion, the HTTP handlers, knowledge, metrics.
#include "m3/server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <mutex>
#include <random>
#include <shared_mutex>
#include <thread>
#include <unordered_map>

#include "m3/bank.h"
#include "m3/bank_memory_source.h"
#include "m3/bank_retriever.h"
#include "m3/chat_template.h"
#include "m3/codec.h"
#include "m3/embedder.h"
#include "m3/error.h"
#include "m3/generate.h"
#include "m3/knowledge.h"
#include "m3/memory_cache.h"
#include "m3/memory_writer.h"
#include "m3/retriever.h"
#include "m3/session.h"
#include "m3/thread_pool.h"
#include "server/api.h"
#include "server/metrics.h"

namespace m3 {

using server::ApiError;
using server::bad_request;
using server::json;
using Clock = std::chrono::steady_clock;

namespace {

constexpr int kListenBacklog = 1024;  // connections waiting to be accepted (the kernel caps it at somaxconn)

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

uint64_t random_u64() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard<std::mutex> l(mu);
  return rng();
}

std::string random_id(const char* prefix) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%s%016llx%08llx", prefix, static_cast<unsigned long long>(random_u64()),
                static_cast<unsigned long long>(random_u64() & 0xffffffffu));
  return buf;
}

int64_t unix_time() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

bool constant_time_equal(const std::string& a, const std::string& b) {
  unsigned char d = a.size() == b.size() ? 0 : 1;
  const size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) d |= static_cast<unsigned char>((i < a.size() ? a[i] : 0) ^ (i < b.size() ? b[i] : 0));
  return d == 0;
}

// Keeps chunk memory selection inside the bank's shared lock.
class LockedSource : public MemorySource {
 public:
  LockedSource(MemorySource& inner, std::shared_mutex& mu) : inner_(inner), mu_(mu) {}
  std::vector<ChunkMemory> select(int chunk, const std::string& query) override {
    std::shared_lock<std::shared_mutex> l(mu_);
    return inner_.select(chunk, query);
  }

 private:
  MemorySource& inner_;
  std::shared_mutex& mu_;
};

}  // namespace

struct Server::Impl {
  // ---- state ----------------------------------------------------------------------------------
  struct Slot {
    std::unique_ptr<ThreadPool> pool;
    std::unique_ptr<Session> session;
    std::vector<int32_t> prompt;  // the last prompt, all of it evaluated as prompt: reusable
    uint64_t version = 0;         // knowledge_version when it was evaluated
  };

  enum class Mode { None, Memory, Rag };

  const Model& model;
  ServerOptions opt;
  const Tokenizer* tok = nullptr;
  Mode mode = Mode::None;
  int64_t started = unix_time();
  int capacity = 0, chunk_length = 64, slot_threads = 1;

  std::unique_ptr<MemoryBank> bank;
  std::unique_ptr<ThreadPool> embed_pool, writer_pool;
  std::unique_ptr<Retriever> retriever;   // serves searches and memory selection
  std::unique_ptr<Retriever> side_dense;  // keeps an existing dense index in step when serving bm25
  std::unique_ptr<MemoryCache> cache;
  std::unique_ptr<BankMemorySource> source;
  std::unique_ptr<LockedSource> locked_source;
  std::unique_ptr<PrefixKV> prefix;
  std::shared_mutex bank_mu;            // shared: reads; exclusive: knowledge writes
  std::mutex writer_mu;                 // the memory writer (one add at a time)
  std::unique_ptr<MemoryWriter> writer;
  std::atomic<uint64_t> knowledge_version{0};
  bool doc_refs_built = false;          // doc id → live reference ids (for dense removal); bank_mu
  std::unordered_map<std::string, std::vector<int64_t>> doc_refs;

  std::vector<Slot> slots;
  std::mutex adm_mu;
  std::condition_variable adm_cv;
  std::vector<char> busy;
  std::deque<uint64_t> waiters;
  uint64_t next_ticket = 0;

  std::atomic<bool> stopping{false};
  std::atomic<int64_t> cancel_after_ns{0};  // steady-clock time after which running generations stop
  server::Metrics metrics;
  httplib::Server http;
  int port = -1;
  std::atomic<int> listen_sock{-1};  // the listening socket, seen by the socket-options hook (bind())

  Impl(const Model& m, ServerOptions o) : model(m), opt(std::move(o)) {
    std::signal(SIGPIPE, SIG_IGN);  // a client that hangs up must not kill the process (httplib sends without MSG_NOSIGNAL)
    setup();
  }

  // ---- setup ----------------------------------------------------------------------------------
  void setup() {
    tok = model.tokenizer();
    if (!tok) throw Error("the model carries no tokenizer: it cannot serve text");
    if (opt.slots < 1) throw Error("--slots must be >= 1");
    if (opt.queue < 0) throw Error("--queue must be >= 0");
    if (opt.max_tokens_limit < 1) throw Error("--max-tokens-limit must be >= 1");
    if (opt.max_prompt_tokens < 0) throw Error("--max-prompt-tokens must be >= 0");
    if (opt.cache_mb < 0) throw Error("--cache-mb must be >= 0");
    if (opt.max_body_bytes < 1024) throw Error("--max-body must be at least 1024 bytes");
    if (opt.queue_timeout_s <= 0) throw Error("--queue-timeout must be > 0");
    if (opt.rag && opt.bank_dir.empty()) throw Error("--rag needs a bank (--bank) to retrieve references from");
    if (opt.model_id.empty()) opt.model_id = model.config().name.empty() ? "m3" : model.config().name;
    const ModelConfig& c = model.config();
    chunk_length = c.memory.chunk_length > 0 ? c.memory.chunk_length : 64;
    int threads = opt.threads > 0 ? opt.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    slot_threads = std::max(1, threads / opt.slots);

    if (!opt.bank_dir.empty()) open_bank();
    mode = opt.bank_dir.empty() ? Mode::None : opt.rag ? Mode::Rag : Mode::Memory;

    slots.resize(static_cast<size_t>(opt.slots));
    for (Slot& s : slots) s.pool = std::make_unique<ThreadPool>(slot_threads);
    if (mode == Mode::Memory) {
      prefix = std::make_unique<PrefixKV>(model, slots[0].pool.get());
      locked_source = std::make_unique<LockedSource>(*source, bank_mu);
    }
    for (Slot& s : slots)
      s.session = mode == Mode::Memory ? std::make_unique<Session>(model, s.pool.get(), prefix.get(), locked_source.get())
                                       : std::make_unique<Session>(model, s.pool.get(), nullptr, nullptr);
    capacity = slots[0].session->capacity();
    busy.assign(slots.size(), 0);
    setup_http();
  }

  void open_bank() {
    const std::string& dir = opt.bank_dir;
    const ModelConfig& c = model.config();
    if (!MemoryBank::exists(dir)) {
      if (!opt.create_bank)
        throw Error("bank " + dir + ": no bank there (build one with `m3 memorize`, or give --create to start an empty one)");
      if (make_codec(opt.create_codec, c.head_dim)->needs_training())
        throw Error("--codec " + opt.create_codec + " needs training on memories: an empty bank needs one without (bf16, f16, int8)");
      MemoryBank::create(dir, model, opt.create_codec, opt.create_codec).reset();  // releases LOCK
      std::fprintf(stderr, "m3 serve: created an empty bank in %s (codec %s)\n", dir.c_str(), opt.create_codec.c_str());
    }
    bank = MemoryBank::open(dir, &model, !opt.read_only);

    embed_pool = std::make_unique<ThreadPool>(slot_threads);
    retriever = open_bank_retriever(model, *bank, opt.retriever, embed_pool.get());
    // Serving bm25 from a bank that also has a dense index: keep that index in step with changes.
    const std::string kind = opt.retriever.substr(0, opt.retriever.find(':'));
    if (kind == "bm25" && !opt.read_only && DenseIndex::exists(dir + "/dense"))
      side_dense = open_bank_retriever(model, *bank, "dense", embed_pool.get());

    const MemoryShape shape = MemoryShape::of(c);
    cache = std::make_unique<MemoryCache>(MemoryCache::capacity_for_bytes(opt.cache_mb << 20, shape));
    BankMemoryOptions bo;
    bo.per_chunk = c.memory.memories_per_chunk;
    source = std::make_unique<BankMemorySource>(*bank, *retriever, cache.get(), bo);
  }

  // ---- admission: slots and the queue -----------------------------------------------------------
  enum class Admit { Ok, Full, Timeout, Stopping };

  // Prompt tokens a slot can keep for `tokens` (see m3/server.h: whole chunks of its last prompt).
  int reusable(const Slot& s, const std::vector<int32_t>& tokens) const {
    if (s.prompt.empty() || tokens.size() < 2) return 0;
    if (mode == Mode::Memory && s.version != knowledge_version.load()) return 0;
    const size_t n = std::min(s.prompt.size(), tokens.size() - 1);  // leave one token to evaluate
    size_t common = 0;
    while (common < n && s.prompt[common] == tokens[common]) ++common;
    return static_cast<int>(common / chunk_length * chunk_length);
  }

  // A free slot (the one that can reuse the most of `tokens`), waiting in FIFO order.
  int acquire(const std::vector<int32_t>& tokens, Admit& why) {
    std::unique_lock<std::mutex> l(adm_mu);
    if (stopping) {
      why = Admit::Stopping;
      return -1;
    }
    auto free_slots = [&] { return static_cast<size_t>(std::count(busy.begin(), busy.end(), 0)); };
    if (free_slots() == 0 || !waiters.empty()) {
      if (waiters.size() >= static_cast<size_t>(opt.queue)) {
        why = Admit::Full;
        return -1;
      }
      const uint64_t ticket = next_ticket++;
      waiters.push_back(ticket);
      const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opt.queue_timeout_s));
      auto my_turn = [&] {
        const size_t pos = static_cast<size_t>(std::find(waiters.begin(), waiters.end(), ticket) - waiters.begin());
        return pos < free_slots();
      };
      const bool ok = adm_cv.wait_until(l, deadline, [&] { return stopping.load() || my_turn(); });
      waiters.erase(std::find(waiters.begin(), waiters.end(), ticket));
      adm_cv.notify_all();  // positions moved
      if (stopping) {
        why = Admit::Stopping;
        return -1;
      }
      if (!ok) {
        why = Admit::Timeout;
        return -1;
      }
    }
    int best = -1, best_reuse = -1;
    for (size_t i = 0; i < slots.size(); ++i) {
      if (busy[i]) continue;
      const int r = reusable(slots[i], tokens);
      if (r > best_reuse) best = static_cast<int>(i), best_reuse = r;
    }
    busy[static_cast<size_t>(best)] = 1;
    why = Admit::Ok;
    return best;
  }

  void release(int slot) {
    {
      std::lock_guard<std::mutex> l(adm_mu);
      busy[static_cast<size_t>(slot)] = 0;
    }
    adm_cv.notify_all();
  }

  struct Lease {
    Impl* impl = nullptr;
    int slot = -1;
    Lease() = default;
    Lease(Impl* i, int s) : impl(i), slot(s) {}
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease() { reset(); }
    void reset() {
      if (impl && slot >= 0) impl->release(slot);
      slot = -1;
    }
  };

  std::pair<int, int> admission_state() {
    std::lock_guard<std::mutex> l(adm_mu);
    return {static_cast<int>(std::count(busy.begin(), busy.end(), 1)), static_cast<int>(waiters.size())};
  }

  bool cancel_due() const {
    const int64_t t = cancel_after_ns.load();
    return t != 0 && Clock::now().time_since_epoch().count() >= t;
  }

  // ---- one completion -----------------------------------------------------------------------------
  struct Job {
    server::CompletionRequest req;
    std::vector<int32_t> tokens;  // the whole prompt, BOS first
    int max_tokens = 16;
    std::vector<std::string> stop;
    json rag = nullptr;           // the RAG provenance entry
    std::string id;
    int64_t created = 0;
    double queue_seconds = 0;
    Lease lease;
  };

  // Retrieves references for a RAG prompt: "Reference: <text>\n" each, then "\n".
  std::string rag_block(const std::string& query, json& entry, int drop) {
    const int k = (opt.rag_references > 0 ? opt.rag_references : model.config().memory.memories_per_chunk) - drop;
    entry = {{"chunk", -1}, {"query", query}, {"references", json::array()}};
    if (k <= 0) return "";
    std::string text;
    std::shared_lock<std::shared_mutex> l(bank_mu);
    for (const SearchHit& h : retriever->search(query, k + 8)) {
      if (static_cast<int>(entry["references"].size()) >= k) break;
      ReferenceInfo r = bank->reference(h.id);
      if (r.deleted) continue;
      text += "Reference: " + r.text + "\n";
      entry["references"].push_back({{"id", r.id}, {"document", r.doc_id}, {"title", r.doc_title}, {"text", r.text}});
    }
    return text.empty() ? text : text + "\n";
  }

  // Parses and validates a completion request into a Job (everything that can be a 4xx).
  std::shared_ptr<Job> make_job(const httplib::Request& req, bool chat) {
    auto job = std::make_shared<Job>();
    // Token ids must be the model's and the tokenizer's (which may be the smaller of the two: the
    // streamer decodes prompt ids too).
    const int vocab = std::min(model.config().vocab_size, tok->vocab_size());
    job->req = server::parse_completion(server::parse_body(req.body), chat, opt.sampler, opt.max_tokens_limit, vocab);
    server::CompletionRequest& cr = job->req;
    if (!cr.seed_given) cr.sampler.seed = random_u64();
    job->stop = cr.stop;
    std::string text;
    if (chat) {
      text = ChatTemplate::render(cr.messages);
      for (auto& s : ChatTemplate::stop_strings()) job->stop.push_back(s);
    } else if (!cr.prompt_is_tokens) {
      text = cr.prompt;
    }
    const int limit = opt.max_prompt_tokens > 0 ? std::min(opt.max_prompt_tokens, capacity) : capacity;
    auto encode = [&](const std::string& before) {
      std::vector<int32_t> t = tok->encode(before + text, true);
      if (cr.prompt_is_tokens) {
        if (before.empty() && !cr.prompt_tokens.empty() && cr.prompt_tokens[0] == tok->bos_id()) t.clear();
        t.insert(t.end(), cr.prompt_tokens.begin(), cr.prompt_tokens.end());
      }
      return t;
    };
    job->tokens = encode("");
    if (mode == Mode::Rag) {
      std::string query;
      if (chat) {
        for (const auto& m : cr.messages)
          if (m.role == "user") query = m.content;
      } else {
        query = cr.prompt_is_tokens ? tok->decode(cr.prompt_tokens) : cr.prompt;
      }
      // As many references as fit the prompt limit.
      for (int drop = 0;; ++drop) {
        json entry;
        const std::string block = rag_block(query, entry, drop);
        std::vector<int32_t> t = encode(block);
        if (static_cast<int>(t.size()) <= limit || block.empty()) {
          job->tokens = std::move(t);
          entry["token_begin"] = 0;
          entry["token_end"] = block.empty() ? 0 : static_cast<int>(tok->encode(block, true).size());
          job->rag = entry;
          break;
        }
      }
    }
    const int n = static_cast<int>(job->tokens.size());
    if (n > limit)
      throw bad_request("The prompt has " + std::to_string(n) + " tokens; this server accepts at most " + std::to_string(limit) +
                            (limit == capacity ? " (the model's context of " + std::to_string(model.config().context_length) +
                                                     " tokens less the memory prefix and window)"
                                               : std::string(" (--max-prompt-tokens)")) +
                            ".",
                        chat ? "messages" : "prompt", "context_length_exceeded");
    const int room = std::max(1, capacity - n);
    job->max_tokens = cr.max_tokens > 0 ? cr.max_tokens : chat ? std::min(opt.max_tokens_limit, room) : std::min(16, opt.max_tokens_limit);
    job->id = random_id(chat ? "chatcmpl-" : "cmpl-");
    job->created = unix_time();
    return job;
  }

  // Waits for a slot; throws 503 when none comes.
  void admit(Job& job) {
    const auto t0 = Clock::now();
    Admit why;
    const int slot = acquire(job.tokens, why);
    if (slot < 0) {
      const char* reason = why == Admit::Full ? "queue_full" : why == Admit::Timeout ? "queue_timeout" : "stopping";
      metrics.rejected(reason);
      const std::string msg = why == Admit::Full      ? "All " + std::to_string(opt.slots) + " slots are busy and the queue of " +
                                                            std::to_string(opt.queue) + " is full; retry later."
                              : why == Admit::Timeout ? "No slot became free within " + json(opt.queue_timeout_s).dump() +
                                                            " s; retry later."
                                                      : std::string("The server is shutting down.");
      throw ApiError(503, msg, "server_error", "", why == Admit::Stopping ? "server_shutting_down" : "server_busy");
    }
    job.lease.impl = this;
    job.lease.slot = slot;
    job.queue_seconds = seconds_since(t0);
  }

  // Runs the job on its slot; on_text as for generate().
  GenerateResult run(Job& job, const std::function<bool(const std::string&)>& on_text) {
    Slot& s = slots[static_cast<size_t>(job.lease.slot)];
    const uint64_t version = knowledge_version.load();
    const int reuse = reusable(s, job.tokens);
    s.prompt.clear();  // not reusable until the prompt has been evaluated completely
    s.session->truncate(reuse);
    GenerateOptions go;
    go.max_tokens = job.max_tokens;
    go.sampler = job.req.sampler;
    go.stop = job.stop;
    go.ignore_eos = job.req.ignore_eos;
    auto wrapped = [&](const std::string& text) {
      if (opt.token_delay_ms > 0) std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(opt.token_delay_ms));
      const bool keep = on_text ? on_text(text) : true;
      return keep && !cancel_due();
    };
    GenerateResult r = generate(*s.session, std::span<const int32_t>(job.tokens).subspan(static_cast<size_t>(reuse)), go, wrapped);
    s.prompt = job.tokens;
    s.version = version;
    r.prompt_tokens = static_cast<int>(job.tokens.size());
    server::GenerationSample m;
    m.prompt_tokens = r.prompt_tokens;
    m.reused_tokens = reuse;
    m.completion_tokens = static_cast<int>(r.tokens.size());
    m.queue_seconds = job.queue_seconds;
    m.prompt_seconds = r.prompt_seconds;
    m.decode_seconds = r.decode_seconds;
    metrics.generation(m);
    return r;
  }

  // What each chunk of the slot's context read (call while holding the slot).
  json provenance(const Job& job) {
    json out = json::array();
    if (mode == Mode::Rag) {
      out.push_back(job.rag);
      return out;
    }
    if (mode != Mode::Memory) return out;
    std::shared_lock<std::shared_mutex> l(bank_mu);
    std::unordered_map<int64_t, json> seen;
    for (const ChunkRecord& rec : slots[static_cast<size_t>(job.lease.slot)].session->chunks()) {
      json refs = json::array();
      for (int64_t id : rec.reference_ids) {
        auto it = seen.find(id);
        if (it == seen.end()) {
          json r;
          try {
            const ReferenceInfo info = bank->reference(id);
            r = {{"id", id}, {"document", info.doc_id}, {"title", info.doc_title}, {"text", info.text}};
          } catch (const Error& e) {
            r = {{"id", id}, {"error", e.what()}};
          }
          it = seen.emplace(id, std::move(r)).first;
        }
        refs.push_back(it->second);
      }
      out.push_back({{"chunk", rec.chunk},
                     {"token_begin", rec.token_begin},
                     {"token_end", rec.token_end},
                     {"query", rec.query},
                     {"references", std::move(refs)}});
    }
    return out;
  }

  const char* mode_name() const { return mode == Mode::Memory ? "memory" : mode == Mode::Rag ? "rag" : "none"; }

  static json usage(const GenerateResult& r) {
    const int c = static_cast<int>(r.tokens.size());
    return {{"prompt_tokens", r.prompt_tokens}, {"completion_tokens", c}, {"total_tokens", r.prompt_tokens + c}};
  }

  json chunk_object(const Job& job, const std::string& text, const json& finish, bool first) const {
    json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", finish}};
    if (job.req.chat) {
      json delta = json::object();
      if (first) delta["role"] = "assistant";
      if (first || !text.empty()) delta["content"] = text;
      choice["delta"] = delta;
    } else {
      choice["text"] = text;
    }
    return {{"id", job.id},
            {"object", job.req.chat ? "chat.completion.chunk" : "text_completion"},
            {"created", job.created},
            {"model", opt.model_id},
            {"choices", json::array({choice})}};
  }

  void completion(const httplib::Request& req, httplib::Response& res, bool chat) {
    std::shared_ptr<Job> job = make_job(req, chat);
    admit(*job);
    if (!job->req.stream) {
      GenerateResult r = run(*job, {});
      json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", r.finish_reason}};
      if (chat)
        choice["message"] = {{"role", "assistant"}, {"content", ChatTemplate::reply_text(r.text)}};
      else
        choice["text"] = r.text;
      json out = {{"id", job->id},
                  {"object", chat ? "chat.completion" : "text_completion"},
                  {"created", job->created},
                  {"model", opt.model_id},
                  {"choices", json::array({choice})},
                  {"usage", usage(r)},
                  {"memory_mode", mode_name()},
                  {"memories", provenance(*job)}};
      job->lease.reset();
      res.set_content(dump(out), "application/json");
      return;
    }
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    res.set_chunked_content_provider("text/event-stream", [this, job](size_t, httplib::DataSink& sink) {
      bool alive = true;
      auto send = [&](const json& j) {
        if (!alive) return false;
        const std::string s = "data: " + dump(j) + "\n\n";
        alive = sink.write(s.data(), s.size());
        return alive;
      };
      LeadingSpaceTrimmer trim;
      try {
        if (job->req.chat) send(chunk_object(*job, "", nullptr, true));
        GenerateResult r = run(*job, [&](const std::string& piece) {
          const std::string out = job->req.chat ? trim.push(piece) : piece;
          if (!out.empty()) send(chunk_object(*job, out, nullptr, false));
          return alive;
        });
        json last = chunk_object(*job, "", r.finish_reason, false);
        last["memory_mode"] = mode_name();
        last["memories"] = provenance(*job);
        job->lease.reset();
        send(last);
        if (job->req.include_usage) {
          json u = chunk_object(*job, "", nullptr, false);
          u["choices"] = json::array();
          u["usage"] = usage(r);
          send(u);
        }
      } catch (const std::exception& e) {
        job->lease.reset();
        send(server::error_json(e.what(), "server_error", "", ""));
      }
      if (alive) {
        static const char done[] = "data: [DONE]\n\n";
        sink.write(done, sizeof done - 1);
      }
      sink.done();
      return true;
    });
  }

  // ---- knowledge ------------------------------------------------------------------------------
  void need_bank(bool write) {
    if (!bank)
      throw ApiError(404, "This server has no knowledge base: start it with --bank.", "invalid_request_error", "", "no_bank");
    if (write && opt.read_only)
      throw ApiError(403, "The bank is open read-only (--read-only): knowledge cannot be changed.", "permission_error", "",
                     "read_only");
  }

  bool removes_needed() const { return retriever->spec() != "bm25" || side_dense != nullptr; }

  // Under the exclusive lock: doc id → live reference ids, built once by reading the catalog.
  void build_doc_refs() {
    if (doc_refs_built) return;
    const int64_t n = bank->reference_count();
    for (int64_t id = 0; id < n; ++id) {
      const ReferenceInfo r = bank->reference(id);
      if (!r.deleted) doc_refs[r.doc_id].push_back(id);
    }
    doc_refs_built = true;
  }

  // Under writer_mu and the exclusive lock: memories for catalog references that have none (an
  // add that failed between the catalog and the records), so that appends line up again.
  void complete_missing_memories() {
    const int64_t refs = bank->reference_count();
    if (refs - bank->memory_count() > 1024)
      throw ApiError(409, "The bank holds " + std::to_string(refs - bank->memory_count()) +
                              " references without memories (an unfinished `m3 memorize`): finish it first.",
                     "invalid_request_error", "", "bank_incomplete");
    for (int64_t id = bank->memory_count(); id < refs; ++id) {
      const ReferenceInfo r = bank->reference(id);
      bank->append(writer->write(r.tokens, id));
    }
    bank->flush();
  }

  void add_document(const httplib::Request& req, httplib::Response& res) {
    need_bank(true);
    server::DocumentRequest dr = server::parse_document(server::parse_body(req.body));
    Document doc;
    doc.id = std::move(dr.id);
    doc.text = std::move(dr.text);
    doc.title = std::move(dr.title);
    doc.source = std::move(dr.source);
    if (bank->needs_training())
      throw ApiError(409, "The bank's codec (" + bank->key_codec().spec() + " / " + bank->value_codec().spec() +
                              ") has not been trained yet: memorize a knowledge base into it with `m3 memorize` first.",
                     "invalid_request_error", "", "codec_untrained");
    const ModelConfig& c = model.config();
    std::vector<ReferenceText> refs = split_into_references(doc, *tok, c.memory.reference_length);
    if (refs.empty()) throw bad_request("'text' holds no text (only whitespace).", "text", "invalid_value");

    std::lock_guard<std::mutex> wl(writer_mu);
    if (!writer) {
      writer_pool = std::make_unique<ThreadPool>(slot_threads);
      writer = std::make_unique<MemoryWriter>(model, writer_pool.get());
    }
    std::vector<ExplicitMemory> mems;
    mems.reserve(refs.size());
    for (const ReferenceText& r : refs) mems.push_back(writer->write(r.tokens));

    std::unique_lock<std::shared_mutex> bl(bank_mu);
    complete_missing_memories();
    const int64_t base = bank->reference_count();
    try {
      bank->add_references({doc}, {refs});
    } catch (const Error& e) {
      if (std::strstr(e.what(), "is already in the bank"))
        throw ApiError(409, "Document '" + doc.id + "' is already in the knowledge base; delete it first to replace it.",
                       "invalid_request_error", "id", "document_exists");
      throw;
    }
    knowledge_version++;  // from here on, what slots read may differ
    json out_refs = json::array();
    std::vector<int64_t> ids;
    for (size_t i = 0; i < refs.size(); ++i) {
      const int64_t id = base + static_cast<int64_t>(i);
      mems[i].reference_id = id;
      bank->append(mems[i]);
      ids.push_back(id);
      out_refs.push_back({{"id", id}, {"text", refs[i].text}, {"tokens", refs[i].tokens.size()}});
    }
    bank->flush();
    for (size_t i = 0; i < refs.size(); ++i) {
      retriever->add(ids[i], refs[i].text);
      if (side_dense) side_dense->add(ids[i], refs[i].text);
    }
    retriever->save();
    if (side_dense) side_dense->save();
    if (doc_refs_built) doc_refs[doc.id] = ids;
    bl.unlock();
    metrics.knowledge("documents_added", 1);
    metrics.knowledge("references_added", static_cast<int64_t>(refs.size()));
    json out = {{"object", "knowledge.document"}, {"id", doc.id},         {"title", doc.title},
                {"source", doc.source},           {"references", out_refs}, {"memories", refs.size()}};
    res.set_content(dump(out), "application/json");
  }

  void delete_document(const httplib::Request& req, httplib::Response& res) {
    need_bank(true);
    const std::string id = req.matches[1];
    std::unique_lock<std::shared_mutex> bl(bank_mu);
    if (removes_needed()) build_doc_refs();
    int64_t n = 0;
    try {
      n = bank->delete_document(id);
    } catch (const Error& e) {
      if (std::strstr(e.what(), "no document"))
        throw ApiError(404, "No document '" + id + "' in the knowledge base.", "invalid_request_error", "id", "document_not_found");
      throw;
    }
    knowledge_version++;
    if (removes_needed()) {
      for (int64_t rid : doc_refs[id]) {
        retriever->remove(rid);
        if (side_dense) side_dense->remove(rid);
      }
      doc_refs.erase(id);
      retriever->save();
      if (side_dense) side_dense->save();
    }
    bl.unlock();
    metrics.knowledge("documents_deleted", 1);
    metrics.knowledge("references_deleted", n);
    res.set_content(dump({{"object", "knowledge.document.deleted"}, {"id", id}, {"deleted", true}, {"references", n}}),
                    "application/json");
  }

  void search(const httplib::Request& req, httplib::Response& res) {
    need_bank(false);
    const server::SearchRequest sr = server::parse_search(server::parse_body(req.body));
    const std::string& query = sr.query;
    const int k = sr.k;
    json data = json::array();
    {
      std::shared_lock<std::shared_mutex> l(bank_mu);
      for (const SearchHit& h : retriever->search(query, k + 16)) {
        if (static_cast<int>(data.size()) >= k) break;
        const ReferenceInfo r = bank->reference(h.id);
        if (r.deleted) continue;
        data.push_back({{"rank", data.size() + 1},
                        {"id", h.id},
                        {"score", h.score},
                        {"document", r.doc_id},
                        {"title", r.doc_title},
                        {"text", r.text}});
      }
    }
    res.set_content(dump({{"object", "list"}, {"query", query}, {"retriever", retriever->spec()}, {"data", data}}),
                    "application/json");
  }

  // ---- models, health, metrics ------------------------------------------------------------------
  json model_object() const {
    const ModelConfig& c = model.config();
    json m = {{"id", opt.model_id},
              {"object", "model"},
              {"created", started},
              {"owned_by", "m3"},
              {"context_length", c.context_length},
              {"session_capacity", capacity},
              {"memory_mode", mode_name()},
              {"fingerprint", model.fingerprint()}};
    if (bank) m["bank"] = {{"dir", bank->dir()}, {"retriever", retriever->spec()}, {"writable", bank->writable()}};
    return m;
  }

  std::string metrics_text() {
    std::vector<std::string> extra;
    auto gauge = [&](const std::string& name, const std::string& help, const std::string& type, double v) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.17g", v);
      extra.push_back("# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name + " " + buf + "\n");
    };
    const auto [busy_n, queued] = admission_state();
    gauge("m3_slots", "Worker slots (sessions).", "gauge", double(opt.slots));
    gauge("m3_slots_busy", "Slots running a completion.", "gauge", busy_n);
    gauge("m3_queue_depth", "Completions waiting for a slot.", "gauge", queued);
    gauge("m3_queue_capacity", "The most completions that may wait for a slot.", "gauge", opt.queue);
    if (cache) {
      const MemoryCacheStats s = cache->stats();
      gauge("m3_memory_cache_hits_total", "Memory cache hits.", "counter", double(s.hits));
      gauge("m3_memory_cache_misses_total", "Memory cache misses (memories read from the bank).", "counter", double(s.misses));
      gauge("m3_memory_cache_evictions_total", "Memories evicted from the cache.", "counter", double(s.evictions));
      gauge("m3_memory_cache_entries", "Memories in the cache.", "gauge", double(s.entries));
      gauge("m3_memory_cache_capacity", "Memories the cache can hold.", "gauge", double(s.capacity));
    }
    if (source) {
      const RetrievalStats s = source->stats();
      extra.push_back(
          "# HELP m3_retrieval_seconds Time retrieving the references of a chunk (retriever search).\n"
          "# TYPE m3_retrieval_seconds summary\nm3_retrieval_seconds_sum " +
          json(s.retrieval_seconds).dump() + "\nm3_retrieval_seconds_count " + std::to_string(s.selections) + "\n");
      gauge("m3_memory_load_seconds_total", "Time reading and decoding memories for chunks (cache misses).", "counter",
            s.load_seconds);
      gauge("m3_memories_selected_total", "Memories chunks have read.", "counter", double(s.memories));
    }
    if (bank) {
      std::shared_lock<std::shared_mutex> l(bank_mu);
      gauge("m3_bank_memories", "Memories in the bank.", "gauge", double(bank->memory_count()));
    }
    return metrics.render(extra);
  }

  // ---- HTTP ---------------------------------------------------------------------------------------
  static std::string endpoint_of(const httplib::Request& req) {
    static const char* known[] = {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics",
                                  "/v1/knowledge/documents", "/v1/knowledge/search"};
    for (const char* k : known)
      if (req.path == k) return k;
    if (req.path.rfind("/v1/knowledge/documents/", 0) == 0) return "/v1/knowledge/documents/{id}";
    if (req.path.rfind("/v1/models/", 0) == 0) return "/v1/models/{id}";
    return "other";
  }

  void check_auth(const httplib::Request& req) const {
    if (opt.api_key.empty()) return;
    const std::string auth = req.get_header_value("Authorization");
    if (auth.empty())
      throw ApiError(401, "You didn't provide an API key: send it as 'Authorization: Bearer <key>'.", "authentication_error", "",
                     "invalid_api_key");
    if (!constant_time_equal(auth, "Bearer " + opt.api_key))
      throw ApiError(401, "Incorrect API key provided.", "authentication_error", "", "invalid_api_key");
  }

  // Every handler: authentication, then the work; every failure becomes an OpenAI error object.
  httplib::Server::Handler wrap(std::function<void(const httplib::Request&, httplib::Response&)> fn, bool auth = true) {
    return [this, fn = std::move(fn), auth](const httplib::Request& req, httplib::Response& res) {
      try {
        if (auth) check_auth(req);
        fn(req, res);
      } catch (const ApiError& e) {
        res.status = e.status;
        if (e.status == 503) res.set_header("Retry-After", "1");
        res.set_content(dump(server::error_json(e)), "application/json");
      } catch (const Error& e) {
        res.status = 500;
        res.set_content(dump(server::error_json(e.what(), "server_error", "", "")), "application/json");
      } catch (const std::exception& e) {
        res.status = 500;
        res.set_content(dump(server::error_json(std::string("internal error: ") + e.what(), "server_error", "", "")),
                        "application/json");
      }
    };
  }

  void setup_http() {
    http.new_task_queue = [n = opt.slots + opt.queue + 16] { return new httplib::ThreadPool(static_cast<size_t>(n)); };
    http.set_payload_max_length(opt.max_body_bytes);
    http.set_socket_options([this](socket_t sock) {
      httplib::default_socket_options(sock);
      listen_sock = static_cast<int>(sock);
    });
    http.set_tcp_nodelay(true);
    http.set_keep_alive_timeout(2);
    http.set_read_timeout(30);
    http.set_write_timeout(30);
    http.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      if (res.status == 503) res.set_header("Retry-After", "1");
      json e = server::error_json_for_status(res.status, req.method, req.path);
      // httplib caps form-encoded bodies at 8192 bytes whatever the limit (curl -d sends that type).
      if (res.status == 413 && req.get_header_value("Content-Type").rfind("application/x-www-form-urlencoded", 0) == 0)
        e["error"]["message"] = "The request body is larger than 8192 bytes, the limit for Content-Type "
                                "application/x-www-form-urlencoded: send JSON as Content-Type: application/json.";
      res.set_content(dump(e), "application/json");
      return httplib::Server::HandlerResponse::Handled;
    }));
    http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
      res.status = 500;
      res.set_content(dump(server::error_json("internal error", "server_error", "", "")), "application/json");
    });
    // Counted before the response goes out (a client that reads /metrics next sees its request).
    http.set_post_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      metrics.request(endpoint_of(req), res.status);
    });
    http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
      if (opt.log_requests)
        std::fprintf(stderr, "m3 serve: %s %s %d\n", req.method.c_str(), req.path.c_str(), res.status);
    });

    http.Post("/v1/completions", wrap([this](const auto& q, auto& r) { completion(q, r, false); }));
    http.Post("/v1/chat/completions", wrap([this](const auto& q, auto& r) { completion(q, r, true); }));
    http.Get("/v1/models", wrap([this](const auto&, auto& r) {
      r.set_content(dump({{"object", "list"}, {"data", json::array({model_object()})}}), "application/json");
    }));
    http.Get(R"(/v1/models/(.+))", wrap([this](const auto& q, auto& r) {
      if (q.matches[1] != opt.model_id)
        throw ApiError(404, "The model '" + std::string(q.matches[1]) + "' does not exist; this server serves '" + opt.model_id + "'.",
                       "invalid_request_error", "model", "model_not_found");
      r.set_content(dump(model_object()), "application/json");
    }));
    http.Get("/health", wrap(
                            [this](const auto&, auto& r) {
                              const auto [busy_n, queued] = admission_state();
                              if (stopping) r.status = 503;
                              r.set_content(dump({{"status", stopping ? "stopping" : "ok"},
                                                  {"slots", opt.slots},
                                                  {"slots_busy", busy_n},
                                                  {"queue_depth", queued}}),
                                            "application/json");
                            },
                            false));
    http.Get("/metrics", wrap([this](const auto&, auto& r) { r.set_content(metrics_text(), "text/plain; version=0.0.4"); }));
    http.Post("/v1/knowledge/documents", wrap([this](const auto& q, auto& r) { add_document(q, r); }));
    http.Delete(R"(/v1/knowledge/documents/(.+))", wrap([this](const auto& q, auto& r) { delete_document(q, r); }));
    http.Post("/v1/knowledge/search", wrap([this](const auto& q, auto& r) { search(q, r); }));
  }

  void stop() {
    {
      std::lock_guard<std::mutex> l(adm_mu);
      if (stopping.exchange(true)) return;
      const auto grace = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(std::max(0.0, opt.shutdown_grace_s)));
      cancel_after_ns = (Clock::now() + grace).time_since_epoch().count();
    }
    adm_cv.notify_all();  // queued requests get 503; run()'s watcher stops the listener
  }
};

std::unique_ptr<Retriever> open_bank_retriever(const Model& model, const MemoryBank& bank, const std::string& spec,
                                               ThreadPool* pool) {
  const std::string kind = spec.substr(0, spec.find(':'));
  RetrieverOptions ro;
  ro.catalog_path = bank.catalog_path();
  if (kind == "dense" || kind == "hybrid") {
    const std::string dpath = bank.dir() + "/dense";
    if (!DenseIndex::exists(dpath))
      throw Error("bank " + bank.dir() + " has no dense index (" + dpath + ".vec) for retriever " + spec +
                  ": `m3 memorize` builds it, or use --retriever bm25");
    const ModelEmbedderSpec es = parse_model_embedder_spec(read_dense_tag(dpath), dpath + ".vec");
    const int layer = es.layer, max_tokens = es.max_tokens;
    if (layer >= model.config().n_layers)
      throw Error(dpath + ".vec: embedder layer " + std::to_string(layer) + " is not a layer of the model");
    ro.embedder = std::make_shared<ModelEmbedder>(model, layer, pool, max_tokens);
    ro.index_path = dpath;
    ro.pool = pool;
  }
  return make_retriever(spec, ro);
}

Server::Server(const Model& model, ServerOptions options) : impl_(std::make_unique<Impl>(model, std::move(options))) {}

Server::~Server() {
  if (impl_) impl_->stop();
}

int Server::bind() {
  Impl& s = *impl_;
  if (s.opt.port == 0) {
    s.port = s.http.bind_to_any_port(s.opt.host);
    if (s.port < 0) throw Error("cannot listen on " + s.opt.host + " (any port)");
  } else {
    if (s.opt.port < 0 || s.opt.port > 65535) throw Error("--port " + std::to_string(s.opt.port) + " is outside 0..65535");
    if (!s.http.bind_to_port(s.opt.host, s.opt.port))
      throw Error("cannot listen on " + s.opt.host + ":" + std::to_string(s.opt.port) + " (address in use, or not an address here)");
    s.port = s.opt.port;
  }
  // httplib 0.11 listens with a backlog of 5 (CPPHTTPLIB_LISTEN_BACKLOG, compiled into Debian's
  // library): more clients connecting at once overflow the accept queue and wait for a SYN
  // retransmission (1 s) or are reset. Found by the load test (tools/load_test.py: 16 clients
  // starting together). Linux lets listen() on a listening socket change its backlog.
  const int fd = s.listen_sock.load();
  int listening = 0;
  socklen_t len = sizeof listening;
  if (fd >= 0 && ::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0 && listening)
    ::listen(fd, kListenBacklog);
  return s.port;
}

void Server::run() {
  Impl& s = *impl_;
  if (s.port < 0) bind();
  // stop() may come before the listener runs (httplib's stop() then does nothing): a watcher
  // waits for it and stops the listener once it is running.
  std::atomic<bool> done{false};
  std::thread watcher([&] {
    while (!s.stopping && !done) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    while (!done && !s.http.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    if (!done) s.http.stop();
  });
  if (!s.stopping) s.http.listen_after_bind();
  done = true;
  watcher.join();
}

void Server::stop() { impl_->stop(); }

std::string Server::url() const {
  const std::string& h = impl_->opt.host;
  const std::string host = h.find(':') != std::string::npos ? "[" + h + "]" : h;
  return "http://" + host + ":" + std::to_string(impl_->port);
}

const ServerOptions& Server::options() const { return impl_->opt; }

}  // namespace m3
