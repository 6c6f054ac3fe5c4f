// A bank's records in a Redis Cluster: the record store, push and fetch (m3/bank_remote.h).
#include "m3/bank_remote.h"

#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <map>
#include <thread>

#include <nlohmann/json.hpp>

#include "m3/error.h"
#include "m3/file_io.h"
#include "m3/model.h"

namespace m3 {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr int kMetaFormat = 1;
constexpr size_t kPartBytes = size_t(8) << 20;  // well below Redis's 512 MiB value limit, and quick to move
// The files a push stores beside the records, in this order; the catalog is a snapshot.
const std::vector<std::string> kBankFiles = {"manifest.json", "key_codec.bin", "value_codec.bin", "catalog.sqlite",
                                              "dense.vec", "dense.hnsw"};

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string xxh3_hex(const std::string& bytes) { return hex64(XXH3_64bits(bytes.data(), bytes.size())); }

int64_t to_i64(const std::string& s, const std::string& what) {
  int64_t v = 0;
  const auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (r.ec != std::errc() || r.ptr != s.data() + s.size()) throw Error(what + " is '" + s + "', not a number");
  return v;
}

// A hash as field → value (HGETALL); empty when the key does not exist.
std::map<std::string, std::string> hgetall(RedisCluster& c, const std::string& key, const std::string& where) {
  const RedisValue v = c.run(RedisCommand{{"HGETALL", key}});
  if (v.is_error()) throw Error(where + ": HGETALL " + key + " failed: " + v.str);
  std::map<std::string, std::string> out;
  for (size_t i = 0; i + 1 < v.elements.size(); i += 2) out[v.elements[i].str] = v.elements[i + 1].str;
  return out;
}

void expect_ok(const RedisValue& v, const std::string& what) {
  if (v.is_error()) throw Error(what + " failed: " + v.str);
}

std::shared_ptr<RedisCluster> connect(const RemoteBankUri& u) {
  try {
    return std::make_shared<RedisCluster>(u.seeds, u.options);
  } catch (const Error& e) {
    throw Error("bank " + u.uri + ": cannot reach the cluster: " + e.what());
  }
}

// Blocks until every replica has acknowledged everything its master holds (INFO replication:
// each slaveN's offset against master_repl_offset), or the timeout. Returns whether it did.
bool wait_replicated(RedisCluster& c, int timeout_ms) {
  const auto t0 = Clock::now();
  for (;;) {
    bool all = true;
    for (const auto& [ep, info] : c.run_on_masters({"INFO", "replication"})) {
      if (info.is_error()) return false;
      int64_t master_offset = -1;
      std::vector<int64_t> replica_offsets;
      size_t pos = 0;
      const std::string& s = info.str;
      while (pos < s.size()) {
        const size_t end = std::min(s.find("\r\n", pos), s.size());
        const std::string line = s.substr(pos, end - pos);
        pos = end + 2;
        if (line.rfind("master_repl_offset:", 0) == 0) master_offset = std::atoll(line.c_str() + 19);
        if (line.rfind("slave", 0) == 0 && line.find(":ip=") != std::string::npos) {
          const size_t o = line.find("offset=");
          replica_offsets.push_back(o == std::string::npos ? -1 : std::atoll(line.c_str() + o + 7));
        }
      }
      for (const int64_t r : replica_offsets) all = all && r >= master_offset;
    }
    if (all) return true;
    if (std::chrono::duration<double, std::milli>(Clock::now() - t0).count() > timeout_ms) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace

bool is_remote_bank(const std::string& location) { return location.rfind("redis://", 0) == 0; }

RemoteBankUri RemoteBankUri::parse(const std::string& uri) {
  RemoteBankUri u;
  u.uri = uri;
  const std::string scheme = "redis://";
  if (!is_remote_bank(uri)) throw Error("'" + uri + "' is not a redis:// URI");
  const std::string rest = uri.substr(scheme.size());
  const size_t slash = rest.find('/');
  if (slash == std::string::npos)
    throw Error("bank " + uri + ": no bank name (redis://host:port[,host:port...]/BANK)");
  try {
    u.seeds = parse_redis_endpoints(rest.substr(0, slash));
  } catch (const Error& e) {
    throw Error("bank " + uri + ": " + e.what());
  }
  std::string path = rest.substr(slash + 1);
  std::string query;
  if (const size_t q = path.find('?'); q != std::string::npos) {
    query = path.substr(q + 1);
    path = path.substr(0, q);
  }
  if (path.empty() || !std::all_of(path.begin(), path.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
      }))
    throw Error("bank " + uri + ": the bank name '" + path + "' must be 1 or more of A-Z a-z 0-9 . _ -");
  u.bank = path;
  size_t pos = 0;
  while (!query.empty() && pos <= query.size()) {
    const size_t amp = std::min(query.find('&', pos), query.size());
    const std::string kv = query.substr(pos, amp - pos);
    pos = amp + 1;
    const size_t eq = kv.find('=');
    const std::string key = kv.substr(0, eq);
    int value = 0;
    const std::string v = eq == std::string::npos ? "" : kv.substr(eq + 1);
    const auto r = std::from_chars(v.data(), v.data() + v.size(), value);
    if (v.empty() || r.ec != std::errc() || r.ptr != v.data() + v.size() || value <= 0)
      throw Error("bank " + uri + ": option '" + kv + "' needs a number of milliseconds > 0");
    if (key == "connect_timeout_ms") u.options.connect_timeout_ms = value;
    else if (key == "command_timeout_ms") u.options.command_timeout_ms = value;
    else if (key == "retry_ms") u.options.retry_budget_ms = value;
    else throw Error("bank " + uri + ": unknown option '" + key + "' (connect_timeout_ms, command_timeout_ms, retry_ms)");
  }
  return u;
}

// ---- the record store ----------------------------------------------------------------------------

RedisRecordStore::RedisRecordStore(std::shared_ptr<RedisCluster> cluster, const RemoteBankUri& uri, int64_t record_size,
                                   bool writable)
    : RecordStore(record_size), cluster_(std::move(cluster)), keys_{uri.bank}, uri_(uri.uri), writable_(writable) {
  const std::string where = "bank " + uri_;
  if (writable) {
    const RedisValue p = cluster_->run(RedisCommand{{"GET", keys_.progress()}});
    if (p.is_error()) throw Error(where + ": GET " + keys_.progress() + " failed: " + p.str);
    count_ = p.is_nil() ? 0 : to_i64(p.str, where + ": " + keys_.progress());
  } else {
    const auto meta = hgetall(*cluster_, keys_.meta(), where);
    if (meta.empty()) throw Error(where + ": the cluster holds no bank of that name (push one with m3 bank push)");
    if (!meta.count("records")) throw Error(where + ": its first push has not finished (run m3 bank push again)");
    const int64_t rs = to_i64(meta.at("record_size"), where + ": record_size");
    if (rs != record_size)
      throw Error(where + ": its records have " + std::to_string(rs) + " bytes, the manifest says " +
                  std::to_string(record_size) + " (the cached files are from another push: fetch them again)");
    count_ = to_i64(meta.at("records"), where + ": records");
  }
  flushed_ = count_;
}

void RedisRecordStore::read(int64_t id, uint8_t* out) const { read_many(&id, 1, out); }

void RedisRecordStore::read_many(const int64_t* ids, size_t n, uint8_t* out) const {
  std::vector<std::string> keys(n);
  for (size_t i = 0; i < n; ++i) keys[i] = keys_.record(ids[i]);
  std::vector<RedisValue> values;
  try {
    values = cluster_->get_many(keys);
  } catch (const Error& e) {
    throw Error("bank " + uri_ + ": cannot read record" + (n == 1 ? " " + std::to_string(ids[0]) : "s") + ": " + e.what());
  }
  const size_t rs = size_t(record_size_);
  for (size_t i = 0; i < n; ++i) {
    uint8_t* dst = out + i * rs;
    const std::string& v = values[i].str;  // Nil: empty
    const size_t k = std::min(v.size(), rs);
    std::memcpy(dst, v.data(), k);
    std::memset(dst + k, 0, rs - k);
  }
}

void RedisRecordStore::append(const uint8_t* record) {
  if (!writable_) throw Error("bank " + uri_ + " is open read-only");
  buffered_.insert(buffered_.end(), record, record + record_size_);
  ++count_;
}

void RedisRecordStore::flush() {
  if (!writable_ || buffered_.empty()) return;
  const int64_t n = int64_t(buffered_.size()) / record_size_;
  std::vector<std::string> keys(static_cast<size_t>(n));
  std::vector<RedisCommand> cmds;
  cmds.reserve(size_t(n));
  for (int64_t i = 0; i < n; ++i) {
    keys[size_t(i)] = keys_.record(flushed_ + i);
    const std::string_view value(reinterpret_cast<const char*>(buffered_.data()) + i * record_size_, size_t(record_size_));
    cmds.push_back({{"SET", keys[size_t(i)], value}});
  }
  const std::vector<RedisValue> replies = cluster_->run(cmds);
  for (size_t i = 0; i < replies.size(); ++i) expect_ok(replies[i], "bank " + uri_ + ": SET " + keys[i]);
  // Only now is the progress key advanced: a push killed before this line resends the batch.
  const std::string next = std::to_string(flushed_ + n);
  expect_ok(cluster_->run(RedisCommand{{"SET", keys_.progress(), next}}), "bank " + uri_ + ": SET " + keys_.progress());
  flushed_ += n;
  buffered_.clear();
}

void RedisRecordStore::truncate(int64_t n) {
  if (!writable_) throw Error("bank " + uri_ + " is open read-only");
  buffered_.clear();
  const std::string v = std::to_string(n);
  expect_ok(cluster_->run(RedisCommand{{"SET", keys_.progress(), v}}), "bank " + uri_ + ": SET " + keys_.progress());
  count_ = flushed_ = n;
}

std::unique_ptr<RecordStore> open_remote_record_store(const std::string& uri, int64_t record_size) {
  const RemoteBankUri u = RemoteBankUri::parse(uri);
  return std::make_unique<RedisRecordStore>(connect(u), u, record_size, false);
}

// ---- push ------------------------------------------------------------------------------------------

PushReport push_bank(const std::string& dir_arg, const std::string& uri, const PushOptions& o) {
  const auto t0 = Clock::now();
  std::string dir = dir_arg;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  const RemoteBankUri u = RemoteBankUri::parse(uri);
  const std::string where = "bank " + u.uri;
  auto bank = MemoryBank::open(dir, nullptr, false);
  if (bank->is_remote()) throw Error("bank " + dir + " is a cache of " + bank->payload() + ": push the bank it came from");
  if (o.batch_records < 1) throw Error("push: the batch must hold at least 1 record");
  const int64_t n = bank->memory_count(), rs = bank->record_size();
  std::string created;
  try {
    created = json::parse(read_file(dir + "/manifest.json")).value("created", "");
  } catch (const json::exception& e) {
    throw Error("bank " + dir + ": manifest.json is not JSON (" + e.what() + ")");
  }
  const std::string fingerprint = bank->model().fingerprint;

  auto cluster = connect(u);
  const RemoteBankKeys keys{u.bank};
  auto meta = hgetall(*cluster, keys.meta(), where);
  if (!meta.empty()) {
    // The same bank (model and creation time), perhaps grown or compacted since: go on.
    if (meta["model_fingerprint"] != fingerprint || meta["created"] != created || meta["record_size"] != std::to_string(rs))
      throw Error(where + " holds another bank (model " + meta["model_fingerprint"] + ", created " + meta["created"] +
                  ", records of " + meta["record_size"] + " bytes), not " + dir + " (model " + fingerprint + ", created " +
                  created + "): push under another name");
  } else {
    const std::string fmt = std::to_string(kMetaFormat), rss = std::to_string(rs);
    expect_ok(cluster->run(RedisCommand{{"HSET", keys.meta(), "format", fmt, "record_size", rss, "model_fingerprint",
                                         fingerprint, "created", created}}),
              where + ": HSET " + keys.meta());
  }

  // A batch is held twice in memory (local bytes, buffered appends): at most 32 MiB of records.
  const int64_t batch = std::max<int64_t>(1, std::min<int64_t>(o.batch_records, (int64_t(32) << 20) / rs));
  PushReport rep;
  rep.records = n;
  RedisRecordStore store(cluster, u, rs, true);
  if (store.count() > n) store.truncate(n);  // the local bank shrank (compacted)
  rep.resumed_at = store.count();
  auto progress = [&](const char* phase, int64_t done, int64_t total) {
    if (o.on_progress) o.on_progress(PushProgress{phase, done, total});
  };
  auto throttle = [&] {
    if (o.throttle_ms > 0) std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(o.throttle_ms));
  };

  std::vector<uint8_t> local, remote;
  for (int pass = 0;; ++pass) {
    // Copy what the progress key says is missing, a batch at a time.
    for (int64_t id = store.count(); id < n;) {
      const int64_t k = std::min<int64_t>(batch, n - id);
      bank->read_raw(id, k, local);  // verified against the local checksums
      for (int64_t i = 0; i < k; ++i) store.append(local.data() + i * rs);
      store.flush();
      rep.copied += k;
      id += k;
      progress("copy", id, n);
      throttle();
    }
    if (!o.verify) break;
    // Read everything back; the first record that differs is where copying starts again (the
    // cluster held other bytes there: an older version of a compacted bank, or damage).
    int64_t first_bad = -1;
    rep.verified = 0;
    for (int64_t id = 0; id < n && first_bad < 0;) {
      const int64_t k = std::min<int64_t>(batch, n - id);
      bank->read_raw(id, k, local);
      std::vector<int64_t> ids(static_cast<size_t>(k));
      for (int64_t i = 0; i < k; ++i) ids[size_t(i)] = id + i;
      remote.resize(local.size());
      store.read_many(ids.data(), ids.size(), remote.data());
      for (int64_t i = 0; i < k && first_bad < 0; ++i)
        if (std::memcmp(local.data() + i * rs, remote.data() + i * rs, size_t(rs)) != 0) first_bad = id + i;
      rep.verified += first_bad < 0 ? k : first_bad - id;
      id += k;
      progress("verify", id, n);
    }
    if (first_bad < 0) break;
    if (pass == 2)
      throw Error(where + ": record " + std::to_string(first_bad) + " still differs from " + dir +
                  " after being sent again twice (is another push of this bank running?)");
    rep.rewritten += n - first_bad;
    store.truncate(first_bad);
  }

  // The files, each sent only when its checksum changed, and read back.
  json files = json::object();
  json old_files = json::object();
  if (meta.count("files")) old_files = json::parse(meta["files"], nullptr, false);
  if (!old_files.is_object()) old_files = json::object();
  // The catalog's snapshot goes to the temp directory: the bank's own may be read-only.
  const std::string snapshot =
      (fs::temp_directory_path() / ("m3-push-catalog-" + std::to_string(::getpid()) + ".sqlite")).string();
  std::vector<std::string> present;
  for (const std::string& name : kBankFiles)
    if (name == "catalog.sqlite" || fs::exists(dir + "/" + name)) present.push_back(name);
  int done_files = 0;
  for (const std::string& name : present) {
    std::string bytes;
    if (name == "catalog.sqlite") {
      struct Remove {
        std::string p;
        ~Remove() {
          std::error_code ec;
          fs::remove(p, ec);
          fs::remove(p + "-journal", ec);
        }
      } cleanup{snapshot};
      bank->snapshot_catalog(snapshot);
      bytes = read_file(snapshot);
    } else {
      bytes = read_file(dir + "/" + name);
    }
    const std::string sum = xxh3_hex(bytes);
    const int parts = int((bytes.size() + kPartBytes - 1) / kPartBytes);
    files[name] = {{"bytes", bytes.size()}, {"xxh3", sum}, {"parts", parts}};
    progress("files", ++done_files, int64_t(present.size()));
    const bool same = old_files.contains(name) && old_files[name].value("xxh3", "") == sum;
    std::vector<std::string> part_keys;
    for (int p = 0; p < parts; ++p) part_keys.push_back(keys.file_part(name, sum, p));
    if (same && !o.verify) {
      ++rep.files_unchanged;
      continue;
    }
    if (same) {
      // Unchanged by checksum; read back anyway when verifying (a lost part would be resent).
      std::string back;
      for (const RedisValue& v : cluster->get_many(part_keys)) back += v.str;
      if (back == bytes) {
        ++rep.files_unchanged;
        continue;
      }
    }
    std::vector<RedisCommand> cmds;
    for (int p = 0; p < parts; ++p) {
      const size_t off = size_t(p) * kPartBytes;
      cmds.push_back({{"SET", part_keys[size_t(p)], std::string_view(bytes).substr(off, kPartBytes)}});
    }
    const std::vector<RedisValue> replies = cluster->run(cmds);
    for (size_t p = 0; p < replies.size(); ++p) expect_ok(replies[p], where + ": SET " + part_keys[p]);
    if (o.verify) {
      std::string back;
      for (const RedisValue& v : cluster->get_many(part_keys)) back += v.str;
      if (back != bytes) throw Error(where + ": " + name + " read back from the cluster differs from what was sent");
    }
    ++rep.files_sent;
    rep.file_bytes_sent += int64_t(bytes.size());
  }

  // Replicas first, commit second: a failover right after the push must not lose it.
  rep.masters = int(cluster->masters().size());
  rep.replicated = wait_replicated(*cluster, o.replication_timeout_ms);
  char host[256] = "?";
  ::gethostname(host, sizeof host - 1);
  const std::string records = std::to_string(n), files_json = files.dump(), pushed = utc_timestamp(),
                    source = std::string(host) + ":" + fs::absolute(dir).string();
  expect_ok(cluster->run(RedisCommand{{"HSET", keys.meta(), "records", records, "files", files_json, "pushed", pushed,
                                       "source", source}}),
            where + ": HSET " + keys.meta());
  // The previous versions' file parts are garbage now (a reader that read the old meta just
  // before may miss them and must fetch again).
  std::vector<std::string> stale;
  for (auto it = old_files.begin(); it != old_files.end(); ++it) {
    const std::string sum = it.value().value("xxh3", "");
    if (files.contains(it.key()) && files[it.key()]["xxh3"] == sum) continue;
    for (int p = 0; p < it.value().value("parts", 0); ++p) stale.push_back(keys.file_part(it.key(), sum, p));
  }
  if (!stale.empty()) {
    std::vector<RedisCommand> dels;
    for (const std::string& k : stale) dels.push_back({{"DEL", k}});
    cluster->run(dels);
  }
  rep.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return rep;
}

// ---- fetch -----------------------------------------------------------------------------------------

std::string default_bank_cache_dir(const std::string& uri) {
  const RemoteBankUri u = RemoteBankUri::parse(uri);
  std::string root;
  if (const char* c = std::getenv("M3_BANK_CACHE"); c && *c) root = c;
  else if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) root = std::string(x) + "/m3/banks";
  else if (const char* h = std::getenv("HOME"); h && *h) root = std::string(h) + "/.cache/m3/banks";
  else root = "/tmp/m3-banks-" + std::to_string(::getuid());
  std::string seeds;
  for (const RedisEndpoint& e : u.seeds) seeds += e.str() + ",";
  const std::string id = seeds + "/" + u.bank;
  return root + "/" + u.bank + "-" + hex64(XXH3_64bits(id.data(), id.size())).substr(0, 8);
}

FetchReport fetch_remote_bank(const std::string& uri, const std::string& cache_dir) {
  const RemoteBankUri u = RemoteBankUri::parse(uri);
  const std::string where = "bank " + u.uri;
  FetchReport rep;
  rep.dir = cache_dir.empty() ? default_bank_cache_dir(uri) : cache_dir;
  while (rep.dir.size() > 1 && rep.dir.back() == '/') rep.dir.pop_back();
  const std::string& dir = rep.dir;
  if (fs::exists(dir + "/records.bin") || (fs::exists(dir + "/manifest.json") && !fs::exists(dir + "/payload.json")))
    throw Error(where + ": the cache directory " + dir + " holds a local bank; give another --bank-cache");

  auto cluster = connect(u);
  const RemoteBankKeys keys{u.bank};
  const auto meta = hgetall(*cluster, keys.meta(), where);
  if (meta.empty()) throw Error(where + ": the cluster holds no bank of that name (push one with m3 bank push)");
  if (!meta.count("files") || !meta.count("records"))
    throw Error(where + ": its first push has not finished (run m3 bank push again)");
  const json files = json::parse(meta.at("files"), nullptr, false);
  if (!files.is_object() || !files.contains("manifest.json")) throw Error(where + ": " + keys.meta() + " has a malformed file list");
  rep.records = to_i64(meta.at("records"), where + ": records");

  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(where + ": cannot create the cache directory " + dir + " (" + ec.message() + ")");
  // The marker first: a directory with a manifest but no payload.json would read as a local bank.
  write_file_atomic(dir + "/payload.json", json({{"uri", u.uri}}).dump(2) + "\n");
  for (auto it = files.begin(); it != files.end(); ++it) {
    const std::string& name = it.key();
    if (std::find(kBankFiles.begin(), kBankFiles.end(), name) == kBankFiles.end())
      throw Error(where + ": " + keys.meta() + " lists an unknown file '" + name + "'");
    const std::string sum = it.value().value("xxh3", "");
    const int parts = it.value().value("parts", 0);
    const std::string path = dir + "/" + name;
    if (fs::exists(path) && xxh3_hex(read_file(path)) == sum) {
      ++rep.files_fresh;
      continue;
    }
    std::vector<std::string> part_keys;
    for (int p = 0; p < parts; ++p) part_keys.push_back(keys.file_part(name, sum, p));
    std::string bytes;
    const std::vector<RedisValue> values = cluster->get_many(part_keys);
    for (size_t p = 0; p < values.size(); ++p) {
      if (values[p].is_nil())
        throw Error(where + ": part " + std::to_string(p) + " of " + name + " is missing (" + part_keys[p] +
                    "; a push replaced it meanwhile? fetch again)");
      bytes += values[p].str;
    }
    if (int64_t(bytes.size()) != it.value().value("bytes", int64_t(-1)) || xxh3_hex(bytes) != sum)
      throw Error(where + ": " + name + " fetched from the cluster does not match its checksum " + sum);
    write_file_atomic(path, bytes);
    ++rep.files_fetched;
    rep.bytes_fetched += int64_t(bytes.size());
  }
  for (const std::string& name : kBankFiles)
    if (!files.contains(name)) fs::remove(dir + "/" + name, ec);  // gone from the bank since the last fetch
  fsync_path(dir, true);
  return rep;
}

std::unique_ptr<MemoryBank> open_bank_for_reading(const std::string& location, const Model* model,
                                                  const std::string& cache_dir) {
  if (!is_remote_bank(location)) return MemoryBank::open(location, model, false);
  const FetchReport f = fetch_remote_bank(location, cache_dir);
  return MemoryBank::open(f.dir, model, false);
}

}  // namespace m3
