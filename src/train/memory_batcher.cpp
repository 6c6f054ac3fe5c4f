#include "train/memory_batcher.h"

#include <algorithm>
#include <filesystem>
#include <map>

#include "m3/bank.h"
#include "m3/error.h"
#include "m3/knowledge.h"
#include "m3/overlap.h"
#include "m3/retriever.h"
#include "m3/tokenizer.h"

namespace m3 {

namespace {
constexpr double kMaxDfFraction = 0.05;
}  // namespace

MemoryBatcher::MemoryBatcher(const Model& model, const std::string& kb, const std::string& index_dir, int retrieve_k,
                             int references_per_chunk, int threads)
    : model_(model), retrieve_k_(retrieve_k), own_per_chunk_(references_per_chunk) {
  const ModelConfig& c = model.config();
  if (!model.tokenizer()) throw Error("stage 2: the model has no tokenizer to split the knowledge base with");
  if (c.memory.memory_layers <= 0) throw Error("stage 2: the model has no memory layers");
  chunk_ = c.memory.chunk_length;
  per_chunk_ = c.memory.memories_per_chunk;
  if (own_per_chunk_ < 1 || own_per_chunk_ > per_chunk_)
    throw Error("memory.references_per_chunk must be in [1, " + std::to_string(per_chunk_) + "] (the model's memories per chunk), got " +
                std::to_string(own_per_chunk_));
  const Tokenizer& tok = *model.tokenizer();
  prefix_ = tok.prefix_tokens(c.memory.prefix_text);
  const std::vector<Document> docs = load_knowledge_base(kb);
  if (docs.empty()) throw Error(kb + ": the knowledge base holds no documents");
  std::vector<std::vector<ReferenceText>> refs;
  refs.reserve(docs.size());
  for (const Document& d : docs) {
    refs.push_back(split_into_references(d, tok, c.memory.reference_length));
    for (const ReferenceText& r : refs.back()) references_.push_back(r.tokens);
  }
  std::filesystem::remove_all(index_dir);
  BankModel bm;
  bm.fingerprint = "stage2-retrieval-index";
  bm.config = c;
  bank_ = MemoryBank::create(index_dir, bm, "bf16", "bf16");
  bank_->add_references(docs, refs);
  for (int t = 0; t < std::max(1, threads); ++t)
    retrievers_.push_back(std::make_unique<Bm25Retriever>(bank_->catalog_path(), kMaxDfFraction));
}

MemoryBatcher::~MemoryBatcher() = default;

MemoryBatch MemoryBatcher::make(const int32_t* inputs, const int32_t* targets, int B, int T, ThreadPool* pool) const {
  const Tokenizer& tok = *model_.tokenizer();
  const int n_chunks = (T + chunk_ - 1) / chunk_;
  // own[b][c]: the references chunk c of window b retrieved with its own text, best first
  std::vector<std::vector<int64_t>> own(size_t(B) * n_chunks);
  std::vector<int64_t> skipped(own.size(), 0);
  auto work = [&](int64_t i0, int64_t i1, int thread) {
    const Retriever& retriever = *retrievers_[size_t(thread) % retrievers_.size()];
    for (int64_t i = i0; i < i1; ++i) {
      const int b = int(i / n_chunks), ch = int(i % n_chunks);
      const int32_t* window = inputs + int64_t(b) * T;
      const int t0 = ch * chunk_, t1 = std::min(T, t0 + chunk_);
      const std::string text = tok.decode(std::vector<int32_t>(window + t0, window + t1));
      for (const SearchHit& hit : retriever.search(text, std::max(retrieve_k_, own_per_chunk_))) {
        if (hit.id < 0 || hit.id >= int64_t(references_.size())) continue;
        const auto& ref = references_[size_t(hit.id)];
        if (overlap(std::span<const int32_t>(window, size_t(T)), ref) > kTrainingOverlapLimit) {
          ++skipped[size_t(i)];
          continue;
        }
        own[size_t(i)].push_back(hit.id);
        if (int(own[size_t(i)].size()) == own_per_chunk_) break;
      }
    }
  };
  if (pool) pool->parallel_for(int64_t(B) * n_chunks, work);
  else work(0, int64_t(B) * n_chunks, 0);
  MemoryBatch batch;
  batch.B = B;
  batch.T = T;
  batch.prefix = prefix_;
  batch.tokens.assign(inputs, inputs + int64_t(B) * T);
  batch.targets.assign(targets, targets + int64_t(B) * T);
  batch.chunk_refs.assign(size_t(B), std::vector<std::vector<int32_t>>(size_t(n_chunks)));
  std::map<int64_t, int32_t> index;  // reference id → position in batch.references
  for (int b = 0; b < B; ++b)
    for (int ch = 0; ch < n_chunks; ++ch) {
      auto& list = batch.chunk_refs[size_t(b)][size_t(ch)];
      // its own references first, then those of the previous chunks (at most per_chunk_ − 1 back),
      // at most per_chunk_ in all; ids unique within a chunk
      for (int prev = ch; prev >= 0 && prev > ch - per_chunk_ && int(list.size()) < per_chunk_; --prev)
        for (const int64_t id : own[size_t(b) * n_chunks + prev]) {
          if (int(list.size()) == per_chunk_) break;
          auto [it, added] = index.emplace(id, int32_t(batch.references.size()));
          if (added) batch.references.push_back(references_[size_t(id)]);
          if (std::find(list.begin(), list.end(), it->second) == list.end()) list.push_back(it->second);
        }
      ++stats_.chunks;
      stats_.with_reference += !own[size_t(b) * n_chunks + ch].empty();
      stats_.leaks_skipped += skipped[size_t(b) * n_chunks + ch];
    }
  return batch;
}

}  // namespace m3
