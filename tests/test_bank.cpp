// The memory bank (records, manifest, catalog, crash safety, compaction) and the LRU cache.
// Memories here are random numbers of the right shape; the memory writer has its own tests.
//
// One parameterized suite, Backends/BankTest, runs the same tests against both payload backends
// (m3/record_store.h): File (records.bin) and RedisCluster (the bank written locally, pushed with
// push_bank to a 6-node test cluster and opened from a fetched cache, every record read from the
// cluster). Banks are always written locally: a pushed bank is read-only. BankFileOnly holds what
// is inherently about the local files: append's checks, the manifest and directory errors, and
// the torn-tail truncation of records.bin. The cluster is started once per test process, when a
// RedisCluster test first needs it (tests/redis_test_cluster.h); without redis-server those
// tests fail.
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <random>
#include <thread>

#include "m3/bank.h"
#include "m3/bank_remote.h"
#include "m3/dtype.h"
#include "m3/error.h"
#include "m3/memory_cache.h"
#include "m3/model.h"
#include "m3/redis_cluster.h"
#include "bank_fixtures.h"
#include "redis_test_cluster.h"
#include "test_helpers.h"

namespace m3 {
namespace {

namespace fs = std::filesystem;
const std::string kData = M3_TEST_DATA;

const Model& test_model() {
  static const std::unique_ptr<Model> model = Model::load(kData + "/test-f32.gguf");
  return *model;
}

using test::Corpus;
using test::error_of;
using test::make_corpus;
using test::random_memory;

std::string problems(const VerifyReport& v) {
  std::string out;
  for (const auto& p : v.problems) out += p + "\n";
  for (const auto id : v.corrupted) out += "corrupted " + std::to_string(id) + "\n";
  return out;
}

float bf16_round(float x) { return bf16_to_fp32(fp32_to_bf16(x)); }
float f16_round(float x) { return fp16_to_fp32(fp32_to_fp16(x)); }

std::unique_ptr<MemoryBank> make_bank(const std::string& dir, const Corpus& c, int n_memories, const std::string& codec = "bf16") {
  auto bank = MemoryBank::create(dir, test_model(), codec, codec);
  bank->add_references(c.docs, c.refs);
  const MemoryShape s = bank->shape();
  for (int64_t id = 0; id < n_memories; ++id) bank->append(random_memory(s, id, c.n_tokens[size_t(id)], 1));
  bank->flush();
  return bank;
}

// ---- the backends --------------------------------------------------------------------------------

enum class Backend { File, Redis };

// The test process's cluster: started by the first RedisCluster test, stopped after the last.
std::unique_ptr<test::RedisTestCluster> g_cluster;
test::RedisTestCluster& cluster() {
  if (!g_cluster) g_cluster = std::make_unique<test::RedisTestCluster>();
  return *g_cluster;
}
class ClusterEnvironment : public ::testing::Environment {
 public:
  void TearDown() override { g_cluster.reset(); }
};
[[maybe_unused]] const auto* const g_env = ::testing::AddGlobalTestEnvironment(new ClusterEnvironment);

class BankTest : public ::testing::TestWithParam<Backend> {
 protected:
  BankTest() {
    static int tests = 0;
    test_number_ = ++tests;
  }
  bool remote() const { return GetParam() == Backend::Redis; }

  // The bank written in `dir`, opened read-only through the backend under test: the directory
  // itself, or the bank pushed to the cluster as `name` (default: a fresh one) and opened from
  // a cache directory, so that every record read goes to the cluster.
  std::unique_ptr<MemoryBank> reader(const std::string& dir, const Model* model = nullptr, std::string name = "") {
    if (!remote()) return MemoryBank::open(dir, model, false);
    // One cluster serves every test of the process: names are unique per test.
    name = "t" + std::to_string(test_number_) + "-" + (name.empty() ? "b" + std::to_string(++unnamed_) : name);
    uri_ = cluster().uri(name);
    last_push_ = push_bank(dir, uri_);
    return open_bank_for_reading(uri_, model, tmp.file("cache-" + name));
  }
  // "bank <where>: record <id> is corrupted (checksum mismatch)" names this.
  std::string where(const std::string& dir) const { return remote() ? uri_ : dir; }

  // Replaces record `id`'s stored bytes: in records.bin, or the record's value in the cluster.
  void store_record(const std::string& dir, int64_t id, int64_t record_size, const std::string& bytes) {
    if (!remote()) {
      std::string all = test::read_all(dir + "/records.bin");
      all.replace(size_t(id * record_size), size_t(record_size), bytes);
      test::write_all(dir + "/records.bin", all);  // same inode: an open bank sees it
      return;
    }
    RedisCluster c(parse_redis_endpoints(cluster().seeds()));
    const std::string key = RemoteBankKeys{RemoteBankUri::parse(uri_).bank}.record(id);
    ASSERT_EQ(c.run(RedisCommand{{"SET", key, bytes}}).str, "OK");
  }
  std::string stored_record(const std::string& dir, int64_t id, int64_t record_size) {
    if (!remote()) return test::read_all(dir + "/records.bin").substr(size_t(id * record_size), size_t(record_size));
    RedisCluster c(parse_redis_endpoints(cluster().seeds()));
    return c.get_many({RemoteBankKeys{RemoteBankUri::parse(uri_).bank}.record(id)})[0].str;
  }

  test::TempDir tmp;
  std::string uri_;
  PushReport last_push_;
  int test_number_ = 0, unnamed_ = 0;
};

INSTANTIATE_TEST_SUITE_P(Backends, BankTest, ::testing::Values(Backend::File, Backend::Redis),
                         [](const ::testing::TestParamInfo<Backend>& i) {
                           return std::string(i.param == Backend::File ? "File" : "RedisCluster");
                         });

TEST_P(BankTest, RoundTripBf16AndReopen) {
  const std::string dir = tmp.file("bank");
  const Corpus c = make_corpus(3, 4);
  const MemoryShape s = MemoryShape::of(test_model().config());
  {
    auto bank = make_bank(dir, c, 12);
    EXPECT_EQ(bank->shape(), s);
    EXPECT_EQ(bank->reference_count(), 12);
    EXPECT_EQ(bank->memory_count(), 12);
    EXPECT_EQ(fs::file_size(dir + "/records.bin"), uint64_t(12 * bank->record_size()));
  }
  auto bank = reader(dir, &test_model());
  EXPECT_FALSE(bank->writable());
  EXPECT_EQ(bank->is_remote(), remote());
  if (remote()) {
    EXPECT_EQ(last_push_.copied, 12);
    EXPECT_EQ(last_push_.verified, 12);
    EXPECT_TRUE(last_push_.replicated);
  }
  ASSERT_EQ(bank->memory_count(), 12);
  for (int64_t id = 0; id < 12; ++id) {
    const ExplicitMemory want = random_memory(s, id, c.n_tokens[size_t(id)], 1);
    const ExplicitMemory got = bank->read(id);
    EXPECT_EQ(got.reference_id, id);
    EXPECT_EQ(got.n_tokens, want.n_tokens);
    EXPECT_EQ(got.positions, want.positions);
    ASSERT_EQ(got.keys.size(), want.keys.size());
    for (size_t i = 0; i < want.keys.size(); ++i) {
      ASSERT_EQ(got.keys[i], bf16_round(want.keys[i])) << "id " << id << " key " << i;
      ASSERT_EQ(got.values[i], bf16_round(want.values[i])) << "id " << id << " value " << i;
    }
  }
  const ReferenceInfo r = bank->reference(5);
  EXPECT_EQ(r.doc_id, "doc1");
  EXPECT_EQ(r.doc_title, "Title 1");
  EXPECT_EQ(r.text, c.refs[1][1].text);
  EXPECT_EQ(r.tokens, c.refs[1][1].tokens);
  EXPECT_EQ(r.char_begin, c.refs[1][1].char_begin);
  EXPECT_FALSE(r.deleted);
  EXPECT_THROW(bank->read(12), Error);
  EXPECT_THROW(bank->read_many({3, 12}), Error);
  EXPECT_THROW(bank->reference(99), Error);
  const VerifyReport v = bank->verify();
  EXPECT_TRUE(v.ok()) << problems(v);
  EXPECT_EQ(v.records_checked, 12);
  EXPECT_THROW(bank->append(random_memory(s, 12, 5, 1)), Error);  // read-only
  const BankInfo info = bank->info();
  EXPECT_EQ(info.memories, 12);
  EXPECT_EQ(info.records_file_bytes, 12 * bank->record_size());
  EXPECT_EQ(info.payload, remote() ? uri_ : "records.bin");
  EXPECT_EQ(bank->payload(), remote() ? uri_ : dir + "/records.bin");
  // A bank opened a second time reads the same.
  auto again = remote() ? open_bank_for_reading(uri_, nullptr, tmp.file("cache-again")) : MemoryBank::open(dir, nullptr, false);
  EXPECT_EQ(again->read(7).keys, bank->read(7).keys);
}

// read_many is read() for every id, in order (duplicates and any order allowed), from many
// threads at once.
TEST_P(BankTest, ReadManyEqualsReadFromManyThreads) {
  const std::string dir = tmp.file("bank");
  const Corpus c = make_corpus(4, 10);
  make_bank(dir, c, 40);
  auto bank = reader(dir);
  std::vector<ExplicitMemory> one;
  for (int64_t id = 0; id < 40; ++id) one.push_back(bank->read(id));
  std::atomic<int> checked{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      std::mt19937 rng(static_cast<uint32_t>(t));
      for (int i = 0; i < 50; ++i) {
        std::vector<int64_t> ids;
        for (int k = 0; k < 5; ++k) ids.push_back(int64_t(rng() % 40));
        const std::vector<ExplicitMemory> got = bank->read_many(ids);
        ASSERT_EQ(got.size(), ids.size());
        for (size_t k = 0; k < ids.size(); ++k) {
          ASSERT_EQ(got[k].reference_id, ids[k]);
          ASSERT_EQ(got[k].positions, one[size_t(ids[k])].positions);
          ASSERT_EQ(got[k].keys, one[size_t(ids[k])].keys);
          ASSERT_EQ(got[k].values, one[size_t(ids[k])].values);
          ++checked;
        }
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(checked.load(), 4 * 50 * 5);
  EXPECT_TRUE(bank->read_many({}).empty());
}

TEST_P(BankTest, F16AndInt8Codecs) {
  const Corpus c = make_corpus(2, 3);
  const MemoryShape s = MemoryShape::of(test_model().config());
  for (const std::string codec : {"f16", "int8"}) {
    make_bank(tmp.file(codec), c, 6, codec);
    auto bank = reader(tmp.file(codec));
    EXPECT_EQ(bank->info().key_codec, codec);
    for (int64_t id = 0; id < 6; ++id) {
      const ExplicitMemory want = random_memory(s, id, c.n_tokens[size_t(id)], 1);
      const ExplicitMemory got = bank->read(id);
      double err = 0, norm = 0;
      for (size_t i = 0; i < want.keys.size(); ++i) {
        if (codec == "f16") {
          ASSERT_EQ(got.keys[i], f16_round(want.keys[i]));
        }
        err += double(got.values[i] - want.values[i]) * (got.values[i] - want.values[i]);
        norm += double(want.values[i]) * want.values[i];
      }
      EXPECT_LT(err, 1e-3 * norm) << codec;
    }
  }
}

// ---- file-only: a bank is written locally (a pushed bank is read-only) ----------------------------

TEST(BankFileOnly, AppendChecksItsInput) {
  test::TempDir tmp;
  const Corpus c = make_corpus(1, 3);
  auto bank = MemoryBank::create(tmp.file("b"), test_model(), "bf16", "bf16");
  const MemoryShape s = bank->shape();
  // No catalog entry yet: records follow references.
  EXPECT_NE(error_of([&] { bank->append(random_memory(s, 0, c.n_tokens[0], 1)); }).find("no reference"), std::string::npos);
  bank->add_references(c.docs, c.refs);
  EXPECT_NE(error_of([&] { bank->append(random_memory(s, 1, c.n_tokens[1], 1)); }).find("expected 0"), std::string::npos);
  EXPECT_NE(error_of([&] { bank->append(random_memory(s, 0, c.n_tokens[0] + 1, 1)); }).find("tokens"), std::string::npos);
  ExplicitMemory bad = random_memory(s, 0, c.n_tokens[0], 1);
  std::swap(bad.positions[0], bad.positions[1]);  // no longer ascending
  EXPECT_NE(error_of([&] { bank->append(bad); }).find("bad position"), std::string::npos);
  EXPECT_EQ(bank->memory_count(), 0);
  bank->append(random_memory(s, 0, c.n_tokens[0], 1));
  EXPECT_EQ(bank->memory_count(), 1);
  // Adding the same document again is refused, atomically.
  EXPECT_NE(error_of([&] { bank->add_references(c.docs, c.refs); }).find("already in the bank"), std::string::npos);
  EXPECT_EQ(bank->reference_count(), 3);
}

// The directory's own files (a pushed bank's errors are in test_redis_cluster.cpp).
TEST(BankFileOnly, CreateOpenAndManifestErrors) {
  test::TempDir tmp;
  const std::string dir = tmp.file("bank");
  EXPECT_FALSE(MemoryBank::exists(dir));
  make_bank(dir, make_corpus(1, 2), 2);
  EXPECT_TRUE(MemoryBank::exists(dir));
  EXPECT_NE(error_of([&] { MemoryBank::create(dir, test_model(), "bf16", "bf16"); }).find("already exists"), std::string::npos);
  {
    auto w = MemoryBank::open(dir, nullptr, true);
    EXPECT_NE(error_of([&] { MemoryBank::open(dir, nullptr, true); }).find("open for writing by another process"),
              std::string::npos);
    EXPECT_NO_THROW(MemoryBank::open(dir, nullptr, false));  // readers are welcome
  }
  // Another model's weights: refused with a message that says what to do.
  const std::string other = tmp.file("other.gguf");
  test::write_test_model(other, 99);
  auto other_model = Model::load(other);
  ASSERT_NE(other_model->fingerprint(), test_model().fingerprint());
  const std::string e = error_of([&] { MemoryBank::open(dir, other_model.get(), false); });
  EXPECT_NE(e.find("bank " + dir + " was written by model " + test_model().fingerprint() + ", not " +
                   other_model->fingerprint() + " (" + other + "): rebuild it with m3 memorize"),
            std::string::npos)
      << e;

  const std::string manifest = test::read_all(dir + "/manifest.json");
  test::write_all(dir + "/manifest.json", manifest.substr(0, manifest.size() / 2));
  EXPECT_NE(error_of([&] { MemoryBank::open(dir, nullptr, false); }).find("manifest.json is truncated"), std::string::npos);
  std::string v1 = manifest;  // format 1 stored positions as int16: refused, not misread
  v1.replace(v1.find("\"format_version\": 2"), 19, "\"format_version\": 1");
  test::write_all(dir + "/manifest.json", v1);
  EXPECT_NE(error_of([&] { MemoryBank::open(dir, nullptr, false); }).find("format_version 1, this m3 reads version 2"), std::string::npos);
  fs::remove(dir + "/manifest.json");
  EXPECT_NE(error_of([&] { MemoryBank::open(dir, nullptr, false); }).find("no manifest.json"), std::string::npos);
  EXPECT_NE(error_of([&] { MemoryBank::open(tmp.file("nope"), nullptr, false); }).find("no such directory"),
            std::string::npos);
}

// A manifest that lost a trained codec's parameter file name (fuzz_bank found one: the bank opened
// with an untrained codec beside its records and verify said ok, though no record decoded).
TEST(BankFileOnly, VerifyReportsRecordsBesideAnUntrainedCodec) {
  test::TempDir tmp;
  const std::string dir = tmp.file("bank");
  const Corpus c = make_corpus(2, 4);
  {
    auto bank = MemoryBank::create(dir, test_model(), "bf16", "pq:Residual2x4,PQ4x4");
    bank->add_references(c.docs, c.refs);
    const MemoryShape s = bank->shape();
    std::vector<ExplicitMemory> sample;
    for (int64_t id = 0; id < 64; ++id) sample.push_back(random_memory(s, id, 20, 7));
    bank->train_codecs(sample);
    for (int64_t id = 0; id < 4; ++id) bank->append(random_memory(s, id, c.n_tokens[size_t(id)], 1));
    bank->flush();
  }
  EXPECT_TRUE(MemoryBank::open(dir, nullptr, false)->verify().ok());
  std::string manifest = test::read_all(dir + "/manifest.json");
  const std::string named = "\"params\": \"value_codec.bin\"";
  const size_t at = manifest.find(named);
  ASSERT_NE(at, std::string::npos) << manifest;
  manifest.replace(at, named.size(), "\"pa$rams\": \"value_codec.bin\"");
  test::write_all(dir + "/manifest.json", manifest);
  auto bank = MemoryBank::open(dir, nullptr, false);
  const VerifyReport v = bank->verify();
  EXPECT_FALSE(v.ok());
  EXPECT_NE(problems(v).find("4 records, but the manifest names no parameters for a codec that needs them"), std::string::npos)
      << problems(v);
}

// The bank checks every record it reads, whatever the backend: a flipped bit in records.bin or in
// a value in the cluster gives the same error.
TEST_P(BankTest, CorruptedRecordIsReportedAndNeverReturned) {
  const std::string dir = tmp.file("bank");
  const Corpus c = make_corpus(2, 4);
  const int64_t rs = make_bank(dir, c, 8)->record_size();
  auto bank = reader(dir);
  std::string r3 = stored_record(dir, 3, rs), r6 = stored_record(dir, 6, rs);
  ASSERT_EQ(int64_t(r3.size()), rs);
  r3[size_t(rs / 2)] ^= 0x10;  // a bit in record 3's codes
  r6[1] ^= 0x01;               // record 6's magic
  store_record(dir, 3, rs, r3);
  store_record(dir, 6, rs, r6);
  const VerifyReport v = bank->verify();
  EXPECT_EQ(v.corrupted, (std::vector<int64_t>{3, 6}));
  EXPECT_EQ(v.records_checked, 8);
  EXPECT_FALSE(v.ok());
  const std::string e = error_of([&] { bank->read(3); });
  EXPECT_NE(e.find("bank " + where(dir) + ": record 3 is corrupted (checksum mismatch)"), std::string::npos) << e;
  EXPECT_THROW(bank->read(6), Error);
  EXPECT_NE(error_of([&] { bank->read_many({2, 6, 7}); }).find("record 6 is corrupted"), std::string::npos);
  EXPECT_NO_THROW(bank->read(2));
  EXPECT_NO_THROW(bank->read(7));

  // A record copied to the wrong place has a valid checksum but the wrong id; a cut one is short.
  store_record(dir, 1, rs, stored_record(dir, 0, rs));
  EXPECT_EQ(bank->verify().corrupted, (std::vector<int64_t>{1, 3, 6}));
  if (remote()) {
    store_record(dir, 5, rs, stored_record(dir, 5, rs).substr(0, size_t(rs / 3)));
    EXPECT_NE(error_of([&] { bank->read(5); }).find("record 5 is corrupted"), std::string::npos);
  }
}

// Simulates a crash at every stage of an append: records.bin cut at many byte offsets (and a
// zeroed last record, as after a power loss). Opening for write must resume at the last
// complete record and finish with exactly the bytes of an uninterrupted build.
TEST(BankFileOnly, TruncatedRecordsResumeToSameBytes) {
  test::TempDir tmp;
  const std::string dir = tmp.file("bank");
  const Corpus c = make_corpus(2, 3);
  const int n = 6;
  int64_t rs = 0;
  {
    auto bank = make_bank(dir, c, n);
    rs = bank->record_size();
  }
  const std::string final_bytes = test::read_all(dir + "/records.bin");
  ASSERT_EQ(int64_t(final_bytes.size()), n * rs);
  const MemoryShape s = MemoryShape::of(test_model().config());

  auto resume = [&](const std::string& context) {
    auto bank = MemoryBank::open(dir, &test_model(), true);
    for (int64_t id = bank->memory_count(); id < n; ++id) bank->append(random_memory(s, id, c.n_tokens[size_t(id)], 1));
    bank->flush();
    EXPECT_TRUE(bank->verify().ok()) << context;
    bank.reset();
    EXPECT_TRUE(test::read_all(dir + "/records.bin") == final_bytes) << context;
  };
  std::vector<int64_t> offsets;
  for (int64_t off = 0; off <= n * rs; off += 13) offsets.push_back(off);
  for (int64_t k = 0; k <= n; ++k)
    for (int64_t d : {-1, 0, 1, 8, 24})
      if (k * rs + d >= 0 && k * rs + d <= n * rs) offsets.push_back(k * rs + d);
  for (const int64_t off : offsets) {
    ASSERT_EQ(::truncate((dir + "/records.bin").c_str(), off), 0);
    {
      auto ro = MemoryBank::open(dir, nullptr, false);  // a reader sees only complete records
      EXPECT_EQ(ro->memory_count(), off / rs);
    }
    {
      auto w = MemoryBank::open(dir, nullptr, true);
      EXPECT_EQ(w->memory_count(), off / rs) << "offset " << off;
      EXPECT_EQ(int64_t(fs::file_size(dir + "/records.bin")), (off / rs) * rs);
    }
    resume("offset " + std::to_string(off));
  }
  // A full-length but zeroed last record (pages that never reached the disk).
  std::string zeroed = final_bytes;
  std::fill(zeroed.end() - rs, zeroed.end(), '\0');
  test::write_all(dir + "/records.bin", zeroed);
  {
    auto w = MemoryBank::open(dir, nullptr, true);
    EXPECT_EQ(w->memory_count(), n - 1);
  }
  resume("zeroed last record");
}

// Deleting and compacting happen in the local bank; the backend under test then serves the
// result (pushed again under the same name: the compacted records replace the old ones).
TEST_P(BankTest, DeleteAndCompact) {
  const std::string dir = tmp.file("bank");
  const Corpus c = make_corpus(3, 3);
  const MemoryShape s = MemoryShape::of(test_model().config());
  auto bank = make_bank(dir, c, 8);  // reference 8 (doc2's last) is not memorized yet
  const int64_t rs = bank->record_size();

  auto fts_ids = [&](const std::string& query) {
    sqlite3* db = nullptr;
    EXPECT_EQ(sqlite3_open_v2(bank->catalog_path().c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db, "SELECT rowid FROM refs_fts WHERE refs_fts MATCH ? ORDER BY bm25(refs_fts), rowid",
                                 -1, &st, nullptr),
              SQLITE_OK)
        << sqlite3_errmsg(db);
    sqlite3_bind_text(st, 1, query.c_str(), -1, SQLITE_TRANSIENT);
    std::vector<int64_t> ids;
    while (sqlite3_step(st) == SQLITE_ROW) ids.push_back(sqlite3_column_int64(st, 0));
    sqlite3_finalize(st);
    sqlite3_close(db);
    std::sort(ids.begin(), ids.end());
    return ids;
  };
  EXPECT_EQ(fts_ids("ship"), (std::vector<int64_t>{3, 4, 5}));
  EXPECT_EQ(fts_ids("part2"), (std::vector<int64_t>{2, 5, 8}));

  EXPECT_EQ(bank->delete_document("doc1"), 3);
  EXPECT_THROW(bank->delete_document("doc1"), Error);  // already gone
  EXPECT_THROW(bank->delete_document("nope"), Error);
  EXPECT_TRUE(bank->reference(4).deleted);
  EXPECT_FALSE(bank->reference(6).deleted);
  EXPECT_TRUE(fts_ids("ship").empty());
  EXPECT_EQ(fts_ids("part2"), (std::vector<int64_t>{2, 8}));
  EXPECT_TRUE(bank->verify().ok());
  BankInfo before = bank->info();
  EXPECT_EQ(before.deleted_documents, 1);
  EXPECT_EQ(before.deleted_references, 3);

  std::vector<ExplicitMemory> old;
  for (int64_t id : {0, 1, 2, 6, 7}) old.push_back(bank->read(id));
  {
    auto served = reader(dir, nullptr, "dc");  // tombstones are in the catalog it serves
    EXPECT_TRUE(served->reference(4).deleted);
    EXPECT_EQ(served->read(6).keys, old[3].keys);
    EXPECT_EQ(served->info().deleted_references, 3);
  }
  EXPECT_EQ(bank->compact(), 3);
  EXPECT_FALSE(fs::exists(dir + ".compact"));
  EXPECT_EQ(bank->reference_count(), 6);
  EXPECT_EQ(bank->memory_count(), 5);
  EXPECT_TRUE(bank->verify().ok());
  const BankInfo after = bank->info();
  EXPECT_EQ(after.documents, 2);
  EXPECT_EQ(after.deleted_references, 0);
  for (int64_t id = 0; id < 5; ++id) {
    const ExplicitMemory m = bank->read(id);
    EXPECT_EQ(m.reference_id, id);
    EXPECT_EQ(m.positions, old[size_t(id)].positions);
    EXPECT_EQ(m.keys, old[size_t(id)].keys);
    EXPECT_EQ(m.values, old[size_t(id)].values);
  }
  EXPECT_EQ(bank->reference(3).doc_id, "doc2");
  EXPECT_EQ(bank->reference(5).text, c.refs[2][2].text);
  EXPECT_EQ(fts_ids("part2"), (std::vector<int64_t>{2, 5}));
  {
    auto served = reader(dir, nullptr, "dc");
    if (remote()) {
      // Records 0..2 (doc0) kept their ids and bytes; 3 and 4 held doc1's before compaction.
      EXPECT_EQ(last_push_.resumed_at, 5);
      EXPECT_EQ(last_push_.rewritten, 2);
      EXPECT_EQ(last_push_.copied, 2);
    }
    ASSERT_EQ(served->memory_count(), 5);
    for (int64_t id = 0; id < 5; ++id) {
      EXPECT_EQ(served->read(id).keys, old[size_t(id)].keys) << id;
      EXPECT_EQ(stored_record(dir, id, rs), test::read_all(dir + "/records.bin").substr(size_t(id * rs), size_t(rs)));
    }
    EXPECT_EQ(served->reference(3).doc_id, "doc2");
    EXPECT_TRUE(served->verify().ok()) << problems(served->verify());
  }
  // Resuming after compaction: the unmemorized reference is now id 5.
  ExplicitMemory m5 = random_memory(s, 5, c.n_tokens[8], 2);
  bank->append(m5);
  EXPECT_TRUE(bank->verify().ok());
  // A deleted document's id may be added again.
  bank->delete_document("doc0");
  Corpus again = make_corpus(1, 1);
  EXPECT_NO_THROW(bank->add_references(again.docs, again.refs));
  EXPECT_EQ(bank->reference(6).doc_id, "doc0");
  bank.reset();
  auto writer = MemoryBank::open(dir + "/", &test_model(), true);  // a trailing slash names the same bank
  EXPECT_EQ(writer->dir(), dir);
  EXPECT_EQ(writer->compact(), 3);         // the first doc0's three references
  EXPECT_EQ(writer->memory_count(), 3);    // doc2's, now ids 0..2
  writer.reset();
  auto reopened = MemoryBank::open(dir, &test_model(), false);
  EXPECT_EQ(reopened->memory_count(), 3);
  EXPECT_EQ(reopened->reference_count(), 4);
  EXPECT_EQ(reopened->reference(3).doc_id, "doc0");  // the new doc0, not memorized yet
  EXPECT_TRUE(reopened->verify().ok()) << problems(reopened->verify());
}

TEST_P(BankTest, InfoNumbers) {
  // The paper's 2.4B shape: 22 memory layers × 8 KV heads × 8 tokens × 80 dims.
  BankModel paper{"0123456789abcdef", model_preset("memory3-2.4b")};
  const MemoryShape s = MemoryShape::of(paper.config);
  EXPECT_EQ(s.slots(), 1408);
  EXPECT_EQ(memory_bytes_bf16(s), 450560);
  auto bank = MemoryBank::create(tmp.file("paper"), paper, "bf16", "bf16");
  BankInfo i = bank->info();
  EXPECT_EQ(i.raw_bf16_bytes, 450560);
  EXPECT_EQ(i.record_bytes, 24 + 1408 + 450560 + 8);
  EXPECT_EQ(i.code_bytes, 450560);  // the paper's bf16 figure for the 2.4B shape (spec §2.4)
  EXPECT_EQ(i.full_kv_bytes, 72089600);  // 44·2·40·128·80·2 (spec §2.5)
  EXPECT_NEAR(i.compression_vs_full_kv, 72089600.0 / (24 + 1408 + 450560 + 8), 1e-9);
  EXPECT_EQ(i.model_name, "memory3-2.4b");
  EXPECT_EQ(i.memories, 0);
  EXPECT_EQ(MemoryBank::record_bytes(s, 84, 84), 24 + 1408 * (1 + 168) + 8);  // int8 at D = 80
  bank.reset();
  auto reopened = reader(tmp.file("paper"));  // no memories yet: an empty bank pushes and serves too
  EXPECT_EQ(reopened->memory_count(), 0);
  EXPECT_EQ(reopened->info().record_bytes, i.record_bytes);
  EXPECT_EQ(reopened->model().fingerprint, "0123456789abcdef");
  EXPECT_EQ(reopened->shape(), s);
  EXPECT_EQ(reopened->model().config.n_heads, 40);

  // The test model: Lm 1, G 2, K 8, D 16.
  make_bank(tmp.file("small"), make_corpus(1, 2), 2);
  auto small = reader(tmp.file("small"));
  i = small->info();
  EXPECT_EQ(i.raw_bf16_bytes, 1 * 2 * 8 * 16 * 2 * 2);
  EXPECT_EQ(i.record_bytes, 24 + 16 + 16 * 32 * 2 + 8);
  EXPECT_EQ(i.records_file_bytes, 2 * i.record_bytes);
  EXPECT_EQ(i.references, 2);
  EXPECT_EQ(i.documents, 1);
  EXPECT_EQ(i.model_fingerprint, test_model().fingerprint());
}

// ---- the cache --------------------------------------------------------------------------------

ExplicitMemory tiny(int64_t id) {
  ExplicitMemory m;
  m.reference_id = id;
  m.n_tokens = int(id);
  return m;
}

TEST(MemoryCache, EvictsLeastRecentlyUsed) {
  MemoryCache cache(2);
  std::vector<int64_t> loads;
  auto loader = [&](int64_t id) {
    loads.push_back(id);
    return tiny(id);
  };
  EXPECT_EQ(cache.get_or_load(1, loader)->reference_id, 1);
  cache.get_or_load(2, loader);
  cache.get_or_load(1, loader);  // hit: 1 is now the most recent
  cache.get_or_load(3, loader);  // evicts 2
  EXPECT_TRUE(cache.contains(1));
  EXPECT_FALSE(cache.contains(2));
  EXPECT_TRUE(cache.contains(3));
  cache.get_or_load(2, loader);  // miss, evicts 1
  EXPECT_FALSE(cache.contains(1));
  EXPECT_EQ(loads, (std::vector<int64_t>{1, 2, 3, 2}));
  MemoryCacheStats st = cache.stats();
  EXPECT_EQ(st.hits, 1u);
  EXPECT_EQ(st.misses, 4u);
  EXPECT_EQ(st.evictions, 2u);
  EXPECT_EQ(st.entries, 2u);
  EXPECT_EQ(cache.get(3)->n_tokens, 3);
  EXPECT_EQ(cache.get(1), nullptr);
  cache.erase(3);
  EXPECT_FALSE(cache.contains(3));
  cache.clear();
  EXPECT_EQ(cache.stats().entries, 0u);
}

TEST(MemoryCache, ZeroCapacityAndFailingLoader) {
  MemoryCache off(0);
  int calls = 0;
  auto loader = [&](int64_t id) {
    ++calls;
    return tiny(id);
  };
  off.get_or_load(1, loader);
  off.get_or_load(1, loader);
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(off.stats().entries, 0u);

  MemoryCache cache(4);
  EXPECT_THROW(cache.get_or_load(5, [](int64_t) -> ExplicitMemory { throw Error("disk on fire"); }), Error);
  EXPECT_FALSE(cache.contains(5));
  const auto held = cache.get_or_load(6, loader);
  cache.clear();
  EXPECT_EQ(held->reference_id, 6);  // an evicted entry stays valid for its holders
  EXPECT_EQ(MemoryCache::capacity_for_bytes(0, MemoryShape{1, 2, 8, 16}), 0u);
  EXPECT_GT(MemoryCache::capacity_for_bytes(1 << 20, MemoryShape{1, 2, 8, 16}), 200u);
}

TEST(MemoryCache, ConcurrentUse) {
  MemoryCache cache(16);
  std::atomic<int> loads{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 2000; ++i) {
        const int64_t id = (i * 7 + t) % 24;
        auto m = cache.get_or_load(id, [&](int64_t k) {
          ++loads;
          return tiny(k);
        });
        ASSERT_EQ(m->reference_id, id);
      }
    });
  for (auto& th : threads) th.join();
  const MemoryCacheStats st = cache.stats();
  EXPECT_EQ(st.hits + st.misses, 16000u);
  EXPECT_EQ(st.misses, uint64_t(loads.load()));
  EXPECT_LE(st.entries, 16u);
}

// Using a bank through the cache: decoded once, served from RAM after; a chunk's misses are
// loaded with one read_many.
TEST_P(BankTest, CacheInFrontOfTheBank) {
  make_bank(tmp.file("b"), make_corpus(1, 3), 3);
  auto bank = reader(tmp.file("b"));
  MemoryCache cache(8);
  auto load = [&](int64_t id) { return bank->read(id); };
  const auto a = cache.get_or_load(2, load);
  const auto b = cache.get_or_load(2, load);
  EXPECT_EQ(a.get(), b.get());
  EXPECT_EQ(a->keys, bank->read(2).keys);
  EXPECT_EQ(cache.stats().hits, 1u);
  std::vector<std::vector<int64_t>> loads;
  const auto many = cache.get_or_load_many({0, 2, 1, 0}, [&](const std::vector<int64_t>& ids) {
    loads.push_back(ids);
    return bank->read_many(ids);
  });
  EXPECT_EQ(loads, (std::vector<std::vector<int64_t>>{{0, 1}}));
  ASSERT_EQ(many.size(), 4u);
  EXPECT_EQ(many[1].get(), a.get());
  EXPECT_EQ(many[0].get(), many[3].get());
  EXPECT_EQ(many[2]->keys, bank->read(1).keys);
  EXPECT_EQ(cache.stats().hits, 2u);
  EXPECT_EQ(cache.stats().misses, 3u);
}

}  // namespace
}  // namespace m3
