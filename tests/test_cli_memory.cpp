// The memory commands of the m3 CLI: `m3 memorize` (writing a bank, resuming it after SIGKILL at
// any moment), `m3 bank info|verify|show|delete|compact` and `m3 search`, checked against the
// libraries they drive (MemoryWriter, MemoryBank, the retrievers) and against corrupted files.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "m3/bank.h"
#include "m3/knowledge.h"
#include "m3/memory_writer.h"
#include "m3/model.h"
#include "m3/retriever.h"
#include "test_helpers.h"

extern char** environ;

namespace m3 {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using test::expect_error;
using test::run;
using Clock = std::chrono::steady_clock;

const std::string kData = M3_TEST_DATA;
const std::string kM3 = test::m3_binary();
const std::string kModel = kData + "/test-f32.gguf";

std::string q(const std::string& s) { return "'" + s + "'"; }

const Model& test_model() {
  static const std::unique_ptr<Model> model = Model::load(kModel);
  return *model;
}

// The last line of a failing command's output (progress lines may precede it).
std::string last_line(const std::string& out) {
  std::string s = out;
  while (!s.empty() && s.back() == '\n') s.pop_back();
  const size_t nl = s.rfind('\n');
  return nl == std::string::npos ? s : s.substr(nl + 1);
}

const std::vector<std::string> kWords = {"whale", "ship", "harpoon", "captain", "ocean", "sea",   "sail",  "wind",
                                         "storm", "island", "harbor", "anchor", "deck", "mast",  "crew",  "voyage",
                                         "fish",  "net",  "rope",    "tide",    "gull",  "reef",  "cargo", "compass"};

// The rare word of document d: found in no other document.
std::string rare_word(int d) { return std::string("quokka") + char('a' + d % 26) + char('a' + d / 26) + "zed"; }

// n_docs .txt files of n_paras paragraphs (lo..hi words each) in dir/name; document d's paragraph 1
// carries rare_word(d). Returns the folder.
std::string make_kb(const test::TempDir& dir, const std::string& name, int n_docs, int n_paras, int lo, int hi, uint64_t seed) {
  const std::string kb = dir.file(name);
  fs::create_directories(kb);
  std::mt19937_64 rng(seed);
  for (int d = 0; d < n_docs; ++d) {
    std::string text = "# Document " + std::to_string(d) + "\n\n";
    for (int p = 0; p < n_paras; ++p) {
      const int n = lo + int(rng() % uint64_t(hi - lo + 1));
      for (int w = 0; w < n; ++w) {
        text += kWords[rng() % kWords.size()];
        if (p == 1 && w == n / 2) {
          text += ' ';
          text += rare_word(d);
        }
        text += w + 1 < n ? " " : ".\n\n";
      }
    }
    char fname[32];
    std::snprintf(fname, sizeof fname, "doc%02d.txt", d);
    test::write_all(kb + "/" + fname, text);
  }
  return kb;
}

// The references `m3 memorize` makes of a knowledge base, flattened in id order.
std::vector<ReferenceText> split_kb(const std::string& kb, std::vector<Document>* docs_out = nullptr,
                                    std::vector<std::vector<ReferenceText>>* refs_out = nullptr) {
  const Model& m = test_model();
  std::vector<Document> docs = load_knowledge_base(kb);
  std::vector<std::vector<ReferenceText>> refs;
  std::vector<ReferenceText> flat;
  for (const Document& d : docs) {
    refs.push_back(split_into_references(d, *m.tokenizer(), m.config().memory.reference_length));
    flat.insert(flat.end(), refs.back().begin(), refs.back().end());
  }
  if (docs_out) *docs_out = docs;
  if (refs_out) *refs_out = refs;
  return flat;
}

std::string memorize_cmd(const std::string& kb, const std::string& bank, const std::string& extra = "") {
  return kM3 + " memorize -m " + q(kModel) + " --kb " + q(kb) + " -o " + q(bank) + " -t 1 " + extra;
}

void memorize_ok(const std::string& kb, const std::string& bank, const std::string& extra = "") {
  const auto r = run(memorize_cmd(kb, bank, extra));
  ASSERT_EQ(r.exit_code, 0) << r.out;
}

json run_json(const std::string& args) {
  const auto r = run(kM3 + " " + args);
  EXPECT_EQ(r.exit_code, 0) << args << "\n" << r.out;
  try {
    return json::parse(r.out);
  } catch (const json::exception& e) {
    ADD_FAILURE() << args << ": not JSON: " << r.out;
    return json::object();
  }
}

json search_json(const std::string& bank, const std::string& query, const std::string& extra) {
  return run_json("search " + q(bank) + " " + q(query) + " --json -t 1 " + extra);
}

// id → vector of a saved dense index (stored vectors are unit vectors).
std::map<int64_t, std::vector<float>> dense_vectors(const std::string& bank) {
  auto index = DenseIndex::load(bank + "/dense", "");
  std::map<int64_t, std::vector<float>> out;
  const int dim = index->dim();
  for (size_t r = 0; r < index->ids().size(); ++r)
    out[index->ids()[r]] = std::vector<float>(index->vectors().begin() + int64_t(r) * dim, index->vectors().begin() + int64_t(r + 1) * dim);
  return out;
}

// ---- memorize = the library ---------------------------------------------------------------------

TEST(CliMemorize, RecordsEqualTheLibrarysAndInfoAgrees) {
  test::TempDir dir;
  const std::string kb = make_kb(dir, "kb", 6, 8, 8, 40, 1);
  const std::string bank = dir.file("bank");
  memorize_ok(kb, bank);

  // The same bank through the libraries: MemoryWriter's memories appended in reference order.
  std::vector<Document> docs;
  std::vector<std::vector<ReferenceText>> refs;
  const std::vector<ReferenceText> flat = split_kb(kb, &docs, &refs);
  const int64_t n = int64_t(flat.size());
  ASSERT_GE(n, 30);
  ASSERT_LE(n, 80);
  std::vector<ExplicitMemory> written;
  {
    auto lib = MemoryBank::create(dir.file("lib"), test_model(), "bf16", "bf16");
    lib->add_references(docs, refs);
    ThreadPool pool(1);
    MemoryWriter writer(test_model(), &pool);
    for (int64_t id = 0; id < n; ++id) {
      written.push_back(writer.write(flat[size_t(id)].tokens, id));
      lib->append(written.back());
    }
  }
  const std::string records = test::read_all(bank + "/records.bin");
  EXPECT_EQ(records.size(), test::read_all(dir.file("lib") + "/records.bin").size());
  EXPECT_TRUE(records == test::read_all(dir.file("lib") + "/records.bin"));

  auto b = MemoryBank::open(bank, &test_model(), false);
  ASSERT_EQ(b->memory_count(), n);
  ASSERT_EQ(b->reference_count(), n);
  for (int64_t id = 0; id < n; ++id) {
    const ExplicitMemory m = b->read(id);
    EXPECT_EQ(m.n_tokens, int(flat[size_t(id)].tokens.size())) << id;
    EXPECT_EQ(m.positions, written[size_t(id)].positions) << id;
    // bf16 keeps 8 significant bits: relative error per element below 2^-8.
    EXPECT_LT(test::nmse(m.keys.data(), written[size_t(id)].keys.data(), m.keys.size()), 1e-4) << id;
    EXPECT_LT(test::nmse(m.values.data(), written[size_t(id)].values.data(), m.values.size()), 1e-4) << id;
    EXPECT_EQ(b->reference(id).text, flat[size_t(id)].text) << id;
  }

  // bank info --json = MemoryBank::info().
  const BankInfo i = b->info();
  const json j = run_json("bank info --json " + q(bank));
  EXPECT_EQ(j.value("model_fingerprint", ""), test_model().fingerprint());
  EXPECT_EQ(j.value("model_name", ""), i.model_name);
  EXPECT_EQ(j["shape"].value("layers", -1), i.shape.layers);
  EXPECT_EQ(j["shape"].value("kv_heads", -1), i.shape.kv_heads);
  EXPECT_EQ(j["shape"].value("kept", -1), i.shape.kept);
  EXPECT_EQ(j["shape"].value("head_dim", -1), i.shape.head_dim);
  EXPECT_EQ(j.value("key_codec", ""), "bf16");
  EXPECT_EQ(j.value("value_codec", ""), "bf16");
  EXPECT_EQ(j.value("documents", -1), int64_t(docs.size()));
  EXPECT_EQ(j.value("deleted_documents", -1), 0);
  EXPECT_EQ(j.value("references", -1), n);
  EXPECT_EQ(j.value("memories", -1), n);
  EXPECT_EQ(j.value("record_bytes", -1), i.record_bytes);
  EXPECT_EQ(j.value("code_bytes", -1), i.shape.slots() * i.shape.head_dim * 2 * 2);  // bf16 keys + values
  EXPECT_EQ(j.value("raw_bf16_bytes", -1), i.raw_bf16_bytes);
  EXPECT_EQ(j.value("full_kv_bytes", -1), i.full_kv_bytes);
  EXPECT_DOUBLE_EQ(j.value("compression_vs_bf16", 0.0), i.compression_vs_bf16);
  EXPECT_DOUBLE_EQ(j.value("compression_vs_full_kv", 0.0), i.compression_vs_full_kv);
  EXPECT_EQ(j.value("records_file_bytes", -1), int64_t(records.size()));
  EXPECT_EQ(j.value("records_file_bytes", -1), n * i.record_bytes);
  EXPECT_TRUE(j["dense_index"].is_object());
  const auto text = run(kM3 + " bank info " + q(bank));
  EXPECT_EQ(text.exit_code, 0);
  EXPECT_NE(text.out.find("bytes/memory   " + std::to_string(i.record_bytes) + " "), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("memories       " + std::to_string(n) + "\n"), std::string::npos) << text.out;

  const auto v = run(kM3 + " bank verify " + q(bank));
  EXPECT_EQ(v.exit_code, 0) << v.out;
  EXPECT_NE(v.out.find("ok: " + std::to_string(n) + " records verified"), std::string::npos) << v.out;

  // bank show reads a record back through the bank.
  const json s = run_json("bank show --json " + q(bank) + " 3");
  EXPECT_EQ(s["positions"].get<std::vector<int>>(), std::vector<int>(written[3].positions.begin(), written[3].positions.end()));
  EXPECT_EQ(s.value("doc_id", ""), flat[3].doc_id);

  // Running again does nothing and changes nothing.
  memorize_ok(kb, bank);
  EXPECT_TRUE(records == test::read_all(bank + "/records.bin"));
}

TEST(CliMemorize, CodecOptionsAreRecordedAndCheckedOnResume) {
  test::TempDir dir;
  const std::string kb = make_kb(dir, "kb", 3, 6, 8, 30, 2);
  const std::string bank = dir.file("bank");
  memorize_ok(kb, bank, "--key-codec f16 --value-codec int8 --retriever none");
  const json j = run_json("bank info --json " + q(bank));
  EXPECT_EQ(j.value("key_codec", ""), "f16");
  EXPECT_EQ(j.value("value_codec", ""), "int8");
  const MemoryShape s = MemoryShape::of(test_model().config());
  EXPECT_EQ(j.value("record_bytes", -1), MemoryBank::record_bytes(s, 2 * 16, 16 + 4));
  EXPECT_TRUE(j["dense_index"].is_null());
  const std::string records = test::read_all(bank + "/records.bin");

  auto r = run(memorize_cmd(kb, bank, "--codec bf16"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(last_line(r.out).rfind("m3: error: ", 0), 0u) << r.out;
  EXPECT_NE(r.out.find("key codec 'f16' and value codec 'int8'"), std::string::npos) << r.out;
  memorize_ok(kb, bank, "--retriever none");                                    // no codec options: the bank's
  memorize_ok(kb, bank, "--key-codec f16 --value-codec int8 --retriever none");  // the same ones
  EXPECT_TRUE(records == test::read_all(bank + "/records.bin"));

  // int8 decodes close to what the writer wrote.
  auto b = MemoryBank::open(bank, &test_model(), false);
  ThreadPool pool(1);
  MemoryWriter writer(test_model(), &pool);
  const std::vector<ReferenceText> flat = split_kb(kb);
  const ExplicitMemory w = writer.write(flat[2].tokens, 2), m = b->read(2);
  EXPECT_LT(test::nmse(m.values.data(), w.values.data(), w.values.size()), 1e-3);
  EXPECT_LT(test::nmse(m.keys.data(), w.keys.data(), w.keys.size()), 1e-5);

  // pq needs 9,984 training vectors; this knowledge base has far fewer.
  r = run(memorize_cmd(kb, dir.file("pq"), "--codec pq"));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_EQ(last_line(r.out).rfind("m3: error: ", 0), 0u) << r.out;
  EXPECT_NE(r.out.find("needs at least 9984 training vectors"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("--train-sample"), std::string::npos) << r.out;
}

// ---- crash safety -------------------------------------------------------------------------------

// Starts `m3 memorize` with a throttle (see cmd_memory.cpp) and output to `log`.
pid_t spawn_memorize(const std::string& kb, const std::string& bank, const std::string& log, double throttle_ms) {
  std::vector<std::string> args = {kM3, "memorize", "-m", kModel, "--kb", kb, "-o", bank, "-t", "1"};
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e)
    if (std::string(*e).rfind("M3_MEMORIZE_THROTTLE_MS=", 0) != 0) env.push_back(*e);
  env.push_back("M3_MEMORIZE_THROTTLE_MS=" + std::to_string(throttle_ms));
  std::vector<char*> argv, envp;
  for (auto& a : args) argv.push_back(a.data());
  for (auto& e : env) envp.push_back(e.data());
  argv.push_back(nullptr);
  envp.push_back(nullptr);
  const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  ::close(fd);
  return pid;
}

// Waits until `ready()` or the child exits; false when the child exited first.
bool wait_until(pid_t pid, const std::function<bool()>& ready, int* status) {
  const auto t0 = Clock::now();
  while (!ready()) {
    if (::waitpid(pid, status, WNOHANG) == pid) return false;
    if (Clock::now() - t0 > std::chrono::seconds(60)) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(300));
  }
  return true;
}

// Sleeps up to `ms` while the child runs; false when it exited first.
bool sleep_while_running(pid_t pid, double ms, int* status) {
  const auto end = Clock::now() + std::chrono::duration<double, std::milli>(ms);
  while (Clock::now() < end) {
    if (::waitpid(pid, status, WNOHANG) == pid) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(300));
  }
  return true;
}

TEST(CliMemorize, SigkillAtAnyMomentResumesToTheSameBank) {
  const auto t_test = Clock::now();
  test::TempDir dir;
  const std::string kb = make_kb(dir, "kb", 30, 12, 25, 45, 3);
  const int64_t total = int64_t(split_kb(kb).size());
  ASSERT_GE(total, 300);
  const std::string ref = dir.file("ref"), bank = dir.file("bank"), log = dir.file("log.txt");
  memorize_ok(kb, ref);
  const int64_t record_size = MemoryBank::open(ref, nullptr, false)->record_size();

  // Throttled to ~4 ms per memory and per embedding (and 40 ms between steps), a run takes ~3 s;
  // the dense index is first saved after 1 s of embedding. The kills:
  //   #1 just after memorize.json appears (inside bank creation), #2 just after manifest.json
  //   appears (before the catalog's references commit), #3..#9 at random 0..400 ms after the run
  //   appended its first memory (or at once when all are there: starting up, embedding), #10
  //   after the dense index's first save (mid-embedding), #11 at random 0..200 ms into a run that
  //   extends a saved index; then a run to the end.
  const double throttle_ms = 4;
  std::mt19937_64 rng(20240611);
  std::uniform_real_distribution<double> u01(0.0, 1.0);
  int kills = 0, saw_create = 0, saw_catalog = 0, saw_append = 0, saw_dense = 0;
  std::string phases;
  for (int attempt = 1; attempt <= 11; ++attempt) {
    const pid_t pid = spawn_memorize(kb, bank, log, throttle_ms);
    ASSERT_GT(pid, 0);
    int status = 0;
    bool running = true;
    auto exists = [](const std::string& path) { return [path] { return fs::exists(path); }; };
    const std::string records = bank + "/records.bin";
    std::error_code ec;
    const auto size0 = fs::exists(records) ? fs::file_size(records, ec) : 0;
    const auto appending = [&] {
      const auto size = fs::exists(records) ? fs::file_size(records, ec) : 0;
      return size > size0 || size0 == uintmax_t(total * record_size);
    };
    if (attempt == 1) running = wait_until(pid, exists(bank + "/memorize.json"), &status) && sleep_while_running(pid, 10 * u01(rng), &status);
    else if (attempt == 2) running = wait_until(pid, exists(bank + "/manifest.json"), &status) && sleep_while_running(pid, 10 * u01(rng), &status);
    else if (attempt <= 9) running = wait_until(pid, appending, &status) && sleep_while_running(pid, 400 * u01(rng), &status);
    else if (attempt == 10) running = wait_until(pid, exists(bank + "/dense.vec"), &status) && sleep_while_running(pid, 150 * u01(rng), &status);
    else running = sleep_while_running(pid, 200 * u01(rng), &status);
    if (!running) {
      ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "memorize failed:\n" << test::read_all(log);
      phases += " done";
      break;  // it finished before the kill
    }
    ::kill(pid, SIGKILL);
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status)) << test::read_all(log);
    ++kills;
    // Where did it die?
    if (!MemoryBank::exists(bank)) {
      saw_create += fs::exists(bank + "/memorize.json");
      phases += " create";
      continue;
    }
    auto b = MemoryBank::open(bank, nullptr, false);
    const int64_t refs = b->reference_count(), mems = b->memory_count();
    if (refs == 0) {
      ++saw_catalog;
      phases += " catalog";
    } else if (mems < total) {
      saw_append += mems > 0;
      phases += " append:" + std::to_string(mems);
    } else {
      const int64_t vectors = DenseIndex::exists(bank + "/dense") ? DenseIndex::load(bank + "/dense", "")->size() : 0;
      saw_dense += vectors > 0 && vectors < total;
      phases += " embed:" + std::to_string(vectors);
    }
  }
  // The last run, to the end.
  const pid_t pid = spawn_memorize(kb, bank, log, 0);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << test::read_all(log);

  const double seconds = std::chrono::duration<double>(Clock::now() - t_test).count();
  std::printf("kills: %d, died in:%s; test took %.1f s\n", kills, phases.c_str(), seconds);
  EXPECT_GE(kills, 10) << phases;
  EXPECT_GE(saw_create, 1) << phases;
  EXPECT_GE(saw_catalog, 1) << phases;
  EXPECT_GE(saw_append, 3) << phases;
  EXPECT_GE(saw_dense, 1) << phases;

  const std::string want = test::read_all(ref + "/records.bin"), got = test::read_all(bank + "/records.bin");
  EXPECT_EQ(got.size(), want.size());
  EXPECT_TRUE(got == want) << "records.bin differs from the uninterrupted build's";
  EXPECT_EQ(int64_t(want.size()), total * record_size);
  const auto v = run(kM3 + " bank verify " + q(bank));
  EXPECT_EQ(v.exit_code, 0) << v.out;
  EXPECT_NE(v.out.find("ok: " + std::to_string(total) + " records verified"), std::string::npos) << v.out;
  // The catalog and the dense index's vectors are the same too.
  json a = run_json("bank info --json " + q(ref)), b = run_json("bank info --json " + q(bank));
  for (json* x : {&a, &b}) {
    x->erase("dir");
    x->erase("model_path");
    (*x)["dense_index"].erase("bytes");  // the HNSW graph depends on insertion order
  }
  EXPECT_EQ(a, b);
  const auto va = dense_vectors(ref), vb = dense_vectors(bank);
  EXPECT_EQ(int64_t(va.size()), total);
  EXPECT_TRUE(va == vb) << "dense vectors differ";
}

// ---- damaged banks -------------------------------------------------------------------------------

TEST(CliBank, CorruptedAndTruncatedFilesAreNamed) {
  test::TempDir dir;
  const std::string kb = make_kb(dir, "kb", 4, 6, 8, 30, 4);
  const std::string bank = dir.file("bank");
  memorize_ok(kb, bank, "--retriever none");
  const std::string good = test::read_all(bank + "/records.bin");
  const int64_t rs = MemoryBank::open(bank, nullptr, false)->record_size();
  const int64_t n = int64_t(good.size()) / rs;
  ASSERT_GE(n, 12);

  // A flipped byte inside record 5 (in its key codes).
  std::string bad = good;
  bad[size_t(5 * rs + 24 + 40)] ^= 0x10;
  test::write_all(bank + "/records.bin", bad);
  auto r = run(kM3 + " bank verify " + q(bank));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("record 5 is corrupted"), std::string::npos) << r.out;
  EXPECT_EQ(last_line(r.out).rfind("m3: error: ", 0), 0u) << r.out;
  EXPECT_NE(last_line(r.out).find("corrupted records: 5"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("record 4 "), std::string::npos) << r.out;
  expect_error("bank show " + q(bank) + " 5", "record 5 is corrupted");
  EXPECT_EQ(run(kM3 + " bank show " + q(bank) + " 4").exit_code, 0);
  EXPECT_EQ(run(kM3 + " bank show " + q(bank) + " 6").exit_code, 0);

  // A torn tail: reading sees the complete records, verify names the partial one, and memorize
  // (opening for writing cuts the tail) resumes to the same bytes.
  test::write_all(bank + "/records.bin", good.substr(0, size_t((n - 3) * rs + rs / 2)));
  r = run(kM3 + " bank verify " + q(bank));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("ends with a partial record of " + std::to_string(rs / 2) + " bytes"), std::string::npos) << r.out;
  EXPECT_EQ(run_json("bank info --json " + q(bank)).value("memories", -1), n - 3);
  memorize_ok(kb, bank, "--retriever none");
  EXPECT_TRUE(test::read_all(bank + "/records.bin") == good);
  EXPECT_EQ(run(kM3 + " bank verify " + q(bank)).exit_code, 0);

  // A complete last record whose checksum fails (pages lost in a power cut): verify names it, a
  // writer drops and rewrites it.
  bad = good;
  bad[size_t((n - 1) * rs + 30)] ^= 0x01;
  test::write_all(bank + "/records.bin", bad);
  r = run(kM3 + " bank verify " + q(bank));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("record " + std::to_string(n - 1) + " is corrupted"), std::string::npos) << r.out;
  memorize_ok(kb, bank, "--retriever none");
  EXPECT_TRUE(test::read_all(bank + "/records.bin") == good);

  // The manifest: truncated, or valid JSON without the fields.
  const std::string manifest = test::read_all(bank + "/manifest.json");
  test::write_all(bank + "/manifest.json", manifest.substr(0, manifest.size() / 2));
  expect_error("bank info " + q(bank), "manifest.json is truncated or not JSON");
  expect_error("bank verify " + q(bank), "manifest.json is truncated or not JSON");
  expect_error("search " + q(bank) + " whale", "manifest.json is truncated or not JSON");
  expect_error("memorize -m " + q(kModel) + " --kb " + q(kb) + " -o " + q(bank), "manifest.json is truncated or not JSON");
  test::write_all(bank + "/manifest.json", "{\"format_version\": 2}");
  expect_error("bank info " + q(bank), "manifest.json is missing a field");
  test::write_all(bank + "/manifest.json", manifest);
  EXPECT_EQ(run(kM3 + " bank verify " + q(bank)).exit_code, 0);

  // Another model's weights.
  const std::string other = kData + "/test-mem4.gguf";
  const std::string other_fp = Model::load(other)->fingerprint();
  ASSERT_NE(other_fp, test_model().fingerprint());
  expect_error("memorize -m " + q(other) + " --kb " + q(kb) + " -o " + q(bank),
               "was written by model " + test_model().fingerprint() + ", not " + other_fp);
  EXPECT_TRUE(test::read_all(bank + "/records.bin") == good);
}

// ---- search, delete, compact ---------------------------------------------------------------------

TEST(CliSearch, Bm25DenseDeleteAndCompact) {
  test::TempDir dir;
  const std::string kb = make_kb(dir, "kb", 6, 8, 8, 40, 5);
  const std::string bank = dir.file("bank");
  memorize_ok(kb, bank);
  const std::vector<ReferenceText> flat = split_kb(kb);
  const int64_t n = int64_t(flat.size());
  auto id_with = [&](const std::string& word) {
    for (size_t i = 0; i < flat.size(); ++i)
      if (flat[i].text.find(word) != std::string::npos) return int64_t(i);
    return int64_t(-1);
  };

  // bm25: a rare word's reference is hit #1.
  for (int d : {0, 2, 5}) {
    const int64_t want = id_with(rare_word(d));
    ASSERT_GE(want, 0);
    const json j = search_json(bank, "tell me about the " + rare_word(d), "-k 3");
    ASSERT_GE(j["hits"].size(), 1u) << j.dump();
    EXPECT_EQ(j["hits"][0].value("id", -1), want) << j.dump();
    EXPECT_EQ(j["hits"][0].value("doc_id", ""), flat[size_t(want)].doc_id);
    EXPECT_EQ(j.value("retriever", ""), "bm25");
  }
  const auto text = run(kM3 + " search " + q(bank) + " " + rare_word(3) + " -k 2");
  EXPECT_EQ(text.exit_code, 0) << text.out;
  EXPECT_NE(text.out.find("doc03.txt"), std::string::npos) << text.out;

  // dense: exact and HNSW agree, and a reference's own text finds it.
  for (int64_t id : {int64_t(0), n / 2, n - 1}) {
    const json e = search_json(bank, flat[size_t(id)].text, "-k 5 --retriever dense:exact");
    const json h = search_json(bank, flat[size_t(id)].text, "-k 5 --retriever dense -m " + q(kModel));
    ASSERT_EQ(e["hits"].size(), 5u) << e.dump();
    ASSERT_EQ(h["hits"].size(), 5u) << h.dump();
    EXPECT_EQ(e["hits"][0].value("id", -1), id);
    EXPECT_EQ(h["hits"][0].value("id", -1), id);
    EXPECT_NEAR(e["hits"][0].value("score", 0.0), 1.0, 1e-4);
    EXPECT_EQ(e.value("retriever", ""), "dense:exact");
  }
  const json hy = search_json(bank, rare_word(4), "-k 4 --retriever hybrid");
  EXPECT_EQ(hy["hits"].size(), 4u);
  EXPECT_EQ(hy["hits"][0].value("id", -1), id_with(rare_word(4)));

  // Deleting a document removes it from every retriever at once.
  const int64_t doc3_ref = id_with(rare_word(3));
  int64_t doc3_refs = 0;
  for (const auto& r : flat) doc3_refs += r.doc_id == "doc03.txt";
  const auto del = run(kM3 + " bank delete " + q(bank) + " doc03.txt");
  ASSERT_EQ(del.exit_code, 0) << del.out;
  expect_error("bank delete " + q(bank) + " doc03.txt", "no document 'doc03.txt'");
  for (const char* spec : {"bm25", "dense", "dense:exact", "hybrid"}) {
    for (const std::string& query : {rare_word(3), flat[size_t(doc3_ref)].text}) {
      const json j = search_json(bank, query, std::string("-k 10 --retriever ") + spec);
      // Only doc03 holds its rare word, so bm25 has nothing left to find for it.
      EXPECT_EQ(j["hits"].empty(), std::string(spec) == "bm25" && query == rare_word(3)) << spec << " " << query;
      for (const json& h : j["hits"]) EXPECT_NE(h.value("doc_id", ""), "doc03.txt") << spec << " " << query;
    }
  }
  EXPECT_EQ(run_json("bank info --json " + q(bank)).value("deleted_documents", -1), 1);
  auto v = run(kM3 + " bank verify " + q(bank));
  EXPECT_EQ(v.exit_code, 0) << v.out;
  EXPECT_NE(v.out.find("dense index of " + std::to_string(n - doc3_refs) + " vectors"), std::string::npos) << v.out;

  // Compacting drops the records and renumbers; the dense index follows.
  const auto c = run(kM3 + " bank compact -t 1 " + q(bank));
  ASSERT_EQ(c.exit_code, 0) << c.out;
  v = run(kM3 + " bank verify " + q(bank));
  EXPECT_EQ(v.exit_code, 0) << v.out;
  const json info = run_json("bank info --json " + q(bank));
  EXPECT_EQ(info.value("references", -1), n - doc3_refs);
  EXPECT_EQ(info.value("memories", -1), n - doc3_refs);
  EXPECT_EQ(info.value("documents", -1), 5);
  EXPECT_EQ(info.value("deleted_references", -1), 0);
  auto b = MemoryBank::open(bank, &test_model(), false);
  const int64_t last = n - doc3_refs - 1;
  const std::string last_text = b->reference(last).text;
  EXPECT_EQ(last_text, flat.back().text);
  for (const char* spec : {"dense", "dense:exact"}) {
    const json j = search_json(bank, last_text, std::string("-k 1 --retriever ") + spec);
    ASSERT_EQ(j["hits"].size(), 1u);
    EXPECT_EQ(j["hits"][0].value("id", -1), last) << spec;
  }
  EXPECT_EQ(search_json(bank, rare_word(5), "-k 1")["hits"][0].value("id", -1), id_with(rare_word(5)) - doc3_refs);
  // Records were copied, not re-coded: the last memory is the one the uninterrupted writer makes.
  ThreadPool pool(1);
  MemoryWriter writer(test_model(), &pool);
  EXPECT_EQ(b->read(last).positions, writer.write(flat.back().tokens).positions);
}

// ---- bad input ------------------------------------------------------------------------------------

TEST(CliMemory, BadInputIsOneLineErrors) {
  test::TempDir dir;
  const std::string kb = make_kb(dir, "kb", 3, 6, 8, 20, 6);
  const std::string bank = dir.file("bank");
  const std::string m = " -m " + q(kModel);
  ASSERT_GE(split_kb(kb).size(), 8u);
  expect_error("memorize" + m + " --kb " + q(dir.file("nope")) + " -o " + q(bank), "knowledge base not found");
  fs::create_directories(dir.file("empty"));
  expect_error("memorize" + m + " --kb " + q(dir.file("empty")) + " -o " + q(bank), "holds no documents");
  fs::create_directories(dir.file("blank"));
  test::write_all(dir.file("blank/a.txt"), "  \n\n  ");
  expect_error("memorize" + m + " --kb " + q(dir.file("blank")) + " -o " + q(bank), "hold no text");
  expect_error("memorize" + m + " --kb " + q(kb) + " -o " + q(bank) + " --codec zstd", "zstd");
  expect_error("memorize" + m + " --kb " + q(kb) + " -o " + q(bank) + " --key-codec pq:Bogus", "Bogus");
  expect_error("memorize" + m + " --kb " + q(kb) + " -o " + q(bank) + " --retriever bm25", "--retriever 'bm25'");
  expect_error("memorize" + m + " --kb " + q(kb) + " -o " + q(bank) + " --limit 0", "--limit");
  expect_error("memorize" + m + " --kb " + q(kb) + " -o " + q(bank) + " --embed-layer 9", "--embed-layer 9");
  EXPECT_FALSE(MemoryBank::exists(bank));
  fs::create_directories(dir.file("notabank"));
  test::write_all(dir.file("notabank/notes.txt"), "mine");
  expect_error("memorize" + m + " --kb " + q(kb) + " -o " + q(dir.file("notabank")), "non-empty directory without a bank");
  EXPECT_EQ(test::read_all(dir.file("notabank/notes.txt")), "mine");

  memorize_ok(kb, bank, "--retriever none --limit 5");
  EXPECT_EQ(run_json("bank info --json " + q(bank)).value("memories", -1), 5);
  // The same bank from other input.
  expect_error("memorize" + m + " --kb " + q(kb) + " -o " + q(bank), "written from other input");
  const std::string kb2 = make_kb(dir, "kb2", 3, 6, 8, 20, 7);
  ASSERT_GE(split_kb(kb2).size(), 5u);
  expect_error("memorize" + m + " --kb " + q(kb2) + " -o " + q(bank) + " --limit 5", "differs from");

  expect_error("search " + q(bank) + " whale -k 0", "-k must be >= 1");
  expect_error("search " + q(bank) + " whale -k -2", "-k must be >= 1");
  expect_error("search " + q(bank) + " whale -k ten", "-k 'ten' is not a whole number");
  expect_error("search " + q(bank) + " whale --retriever bm42", "unknown retriever 'bm42'");
  expect_error("search " + q(bank) + " whale --retriever dense:fast", "unknown dense mode 'fast'");
  expect_error("search " + q(bank) + " whale --retriever dense", "has no dense index");
  expect_error("search " + q(dir.file("nope")) + " whale", "no such directory");
  expect_error("bank info " + q(dir.file("nope")), "no such directory");
  expect_error("bank verify " + q(kb), "no manifest.json");
  expect_error("bank show " + q(bank) + " 99", "no reference 99");
  expect_error("bank show " + q(bank) + " x", "not a number");

  // A dense index refuses another model's weights.
  const std::string dense = dir.file("dense");
  memorize_ok(kb, dense, "--limit 4");
  expect_error("search " + q(dense) + " whale --retriever dense -m " + q(kData + "/test-mem4.gguf"), test_model().fingerprint());
  // ... and another embedder's vectors.
  expect_error("memorize" + m + " --kb " + q(kb) + " -o " + q(dense) + " --limit 4 --embed-layer 1", "give the same --embed-layer");
  memorize_ok(kb, dense, "--limit 4 --embed-layer 0");

  for (const char* sub : {"memorize", "bank", "bank info", "bank verify", "bank show", "bank delete", "bank compact", "search"}) {
    const auto h = run(kM3 + " " + sub + " --help");
    EXPECT_EQ(h.exit_code, 0) << sub;
    EXPECT_NE(h.out.find("OPTIONS"), std::string::npos) << sub << ": " << h.out;
  }
  const auto h = run(kM3 + " memorize --help");
  EXPECT_NE(h.out.find("bf16 (the paper's raw form)"), std::string::npos);
}

}  // namespace
}  // namespace m3

// ---- generate --bank: memories are read, and the provenance names them ------------------------------

namespace m3 {
namespace {

TEST(CliGenerate, BankReadsRetrievedMemoriesAndReportsThem) {
  test::TempDir dir;
  const std::string kb = make_kb(dir, "kb", 4, 6, 10, 20, 7);
  const std::string bank = dir.file("bank");
  memorize_ok(kb, bank, "--retriever none");
  // The reference that holds document 2's rare word: bm25 must bring it to the prompt's chunk.
  auto b = MemoryBank::open(bank, nullptr, false);
  int64_t rare_id = -1;
  for (int64_t id = 0; id < b->reference_count(); ++id)
    if (b->reference(id).text.find(rare_word(2)) != std::string::npos) rare_id = id;
  ASSERT_GE(rare_id, 0);
  const std::string prompt = "The captain saw the " + rare_word(2) + " near the harbor.";
  const auto r = run(kM3 + " generate -m " + q(kModel) + " --bank " + q(bank) + " -p " + q(prompt) +
                     " -n 70 --greedy --ignore-eos --memories -t 1");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("chunk 0 (tokens 0.."), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("chunk 1 (tokens 64.."), std::string::npos) << "decoding crossed into chunk 1:\n" << r.out;
  EXPECT_NE(r.out.find("  #" + std::to_string(rare_id) + "  "), std::string::npos) << r.out;
  // --rag: the same reference goes into the prompt as text instead (the prompt grows by it).
  const auto rag = run(kM3 + " generate -m " + q(kModel) + " --bank " + q(bank) + " --rag --rag-references 1 -p " + q(prompt) +
                       " -n 5 --greedy --memories -t 1");
  ASSERT_EQ(rag.exit_code, 0) << rag.out;
  EXPECT_NE(rag.out.find("  #" + std::to_string(rare_id) + "  "), std::string::npos) << rag.out;
  const size_t at = rag.out.find("rag: the prompt carried 1 references (");
  ASSERT_NE(at, std::string::npos) << rag.out;
  const int rag_tokens = std::atoi(rag.out.c_str() + at + std::strlen("rag: the prompt carried 1 references ("));
  const int bare_tokens = int(test_model().tokenizer()->encode(prompt, true).size());
  EXPECT_GT(rag_tokens, bare_tokens + 20) << "the reference's text went into the prompt:\n" << rag.out;
  EXPECT_EQ(run(kM3 + " generate -m " + q(kModel) + " --rag -p hi -n 2").exit_code, 1);
  // Without the bank the same command runs as a plain LM and reports nothing.
  const auto plain = run(kM3 + " generate -m " + q(kModel) + " -p " + q(prompt) + " -n 10 --greedy -t 1");
  EXPECT_EQ(plain.exit_code, 0) << plain.out;
  // A bank of another model is refused before generating.
  const auto other = run(kM3 + " generate -m " + q(kData + "/test-mem4.gguf") + " --bank " + q(bank) + " -p hi -n 2");
  EXPECT_EQ(other.exit_code, 1) << other.out;
  EXPECT_NE(other.out.find("m3: error: "), std::string::npos) << other.out;
}

}  // namespace
}  // namespace m3
