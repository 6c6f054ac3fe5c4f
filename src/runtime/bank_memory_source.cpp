// A Session's memories from a bank, through a retriever and an LRU cache (m3/bank_memory_source.h).
#include "m3/bank_memory_source.h"

#include <chrono>
#include <utility>

#include "m3/error.h"
#include "m3/overlap.h"

namespace m3 {

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
}  // namespace

BankMemorySource::BankMemorySource(const MemoryBank& bank, const Retriever& retriever, MemoryCache* cache, BankMemoryOptions options)
    : bank_(bank), retriever_(retriever), cache_(cache), options_(std::move(options)) {
  if (options_.max_overlap <= 1.0 && !options_.tokenizer && options_.leakage_tokens.empty())
    throw Error("BankMemorySource: the leakage filter needs a tokenizer or the tokens to compare with");
}

std::vector<ChunkMemory> BankMemorySource::select(int /*chunk*/, const std::string& query) {
  const auto t0 = Clock::now();
  // Search deeper than needed when leakage filtering may drop hits.
  const bool filter = options_.max_overlap <= 1.0;
  const int depth = filter ? options_.per_chunk * 4 : options_.per_chunk;
  const std::vector<SearchHit> hits = retriever_.search(query, depth);
  const double search_s = since(t0);
  std::vector<ChunkMemory> out;
  const auto t1 = Clock::now();
  uint64_t dropped = 0;
  std::vector<int32_t> query_tokens;
  const std::vector<int32_t>& leak = options_.leakage_tokens.empty() ? query_tokens : options_.leakage_tokens;
  std::vector<int64_t> ids;
  for (const SearchHit& h : hits) {
    if (static_cast<int>(ids.size()) >= options_.per_chunk) break;
    if (h.id < 0 || h.id >= bank_.memory_count()) continue;  // not memorized (yet)
    // A deleted reference is never read, even if a retriever's index is stale (e.g. a dense
    // index saved before a crash that interrupted a delete).
    const ReferenceInfo ref = bank_.reference(h.id);
    if (ref.deleted) continue;
    if (filter) {
      // Leakage filter (decisions.md): the reference's tokens against the query's (or the
      // evaluation question's).
      if (options_.leakage_tokens.empty() && query_tokens.empty()) query_tokens = options_.tokenizer->encode(query);
      if (overlap(leak, ref.tokens) >= options_.max_overlap) {
        ++dropped;
        continue;
      }
    }
    ids.push_back(h.id);
  }
  // The chunk's memories in one read: one round trip per node when the records are in a cluster.
  std::vector<std::shared_ptr<const ExplicitMemory>> memories;
  if (cache_) {
    memories = cache_->get_or_load_many(ids, [&](const std::vector<int64_t>& missing) { return bank_.read_many(missing); });
  } else {
    for (ExplicitMemory& m : bank_.read_many(ids)) memories.push_back(std::make_shared<const ExplicitMemory>(std::move(m)));
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    ChunkMemory m;
    m.reference_id = ids[i];
    m.memory = std::move(memories[i]);
    out.push_back(std::move(m));
  }
  std::lock_guard<std::mutex> lock(mu_);
  stats_.selections += 1;
  stats_.memories += out.size();
  stats_.dropped += dropped;
  stats_.retrieval_seconds += search_s;
  stats_.load_seconds += since(t1);
  return out;
}

RetrievalStats BankMemorySource::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace m3
