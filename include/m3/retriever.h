// m3/retriever.h — which references a chunk of text should read (spec §3.2, decisions.md
// "Retrieval").
//
// One interface, several implementations, chosen by a short spec string a user can put in a
// config (the way FAISS's index_factory works):
//   "bm25"                    SQLite FTS5 full-text search over the bank's catalog (bm25 ranking)
//   "dense" = "dense:hnsw"    cosine similarity of Embedder vectors, hnswlib HNSW graph
//   "dense:hnsw:ef=N"         the same with search candidate list N (default 64)
//   "dense:exact"             the same vectors searched exhaustively (BLAS), the ground truth
//   "hybrid[:<dense mode>]"   reciprocal-rank fusion of bm25 and dense (k_rrf = 60), e.g.
//                             "hybrid", "hybrid:exact", "hybrid:hnsw:ef=128"
// spec() returns the canonical form, which make_retriever accepts again.
//
// Ids are the catalog's reference ids (refs.id). Scores are only comparable within one retriever:
// bm25 gives −bm25() (higher is better), dense the cosine, hybrid the fused RRF score.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "m3/embedder.h"

namespace m3 {

class ThreadPool;

struct SearchHit {
  int64_t id = -1;
  float score = 0.0f;  // higher is better
  bool operator==(const SearchHit&) const = default;
};

// Thread safety (all implementations): search() may run concurrently with other search() calls;
// add(), remove() and save() need exclusive access (REQUIRES: external synchronization).
// Errors: m3::Error with a message naming the file or spec at fault.
class Retriever {
 public:
  virtual ~Retriever() = default;
  // The canonical spec string (see the top of this file).
  virtual std::string spec() const = 0;
  // Up to k hits, best first, ids unique. A query with nothing searchable in it (empty, only
  // punctuation) gives no hits, never an error. k <= 0 gives no hits.
  virtual std::vector<SearchHit> search(const std::string& query, int k) const = 0;
  // Keeps the retriever in step with the catalog: reference `id` now has `text` (added, or
  // replaced when the id is known). bm25 reads the FTS index the bank maintains, so for it this
  // does nothing.
  virtual void add(int64_t id, const std::string& text) = 0;
  // Reference `id` is gone (unknown ids are ignored). A no-op for bm25 (the bank marks it deleted).
  virtual void remove(int64_t id) = 0;
  // Persists what add()/remove() changed; a no-op where the retriever holds nothing of its own.
  virtual void save() const = 0;
};

// ---- bm25 ----------------------------------------------------------------------------------------

// Full-text search over an existing catalog database (written by the bank) with
//   refs(id INTEGER PRIMARY KEY, doc_key INTEGER, text TEXT, ..., deleted INTEGER DEFAULT 0)
//   refs_fts(text, content='refs', content_rowid='id')   -- FTS5, external content
// opened read-only. The query is split into terms by FTS5's unicode61 tokenizer and becomes an OR
// of quoted terms (fts5_or_query), so any user text is safe; hits are ranked by bm25(refs_fts);
// refs marked deleted are skipped. Rows the bank commits later are seen by the next search.
class Bm25Retriever : public Retriever {
 public:
  // Throws m3::Error when the file is missing or is not a catalog (no refs / refs_fts table).
  // max_df_fraction < 1: query terms found in more than this fraction of the references (as they
  // are at construction) are left out of the query, unless every term would be — a common word
  // adds little to bm25 but makes FTS5 score most of the catalog (on 64k references, 5% turns a
  // 90 ms query into 1 ms).
  explicit Bm25Retriever(const std::string& catalog_path, double max_df_fraction = 1.0);
  ~Bm25Retriever() override;
  Bm25Retriever(const Bm25Retriever&) = delete;
  Bm25Retriever& operator=(const Bm25Retriever&) = delete;

  std::string spec() const override { return "bm25"; }
  std::vector<SearchHit> search(const std::string& query, int k) const override;
  void add(int64_t, const std::string&) override {}
  void remove(int64_t) override {}
  void save() const override {}

  // The terms search() looks for: unicode61 tokens (case-folded, diacritics removed), in order.
  std::vector<std::string> terms(const std::string& text) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Terms → a safe FTS5 MATCH expression: each non-empty term as a double-quoted string (an inner
// '"' doubled), joined by " OR ", duplicates dropped, at most max_terms. "" when there are none.
//   fts5_or_query({"near", "a\"b", "near"}) == "\"near\" OR \"a\"\"b\""
std::string fts5_or_query(const std::vector<std::string>& terms, int max_terms = 256);

// ---- dense ---------------------------------------------------------------------------------------

enum class DenseSearch { Hnsw, Exact };

// The HNSW graph's parameters, named as hnswlib names them.
struct HnswOptions {
  int M = 16;                 // links per node
  int ef_construction = 200;  // candidate list while inserting
  int ef_search = 64;         // candidate list while searching (hnswlib uses max(ef_search, k))
  uint64_t seed = 100;        // level draws
};

// Unit vectors under int64 ids: an HNSW graph (hnswlib, inner product = cosine) plus the raw
// vectors, which are the source of truth (exact search, rebuilding the graph).
// Removal marks the id deleted in the graph (hnswlib keeps the node; it stops showing up) and
// drops its raw vector; rebuild() compacts.
// Thread safety: the const methods may run concurrently; the others need exclusive access.
class DenseIndex {
 public:
  explicit DenseIndex(int dim, const HnswOptions& options = {});
  ~DenseIndex();
  DenseIndex(const DenseIndex&) = delete;
  DenseIndex& operator=(const DenseIndex&) = delete;

  int dim() const;
  int64_t size() const;  // live vectors
  bool contains(int64_t id) const;
  const HnswOptions& options() const;
  void set_ef_search(int ef);
  // Graph nodes, removed ones included (what rebuild() would reclaim is graph_size() − size()).
  int64_t graph_size() const;

  // Adds n = ids.size() vectors x [n, dim], each L2-normalised on the way in (zero stays zero).
  // An id already present gets the new vector; within one call the last occurrence wins.
  // The graph insertions run on `pool` when given (hnswlib's addPoint is thread-safe).
  void add(std::span<const int64_t> ids, std::span<const float> x, ThreadPool* pool = nullptr);
  // Removes id; false when it was not present.
  bool remove(int64_t id);
  // Builds a fresh graph from the raw vectors (drops removed nodes).
  void rebuild(ThreadPool* pool = nullptr);

  // The k stored vectors most cosine-similar to q [dim] (normalised here), best first; ties go
  // to the lower id in exact mode. A zero q gives no hits.
  std::vector<SearchHit> search(std::span<const float> q, int k, DenseSearch mode) const;
  // Exact top k of nq = q.size()/dim queries at once (sgemm over blocks of queries).
  std::vector<std::vector<SearchHit>> search_exact_batch(std::span<const float> q, int k) const;

  // The live vectors (normalised), row i belonging to ids()[i]; rows move when ids are removed.
  std::span<const int64_t> ids() const;
  std::span<const float> vectors() const;

  // Writes <path>.hnsw (hnswlib's graph) then <path>.vec: magic "M3DENSE\0", version, dim, count,
  // `tag` (the embedder's spec), the size and XXH3-64 of the .hnsw file, ids [count] int64,
  // vectors [count, dim] f32, and an XXH3-64 of everything before it; little-endian. Each file is
  // written to <file>.tmp, fsynced and renamed over the old one, so a crash leaves either file
  // old or new, never torn, and a mismatched pair is detected at load.
  void save(const std::string& path, const std::string& tag) const;
  // Loads <path>.vec and the graph in <path>.hnsw; rebuilds the graph (on `pool`) when the .hnsw
  // file is missing or is not the one the .vec file was saved with. `options` supplies ef_search
  // and, when rebuilding, the graph parameters. Throws m3::Error naming the file when it is
  // missing, truncated, corrupt (checksum), of another version, or when expected_tag is not
  // empty and differs from the stored tag (vectors of another embedder).
  static std::unique_ptr<DenseIndex> load(const std::string& path, const std::string& expected_tag,
                                          const HnswOptions& options = {}, ThreadPool* pool = nullptr);
  static bool exists(const std::string& path);  // <path>.vec is there

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Embeds texts with an Embedder and keeps their vectors in a DenseIndex. When `index_path` is
// not empty and <index_path>.vec exists, the index is loaded from it (and must carry the
// embedder's spec); save() writes it there.
class DenseRetriever : public Retriever {
 public:
  DenseRetriever(std::shared_ptr<const Embedder> embedder, DenseSearch mode, std::string index_path = "",
                 const HnswOptions& options = {}, ThreadPool* pool = nullptr);
  ~DenseRetriever() override;

  std::string spec() const override;  // "dense:hnsw:ef=N" or "dense:exact"
  std::vector<SearchHit> search(const std::string& query, int k) const override;
  void add(int64_t id, const std::string& text) override;
  void remove(int64_t id) override;
  // Throws m3::Error when the retriever was made without an index path.
  void save() const override;

  const Embedder& embedder() const { return *embedder_; }
  DenseIndex& index() { return *index_; }
  const DenseIndex& index() const { return *index_; }
  DenseSearch mode() const { return mode_; }

 private:
  std::shared_ptr<const Embedder> embedder_;
  DenseSearch mode_;
  std::string path_;
  ThreadPool* pool_;
  std::unique_ptr<DenseIndex> index_;
};

// ---- hybrid --------------------------------------------------------------------------------------

// Reciprocal-rank fusion (Cormack, Clarke & Büttcher 2009): score(id) = Σ over rankings of
// 1 / (k_rrf + rank), rank counted from 1; ids missing from a ranking add nothing. Returns the
// top k, best first; ties go to the better best rank, then to the lower id.
constexpr double kRrfK = 60.0;
std::vector<SearchHit> reciprocal_rank_fusion(const std::vector<std::vector<SearchHit>>& rankings, int k,
                                              double k_rrf = kRrfK);

// Fuses a sparse (bm25) and a dense retriever. Each contributes its top max(4k, 20) hits, so an
// id ranked just below k by both can still win. add/remove/save go to both.
class HybridRetriever : public Retriever {
 public:
  HybridRetriever(std::unique_ptr<Retriever> sparse, std::unique_ptr<Retriever> dense, double k_rrf = kRrfK);
  // "hybrid:" + the dense spec after "dense:" (e.g. "hybrid:exact") when dense is a "dense:..."
  // retriever; otherwise "hybrid(<sparse spec>,<dense spec>)", which make_retriever does not parse.
  std::string spec() const override;
  std::vector<SearchHit> search(const std::string& query, int k) const override;
  void add(int64_t id, const std::string& text) override;
  void remove(int64_t id) override;
  void save() const override;

  static int depth(int k) { return k * 4 > 20 ? k * 4 : 20; }

 private:
  std::unique_ptr<Retriever> sparse_, dense_;
  double k_rrf_;
};

// ---- factory -------------------------------------------------------------------------------------

struct RetrieverOptions {
  std::string catalog_path;                  // bm25, hybrid: the bank's catalog.sqlite
  std::shared_ptr<const Embedder> embedder;  // dense, hybrid
  std::string index_path;                    // dense, hybrid: index file prefix ("" = memory only)
  HnswOptions hnsw;                          // graph parameters; ":ef=N" in the spec overrides ef_search
  ThreadPool* pool = nullptr;                // dense: parallel graph building
};

// Builds a retriever from a spec (see the top of this file). Throws m3::Error for an unknown spec
// (listing the accepted forms) or when an option the spec needs is missing.
std::unique_ptr<Retriever> make_retriever(const std::string& spec, const RetrieverOptions& options);

}  // namespace m3
