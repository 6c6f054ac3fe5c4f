// make_retriever: the spec string → a retriever (grammar at the top of m3/retriever.h).
#include <charconv>

#include "m3/error.h"
#include "m3/retriever.h"

namespace m3 {

namespace {

const char* kForms = "bm25, dense, dense:hnsw, dense:hnsw:ef=N, dense:exact, hybrid, hybrid:hnsw, hybrid:hnsw:ef=N, hybrid:exact";

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  size_t begin = 0;
  for (;;) {
    const size_t end = s.find(sep, begin);
    parts.push_back(s.substr(begin, end == std::string::npos ? std::string::npos : end - begin));
    if (end == std::string::npos) return parts;
    begin = end + 1;
  }
}

[[noreturn]] void bad_spec(const std::string& spec, const std::string& why) {
  throw Error("retriever spec '" + spec + "': " + why + " (accepted: " + kForms + ")");
}

// parts[first..]: [hnsw[:ef=N] | exact]; fills mode and options.ef_search.
DenseSearch parse_dense(const std::string& spec, const std::vector<std::string>& parts, size_t first, HnswOptions* options) {
  if (parts.size() <= first) return DenseSearch::Hnsw;
  if (parts[first] == "exact") {
    if (parts.size() > first + 1) bad_spec(spec, "exact search takes no options");
    return DenseSearch::Exact;
  }
  if (parts[first] != "hnsw") bad_spec(spec, "unknown dense mode '" + parts[first] + "'");
  if (parts.size() > first + 2) bad_spec(spec, "too many options");
  if (parts.size() == first + 2) {
    const std::string& opt = parts[first + 1];
    int ef = 0;
    const char* b = opt.data() + 3;
    const char* e = opt.data() + opt.size();
    if (opt.rfind("ef=", 0) != 0 || std::from_chars(b, e, ef).ptr != e || b == e || ef < 1)
      bad_spec(spec, "option '" + opt + "' is not ef=N with N >= 1");
    options->ef_search = ef;
  }
  return DenseSearch::Hnsw;
}

std::unique_ptr<Retriever> make_dense(const std::string& spec, const std::vector<std::string>& parts, const RetrieverOptions& o) {
  if (!o.embedder) bad_spec(spec, "dense retrieval needs an embedder (RetrieverOptions::embedder)");
  HnswOptions hnsw = o.hnsw;
  const DenseSearch mode = parse_dense(spec, parts, 1, &hnsw);
  return std::make_unique<DenseRetriever>(o.embedder, mode, o.index_path, hnsw, o.pool);
}

std::unique_ptr<Retriever> make_bm25(const std::string& spec, const RetrieverOptions& o) {
  if (o.catalog_path.empty()) bad_spec(spec, "bm25 needs the catalog database (RetrieverOptions::catalog_path)");
  return std::make_unique<Bm25Retriever>(o.catalog_path);
}

}  // namespace

std::unique_ptr<Retriever> make_retriever(const std::string& spec, const RetrieverOptions& options) {
  const std::vector<std::string> parts = split(spec, ':');
  if (parts[0] == "bm25") {
    if (parts.size() > 1) bad_spec(spec, "bm25 takes no options");
    return make_bm25(spec, options);
  }
  if (parts[0] == "dense") return make_dense(spec, parts, options);
  if (parts[0] == "hybrid") {
    auto dense = make_dense(spec, parts, options);  // checks the dense part first: it needs no file
    return std::make_unique<HybridRetriever>(make_bm25(spec, options), std::move(dense));
  }
  bad_spec(spec, "unknown retriever '" + parts[0] + "'");
}

}  // namespace m3
