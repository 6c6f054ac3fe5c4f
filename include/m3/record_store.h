// m3/record_store.h — where a bank's records (its payload) live: the fixed-size records that
// MemoryBank encodes and decodes (m3/bank.h). The manifest, codec files and catalog always stay
// in the bank's directory; only the records move.
//
// Two backends:
//   records.bin    a local file (the default): append-only, cut to a record boundary on a torn
//                  tail; the crash-safety argument is in m3/bank.h.
//   Redis Cluster  "redis://host:port[,host:port...]/BANK" (m3/redis_cluster.h): one key per
//                  record, spread over the cluster's slots; key layout in m3/bank_remote.h.
//
// A store moves bytes; it never judges them. MemoryBank checks every record it reads (magic, id,
// checksum), whatever the backend, so a store returns what it holds even when that is corrupted.
//
// Thread safety: count(), read(), read_many(), stored_bytes() and describe() may be called
// concurrently. append(), flush() and truncate() REQUIRE external synchronization with every
// other call (MemoryBank's writers already hold it).
//
// Failure: m3::Error naming the store (describe()) and the record; a remote store names the node
// and how long it retried.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace m3 {

class RecordStore {
 public:
  explicit RecordStore(int64_t record_size) : record_size_(record_size) {}
  virtual ~RecordStore() = default;
  RecordStore(const RecordStore&) = delete;
  RecordStore& operator=(const RecordStore&) = delete;

  // "bank/records.bin" or "redis://host:port/BANK": where the records are, for messages.
  virtual std::string describe() const = 0;
  int64_t record_size() const { return record_size_; }

  // Complete records (ids 0 .. count()-1), as of opening or the last append/truncate.
  virtual int64_t count() const = 0;

  // Copies record `id` (0 <= id < count(), checked by the caller) into out[0 .. record_size).
  virtual void read(int64_t id, uint8_t* out) const = 0;

  // Records ids[0 .. n) into out[i·record_size ...]: a memory chunk's records in one go. The
  // default reads one by one; a remote store batches them into one round trip per node.
  virtual void read_many(const int64_t* ids, size_t n, uint8_t* out) const;

  // Appends `record` (record_size bytes) as record count(). A store may buffer appends; they
  // are durable, and counted by a freshly opened store, after flush().
  virtual void append(const uint8_t* record) = 0;
  virtual void flush() = 0;

  // Keeps records 0 .. n-1 and drops the rest (a torn tail after a crash, or a push that must
  // rewrite from n). Durable on return.
  virtual void truncate(int64_t n) = 0;

  // Bytes held for the payload: records.bin's size (a partial last record included), or
  // count()·record_size for a remote store.
  virtual int64_t stored_bytes() const = 0;

 protected:
  int64_t record_size_;
};

// The records.bin backend. writable: opened read-write (created when missing if `create`); a
// read-only store counts only complete records. The file's partial tail, if any, stays until a
// writer truncates it.
std::unique_ptr<RecordStore> open_file_record_store(const std::string& path, int64_t record_size, bool writable,
                                                    bool create);

// The Redis Cluster backend for "redis://host:port[,host:port...]/BANK[?options]" (options and
// key layout in m3/bank_remote.h), read-only: `m3 bank push` writes a cluster's records through
// a writable RedisRecordStore (m3/bank_remote.h). Throws when the cluster cannot be reached within the retry budget or
// holds no pushed bank of that name, or when its record size differs from `record_size`.
std::unique_ptr<RecordStore> open_remote_record_store(const std::string& uri, int64_t record_size);

}  // namespace m3
