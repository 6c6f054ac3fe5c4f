// "pq" codecs: a FAISS index used only as a standalone vector codec (train, sa_encode, sa_decode).
//
// The paper's "OPQ20x80-Residual2x14-PQ8x10" is, in FAISS 1.7.3 factory syntax,
// "OPQ20_80,Residual2x14,PQ8x10": an OPQ rotation (20 blocks, 80 output dims), then Index2Layer
// whose first level is a 2x14-bit multi-index quantizer (28 bits, stored in 4 bytes) and whose
// second level is PQ8x10 on the residual (80 bits, 10 bytes): 14 bytes per vector, as the paper
// says. ("RQ2x14" would be FAISS's newer residual quantizer; "Residual" here is the historical
// Index2Layer, which is what gives the paper's 14 bytes.)
//
// "pq" alone scales that to the head dimension D (see paper_factory and auto_bits below):
//   OPQ m_opq _D   m_opq = the largest divisor of D that is ≤ D/4   (paper: 4 dims per block)
//   Residual2x c   the two halves of the vector (D even), c bits each
//   PQ m_pq x p    m_pq = the divisor of D nearest D/10, ties up     (paper: 10 dims per code)
// with c = min(14, b), p = min(10, b), b = ⌊log2(n_train / 39)⌋: FAISS's k-means wants at least
// 39 points per centroid, and a smaller sample would fit centroids to noise (and print FAISS
// warnings). The smallest sample is 39·256 = 9,984 vectors (b = 8), because OPQ trains 256-centroid
// sub-quantizers whatever the rest is. The paper's full 14/10 bits need n ≥ 39·2^14 = 638,976.
//
// Departures from FAISS's defaults, applied to every spec so that a spec always rebuilds the same
// codec: polysemous training is off (it only reorders PQ centroids for Hamming-distance search,
// which a codec never does, and costs minutes), and FAISS runs on the calling thread only (its
// OpenMP loops spin-wait; on a shared 2-core machine a 0.5 s PQ training took 7-10 s with two
// threads, and m3 keeps one thread pool per process — callers parallelise over vectors instead).
// For the same reason OpenBLAS, which FAISS calls for its distance matrices, is set to one thread
// (m3's matmul does the same on first use): that cut OPQ training at D=80 from 43 s to 32 s on 2
// cores, and makes training deterministic (threaded sgemm sums in a varying order).
#include <omp.h>

#include <faiss/Index.h>
#include <faiss/Index2Layer.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/IndexPQ.h>
#include <faiss/IndexPreTransform.h>
#include <faiss/impl/FaissException.h>
#include <faiss/impl/io.h>
#include <faiss/index_factory.h>
#include <faiss/index_io.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>

#include "m3/codec.h"
#include "m3/error.h"
#include "m3/thread_pool.h"

namespace m3 {
namespace detail {
std::unique_ptr<VectorCodec> make_pq_codec(const std::string& factory, int dim);
}  // namespace detail

namespace {

constexpr int64_t kPointsPerCentroid = 39;  // FAISS Clustering::min_points_per_centroid
constexpr int kMinBits = 8;                  // OPQ's sub-quantizers have 2^8 centroids
constexpr int kPaperCoarseBits = 14;
constexpr int kPaperPqBits = 10;
constexpr const char* kParamsMagic = "m3pq1\n";

// Largest b with 39·2^b ≤ n (b capped at 30, more than any codec here uses).
int auto_bits(int64_t n) {
  int b = 0;
  while (b < 30 && kPointsPerCentroid * (int64_t{1} << (b + 1)) <= n) ++b;
  return b;
}

std::string paper_factory(int d, int coarse_bits, int pq_bits) {
  int m_opq = 1;
  for (int m = 1; m <= d / 4; ++m)
    if (d % m == 0) m_opq = m;
  int m_pq = 1;
  for (int m = 1; m <= d; ++m)  // nearest to d/10; on a tie the later (larger) one wins
    if (d % m == 0 && std::fabs(m - d / 10.0) <= std::fabs(m_pq - d / 10.0)) m_pq = m;
  return "OPQ" + std::to_string(m_opq) + "_" + std::to_string(d) + ",Residual2x" +
         std::to_string(coarse_bits) + ",PQ" + std::to_string(m_pq) + "x" + std::to_string(pq_bits);
}

// Runs FAISS on the calling thread only, and restores the caller's OpenMP setting afterwards.
// omp_set_num_threads changes the calling thread's ICV only, so concurrent callers do not interfere.
class SerialOmp {
 public:
  SerialOmp() : prev_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~SerialOmp() { omp_set_num_threads(prev_); }
  SerialOmp(const SerialOmp&) = delete;
  SerialOmp& operator=(const SerialOmp&) = delete;

 private:
  int prev_;
};

void check_finite(const std::string& spec, const float* x, int64_t n, int d, const char* what) {
  for (int64_t i = 0; i < n * d; ++i)
    if (!std::isfinite(x[i]))
      throw Error("codec '" + spec + "': " + what + " vector " + std::to_string(i / d) +
                  " element " + std::to_string(i % d) + " is not finite");
}

// Applies the m3 departures from FAISS defaults (see the file comment) to a freshly built index.
void tune(faiss::Index* index) {
  if (auto* pt = dynamic_cast<faiss::IndexPreTransform*>(index)) index = pt->index;
  if (auto* pq = dynamic_cast<faiss::IndexPQ*>(index)) pq->do_polysemous_training = false;
  if (auto* ivfpq = dynamic_cast<faiss::IndexIVFPQ*>(index)) ivfpq->do_polysemous_training = false;
}

std::unique_ptr<faiss::Index> build_index(const std::string& spec, const std::string& factory,
                                          int dim) {
  std::unique_ptr<faiss::Index> index;
  try {
    index.reset(faiss::index_factory(dim, factory.c_str()));
    tune(index.get());
    (void)index->sa_code_size();  // throws for indexes without standalone codes (HNSW, ...)
  } catch (const faiss::FaissException& e) {
    throw Error("codec '" + spec + "': FAISS cannot build '" + factory + "' as a codec for dim " +
                std::to_string(dim) + ": " + e.what());
  }
  return index;
}

class PqCodec final : public VectorCodec {
 public:
  // auto_bits: "pq" alone; factory_ then starts as the paper's full-size form for dim and is
  // narrowed by train() to what the sample supports.
  PqCodec(std::string factory, int dim, bool auto_bits)
      : factory_(std::move(factory)), dim_(dim), auto_(auto_bits) {
    static std::once_flag blas_once;
    std::call_once(blas_once, [] { set_blas_threads(1); });
    index_ = build_index(spec(), factory_, dim_);
    // Some factory strings need no training ("pq:SQfp16", "pq:Flat"); they code at once.
    trained_ = !auto_ && index_->is_trained;
    needs_training_ = !trained_;
  }

  std::string spec() const override { return auto_ && !trained_ ? "pq" : "pq:" + factory_; }
  int dim() const override { return dim_; }
  size_t code_size() const override { return index_->sa_code_size(); }
  bool needs_training() const override { return needs_training_; }
  bool is_trained() const override { return trained_; }

  void train(const float* x, int64_t n) override {
    check_finite(spec(), x, n, dim_, "training");
    std::string factory = factory_;
    if (auto_) {
      const int b = auto_bits(n);
      if (b < kMinBits)
        throw Error("codec 'pq' (dim " + std::to_string(dim_) + ") needs at least " +
                    std::to_string(kPointsPerCentroid << kMinBits) +
                    " training vectors (39 per centroid of OPQ's 256-centroid sub-quantizers), got " +
                    std::to_string(n));
      factory = paper_factory(dim_, std::min(b, kPaperCoarseBits), std::min(b, kPaperPqBits));
    } else if (n < 1) {
      throw Error("codec '" + spec() + "': no training vectors");
    }
    // Train a fresh index, and keep the old one until that succeeded.
    auto index = build_index(spec(), factory, dim_);
    try {
      SerialOmp serial;
      index->train(n, x);
    } catch (const faiss::FaissException& e) {
      throw Error("codec '" + spec() + "': training '" + factory + "' on " + std::to_string(n) +
                  " vectors failed: " + e.what());
    }
    index_ = std::move(index);
    factory_ = factory;
    trained_ = true;
  }

  void encode(const float* x, int64_t n, uint8_t* codes) const override {
    require_trained("encode");
    check_finite(spec(), x, n, dim_, "input");
    try {
      SerialOmp serial;
      index_->sa_encode(n, x, codes);
    } catch (const faiss::FaissException& e) {
      throw Error("codec '" + spec() + "': encode failed: " + e.what());
    }
  }

  void decode(const uint8_t* codes, int64_t n, float* x) const override {
    require_trained("decode");
    check_list_numbers(codes, n);
    try {
      SerialOmp serial;
      index_->sa_decode(n, codes, x);
    } catch (const faiss::FaissException& e) {
      throw Error("codec '" + spec() + "': decode failed: " + e.what());
    }
  }

  // Layout: "m3pq1\n" <factory> "\n" <faiss::write_index bytes>. The factory string travels with
  // the index so that an auto "pq" codec learns which narrowing its trainer chose.
  std::string save_params() const override {
    require_trained("save_params");
    faiss::VectorIOWriter w;
    faiss::write_index(index_.get(), &w);
    std::string out = kParamsMagic + factory_ + "\n";
    out.append(reinterpret_cast<const char*>(w.data.data()), w.data.size());
    return out;
  }

  void load_params(const std::string& bytes) override {
    const std::string magic = kParamsMagic;
    const size_t eol = bytes.find('\n', magic.size());
    if (bytes.compare(0, magic.size(), magic) != 0 || eol == std::string::npos)
      throw Error("codec '" + spec() + "': parameters are not m3 pq parameters (" +
                  std::to_string(bytes.size()) + " bytes)");
    const std::string factory = bytes.substr(magic.size(), eol - magic.size());
    if (auto_ ? !is_auto_factory(factory) : factory != factory_)
      throw Error("codec '" + spec() + "': parameters were trained for 'pq:" + factory + "'");
    faiss::VectorIOReader r;
    r.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(eol + 1), bytes.end());
    std::unique_ptr<faiss::Index> index;
    try {
      index.reset(faiss::read_index(&r));
    } catch (const faiss::FaissException& e) {
      throw Error("codec '" + spec() + "': cannot read the trained FAISS index: " + e.what());
    }
    own_coarse_quantizer(index.get());
    if (index->d != dim_ || !index->is_trained)
      throw Error("codec '" + spec() + "': parameters hold a " +
                  (index->is_trained ? "trained" : "untrained") + " index of dim " +
                  std::to_string(index->d) + ", expected a trained one of dim " +
                  std::to_string(dim_));
    index_ = std::move(index);
    factory_ = factory;
    trained_ = true;
  }

 private:
  // FAISS 1.7.3's read_index leaves an Index2Layer's coarse quantizer unowned (q1.own_fields
  // false), so every load would leak it (~16 KiB); the index read here is its only user.
  static void own_coarse_quantizer(faiss::Index* index) {
    if (auto* pre = dynamic_cast<faiss::IndexPreTransform*>(index)) index = pre->index;
    if (auto* l2 = dynamic_cast<faiss::Index2Layer*>(index)) l2->q1.own_fields = true;
  }

  void require_trained(const char* what) const {
    if (!trained_)
      throw Error("codec '" + spec() + "': " + what +
                  " before training (call train() or load_params() first)");
  }

  // Codes of Index2Layer / IVF start with a little-endian coarse list number. FAISS checks it
  // inside an OpenMP loop, where its exception would terminate the process, so a corrupt code is
  // caught here first.
  void check_list_numbers(const uint8_t* codes, int64_t n) const {
    const faiss::Index* index = index_.get();
    if (auto* pt = dynamic_cast<const faiss::IndexPreTransform*>(index)) index = pt->index;
    const faiss::Level1Quantizer* q1 = nullptr;
    if (auto* l2 = dynamic_cast<const faiss::Index2Layer*>(index)) q1 = &l2->q1;
    if (auto* ivf = dynamic_cast<const faiss::IndexIVF*>(index)) q1 = ivf;
    if (q1 == nullptr) return;
    const size_t bytes = q1->coarse_code_size(), cs = index_->sa_code_size();
    for (int64_t i = 0; i < n; ++i) {
      uint64_t list_no = 0;
      for (size_t b = 0; b < bytes; ++b) list_no |= uint64_t{codes[i * cs + b]} << (8 * b);
      if (list_no >= q1->nlist)
        throw Error("codec '" + spec() + "': corrupt code " + std::to_string(i) + ": coarse list " +
                    std::to_string(list_no) + " ≥ " + std::to_string(q1->nlist));
    }
  }

  bool is_auto_factory(const std::string& factory) const {
    for (int c = kMinBits; c <= kPaperCoarseBits; ++c)
      for (int p = kMinBits; p <= kPaperPqBits; ++p)
        if (factory == paper_factory(dim_, c, p)) return true;
    return false;
  }

  std::string factory_;
  int dim_;
  bool auto_;
  bool trained_ = false;
  bool needs_training_ = true;
  std::unique_ptr<faiss::Index> index_;
};

}  // namespace

std::unique_ptr<VectorCodec> detail::make_pq_codec(const std::string& factory, int dim) {
  if (!factory.empty()) return std::make_unique<PqCodec>(factory, dim, false);
  if (dim % 2 != 0)
    throw Error("codec 'pq': the paper's form splits vectors into two halves, so dim must be "
                "even, got " + std::to_string(dim));
  return std::make_unique<PqCodec>(paper_factory(dim, kPaperCoarseBits, kPaperPqBits), dim, true);
}

}  // namespace m3
