// DenseIndex (hnswlib HNSW graph + raw vectors, exact search through BLAS) and DenseRetriever.
//
// hnswlib's hnswlib.h defines non-inline functions (cpuid, AVXCapable), so this must stay the
// only translation unit of a binary that includes it.
#include <cblas.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#define XXH_INLINE_ALL  // header-only use: m3_retrieval does not link libxxhash
#include <xxhash.h>

// hnswlib 0.6.2's SSE path prefetches one link past the end of a link list (hnswalg.h
// searchBaseLayer): harmless, but AddressSanitizer reports the read, so sanitized builds use its
// portable path.
#if defined(__SANITIZE_ADDRESS__)
#define NO_MANUAL_VECTORIZATION
#endif
// hnswlib 0.6.2 is not written for -Wall -Wextra -Wpedantic -Wshadow; its warnings are not ours.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wshadow"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wunused-variable"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#pragma GCC diagnostic ignored "-Wpedantic"
#pragma GCC diagnostic ignored "-Wextra"
#include <hnswlib/hnswlib.h>
#pragma GCC diagnostic pop

#include "m3/error.h"
#include "m3/retriever.h"
#include "m3/thread_pool.h"

namespace m3 {

namespace {

constexpr char kMagic[8] = {'M', '3', 'D', 'E', 'N', 'S', 'E', '\0'};
constexpr uint32_t kVersion = 1;
constexpr size_t kMinCapacity = 1024;
constexpr uint32_t kMaxTag = 1 << 16;

using Graph = hnswlib::HierarchicalNSW<float>;

hnswlib::labeltype label_of(int64_t id) { return static_cast<hnswlib::labeltype>(id); }
int64_t id_of(hnswlib::labeltype label) { return static_cast<int64_t>(label); }

// Best first: higher score, then lower id.
bool better(const SearchHit& a, const SearchHit& b) { return a.score > b.score || (a.score == b.score && a.id < b.id); }

// The k best of n scores (row i has id ids[i]), best first.
std::vector<SearchHit> top_k(const float* scores, const int64_t* ids, int64_t n, int k) {
  std::priority_queue<SearchHit, std::vector<SearchHit>, decltype(&better)> heap(&better);  // top = worst kept
  for (int64_t i = 0; i < n; ++i) {
    const SearchHit h{ids[i], scores[i]};
    if (static_cast<int64_t>(heap.size()) < k) heap.push(h);
    else if (better(h, heap.top())) { heap.pop(); heap.push(h); }
  }
  std::vector<SearchHit> out(heap.size());
  for (size_t i = out.size(); i-- > 0;) { out[i] = heap.top(); heap.pop(); }
  return out;
}

// Runs fn(i) for i in [0, n) on the pool (or inline), carrying the first exception back.
template <typename Fn>
void for_each_index(int64_t n, ThreadPool* pool, const Fn& fn) {
  if (!pool || pool->size() == 1 || n < 64) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::mutex mu;
  std::string error;
  pool->parallel_for(n, [&](int64_t begin, int64_t end, int) {
    try {
      for (int64_t i = begin; i < end; ++i) fn(i);
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(mu);
      if (error.empty()) error = e.what();
    }
  });
  if (!error.empty()) throw Error("dense index: " + error);
}

// ---- files ---------------------------------------------------------------------------------------

[[noreturn]] void io_fail(const std::string& path, const std::string& what) {
  throw Error(path + ": " + what + (errno ? std::string(": ") + std::strerror(errno) : std::string()));
}

void fsync_path(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) io_fail(path, "cannot open to sync");
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0 && !directory) io_fail(path, "fsync failed");
}

void fsync_parent(const std::string& path) {
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  fsync_path(dir.empty() ? "." : dir.string(), true);
}

// A file written through a running XXH3-64.
class HashedWriter {
 public:
  explicit HashedWriter(std::string path) : path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) io_fail(path_, "cannot create");
    XXH3_64bits_reset(&state_);
  }
  ~HashedWriter() { if (fd_ >= 0) ::close(fd_); }
  void write(const void* p, size_t n) {
    XXH3_64bits_update(&state_, p, n);
    const char* c = static_cast<const char*>(p);
    while (n > 0) {
      const ssize_t w = ::write(fd_, c, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) io_fail(path_, "write failed");
      c += w;
      n -= static_cast<size_t>(w);
    }
  }
  template <typename T> void pod(const T& v) { write(&v, sizeof(T)); }
  uint64_t digest() { return XXH3_64bits_digest(&state_); }
  void close_synced() {
    if (::fsync(fd_) != 0) io_fail(path_, "fsync failed");
    if (::close(fd_) != 0) { fd_ = -1; io_fail(path_, "close failed"); }
    fd_ = -1;
  }

 private:
  std::string path_;
  int fd_ = -1;
  XXH3_state_t state_;
};

// A file read through a running XXH3-64; a short read is "truncated".
class HashedReader {
 public:
  explicit HashedReader(std::string path) : path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) io_fail(path_, "cannot open");
    struct stat st;
    if (::fstat(fd_, &st) != 0) io_fail(path_, "cannot stat");
    size_ = static_cast<uint64_t>(st.st_size);
    XXH3_64bits_reset(&state_);
  }
  ~HashedReader() { if (fd_ >= 0) ::close(fd_); }
  uint64_t size() const { return size_; }
  void read(void* p, size_t n, bool hash = true) {
    char* c = static_cast<char*>(p);
    size_t left = n;
    while (left > 0) {
      const ssize_t r = ::read(fd_, c, left);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) io_fail(path_, "read failed");
      if (r == 0) { errno = 0; io_fail(path_, "truncated"); }
      c += r;
      left -= static_cast<size_t>(r);
    }
    if (hash) XXH3_64bits_update(&state_, p, n);
  }
  template <typename T> T pod() { T v; read(&v, sizeof(T)); return v; }
  uint64_t digest() { return XXH3_64bits_digest(&state_); }

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
  XXH3_state_t state_;
};

// Size and XXH3-64 of a whole file; false when it cannot be read.
bool file_digest(const std::string& path, uint64_t* size, uint64_t* digest) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return false;
  try {
    HashedReader in(path);
    std::vector<char> buf(1 << 20);
    uint64_t left = in.size();
    while (left > 0) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(left, buf.size()));
      in.read(buf.data(), n);
      left -= n;
    }
    *size = in.size();
    *digest = in.digest();
    return true;
  } catch (const Error&) {
    return false;
  }
}

// hnswlib 0.6.2's loading constructor leaves num_deleted_ uninitialised (loadIndex then adds to
// it), and its destructor frees whatever the pointers hold; so start from the bare constructor
// with the members loadIndex relies on, and the ones the destructor touches, set.
std::unique_ptr<Graph> load_graph(hnswlib::SpaceInterface<float>* space, const std::string& path) {
  auto graph = std::make_unique<Graph>(space);
  graph->data_level0_memory_ = nullptr;
  graph->linkLists_ = nullptr;
  graph->visited_list_pool_ = nullptr;
  graph->cur_element_count = 0;
  graph->num_deleted_ = 0;
  graph->metric_distance_computations = 0;
  graph->metric_hops = 0;
  try {
    graph->loadIndex(path, space, 0);
  } catch (...) {
    graph->cur_element_count = 0;  // the destructor must not walk half-read link lists (leaks them)
    throw;
  }
  return graph;
}

}  // namespace

// ---- DenseIndex ----------------------------------------------------------------------------------

struct DenseIndex::Impl {
  int dim = 0;
  HnswOptions options;
  std::unique_ptr<hnswlib::InnerProductSpace> space;
  std::unique_ptr<Graph> graph;
  // Raw store: row r holds ids[r]'s normalised vector at data[r·dim ..].
  std::vector<int64_t> ids;
  std::vector<float> data;
  std::unordered_map<int64_t, size_t> row;

  void new_graph(size_t capacity) {
    graph = std::make_unique<Graph>(space.get(), std::max(capacity, kMinCapacity), static_cast<size_t>(options.M),
                                    static_cast<size_t>(options.ef_construction), static_cast<size_t>(options.seed));
    graph->setEf(static_cast<size_t>(options.ef_search));
  }
  void reserve_graph(size_t extra) {
    const size_t need = graph->cur_element_count + extra;
    if (need > graph->max_elements_) graph->resizeIndex(std::max(need, 2 * graph->max_elements_));
  }
  // Graph insertion of raw rows (labels must be new to the graph).
  void insert_rows(const std::vector<size_t>& rows, ThreadPool* pool) {
    for_each_index(static_cast<int64_t>(rows.size()), pool, [&](int64_t i) {
      const size_t r = rows[static_cast<size_t>(i)];
      graph->addPoint(data.data() + r * static_cast<size_t>(dim), label_of(ids[r]));
    });
  }
};

DenseIndex::DenseIndex(int dim, const HnswOptions& options) : impl_(std::make_unique<Impl>()) {
  if (dim <= 0) throw Error("dense index: dimension " + std::to_string(dim) + " must be positive");
  if (options.M < 2 || options.ef_construction < 1 || options.ef_search < 1)
    throw Error("dense index: HNSW options M " + std::to_string(options.M) + ", ef_construction " +
                std::to_string(options.ef_construction) + ", ef_search " + std::to_string(options.ef_search) +
                " must be at least 2, 1, 1");
  impl_->dim = dim;
  impl_->options = options;
  impl_->space = std::make_unique<hnswlib::InnerProductSpace>(static_cast<size_t>(dim));
  impl_->new_graph(kMinCapacity);
}

DenseIndex::~DenseIndex() = default;

int DenseIndex::dim() const { return impl_->dim; }
int64_t DenseIndex::size() const { return static_cast<int64_t>(impl_->ids.size()); }
bool DenseIndex::contains(int64_t id) const { return impl_->row.count(id) != 0; }
const HnswOptions& DenseIndex::options() const { return impl_->options; }
int64_t DenseIndex::graph_size() const { return static_cast<int64_t>(impl_->graph->cur_element_count); }
std::span<const int64_t> DenseIndex::ids() const { return impl_->ids; }
std::span<const float> DenseIndex::vectors() const { return impl_->data; }

void DenseIndex::set_ef_search(int ef) {
  if (ef < 1) throw Error("dense index: ef_search " + std::to_string(ef) + " must be at least 1");
  impl_->options.ef_search = ef;
  impl_->graph->setEf(static_cast<size_t>(ef));
}

void DenseIndex::add(std::span<const int64_t> ids, std::span<const float> x, ThreadPool* pool) {
  Impl& m = *impl_;
  const size_t D = static_cast<size_t>(m.dim);
  if (x.size() != ids.size() * D)
    throw Error("dense index: add of " + std::to_string(ids.size()) + " ids needs " + std::to_string(ids.size() * D) +
                " floats (dim " + std::to_string(D) + "), got " + std::to_string(x.size()));
  // Last occurrence of an id wins.
  std::vector<size_t> order;
  {
    std::unordered_set<int64_t> seen;
    for (size_t i = ids.size(); i-- > 0;)
      if (seen.insert(ids[i]).second) order.push_back(i);
    std::reverse(order.begin(), order.end());
  }
  // Raw store first; then the graph: unseen labels in parallel, labels it knows (live or removed)
  // through hnswlib's update path, one at a time.
  std::vector<size_t> fresh, known;
  m.data.reserve(m.data.size() + order.size() * D);
  for (const size_t i : order) {
    auto it = m.row.find(ids[i]);
    size_t r;
    if (it != m.row.end()) {
      r = it->second;
    } else {
      r = m.ids.size();
      m.ids.push_back(ids[i]);
      m.data.resize(m.data.size() + D);
      m.row.emplace(ids[i], r);
    }
    float* v = m.data.data() + r * D;
    std::copy(x.begin() + static_cast<std::ptrdiff_t>(i * D), x.begin() + static_cast<std::ptrdiff_t>((i + 1) * D), v);
    l2_normalize(v, m.dim);
    (m.graph->label_lookup_.count(label_of(ids[i])) ? known : fresh).push_back(r);
  }
  try {
    m.reserve_graph(fresh.size());
    m.insert_rows(fresh, pool);
    for (const size_t r : known) m.graph->addPoint(m.data.data() + r * D, label_of(m.ids[r]));
  } catch (const std::runtime_error& e) {
    throw Error(std::string("dense index: ") + e.what());
  }
}

bool DenseIndex::remove(int64_t id) {
  Impl& m = *impl_;
  auto it = m.row.find(id);
  if (it == m.row.end()) return false;
  try {
    m.graph->markDelete(label_of(id));
  } catch (const std::runtime_error& e) {
    throw Error(std::string("dense index: remove ") + std::to_string(id) + ": " + e.what());
  }
  // Move the last row into the hole.
  const size_t r = it->second, last = m.ids.size() - 1, D = static_cast<size_t>(m.dim);
  m.row.erase(it);
  if (r != last) {
    std::copy(m.data.begin() + static_cast<std::ptrdiff_t>(last * D), m.data.begin() + static_cast<std::ptrdiff_t>((last + 1) * D),
              m.data.begin() + static_cast<std::ptrdiff_t>(r * D));
    m.ids[r] = m.ids[last];
    m.row[m.ids[r]] = r;
  }
  m.ids.pop_back();
  m.data.resize(last * D);
  return true;
}

void DenseIndex::rebuild(ThreadPool* pool) {
  Impl& m = *impl_;
  m.new_graph(m.ids.size());
  std::vector<size_t> rows(m.ids.size());
  for (size_t r = 0; r < rows.size(); ++r) rows[r] = r;
  try {
    m.insert_rows(rows, pool);
  } catch (const std::runtime_error& e) {
    throw Error(std::string("dense index: rebuild: ") + e.what());
  }
}

std::vector<SearchHit> DenseIndex::search(std::span<const float> q, int k, DenseSearch mode) const {
  const Impl& m = *impl_;
  if (q.size() != static_cast<size_t>(m.dim))
    throw Error("dense index: query has " + std::to_string(q.size()) + " floats, index dim is " + std::to_string(m.dim));
  if (k <= 0 || m.ids.empty()) return {};
  std::vector<float> qn(q.begin(), q.end());
  if (l2_normalize(qn.data(), m.dim) == 0.0) return {};

  if (mode == DenseSearch::Exact) {
    const int64_t n = static_cast<int64_t>(m.ids.size());
    std::vector<float> scores(static_cast<size_t>(n));
    // scores [n] = data [n, dim] · qn [dim]
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(n), m.dim, 1.0f, m.data.data(), m.dim, qn.data(), 1, 0.0f,
                scores.data(), 1);
    return top_k(scores.data(), m.ids.data(), n, k);
  }
  auto heap = m.graph->searchKnn(qn.data(), static_cast<size_t>(k));  // farthest on top
  std::vector<SearchHit> out(heap.size());
  for (size_t i = out.size(); i-- > 0;) {
    out[i] = {id_of(heap.top().second), 1.0f - heap.top().first};  // InnerProductSpace: distance = 1 − dot
    heap.pop();
  }
  return out;
}

std::vector<std::vector<SearchHit>> DenseIndex::search_exact_batch(std::span<const float> q, int k) const {
  const Impl& m = *impl_;
  const size_t D = static_cast<size_t>(m.dim);
  if (q.size() % D != 0)
    throw Error("dense index: " + std::to_string(q.size()) + " query floats are not a multiple of dim " + std::to_string(D));
  const size_t nq = q.size() / D, n = m.ids.size();
  std::vector<std::vector<SearchHit>> out(nq);
  if (k <= 0 || n == 0) return out;
  constexpr size_t kBlock = 64;  // queries per sgemm: bounds the score buffer to 64·n floats
  std::vector<float> qb(kBlock * D), s(kBlock * n);
  for (size_t b = 0; b < nq; b += kBlock) {
    const size_t nb = std::min(kBlock, nq - b);
    std::copy(q.begin() + static_cast<std::ptrdiff_t>(b * D), q.begin() + static_cast<std::ptrdiff_t>((b + nb) * D), qb.begin());
    for (size_t i = 0; i < nb; ++i) l2_normalize(qb.data() + i * D, m.dim);
    // s [nb, n] = qb [nb, dim] · data [n, dim]^T
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(nb), static_cast<int>(n), m.dim, 1.0f, qb.data(), m.dim,
                m.data.data(), m.dim, 0.0f, s.data(), static_cast<int>(n));
    for (size_t i = 0; i < nb; ++i) {
      bool zero = true;
      for (size_t d = 0; d < D && zero; ++d) zero = qb[i * D + d] == 0.0f;
      if (!zero) out[b + i] = top_k(s.data() + i * n, m.ids.data(), static_cast<int64_t>(n), k);
    }
  }
  return out;
}

bool DenseIndex::exists(const std::string& path) {
  std::error_code ec;
  return std::filesystem::is_regular_file(path + ".vec", ec);
}

void DenseIndex::save(const std::string& path, const std::string& tag) const {
  const Impl& m = *impl_;
  if (tag.size() > kMaxTag) throw Error("dense index: tag of " + std::to_string(tag.size()) + " bytes exceeds " + std::to_string(kMaxTag));
  const std::string graph_path = path + ".hnsw", vec_path = path + ".vec";
  // 1. The graph (hnswlib writes it with an ofstream; we sync and rename it).
  const std::string graph_tmp = graph_path + ".tmp";
  try {
    m.graph->saveIndex(graph_tmp);
  } catch (const std::exception& e) {
    throw Error(graph_tmp + ": " + e.what());
  }
  uint64_t graph_size = 0, graph_hash = 0;
  if (!file_digest(graph_tmp, &graph_size, &graph_hash)) { errno = 0; io_fail(graph_tmp, "cannot read back the saved graph"); }
  fsync_path(graph_tmp, false);
  if (::rename(graph_tmp.c_str(), graph_path.c_str()) != 0) io_fail(graph_path, "cannot rename " + graph_tmp + " over it");
  // 2. The vectors, naming the graph file they belong with.
  const std::string vec_tmp = vec_path + ".tmp";
  {
    HashedWriter w(vec_tmp);
    w.write(kMagic, sizeof kMagic);
    w.pod(kVersion);
    w.pod(static_cast<uint32_t>(m.dim));
    w.pod(static_cast<uint64_t>(m.ids.size()));
    w.pod(static_cast<uint32_t>(tag.size()));
    w.write(tag.data(), tag.size());
    w.pod(graph_size);
    w.pod(graph_hash);
    w.write(m.ids.data(), m.ids.size() * sizeof(int64_t));
    w.write(m.data.data(), m.data.size() * sizeof(float));
    const uint64_t digest = w.digest();
    w.pod(digest);
    w.close_synced();
  }
  if (::rename(vec_tmp.c_str(), vec_path.c_str()) != 0) io_fail(vec_path, "cannot rename " + vec_tmp + " over it");
  fsync_parent(vec_path);
}

std::unique_ptr<DenseIndex> DenseIndex::load(const std::string& path, const std::string& expected_tag, const HnswOptions& options,
                                             ThreadPool* pool) {
  const std::string vec_path = path + ".vec", graph_path = path + ".hnsw";
  errno = 0;
  HashedReader in(vec_path);
  auto bad = [&](const std::string& what) -> Error { return Error(vec_path + ": " + what); };
  char magic[sizeof kMagic];
  if (in.size() < sizeof magic + 4) throw bad("truncated (" + std::to_string(in.size()) + " bytes)");
  in.read(magic, sizeof magic);
  if (std::memcmp(magic, kMagic, sizeof magic) != 0) throw bad("not an m3 dense index (bad magic)");
  const uint32_t version = in.pod<uint32_t>();
  if (version != kVersion) throw bad("format version " + std::to_string(version) + ", this build reads " + std::to_string(kVersion));
  const uint32_t dim = in.pod<uint32_t>();
  const uint64_t count = in.pod<uint64_t>();
  const uint32_t tag_len = in.pod<uint32_t>();
  if (dim == 0 || dim > (1u << 20)) throw bad("dimension " + std::to_string(dim) + " is out of range");
  if (tag_len > kMaxTag) throw bad("tag length " + std::to_string(tag_len) + " exceeds " + std::to_string(kMaxTag));
  // The size must match before anything is allocated from `count`.
  const uint64_t header = sizeof magic + 4 + 4 + 8 + 4 + uint64_t(tag_len) + 8 + 8;
  if (count > in.size() / (8 + 4 * uint64_t(dim)) || in.size() != header + count * (8 + 4 * uint64_t(dim)) + 8)
    throw bad("size " + std::to_string(in.size()) + " bytes does not match " + std::to_string(count) + " vectors of dim " +
              std::to_string(dim) + " (truncated?)");
  std::string tag(tag_len, '\0');
  in.read(tag.data(), tag_len);
  const uint64_t graph_size = in.pod<uint64_t>(), graph_hash = in.pod<uint64_t>();
  auto index = std::make_unique<DenseIndex>(static_cast<int>(dim), options);
  Impl& m = *index->impl_;
  m.ids.resize(count);
  m.data.resize(count * dim);
  in.read(m.ids.data(), count * sizeof(int64_t));
  in.read(m.data.data(), count * dim * sizeof(float));
  const uint64_t digest = in.digest();
  uint64_t stored = 0;
  in.read(&stored, sizeof stored, false);
  if (digest != stored) throw bad("checksum mismatch (the file is corrupt)");
  if (!expected_tag.empty() && tag != expected_tag)
    throw bad("vectors were made by embedder '" + tag + "', not by '" + expected_tag + "'");
  for (size_t r = 0; r < m.ids.size(); ++r)
    if (!m.row.emplace(m.ids[r], r).second) throw bad("id " + std::to_string(m.ids[r]) + " appears twice");

  // The graph, when it is the one saved with these vectors; otherwise rebuilt from them.
  uint64_t size_now = 0, hash_now = 0;
  bool loaded = false;
  if (file_digest(graph_path, &size_now, &hash_now) && size_now == graph_size && hash_now == graph_hash) {
    try {
      std::unique_ptr<Graph> graph = load_graph(m.space.get(), graph_path);
      loaded = graph->cur_element_count - graph->num_deleted_ == m.ids.size();
      for (size_t r = 0; loaded && r < m.ids.size(); ++r) {
        auto it = graph->label_lookup_.find(label_of(m.ids[r]));
        loaded = it != graph->label_lookup_.end() && !graph->isMarkedDeleted(it->second);
      }
      if (loaded) {
        m.options.M = static_cast<int>(graph->M_);
        m.options.ef_construction = static_cast<int>(graph->ef_construction_);
        graph->setEf(static_cast<size_t>(m.options.ef_search));
        m.graph = std::move(graph);
      }
    } catch (const std::exception&) {
      loaded = false;  // an unreadable graph is rebuilt, like a missing one
    }
  }
  if (!loaded) index->rebuild(pool);
  return index;
}

// ---- DenseRetriever ------------------------------------------------------------------------------

DenseRetriever::DenseRetriever(std::shared_ptr<const Embedder> embedder, DenseSearch mode, std::string index_path,
                               const HnswOptions& options, ThreadPool* pool)
    : embedder_(std::move(embedder)), mode_(mode), path_(std::move(index_path)), pool_(pool) {
  if (!embedder_) throw Error("dense retriever: no embedder");
  if (!path_.empty() && DenseIndex::exists(path_)) {
    index_ = DenseIndex::load(path_, embedder_->spec(), options, pool_);
    if (index_->dim() != embedder_->dim())
      throw Error(path_ + ".vec: dimension " + std::to_string(index_->dim()) + ", the embedder makes " + std::to_string(embedder_->dim()));
  } else {
    index_ = std::make_unique<DenseIndex>(embedder_->dim(), options);
  }
}

DenseRetriever::~DenseRetriever() = default;

std::string DenseRetriever::spec() const {
  if (mode_ == DenseSearch::Exact) return "dense:exact";
  return "dense:hnsw:ef=" + std::to_string(index_->options().ef_search);
}

std::vector<SearchHit> DenseRetriever::search(const std::string& query, int k) const {
  if (k <= 0) return {};
  const std::vector<float> q = embedder_->embed(query);
  return index_->search(q, k, mode_);  // an empty query embeds to zero: no hits
}

void DenseRetriever::add(int64_t id, const std::string& text) {
  const std::vector<float> v = embedder_->embed(text);
  index_->add(std::span<const int64_t>(&id, 1), v, pool_);
}

void DenseRetriever::remove(int64_t id) { index_->remove(id); }

void DenseRetriever::save() const {
  if (path_.empty()) throw Error("dense retriever: save() needs an index path (RetrieverOptions::index_path)");
  index_->save(path_, embedder_->spec());
}

}  // namespace m3
