// m3/bank_memory_source.h — memories for a Session from a memory bank: a retriever picks the
// references, an LRU cache (optional) keeps decoded memories, the bank supplies the rest.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <vector>

#include "m3/bank.h"
#include "m3/memory_cache.h"
#include "m3/retriever.h"
#include "m3/session.h"

namespace m3 {

struct BankMemoryOptions {
  int per_chunk = 5;              // memories per chunk
  // Leakage filter (decisions.md "Reading memories"): drop a retrieved reference whose Eq. 6
  // overlap with the query is >= max_overlap. Above 1 (the default) it keeps all; the paper's
  // evaluation uses 2/3 (kEvaluationOverlapLimit).
  double max_overlap = 2.0;
  const Tokenizer* tokenizer = nullptr;  // tokenizes the chunk's query for the filter
  // When not empty, the filter compares references with these tokens (e.g. the whole evaluation
  // question) instead of each chunk's query. Either this or tokenizer is needed when filtering.
  std::vector<int32_t> leakage_tokens;
};

// Counters for /metrics and benchmarks (totals over all select() calls).
struct RetrievalStats {
  uint64_t selections = 0;
  uint64_t memories = 0;
  uint64_t dropped = 0;           // retrieved references the leakage filter dropped
  double retrieval_seconds = 0;   // retriever.search
  double load_seconds = 0;        // bank reads and decoding (cache misses)
};

// Thread-safe: many sessions may share one source (bank reads and searches run concurrently).
class BankMemorySource : public MemorySource {
 public:
  // cache may be null (every memory read from the bank). All must outlive the source. Throws
  // m3::Error when the leakage filter is on with neither a tokenizer nor leakage_tokens.
  BankMemorySource(const MemoryBank& bank, const Retriever& retriever, MemoryCache* cache, BankMemoryOptions options = {});
  std::vector<ChunkMemory> select(int chunk, const std::string& query) override;
  RetrievalStats stats() const;

 private:
  const MemoryBank& bank_;
  const Retriever& retriever_;
  MemoryCache* cache_;
  BankMemoryOptions options_;
  mutable std::mutex mu_;
  RetrievalStats stats_;
};

}  // namespace m3
