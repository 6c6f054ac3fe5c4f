// Reciprocal-rank fusion of a sparse and a dense retriever.
//
// RRF needs no score calibration between bm25 (unbounded, corpus-dependent) and cosine, which is
// why it is the fusion here; k_rrf = 60 is the constant of Cormack et al. (2009), which damps the
// influence of the very first ranks.
#include <algorithm>
#include <cstdint>
#include <unordered_map>

#include "m3/error.h"
#include "m3/retriever.h"

namespace m3 {

std::vector<SearchHit> reciprocal_rank_fusion(const std::vector<std::vector<SearchHit>>& rankings, int k, double k_rrf) {
  if (k <= 0) return {};
  struct Fused {
    double score = 0.0;
    size_t best_rank = SIZE_MAX;
  };
  std::unordered_map<int64_t, Fused> fused;
  for (const auto& ranking : rankings) {
    // A ranking that repeats an id counts it once, at its best rank.
    std::unordered_map<int64_t, bool> seen;
    for (size_t r = 0; r < ranking.size(); ++r) {
      if (!seen.emplace(ranking[r].id, true).second) continue;
      Fused& f = fused[ranking[r].id];
      f.score += 1.0 / (k_rrf + static_cast<double>(r + 1));
      f.best_rank = std::min(f.best_rank, r);
    }
  }
  std::vector<std::pair<int64_t, Fused>> all(fused.begin(), fused.end());
  auto before = [](const std::pair<int64_t, Fused>& a, const std::pair<int64_t, Fused>& b) {
    if (a.second.score != b.second.score) return a.second.score > b.second.score;
    if (a.second.best_rank != b.second.best_rank) return a.second.best_rank < b.second.best_rank;
    return a.first < b.first;
  };
  const size_t n = std::min(all.size(), static_cast<size_t>(k));
  std::partial_sort(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(n), all.end(), before);
  std::vector<SearchHit> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = {all[i].first, static_cast<float>(all[i].second.score)};
  return out;
}

HybridRetriever::HybridRetriever(std::unique_ptr<Retriever> sparse, std::unique_ptr<Retriever> dense, double k_rrf)
    : sparse_(std::move(sparse)), dense_(std::move(dense)), k_rrf_(k_rrf) {
  if (!sparse_ || !dense_) throw Error("hybrid retriever: needs both a sparse and a dense retriever");
  if (!(k_rrf > 0.0)) throw Error("hybrid retriever: k_rrf " + std::to_string(k_rrf) + " must be positive");
}

std::string HybridRetriever::spec() const {
  const std::string d = dense_->spec();
  if (sparse_->spec() == "bm25" && d.rfind("dense:", 0) == 0) return "hybrid:" + d.substr(6);
  return "hybrid(" + sparse_->spec() + "," + d + ")";
}

std::vector<SearchHit> HybridRetriever::search(const std::string& query, int k) const {
  if (k <= 0) return {};
  const int n = depth(k);
  return reciprocal_rank_fusion({sparse_->search(query, n), dense_->search(query, n)}, k, k_rrf_);
}

void HybridRetriever::add(int64_t id, const std::string& text) {
  sparse_->add(id, text);
  dense_->add(id, text);
}

void HybridRetriever::remove(int64_t id) {
  sparse_->remove(id);
  dense_->remove(id);
}

void HybridRetriever::save() const {
  sparse_->save();
  dense_->save();
}

}  // namespace m3
