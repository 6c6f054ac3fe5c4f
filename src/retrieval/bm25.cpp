// bm25 retrieval through SQLite FTS5 over the bank's catalog (read-only).
//
// User text never reaches FTS5's query parser as syntax. It is split into terms by FTS5's own
// unicode61 tokenizer (the catalog's; also the base of porter/ascii setups), so terms are exactly
// what the index holds, and each term goes in as a double-quoted string, OR-ed with the others:
// a quote, '*', '^', ':', '(', NEAR or AND in a query is just text (or nothing).
#include <sqlite3.h>

#include <algorithm>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "m3/error.h"
#include "m3/retriever.h"

namespace m3 {

std::string fts5_or_query(const std::vector<std::string>& terms, int max_terms) {
  std::string out;
  std::unordered_set<std::string> seen;
  int n = 0;
  for (const std::string& t : terms) {
    if (n >= max_terms) break;
    if (t.empty() || !seen.insert(t).second) continue;
    if (!out.empty()) out += " OR ";
    out += '"';
    for (const char c : t) {
      if (c == '"') out += '"';  // FTS5 strings escape a quote by doubling it
      out += c;
    }
    out += '"';
    ++n;
  }
  return out;
}

struct Bm25Retriever::Impl {
  std::string path;
  sqlite3* db = nullptr;
  sqlite3_stmt* stmt = nullptr;
  fts5_tokenizer tokenizer{};
  Fts5Tokenizer* tok = nullptr;
  mutable std::mutex mutex;  // the prepared statement and the tokenizer are shared by searches
  int64_t max_df = -1;       // terms in more references than this are not searched (−1: all are)
  std::unordered_map<std::string, int64_t> df;  // documents per term, when max_df is set

  ~Impl() {
    if (tok) tokenizer.xDelete(tok);
    if (stmt) sqlite3_finalize(stmt);
    if (db) sqlite3_close(db);
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(path + ": " + what + (db ? std::string(": ") + sqlite3_errmsg(db) : std::string()));
  }
  bool has_table(const char* name) const {
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v2(db, "SELECT 1 FROM sqlite_master WHERE name = ?1", -1, &s, nullptr) != SQLITE_OK)
      fail("cannot read the schema");
    sqlite3_bind_text(s, 1, name, -1, SQLITE_STATIC);
    const int rc = sqlite3_step(s);
    sqlite3_finalize(s);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) fail("cannot read the schema");
    return rc == SQLITE_ROW;
  }
  // FTS5's extension API, reached the documented way: SELECT fts5(?) hands back its pointer.
  void open_tokenizer() {
    fts5_api* api = nullptr;
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v2(db, "SELECT fts5(?1)", -1, &s, nullptr) != SQLITE_OK) fail("SQLite has no FTS5");
    sqlite3_bind_pointer(s, 1, static_cast<void*>(&api), "fts5_api_ptr", nullptr);
    sqlite3_step(s);
    sqlite3_finalize(s);
    void* context = nullptr;
    if (!api || api->xFindTokenizer(api, "unicode61", &context, &tokenizer) != SQLITE_OK ||
        tokenizer.xCreate(context, nullptr, 0, &tok) != SQLITE_OK)
      fail("cannot create FTS5's unicode61 tokenizer");
  }
};

Bm25Retriever::Bm25Retriever(const std::string& catalog_path, double max_df_fraction) : impl_(std::make_unique<Impl>()) {
  impl_->path = catalog_path;
  // READONLY without CREATE: a missing file is an error rather than a new empty database.
  const int rc = sqlite3_open_v2(catalog_path.c_str(), &impl_->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_FULLMUTEX, nullptr);
  if (rc != SQLITE_OK) impl_->fail("cannot open the catalog read-only");
  sqlite3_busy_timeout(impl_->db, 5000);  // the bank may be writing
  for (const char* table : {"refs", "refs_fts"})
    if (!impl_->has_table(table))
      throw Error(catalog_path + ": not an m3 catalog (no table '" + table + "')");
  // −bm25 so that higher is better, like every other retriever's score.
  const char* sql =
      "SELECT r.id, -bm25(refs_fts) FROM refs_fts JOIN refs AS r ON r.id = refs_fts.rowid "
      "WHERE refs_fts MATCH ?1 AND r.deleted = 0 ORDER BY bm25(refs_fts), r.id LIMIT ?2";
  if (sqlite3_prepare_v3(impl_->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &impl_->stmt, nullptr) != SQLITE_OK)
    impl_->fail("catalog tables refs / refs_fts do not have the expected columns");
  impl_->open_tokenizer();
  if (max_df_fraction < 1.0) {
    // Document frequencies from FTS5's own vocabulary (a temp table: the catalog stays read-only).
    if (sqlite3_exec(impl_->db, "CREATE VIRTUAL TABLE temp.refs_vocab USING fts5vocab(main, refs_fts, row)", nullptr,
                     nullptr, nullptr) != SQLITE_OK)
      impl_->fail("cannot read the full-text vocabulary");
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v2(impl_->db, "SELECT term, doc FROM temp.refs_vocab", -1, &s, nullptr) != SQLITE_OK)
      impl_->fail("cannot read the full-text vocabulary");
    int64_t most = 0;
    while (sqlite3_step(s) == SQLITE_ROW) {
      const auto* term = reinterpret_cast<const char*>(sqlite3_column_text(s, 0));
      const int64_t n = sqlite3_column_int64(s, 1);
      impl_->df.emplace(term ? term : "", n);
      most = std::max(most, n);
    }
    sqlite3_finalize(s);
    sqlite3_int64 refs = 0;
    if (sqlite3_prepare_v2(impl_->db, "SELECT count(*) FROM refs WHERE deleted = 0", -1, &s, nullptr) == SQLITE_OK &&
        sqlite3_step(s) == SQLITE_ROW)
      refs = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    impl_->max_df = static_cast<int64_t>(max_df_fraction * static_cast<double>(std::max<sqlite3_int64>(refs, most)));
  }
}

Bm25Retriever::~Bm25Retriever() = default;

namespace {
std::vector<std::string> tokenize_locked(const fts5_tokenizer& tokenizer, Fts5Tokenizer* tok, const std::string& text) {
  std::vector<std::string> terms;
  if (text.empty()) return terms;
  auto on_token = [](void* ctx, int, const char* token, int n, int, int) -> int {
    static_cast<std::vector<std::string>*>(ctx)->emplace_back(token, static_cast<size_t>(n));
    return SQLITE_OK;
  };
  // Texts beyond 2 GiB are cut: nothing sensible queries with more.
  const int n = static_cast<int>(std::min<size_t>(text.size(), 0x7fffffff));
  tokenizer.xTokenize(tok, &terms, FTS5_TOKENIZE_QUERY, text.data(), n, on_token);
  return terms;
}
}  // namespace

std::vector<std::string> Bm25Retriever::terms(const std::string& text) const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return tokenize_locked(impl_->tokenizer, impl_->tok, text);
}

std::vector<SearchHit> Bm25Retriever::search(const std::string& query, int k) const {
  std::vector<SearchHit> hits;
  if (k <= 0) return hits;
  std::lock_guard<std::mutex> lock(impl_->mutex);
  std::vector<std::string> terms = tokenize_locked(impl_->tokenizer, impl_->tok, query);
  if (impl_->max_df >= 0) {
    std::vector<std::string> rare;
    for (const std::string& t : terms) {
      const auto it = impl_->df.find(t);
      if (it == impl_->df.end() || it->second <= impl_->max_df) rare.push_back(t);
    }
    if (!rare.empty()) terms.swap(rare);  // a query of only common words keeps them all
  }
  const std::string match = fts5_or_query(terms);
  if (match.empty()) return hits;

  sqlite3_stmt* s = impl_->stmt;
  sqlite3_reset(s);
  sqlite3_bind_text(s, 1, match.data(), static_cast<int>(match.size()), SQLITE_TRANSIENT);
  sqlite3_bind_int(s, 2, k);
  std::unordered_set<int64_t> seen;
  int rc;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    const int64_t id = sqlite3_column_int64(s, 0);
    if (seen.insert(id).second) hits.push_back({id, static_cast<float>(sqlite3_column_double(s, 1))});
  }
  const bool ok = rc == SQLITE_DONE;
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  if (!ok) impl_->fail("full-text search failed");
  return hits;
}

}  // namespace m3
