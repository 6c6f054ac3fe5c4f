// train/memory_batcher.h — what a stage-2 batch reads (decisions.md "Training"): every 64-token
// chunk of a window retrieves ONE reference with its own text (bm25 over the knowledge base),
// skipping references whose Eq. 6 overlap with the window exceeds 0.9, and attends to its own
// and the previous four chunks' references. Query terms found in more than 5% of the references
// are left out (Bm25Retriever's max_df_fraction): 64 queries per step must take milliseconds.
// references_per_chunk > 1 (not the paper's recipe, an option) lets a chunk read its own best N
// references before the previous chunks' ones, as inference reads 5 retrieved with one query.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "m3/model.h"
#include "m3/thread_pool.h"
#include "m3/train.h"

namespace m3 {

class MemoryBank;
class Retriever;

class MemoryBatcher {
 public:
  // Splits the knowledge base at `kb` into references with the model's tokenizer and indexes
  // them for bm25 in `index_dir` (replaced). Throws m3::Error naming the file at fault.
  MemoryBatcher(const Model& model, const std::string& kb, const std::string& index_dir, int retrieve_k,
                int references_per_chunk, int threads);
  ~MemoryBatcher();

  int64_t reference_count() const { return static_cast<int64_t>(references_.size()); }
  const std::vector<int32_t>& prefix() const { return prefix_; }

  // The batch for B windows of T tokens (inputs/targets [B·T]). Retrieval runs on the pool.
  MemoryBatch make(const int32_t* inputs, const int32_t* targets, int B, int T, ThreadPool* pool) const;

  struct Stats {
    int64_t chunks = 0, with_reference = 0, leaks_skipped = 0;
  };
  const Stats& stats() const { return stats_; }

 private:
  const Model& model_;
  int retrieve_k_, own_per_chunk_;
  int chunk_, per_chunk_;
  std::vector<int32_t> prefix_;
  std::vector<std::vector<int32_t>> references_;  // by reference id
  std::unique_ptr<MemoryBank> bank_;               // the catalog bm25 reads (no memories)
  std::vector<std::unique_ptr<Retriever>> retrievers_;  // one per pool thread: a search holds its retriever's lock
  mutable Stats stats_;
};

}  // namespace m3
