// Shared pieces of the libFuzzer targets (fuzz/*.cpp): a scratch directory that lives as long as
// the process, whole-file reads and writes, and the rule every target enforces.
//
// The rule: whatever the bytes, an m3 entry point either succeeds or throws m3::Error (the server's
// parser: ApiError). Anything else — another exception type, a crash, a leak, undefined behaviour,
// an allocation beyond -rss_limit_mb — is a finding. A target lets m3::Error pass silently and
// lets every other exception escape, so that libFuzzer reports it ("uncaught exception" abort)
// together with the input that caused it.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace m3::fuzz {

// A directory under $TMPDIR (default /tmp), created once per process and removed at exit.
inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/m3-fuzz-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) {
      std::perror("m3 fuzz: mkdtemp");
      std::abort();
    }
    static struct Remover {
      std::string path;
      ~Remover() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
      }
    } remover{tmpl};
    return tmpl;
  }();
  return dir;
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "m3 fuzz: cannot read %s\n", path.c_str());
    std::abort();
  }
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

inline void write_file(const std::string& path, const void* data, size_t size) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    std::perror(("m3 fuzz: open " + path).c_str());
    std::abort();
  }
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t w = ::write(fd, p, size);
    if (w <= 0) {
      std::perror(("m3 fuzz: write " + path).c_str());
      std::abort();
    }
    p += w;
    size -= static_cast<size_t>(w);
  }
  ::close(fd);
}
inline void write_file(const std::string& path, const std::string& bytes) { write_file(path, bytes.data(), bytes.size()); }

// A little-endian reader over the fuzz input that yields zeros once the bytes run out.
class Bytes {
 public:
  Bytes(const uint8_t* data, size_t size) : p_(data), n_(size) {}
  bool empty() const { return at_ >= n_; }
  size_t left() const { return at_ < n_ ? n_ - at_ : 0; }
  uint8_t u8() { return at_ < n_ ? p_[at_++] : 0; }
  uint16_t u16() { return static_cast<uint16_t>(u8() | (u8() << 8)); }
  uint32_t u32() { return static_cast<uint32_t>(u16()) | (static_cast<uint32_t>(u16()) << 16); }
  // The next n bytes (fewer when the input ends first).
  std::string take(size_t n) {
    n = std::min(n, left());
    std::string s(reinterpret_cast<const char*>(p_ + at_), n);
    at_ += n;
    return s;
  }
  std::string rest() { return take(left()); }

 private:
  const uint8_t* p_;
  size_t n_;
  size_t at_ = 0;
};

}  // namespace m3::fuzz
