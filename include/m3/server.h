// m3/server.h — `m3 serve`: an OpenAI-compatible HTTP server over Sessions (decisions.md
// "Serving"), with memory reading from a bank, knowledge management, limits and metrics.
//
// Endpoints (JSON; errors are OpenAI-shaped {"error": {"message", "type", "param", "code"}}):
//   POST /v1/completions        prompt (string, [string], or [token ids]) → text
//   POST /v1/chat/completions   messages → one assistant message (m3/chat_template.h)
//        fields read: model (any value; responses name the served model), prompt | messages,
//        max_tokens (or max_completion_tokens; default 16 for completions, the rest of the
//        context for chat), temperature (default 1), top_p (default 1), seed (default random),
//        stop (string or array), stream, stream_options.include_usage, n (must be 1); m3
//        extensions: top_k, min_p, repeat_penalty (defaults from ServerOptions::sampler),
//        ignore_eos. Unknown fields are ignored, as OpenAI does.
//        stream: Server-Sent Events of OpenAI's chunk objects, ending with "data: [DONE]".
//        Every completion carries "memories": per chunk {chunk, token_begin, token_end, query,
//        references: [{id, document, title, text}]} (in a stream, the chunk with finish_reason),
//        and "memory_mode": "memory" | "rag" | "none".
//   GET  /v1/models, /v1/models/{id}, /health (no API key needed), /metrics (Prometheus text 0.0.4)
//   With a bank: POST /v1/knowledge/documents {id, text, title?, source?} → its references, their
//   memories written at once with the bank's codec (409 when the id is taken or the codec is
//   untrained); DELETE /v1/knowledge/documents/{id} (tombstone; records stay until `m3 bank
//   compact`); POST /v1/knowledge/search {query, k?} → hits {rank, id, score, document, title, text}.
//   The retriever, and a dense index beside a bank served with bm25, follow every change at once
//   (and are saved).
//
// Memory modes: with a bank every request's Session reads memories retrieved from it (the
// shared prefix "<s>Reference:" and the memory window come first); with rag=true the session is a
// plain language model and the top references' text is put before the prompt instead
// ("Reference: <text>\n" each, then "\n"; retrieved with the prompt, or a chat's last user
// message); without a bank the session is a plain language model.
//
// Concurrency: `slots` worker sessions, each with its own ThreadPool of threads/slots threads
// (so slots run in parallel and never share a pool; decode is bandwidth-bound, so a few slots
// with fewer threads each serve more clients than one slot with all of them). A request holds a
// slot from its first prompt token to its last generated one; when all are busy it waits in a
// FIFO queue of at most `queue` requests for at most queue_timeout_s, else gets 503 with
// Retry-After. A slot keeps its last prompt's KV cache and reuses the longest common prefix with
// the next prompt, cut to whole chunks of the earlier prompt (so the reused state is exactly what
// a fresh run computes: same chunks, same memories, the same bits); knowledge changes void it.
//
// Locking: the bank and its retrievers sit behind one std::shared_mutex: a chunk's memory
// selection, knowledge search and provenance lookups take it shared; adding and deleting
// documents take it exclusive (MemoryBank and Retriever writes need exclusive access). A new
// document's memories are written (one writer, its own pool) before the exclusive lock is taken.
//
// The constructor sets SIGPIPE to be ignored (a client hanging up mid-response must not end the
// process). Thread safety: bind() and run() from one thread; stop() from any thread (not from a
// signal handler: have a thread wait for the signal and call it). Errors from the constructor and
// bind(): m3::Error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "m3/model.h"
#include "m3/sampler.h"

namespace m3 {

class MemoryBank;
class Retriever;
class ThreadPool;

// The retriever `spec` (m3/retriever.h) over a bank: bm25 reads its catalog; dense and hybrid load
// the index `m3 memorize` writes beside it (<bank>/dense.vec, .hnsw) and embed queries with the
// embedder that index names, on `pool` (used by nothing else at the same time). Throws m3::Error
// when the bank has no dense index for a dense spec, or the spec is unknown.
std::unique_ptr<Retriever> open_bank_retriever(const Model& model, const MemoryBank& bank, const std::string& spec,
                                               ThreadPool* pool);

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                 // 0: any free port (bind() returns it)
  std::string api_key;             // non-empty: every endpoint but /health needs "Authorization: Bearer <key>"
  std::string model_id;            // the id /v1/models lists and responses name
  std::string bank_dir;            // empty: no memories, no knowledge endpoints
  bool create_bank = false;        // create an empty bank in bank_dir when it holds none
  std::string create_codec = "bf16";  // its codec (one without training: bf16, f16, int8)
  bool read_only = false;          // open the bank read-only (knowledge add/delete answer 403)
  std::string retriever = "bm25";  // bm25 | dense[:...] | hybrid[:...] (m3/retriever.h)
  bool rag = false;                // RAG baseline: references' text in the prompt, no memories
  int rag_references = 0;          // references put in a RAG prompt (0: memories_per_chunk)
  int slots = 1;
  int queue = 8;
  double queue_timeout_s = 60;
  double shutdown_grace_s = 10;    // in-flight generations may finish for this long after stop()
  int threads = 0;                 // in all (0: all cores), split evenly among the slots
  int64_t cache_mb = 256;          // RAM for decoded memories (MemoryCache; 0 disables it)
  size_t max_body_bytes = 1 << 20;
  int max_prompt_tokens = 0;       // 0: the session's capacity
  int max_tokens_limit = 1024;     // the largest max_tokens a request may ask for
  SamplerParams sampler;           // top_k, min_p, repeat_penalty defaults (temperature/top_p come from requests)
  bool log_requests = false;       // one line per request on stderr
  double token_delay_ms = 0;       // tests: sleep this long whenever generated text is emitted (slows the test model
                                   // down to hold slots); `m3 serve` takes it from $M3_SERVE_TOKEN_DELAY_MS
};

class Server {
 public:
  // Opens (or creates) the bank and its retriever, computes the prefix KV and makes the slots.
  // The model must outlive the server.
  Server(const Model& model, ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds host:port; returns the port (the chosen one when options.port is 0).
  int bind();
  // Serves until stop(); returns when in-flight requests have finished.
  void run();
  // Stops accepting connections, answers queued requests 503, lets running ones finish within
  // shutdown_grace_s (then cancels them). Idempotent.
  void stop();
  // "http://host:port" once bound.
  std::string url() const;
  const ServerOptions& options() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace m3
