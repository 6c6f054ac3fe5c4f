// m3/bank_memory_source.h — memories for a Session from a memory bank: a retriever picks the
// references, an LRU cache (optional) keeps decoded memories, the bank supplies the rest.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>

#include "m3/bank.h"
#include "m3/memory_cache.h"
#include "m3/retriever.h"
#include "m3/session.h"

namespace m3 {

struct BankMemoryOptions {
  int per_chunk = 5;              // memories per chunk
  double max_overlap = 1.0;       // drop a retrieved reference whose Eq. 6 overlap with the query is >= this (1.0: keep all)
  const Tokenizer* tokenizer = nullptr;  // tokenizes queries for the overlap filter (needed when max_overlap < 1)
};

// Counters for /metrics and benchmarks (totals over all select() calls).
struct RetrievalStats {
  uint64_t selections = 0;
  uint64_t memories = 0;
  double retrieval_seconds = 0;   // retriever.search
  double load_seconds = 0;        // bank reads and decoding (cache misses)
};

// Thread-safe: many sessions may share one source (bank reads and searches run concurrently).
class BankMemorySource : public MemorySource {
 public:
  // cache may be null (every memory read from the bank). All must outlive the source.
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
