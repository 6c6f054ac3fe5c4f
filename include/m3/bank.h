// m3/bank.h — a memory bank: the explicit memories of a knowledge base, on disk
// (decisions.md "Files"). A bank is a directory:
//
//   manifest.json     format_version (2), the writing model (fingerprint, name, architecture,
//                     shape), the memory shape (Lm, G, K, D), prefix text, key and value codec
//                     specs, record_size, created time. Replaced atomically (tmp, fsync, rename).
//   key_codec.bin     trained codec parameters (only for codecs that need training), replaced
//   value_codec.bin   atomically; the manifest says whether they are present.
//   records.bin       fixed-size records, appended in order: record i is reference i.
//   catalog.sqlite    SQLite (WAL): documents, references (refs) and the FTS5 index refs_fts.
//   LOCK              flock()ed by the one writer.
//
// Storage split: the records are the payload, the bulk of a bank, and sit behind a RecordStore
// (m3/record_store.h): records.bin here by default, or a Redis Cluster for a bank pushed there
// (`m3 bank push`, m3/bank_remote.h, docs/redis-cluster.md). The small files (manifest, codec
// parameters, catalog, a dense index) always live in a directory; a pushed bank is served from a
// cache directory that holds copies of them and
//   payload.json      {"uri": "redis://host:port[,...]/NAME"}: the records are in that cluster.
// Such a bank opens read-only (it is changed where it was pushed from, then pushed again). The
// bank, not the store, checks every record it reads (magic, id, checksum), whatever the backend.
//
// Record layout (little-endian), S = Lm·G·K slots:
//   u32 magic 'M3MR' | u32 flags (0) | i64 reference_id | u16 n_tokens | 6 bytes zero
//   positions [S] uint8 (255: unused slot) | key codes [S × key code_size] | value codes [S × value code_size]
//   u64 XXH3-64 of every byte of the record before it.
//
// Catalog schema (the BM25 retriever queries refs_fts with MATCH and bm25()):
//   documents(doc_key INTEGER PRIMARY KEY, id TEXT UNIQUE, title, source, deleted INTEGER)
//   refs(id INTEGER PRIMARY KEY  -- = record index, doc_key, text, char_begin, char_end,
//        n_tokens, tokens BLOB -- int32 LE, deleted INTEGER)
//   refs_fts: FTS5(text, content='refs', content_rowid='id'), kept in sync by triggers; it
//        indexes live references only (deleting a document removes its references from it).
//
// Crash safety (records.bin): the catalog is complete (one transaction) before memorizing
// starts, and records are the truth for "memorized": opening for write truncates a torn tail (a
// partial or unverifiable last record), so a process killed at any point resumes at
// memory_count() and, given the same inputs, ends with the same records.bin bytes as an
// uninterrupted build. A push to a cluster resumes the same way from its progress key.
//
// Thread safety: read(), read_many(), reference(), and the const accessors may be called
// concurrently from many threads. Everything that writes (add_references, train_codecs, append, flush,
// delete_document, compact) REQUIRES external synchronization with all other calls. One process
// at a time may hold a bank open for writing (enforced by LOCK); readers in other processes keep
// seeing the files they opened, even across compact().
//
// Failure: every function throws m3::Error with a message that names the bank directory (or,
// for a record of a pushed bank, its URI; a cluster that stays unreachable past the retry budget
// gives an error naming the node, the key and how long it tried).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "m3/codec.h"
#include "m3/config.h"
#include "m3/knowledge.h"
#include "m3/memory.h"

namespace m3 {

class Model;
class RecordStore;

struct ReferenceInfo {
  int64_t id = -1;
  std::string doc_id, doc_title, doc_source;
  std::string text;
  int64_t char_begin = 0, char_end = 0;  // byte offsets in the document's text
  std::vector<int32_t> tokens;           // without BOS
  bool deleted = false;
};

struct BankInfo {
  std::string dir;
  std::string model_fingerprint, model_name, model_architecture;
  MemoryShape shape;
  std::string prefix_text;
  std::string key_codec, value_codec;       // factory specs
  int64_t documents = 0, deleted_documents = 0;
  int64_t references = 0, deleted_references = 0;
  int64_t memories = 0;                     // complete records in the payload
  std::string payload;                      // where the records are: "records.bin" (in dir) or redis://.../BANK
  int64_t record_bytes = 0;                 // bytes per memory on disk, header and checksum included
  int64_t code_bytes = 0;                   // key and value codes per memory (the paper's storage measure)
  int64_t raw_bf16_bytes = 0;               // Lm·G·K·D·2 (K and V)·2 bytes (spec §2.1)
  int64_t full_kv_bytes = 0;                // L·2·H·reference_length·D·2 bytes (spec §2.5)
  double compression_vs_bf16 = 0;          // raw_bf16_bytes / record_bytes
  double compression_vs_full_kv = 0;       // full_kv_bytes / record_bytes
  int64_t records_file_bytes = 0;           // bytes the payload holds (records.bin's size)
};

struct VerifyReport {
  int64_t records_checked = 0;
  std::vector<int64_t> corrupted;     // record ids whose magic, id or checksum is wrong
  std::vector<std::string> problems;  // one line each, for the record and catalog problems
  bool ok() const { return corrupted.empty() && problems.empty(); }
};

// The writing model as a bank records it. Taken from a Model, or given directly (tests, tools
// that describe a bank without loading weights).
struct BankModel {
  std::string fingerprint;
  ModelConfig config;
  static BankModel of(const Model& model);
};

class MemoryBank {
 public:
  // Creates a new, empty bank in `dir` (created if missing; it must not hold a manifest yet) and
  // opens it for writing. Codec specs as for make_codec(), with D = the model's head dim.
  static std::unique_ptr<MemoryBank> create(const std::string& dir, const Model& model,
                                            const std::string& key_codec, const std::string& value_codec);
  static std::unique_ptr<MemoryBank> create(const std::string& dir, const BankModel& model,
                                            const std::string& key_codec, const std::string& value_codec);

  // Whether `dir` holds a finished bank (its manifest). A directory without one is an unfinished
  // create(), which create() may simply redo.
  static bool exists(const std::string& dir);

  // Opens an existing bank. With a model, refuses a bank whose fingerprint differs ("... was
  // written by model <fp1>, not <fp2> (<path>): rebuild it with m3 memorize"); null skips the
  // check. writable: takes LOCK and truncates a torn tail of records.bin. A cache directory of a
  // pushed bank (payload.json) reads its records from the cluster and refuses writable.
  // (open_bank_for_reading in m3/bank_remote.h also takes a redis:// URI.)
  static std::unique_ptr<MemoryBank> open(const std::string& dir, const Model* model, bool writable);

  ~MemoryBank();
  MemoryBank(const MemoryBank&) = delete;
  MemoryBank& operator=(const MemoryBank&) = delete;

  const std::string& dir() const { return dir_; }
  std::string catalog_path() const { return dir_ + "/catalog.sqlite"; }
  const MemoryShape& shape() const { return shape_; }
  const BankModel& model() const { return model_; }
  const VectorCodec& key_codec() const { return *key_codec_; }
  const VectorCodec& value_codec() const { return *value_codec_; }
  int64_t record_size() const { return record_size_; }
  bool writable() const { return writable_; }

  // Adds documents and their references (refs[i] belongs to docs[i]) to the catalog in one
  // transaction; references get ids reference_count(), reference_count()+1, ... in order.
  // Throws (and adds nothing) when a document id is already in the bank, refs[i] names another
  // document, or a reference has 0 or more than reference_length tokens.
  void add_references(const std::vector<Document>& docs, const std::vector<std::vector<ReferenceText>>& refs);
  int64_t reference_count() const;  // all references, deleted ones included (= next id)
  int64_t memory_count() const;     // complete records

  // True when a codec needs training and has not been trained yet; append() refuses until then.
  bool needs_training() const;
  // Trains the codecs that need it on the keys and values of the used slots of `sample`, writes
  // their parameters and the manifest. Only before the first record.
  void train_codecs(const std::vector<ExplicitMemory>& sample);

  // Appends memory.reference_id's record. REQUIRES reference_id == memory_count(), a catalog
  // reference with that id and the same n_tokens, and the bank's shape.
  void append(const ExplicitMemory& memory);
  void flush();  // fdatasync records.bin

  // Decodes record `id` (0 <= id < memory_count()). Throws "bank <dir>: record <id> is corrupted
  // (checksum mismatch)" when its bytes do not verify; never returns such a record. For a bank
  // whose records are in a cluster <dir> is the cluster's URI.
  ExplicitMemory read(int64_t id) const;
  // read() of every id, in order: the records are fetched together (one round trip per node for
  // a cluster), each verified as read() does.
  std::vector<ExplicitMemory> read_many(const std::vector<int64_t>& ids) const;
  // The raw, verified bytes of records first .. first+n-1 (n·record_size(), as stored): what
  // `m3 bank push` copies. Throws as read() does.
  void read_raw(int64_t first, int64_t n, std::vector<uint8_t>& out) const;
  ReferenceInfo reference(int64_t id) const;

  // Tombstones a document and its references (removed from refs_fts at once; records stay until
  // compact()). Returns how many references it marked. Throws when no document has this id.
  int64_t delete_document(const std::string& doc_id);

  // Rewrites the bank without deleted documents and references, renumbering the survivors
  // 0, 1, ... in their old order (reference ids change: rebuild dense indexes afterwards). Builds
  // "<dir>.compact" beside the bank and swaps it in with one atomic renameat2(RENAME_EXCHANGE),
  // so a crash leaves either the old or the new bank. Record codes are copied, never re-coded.
  // Returns the number of references removed.
  int64_t compact();

  // Checks every record (magic, id, checksum, positions) and the catalog (ids dense from 0,
  // a reference for every record with the same n_tokens, SQLite and FTS5 integrity; the FTS5
  // check needs write access to the catalog file and is skipped without it). Reads everything:
  // O(bank size).
  VerifyReport verify() const;
  BankInfo info() const;

  // Where the records are: "<dir>/records.bin", or the cluster URI of a cached pushed bank.
  const std::string& payload() const { return payload_; }
  bool is_remote() const { return payload_.rfind("redis://", 0) == 0; }

  // Writes a consistent copy of the catalog to `path` (replaced): one self-contained SQLite
  // file in rollback-journal mode, what `m3 bank push` stores beside the records.
  void snapshot_catalog(const std::string& path) const;

  // Bytes of one record for a shape and the codecs' code sizes.
  static int64_t record_bytes(const MemoryShape& shape, size_t key_code_size, size_t value_code_size);

 private:
  struct Catalog;
  MemoryBank() = default;
  void load(const std::string& dir, bool writable);  // manifest, codecs, catalog, records
  void close_files();
  void write_manifest() const;
  std::string record_error(int64_t id) const;
  bool record_ok(const uint8_t* rec, int64_t id) const;
  void check_id(int64_t id) const;  // throws unless 0 <= id < memory_count()
  void read_record(int64_t id, std::vector<uint8_t>& buf) const;
  ExplicitMemory decode_record(const uint8_t* rec, int64_t id) const;  // rec already verified

  std::string dir_;
  BankModel model_;
  MemoryShape shape_;
  std::string prefix_text_;
  std::string created_;
  std::unique_ptr<VectorCodec> key_codec_, value_codec_;
  int64_t record_size_ = 0;
  bool writable_ = false;
  std::unique_ptr<RecordStore> records_;  // the payload: records.bin or a cluster
  std::string payload_;
  int lock_fd_ = -1;
  std::unique_ptr<Catalog> catalog_;
};

}  // namespace m3
