// Buffers and file maps: the two owners of the bytes a TensorView points at.
#include "m3/tensor.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "m3/error.h"

namespace m3 {

std::string TensorView::shape_string() const {
  std::string s = "[";
  for (int i = 0; i < std::max(1, n_dims); ++i) {
    if (i) s += ", ";
    s += std::to_string(ne[i]);
  }
  return s + "]";
}

void Buffer::Free::operator()(uint8_t* p) const { std::free(p); }

Buffer::Buffer(size_t bytes) : size_(bytes) {
  // Large buffers (weights repacked at load, KV caches, activations of long prompts) are aligned to
  // 2 MiB and marked for transparent huge pages before they are touched: the kernels stream them,
  // and with 4 KiB pages TLB misses cost more than the reads (see MappedFile).
  constexpr size_t kHuge = size_t(2) << 20;
  const bool huge = bytes >= 2 * kHuge;
  const size_t align = huge ? kHuge : 64;
  const size_t rounded = bytes == 0 ? 64 : (bytes + align - 1) / align * align;
  void* p = std::aligned_alloc(align, rounded);
  if (!p) throw Error("out of memory allocating " + std::to_string(bytes) + " bytes");
  if (huge) ::madvise(p, rounded, MADV_HUGEPAGE);
  std::memset(p, 0, rounded);
  data_.reset(static_cast<uint8_t*>(p));
}

MappedFile::MappedFile(const std::string& path, FileLoad mode) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    throw Error(path + ": cannot stat: " + std::strerror(e));
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    throw Error(path + ": is a directory, expected a file");
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0 && mode == FileLoad::Read) {
    // Anonymous memory backed by transparent huge pages where the kernel allows: decode streams
    // every weight each token, and with 4 KiB file pages the TLB misses cost more than the reads
    // (f32 1.1B model: 3.9 → 14.3 tok/s on 2 cores, bench_decode).
    void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      const int e = errno;
      ::close(fd);
      throw Error(path + ": cannot allocate " + std::to_string(size_) + " bytes: " + std::strerror(e));
    }
    ::madvise(p, size_, MADV_HUGEPAGE);
    size_t off = 0;
    while (off < size_) {
      const ssize_t r = ::read(fd, static_cast<char*>(p) + off, size_ - off);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        const int e = r < 0 ? errno : EIO;
        ::munmap(p, size_);
        ::close(fd);
        throw Error(path + ": read failed at byte " + std::to_string(off) + ": " + std::strerror(e));
      }
      off += static_cast<size_t>(r);
    }
    data_ = static_cast<const uint8_t*>(p);
    ::close(fd);
    return;
  }
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int e = errno;
      ::close(fd);
      throw Error(path + ": cannot map: " + std::strerror(e));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

}  // namespace m3
