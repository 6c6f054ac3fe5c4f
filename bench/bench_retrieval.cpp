// bench_retrieval: the dense index (hnswlib HNSW vs exact BLAS search) and bm25 (SQLite FTS5) at
// 10^5 items, on the machine's threads (default 2).
//
// Dense data are "clustered" by default: 2,000 random centres, each stored vector a centre plus
// noise of the same norm, normalised; queries are stored vectors plus noise (a query lands near
// its documents, as in retrieval). "--data random" uses i.i.d. Gaussian vectors instead, HNSW's
// hardest case (no structure; every neighbour almost as far as every other). Recall@k is against
// the exact top k.
// bm25 texts: 8–40 words drawn from a Zipf(1.1) vocabulary of 30,000 words; queries of 10 words
// (a question) and of 45 words (a 64-token chunk, what Memory³ retrieves with). FTS5 scores
// every document that matches any query term, so a long query of common words costs the most.
//
// Usage: bench_retrieval [--n 100000] [--dim 256] [--queries 1000] [--k 5] [--threads 2]
//                        [--texts 100000] [--bm25-queries 100] [--data clustered|random]
//                        [--skip-bm25] [--skip-dense]
// Takes ~2 minutes with the defaults on 2 cores (most of it the HNSW build).
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "m3/error.h"
#include "m3/retriever.h"
#include "m3/thread_pool.h"
#include "bench_util.h"

namespace {

using m3::bench::Clock;
using m3::bench::median;
using m3::bench::seconds_since;

struct Latency {
  double p50_ms = 0, p99_ms = 0, mean_ms = 0;
};

Latency summarize(std::vector<double> s) {
  Latency l;
  if (s.empty()) return l;
  std::sort(s.begin(), s.end());
  auto at = [&](double q) { return s[std::min(s.size() - 1, static_cast<size_t>(q * static_cast<double>(s.size())))] * 1e3; };
  l.p50_ms = at(0.50);
  l.p99_ms = at(0.99);
  double sum = 0;
  for (double x : s) sum += x;
  l.mean_ms = sum / static_cast<double>(s.size()) * 1e3;
  return l;
}

struct Args {
  int64_t n = 100000;
  int dim = 256;
  int queries = 1000;
  int k = 5;
  int threads = 2;
  int64_t texts = 100000;
  int bm25_queries = 100;
  std::string data = "clustered";
  bool bm25 = true, dense = true;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw m3::Error("missing value after " + f);
      return argv[++i];
    };
    if (f == "--n") a.n = std::stoll(next());
    else if (f == "--dim") a.dim = std::stoi(next());
    else if (f == "--queries") a.queries = std::stoi(next());
    else if (f == "--k") a.k = std::stoi(next());
    else if (f == "--threads") a.threads = std::stoi(next());
    else if (f == "--texts") a.texts = std::stoll(next());
    else if (f == "--bm25-queries") a.bm25_queries = std::stoi(next());
    else if (f == "--data") a.data = next();
    else if (f == "--skip-bm25") a.bm25 = false;
    else if (f == "--skip-dense") a.dense = false;
    else throw m3::Error("unknown flag " + f + " (see the top of bench/bench_retrieval.cpp)");
  }
  if (a.data != "clustered" && a.data != "random") throw m3::Error("--data must be clustered or random");
  return a;
}

// ---- dense ---------------------------------------------------------------------------------------

void normalize_rows(std::vector<float>& x, int dim) {
  for (size_t r = 0; r < x.size() / static_cast<size_t>(dim); ++r) m3::l2_normalize(x.data() + r * dim, dim);
}

void make_vectors(const Args& a, std::vector<float>* base, std::vector<float>* queries) {
  std::mt19937_64 rng(42);
  std::normal_distribution<float> nd;
  const size_t D = static_cast<size_t>(a.dim);
  base->resize(static_cast<size_t>(a.n) * D);
  queries->resize(static_cast<size_t>(a.queries) * D);
  if (a.data == "random") {
    for (auto& f : *base) f = nd(rng);
    for (auto& f : *queries) f = nd(rng);
  } else {
    const size_t n_centres = 2000;
    std::vector<float> centres(n_centres * D);
    for (auto& f : centres) f = nd(rng);
    for (size_t i = 0; i < static_cast<size_t>(a.n); ++i) {
      const float* c = centres.data() + (rng() % n_centres) * D;
      for (size_t d = 0; d < D; ++d) (*base)[i * D + d] = c[d] + nd(rng);
    }
    normalize_rows(*base, a.dim);
    for (size_t q = 0; q < static_cast<size_t>(a.queries); ++q) {
      const float* b = base->data() + (rng() % static_cast<size_t>(a.n)) * D;
      // noise of norm ~0.5 around a unit vector
      for (size_t d = 0; d < D; ++d) (*queries)[q * D + d] = b[d] + 0.5f / std::sqrt(static_cast<float>(D)) * nd(rng);
    }
  }
  normalize_rows(*base, a.dim);
  normalize_rows(*queries, a.dim);
}

void bench_dense(const Args& a, m3::ThreadPool& pool) {
  std::vector<float> base, queries;
  make_vectors(a, &base, &queries);
  std::vector<int64_t> ids(static_cast<size_t>(a.n));
  for (int64_t i = 0; i < a.n; ++i) ids[static_cast<size_t>(i)] = i;
  const std::span<const float> qs(queries);
  auto query = [&](int q) { return qs.subspan(static_cast<size_t>(q) * a.dim, static_cast<size_t>(a.dim)); };

  std::printf("\n== dense: %lld x %d (%s), %d queries, k %d, %d threads ==\n", static_cast<long long>(a.n), a.dim, a.data.c_str(),
              a.queries, a.k, a.threads);
  m3::DenseIndex index(a.dim);
  auto t0 = Clock::now();
  index.add(ids, base, &pool);
  const double build_s = seconds_since(t0);
  std::printf("hnsw build (M 16, ef_construction 200): %.1f s  (%.0f vectors/s)\n", build_s, static_cast<double>(a.n) / build_s);

  // Exact: batched ground truth (sgemm on all threads), then single-query latency (sgemv on one
  // thread, as inside m3's pool; a memory-bound GEMV gains little from a second core).
  m3::set_blas_threads(a.threads);
  t0 = Clock::now();
  const auto truth = index.search_exact_batch(queries, a.k);
  const double batch_s = seconds_since(t0);
  m3::set_blas_threads(1);
  auto ids_of = [](const std::vector<m3::SearchHit>& h) {
    std::vector<int64_t> v;
    for (const auto& x : h) v.push_back(x.id);
    return v;
  };
  int differ = 0;
  std::vector<double> exact_t;
  const int n_exact = std::min(a.queries, 200);
  for (int q = 0; q < n_exact; ++q) {
    const auto s = Clock::now();
    const auto hits = index.search(query(q), a.k, m3::DenseSearch::Exact);
    exact_t.push_back(seconds_since(s));
    differ += ids_of(hits) != ids_of(truth[static_cast<size_t>(q)]);
  }
  // sgemv and sgemm round differently, so a near-tie may swap; more than that would be a bug.
  if (differ) std::printf("(exact single vs batched: %d of %d queries rank differently)\n", differ, n_exact);
  const Latency ex = summarize(exact_t);

  std::printf("%-24s %10s %10s %10s %12s\n", "search", "p50 ms", "p99 ms", "mean ms", "recall@k");
  std::printf("%-24s %10.3f %10.3f %10.3f %12.4f\n", "exact (sgemv, 1 query)", ex.p50_ms, ex.p99_ms, ex.mean_ms, 1.0);
  std::printf("%-24s %10s %10s %10.3f %12.4f\n", "exact (sgemm, batched)", "-", "-", batch_s * 1e3 / a.queries, 1.0);
  for (int ef : {16, 32, 64, 128, 256}) {
    index.set_ef_search(ef);
    std::vector<double> t;
    int64_t found = 0, total = 0;
    for (int q = 0; q < a.queries; ++q) {
      const auto s = Clock::now();
      const auto hits = index.search(query(q), a.k, m3::DenseSearch::Hnsw);
      t.push_back(seconds_since(s));
      std::set<int64_t> got;
      for (const auto& h : hits) got.insert(h.id);
      for (const auto& h : truth[static_cast<size_t>(q)]) found += static_cast<int64_t>(got.count(h.id));
      total += static_cast<int64_t>(truth[static_cast<size_t>(q)].size());
    }
    const Latency l = summarize(t);
    char name[32];
    std::snprintf(name, sizeof name, "hnsw ef %d%s", ef, ef == 64 ? " (default)" : "");
    std::printf("%-24s %10.3f %10.3f %10.3f %12.4f\n", name, l.p50_ms, l.p99_ms, l.mean_ms,
                static_cast<double>(found) / static_cast<double>(std::max<int64_t>(total, 1)));
  }
  index.set_ef_search(64);

  // Files.
  const std::string dir = (std::filesystem::temp_directory_path() / ("m3-bench-" + std::to_string(::getpid()))).string();
  std::filesystem::create_directories(dir);
  t0 = Clock::now();
  index.save(dir + "/idx", "bench");
  const double save_s = seconds_since(t0);
  t0 = Clock::now();
  auto loaded = m3::DenseIndex::load(dir + "/idx", "bench");
  const double load_s = seconds_since(t0);
  const double mb = static_cast<double>(std::filesystem::file_size(dir + "/idx.vec") + std::filesystem::file_size(dir + "/idx.hnsw")) / 1e6;
  std::printf("save %.2f s, load %.2f s (%.0f MB: .vec + .hnsw, checksummed)\n", save_s, load_s, mb);
  std::filesystem::remove_all(dir);
}

// ---- bm25 ----------------------------------------------------------------------------------------

class Zipf {
 public:
  Zipf(int n, double s) : cdf_(static_cast<size_t>(n)) {
    double sum = 0;
    for (int i = 0; i < n; ++i) cdf_[static_cast<size_t>(i)] = (sum += 1.0 / std::pow(i + 1.0, s));
    for (auto& c : cdf_) c /= sum;
  }
  int operator()(std::mt19937_64& rng) const {
    const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
    return static_cast<int>(std::lower_bound(cdf_.begin(), cdf_.end(), u) - cdf_.begin());
  }

 private:
  std::vector<double> cdf_;
};

std::string word(int i) {
  static const char* syl[] = {"ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "de", "va", "go", "zu", "be", "fi", "ha", "ju"};
  std::string w;
  do {
    w += syl[i % 16];
    i /= 16;
  } while (i > 0);
  return w;
}

std::string sentence(std::mt19937_64& rng, const Zipf& zipf, int words) {
  std::string s;
  for (int i = 0; i < words; ++i) {
    if (i) s += ' ';
    s += word(zipf(rng));
  }
  return s;
}

void check(int rc, sqlite3* db, const char* what) {
  if (rc != SQLITE_OK && rc != SQLITE_DONE) throw m3::Error(std::string(what) + ": " + sqlite3_errmsg(db));
}

void bench_bm25(const Args& a) {
  std::printf("\n== bm25: %lld texts, SQLite FTS5 ==\n", static_cast<long long>(a.texts));
  const std::string dir = (std::filesystem::temp_directory_path() / ("m3-bench-bm25-" + std::to_string(::getpid()))).string();
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/catalog.sqlite";
  const Zipf zipf(30000, 1.1);
  std::mt19937_64 rng(7);
  {
    sqlite3* db = nullptr;
    check(sqlite3_open(path.c_str(), &db), db, "open");
    check(sqlite3_exec(db,
                       "PRAGMA journal_mode=WAL;"
                       "CREATE TABLE refs(id INTEGER PRIMARY KEY, doc_key INTEGER, text TEXT, deleted INTEGER DEFAULT 0);"
                       "CREATE VIRTUAL TABLE refs_fts USING fts5(text, content='refs', content_rowid='id');"
                       "BEGIN",
                       nullptr, nullptr, nullptr),
          db, "schema");
    sqlite3_stmt *ins = nullptr, *fts = nullptr;
    check(sqlite3_prepare_v2(db, "INSERT INTO refs(id, doc_key, text) VALUES (?1, ?1, ?2)", -1, &ins, nullptr), db, "prepare");
    check(sqlite3_prepare_v2(db, "INSERT INTO refs_fts(rowid, text) VALUES (?1, ?2)", -1, &fts, nullptr), db, "prepare");
    const auto t0 = Clock::now();
    for (int64_t i = 1; i <= a.texts; ++i) {
      const std::string text = sentence(rng, zipf, 8 + static_cast<int>(rng() % 33));
      for (sqlite3_stmt* s : {ins, fts}) {
        sqlite3_bind_int64(s, 1, i);
        sqlite3_bind_text(s, 2, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
        check(sqlite3_step(s), db, "insert");
        sqlite3_reset(s);
      }
    }
    sqlite3_finalize(ins);
    sqlite3_finalize(fts);
    check(sqlite3_exec(db, "COMMIT; UPDATE refs SET deleted = 1 WHERE id % 100 = 0;", nullptr, nullptr, nullptr), db, "commit");
    std::printf("insert + index: %.1f s; catalog %.0f MB (1%% of refs marked deleted)\n", seconds_since(t0),
                static_cast<double>(std::filesystem::file_size(path)) / 1e6);
    sqlite3_close(db);
  }
  m3::Bm25Retriever bm25(path);
  std::printf("%-24s %10s %10s %10s %10s\n", "query", "p50 ms", "p99 ms", "mean ms", "hits/q");
  for (int words : {3, 10, 45}) {
    std::vector<double> t;
    int64_t hits = 0;
    for (int q = 0; q < a.bm25_queries; ++q) {
      const std::string text = sentence(rng, zipf, words);
      const auto s = Clock::now();
      hits += static_cast<int64_t>(bm25.search(text, a.k).size());
      t.push_back(seconds_since(s));
    }
    const Latency l = summarize(t);
    char name[32];
    std::snprintf(name, sizeof name, "%d words, k %d", words, a.k);
    std::printf("%-24s %10.3f %10.3f %10.3f %10.2f\n", name, l.p50_ms, l.p99_ms, l.mean_ms,
                static_cast<double>(hits) / a.bm25_queries);
  }
  std::filesystem::remove_all(dir);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args a = parse(argc, argv);
    m3::ThreadPool pool(a.threads);
    const auto t0 = Clock::now();
    if (a.dense) bench_dense(a, pool);
    if (a.bm25) bench_bm25(a);
    std::printf("\ntotal %.0f s\n", seconds_since(t0));
  } catch (const m3::Error& e) {
    std::fprintf(stderr, "bench_retrieval: %s\n", e.what());
    return 1;
  }
  return 0;
}
