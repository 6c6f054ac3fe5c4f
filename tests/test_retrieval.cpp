// Retrievers: bm25 over a catalog with the bank's schema, the dense index (HNSW against exact
// search, files, removal), the model embedder against a hand-run forward pass, reciprocal-rank
// fusion, and the spec factory.
#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>
#include <sqlite3.h>

#include <cctype>
#include <cmath>
#include <filesystem>
#include <functional>
#include <random>
#include <set>

#include "m3/embedder.h"
#include "m3/error.h"
#include "m3/forward.h"
#include "m3/model.h"
#include "m3/retriever.h"
#include "m3/thread_pool.h"
#include "test_helpers.h"

namespace m3 {
namespace {

const std::string kData = M3_TEST_DATA;

using test::error_of;

std::vector<int64_t> ids_of(const std::vector<SearchHit>& hits) {
  std::vector<int64_t> ids;
  for (const auto& h : hits) ids.push_back(h.id);
  return ids;
}

bool unique_ids(const std::vector<SearchHit>& hits) {
  std::set<int64_t> s;
  for (const auto& h : hits) s.insert(h.id);
  return s.size() == hits.size();
}

// ---- a catalog with the bank's schema -------------------------------------------------------------

struct Ref {
  int64_t id;
  std::string text;
  bool deleted = false;
};

void exec(sqlite3* db, const std::string& sql) {
  char* err = nullptr;
  ASSERT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err), SQLITE_OK) << (err ? err : "") << " in " << sql;
}

// Writes refs and their FTS rows (the bank removes deleted refs from the FTS index; here deleted
// refs stay indexed, so the retriever's own filter is what keeps them out).
void make_catalog(const std::string& path, const std::vector<Ref>& refs) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  exec(db,
       "CREATE TABLE refs(id INTEGER PRIMARY KEY, doc_key INTEGER, text TEXT, deleted INTEGER DEFAULT 0);"
       "CREATE VIRTUAL TABLE refs_fts USING fts5(text, content='refs', content_rowid='id');"
       "BEGIN");
  sqlite3_stmt* ins = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "INSERT INTO refs(id, doc_key, text, deleted) VALUES (?1, ?1, ?2, ?3)", -1, &ins, nullptr), SQLITE_OK);
  sqlite3_stmt* fts = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "INSERT INTO refs_fts(rowid, text) VALUES (?1, ?2)", -1, &fts, nullptr), SQLITE_OK);
  for (const Ref& r : refs) {
    for (sqlite3_stmt* s : {ins, fts}) {
      sqlite3_bind_int64(s, 1, r.id);
      sqlite3_bind_text(s, 2, r.text.c_str(), -1, SQLITE_TRANSIENT);
      if (s == ins) sqlite3_bind_int(s, 3, r.deleted ? 1 : 0);
      ASSERT_EQ(sqlite3_step(s), SQLITE_DONE);
      sqlite3_reset(s);
    }
  }
  sqlite3_finalize(ins);
  sqlite3_finalize(fts);
  exec(db, "COMMIT");
  sqlite3_close(db);
}

// A corpus of common-word sentences, plus a few documents with rare words.
std::vector<Ref> corpus() {
  const std::vector<std::string> words = {"the", "a", "of", "river", "city", "market", "old", "new", "house", "road", "people", "water"};
  std::mt19937 rng(7);
  std::vector<Ref> refs;
  // Six common words and six of 400 rarer ones per text: a spread-out corpus, as real text is.
  // (Texts over only the 12 common words would form one tight cluster from which HNSW at ef 64
  // cannot reach the few outlying texts a rare-word query wants.)
  for (int64_t i = 1; i <= 300; ++i) {
    std::string text;
    for (int w = 0; w < 6; ++w) text += words[rng() % words.size()] + " w" + std::to_string(rng() % 400) + " ";
    refs.push_back({i, text});
  }
  refs.push_back({1000, "the old quagga grazed by the river"});
  refs.push_back({1001, "a zebu and a quagga met at the market"});
  refs.push_back({1002, "the axolotl swims in the water"});
  refs.push_back({1003, "the axolotl was deleted from the catalog", true});
  return refs;
}

class Bm25Test : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.file("catalog.sqlite");
    make_catalog(path_, corpus());
  }
  test::TempDir dir_;
  std::string path_;
};

TEST_F(Bm25Test, RareQueryWordsRankTheirDocumentFirst) {
  Bm25Retriever bm25(path_);
  EXPECT_EQ(bm25.spec(), "bm25");
  auto hits = bm25.search("where did the quagga meet the zebu", 5);
  ASSERT_GE(hits.size(), 2u);
  EXPECT_EQ(hits[0].id, 1001);  // quagga and zebu
  EXPECT_EQ(hits[1].id, 1000);  // quagga only
  EXPECT_GE(hits[0].score, hits[1].score);
  for (size_t i = 1; i < hits.size(); ++i) EXPECT_GE(hits[i - 1].score, hits[i].score);
  EXPECT_EQ(hits.size(), 5u);
  EXPECT_TRUE(unique_ids(hits));
}

TEST_F(Bm25Test, CaseInsensitive) {
  Bm25Retriever bm25(path_);
  EXPECT_EQ(ids_of(bm25.search("QUAGGA Zebu", 1)), std::vector<int64_t>{1001});
}

TEST_F(Bm25Test, SkipsDeletedReferences) {
  Bm25Retriever bm25(path_);
  auto hits = bm25.search("axolotl", 10);
  EXPECT_EQ(ids_of(hits), std::vector<int64_t>{1002});
}

TEST_F(Bm25Test, FtsSyntaxInQueriesIsJustText) {
  Bm25Retriever bm25(path_);
  const std::vector<std::string> queries = {
      "\"quagga", "quagga\"", "\"\"\"", "quagga*", "^quagga", "text:quagga", "NEAR(quagga zebu, 2)", "quagga AND OR NOT",
      "(((quagga", "quagga)))", "{text}: quagga", "'; DROP TABLE refs; --", "quagga + zebu - the", "-quagga", std::string("a\0b quagga", 10),
      "quagga\t\n\r\\", "“quagga”", "quagga—zebu", "\xff\xfe quagga", "NOT", "OR", "AND", "*", "\"NEAR\"",
  };
  for (const std::string& q : queries) {
    std::vector<SearchHit> hits;
    EXPECT_NO_THROW(hits = bm25.search(q, 5)) << q;
    EXPECT_TRUE(unique_ids(hits)) << q;
    EXPECT_LE(hits.size(), 5u);
    if (q.find("quagga") != std::string::npos) {
      ASSERT_FALSE(hits.empty()) << q;
      EXPECT_TRUE(hits[0].id == 1000 || hits[0].id == 1001) << q;
    }
  }
  // The table is still there.
  EXPECT_FALSE(bm25.search("quagga", 5).empty());
}

TEST_F(Bm25Test, EmptyAndPunctuationOnlyQueriesGiveNoHits) {
  Bm25Retriever bm25(path_);
  for (const std::string q : {"", " ", "!!!", "\"\"", "()*^:-+", "\t\n"}) EXPECT_TRUE(bm25.search(q, 5).empty()) << q;
  EXPECT_TRUE(bm25.search("unknownword", 5).empty());
  EXPECT_TRUE(bm25.search("quagga", 0).empty());
  EXPECT_TRUE(bm25.search("quagga", -3).empty());
}

TEST_F(Bm25Test, TopKIsUniqueAndBounded) {
  Bm25Retriever bm25(path_);
  auto hits = bm25.search("the river the river city old", 50);
  EXPECT_EQ(hits.size(), 50u);
  EXPECT_TRUE(unique_ids(hits));
  for (const auto& h : hits) EXPECT_NE(h.id, 1003);
}

TEST_F(Bm25Test, SeesRowsTheBankAddsLater) {
  Bm25Retriever bm25(path_);
  EXPECT_TRUE(bm25.search("okapi", 5).empty());
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
  exec(db, "INSERT INTO refs(id, doc_key, text) VALUES (2000, 9, 'an okapi'); INSERT INTO refs_fts(rowid, text) VALUES (2000, 'an okapi');");
  sqlite3_close(db);
  EXPECT_EQ(ids_of(bm25.search("okapi", 5)), std::vector<int64_t>{2000});
}

TEST_F(Bm25Test, MissingFileOrTableIsAClearError) {
  const std::string missing = dir_.file("nope.sqlite");
  EXPECT_NE(error_of([&] { Bm25Retriever r(missing); }).find("nope.sqlite"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(missing));  // read-only: never created
  const std::string other = dir_.file("other.sqlite");
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(other.c_str(), &db), SQLITE_OK);
  exec(db, "CREATE TABLE refs(id INTEGER PRIMARY KEY, text TEXT, deleted INTEGER)");
  sqlite3_close(db);
  const std::string e = error_of([&] { Bm25Retriever r(other); });
  EXPECT_NE(e.find("other.sqlite"), std::string::npos) << e;
  EXPECT_NE(e.find("refs_fts"), std::string::npos) << e;
  test::write_all(dir_.file("garbage.sqlite"), std::string(4096, 'x'));
  EXPECT_NE(error_of([&] { Bm25Retriever r(dir_.file("garbage.sqlite")); }).find("garbage.sqlite"), std::string::npos);
}

TEST_F(Bm25Test, TermsAreTheIndexTokenizersTokens) {
  Bm25Retriever bm25(path_);
  EXPECT_EQ(bm25.terms("C++ \"NEAR\"(a, b) OR x*"), (std::vector<std::string>{"c", "near", "a", "b", "or", "x"}));
  EXPECT_EQ(bm25.terms("Héllo—wörld “quoted” naïve_test"),
            (std::vector<std::string>{"hello", "world", "quoted", "naive", "test"}));
  EXPECT_TRUE(bm25.terms(" :^*()\"'-+{}").empty());
  EXPECT_TRUE(bm25.terms("").empty());
}

TEST(Fts5OrQuery, QuotesEachTerm) {
  EXPECT_EQ(fts5_or_query({"near", "a\"b", "near", ""}), "\"near\" OR \"a\"\"b\"");
  EXPECT_EQ(fts5_or_query({}), "");
  EXPECT_EQ(fts5_or_query({"a", "b", "c"}, 2), "\"a\" OR \"b\"");
}

// Parsed as FTS5 strings ("" inside a string is a quote), only " OR " is left outside them.
RC_GTEST_PROP(Fts5OrQueryProp, OnlyQuotedStringsAndOr, (const std::vector<std::string>& terms)) {
  const std::string q = fts5_or_query(terms);
  std::string outside;
  int strings = 0;
  for (size_t i = 0; i < q.size(); ++i) {
    if (q[i] != '"') { outside += q[i]; continue; }
    ++strings;
    for (++i;; ++i) {
      RC_ASSERT(i < q.size());  // every string is closed
      if (q[i] == '"') {
        if (i + 1 < q.size() && q[i + 1] == '"') { ++i; continue; }
        break;
      }
    }
  }
  std::string expect;
  for (int i = 1; i < strings; ++i) expect += " OR ";
  RC_ASSERT(outside == expect);
}

// ---- a deterministic toy embedder -----------------------------------------------------------------

// Bag of lower-cased words, each word a pseudo-random dense vector seeded by its hash (a random
// projection of the word counts): texts sharing words are close, and vectors are dense, as real
// embeddings are (HNSW cannot navigate a corpus of mutually orthogonal one-hot vectors).
class HashEmbedder : public Embedder {
 public:
  explicit HashEmbedder(int dim) : dim_(dim) {}
  int dim() const override { return dim_; }
  std::string spec() const override { return "test-hash:dim=" + std::to_string(dim_); }
  std::vector<float> embed(const std::string& text) const override {
    std::vector<float> v(static_cast<size_t>(dim_), 0.0f);
    std::string w;
    auto flush = [&] {
      if (w.empty()) return;
      uint64_t h = 1469598103934665603ull;
      for (char c : w) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
      std::mt19937_64 rng(h);
      std::normal_distribution<float> nd;
      for (auto& f : v) f += nd(rng);
      w.clear();
    };
    for (char c : text) {
      if (std::isalnum(static_cast<unsigned char>(c))) w += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      else flush();
    }
    flush();
    l2_normalize(v.data(), dim_);
    return v;
  }

 private:
  int dim_;
};

std::vector<float> random_vectors(int64_t n, int dim, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> x(static_cast<size_t>(n * dim));
  for (auto& f : x) f = nd(rng);
  return x;
}

std::vector<int64_t> iota_ids(int64_t n, int64_t first = 0, int64_t step = 1) {
  std::vector<int64_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = first + i * step;
  return ids;
}

std::span<const float> row(const std::vector<float>& x, int dim, int64_t i) {
  return std::span<const float>(x).subspan(static_cast<size_t>(i * dim), static_cast<size_t>(dim));
}

double recall_at(const DenseIndex& index, const std::vector<float>& queries, int dim, int k) {
  const int64_t nq = static_cast<int64_t>(queries.size()) / dim;
  const auto truth = index.search_exact_batch(queries, k);
  int64_t found = 0, total = 0;
  for (int64_t q = 0; q < nq; ++q) {
    const auto approx = index.search(row(queries, dim, q), k, DenseSearch::Hnsw);
    std::set<int64_t> a;
    for (const auto& h : approx) a.insert(h.id);
    for (const auto& h : truth[static_cast<size_t>(q)]) found += a.count(h.id);
    total += static_cast<int64_t>(truth[static_cast<size_t>(q)].size());
  }
  return static_cast<double>(found) / static_cast<double>(total);
}

TEST(DenseIndex, ExactSearchMatchesBruteForce) {
  const int dim = 24;
  const int64_t n = 500;
  const auto x = random_vectors(n, dim, 1);
  DenseIndex index(dim);
  index.add(iota_ids(n, 100, 3), x);
  EXPECT_EQ(index.size(), n);
  const auto q = random_vectors(1, dim, 2);
  // Brute force in double on the normalised data.
  std::vector<std::pair<double, int64_t>> all;
  double qn = 0;
  for (int d = 0; d < dim; ++d) qn += double(q[d]) * q[d];
  for (int64_t i = 0; i < n; ++i) {
    double dot = 0, xn = 0;
    for (int d = 0; d < dim; ++d) {
      dot += double(x[i * dim + d]) * q[d];
      xn += double(x[i * dim + d]) * x[i * dim + d];
    }
    all.push_back({-dot / std::sqrt(xn * qn), 100 + 3 * i});
  }
  std::sort(all.begin(), all.end());
  const auto hits = index.search(q, 10, DenseSearch::Exact);
  ASSERT_EQ(hits.size(), 10u);
  for (size_t i = 0; i < 10; ++i) {
    EXPECT_EQ(hits[i].id, all[i].second) << i;
    EXPECT_NEAR(hits[i].score, -all[i].first, 1e-5);
  }
  const auto batch = index.search_exact_batch(q, 10);
  ASSERT_EQ(batch.size(), 1u);
  EXPECT_EQ(ids_of(batch[0]), ids_of(hits));
  // More than stored, none, zero query.
  EXPECT_EQ(index.search(q, 1000, DenseSearch::Exact).size(), static_cast<size_t>(n));
  EXPECT_LE(index.search(q, 1000, DenseSearch::Hnsw).size(), static_cast<size_t>(n));
  EXPECT_TRUE(index.search(q, 0, DenseSearch::Exact).empty());
  EXPECT_TRUE(index.search(std::vector<float>(dim, 0.0f), 5, DenseSearch::Hnsw).empty());
  EXPECT_NE(error_of([&] { index.search(std::vector<float>(dim + 1), 5, DenseSearch::Exact); }).find("dim"), std::string::npos);
}

TEST(DenseIndex, StoresNormalisedVectors) {
  DenseIndex index(4);
  const std::vector<float> v = {3, 0, 4, 0};
  index.add(std::vector<int64_t>{7}, v);
  ASSERT_EQ(index.vectors().size(), 4u);
  EXPECT_FLOAT_EQ(index.vectors()[0], 0.6f);
  EXPECT_FLOAT_EQ(index.vectors()[2], 0.8f);
  const auto hits = index.search(v, 1, DenseSearch::Hnsw);
  ASSERT_EQ(hits.size(), 1u);
  EXPECT_EQ(hits[0].id, 7);
  EXPECT_NEAR(hits[0].score, 1.0f, 1e-6);
}

TEST(DenseIndex, HnswRecallAt5AgainstExact) {
  const int dim = 48;
  const int64_t n = 4000, nq = 200;
  const auto x = random_vectors(n, dim, 11);
  ThreadPool pool(2);
  DenseIndex index(dim);
  index.add(iota_ids(n), x, &pool);
  EXPECT_EQ(index.graph_size(), n);
  // Queries near stored points (as real queries are near their documents) and uniform ones.
  auto q = random_vectors(nq, dim, 12);
  for (int64_t i = 0; i < nq / 2; ++i)
    for (int d = 0; d < dim; ++d) q[i * dim + d] = x[(i * 17) * dim + d] + 0.3f * q[i * dim + d];
  const double recall = recall_at(index, q, dim, 5);
  EXPECT_GE(recall, 0.95) << "recall@5 " << recall;
  index.set_ef_search(256);
  EXPECT_GE(recall_at(index, q, dim, 5), recall);
}

TEST(DenseIndex, RemoveAndReAdd) {
  const int dim = 16;
  const int64_t n = 300;
  const auto x = random_vectors(n, dim, 3);
  DenseIndex index(dim);
  index.add(iota_ids(n), x);
  for (int64_t id = 0; id < n; id += 2) EXPECT_TRUE(index.remove(id));
  EXPECT_FALSE(index.remove(0));
  EXPECT_FALSE(index.remove(12345));
  EXPECT_EQ(index.size(), n / 2);
  EXPECT_EQ(index.graph_size(), n);
  for (int64_t i = 0; i < n; ++i) {
    for (DenseSearch mode : {DenseSearch::Hnsw, DenseSearch::Exact}) {
      const auto hits = index.search(row(x, dim, i), 5, mode);
      ASSERT_FALSE(hits.empty());
      for (const auto& h : hits) EXPECT_EQ(h.id % 2, 1) << "removed id " << h.id << " returned";
      if (i % 2 == 1) {
        EXPECT_EQ(hits[0].id, i);  // a live vector finds itself
      }
    }
  }
  // Raw store stays consistent: ids() row i holds that id's vector.
  for (size_t r = 0; r < index.ids().size(); ++r) {
    const auto v = index.vectors().subspan(r * dim, dim);
    std::vector<float> expect(x.begin() + index.ids()[r] * dim, x.begin() + (index.ids()[r] + 1) * dim);
    l2_normalize(expect.data(), dim);
    for (int d = 0; d < dim; ++d) ASSERT_FLOAT_EQ(v[d], expect[d]);
  }
  // Re-adding a removed id brings it back, with its new vector.
  index.add(std::vector<int64_t>{4}, row(x, dim, 5));
  EXPECT_TRUE(index.contains(4));
  auto hits = index.search(row(x, dim, 5), 2, DenseSearch::Exact);
  EXPECT_EQ(std::set<int64_t>({hits[0].id, hits[1].id}), std::set<int64_t>({4, 5}));
  hits = index.search(row(x, dim, 5), 2, DenseSearch::Hnsw);
  EXPECT_EQ(std::set<int64_t>({hits[0].id, hits[1].id}), std::set<int64_t>({4, 5}));
  // Rebuild drops the removed nodes and keeps results.
  index.rebuild();
  EXPECT_EQ(index.graph_size(), index.size());
  EXPECT_EQ(index.search(row(x, dim, 7), 1, DenseSearch::Hnsw)[0].id, 7);
}

TEST(DenseIndex, AddReplacesAndLastDuplicateWins) {
  const int dim = 8;
  const auto x = random_vectors(3, dim, 5);
  DenseIndex index(dim);
  index.add(std::vector<int64_t>{1, 1}, std::span<const float>(x).first(2 * dim));  // row 1 wins
  EXPECT_EQ(index.size(), 1);
  EXPECT_NEAR(index.search(row(x, dim, 1), 1, DenseSearch::Exact)[0].score, 1.0f, 1e-6);
  index.add(std::vector<int64_t>{1}, row(x, dim, 2));
  EXPECT_EQ(index.size(), 1);
  EXPECT_NEAR(index.search(row(x, dim, 2), 1, DenseSearch::Hnsw)[0].score, 1.0f, 1e-6);
  EXPECT_NE(error_of([&] { index.add(std::vector<int64_t>{1, 2}, row(x, dim, 0)); }).find("floats"), std::string::npos);
}

TEST(DenseIndex, GrowsPastInitialCapacity) {
  const int dim = 8;
  DenseIndex index(dim);
  const auto x = random_vectors(3000, dim, 6);
  for (int64_t b = 0; b < 3000; b += 500)
    index.add(iota_ids(500, b), std::span<const float>(x).subspan(static_cast<size_t>(b * dim), static_cast<size_t>(500 * dim)));
  EXPECT_EQ(index.size(), 3000);
  EXPECT_EQ(index.search(row(x, dim, 2999), 1, DenseSearch::Hnsw)[0].id, 2999);
}

TEST(DenseIndex, SaveLoadRoundTrip) {
  test::TempDir dir;
  const std::string path = dir.file("idx");
  const int dim = 32;
  const int64_t n = 1500;
  const auto x = random_vectors(n, dim, 8);
  DenseIndex index(dim, HnswOptions{12, 100, 40, 7});
  index.add(iota_ids(n, -500), x);  // negative ids too
  for (int64_t id = -500; id < -400; ++id) index.remove(id);
  EXPECT_FALSE(DenseIndex::exists(path));
  index.save(path, "tag-A");
  EXPECT_TRUE(DenseIndex::exists(path));
  EXPECT_TRUE(std::filesystem::exists(path + ".hnsw"));
  EXPECT_FALSE(std::filesystem::exists(path + ".vec.tmp"));

  auto loaded = DenseIndex::load(path, "tag-A", HnswOptions{16, 200, 40, 1});
  EXPECT_EQ(loaded->dim(), dim);
  EXPECT_EQ(loaded->size(), index.size());
  EXPECT_EQ(loaded->graph_size(), index.graph_size());  // the saved graph, not a rebuild
  EXPECT_EQ(loaded->options().M, 12);                    // from the graph file
  EXPECT_EQ(loaded->options().ef_search, 40);
  EXPECT_TRUE(std::equal(index.ids().begin(), index.ids().end(), loaded->ids().begin(), loaded->ids().end()));
  EXPECT_TRUE(std::equal(index.vectors().begin(), index.vectors().end(), loaded->vectors().begin(), loaded->vectors().end()));
  const auto q = random_vectors(20, dim, 9);
  for (int64_t i = 0; i < 20; ++i)
    for (DenseSearch mode : {DenseSearch::Hnsw, DenseSearch::Exact})
      EXPECT_EQ(index.search(row(q, dim, i), 5, mode), loaded->search(row(q, dim, i), 5, mode));
  EXPECT_FALSE(loaded->contains(-450));
  EXPECT_TRUE(loaded->contains(-400));

  // Another embedder's vectors are refused; an empty expected tag skips the check.
  const std::string e = error_of([&] { DenseIndex::load(path, "tag-B"); });
  EXPECT_NE(e.find("tag-A"), std::string::npos) << e;
  EXPECT_NO_THROW(DenseIndex::load(path, ""));

  // A missing or foreign graph file is rebuilt from the vectors.
  std::filesystem::remove(path + ".hnsw");
  auto rebuilt = DenseIndex::load(path, "tag-A");
  EXPECT_EQ(rebuilt->graph_size(), rebuilt->size());
  EXPECT_EQ(rebuilt->search(row(x, dim, 700), 1, DenseSearch::Hnsw)[0].id, 200);
  DenseIndex other(dim);
  other.add(iota_ids(10), std::span<const float>(x).first(10 * dim));
  other.save(dir.file("other"), "tag-A");
  std::filesystem::copy_file(dir.file("other.hnsw"), path + ".hnsw");
  rebuilt = DenseIndex::load(path, "tag-A");
  EXPECT_EQ(rebuilt->size(), index.size());
  EXPECT_EQ(rebuilt->search(row(x, dim, 700), 1, DenseSearch::Hnsw)[0].id, 200);
}

TEST(DenseIndex, CorruptFilesAreErrors) {
  test::TempDir dir;
  const std::string path = dir.file("idx");
  const int dim = 8;
  DenseIndex index(dim);
  index.add(iota_ids(50), random_vectors(50, dim, 4));
  index.save(path, "t");
  const std::string good = test::read_all(path + ".vec");
  auto load_error = [&](const std::string& bytes) {
    test::write_all(path + ".vec", bytes);
    return error_of([&] { DenseIndex::load(path, "t"); });
  };
  std::string flipped = good;
  flipped[good.size() / 2] ^= 0x40;
  EXPECT_NE(load_error(flipped).find("checksum"), std::string::npos);
  EXPECT_NE(load_error(good.substr(0, good.size() - 9)).find("size"), std::string::npos);
  EXPECT_NE(load_error("M3DENSE").find("truncated"), std::string::npos);
  std::string magic = good;
  magic[0] = 'X';
  EXPECT_NE(load_error(magic).find("magic"), std::string::npos);
  std::string count = good;
  count[16] = 0x7f;  // count's low byte: the size no longer matches
  EXPECT_NE(load_error(count).find("does not match"), std::string::npos);
  EXPECT_NE(error_of([&] { DenseIndex::load(dir.file("none"), ""); }).find("none.vec"), std::string::npos);
  test::write_all(path + ".vec", good);
  EXPECT_EQ(DenseIndex::load(path, "t")->size(), 50);
}

TEST(DenseIndex, BadOptionsAreErrors) {
  EXPECT_NE(error_of([] { DenseIndex d(0); }).find("dimension"), std::string::npos);
  EXPECT_NE(error_of([] { DenseIndex d(8, HnswOptions{1, 200, 64, 1}); }).find("M"), std::string::npos);
  DenseIndex d(8);
  EXPECT_NE(error_of([&] { d.set_ef_search(0); }).find("ef_search"), std::string::npos);
}

// ---- dense retriever with the toy embedder ---------------------------------------------------------

TEST(DenseRetriever, FindsTextsSharingWordsAndPersists) {
  test::TempDir dir;
  auto embedder = std::make_shared<HashEmbedder>(64);
  RetrieverOptions o;
  o.embedder = embedder;
  o.index_path = dir.file("dense");
  {
    auto r = make_retriever("dense", o);
    EXPECT_EQ(r->spec(), "dense:hnsw:ef=64");
    r->add(1, "the quagga grazed by the river");
    r->add(2, "an axolotl swims in the lake");
    r->add(3, "market prices rose sharply today");
    EXPECT_EQ(r->search("quagga river", 1)[0].id, 1);
    EXPECT_EQ(r->search("axolotl lake", 1)[0].id, 2);
    EXPECT_TRUE(r->search("", 3).empty());
    EXPECT_TRUE(r->search("!!", 3).empty());
    r->remove(2);
    r->remove(99);  // unknown: ignored
    for (const auto& h : r->search("axolotl lake", 3)) EXPECT_NE(h.id, 2);
    r->save();
  }
  auto exact = make_retriever("dense:exact", o);  // loads the saved index
  EXPECT_EQ(exact->spec(), "dense:exact");
  EXPECT_EQ(exact->search("market prices", 1)[0].id, 3);
  EXPECT_EQ(exact->search("axolotl lake", 5).size(), 2u);
  // Vectors made by a different embedder are refused.
  o.embedder = std::make_shared<HashEmbedder>(32);
  const std::string e = error_of([&] { make_retriever("dense", o); });
  EXPECT_NE(e.find("test-hash:dim=64"), std::string::npos) << e;
  // Without a path there is nothing to save to.
  o.index_path.clear();
  EXPECT_NE(error_of([&] { make_retriever("dense", o)->save(); }).find("index path"), std::string::npos);
}

// ---- model embedder --------------------------------------------------------------------------------

const Model& test_model() {
  static const std::unique_ptr<Model> model = Model::load(kData + "/test-f32.gguf");
  return *model;
}

// Mean of layer `layer`'s residual rows, captured from a full forward pass (all layers, logits).
class CaptureLayer : public LayerObserver {
 public:
  explicit CaptureLayer(int layer) : layer_(layer) {}
  void on_hidden(int layer, int64_t T, const float* x) override {
    if (layer == layer_) rows.insert(rows.end(), x, x + T * dim);
  }
  int64_t dim = 0;
  std::vector<float> rows;

 private:
  int layer_;
};

TEST(ModelEmbedder, UnitNormDeterministicAndDistinct) {
  const Model& model = test_model();
  ASSERT_NE(model.tokenizer(), nullptr);
  ModelEmbedder e(model, 0, nullptr);
  EXPECT_EQ(e.dim(), model.config().dim);
  const auto a = e.embed("The river flows past the old market.");
  const auto b = e.embed("The river flows past the old market.");
  const auto c = e.embed("Completely different words here");
  ASSERT_EQ(a.size(), static_cast<size_t>(e.dim()));
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  for (const auto* v : {&a, &c}) {
    double n = 0;
    for (float f : *v) n += double(f) * f;
    EXPECT_NEAR(std::sqrt(n), 1.0, 1e-5);
  }
  const auto empty = e.embed("");
  EXPECT_EQ(empty, std::vector<float>(static_cast<size_t>(e.dim()), 0.0f));
}

TEST(ModelEmbedder, IsTheMeanOfTheLayersResidualStream) {
  const Model& model = test_model();
  const ModelConfig& c = model.config();
  const std::string text = "A quagga and a zebu met at the market by the river.";
  const std::vector<int32_t> tokens = model.tokenizer()->encode(text);
  ASSERT_GT(tokens.size(), 3u);
  for (int layer = 0; layer < c.n_layers; ++layer) {
    // By hand: the whole model with logits, observing every layer.
    Forward forward(model, nullptr);
    KVCache cache(c, static_cast<int>(tokens.size()));
    CaptureLayer capture(layer);
    capture.dim = c.dim;
    std::vector<float> logits(static_cast<size_t>(c.vocab_size));
    EvalOptions options;
    options.observer = &capture;
    forward.eval(tokens, cache, logits.data(), false, options);
    ASSERT_EQ(capture.rows.size(), tokens.size() * static_cast<size_t>(c.dim));
    std::vector<float> mean(static_cast<size_t>(c.dim), 0.0f);
    for (size_t t = 0; t < tokens.size(); ++t)
      for (int d = 0; d < c.dim; ++d) mean[d] += capture.rows[t * c.dim + d] / static_cast<float>(tokens.size());
    l2_normalize(mean.data(), c.dim);

    ThreadPool pool(2);
    for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
      ModelEmbedder e(model, layer, p);
      const auto v = e.embed(text);
      for (int d = 0; d < c.dim; ++d) ASSERT_NEAR(v[d], mean[d], 1e-5) << "layer " << layer << " dim " << d;
    }
  }
}

TEST(ModelEmbedder, TruncatesToMaxTokens) {
  const Model& model = test_model();
  const Tokenizer& tok = *model.tokenizer();
  std::string long_text;
  for (int i = 0; i < 40; ++i) long_text += "the river flows past the old market and the people ";
  const auto ids = tok.encode(long_text);
  ASSERT_GT(ids.size(), 300u);  // beyond the test model's context (256)
  // Only the first 16 tokens count: text appended after them changes nothing.
  ModelEmbedder e(model, 1, nullptr, 16), e17(model, 1, nullptr, 17);
  EXPECT_EQ(e.max_tokens(), 16);
  EXPECT_EQ(e.embed(long_text), e.embed(long_text + " quagga zebu axolotl"));
  EXPECT_NE(e.embed(long_text), e17.embed(long_text));
  ModelEmbedder capped(model, 1, nullptr);  // 512 capped by the context length
  EXPECT_EQ(capped.max_tokens(), model.config().context_length);
  EXPECT_EQ(capped.embed(long_text).size(), static_cast<size_t>(model.config().dim));
}

TEST(ModelEmbedder, SpecAndErrors) {
  const Model& model = test_model();
  ModelEmbedder e(model, 1, nullptr, 64);
  EXPECT_EQ(e.spec(), "model-mean:layer=1:max_tokens=64:fp=" + model.fingerprint());
  EXPECT_NE(error_of([&] { ModelEmbedder bad(model, model.config().n_layers, nullptr); }).find("layer"), std::string::npos);
  EXPECT_NE(error_of([&] { ModelEmbedder bad(model, -1, nullptr); }).find("layer"), std::string::npos);
  EXPECT_NE(error_of([&] { ModelEmbedder bad(model, 0, nullptr, 0); }).find("max_tokens"), std::string::npos);
}

TEST(ModelEmbedder, DrivesADenseRetriever) {
  auto embedder = std::make_shared<ModelEmbedder>(test_model(), 1, nullptr);
  RetrieverOptions o;
  o.embedder = embedder;
  auto r = make_retriever("dense:exact", o);
  const std::vector<std::string> texts = {"the quagga grazed by the river", "market prices rose sharply today",
                                          "an axolotl swims in the lake"};
  for (size_t i = 0; i < texts.size(); ++i) r->add(static_cast<int64_t>(i), texts[i]);
  for (size_t i = 0; i < texts.size(); ++i) {
    const auto hits = r->search(texts[i], 3);
    ASSERT_EQ(hits.size(), 3u);
    EXPECT_EQ(hits[0].id, static_cast<int64_t>(i));  // a text is nearest to itself
    EXPECT_NEAR(hits[0].score, 1.0f, 1e-5);
  }
}

// ---- hybrid ----------------------------------------------------------------------------------------

TEST(Rrf, FusesHandMadeRankings) {
  const std::vector<SearchHit> a = {{1, 9.f}, {2, 8.f}, {3, 7.f}}, b = {{3, .9f}, {1, .8f}, {4, .7f}};
  const auto fused = reciprocal_rank_fusion({a, b}, 10);
  ASSERT_EQ(ids_of(fused), (std::vector<int64_t>{1, 3, 2, 4}));
  EXPECT_FLOAT_EQ(fused[0].score, static_cast<float>(1.0 / 61 + 1.0 / 62));
  EXPECT_FLOAT_EQ(fused[1].score, static_cast<float>(1.0 / 63 + 1.0 / 61));
  EXPECT_FLOAT_EQ(fused[2].score, static_cast<float>(1.0 / 62));
  EXPECT_FLOAT_EQ(fused[3].score, static_cast<float>(1.0 / 63));
  EXPECT_EQ(ids_of(reciprocal_rank_fusion({a, b}, 2)), (std::vector<int64_t>{1, 3}));
  EXPECT_TRUE(reciprocal_rank_fusion({a, b}, 0).empty());
  EXPECT_TRUE(reciprocal_rank_fusion({}, 5).empty());
  // Ties: same score and best rank → the lower id first.
  EXPECT_EQ(ids_of(reciprocal_rank_fusion({{{9, 1.f}}, {{4, 1.f}}}, 5)), (std::vector<int64_t>{4, 9}));
  // Equal sums, different best ranks (k_rrf = 2): id 50 at ranks 1 and 4 scores 1/3 + 1/6, id 20
  // at ranks 2 and 2 scores 1/4 + 1/4; both 1/2, and 50's best rank is better.
  const auto tie = reciprocal_rank_fusion({{{50, 1.f}, {20, 1.f}}, {{30, 1.f}, {20, 1.f}, {40, 1.f}, {50, 1.f}}}, 4, 2.0);
  EXPECT_EQ(tie[0].score, tie[1].score);
  EXPECT_EQ(ids_of(tie), (std::vector<int64_t>{50, 20, 30, 40}));
  // A ranking that repeats an id counts it once.
  EXPECT_FLOAT_EQ(reciprocal_rank_fusion({{{5, 1.f}, {5, 1.f}}}, 5)[0].score, static_cast<float>(1.0 / 61));
  // k_rrf is honoured.
  EXPECT_FLOAT_EQ(reciprocal_rank_fusion({a}, 1, 1.0)[0].score, 0.5f);
}

// Returns a fixed ranking, recording the k it was asked for.
class FixedRetriever : public Retriever {
 public:
  FixedRetriever(std::string spec, std::vector<SearchHit> hits) : spec_(std::move(spec)), hits_(std::move(hits)) {}
  std::string spec() const override { return spec_; }
  std::vector<SearchHit> search(const std::string&, int k) const override {
    asked = k;
    return {hits_.begin(), hits_.begin() + std::min<size_t>(hits_.size(), static_cast<size_t>(k))};
  }
  void add(int64_t id, const std::string&) override { added.push_back(id); }
  void remove(int64_t id) override { removed.push_back(id); }
  void save() const override { ++saved; }
  mutable int asked = 0, saved = 0;
  std::vector<int64_t> added, removed;

 private:
  std::string spec_;
  std::vector<SearchHit> hits_;
};

TEST(HybridRetriever, FusesItsPartsAndForwardsChanges) {
  std::vector<SearchHit> s, d;
  for (int64_t i = 0; i < 40; ++i) s.push_back({i, 1.f});
  for (int64_t i = 39; i >= 0; --i) d.push_back({i + 20, 1.f});  // 59..20
  auto sp = std::make_unique<FixedRetriever>("bm25", s);
  auto dp = std::make_unique<FixedRetriever>("dense:exact", d);
  FixedRetriever* sparse = sp.get();
  FixedRetriever* dense = dp.get();
  HybridRetriever h(std::move(sp), std::move(dp));
  EXPECT_EQ(h.spec(), "hybrid:exact");
  const auto hits = h.search("q", 5);
  EXPECT_EQ(sparse->asked, 20);
  EXPECT_EQ(dense->asked, 20);
  EXPECT_EQ(hits, reciprocal_rank_fusion({sparse->search("q", 20), dense->search("q", 20)}, 5));
  EXPECT_TRUE(unique_ids(hits));
  h.search("q", 10);
  EXPECT_EQ(sparse->asked, 40);
  h.add(7, "x");
  h.remove(8);
  h.save();
  EXPECT_EQ(sparse->added, std::vector<int64_t>{7});
  EXPECT_EQ(dense->removed, std::vector<int64_t>{8});
  EXPECT_EQ(dense->saved, 1);
}

TEST(HybridRetriever, CombinesBm25AndDenseOverACatalog) {
  test::TempDir dir;
  const auto refs = corpus();
  make_catalog(dir.file("catalog.sqlite"), refs);
  RetrieverOptions o;
  o.catalog_path = dir.file("catalog.sqlite");
  o.embedder = std::make_shared<HashEmbedder>(128);
  auto h = make_retriever("hybrid", o);
  EXPECT_EQ(h->spec(), "hybrid:hnsw:ef=64");
  for (const Ref& r : refs)
    if (!r.deleted) h->add(r.id, r.text);
  const auto hits = h->search("quagga zebu", 5);
  ASSERT_FALSE(hits.empty());
  EXPECT_EQ(hits[0].id, 1001);  // first in both rankings
  EXPECT_TRUE(unique_ids(hits));
  EXPECT_TRUE(h->search("", 5).empty());
}

// ---- factory ---------------------------------------------------------------------------------------

TEST(MakeRetriever, SpecsRoundTripAndBadSpecsAreErrors) {
  test::TempDir dir;
  make_catalog(dir.file("catalog.sqlite"), corpus());
  RetrieverOptions o;
  o.catalog_path = dir.file("catalog.sqlite");
  o.embedder = std::make_shared<HashEmbedder>(16);
  const std::vector<std::pair<std::string, std::string>> specs = {
      {"bm25", "bm25"},
      {"dense", "dense:hnsw:ef=64"},
      {"dense:hnsw", "dense:hnsw:ef=64"},
      {"dense:hnsw:ef=128", "dense:hnsw:ef=128"},
      {"dense:exact", "dense:exact"},
      {"hybrid", "hybrid:hnsw:ef=64"},
      {"hybrid:exact", "hybrid:exact"},
      {"hybrid:hnsw:ef=7", "hybrid:hnsw:ef=7"},
  };
  for (const auto& [spec, canonical] : specs) {
    auto r = make_retriever(spec, o);
    EXPECT_EQ(r->spec(), canonical);
    EXPECT_EQ(make_retriever(r->spec(), o)->spec(), canonical);
  }
  for (const std::string bad : {"", "faiss", "bm25:x", "dense:foo", "dense:hnsw:ef=0", "dense:hnsw:ef=", "dense:hnsw:ef=3x",
                                "dense:hnsw:m=3", "dense:exact:ef=3", "dense:hnsw:ef=3:more", "hybrid:bm25", "BM25"}) {
    const std::string e = error_of([&] { make_retriever(bad, o); });
    EXPECT_NE(e.find("retriever spec"), std::string::npos) << bad << ": " << e;
  }
  RetrieverOptions none;
  EXPECT_NE(error_of([&] { make_retriever("dense", none); }).find("embedder"), std::string::npos);
  EXPECT_NE(error_of([&] { make_retriever("bm25", none); }).find("catalog"), std::string::npos);
  none.embedder = o.embedder;
  EXPECT_NE(error_of([&] { make_retriever("hybrid", none); }).find("catalog"), std::string::npos);
}

// Every retriever returns at most k unique ids, best first, for arbitrary query text.
class AllRetrievers : public ::testing::Test {
 protected:
  void SetUp() override {
    make_catalog(dir_.file("catalog.sqlite"), corpus());
    RetrieverOptions o;
    o.catalog_path = dir_.file("catalog.sqlite");
    o.embedder = std::make_shared<HashEmbedder>(32);
    for (const std::string spec : {"bm25", "dense", "dense:exact", "hybrid"}) {
      retrievers_.push_back(make_retriever(spec, o));
      for (const Ref& r : corpus())
        if (!r.deleted) retrievers_.back()->add(r.id, r.text);
    }
  }
  test::TempDir dir_;
  std::vector<std::unique_ptr<Retriever>> retrievers_;
};

TEST_F(AllRetrievers, UniqueBoundedOrderedIds) {
  EXPECT_TRUE(rc::check("unique ids", [this](const std::string& noise, uint8_t kk) {
    const int k = kk % 30;
    const std::string query = noise + " river " + noise + " market";
    for (const auto& r : retrievers_) {
      const auto hits = r->search(query, k);
      RC_ASSERT(hits.size() <= static_cast<size_t>(std::max(k, 0)));
      RC_ASSERT(unique_ids(hits));
      for (size_t i = 1; i < hits.size(); ++i) RC_ASSERT(hits[i - 1].score >= hits[i].score);
      for (const auto& h : hits) RC_ASSERT(h.id != 1003);
    }
  }));
}

}  // namespace
}  // namespace m3
