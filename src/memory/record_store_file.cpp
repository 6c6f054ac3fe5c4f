// The records.bin backend of a bank's payload (m3/record_store.h).
//
// Durability model: the file is only ever appended to (pwrite at the end) or truncated to a record
// boundary, so after a crash the only damage possible is a torn tail, which MemoryBank finds (it
// owns the checksums) and cuts with truncate().
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "m3/error.h"
#include "m3/record_store.h"

namespace m3 {

void RecordStore::read_many(const int64_t* ids, size_t n, uint8_t* out) const {
  for (size_t i = 0; i < n; ++i) read(ids[i], out + i * size_t(record_size_));
}

namespace {

std::string sys_error(const std::string& what, const std::string& path) {
  return what + " " + path + ": " + std::strerror(errno);
}

bool pread_all(int fd, void* data, size_t n, int64_t off) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    const ssize_t r = ::pread(fd, p, n, off);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    off += r;
    n -= size_t(r);
  }
  return true;
}

void pwrite_all(int fd, const void* data, size_t n, int64_t off, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, p, n, off);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw Error(sys_error("cannot write", path));
    }
    p += w;
    off += w;
    n -= size_t(w);
  }
}

class FileRecordStore : public RecordStore {
 public:
  FileRecordStore(const std::string& path, int64_t record_size, bool writable, bool create)
      : RecordStore(record_size), path_(path), writable_(writable) {
    int flags = (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC;
    if (create) flags |= O_CREAT | O_TRUNC;
    fd_ = ::open(path.c_str(), flags, 0644);
    if (fd_ < 0) throw Error(sys_error(create ? "cannot create" : "cannot open", path));
    if (create && ::fsync(fd_) != 0) throw Error(sys_error("cannot fsync", path));
    struct stat st {};
    if (::fstat(fd_, &st) != 0) throw Error(sys_error("cannot stat", path));
    count_ = record_size > 0 ? int64_t(st.st_size) / record_size : 0;
  }
  ~FileRecordStore() override {
    if (fd_ >= 0) ::close(fd_);
  }

  std::string describe() const override { return path_; }
  int64_t count() const override { return count_; }

  void read(int64_t id, uint8_t* out) const override {
    if (!pread_all(fd_, out, size_t(record_size_), id * record_size_))
      throw Error(sys_error("cannot read record " + std::to_string(id) + " of", path_));
  }

  void append(const uint8_t* record) override {
    if (!writable_) throw Error(path_ + " is open read-only");
    try {
      pwrite_all(fd_, record, size_t(record_size_), count_ * record_size_, path_);
    } catch (...) {
      // Leave no partial record behind (e.g. after ENOSPC), so the next append lands correctly.
      [[maybe_unused]] const int rc = ::ftruncate(fd_, count_ * record_size_);
      throw;
    }
    ++count_;
  }

  void flush() override {
    if (writable_ && ::fdatasync(fd_) != 0) throw Error(sys_error("cannot fsync", path_));
  }

  void truncate(int64_t n) override {
    if (!writable_) throw Error(path_ + " is open read-only");
    struct stat st {};
    if (::fstat(fd_, &st) != 0) throw Error(sys_error("cannot stat", path_));
    if (int64_t(st.st_size) != n * record_size_) {
      if (::ftruncate(fd_, n * record_size_) != 0) throw Error(sys_error("cannot truncate", path_));
      if (::fsync(fd_) != 0) throw Error(sys_error("cannot fsync", path_));
    }
    count_ = n;
  }

  int64_t stored_bytes() const override {
    struct stat st {};
    return ::fstat(fd_, &st) == 0 ? int64_t(st.st_size) : count_ * record_size_;
  }

 private:
  std::string path_;
  bool writable_;
  int fd_ = -1;
  int64_t count_ = 0;
};

}  // namespace

std::unique_ptr<RecordStore> open_file_record_store(const std::string& path, int64_t record_size, bool writable,
                                                    bool create) {
  return std::make_unique<FileRecordStore>(path, record_size, writable, create);
}

}  // namespace m3
