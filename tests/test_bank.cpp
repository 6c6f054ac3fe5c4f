// The memory bank (records, manifest, catalog, crash safety, compaction) and the LRU cache.
// Memories here are random numbers of the right shape; the memory writer has its own tests.
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <random>
#include <thread>

#include "m3/bank.h"
#include "m3/dtype.h"
#include "m3/error.h"
#include "m3/memory_cache.h"
#include "m3/model.h"
#include "test_helpers.h"

namespace m3 {
namespace {

namespace fs = std::filesystem;
const std::string kData = M3_TEST_DATA;

const Model& test_model() {
  static const std::unique_ptr<Model> model = Model::load(kData + "/test-f32.gguf");
  return *model;
}

using test::error_of;

// A memory of reference `id` with n_tokens tokens: sorted distinct kept positions, normal values.
ExplicitMemory random_memory(const MemoryShape& s, int64_t id, int n_tokens, uint64_t seed) {
  std::mt19937_64 rng(seed * 7919 + uint64_t(id));
  std::normal_distribution<float> normal(0.0f, 1.5f);
  ExplicitMemory m;
  m.reference_id = id;
  m.n_tokens = n_tokens;
  m.resize(s);
  const int used = m.kept_tokens(s);
  std::vector<int16_t> all(static_cast<size_t>(n_tokens));
  for (int i = 0; i < n_tokens; ++i) all[size_t(i)] = int16_t(i);
  for (int64_t s0 = 0; s0 < s.slots(); s0 += s.kept) {
    std::shuffle(all.begin(), all.end(), rng);
    std::vector<int16_t> pick(all.begin(), all.begin() + used);
    std::sort(pick.begin(), pick.end());
    for (int k = 0; k < used; ++k) {
      m.positions[size_t(s0 + k)] = pick[size_t(k)];
      for (int d = 0; d < s.head_dim; ++d) {
        m.keys[size_t((s0 + k) * s.head_dim + d)] = normal(rng);
        m.values[size_t((s0 + k) * s.head_dim + d)] = normal(rng);
      }
    }
  }
  return m;
}

// Documents doc0..doc{n_docs-1}, each with refs_per_doc references of varying lengths.
struct Corpus {
  std::vector<Document> docs;
  std::vector<std::vector<ReferenceText>> refs;
  std::vector<int> n_tokens;  // by reference id
};

Corpus make_corpus(int n_docs, int refs_per_doc) {
  Corpus c;
  const std::vector<std::string> words = {"whale", "ship", "harpoon", "captain", "ocean"};
  for (int d = 0; d < n_docs; ++d) {
    Document doc{"doc" + std::to_string(d), "Title " + std::to_string(d), "src", ""};
    std::vector<ReferenceText> refs;
    for (int r = 0; r < refs_per_doc; ++r) {
      ReferenceText rt;
      rt.doc_id = doc.id;
      rt.text = words[size_t(d) % words.size()] + " number" + std::to_string(d) + " part" + std::to_string(r);
      rt.char_begin = int64_t(doc.text.size());
      doc.text += rt.text + "\n\n";
      rt.char_end = rt.char_begin + int64_t(rt.text.size());
      const int n = 1 + (d * 37 + r * 11) % 128;  // 1..128 tokens, some shorter than K
      for (int i = 0; i < n; ++i) rt.tokens.push_back(3 + i);
      c.n_tokens.push_back(n);
      refs.push_back(rt);
    }
    c.docs.push_back(doc);
    c.refs.push_back(refs);
  }
  return c;
}

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

TEST(Bank, RoundTripBf16AndReopen) {
  test::TempDir tmp;
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
  auto bank = MemoryBank::open(dir, &test_model(), false);
  EXPECT_FALSE(bank->writable());
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
  EXPECT_THROW(bank->reference(99), Error);
  EXPECT_TRUE(bank->verify().ok()) << problems(bank->verify());
  EXPECT_THROW(bank->append(random_memory(s, 12, 5, 1)), Error);  // read-only
}

TEST(Bank, F16AndInt8Codecs) {
  test::TempDir tmp;
  const Corpus c = make_corpus(2, 3);
  const MemoryShape s = MemoryShape::of(test_model().config());
  for (const std::string codec : {"f16", "int8"}) {
    auto bank = make_bank(tmp.file(codec), c, 6, codec);
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

TEST(Bank, AppendChecksItsInput) {
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

TEST(Bank, CreateOpenAndManifestErrors) {
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

TEST(Bank, CorruptedRecordIsReportedAndNeverReturned) {
  test::TempDir tmp;
  const std::string dir = tmp.file("bank");
  const Corpus c = make_corpus(2, 4);
  int64_t rs = 0;
  {
    auto bank = make_bank(dir, c, 8);
    rs = bank->record_size();
  }
  std::string bytes = test::read_all(dir + "/records.bin");
  bytes[size_t(3 * rs + rs / 2)] ^= 0x10;  // a bit in record 3's codes
  bytes[size_t(6 * rs + 1)] ^= 0x01;       // record 6's magic
  test::write_all(dir + "/records.bin", bytes);
  auto bank = MemoryBank::open(dir, nullptr, false);
  const VerifyReport v = bank->verify();
  EXPECT_EQ(v.corrupted, (std::vector<int64_t>{3, 6}));
  EXPECT_EQ(v.records_checked, 8);
  EXPECT_FALSE(v.ok());
  EXPECT_NE(error_of([&] { bank->read(3); }).find("bank " + dir + ": record 3 is corrupted (checksum mismatch)"),
            std::string::npos);
  EXPECT_THROW(bank->read(6), Error);
  EXPECT_NO_THROW(bank->read(2));
  EXPECT_NO_THROW(bank->read(7));

  // A record copied to the wrong slot has a valid checksum but the wrong id.
  std::string moved = test::read_all(dir + "/records.bin");
  moved.replace(size_t(1 * rs), size_t(rs), moved.substr(size_t(0), size_t(rs)));
  test::write_all(dir + "/records.bin", moved);
  auto bank2 = MemoryBank::open(dir, nullptr, false);
  EXPECT_EQ(bank2->verify().corrupted, (std::vector<int64_t>{1, 3, 6}));
}

// Simulates a crash at every stage of an append: records.bin cut at many byte offsets (and a
// zeroed last record, as after a power loss). Opening for write must resume at the last
// complete record and finish with exactly the bytes of an uninterrupted build.
TEST(Bank, TruncatedRecordsResumeToSameBytes) {
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

TEST(Bank, DeleteAndCompact) {
  test::TempDir tmp;
  const std::string dir = tmp.file("bank");
  const Corpus c = make_corpus(3, 3);
  const MemoryShape s = MemoryShape::of(test_model().config());
  auto bank = make_bank(dir, c, 8);  // reference 8 (doc2's last) is not memorized yet

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

TEST(Bank, InfoNumbers) {
  // The paper's 2.4B shape: 22 memory layers × 8 KV heads × 8 tokens × 80 dims.
  test::TempDir tmp;
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
  auto reopened = MemoryBank::open(tmp.file("paper"), nullptr, false);
  EXPECT_EQ(reopened->info().record_bytes, i.record_bytes);
  EXPECT_EQ(reopened->model().fingerprint, "0123456789abcdef");
  EXPECT_EQ(reopened->shape(), s);
  EXPECT_EQ(reopened->model().config.n_heads, 40);

  // The test model: Lm 1, G 2, K 8, D 16.
  auto small = make_bank(tmp.file("small"), make_corpus(1, 2), 2);
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

// Using a bank through the cache: decoded once, served from RAM after.
TEST(MemoryCache, InFrontOfABank) {
  test::TempDir tmp;
  auto bank = make_bank(tmp.file("b"), make_corpus(1, 3), 3);
  MemoryCache cache(8);
  auto load = [&](int64_t id) { return bank->read(id); };
  const auto a = cache.get_or_load(2, load);
  const auto b = cache.get_or_load(2, load);
  EXPECT_EQ(a.get(), b.get());
  EXPECT_EQ(a->keys, bank->read(2).keys);
  EXPECT_EQ(cache.stats().hits, 1u);
}

}  // namespace
}  // namespace m3
