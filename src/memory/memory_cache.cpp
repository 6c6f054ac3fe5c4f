// The LRU cache of decoded memories: a list in recency order plus a hash index into it.
#include "m3/memory_cache.h"

#include <algorithm>

namespace m3 {

MemoryCache::MemoryCache(size_t capacity) : capacity_(capacity) { stats_.capacity = capacity; }

size_t MemoryCache::capacity_for_bytes(int64_t bytes, const MemoryShape& s) {
  const int64_t per = int64_t(sizeof(ExplicitMemory)) + s.slots() * 2 + 2 * s.floats() * 4;
  return bytes <= 0 || per <= 0 ? 0 : size_t(bytes / per);
}

std::shared_ptr<const ExplicitMemory> MemoryCache::lookup_locked(int64_t id) {
  auto it = index_.find(id);
  if (it == index_.end()) return nullptr;
  order_.splice(order_.begin(), order_, it->second);
  return it->second->second;
}

std::shared_ptr<const ExplicitMemory> MemoryCache::get(int64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto m = lookup_locked(id);
  ++(m ? stats_.hits : stats_.misses);
  return m;
}

std::shared_ptr<const ExplicitMemory> MemoryCache::get_or_load(int64_t id, const Loader& loader) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto m = lookup_locked(id)) {
      ++stats_.hits;
      return m;
    }
    ++stats_.misses;
  }
  // Decoding can take long; other threads keep using the cache meanwhile.
  auto loaded = std::make_shared<const ExplicitMemory>(loader(id));
  if (capacity_ == 0) return loaded;
  std::lock_guard<std::mutex> lock(mu_);
  return insert_locked(id, std::move(loaded));
}

std::shared_ptr<const ExplicitMemory> MemoryCache::insert_locked(int64_t id, std::shared_ptr<const ExplicitMemory> loaded) {
  if (auto m = lookup_locked(id)) return m;  // another thread loaded it first
  order_.emplace_front(id, loaded);
  index_[id] = order_.begin();
  while (order_.size() > capacity_) {
    index_.erase(order_.back().first);
    order_.pop_back();
    ++stats_.evictions;
  }
  return loaded;
}

std::vector<std::shared_ptr<const ExplicitMemory>> MemoryCache::get_or_load_many(const std::vector<int64_t>& ids,
                                                                                 const ManyLoader& loader) {
  std::vector<std::shared_ptr<const ExplicitMemory>> out(ids.size());
  std::vector<int64_t> missing;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < ids.size(); ++i) {
      out[i] = lookup_locked(ids[i]);
      if (out[i]) {
        ++stats_.hits;
      } else if (std::find(missing.begin(), missing.end(), ids[i]) == missing.end()) {
        missing.push_back(ids[i]);
        ++stats_.misses;
      }
    }
  }
  if (missing.empty()) return out;
  std::vector<ExplicitMemory> loaded = loader(missing);  // without the lock, as get_or_load
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t k = 0; k < missing.size() && k < loaded.size(); ++k) {
    auto m = std::make_shared<const ExplicitMemory>(std::move(loaded[k]));
    if (capacity_ > 0) m = insert_locked(missing[k], std::move(m));
    for (size_t i = 0; i < ids.size(); ++i)
      if (!out[i] && ids[i] == missing[k]) out[i] = m;
  }
  return out;
}

bool MemoryCache::contains(int64_t id) const {
  std::lock_guard<std::mutex> lock(mu_);
  return index_.count(id) != 0;
}

void MemoryCache::erase(int64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(id);
  if (it == index_.end()) return;
  order_.erase(it->second);
  index_.erase(it);
}

void MemoryCache::clear() {
  std::lock_guard<std::mutex> lock(mu_);
  order_.clear();
  index_.clear();
}

MemoryCacheStats MemoryCache::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  MemoryCacheStats s = stats_;
  s.entries = order_.size();
  return s;
}

}  // namespace m3
