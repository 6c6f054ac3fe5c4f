// m3/tensor.h — a typed view over bytes that someone else owns (an mmap'd file, a Buffer).
//
// Dimensions follow ggml/GGUF order: ne[0] is the innermost (contiguous) dimension. A weight
// matrix W of a linear layer y = x·Wᵀ has ne = {K (in), N (out)}: N rows of K elements.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "m3/dtype.h"

namespace m3 {

struct TensorView {
  std::string name;
  DType type = DType::F32;
  int n_dims = 0;
  std::array<int64_t, 4> ne{1, 1, 1, 1};
  const void* data = nullptr;
  // Optional second copy of a Q8_0/Q4_0 matrix in the kernels' 8-row interleaved layout
  // (m3/kernels.h: pack_weights), owned by whoever set it (Model::prepare_kernels); null otherwise. The
  // matmul kernels read it instead of `data` when it is set; everything else reads `data`.
  const void* packed = nullptr;

  int64_t elements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
  int64_t cols() const { return ne[0]; }
  int64_t rows() const { return ne[1] * ne[2] * ne[3]; }
  size_t row_bytes() const { return dtype_row_bytes(type, ne[0]); }
  size_t nbytes() const { return row_bytes() * static_cast<size_t>(rows()); }
  const void* row(int64_t r) const {
    return static_cast<const uint8_t*>(data) + static_cast<size_t>(r) * row_bytes();
  }
  std::string shape_string() const;  // "[64, 128]"
};

// 64-byte aligned, owned, zero-initialised bytes.
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t bytes);
  Buffer(Buffer&&) noexcept = default;
  Buffer& operator=(Buffer&&) noexcept = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  uint8_t* data() { return data_.get(); }
  const uint8_t* data() const { return data_.get(); }
  size_t size() const { return size_; }
  template <class T> T* as() { return reinterpret_cast<T*>(data_.get()); }
  template <class T> const T* as() const { return reinterpret_cast<const T*>(data_.get()); }

 private:
  struct Free { void operator()(uint8_t* p) const; };
  std::unique_ptr<uint8_t, Free> data_;
  size_t size_ = 0;
};

// How a file's bytes reach memory: Map = mmap the file (instant, shares the page cache);
// Read = copy into anonymous memory with transparent huge pages (slower to open, but far fewer
// TLB misses when every byte is streamed per token, as decode does).
enum class FileLoad { Map, Read };

// The read-only bytes of a whole file. Throws m3::Error naming the path on failure.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path, FileLoad mode = FileLoad::Map);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace m3
