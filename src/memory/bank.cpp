// The memory bank: manifest, fixed-size checksummed records, SQLite catalog (see m3/bank.h).
//
// Durability model: records.bin is only ever appended to or truncated to a record boundary (its
// I/O is record_store_file.cpp); everything else is replaced whole (tmp + fsync + rename) or
// lives in SQLite. So after a crash the only damage possible in records.bin is a torn tail, which
// a writer cuts here: the bank owns the checksums, the store only moves bytes.
#include "m3/bank.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <unistd.h>
#include <xxhash.h>

#include <bit>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include <nlohmann/json.hpp>

#include "m3/error.h"
#include "m3/file_io.h"
#include "m3/model.h"
#include "m3/record_store.h"

namespace m3 {

static_assert(std::endian::native == std::endian::little, "records are written in native = little-endian order");

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr uint32_t kRecordMagic = 0x524D334D;  // bytes "M3MR" in file order
constexpr int kFormatVersion = 2;
constexpr uint8_t kUnusedPosition = 255;  // a record's position byte for an unused slot  // 2: positions as uint8 (1 held int16)
constexpr int64_t kHeaderBytes = 24;  // magic, flags, reference_id, n_tokens, 6 bytes padding
constexpr int64_t kChecksumBytes = 8;
constexpr const char* kManifest = "manifest.json";
constexpr const char* kRecords = "records.bin";
constexpr const char* kCatalog = "catalog.sqlite";
constexpr const char* kKeyParams = "key_codec.bin";
constexpr const char* kValueParams = "value_codec.bin";
constexpr const char* kLock = "LOCK";
constexpr const char* kPayload = "payload.json";  // a cache of a pushed bank: {"uri": where its records are}

std::string sys_error(const std::string& what, const std::string& path) {
  return what + " " + path + ": " + std::strerror(errno);
}

void write_all_fd(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw Error(sys_error("cannot write", path));
    }
    p += w;
    n -= size_t(w);
  }
}

std::string read_whole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int lock_dir(const std::string& dir) {
  const std::string path = dir + "/" + kLock;
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(sys_error("cannot open", path));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    ::close(fd);
    throw Error("bank " + dir + " is open for writing by another process (" + path + " is locked)");
  }
  return fd;
}

// ---- SQLite ---------------------------------------------------------------------------------

class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql, const std::string& where) : db_(db), where_(where) {
    if (sqlite3_prepare_v2(db, sql, -1, &s_, nullptr) != SQLITE_OK) fail();
  }
  ~Stmt() { sqlite3_finalize(s_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  Stmt& bind(int i, int64_t v) { return check(sqlite3_bind_int64(s_, i, v)); }
  Stmt& bind(int i, const std::string& v) {
    return check(sqlite3_bind_text(s_, i, v.data(), int(v.size()), SQLITE_TRANSIENT));
  }
  Stmt& bind_blob(int i, const void* p, size_t n) {
    return check(sqlite3_bind_blob(s_, i, p, int(n), SQLITE_TRANSIENT));
  }
  bool step() {
    const int rc = sqlite3_step(s_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    fail();
  }
  void run() {
    step();
    reset();
  }
  void reset() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }
  int64_t i64(int c) const { return sqlite3_column_int64(s_, c); }
  std::string text(int c) const {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s_, c));
    return p ? std::string(p, size_t(sqlite3_column_bytes(s_, c))) : std::string();
  }
  std::vector<int32_t> tokens(int c) const {
    const void* p = sqlite3_column_blob(s_, c);
    const size_t n = size_t(sqlite3_column_bytes(s_, c)) / 4;
    std::vector<int32_t> out(n);
    if (n) std::memcpy(out.data(), p, n * 4);
    return out;
  }

 private:
  Stmt& check(int rc) {
    if (rc != SQLITE_OK) fail();
    return *this;
  }
  [[noreturn]] void fail() { throw Error(where_ + ": " + sqlite3_errmsg(db_)); }

  sqlite3* db_;
  sqlite3_stmt* s_ = nullptr;
  std::string where_;
};

// documents.id is unique among live documents only, so that a deleted document can be added
// again (updated) before the next compaction.
constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS documents(
  doc_key INTEGER PRIMARY KEY, id TEXT NOT NULL, title TEXT, source TEXT,
  deleted INTEGER NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX IF NOT EXISTS documents_live_id ON documents(id) WHERE deleted = 0;
CREATE TABLE IF NOT EXISTS refs(
  id INTEGER PRIMARY KEY, doc_key INTEGER NOT NULL, text TEXT NOT NULL,
  char_begin INTEGER NOT NULL, char_end INTEGER NOT NULL, n_tokens INTEGER NOT NULL,
  tokens BLOB NOT NULL, deleted INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS refs_doc ON refs(doc_key);
CREATE VIRTUAL TABLE IF NOT EXISTS refs_fts USING fts5(text, content='refs', content_rowid='id');
CREATE TRIGGER IF NOT EXISTS refs_ai AFTER INSERT ON refs WHEN new.deleted = 0 BEGIN
  INSERT INTO refs_fts(rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER IF NOT EXISTS refs_ad AFTER DELETE ON refs WHEN old.deleted = 0 BEGIN
  INSERT INTO refs_fts(refs_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
CREATE TRIGGER IF NOT EXISTS refs_tombstone AFTER UPDATE OF deleted ON refs
  WHEN old.deleted = 0 AND new.deleted != 0 BEGIN
  INSERT INTO refs_fts(refs_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
)sql";

sqlite3* open_sqlite(const std::string& path, bool writable, bool create, const std::string& where) {
  sqlite3* db = nullptr;
  int flags = writable ? SQLITE_OPEN_READWRITE : SQLITE_OPEN_READONLY;
  if (create) flags |= SQLITE_OPEN_CREATE;
  flags |= SQLITE_OPEN_FULLMUTEX;
  if (sqlite3_open_v2(path.c_str(), &db, flags, nullptr) != SQLITE_OK) {
    const std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close_v2(db);
    throw Error(where + ": cannot open " + path + " (" + msg + ")");
  }
  sqlite3_busy_timeout(db, 10000);
  return db;
}

void exec(sqlite3* db, const char* sql, const std::string& where) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    const std::string msg = err ? err : sqlite3_errmsg(db);
    sqlite3_free(err);
    throw Error(where + ": " + msg);
  }
}

void init_schema(sqlite3* db, const std::string& where) {
  exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", where);
  exec(db, kSchema, where);
}

json codec_json(const VectorCodec& c, const char* params_file) {
  const bool has_params = c.needs_training() && c.is_trained();
  return {{"spec", c.spec()}, {"code_size", c.code_size()}, {"params", has_params ? params_file : ""}};
}

}  // namespace

struct MemoryBank::Catalog {
  sqlite3* db = nullptr;
  std::string where;
  mutable std::mutex mu;  // one connection, shared by threads; statements are per call
  ~Catalog() {
    if (db) sqlite3_close_v2(db);
  }
};

// "bank/" and "bank" must name the same thing: compact() builds "<dir>.compact" beside it.
static std::string clean_dir(const std::string& dir) {
  std::string d = dir;
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  return d;
}

bool MemoryBank::exists(const std::string& dir) { return fs::exists(clean_dir(dir) + "/" + kManifest); }

BankModel BankModel::of(const Model& model) { return {model.fingerprint(), model.config()}; }

int64_t MemoryBank::record_bytes(const MemoryShape& s, size_t key_code_size, size_t value_code_size) {
  return kHeaderBytes + s.slots() * int64_t(1 + key_code_size + value_code_size) + kChecksumBytes;
}

MemoryBank::~MemoryBank() { close_files(); }

void MemoryBank::close_files() {
  catalog_.reset();
  records_.reset();
  if (lock_fd_ >= 0) ::close(lock_fd_);
  lock_fd_ = -1;
}

void MemoryBank::write_manifest() const {
  const ModelConfig& c = model_.config;
  json m;
  m["format_version"] = kFormatVersion;
  m["model"] = {{"fingerprint", model_.fingerprint},
                {"name", c.name},
                {"architecture", c.architecture},
                {"n_layers", c.n_layers},
                {"dim", c.dim},
                {"n_heads", c.n_heads},
                {"n_kv_heads", c.n_kv_heads},
                {"head_dim", c.head_dim},
                {"vocab_size", c.vocab_size},
                {"reference_length", c.memory.reference_length}};
  m["memory_shape"] = {{"layers", shape_.layers}, {"kv_heads", shape_.kv_heads}, {"kept", shape_.kept},
                       {"head_dim", shape_.head_dim}};
  m["prefix_text"] = prefix_text_;
  m["key_codec"] = codec_json(*key_codec_, kKeyParams);
  m["value_codec"] = codec_json(*value_codec_, kValueParams);
  m["record_size"] = record_size_;
  m["created"] = created_;
  write_file_atomic(dir_ + "/" + kManifest, m.dump(2) + "\n");
}

std::unique_ptr<MemoryBank> MemoryBank::create(const std::string& dir, const Model& model, const std::string& key_codec,
                                               const std::string& value_codec) {
  return create(dir, BankModel::of(model), key_codec, value_codec);
}

std::unique_ptr<MemoryBank> MemoryBank::create(const std::string& dir_arg, const BankModel& model,
                                               const std::string& key_codec, const std::string& value_codec) {
  const std::string dir = clean_dir(dir_arg);
  if (exists(dir))
    throw Error("bank " + dir + " already exists (open it, or remove it to start over)");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error("bank " + dir + ": cannot create directory (" + ec.message() + ")");
  std::unique_ptr<MemoryBank> b(new MemoryBank());
  b->dir_ = dir;
  b->lock_fd_ = lock_dir(dir);
  // The manifest is written last, so a directory without one is an unfinished create(): clear
  // what it may have left.
  for (const char* f : {kRecords, kKeyParams, kValueParams, "catalog.sqlite-wal", "catalog.sqlite-shm", kCatalog})
    fs::remove(dir + "/" + f, ec);

  b->model_ = model;
  b->model_.config.validate();
  b->shape_ = MemoryShape::of(model.config);
  if (b->shape_.slots() <= 0) throw Error("bank " + dir + ": model " + model.config.name + " has no memory layers");
  if (model.config.memory.reference_length > 255)  // positions are stored as uint8, 255 = unused
    throw Error("bank " + dir + ": reference_length " + std::to_string(model.config.memory.reference_length) +
                " is above the record format's limit of 255");
  b->prefix_text_ = model.config.memory.prefix_text;
  b->created_ = utc_timestamp();
  b->key_codec_ = make_codec(key_codec, b->shape_.head_dim);
  b->value_codec_ = make_codec(value_codec, b->shape_.head_dim);
  b->record_size_ = record_bytes(b->shape_, b->key_codec_->code_size(), b->value_codec_->code_size());
  b->writable_ = true;

  b->catalog_ = std::make_unique<Catalog>();
  b->catalog_->where = "bank " + dir + ": catalog";
  b->catalog_->db = open_sqlite(dir + "/" + kCatalog, true, true, b->catalog_->where);
  init_schema(b->catalog_->db, b->catalog_->where);

  b->records_ = open_file_record_store(dir + "/" + kRecords, b->record_size_, true, true);
  b->write_manifest();
  return b;
}

std::unique_ptr<MemoryBank> MemoryBank::open(const std::string& dir, const Model* model, bool writable) {
  std::unique_ptr<MemoryBank> b(new MemoryBank());
  b->load(clean_dir(dir), writable);
  if (model && model->fingerprint() != b->model_.fingerprint)
    throw Error("bank " + b->dir_ + " was written by model " + b->model_.fingerprint + ", not " + model->fingerprint() +
                " (" + model->file().path() + "): rebuild it with m3 memorize");
  return b;
}

void MemoryBank::load(const std::string& dir, bool writable) {
  dir_ = dir;
  writable_ = writable;
  const std::string where = "bank " + dir;
  if (!fs::is_directory(dir)) throw Error(where + ": no such directory");
  const std::string manifest_path = dir + "/" + kManifest;
  if (!fs::exists(manifest_path))
    throw Error(where + ": no " + kManifest + " (not a bank, or its creation did not finish)");
  if (writable && lock_fd_ < 0) lock_fd_ = lock_dir(dir);

  json m;
  try {
    m = json::parse(read_whole(manifest_path));
  } catch (const json::exception& e) {
    throw Error(where + ": " + kManifest + " is truncated or not JSON (" + e.what() + ")");
  }
  try {
    if (!m.is_object() || !m.contains("format_version"))
      throw Error(where + ": " + kManifest + " has no format_version");
    const int version = m.at("format_version").get<int>();
    if (version != kFormatVersion)
      throw Error(where + ": " + kManifest + " has format_version " + std::to_string(version) +
                  ", this m3 reads version " + std::to_string(kFormatVersion));
    const json& mm = m.at("model");
    model_.fingerprint = mm.at("fingerprint").get<std::string>();
    ModelConfig& c = model_.config;
    c.name = mm.at("name").get<std::string>();
    c.architecture = mm.at("architecture").get<std::string>();
    c.n_layers = mm.at("n_layers").get<int>();
    c.dim = mm.at("dim").get<int>();
    c.n_heads = mm.at("n_heads").get<int>();
    c.n_kv_heads = mm.at("n_kv_heads").get<int>();
    c.head_dim = mm.at("head_dim").get<int>();
    c.vocab_size = mm.at("vocab_size").get<int>();
    c.memory.reference_length = mm.at("reference_length").get<int>();
    const json& s = m.at("memory_shape");
    shape_ = {s.at("layers").get<int>(), s.at("kv_heads").get<int>(), s.at("kept").get<int>(),
              s.at("head_dim").get<int>()};
    c.memory.memory_layers = shape_.layers;
    c.memory.tokens_per_head = shape_.kept;
    prefix_text_ = m.at("prefix_text").get<std::string>();
    c.memory.prefix_text = prefix_text_;
    created_ = m.value("created", "");
    for (auto [field, codec] : {std::pair{"key_codec", &key_codec_}, std::pair{"value_codec", &value_codec_}}) {
      const json& cj = m.at(field);
      *codec = make_codec(cj.at("spec").get<std::string>(), shape_.head_dim);
      const std::string params = cj.value("params", "");
      if (!params.empty()) {
        const std::string p = dir + "/" + params;
        if (!fs::exists(p)) throw Error(where + ": codec parameters " + p + " are missing");
        (*codec)->load_params(read_whole(p));
      }
    }
    record_size_ = m.at("record_size").get<int64_t>();
  } catch (const json::exception& e) {
    throw Error(where + ": " + kManifest + " is missing a field or has a wrong type (" + e.what() + ")");
  }
  if (shape_.slots() <= 0 || shape_.head_dim <= 0) throw Error(where + ": " + kManifest + " has an empty memory shape");
  const int64_t expect = record_bytes(shape_, key_codec_->code_size(), value_codec_->code_size());
  if (record_size_ != expect)
    throw Error(where + ": " + kManifest + " says record_size " + std::to_string(record_size_) + ", its codecs give " +
                std::to_string(expect));

  catalog_ = std::make_unique<Catalog>();
  catalog_->where = where + ": catalog";
  const std::string cat = dir + "/" + kCatalog;
  if (!fs::exists(cat)) throw Error(where + ": " + cat + " is missing");
  catalog_->db = open_sqlite(cat, writable, false, catalog_->where);
  if (writable) init_schema(catalog_->db, catalog_->where);

  const std::string payload = dir + "/" + kPayload;
  if (fs::exists(payload)) {
    // A cache of a bank pushed to a cluster (m3/bank_remote.h): the records stay there.
    std::string uri;
    try {
      uri = json::parse(read_whole(payload)).at("uri").get<std::string>();
    } catch (const json::exception& e) {
      throw Error(where + ": " + kPayload + " is truncated or has no uri (" + e.what() + ")");
    }
    if (writable)
      throw Error(where + " caches the bank " + uri + ", whose records live in the cluster: it opens read-only "
                  "(change the bank it was pushed from, then push it again)");
    records_ = open_remote_record_store(uri, record_size_);
    payload_ = uri;
    return;
  }
  const std::string rec = dir + "/" + kRecords;
  records_ = open_file_record_store(rec, record_size_, writable, false);
  payload_ = rec;
  if (writable) {
    // A crash can leave a partial last record (or, after a power loss, a last record whose pages
    // never reached the disk); drop such a tail so that appending resumes at a clean boundary.
    std::vector<uint8_t> buf(static_cast<size_t>(record_size_));
    int64_t n = records_->count();
    while (n > 0) {
      records_->read(n - 1, buf.data());
      if (record_ok(buf.data(), n - 1)) break;
      --n;
    }
    if (records_->stored_bytes() != n * record_size_) records_->truncate(n);
  }
}

// ---- catalog ----------------------------------------------------------------------------------

void MemoryBank::add_references(const std::vector<Document>& docs,
                                const std::vector<std::vector<ReferenceText>>& refs) {
  const std::string where = "bank " + dir_;
  if (!writable_) throw Error(where + " is open read-only");
  if (docs.size() != refs.size())
    throw Error(where + ": add_references got " + std::to_string(docs.size()) + " documents but " +
                std::to_string(refs.size()) + " reference lists");
  const int max_len = model_.config.memory.reference_length;
  for (size_t i = 0; i < docs.size(); ++i)
    for (const ReferenceText& r : refs[i]) {
      if (r.doc_id != docs[i].id)
        throw Error(where + ": a reference of document '" + docs[i].id + "' names document '" + r.doc_id + "'");
      if (r.tokens.empty() || int64_t(r.tokens.size()) > max_len)
        throw Error(where + ": a reference of document '" + docs[i].id + "' has " + std::to_string(r.tokens.size()) +
                    " tokens, must be 1.." + std::to_string(max_len));
    }

  std::lock_guard<std::mutex> lock(catalog_->mu);
  sqlite3* db = catalog_->db;
  const std::string& w = catalog_->where;
  exec(db, "BEGIN IMMEDIATE", w);
  try {
    int64_t next = 0;
    {
      Stmt q(db, "SELECT COALESCE(MAX(id) + 1, 0) FROM refs", w);
      q.step();
      next = q.i64(0);
    }
    Stmt exists(db, "SELECT 1 FROM documents WHERE id = ? AND deleted = 0", w);
    Stmt ins_doc(db, "INSERT INTO documents(id, title, source) VALUES (?, ?, ?)", w);
    Stmt ins_ref(db,
                 "INSERT INTO refs(id, doc_key, text, char_begin, char_end, n_tokens, tokens) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?)",
                 w);
    for (size_t i = 0; i < docs.size(); ++i) {
      exists.bind(1, docs[i].id);
      const bool dup = exists.step();
      exists.reset();
      if (dup) throw Error(where + ": document '" + docs[i].id + "' is already in the bank");
      ins_doc.bind(1, docs[i].id).bind(2, docs[i].title).bind(3, docs[i].source).run();
      const int64_t doc_key = sqlite3_last_insert_rowid(db);
      for (const ReferenceText& r : refs[i]) {
        ins_ref.bind(1, next++).bind(2, doc_key).bind(3, r.text).bind(4, r.char_begin).bind(5, r.char_end);
        ins_ref.bind(6, int64_t(r.tokens.size())).bind_blob(7, r.tokens.data(), r.tokens.size() * 4).run();
      }
    }
    exec(db, "COMMIT", w);
  } catch (...) {
    sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

int64_t MemoryBank::reference_count() const {
  std::lock_guard<std::mutex> lock(catalog_->mu);
  Stmt q(catalog_->db, "SELECT COALESCE(MAX(id) + 1, 0) FROM refs", catalog_->where);
  q.step();
  return q.i64(0);
}

int64_t MemoryBank::memory_count() const { return records_->count(); }

ReferenceInfo MemoryBank::reference(int64_t id) const {
  std::lock_guard<std::mutex> lock(catalog_->mu);
  Stmt q(catalog_->db,
         "SELECT r.text, r.char_begin, r.char_end, r.tokens, r.deleted, d.id, d.title, d.source "
         "FROM refs r JOIN documents d ON d.doc_key = r.doc_key WHERE r.id = ?",
         catalog_->where);
  q.bind(1, id);
  if (!q.step()) throw Error("bank " + dir_ + ": no reference " + std::to_string(id));
  ReferenceInfo r;
  r.id = id;
  r.text = q.text(0);
  r.char_begin = q.i64(1);
  r.char_end = q.i64(2);
  r.tokens = q.tokens(3);
  r.deleted = q.i64(4) != 0;
  r.doc_id = q.text(5);
  r.doc_title = q.text(6);
  r.doc_source = q.text(7);
  return r;
}

int64_t MemoryBank::delete_document(const std::string& doc_id) {
  const std::string where = "bank " + dir_;
  if (!writable_) throw Error(where + " is open read-only");
  std::lock_guard<std::mutex> lock(catalog_->mu);
  sqlite3* db = catalog_->db;
  const std::string& w = catalog_->where;
  exec(db, "BEGIN IMMEDIATE", w);
  try {
    Stmt q(db, "SELECT doc_key FROM documents WHERE id = ? AND deleted = 0", w);
    q.bind(1, doc_id);
    if (!q.step()) throw Error(where + ": no document '" + doc_id + "'");
    const int64_t key = q.i64(0);
    Stmt(db, "UPDATE documents SET deleted = 1 WHERE doc_key = ?", w).bind(1, key).run();
    Stmt(db, "UPDATE refs SET deleted = 1 WHERE doc_key = ? AND deleted = 0", w).bind(1, key).run();
    const int64_t n = sqlite3_changes(db);
    exec(db, "COMMIT", w);
    return n;
  } catch (...) {
    sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

// ---- records ----------------------------------------------------------------------------------

bool MemoryBank::needs_training() const {
  return (key_codec_->needs_training() && !key_codec_->is_trained()) ||
         (value_codec_->needs_training() && !value_codec_->is_trained());
}

void MemoryBank::train_codecs(const std::vector<ExplicitMemory>& sample) {
  const std::string where = "bank " + dir_;
  if (!writable_) throw Error(where + " is open read-only");
  if (memory_count() > 0) throw Error(where + ": codecs can only be trained before the first memory is written");
  const int64_t D = shape_.head_dim;
  std::vector<float> keys, values;
  for (const ExplicitMemory& m : sample) {
    if (int64_t(m.positions.size()) != shape_.slots() || int64_t(m.keys.size()) != shape_.floats() ||
        int64_t(m.values.size()) != shape_.floats())
      throw Error(where + ": a training memory does not have the bank's shape");
    for (int64_t s = 0; s < shape_.slots(); ++s) {
      if (m.positions[size_t(s)] < 0) continue;  // unused slots hold zeros, not data
      keys.insert(keys.end(), m.keys.begin() + s * D, m.keys.begin() + (s + 1) * D);
      values.insert(values.end(), m.values.begin() + s * D, m.values.begin() + (s + 1) * D);
    }
  }
  const int64_t n = int64_t(keys.size()) / D;
  for (auto [codec, data, file] : {std::tuple{key_codec_.get(), &keys, kKeyParams},
                                   std::tuple{value_codec_.get(), &values, kValueParams}}) {
    if (!codec->needs_training()) continue;
    codec->train(data->data(), n);
    // Parameters first, manifest second: a crash in between leaves an untrained bank whose
    // stray parameter file is ignored and rewritten by the next training.
    write_file_atomic(dir_ + "/" + file, codec->save_params());
  }
  record_size_ = record_bytes(shape_, key_codec_->code_size(), value_codec_->code_size());
  records_ = open_file_record_store(dir_ + "/" + kRecords, record_size_, true, false);  // trained codes: a new size
  write_manifest();
}

bool MemoryBank::record_ok(const uint8_t* rec, int64_t id) const {
  uint32_t magic;
  int64_t rid;
  uint64_t sum;
  std::memcpy(&magic, rec, 4);
  std::memcpy(&rid, rec + 8, 8);
  std::memcpy(&sum, rec + record_size_ - kChecksumBytes, 8);
  return magic == kRecordMagic && rid == id && sum == XXH3_64bits(rec, size_t(record_size_ - kChecksumBytes));
}

std::string MemoryBank::record_error(int64_t id) const {
  return "bank " + (is_remote() ? payload_ : dir_) + ": record " + std::to_string(id) + " is corrupted (checksum mismatch)";
}

void MemoryBank::check_id(int64_t id) const {
  const int64_t n = memory_count();
  if (id < 0 || id >= n)
    throw Error("bank " + dir_ + ": no memory " + std::to_string(id) + " (it holds " + std::to_string(n) + ")");
}

void MemoryBank::read_record(int64_t id, std::vector<uint8_t>& buf) const {
  check_id(id);
  buf.resize(size_t(record_size_));
  records_->read(id, buf.data());
  if (!record_ok(buf.data(), id)) throw Error(record_error(id));
}

void MemoryBank::read_raw(int64_t first, int64_t n, std::vector<uint8_t>& out) const {
  if (n <= 0) {
    out.clear();
    return;
  }
  check_id(first);
  check_id(first + n - 1);
  std::vector<int64_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[size_t(i)] = first + i;
  out.resize(size_t(n * record_size_));
  records_->read_many(ids.data(), ids.size(), out.data());
  for (int64_t i = 0; i < n; ++i)
    if (!record_ok(out.data() + i * record_size_, first + i)) throw Error(record_error(first + i));
}

void MemoryBank::append(const ExplicitMemory& m) {
  const std::string where = "bank " + dir_;
  if (!writable_) throw Error(where + " is open read-only");
  if (needs_training()) throw Error(where + ": the codecs must be trained before memories are written");
  if (m.reference_id != memory_count())
    throw Error(where + ": appending memory " + std::to_string(m.reference_id) + ", expected " +
                std::to_string(memory_count()) + " (memories are written in reference order)");
  const int64_t S = shape_.slots();
  if (int64_t(m.positions.size()) != S || int64_t(m.keys.size()) != shape_.floats() ||
      int64_t(m.values.size()) != shape_.floats())
    throw Error(where + ": memory " + std::to_string(m.reference_id) + " does not have the bank's shape");
  {
    std::lock_guard<std::mutex> lock(catalog_->mu);
    Stmt q(catalog_->db, "SELECT n_tokens FROM refs WHERE id = ?", catalog_->where);
    q.bind(1, m.reference_id);
    if (!q.step()) throw Error(where + ": memory " + std::to_string(m.reference_id) + " has no reference in the catalog");
    if (q.i64(0) != m.n_tokens)
      throw Error(where + ": memory " + std::to_string(m.reference_id) + " has " + std::to_string(m.n_tokens) +
                  " tokens, its reference " + std::to_string(q.i64(0)));
  }
  // Positions: per (layer, KV head), the kept tokens ascending, then -1 for unused slots.
  const int K = shape_.kept;
  const int used = m.kept_tokens(shape_);
  for (int64_t s0 = 0; s0 < S; s0 += K)
    for (int k = 0; k < K; ++k) {
      const int p = m.positions[size_t(s0 + k)];
      const bool good = k < used ? (p >= 0 && p < m.n_tokens && (k == 0 || p > m.positions[size_t(s0 + k - 1)]))
                                 : p == -1;
      if (!good)
        throw Error(where + ": memory " + std::to_string(m.reference_id) + " has a bad position " + std::to_string(p) +
                    " in slot " + std::to_string(s0 + k));
    }

  std::vector<uint8_t> rec(size_t(record_size_), 0);
  const uint32_t flags = 0;
  const uint16_t n_tokens = uint16_t(m.n_tokens);
  std::memcpy(rec.data(), &kRecordMagic, 4);
  std::memcpy(rec.data() + 4, &flags, 4);
  std::memcpy(rec.data() + 8, &m.reference_id, 8);
  std::memcpy(rec.data() + 16, &n_tokens, 2);
  uint8_t* p = rec.data() + kHeaderBytes;
  for (int64_t s = 0; s < S; ++s) p[s] = m.positions[size_t(s)] < 0 ? kUnusedPosition : uint8_t(m.positions[size_t(s)]);
  p += S;
  key_codec_->encode(m.keys.data(), S, p);
  p += S * int64_t(key_codec_->code_size());
  value_codec_->encode(m.values.data(), S, p);
  const uint64_t sum = XXH3_64bits(rec.data(), size_t(record_size_ - kChecksumBytes));
  std::memcpy(rec.data() + record_size_ - kChecksumBytes, &sum, 8);
  records_->append(rec.data());
}

void MemoryBank::flush() {
  if (records_ && writable_) records_->flush();
}

ExplicitMemory MemoryBank::read(int64_t id) const {
  std::vector<uint8_t> rec;
  read_record(id, rec);
  return decode_record(rec.data(), id);
}

std::vector<ExplicitMemory> MemoryBank::read_many(const std::vector<int64_t>& ids) const {
  for (const int64_t id : ids) check_id(id);
  std::vector<uint8_t> recs(ids.size() * size_t(record_size_));
  records_->read_many(ids.data(), ids.size(), recs.data());
  std::vector<ExplicitMemory> out;
  out.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const uint8_t* rec = recs.data() + i * size_t(record_size_);
    if (!record_ok(rec, ids[i])) throw Error(record_error(ids[i]));
    out.push_back(decode_record(rec, ids[i]));
  }
  return out;
}

ExplicitMemory MemoryBank::decode_record(const uint8_t* rec, int64_t id) const {
  const int64_t S = shape_.slots(), D = shape_.head_dim;
  ExplicitMemory m;
  m.reference_id = id;
  uint16_t n_tokens;
  std::memcpy(&n_tokens, rec + 16, 2);
  m.n_tokens = n_tokens;
  m.resize(shape_);
  const uint8_t* p = rec + kHeaderBytes;
  for (int64_t s = 0; s < S; ++s) m.positions[size_t(s)] = p[s] == kUnusedPosition ? int16_t(-1) : int16_t(p[s]);
  p += S;
  key_codec_->decode(p, S, m.keys.data());
  p += S * int64_t(key_codec_->code_size());
  value_codec_->decode(p, S, m.values.data());
  // A lossy codec need not decode zeros to zeros; unused slots are zero by contract.
  for (int64_t s = 0; s < S; ++s)
    if (m.positions[size_t(s)] < 0) {
      std::fill_n(m.keys.begin() + s * D, D, 0.0f);
      std::fill_n(m.values.begin() + s * D, D, 0.0f);
    }
  return m;
}

void MemoryBank::snapshot_catalog(const std::string& path) const {
  const std::string w = "bank " + dir_ + ": catalog snapshot " + path;
  std::error_code ec;
  fs::remove(path, ec);
  sqlite3* dst = open_sqlite(path, true, true, w);
  try {
    {
      // The online backup API copies a consistent snapshot page by page, what is still in the
      // WAL included, while other connections go on reading.
      std::lock_guard<std::mutex> lock(catalog_->mu);
      sqlite3_backup* b = sqlite3_backup_init(dst, "main", catalog_->db, "main");
      if (!b) throw Error(w + ": " + sqlite3_errmsg(dst));
      const int rc = sqlite3_backup_step(b, -1);
      sqlite3_backup_finish(b);
      if (rc != SQLITE_DONE) throw Error(w + ": " + sqlite3_errstr(rc));
    }
    // Rollback journaling: the copy is one self-contained file (no -wal/-shm beside it), which
    // several processes may open read-only and which can be replaced by a rename.
    exec(dst, "PRAGMA journal_mode=DELETE", w);
  } catch (...) {
    sqlite3_close_v2(dst);
    throw;
  }
  if (sqlite3_close_v2(dst) != SQLITE_OK) throw Error(w + ": cannot close");
}

// ---- maintenance ------------------------------------------------------------------------------

int64_t MemoryBank::compact() {
  const std::string where = "bank " + dir_;
  if (!writable_) throw Error(where + " is open read-only");  // so its records are in records.bin
  const std::string next_dir = dir_ + ".compact";
  std::error_code ec;
  fs::remove_all(next_dir, ec);  // the leftover of an interrupted compaction, if any
  fs::create_directories(next_dir, ec);
  if (ec) throw Error(where + ": cannot create " + next_dir + " (" + ec.message() + ")");
  const int next_lock = lock_dir(next_dir);
  int64_t removed = 0;
  try {
    for (const char* f : {kKeyParams, kValueParams})
      if (fs::exists(dir_ + "/" + f)) fs::copy_file(dir_ + "/" + f, next_dir + "/" + f);

    // Catalog: live documents keep their keys; live references are renumbered in order.
    std::vector<int64_t> kept_ids;  // old ids of live references, in order
    {
      const std::string w = "bank " + next_dir + ": catalog";
      sqlite3* ndb = open_sqlite(next_dir + "/" + kCatalog, true, true, w);
      try {
        init_schema(ndb, w);
        exec(ndb, "BEGIN", w);
        std::lock_guard<std::mutex> lock(catalog_->mu);
        Stmt docs(catalog_->db, "SELECT doc_key, id, title, source FROM documents WHERE deleted = 0 ORDER BY doc_key",
                  catalog_->where);
        Stmt ins_doc(ndb, "INSERT INTO documents(doc_key, id, title, source) VALUES (?, ?, ?, ?)", w);
        while (docs.step()) ins_doc.bind(1, docs.i64(0)).bind(2, docs.text(1)).bind(3, docs.text(2)).bind(4, docs.text(3)).run();
        Stmt refs(catalog_->db,
                  "SELECT id, doc_key, text, char_begin, char_end, n_tokens, tokens, deleted FROM refs ORDER BY id",
                  catalog_->where);
        Stmt ins_ref(ndb,
                     "INSERT INTO refs(id, doc_key, text, char_begin, char_end, n_tokens, tokens) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)",
                     w);
        while (refs.step()) {
          if (refs.i64(7) != 0) {
            ++removed;
            continue;
          }
          const std::vector<int32_t> toks = refs.tokens(6);
          ins_ref.bind(1, int64_t(kept_ids.size())).bind(2, refs.i64(1)).bind(3, refs.text(2)).bind(4, refs.i64(3));
          ins_ref.bind(5, refs.i64(4)).bind(6, refs.i64(5)).bind_blob(7, toks.data(), toks.size() * 4).run();
          kept_ids.push_back(refs.i64(0));
        }
        exec(ndb, "COMMIT", w);
        exec(ndb, "PRAGMA wal_checkpoint(TRUNCATE)", w);
      } catch (...) {
        sqlite3_close_v2(ndb);
        throw;
      }
      if (sqlite3_close_v2(ndb) != SQLITE_OK) throw Error(w + ": cannot close");
    }

    // Records: copy the codes of live memorized references, new id, new checksum. Memorized
    // references are a prefix of the ids, so the kept ones stay a prefix after renumbering.
    {
      const std::string rec_path = next_dir + "/" + kRecords;
      const int fd = ::open(rec_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd < 0) throw Error(sys_error("cannot create", rec_path));
      try {
        std::vector<uint8_t> rec;
        for (size_t i = 0; i < kept_ids.size() && kept_ids[i] < memory_count(); ++i) {
          read_record(kept_ids[i], rec);
          const int64_t new_id = int64_t(i);
          std::memcpy(rec.data() + 8, &new_id, 8);
          const uint64_t sum = XXH3_64bits(rec.data(), size_t(record_size_ - kChecksumBytes));
          std::memcpy(rec.data() + record_size_ - kChecksumBytes, &sum, 8);
          write_all_fd(fd, rec.data(), rec.size(), rec_path);
        }
        if (::fsync(fd) != 0) throw Error(sys_error("cannot fsync", rec_path));
      } catch (...) {
        ::close(fd);
        throw;
      }
      ::close(fd);
    }
    // Same manifest (codecs, shape, creation time) in the new directory.
    const std::string saved_dir = dir_;
    dir_ = next_dir;
    try {
      write_manifest();
    } catch (...) {
      dir_ = saved_dir;
      throw;
    }
    dir_ = saved_dir;
    fsync_path(next_dir, true);

    // SQLite finds its -wal/-shm files by path: close the old catalog before its path changes.
    catalog_.reset();
    if (::renameat2(AT_FDCWD, next_dir.c_str(), AT_FDCWD, dir_.c_str(), RENAME_EXCHANGE) != 0)
      throw Error(sys_error("cannot swap in the compacted bank " + next_dir + " for", dir_));
    fsync_path(fs::absolute(dir_).parent_path().string(), true);
  } catch (...) {
    ::close(next_lock);
    if (!catalog_) {
      // The swap did not happen; reopen the old catalog so the object stays usable.
      const int old_lock = lock_fd_;
      lock_fd_ = -1;
      close_files();
      lock_fd_ = old_lock;
      load(dir_, true);
    }
    throw;
  }
  // The new bank is in place; the old one sits at next_dir. Keep the new bank's lock.
  close_files();
  lock_fd_ = next_lock;
  fs::remove_all(next_dir, ec);
  load(dir_, true);
  return removed;
}

VerifyReport MemoryBank::verify() const {
  VerifyReport r;
  const int64_t memories = memory_count();
  const int64_t tail = records_->stored_bytes() % record_size_;
  if (tail != 0)
    r.problems.push_back(records_->describe() + " ends with a partial record of " + std::to_string(tail) +
                         " bytes (opening the bank for writing removes it)");
  // Records are encoded with trained codecs: records beside an untrained codec mean the manifest
  // lost its codec parameters, and no record can be decoded.
  if (memories > 0 && needs_training())
    r.problems.push_back("bank " + dir_ + ": " + std::to_string(memories) +
                         " records, but the manifest names no parameters for a codec that needs them: no record decodes");

  // Records are read in batches (one round trip per batch from a remote store, ids ascending); a
  // batch that cannot be read is read again one record at a time, so one unreadable record (a bad
  // sector) does not hide the others: it counts as corrupted. Three unreadable records in a row
  // mean the store itself is failing (a cluster out of reach): verify stops with its error rather
  // than wait out a retry budget for every record.
  constexpr int64_t kBatch = 256;
  std::vector<uint8_t> batch;
  std::vector<char> readable;
  int64_t batch_first = -1, batch_n = 0;
  std::string read_problem;
  auto record_at = [&](int64_t id) -> const uint8_t* {
    if (id < batch_first || id >= batch_first + batch_n) {
      batch_first = id;
      batch_n = std::min(kBatch, memories - id);
      std::vector<int64_t> ids(static_cast<size_t>(batch_n));
      for (int64_t i = 0; i < batch_n; ++i) ids[size_t(i)] = id + i;
      batch.resize(size_t(batch_n * record_size_));
      readable.assign(size_t(batch_n), 1);
      try {
        records_->read_many(ids.data(), ids.size(), batch.data());
      } catch (const Error&) {
        int in_a_row = 0;
        for (int64_t i = 0; i < batch_n; ++i) try {
            records_->read(id + i, batch.data() + i * record_size_);
            in_a_row = 0;
          } catch (const Error& e) {
            readable[size_t(i)] = 0;
            if (read_problem.empty()) read_problem = e.what();
            if (++in_a_row == 3)
              throw Error("bank " + dir_ + ": verify stopped at record " + std::to_string(id + i) +
                          ", its records cannot be read: " + e.what());
          }
      }
    }
    const int64_t k = id - batch_first;
    return readable[size_t(k)] ? batch.data() + k * record_size_ : nullptr;
  };

  std::lock_guard<std::mutex> lock(catalog_->mu);
  sqlite3* db = catalog_->db;
  const std::string& w = catalog_->where;
  {
    Stmt q(db, "PRAGMA quick_check", w);
    while (q.step())
      if (q.text(0) != "ok") r.problems.push_back("catalog: " + q.text(0));
  }
  {
    // Rank 0: check the index itself, not against refs (which still holds tombstoned rows the
    // index deliberately left out).
    // The check is an INSERT command, which a read-only connection refuses: readers borrow a
    // short-lived read-write one (it changes nothing); on a read-only file system it is skipped.
    sqlite3* check_db = db;
    if (!writable_ && sqlite3_open_v2(catalog_path().c_str(), &check_db, SQLITE_OPEN_READWRITE, nullptr) != SQLITE_OK) {
      sqlite3_close_v2(check_db);
      check_db = nullptr;
    }
    if (check_db) {
      sqlite3_busy_timeout(check_db, 10000);
      char* err = nullptr;
      if (sqlite3_exec(check_db, "INSERT INTO refs_fts(refs_fts, rank) VALUES('integrity-check', 0)", nullptr, nullptr,
                       &err) != SQLITE_OK)
        r.problems.push_back(std::string("catalog: refs_fts integrity check failed: ") +
                             (err ? err : sqlite3_errmsg(check_db)));
      sqlite3_free(err);
      if (check_db != db) sqlite3_close_v2(check_db);
    }
  }
  {
    Stmt q(db,
           "SELECT COUNT(*) FROM refs r LEFT JOIN documents d ON d.doc_key = r.doc_key "
           "WHERE d.doc_key IS NULL OR (d.deleted != 0 AND r.deleted = 0)",
           w);
    q.step();
    if (q.i64(0) != 0)
      r.problems.push_back("catalog: " + std::to_string(q.i64(0)) +
                           " live references belong to a missing or deleted document");
  }

  Stmt refs(db, "SELECT id, n_tokens FROM refs ORDER BY id", w);
  const int64_t S = shape_.slots();
  const int K = shape_.kept;
  int64_t expect_id = 0;
  bool more = refs.step();
  for (; more; more = refs.step(), ++expect_id) {
    const int64_t id = refs.i64(0);
    if (id != expect_id) {
      r.problems.push_back("catalog: reference ids jump from " + std::to_string(expect_id - 1) + " to " + std::to_string(id));
      break;
    }
    if (id >= memories) continue;
    ++r.records_checked;
    const uint8_t* rec = record_at(id);
    if (!rec || !record_ok(rec, id)) {
      r.corrupted.push_back(id);
      continue;
    }
    uint16_t n_tokens;
    std::memcpy(&n_tokens, rec + 16, 2);
    if (n_tokens != refs.i64(1))
      r.problems.push_back("record " + std::to_string(id) + " has " + std::to_string(n_tokens) +
                           " tokens, its reference " + std::to_string(refs.i64(1)));
    const int used = n_tokens < K ? n_tokens : K;
    for (int64_t s0 = 0; s0 < S; s0 += K)
      for (int k = 0; k < K; ++k) {
        auto position = [&](int64_t slot) {
          const uint8_t b = rec[size_t(kHeaderBytes + slot)];
          return b == kUnusedPosition ? -1 : int(b);
        };
        const int p = position(s0 + k), prev = k > 0 ? position(s0 + k - 1) : -1;
        const bool good = k < used ? (p >= 0 && p < n_tokens && (k == 0 || p > prev)) : p == -1;
        if (!good) {
          r.problems.push_back("record " + std::to_string(id) + " has a bad position in slot " + std::to_string(s0 + k));
          s0 = S;
          break;
        }
      }
  }
  for (int64_t id = expect_id; id < memories; ++id) {
    ++r.records_checked;
    const uint8_t* rec = record_at(id);
    if (!rec || !record_ok(rec, id)) r.corrupted.push_back(id);
  }
  if (expect_id < memories)
    r.problems.push_back("records " + std::to_string(expect_id) + ".." + std::to_string(memories - 1) +
                         " have no reference in the catalog");
  if (!read_problem.empty()) r.problems.push_back("cannot read every record: " + read_problem);
  return r;
}

BankInfo MemoryBank::info() const {
  BankInfo i;
  i.dir = dir_;
  i.model_fingerprint = model_.fingerprint;
  i.model_name = model_.config.name;
  i.model_architecture = model_.config.architecture;
  i.shape = shape_;
  i.prefix_text = prefix_text_;
  i.key_codec = key_codec_->spec();
  i.value_codec = value_codec_->spec();
  {
    std::lock_guard<std::mutex> lock(catalog_->mu);
    Stmt d(catalog_->db, "SELECT COUNT(*), COALESCE(SUM(deleted != 0), 0) FROM documents", catalog_->where);
    d.step();
    i.documents = d.i64(0);
    i.deleted_documents = d.i64(1);
    Stmt r(catalog_->db, "SELECT COUNT(*), COALESCE(SUM(deleted != 0), 0) FROM refs", catalog_->where);
    r.step();
    i.references = r.i64(0);
    i.deleted_references = r.i64(1);
  }
  i.memories = memory_count();
  i.payload = is_remote() ? payload_ : kRecords;
  i.record_bytes = record_size_;
  i.code_bytes = shape_.slots() * int64_t(key_codec_->code_size() + value_codec_->code_size());
  i.raw_bf16_bytes = memory_bytes_bf16(shape_);
  const ModelConfig& c = model_.config;
  i.full_kv_bytes = int64_t(c.n_layers) * 2 * c.n_heads * c.memory.reference_length * c.head_dim * 2;
  i.compression_vs_bf16 = double(i.raw_bf16_bytes) / double(record_size_);
  i.compression_vs_full_kv = double(i.full_kv_bytes) / double(record_size_);
  i.records_file_bytes = records_->stored_bytes();
  return i;
}

}  // namespace m3
