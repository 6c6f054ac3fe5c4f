// m3/codec.h — how memory vectors are stored: one codec codes D-dimensional float vectors into
// fixed-size byte codes. Keys and values use separate codec instances (they have different
// statistics), each trained on its own sample.
//
// Described by a factory string, FAISS style, that is stored in a bank's manifest:
//   "bf16"   2·D bytes, the paper's raw form           "f16"  2·D bytes
//   "int8"   D bytes + a 4-byte f32 scale per vector (symmetric, absmax/127)
//   "pq:<faiss factory>"  a FAISS 1.7.3 index-factory string used as a standalone codec
//            (sa_encode / sa_decode), trained on sampled vectors. The paper's
//            "OPQ20x80-Residual2x14-PQ8x10" is "pq:OPQ20_80,Residual2x14,PQ8x10": 14 bytes at D=80.
//   "pq"     that form scaled to D (D even): OPQ<m>_D with m the largest divisor of D ≤ D/4,
//            Residual2x<c>, PQ<k>x<p> with k the divisor of D nearest D/10; c = min(14, b),
//            p = min(10, b), b = ⌊log2(n_train/39)⌋ (39 points per centroid), chosen by train();
//            train() needs n ≥ 9,984 (b ≥ 8); full 14/10 bits need n ≥ 638,976. Before training
//            spec() is "pq" and code_size() the full form's (14 at D=80); after train() or
//            load_params() spec() is the concrete "pq:..." string.
// Contract: encode/decode are thread-safe after train() / load_params() (which are not, and must
// not run concurrently with them); code_size() is fixed once trained. FAISS runs on the calling
// thread (callers parallelise over vectors). Non-finite inputs to int8 / pq throw m3::Error.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace m3 {

class VectorCodec {
 public:
  virtual ~VectorCodec() = default;
  virtual std::string spec() const = 0;          // the factory string that rebuilds this codec
  virtual int dim() const = 0;
  virtual size_t code_size() const = 0;          // bytes per vector
  virtual bool needs_training() const { return false; }
  virtual bool is_trained() const { return true; }
  // x: n vectors of dim() floats. Throws m3::Error when n is too small for the codec.
  virtual void train(const float* x, int64_t n) { (void)x; (void)n; }
  virtual void encode(const float* x, int64_t n, uint8_t* codes) const = 0;
  virtual void decode(const uint8_t* codes, int64_t n, float* x) const = 0;
  // Trained parameters as bytes (empty for codecs without training), and the reverse. A codec
  // rebuilt with make_codec(spec()) then load_params(save_params()) codes bit-identically.
  virtual std::string save_params() const { return {}; }
  virtual void load_params(const std::string& bytes) { (void)bytes; }
};

// Builds an untrained codec from its factory string for vectors of `dim` floats.
// Throws m3::Error naming the spec when it is unknown or does not fit dim.
std::unique_ptr<VectorCodec> make_codec(const std::string& spec, int dim);

// Relative reconstruction error Σ‖x − decode(encode(x))‖² / Σ‖x‖² over n vectors.
double codec_relative_error(const VectorCodec& codec, const float* x, int64_t n);

}  // namespace m3
