// m3/session.h — reading with explicit memory (spec §3, decisions.md "Reading memories"): one
// sequence's inference state, processed chunk by chunk, each chunk attending to its own memories.
//
// Positions: the constant prefix "<s>Reference:" (p tokens) sits at 0..p−1 and is computed once
// per model (PrefixKV); memories keep the rotation they were written with (p..p+127); the
// context's <s> sits at p + reference_length, context token t at p + reference_length + t.
// Chunks are chunk_length (64) context tokens counted from the context's <s>. At the memory layers
// every query of chunk c also attends to chunk c's memories (never stored in the KV cache).
//
// Which memories a chunk reads (MemorySource decides which references; Session decides the text):
//   - a chunk first reached by prompt tokens retrieves with the text of its own prompt tokens;
//   - a chunk first reached while decoding retrieves with the text of the previous chunk;
//   - once chosen, a chunk keeps its memories (the chunk in which the prompt ends keeps the
//     memories its prompt part retrieved while generation fills it).
// Without a MemorySource the session is a plain language model with the same positions.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "m3/forward.h"
#include "m3/memory.h"
#include "m3/model.h"
#include "m3/thread_pool.h"

namespace m3 {

// The prefix's keys and values at every layer: a constant of the model, shared by all sessions.
class PrefixKV {
 public:
  PrefixKV(const Model& model, ThreadPool* pool);
  const std::vector<int32_t>& tokens() const { return tokens_; }
  int size() const { return static_cast<int>(tokens_.size()); }
  // Copies the prefix rows into an empty cache.
  void copy_into(KVCache& cache) const;

 private:
  std::vector<int32_t> tokens_;
  std::unique_ptr<KVCache> cache_;
  int n_layers_ = 0;
  size_t row_ = 0;  // G·D floats per cached token and layer
};

// One chosen memory: the reference it came from and its decoded keys and values.
struct ChunkMemory {
  int64_t reference_id = -1;
  std::shared_ptr<const ExplicitMemory> memory;
};

// Chooses and supplies the memories of a chunk. Implementations: a bank with a retriever
// (runtime/bank_memory_source.h), fixed assignments (tests).
class MemorySource {
 public:
  virtual ~MemorySource() = default;
  // The memories chunk `chunk` reads, chosen with `query` (decoded text); ids unique, at most
  // the model's memory.per_chunk. Throws m3::Error when a memory cannot be read.
  virtual std::vector<ChunkMemory> select(int chunk, const std::string& query) = 0;
};

// Provenance: what one chunk read.
struct ChunkRecord {
  int chunk = 0;
  int token_begin = 0, token_end = 0;  // context tokens of the chunk evaluated so far
  std::string query;                   // the text its memories were retrieved with
  std::vector<int64_t> reference_ids;
};

class Session {
 public:
  // capacity: context tokens the session may hold (0: as many as the model's positions allow).
  // memories may be null (no memories, same positions). prefix null: a plain language model —
  // no prefix, no window, context token t at position t (what stage-1 models were trained on);
  // memories must then be null too. Model, pool, prefix and source must outlive the session.
  Session(const Model& model, ThreadPool* pool, const PrefixKV* prefix, MemorySource* memories, int capacity = 0);
  ~Session();

  // Appends prompt tokens (the first call's first token should be BOS), evaluated chunk by
  // chunk; writes the logits of the last token ([V]) and, when all_logits is not null, of every
  // token ([n, V]). Throws m3::Error when the context would exceed the capacity.
  void prompt(std::span<const int32_t> tokens, float* last_logits, float* all_logits = nullptr);
  // Appends one generated token and writes its logits [V].
  void decode(int32_t token, float* logits);

  int n_tokens() const { return static_cast<int>(tokens_.size()); }  // context tokens so far
  int capacity() const { return capacity_; }
  const Model& model() const { return model_; }
  const std::vector<int32_t>& tokens() const { return tokens_; }
  const std::vector<ChunkRecord>& chunks() const { return records_; }
  // Drops everything after the first n context tokens (n at a chunk boundary keeps that
  // chunk's choice only if the chunk is still partly filled).
  void truncate(int n);

 private:
  void eval_segment(std::span<const int32_t> tokens, bool from_prompt, float* last_logits, float* all_logits);
  void ensure_chunk(int chunk, bool from_prompt, std::span<const int32_t> prompt_part);
  void build_extra(int chunk);

  const Model& model_;
  ThreadPool* pool_;
  const PrefixKV* prefix_;
  int p_ = 0;  // prefix rows in the cache
  MemorySource* source_;
  int capacity_;
  int chunk_length_;
  Forward forward_;
  KVCache cache_;
  std::vector<int32_t> tokens_;
  std::vector<ChunkRecord> records_;
  std::vector<std::vector<ChunkMemory>> chosen_;  // per chunk
  int extra_chunk_ = -1;                           // the chunk extra_ holds
  std::vector<std::vector<float>> extra_k_, extra_v_;  // per memory layer: [G][n][D]
  std::vector<ExtraKV> extra_;
};

}  // namespace m3
