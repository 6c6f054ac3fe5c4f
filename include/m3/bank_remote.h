// m3/bank_remote.h — a memory bank whose records live in a Redis Cluster (docs/redis-cluster.md).
//
// A bank is pushed from its directory (`m3 bank push BANK_DIR redis://...`) and served from any
// machine that reaches the cluster: the small files (manifest, codec parameters, catalog, dense
// index) are fetched into a local cache directory and used there; the records, the bulk of a
// bank, are read from the cluster, one round trip per node for a chunk's memories. Several
// servers share one copy of the knowledge base.
//
// URI: redis://host:port[,host:port...]/BANK[?connect_timeout_ms=N&command_timeout_ms=N&retry_ms=N]
//   the hosts are seeds (any reachable one gives the slot map); BANK is [A-Za-z0-9._-]+; the
//   options are RedisClusterOptions (retry_ms = retry_budget_ms).
//
// Keys (no hash tags: records spread over every slot, so over every master):
//   m3:BANK:r:<id>                 record <id>, the exact bytes of records.bin's record
//   m3:BANK:meta                   hash: format (1), record_size, model_fingerprint, created (the
//                                  bank's creation time: its identity), and, once a push has
//                                  finished, records (the committed count), files (JSON: name →
//                                  {bytes, xxh3, parts}), pushed (UTC), source
//   m3:BANK:progress               records copied so far (the resumable push's progress)
//   m3:BANK:f:<name>:<xxh3>:<part> the files, in parts of at most 8 MiB; the checksum in the key
//                                  keeps a reader from mixing two versions of a file
//
// Consistency: readers take the count and the file list from meta, which a push writes last, so
// a reader sees the previous push or the new one, never a half one — with one exception: pushing
// a *compacted* bank over its old self rewrites records below the old count (verification finds
// them changed), so stop the servers of that bank first, or push it under a new name. One push at
// a time per bank name (nothing enforces it).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "m3/bank.h"
#include "m3/record_store.h"
#include "m3/redis_cluster.h"

namespace m3 {

class Model;

// Whether `location` names a bank in a cluster ("redis://...") rather than a directory.
bool is_remote_bank(const std::string& location);

struct RemoteBankUri {
  std::string uri;  // as given
  std::vector<RedisEndpoint> seeds;
  std::string bank;
  RedisClusterOptions options;
  // Throws m3::Error naming the part of the URI that is wrong.
  static RemoteBankUri parse(const std::string& uri);
};

// The key layout above.
struct RemoteBankKeys {
  std::string bank;
  std::string record(int64_t id) const { return "m3:" + bank + ":r:" + std::to_string(id); }
  std::string meta() const { return "m3:" + bank + ":meta"; }
  std::string progress() const { return "m3:" + bank + ":progress"; }
  std::string file_part(const std::string& name, const std::string& xxh3, int part) const {
    return "m3:" + bank + ":f:" + name + ":" + xxh3 + ":" + std::to_string(part);
  }
};

// The Redis backend of a bank's records (m3/record_store.h). A reader counts the records of the
// last finished push (meta.records); a writer (push) starts at the progress key, buffers appends
// and sends them pipelined on flush(), then advances the progress key: a record below it is in
// the cluster. A value that is missing or has the wrong length is returned zero-padded or cut, so
// that the bank reports "record N is corrupted" for it as for any bad bytes.
class RedisRecordStore : public RecordStore {
 public:
  RedisRecordStore(std::shared_ptr<RedisCluster> cluster, const RemoteBankUri& uri, int64_t record_size, bool writable);
  std::string describe() const override { return uri_; }
  int64_t count() const override { return count_; }
  void read(int64_t id, uint8_t* out) const override;
  void read_many(const int64_t* ids, size_t n, uint8_t* out) const override;
  void append(const uint8_t* record) override;
  void flush() override;
  void truncate(int64_t n) override;
  int64_t stored_bytes() const override { return count_ * record_size_; }

 private:
  std::shared_ptr<RedisCluster> cluster_;
  RemoteBankKeys keys_;
  std::string uri_;
  bool writable_;
  int64_t count_ = 0;
  int64_t flushed_ = 0;              // records below this are in the cluster
  std::vector<uint8_t> buffered_;    // appended records not sent yet
};

struct PushProgress {
  const char* phase = "";  // "copy", "verify", "files"
  int64_t done = 0, total = 0;
};

struct PushOptions {
  int batch_records = 256;           // records per pipelined batch (at most 32 MiB of them), the progress step
  bool verify = true;                // read every record and file back and compare
  int replication_timeout_ms = 5000; // how long to wait for the replicas to catch up at the end
  double throttle_ms = 0;            // tests: sleep this long after each batch
  std::function<void(const PushProgress&)> on_progress;
};

struct PushReport {
  int64_t records = 0;          // records in the bank
  int64_t resumed_at = 0;       // the progress key when the push began
  int64_t copied = 0;           // records sent by this push
  int64_t verified = 0;         // records read back and found byte-identical
  int64_t rewritten = 0;        // records the cluster held with other bytes (sent again)
  int files_sent = 0, files_unchanged = 0;
  int64_t file_bytes_sent = 0;
  int masters = 0;
  bool replicated = false;      // every replica acknowledged everything before the timeout
  double seconds = 0;
};

// Copies the bank in `dir` (a local bank, opened read-only) to `uri`: records in pipelined
// batches (resumable from the progress key), verified, then the files, then meta (the commit).
// Refuses a name that holds another bank (another model or creation time).
PushReport push_bank(const std::string& dir, const std::string& uri, const PushOptions& options = {});

struct FetchReport {
  std::string dir;              // the cache directory, a bank MemoryBank::open reads
  int files_fetched = 0, files_fresh = 0;
  int64_t bytes_fetched = 0;
  int64_t records = 0;
};

// Brings `cache_dir` up to date with the pushed bank at `uri`: every file whose checksum differs
// is fetched (checked against its checksum, written atomically), files the push no longer has
// are removed, and payload.json records the URI (so MemoryBank::open reads the records from the
// cluster). cache_dir empty: default_bank_cache_dir(uri). Refuses a directory that holds a local
// bank. Throws when the cluster holds no finished push of that name.
FetchReport fetch_remote_bank(const std::string& uri, const std::string& cache_dir = "");

// $M3_BANK_CACHE, else $XDG_CACHE_HOME/m3/banks, else ~/.cache/m3/banks; then "/<BANK>-<hash of
// the seeds and name>".
std::string default_bank_cache_dir(const std::string& uri);

// Opens a bank read-only from a directory or a redis:// URI (fetching into cache_dir first).
std::unique_ptr<MemoryBank> open_bank_for_reading(const std::string& location, const Model* model,
                                                  const std::string& cache_dir = "");

}  // namespace m3
