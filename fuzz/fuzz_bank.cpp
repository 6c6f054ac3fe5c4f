// fuzz_bank — opening and reading a memory bank from damaged files (src/memory/bank.cpp and the
// codecs it decodes with): the manifest, records.bin and the catalog's rows.
//
// At start-up three small valid banks are built in a scratch directory with a BankModel (the
// memory3-test shape: Lm 1, G 2, K 8, D 16; no weights): codecs bf16, int8 and a trained pq (pq:Residual2x4,PQ4x4: the paper form without OPQ, whose training takes minutes under ASan), four
// references and four memories each. Their files are kept in memory; every input restores one
// of them into a work directory and damages it. Byte 0 picks the bank (b % 3) and the damage
// ((b / 3) % 6); the rest of the input is the damage's data:
//   0  manifest.json := the data
//   1  records.bin patched: (u16 offset, u8 n, n bytes)...; checksums left as they are
//   2  as 1, then every whole record's checksum recomputed, so the decoders see the bytes
//   3  records.bin gets the data appended (a torn or extra tail)
//   4  records.bin := the data
//   5  catalog rows edited through SQLite: per 8-byte group a reference row (u8 id, 0..5),
//      n_tokens (i16), deleted (u8), then a tokens blob and a text of u8 lengths
// Then MemoryBank::open read-only: info(), every read() and reference() (up to 64), verify();
// and open for writing (which truncates a torn tail) and read the last record. Each call must
// return or throw m3::Error. And one consistency rule: when verify() reports no problem, every
// record reads.
//
// M3_FUZZ_WRITE_SEEDS=DIR fuzz_bank  writes the seed files of fuzz/corpus/bank and exits.
#include <sqlite3.h>
#include <xxhash.h>

#include <chrono>
#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "fuzz_common.h"
#include "m3/bank.h"
#include "m3/error.h"

namespace {

using namespace m3;
namespace fs = std::filesystem;

constexpr int kActions = 6;
constexpr int64_t kMaxReads = 64;

struct Template {
  std::string codec;
  std::map<std::string, std::string> files;  // name → bytes
  int64_t record_size = 0;
};
std::vector<Template> g_templates;

ExplicitMemory random_memory(const MemoryShape& s, int64_t id, int n_tokens, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  ExplicitMemory m;
  m.reference_id = id;
  m.n_tokens = n_tokens;
  m.resize(s);
  const int used = m.kept_tokens(s);
  for (int64_t s0 = 0; s0 < s.slots(); s0 += s.kept)
    for (int k = 0; k < used; ++k) {
      m.positions[size_t(s0 + k)] = int16_t(k * n_tokens / used);
      for (int d = 0; d < s.head_dim; ++d) {
        m.keys[size_t((s0 + k) * s.head_dim + d)] = normal(rng);
        m.values[size_t((s0 + k) * s.head_dim + d)] = normal(rng);
      }
    }
  return m;
}

Template build(const std::string& dir, const std::string& codec) {
  const BankModel model{"00112233aabbccdd", model_preset("memory3-test")};
  std::mt19937_64 rng(17);
  {
    auto bank = MemoryBank::create(dir, model, codec, codec);
    const MemoryShape s = bank->shape();
    if (bank->needs_training()) {
      std::vector<ExplicitMemory> sample;  // 2,048 vectors: 128 memories of 16 slots
      for (int i = 0; i < 128; ++i) sample.push_back(random_memory(s, i, 100, rng));
      bank->train_codecs(sample);
    }
    std::vector<Document> docs;
    std::vector<std::vector<ReferenceText>> refs;
    const int n_tokens[4] = {1, 5, 8, 100};
    for (int d = 0; d < 2; ++d) {
      Document doc{"doc" + std::to_string(d), "Title " + std::to_string(d), "fuzz", ""};
      std::vector<ReferenceText> rs;
      for (int r = 0; r < 2; ++r) {
        ReferenceText rt;
        rt.doc_id = doc.id;
        rt.text = "harpoon whale part " + std::to_string(r);
        rt.char_begin = int64_t(doc.text.size());
        doc.text += rt.text + "\n\n";
        rt.char_end = rt.char_begin + int64_t(rt.text.size());
        for (int i = 0; i < n_tokens[d * 2 + r]; ++i) rt.tokens.push_back(3 + i);
        rs.push_back(rt);
      }
      docs.push_back(doc);
      refs.push_back(rs);
    }
    bank->add_references(docs, refs);
    for (int64_t id = 0; id < 4; ++id) bank->append(random_memory(s, id, n_tokens[id], rng));
    bank->flush();
  }
  Template t;
  t.codec = codec;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && e.path().filename() != "LOCK") t.files[e.path().filename().string()] = fuzz::read_file(e.path().string());
  t.record_size = MemoryBank::open(dir, nullptr, false)->record_size();
  return t;
}

void restore(const Template& t, const std::string& dir) {
  std::error_code ec;
  fs::remove_all(dir, ec);
  fs::create_directories(dir);
  for (const auto& [name, bytes] : t.files) fuzz::write_file(dir + "/" + name, bytes);
}

void patch(std::string& file, fuzz::Bytes& in) {
  while (!in.empty() && !file.empty()) {
    const size_t off = in.u16() % file.size();
    const std::string bytes = in.take(in.u8());
    file.replace(off, std::min(bytes.size(), file.size() - off), bytes);
  }
}

void fix_checksums(std::string& records, int64_t record_size) {
  for (size_t at = 0; at + size_t(record_size) <= records.size(); at += size_t(record_size)) {
    const uint64_t h = XXH3_64bits(records.data() + at, size_t(record_size) - 8);
    std::memcpy(records.data() + at + size_t(record_size) - 8, &h, 8);
  }
}

void edit_catalog(const std::string& path, fuzz::Bytes& in) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr) != SQLITE_OK) std::abort();
  sqlite3_stmt* st = nullptr;
  sqlite3_prepare_v2(db,
                     "INSERT INTO refs(id, doc_key, text, char_begin, char_end, n_tokens, tokens, deleted) "
                     "VALUES (?1, 1, ?5, 0, length(?5), ?2, ?4, ?3) ON CONFLICT(id) DO UPDATE SET "
                     "n_tokens = ?2, deleted = ?3, tokens = ?4, text = ?5",
                     -1, &st, nullptr);
  if (st == nullptr) {
    std::fprintf(stderr, "fuzz_bank: %s\n", sqlite3_errmsg(db));
    std::abort();
  }
  for (int edits = 0; !in.empty() && edits < 8; ++edits) {
    const int id = in.u8() % 6;
    const int n_tokens = static_cast<int16_t>(in.u16());
    const int deleted = in.u8() % 3;
    const std::string tokens = in.take(in.u8());
    const std::string text = in.take(in.u8());
    sqlite3_bind_int(st, 1, id);
    sqlite3_bind_int(st, 2, n_tokens);
    sqlite3_bind_int(st, 3, deleted);
    sqlite3_bind_blob(st, 4, tokens.data(), int(tokens.size()), SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 5, text.data(), int(text.size()), SQLITE_TRANSIENT);
    sqlite3_step(st);  // a text the FTS5 triggers refuse simply leaves the row as it was
    sqlite3_reset(st);
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
}

void read_bank(const std::string& dir) {
  std::unique_ptr<MemoryBank> bank;
  try {
    bank = MemoryBank::open(dir, nullptr, false);
  } catch (const Error&) {
    return;
  }
  try { (void)bank->info(); } catch (const Error&) {}
  const int64_t memories = bank->memory_count();
  int64_t unreadable = -1;
  for (int64_t id = 0; id < std::min(memories, kMaxReads); ++id) {
    try {
      const ExplicitMemory m = bank->read(id);
      for (int16_t p : m.positions)
        if (p < -1 || p > 254) {
          std::fprintf(stderr, "fuzz_bank: record %lld has position %d\n", static_cast<long long>(id), p);
          std::abort();
        }
    } catch (const Error&) {
      if (unreadable < 0) unreadable = id;
    }
  }
  try { (void)bank->read(memories); } catch (const Error&) {}  // one past the end: an error, never a read
  try { (void)bank->read(-1); } catch (const Error&) {}
  try {
    for (int64_t id = 0; id < std::min(bank->reference_count(), kMaxReads); ++id) {
      try { (void)bank->reference(id); } catch (const Error&) {}
    }
  } catch (const Error&) {
  }
  try {
    const VerifyReport v = bank->verify();
    if (v.ok() && unreadable >= 0 && memories <= kMaxReads) {
      std::fprintf(stderr, "fuzz_bank: verify() found no problem but record %lld does not read\n",
                   static_cast<long long>(unreadable));
      std::abort();
    }
  } catch (const Error&) {
  }
  bank.reset();
  try {
    auto writer = MemoryBank::open(dir, nullptr, true);
    if (writer->memory_count() > 0) (void)writer->read(writer->memory_count() - 1);
  } catch (const Error&) {
  }
}

void write_seeds(const std::string& dir) {
  fs::create_directories(dir);
  const int n = static_cast<int>(g_templates.size());
  auto seed = [&](const std::string& name, int templ, int action, const std::string& data) {
    std::string s(1, static_cast<char>(templ + n * action));
    fuzz::write_file(dir + "/" + name, s + data);
  };
  for (int t = 0; t < n; ++t) {
    const std::string c = g_templates[size_t(t)].codec.substr(0, g_templates[size_t(t)].codec.find(':'));
    const std::string& manifest = g_templates[size_t(t)].files.at("manifest.json");
    seed("manifest-" + c, t, 0, manifest);
    seed("records-nothing-" + c, t, 1, "");
    seed("records-rechecksum-" + c, t, 2, std::string("\x30\x00\x04\x7f\x80\xff\x00", 7));
    seed("records-torn-tail-" + c, t, 3, std::string(40, '\x01'));
  }
  const std::string& m = g_templates[0].files.at("manifest.json");
  std::string shape = m;
  if (auto p = shape.find("\"kept\""); p != std::string::npos) shape.replace(p, 9, "\"kept\":-8");
  seed("manifest-bad-shape", 0, 0, shape);
  seed("manifest-truncated", 0, 0, m.substr(0, m.size() / 2));
  seed("records-whole", 1, 4, g_templates[1].files.at("records.bin").substr(0, 700));
  seed("catalog-edit", 0, 5, std::string("\x01\x05\x00\x00\x04\x01\x02\x03\x04\x03" "abc", 13));
  seed("catalog-new-row", 1, 5, std::string("\x04\x02\x00\x00\x08\x03\x00\x00\x00\x04\x00\x00\x00\x02" "hi", 16));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const std::string dir = fuzz::scratch_dir();
  for (const char* codec : {"bf16", "int8", "pq:Residual2x4,PQ4x4"}) {
    const auto t0 = std::chrono::steady_clock::now();
    g_templates.push_back(build(dir + "/template-" + codec, codec));
    std::fprintf(stderr, "fuzz_bank: %s template bank built in %.1f s\n", codec,
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  if (const char* seeds = std::getenv("M3_FUZZ_WRITE_SEEDS")) {
    write_seeds(seeds);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const std::string dir = fuzz::scratch_dir() + "/work";
  const Template& t = g_templates[data[0] % g_templates.size()];
  const int action = static_cast<int>(data[0] / g_templates.size()) % kActions;
  fuzz::Bytes in(data + 1, size - 1);
  restore(t, dir);
  std::string records = t.files.at("records.bin");
  switch (action) {
    case 0: fuzz::write_file(dir + "/manifest.json", in.rest()); break;
    case 1: patch(records, in); break;
    case 2: patch(records, in); fix_checksums(records, t.record_size); break;
    case 3: records += in.rest(); break;
    case 4: records = in.rest(); break;
    case 5: edit_catalog(dir + "/catalog.sqlite", in); break;
  }
  if (action >= 1 && action <= 4) fuzz::write_file(dir + "/records.bin", records);
  read_bank(dir);
  return 0;
}
