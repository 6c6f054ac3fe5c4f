// m3 serve: the OpenAI-compatible HTTP server (m3/server.h) from the command line. SIGINT and
// SIGTERM stop it gracefully: no new requests, queued ones answered 503, running ones finish.
//
// --bank redis://host:port/NAME serves a bank pushed to a Redis Cluster (m3/bank_remote.h): its
// files are fetched into --bank-cache (again only when their checksums changed), catalog and
// retrieval stay local, and memories are read from the cluster, so several servers share one
// knowledge base. Such a bank is served read-only: a knowledge change would reach only this
// server's copy of the catalog.
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <thread>

#include "cli/commands.h"
#include "m3/bank_remote.h"
#include "m3/error.h"
#include "m3/server.h"

namespace m3::cli {

namespace {
int g_signal_pipe[2] = {-1, -1};
extern "C" void on_signal(int sig) {
  const unsigned char b = static_cast<unsigned char>(sig);
  [[maybe_unused]] const ssize_t n = ::write(g_signal_pipe[1], &b, 1);
}
}  // namespace

void register_serve(CLI::App& app) {
  auto* cmd = app.add_subcommand("serve", "Serve a model over HTTP: OpenAI-compatible completions with explicit memory, "
                                          "knowledge management, /health and /metrics");
  struct Opts {
    std::string model;
    std::string bank_cache;
    bool mmap = false;
    ServerOptions s;
  };
  auto o = std::make_shared<Opts>();
  ServerOptions& s = o->s;
  cmd->add_option("-m,--model", o->model, "Model file (GGUF)")->required();
  cmd->add_option("--bank", s.bank_dir, "Memory bank directory, or redis://host:port[,...]/NAME (m3 bank push): requests read "
                                        "memories from it; enables /v1/knowledge/*");
  cmd->add_option("--bank-cache", o->bank_cache, "With a redis:// bank: the directory its files are fetched into "
                                                 "(default: ~/.cache/m3/banks/NAME-HASH, or $M3_BANK_CACHE/NAME-HASH)");
  cmd->add_option("--retriever", s.retriever, "bm25, dense (= dense:hnsw), dense:exact, hybrid, ... (m3 search --help)")
      ->capture_default_str();
  cmd->add_flag("--rag", s.rag, "RAG baseline: put the top references' text in the prompt instead of reading memories");
  cmd->add_option("--rag-references", s.rag_references, "References in a RAG prompt (0: the model's memories per chunk)")
      ->capture_default_str();
  cmd->add_flag("--create", s.create_bank, "Create an empty bank in --bank when there is none");
  cmd->add_option("--codec", s.create_codec, "Codec of a bank --create makes (bf16, f16, int8)")->capture_default_str();
  cmd->add_flag("--read-only", s.read_only, "Open the bank read-only (no knowledge changes; other processes may write it)");
  cmd->add_option("--host", s.host, "Address to listen on")->capture_default_str();
  cmd->add_option("--port", s.port, "Port (0: any free port)")->capture_default_str();
  cmd->add_option("--api-key", s.api_key, "Require 'Authorization: Bearer KEY' (default: $M3_API_KEY when set)");
  cmd->add_option("--model-id", s.model_id, "Model id in /v1/models and responses (default: the model's name)");
  cmd->add_option("--slots", s.slots, "Completions that run at once (each its own session and threads)")->capture_default_str();
  cmd->add_option("--queue", s.queue, "Completions that may wait for a slot; more get 503")->capture_default_str();
  cmd->add_option("--queue-timeout", s.queue_timeout_s, "Seconds a completion may wait for a slot before 503")->capture_default_str();
  cmd->add_option("-t,--threads", s.threads, "Threads in all, split evenly among the slots (0 = all cores)")->capture_default_str();
  cmd->add_option("--cache-mb", s.cache_mb, "RAM (MiB) for decoded memories (0: no cache)")->capture_default_str();
  cmd->add_option("--max-body", s.max_body_bytes, "Largest request body in bytes (413 above)")->capture_default_str();
  cmd->add_option("--max-prompt-tokens", s.max_prompt_tokens, "Longest prompt in tokens (0: the session's capacity)")
      ->capture_default_str();
  cmd->add_option("--max-tokens-limit", s.max_tokens_limit, "Largest max_tokens a request may ask for")->capture_default_str();
  cmd->add_option("--top-k", s.sampler.top_k, "Default top-k for requests that do not set it (<= 0: off)")->capture_default_str();
  cmd->add_option("--min-p", s.sampler.min_p, "Default min-p (<= 0: off)")->capture_default_str();
  cmd->add_option("--repeat-penalty", s.sampler.repeat_penalty, "Default repetition penalty (1: off)")->capture_default_str();
  cmd->add_option("--shutdown-grace", s.shutdown_grace_s, "Seconds running completions may go on after SIGINT/SIGTERM")
      ->capture_default_str();
  cmd->add_flag("--log", s.log_requests, "Log one line per request to stderr");
  cmd->add_flag("--mmap", o->mmap, "Map the model file instead of copying it into memory");
  cmd->callback([o] {
    ServerOptions opts = o->s;
    if (opts.api_key.empty())
      if (const char* k = std::getenv("M3_API_KEY")) opts.api_key = k;
    if (const char* d = std::getenv("M3_SERVE_TOKEN_DELAY_MS")) opts.token_delay_ms = std::atof(d);  // test hook
    if (opts.model_id.empty()) opts.model_id = std::filesystem::path(o->model).stem().string();

    const std::string bank_label = opts.bank_dir;
    if (is_remote_bank(opts.bank_dir)) {
      if (opts.create_bank) throw Error("--create: a bank in a cluster is written with m3 memorize and m3 bank push, not by m3 serve");
      const FetchReport f = fetch_remote_bank(opts.bank_dir, o->bank_cache);
      std::fprintf(stderr, "m3 serve: bank %s: %lld memories in the cluster; files in %s (%d fetched, %s; %d up to date)\n",
                   bank_label.c_str(), static_cast<long long>(f.records), f.dir.c_str(), f.files_fetched,
                   human_bytes(double(f.bytes_fetched)).c_str(), f.files_fresh);
      opts.bank_dir = f.dir;  // its payload.json sends the bank's record reads to the cluster
      opts.read_only = true;
    } else if (!o->bank_cache.empty()) {
      throw Error("--bank-cache is for a redis:// bank");
    }
    auto model = Model::load(o->model, o->mmap ? FileLoad::Map : FileLoad::Read);
    Server server(*model, opts);
    server.bind();

    // SIGINT/SIGTERM: the handler only writes the signal number to a pipe (any thread may take
    // the signal, OpenBLAS's included); a watcher thread reads it and stops the server.
    if (::pipe2(g_signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0) throw Error("cannot create a pipe for signal handling");
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGINT, &sa, nullptr);
    ::sigaction(SIGTERM, &sa, nullptr);
    std::atomic<bool> done{false};
    std::thread signals([&] {
      while (!done) {
        pollfd p{g_signal_pipe[0], POLLIN, 0};
        if (::poll(&p, 1, 200) <= 0) continue;
        unsigned char sig = 0;
        if (::read(g_signal_pipe[0], &sig, 1) != 1) continue;
        std::fprintf(stderr, "m3 serve: %s: stopping (running requests get %.0f s to finish)\n", sig == SIGINT ? "SIGINT" : "SIGTERM",
                     opts.shutdown_grace_s);
        server.stop();
        break;
      }
    });
    struct Join {
      std::atomic<bool>& done;
      std::thread& t;
      ~Join() {
        done = true;
        t.join();
      }
    } join{done, signals};
    std::printf("m3 serve: listening on %s (model %s, %d slot%s, %s)\n", server.url().c_str(), opts.model_id.c_str(), opts.slots,
                opts.slots == 1 ? "" : "s",
                opts.bank_dir.empty() ? "no bank" : (opts.rag ? "RAG from " + bank_label : "memories from " + bank_label).c_str());
    std::fflush(stdout);
    server.run();
    std::printf("m3 serve: stopped\n");
    std::fflush(stdout);
  });
}

}  // namespace m3::cli
