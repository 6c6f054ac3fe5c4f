// m3/memory_cache.h — a RAM LRU cache of decoded memories, in front of a MemoryBank
// (decisions.md "Retrieval": the paper's serving keeps hot memories in RAM; its worst-case speed
// test disables the cache, which capacity 0 reproduces).
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "m3/memory.h"

namespace m3 {

struct MemoryCacheStats {
  uint64_t hits = 0;
  uint64_t misses = 0;     // = ids the loaders were asked for
  uint64_t evictions = 0;
  size_t entries = 0;
  size_t capacity = 0;
};

// Thread safety: every member may be called concurrently. The loader runs without the cache's
// lock held, so concurrent misses on one id may each call it; the first result inserted wins and
// every caller gets that same entry. Entries are shared_ptr<const>: an evicted memory stays valid
// for whoever still holds it.
class MemoryCache {
 public:
  using Loader = std::function<ExplicitMemory(int64_t id)>;
  // Loads several memories at once, out[i] for ids[i] (a bank's read_many: one round trip).
  using ManyLoader = std::function<std::vector<ExplicitMemory>(const std::vector<int64_t>& ids)>;

  // capacity: entries kept; 0 disables caching (every get_or_load calls the loader).
  explicit MemoryCache(size_t capacity);
  MemoryCache(const MemoryCache&) = delete;
  MemoryCache& operator=(const MemoryCache&) = delete;

  // Entries that fit in `bytes` of RAM for memories of shape `s` (keys and values in f32).
  static size_t capacity_for_bytes(int64_t bytes, const MemoryShape& s);

  // The cached memory for `id`, or loader(id) inserted as the most recently used entry (evicting
  // the least recently used one when full). A loader's exception propagates and caches nothing.
  std::shared_ptr<const ExplicitMemory> get_or_load(int64_t id, const Loader& loader);
  // get_or_load for each of `ids`, in order: the ones not cached are loaded with a single loader
  // call (each counts as a miss). A loader's exception propagates and caches nothing.
  std::vector<std::shared_ptr<const ExplicitMemory>> get_or_load_many(const std::vector<int64_t>& ids,
                                                                      const ManyLoader& loader);
  // The cached memory or null; counts a hit or a miss, and a hit refreshes the entry.
  std::shared_ptr<const ExplicitMemory> get(int64_t id);
  bool contains(int64_t id) const;  // no effect on order or counters
  void erase(int64_t id);
  void clear();                     // drops entries, keeps counters
  MemoryCacheStats stats() const;

 private:
  using Entry = std::pair<int64_t, std::shared_ptr<const ExplicitMemory>>;
  std::shared_ptr<const ExplicitMemory> lookup_locked(int64_t id);  // refreshes on hit
  // Inserts `loaded` unless another thread did first; returns the entry that is cached.
  std::shared_ptr<const ExplicitMemory> insert_locked(int64_t id, std::shared_ptr<const ExplicitMemory> loaded);

  const size_t capacity_;
  mutable std::mutex mu_;
  std::list<Entry> order_;  // most recently used first
  std::unordered_map<int64_t, std::list<Entry>::iterator> index_;
  MemoryCacheStats stats_;
};

}  // namespace m3
