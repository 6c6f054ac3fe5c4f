// m3 chat: an interactive conversation in the terminal with the plain-text chat template
// (m3/chat_template.h), streaming each reply, optionally reading memories from a bank.
//
// Reads stdin line by line, so it can be scripted ("printf 'Hi\n/quit\n' | m3 chat -m ..."): each
// line is a user message, except the commands /memories, /reset, /help and /quit. A reply is
// printed as it is generated and ends with a newline; command output lines start with '['.
// Prompts ("> ") appear only when stdin and stdout are terminals.
//
// The Session lives across turns. Each turn re-renders the whole transcript (the replies as the
// model wrote them), keeps the session's longest token prefix that matches it and evaluates only
// the rest, so earlier turns are never recomputed (except the few tokens where a reply's stop
// string was cut off). When the transcript outgrows the session, the oldest turns are dropped.
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "m3/bank.h"
#include "m3/bank_memory_source.h"
#include "m3/bank_remote.h"
#include "m3/chat_template.h"
#include "m3/error.h"
#include "m3/generate.h"
#include "m3/memory_cache.h"
#include "m3/retriever.h"
#include "m3/server.h"
#include "m3/session.h"

namespace m3::cli {

namespace {

struct ChatOpts {
  std::string model, bank, retriever = "bm25", system;
  int n = 256, threads = 0;
  int64_t cache_mb = 256;
  SamplerParams sp;
  bool greedy = false, mmap = false;
};

// One line of at most n bytes for display (newlines shown as spaces, cut at a UTF-8 boundary).
std::string one_line(const std::string& s, size_t n) {
  std::string out;
  for (char c : s) out += (c == '\n' || c == '\r' || c == '\t') ? ' ' : c;
  if (out.size() <= n) return out;
  size_t cut = n;
  while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xC0) == 0x80) --cut;
  return out.substr(0, cut) + "...";
}

struct Turn {
  std::string user, reply;  // reply as generated (with its leading space)
};

void chat(const ChatOpts& o) {
  if (o.n < 1) throw Error("-n must be >= 1");
  auto model = Model::load(o.model, o.mmap ? FileLoad::Map : FileLoad::Read);
  const Tokenizer* tok = model->tokenizer();
  if (!tok) throw Error(o.model + ": the model file carries no tokenizer");
  ThreadPool pool(resolve_threads(o.threads));

  std::unique_ptr<MemoryBank> bank;
  std::unique_ptr<ThreadPool> embed_pool;
  std::unique_ptr<Retriever> retriever;
  std::unique_ptr<MemoryCache> cache;
  std::unique_ptr<BankMemorySource> source;
  std::unique_ptr<PrefixKV> prefix;
  if (!o.bank.empty()) {
    bank = open_bank_for_reading(o.bank, model.get());  // a directory or redis:// (default cache)
    embed_pool = std::make_unique<ThreadPool>(1);
    retriever = open_bank_retriever(*model, *bank, o.retriever, embed_pool.get());
    cache = std::make_unique<MemoryCache>(MemoryCache::capacity_for_bytes(o.cache_mb << 20, MemoryShape::of(model->config())));
    BankMemoryOptions bo;
    bo.per_chunk = model->config().memory.memories_per_chunk;
    source = std::make_unique<BankMemorySource>(*bank, *retriever, cache.get(), bo);
    prefix = std::make_unique<PrefixKV>(*model, &pool);
  }
  Session session(*model, &pool, prefix.get(), source.get());

  GenerateOptions go;
  go.max_tokens = o.n;
  go.sampler = o.sp;
  if (o.greedy) go.sampler.temperature = 0;
  go.stop = ChatTemplate::stop_strings();

  const bool tty = ::isatty(0) && ::isatty(1);
  if (tty)
    std::fprintf(stderr, "m3 chat: %s%s. Commands: /memories /reset /quit\n", o.model.c_str(),
                 bank ? (", memories from " + o.bank).c_str() : "");

  std::vector<Turn> turns;
  int answer_begin = -1, answer_end = -1;  // the last answer's tokens (and the prompt token before them)
  auto transcript = [&](size_t from) {
    std::string t = ChatTemplate::system_block(o.system);
    for (size_t i = from; i < turns.size(); ++i) {
      t += ChatTemplate::user_turn(turns[i].user);
      if (i + 1 < turns.size()) t += turns[i].reply + ChatTemplate::assistant_end();
    }
    return t;
  };

  std::string line;
  for (;;) {
    if (tty) {
      std::printf("> ");
      std::fflush(stdout);
    }
    if (!std::getline(std::cin, line)) break;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    if (line == "/quit" || line == "/exit") break;
    if (line == "/help") {
      std::printf("[commands: /memories (references the last answer read), /reset (forget the conversation), /quit]\n");
      continue;
    }
    if (line == "/reset") {
      turns.clear();
      session.truncate(0);
      answer_begin = answer_end = -1;
      std::printf("[conversation reset]\n");
      std::fflush(stdout);
      continue;
    }
    if (line == "/memories") {
      if (!bank) {
        std::printf("[no memories: m3 chat was started without --bank]\n");
      } else if (answer_begin < 0) {
        std::printf("[no answer yet]\n");
      } else {
        // The chunks the answer's tokens (and the prompt token its first one came from) sit in.
        int shown = 0;
        for (const ChunkRecord& rec : session.chunks()) {
          if (rec.token_end <= answer_begin - 1 || rec.token_begin >= answer_end) continue;
          std::printf("[chunk %d, tokens %d..%d, retrieved with \"%s\"]\n", rec.chunk, rec.token_begin, rec.token_end - 1,
                      one_line(rec.query, 60).c_str());
          for (int64_t id : rec.reference_ids) {
            const ReferenceInfo r = bank->reference(id);
            std::printf("[  reference %lld  document %s  \"%s\"]\n", static_cast<long long>(id), r.doc_id.c_str(),
                        one_line(r.text, 100).c_str());
          }
          if (rec.reference_ids.empty()) std::printf("[  no references]\n");
          ++shown;
        }
        if (!shown) std::printf("[the last answer read no chunk]\n");
      }
      std::fflush(stdout);
      continue;
    }
    if (line[0] == '/') {
      std::printf("[unknown command %s: /memories /reset /quit; start a message with a space to send it as text]\n", line.c_str());
      std::fflush(stdout);
      continue;
    }

    turns.push_back({line, ""});
    // The transcript, dropping the oldest turns while it leaves no room to answer.
    size_t from = 0;
    std::vector<int32_t> tokens;
    for (;;) {
      tokens = tok->encode(transcript(from), true);
      if (static_cast<int>(tokens.size()) + 1 < session.capacity() || from + 1 >= turns.size()) break;
      ++from;
    }
    if (static_cast<int>(tokens.size()) >= session.capacity()) {
      std::printf("[this message is too long: %zu tokens, the session holds %d]\n", tokens.size(), session.capacity());
      std::fflush(stdout);
      turns.pop_back();
      continue;
    }
    if (from > 0) {
      turns.erase(turns.begin(), turns.begin() + static_cast<std::ptrdiff_t>(from));
      std::fprintf(stderr, "m3 chat: the conversation outgrew the context; forgot the oldest %zu turn%s\n", from, from == 1 ? "" : "s");
    }
    // Keep what the session already holds of it.
    const std::vector<int32_t>& have = session.tokens();
    size_t keep = 0;
    while (keep < have.size() && keep + 1 < tokens.size() && have[keep] == tokens[keep]) ++keep;
    session.truncate(static_cast<int>(keep));

    LeadingSpaceTrimmer trim;
    const GenerateResult r = generate(session, std::span<const int32_t>(tokens).subspan(keep), go, [&](const std::string& piece) {
      const std::string out = trim.push(piece);
      std::fwrite(out.data(), 1, out.size(), stdout);
      std::fflush(stdout);
      return true;
    });
    std::printf("\n");
    std::fflush(stdout);
    turns.back().reply = r.text;
    answer_begin = static_cast<int>(tokens.size());
    answer_end = session.n_tokens();
  }
}

}  // namespace

void register_chat(CLI::App& app) {
  auto* cmd = app.add_subcommand("chat", "Chat with a model in the terminal (reads stdin line by line; /memories /reset /quit)");
  auto o = std::make_shared<ChatOpts>();
  cmd->add_option("-m,--model", o->model, "Model file (GGUF)")->required();
  cmd->add_option("--bank", o->bank, "Memory bank (a directory or redis://host:port/NAME) to read memories from (read-only)");
  cmd->add_option("--retriever", o->retriever, "bm25, dense, hybrid, ... (dense kinds need the bank's dense index)")
      ->capture_default_str();
  cmd->add_option("--system", o->system, "System message put before the conversation");
  cmd->add_option("-n,--n-predict", o->n, "Most tokens per reply")->capture_default_str();
  add_sampler_options(cmd, o->sp);
  cmd->add_flag("--greedy", o->greedy, "Greedy decoding (same as --temp 0)");
  cmd->add_option("-t,--threads", o->threads, "Threads (0 = all cores)")->capture_default_str();
  cmd->add_option("--cache-mb", o->cache_mb, "RAM (MiB) for decoded memories")->capture_default_str();
  cmd->add_flag("--mmap", o->mmap, "Map the model file instead of copying it into memory");
  cmd->callback([o] { chat(*o); });
}

}  // namespace m3::cli
