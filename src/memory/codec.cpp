// Vector codecs without training (bf16, f16, int8), the factory, and the error measure.
// The FAISS-backed "pq" codecs live in codec_pq.cpp.
#include "m3/codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "m3/dtype.h"
#include "m3/error.h"

namespace m3 {
namespace detail {
// codec_pq.cpp. `factory` empty = the paper's codec scaled to dim ("pq" alone).
std::unique_ptr<VectorCodec> make_pq_codec(const std::string& factory, int dim);
}  // namespace detail

namespace {

// A codec that has no parameters must not silently accept some.
void reject_params(const std::string& spec, const std::string& bytes) {
  if (!bytes.empty())
    throw Error("codec '" + spec + "' has no trained parameters, but load_params got " +
                std::to_string(bytes.size()) + " bytes");
}

// bf16 and f16: two bytes per element, little-endian (the byte order of every target CPU, and of
// the bank files, which are read back with memcpy).
template <uint16_t (*Enc)(float), float (*Dec)(uint16_t)>
class HalfCodec final : public VectorCodec {
 public:
  HalfCodec(std::string name, int dim) : name_(std::move(name)), dim_(dim) {}
  std::string spec() const override { return name_; }
  int dim() const override { return dim_; }
  size_t code_size() const override { return 2 * static_cast<size_t>(dim_); }
  void encode(const float* x, int64_t n, uint8_t* codes) const override {
    const int64_t total = n * dim_;
    for (int64_t i = 0; i < total; ++i) {
      const uint16_t h = Enc(x[i]);
      std::memcpy(codes + 2 * i, &h, 2);
    }
  }
  void decode(const uint8_t* codes, int64_t n, float* x) const override {
    const int64_t total = n * dim_;
    for (int64_t i = 0; i < total; ++i) {
      uint16_t h;
      std::memcpy(&h, codes + 2 * i, 2);
      x[i] = Dec(h);
    }
  }
  void load_params(const std::string& bytes) override { reject_params(name_, bytes); }

 private:
  std::string name_;
  int dim_;
};

// int8: [f32 scale][dim × int8], x ≈ scale·q with scale = absmax/127, so every element's error is
// at most scale/2 (round to nearest) and no element clips.
class Int8Codec final : public VectorCodec {
 public:
  explicit Int8Codec(int dim) : dim_(dim) {}
  std::string spec() const override { return "int8"; }
  int dim() const override { return dim_; }
  size_t code_size() const override { return 4 + static_cast<size_t>(dim_); }
  void encode(const float* x, int64_t n, uint8_t* codes) const override {
    const size_t cs = code_size();
    for (int64_t v = 0; v < n; ++v) {
      const float* xv = x + v * dim_;
      uint8_t* c = codes + v * cs;
      float amax = 0.0f;
      for (int i = 0; i < dim_; ++i) {
        // A NaN or inf would poison the shared scale of the whole vector; refuse it loudly.
        if (!std::isfinite(xv[i]))
          throw Error("codec 'int8': vector " + std::to_string(v) + " element " +
                      std::to_string(i) + " is not finite");
        amax = std::max(amax, std::fabs(xv[i]));
      }
      const float scale = amax / 127.0f;
      std::memcpy(c, &scale, 4);
      const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
      for (int i = 0; i < dim_; ++i) {
        // Clamp guards against x·(1/scale) landing a hair above 127 through rounding.
        const float q = std::clamp(std::nearbyint(xv[i] * inv), -127.0f, 127.0f);
        c[4 + i] = static_cast<uint8_t>(static_cast<int8_t>(q));
      }
    }
  }
  void decode(const uint8_t* codes, int64_t n, float* x) const override {
    const size_t cs = code_size();
    for (int64_t v = 0; v < n; ++v) {
      const uint8_t* c = codes + v * cs;
      float scale;
      std::memcpy(&scale, c, 4);
      for (int i = 0; i < dim_; ++i)
        x[v * dim_ + i] = scale * static_cast<float>(static_cast<int8_t>(c[4 + i]));
    }
  }
  void load_params(const std::string& bytes) override { reject_params("int8", bytes); }

 private:
  int dim_;
};

}  // namespace

std::unique_ptr<VectorCodec> make_codec(const std::string& spec, int dim) {
  if (dim <= 0)
    throw Error("codec '" + spec + "': dim must be positive, got " + std::to_string(dim));
  if (spec == "bf16") return std::make_unique<HalfCodec<fp32_to_bf16, bf16_to_fp32>>("bf16", dim);
  if (spec == "f16") return std::make_unique<HalfCodec<fp32_to_fp16, fp16_to_fp32>>("f16", dim);
  if (spec == "int8") return std::make_unique<Int8Codec>(dim);
  if (spec == "pq") return detail::make_pq_codec("", dim);
  if (spec.rfind("pq:", 0) == 0) {
    if (spec.size() == 3) throw Error("codec 'pq:': empty FAISS factory string after 'pq:'");
    return detail::make_pq_codec(spec.substr(3), dim);
  }
  throw Error("unknown codec '" + spec + "' (known: bf16, f16, int8, pq, pq:<faiss factory>)");
}

double codec_relative_error(const VectorCodec& codec, const float* x, int64_t n) {
  const int d = codec.dim();
  // Batches bound the scratch memory for large samples.
  const int64_t batch = 4096;
  std::vector<uint8_t> codes(static_cast<size_t>(std::min(n, batch)) * codec.code_size());
  std::vector<float> y(static_cast<size_t>(std::min(n, batch)) * d);
  double err = 0.0, norm = 0.0;
  for (int64_t b = 0; b < n; b += batch) {
    const int64_t m = std::min(batch, n - b);
    const float* xb = x + b * d;
    codec.encode(xb, m, codes.data());
    codec.decode(codes.data(), m, y.data());
    for (int64_t i = 0; i < m * d; ++i) {
      const double diff = static_cast<double>(xb[i]) - y[i];
      err += diff * diff;
      norm += static_cast<double>(xb[i]) * xb[i];
    }
  }
  if (norm == 0.0) return err == 0.0 ? 0.0 : INFINITY;
  return err / norm;
}

}  // namespace m3
