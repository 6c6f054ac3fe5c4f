// m3 memorize / bank / search: writing a knowledge base's explicit memories into a bank, looking
// after the bank, and searching it.
//
// Besides the bank's own files (m3/bank.h), a bank written by `m3 memorize` holds:
//   memorize.json        how it was written: the model file's path and fingerprint, the codec specs
//                        asked for, the knowledge base; replaced atomically. `m3 search` takes the
//                        model path from it; a resumed memorize compares codec options with it.
//   dense.vec, .hnsw     the dense retrieval index (m3/retriever.h, DenseIndex::save), ids = the
//                        catalog's reference ids, tagged with the embedder's spec.
//
// Resuming: every step of memorize is idempotent and checks what is already there, so a process
// killed at any point and started again with the same arguments ends with the same files as an
// uninterrupted run (records.bin byte for byte; the dense index with the same vectors):
//   1. no manifest → write memorize.json, MemoryBank::create (which clears an unfinished create);
//   2. no references in the catalog → add them all (one transaction);
//   3. codecs untrained → write memories for an evenly spaced sample and train (deterministic);
//   4. append memories memory_count() .. reference_count()−1 (the bank cuts a torn tail on open);
//   5. embed the live references missing from the dense index, drop deleted ones, save.
//
// Test hook: M3_MEMORIZE_THROTTLE_MS=x sleeps x ms after each memory/embedding and 10·x ms between
// the steps above, so that a crash test's kills land inside each step.
//
// `m3 bank push BANK redis://...` copies a bank to a Redis Cluster (m3/bank_remote.h,
// docs/redis-cluster.md); info, verify and show also take such a URI (its files are fetched into
// the default cache directory). Test hook: M3_PUSH_THROTTLE_MS=x sleeps x ms after each batch.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "m3/bank.h"
#include "m3/bank_remote.h"
#include "m3/bank_retriever.h"
#include "m3/codec.h"
#include "m3/embedder.h"
#include "m3/error.h"
#include "m3/file_io.h"
#include "m3/knowledge.h"
#include "m3/memory_writer.h"
#include "m3/model.h"
#include "m3/progress.h"
#include "m3/retriever.h"
#include "m3/thread_pool.h"

namespace m3::cli {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr const char* kSideFile = "memorize.json";
constexpr int kFlushEvery = 64;             // records between fdatasyncs of records.bin
constexpr int64_t kDefaultTrainSample = 512;  // 512 × 1408 slots ≥ 638,976: full 14/10-bit pq at 2.4B
constexpr int kEmbedMaxTokens = 512;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string clean_dir(std::string d) {
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  return d;
}
std::string side_path(const std::string& bank) { return bank + "/" + kSideFile; }

void throttle(double factor = 1.0) {
  static const double ms = [] {
    const char* e = std::getenv("M3_MEMORIZE_THROTTLE_MS");
    return e ? std::atof(e) : 0.0;
  }();
  if (ms > 0) std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(ms * factor));
}

// ---- memorize.json ----------------------------------------------------------------------------

json read_side(const std::string& bank) {
  const std::string path = side_path(bank);
  if (!fs::exists(path)) return json::object();
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    json j = json::parse(ss.str());
    if (!j.is_object()) throw Error(path + ": not a JSON object");
    return j;
  } catch (const json::exception& e) {
    throw Error(path + ": not JSON (" + e.what() + ")");
  }
}

// A reader sees the old or the new file, never a mix.
void write_side(const std::string& bank, const json& j) { write_file_atomic(side_path(bank), j.dump(2) + "\n"); }

// ---- the dense index beside a bank ------------------------------------------------------------

// Removes `ids` no longer live (deleted or past the catalog) from a dense index; returns how many.
int64_t drop_dead(DenseIndex& index, const std::vector<char>& live) {
  std::vector<int64_t> dead;
  for (int64_t id : index.ids())
    if (id < 0 || id >= int64_t(live.size()) || !live[size_t(id)]) dead.push_back(id);
  for (int64_t id : dead) index.remove(id);
  return int64_t(dead.size());
}

// live[id] for every catalog reference.
std::vector<char> live_references(const MemoryBank& bank) {
  const int64_t n = bank.reference_count();
  std::vector<char> live(size_t(n), 0);
  for (int64_t id = 0; id < n; ++id) live[size_t(id)] = !bank.reference(id).deleted;
  return live;
}

// ---- text helpers -----------------------------------------------------------------------------

// One line of at most max_bytes bytes: whitespace runs become one space, cut at a UTF-8 boundary.
std::string one_line(const std::string& s, size_t max_bytes) {
  std::string out;
  bool space = false;
  for (char ch : s) {
    if (ch == '\n' || ch == '\r' || ch == '\t' || ch == '\f' || ch == '\v' || ch == ' ') {
      space = !out.empty();
      continue;
    }
    if (space) out += ' ';
    space = false;
    out += ch;
  }
  if (out.size() <= max_bytes) return out;
  size_t cut = max_bytes;
  while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xC0) == 0x80) --cut;
  return out.substr(0, cut) + "...";
}

int parse_positive(const std::string& s, const std::string& what) {
  int v = 0;
  const char* b = s.data();
  const char* e = s.data() + s.size();
  const auto r = std::from_chars(b, e, v);
  if (r.ec != std::errc() || r.ptr != e || b == e) throw Error(what + " '" + s + "' is not a whole number");
  if (v < 1) throw Error(what + " must be >= 1, got " + s);
  return v;
}

const Tokenizer& need_tokenizer(const Model& m, const std::string& path) {
  if (!m.tokenizer())
    throw Error(path + ": the model file carries no tokenizer (create it with `m3 init --train-tokenizer` or `--tokenizer`)");
  return *m.tokenizer();
}

// Whether a codec asked for now is the one a bank was made with. `recorded` is what memorize.json
// says was asked for; without it, the manifest's spec, where "pq" has become its trained form.
bool codec_matches(const std::string& asked, const std::string& recorded, bool from_side) {
  if (asked == recorded) return true;
  return !from_side && asked == "pq" && recorded.rfind("pq", 0) == 0;
}

json info_json(const BankInfo& i) {
  return {{"dir", i.dir},
          {"model_fingerprint", i.model_fingerprint},
          {"model_name", i.model_name},
          {"model_architecture", i.model_architecture},
          {"shape", {{"layers", i.shape.layers}, {"kv_heads", i.shape.kv_heads}, {"kept", i.shape.kept}, {"head_dim", i.shape.head_dim}}},
          {"prefix_text", i.prefix_text},
          {"key_codec", i.key_codec},
          {"value_codec", i.value_codec},
          {"documents", i.documents},
          {"deleted_documents", i.deleted_documents},
          {"references", i.references},
          {"deleted_references", i.deleted_references},
          {"memories", i.memories},
          {"record_bytes", i.record_bytes}, {"code_bytes", i.code_bytes},
          {"raw_bf16_bytes", i.raw_bf16_bytes},
          {"full_kv_bytes", i.full_kv_bytes},
          {"compression_vs_bf16", i.compression_vs_bf16},
          {"compression_vs_full_kv", i.compression_vs_full_kv},
          {"records_file_bytes", i.records_file_bytes},
          {"payload", i.payload}};
}

// A bank directory for `location`: itself, or the cache a redis:// bank is fetched into.
std::string local_bank_dir(const std::string& location) {
  return is_remote_bank(location) ? fetch_remote_bank(location).dir : clean_dir(location);
}

// ---- memorize ---------------------------------------------------------------------------------

struct MemorizeOpts {
  std::string model, kb, out, codec = "bf16", key_codec, value_codec, retriever = "dense";
  int64_t train_sample = kDefaultTrainSample, limit = 0;
  int embed_layer = -1, threads = 0;
  CLI::Option *codec_opt = nullptr, *key_opt = nullptr, *value_opt = nullptr, *limit_opt = nullptr, *embed_opt = nullptr;
};

// A directory memorize may create a bank in: missing, empty, or an unfinished bank of its own.
void check_new_bank_dir(const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) return;
  if (!fs::is_directory(dir, ec)) throw Error(dir + " exists and is not a directory: give a new directory with -o");
  bool empty = true, ours = false;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    empty = false;
    const std::string name = e.path().filename().string();
    if (name == "LOCK" || name == kSideFile || name == "catalog.sqlite" || name == "records.bin") ours = true;
  }
  if (!empty && !ours)
    throw Error(dir + " is a non-empty directory without a bank (no manifest.json): give a new directory with -o");
}

void memorize(const MemorizeOpts& o) {
  const auto t_start = Clock::now();
  const std::string out = clean_dir(o.out);
  if (o.retriever != "dense" && o.retriever != "none")
    throw Error("--retriever '" + o.retriever + "' is not one of dense, none");
  if (o.train_sample < 1) throw Error("--train-sample must be >= 1");
  if (o.limit_opt->count() && o.limit < 1) throw Error("--limit must be >= 1");
  const bool codec_given = o.codec_opt->count() || o.key_opt->count() || o.value_opt->count();
  const std::string key_spec = o.key_opt->count() ? o.key_codec : o.codec;
  const std::string value_spec = o.value_opt->count() ? o.value_codec : o.codec;

  auto model = Model::load(o.model, FileLoad::Read);
  const Tokenizer& tok = need_tokenizer(*model, o.model);
  const ModelConfig& c = model->config();
  if (c.memory.memory_layers <= 0) throw Error(o.model + ": the model has no memory layers");
  make_codec(key_spec, c.head_dim);  // a bad spec fails here, before anything is written
  make_codec(value_spec, c.head_dim);
  if (o.embed_opt->count() && (o.embed_layer < 0 || o.embed_layer >= c.n_layers))
    throw Error("--embed-layer " + std::to_string(o.embed_layer) + " is outside 0.." + std::to_string(c.n_layers - 1));

  // The knowledge base, split into references (deterministic: the same input gives the same ids).
  std::vector<Document> docs = load_knowledge_base(o.kb);
  if (docs.empty()) throw Error(o.kb + ": the knowledge base holds no documents (.txt, .md or .jsonl files)");
  std::vector<std::vector<ReferenceText>> refs;
  int64_t total = 0;
  for (size_t d = 0; d < docs.size(); ++d) {
    if (o.limit_opt->count() && total >= o.limit) {
      docs.resize(d);
      break;
    }
    refs.push_back(split_into_references(docs[d], tok, c.memory.reference_length));
    if (o.limit_opt->count() && total + int64_t(refs.back().size()) > o.limit) refs.back().resize(size_t(o.limit - total));
    total += int64_t(refs.back().size());
  }
  if (total == 0) throw Error(o.kb + ": the knowledge base's " + std::to_string(docs.size()) + " document(s) hold no text");
  std::vector<const ReferenceText*> flat;
  for (const auto& rs : refs)
    for (const ReferenceText& r : rs) flat.push_back(&r);

  // 1. The bank.
  std::unique_ptr<MemoryBank> bank;
  json side;
  const std::string model_abs = fs::absolute(o.model).lexically_normal().string();
  const std::string kb_abs = fs::absolute(o.kb).lexically_normal().string();
  if (!MemoryBank::exists(out)) {
    check_new_bank_dir(out);
    std::error_code ec;
    fs::create_directories(out, ec);
    if (ec) throw Error(out + ": cannot create directory (" + ec.message() + ")");
    side = {{"format", 1}, {"key_codec", key_spec}, {"value_codec", value_spec}};
    side["model_path"] = model_abs;
    side["model_fingerprint"] = model->fingerprint();
    side["knowledge_base"] = kb_abs;
    write_side(out, side);
    throttle(10);
    bank = MemoryBank::create(out, *model, key_spec, value_spec);
    std::fprintf(stderr, "created bank %s (key codec %s, value codec %s)\n", out.c_str(), key_spec.c_str(), value_spec.c_str());
  } else {
    bank = MemoryBank::open(out, model.get(), true);
    side = read_side(out);
    const bool from_side = side.contains("key_codec") && side.contains("value_codec");
    const std::string have_key = from_side ? side["key_codec"].get<std::string>() : bank->key_codec().spec();
    const std::string have_value = from_side ? side["value_codec"].get<std::string>() : bank->value_codec().spec();
    if (codec_given && (!codec_matches(key_spec, have_key, from_side) || !codec_matches(value_spec, have_value, from_side)))
      throw Error("bank " + out + " was made with key codec '" + have_key + "' and value codec '" + have_value + "', not '" +
                  key_spec + "' and '" + value_spec + "': memorize into a new directory (-o), or leave out the codec options to resume");
    side["key_codec"] = have_key;
    side["value_codec"] = have_value;
    side["format"] = 1;
    side["model_path"] = model_abs;
    side["model_fingerprint"] = model->fingerprint();
    side["knowledge_base"] = kb_abs;
    write_side(out, side);
  }
  throttle(10);

  // 2. The catalog: all references in one transaction, or the same ones already there.
  std::vector<char> live(size_t(total), 1);
  const int64_t have = bank->reference_count();
  if (have == 0) {
    bank->add_references(docs, refs);
  } else if (have != total) {
    throw Error("bank " + out + " holds " + std::to_string(have) + " references, but " + o.kb + " splits into " +
                std::to_string(total) + (o.limit_opt->count() ? " (with --limit)" : "") +
                ": the bank was written from other input; memorize into a new directory (-o)");
  } else {
    for (int64_t id = 0; id < total; ++id) {
      const ReferenceInfo r = bank->reference(id);
      if (r.doc_id != flat[size_t(id)]->doc_id || r.text != flat[size_t(id)]->text)
        throw Error("bank " + out + ": reference " + std::to_string(id) + " (document '" + r.doc_id + "') differs from " +
                    o.kb + "'s (document '" + flat[size_t(id)]->doc_id +
                    "'): the bank was written from other input; memorize into a new directory (-o)");
      live[size_t(id)] = !r.deleted;
    }
  }
  if (bank->memory_count() > total)
    throw Error("bank " + out + " holds " + std::to_string(bank->memory_count()) + " memories but only " +
                std::to_string(total) + " references");
  throttle(10);

  ThreadPool pool(resolve_threads(o.threads));
  MemoryWriter writer(*model, &pool);

  // 3. Codec training on an evenly spaced sample of references.
  if (bank->needs_training()) {
    const int64_t n = std::min(total, o.train_sample);
    std::vector<ExplicitMemory> sample;
    sample.reserve(size_t(n));
    ProgressBar bar("sample", n, "ref");
    int64_t vectors = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t id = i * total / n;
      sample.push_back(writer.write(flat[size_t(id)]->tokens, id));
      vectors += int64_t(sample.back().kept_tokens(writer.shape())) * writer.shape().layers * writer.shape().kv_heads;
      bar.update(i + 1);
      throttle();
    }
    bar.finish();
    std::fprintf(stderr, "training codecs on %lld memories (%lld key and %lld value vectors)...\n",
                 static_cast<long long>(n), static_cast<long long>(vectors), static_cast<long long>(vectors));
    const auto t0 = Clock::now();
    try {
      bank->train_codecs(sample);
    } catch (const Error& e) {
      throw Error(std::string(e.what()) + " (from " + std::to_string(n) +
                  " references: raise --train-sample, memorize a larger knowledge base, or use a codec without training: "
                  "bf16, f16, int8)");
    }
    std::fprintf(stderr, "trained: key codec %s, value codec %s (%.1f s)\n", bank->key_codec().spec().c_str(),
                 bank->value_codec().spec().c_str(), seconds_since(t0));
    throttle(10);
  }

  // 4. The memories, in reference order.
  const int64_t start = bank->memory_count();
  if (start < total) {
    if (start > 0) std::fprintf(stderr, "resuming at reference %lld of %lld\n", static_cast<long long>(start), static_cast<long long>(total));
    ProgressBar bar("memorize", total, "ref", start);
    for (int64_t id = start; id < total; ++id) {
      bank->append(writer.write(flat[size_t(id)]->tokens, id));
      if ((id + 1 - start) % kFlushEvery == 0) bank->flush();
      bar.update(id + 1);
      throttle();
    }
    bank->flush();
    bar.finish();
  }
  throttle(10);

  // 5. The dense index: the live references it lacks, none that are gone. Saved at the end and
  // every so often (at least 1 s apart, and at most ~5% of the time goes to saving), so that a
  // resumed run extends what an interrupted one embedded.
  int64_t dense_vectors = -1;
  if (o.retriever == "dense") {
    // The layer: as asked, else the existing index's, else the last memory layer.
    const std::string dpath = bank_dense_path(out);
    int embed_layer = o.embed_layer >= 0 ? o.embed_layer : c.memory.memory_layers - 1;
    std::string have_tag;
    if (DenseIndex::exists(dpath)) {
      have_tag = read_dense_tag(dpath);
      if (o.embed_layer < 0) embed_layer = parse_model_embedder_spec(have_tag, dpath + ".vec").layer;
    }
    auto embedder = std::make_shared<ModelEmbedder>(*model, embed_layer, &pool, kEmbedMaxTokens);
    if (!have_tag.empty() && have_tag != embedder->spec())
      throw Error("bank " + out + ": its dense index holds vectors of embedder '" + have_tag + "', not '" + embedder->spec() +
                  "': give the same --embed-layer, or remove " + dpath + ".vec to rebuild the index");
    DenseRetriever dense(embedder, DenseSearch::Hnsw, dpath, HnswOptions{}, &pool);
    DenseIndex& index = dense.index();
    bool changed = drop_dead(index, live) > 0 || !DenseIndex::exists(dpath);
    int64_t missing = 0;
    for (int64_t id = 0; id < total; ++id) missing += live[size_t(id)] && !index.contains(id);
    if (missing > 0) {
      ProgressBar bar("embed", missing, "ref");
      auto last_save = Clock::now();
      double save_seconds = 0;
      int64_t done = 0;
      for (int64_t id = 0; id < total; ++id) {
        if (!live[size_t(id)] || index.contains(id)) continue;
        dense.add(id, flat[size_t(id)]->text);
        bar.update(++done);
        changed = true;
        if (seconds_since(last_save) > std::max(1.0, 20 * save_seconds)) {
          const auto t0 = Clock::now();
          dense.save();
          save_seconds = seconds_since(t0);
          last_save = Clock::now();
          changed = false;
        }
        throttle();
      }
      bar.finish();
    }
    if (changed) dense.save();
    dense_vectors = index.size();
  }

  const BankInfo info = bank->info();
  std::string dense_note = dense_vectors >= 0 ? ", dense index " + std::to_string(dense_vectors) + " vectors" : "";
  std::fprintf(stderr,
               "bank %s: %lld references in %lld documents, %lld memories (%lld new); %lld B per memory "
               "(%.2fx compression vs raw bf16 %lld B, %.1fx vs the full KV cache)%s; %.1f s\n",
               out.c_str(), static_cast<long long>(info.references), static_cast<long long>(info.documents),
               static_cast<long long>(info.memories), static_cast<long long>(info.memories - start),
               static_cast<long long>(info.record_bytes), info.compression_vs_bf16, static_cast<long long>(info.raw_bf16_bytes),
               info.compression_vs_full_kv, dense_note.c_str(), seconds_since(t_start));
}

// ---- bank -------------------------------------------------------------------------------------

void bank_info(const std::string& dir_arg, bool as_json) {
  const std::string dir = local_bank_dir(dir_arg);
  auto bank = MemoryBank::open(dir, nullptr, false);
  const BankInfo i = bank->info();
  const json side = read_side(dir);
  const std::string dpath = bank_dense_path(dir);
  const bool dense = DenseIndex::exists(dpath);
  std::string dense_tag;
  int64_t dense_bytes = 0;
  if (dense) {
    dense_tag = read_dense_tag(dpath);
    std::error_code ec;
    dense_bytes = int64_t(fs::file_size(dpath + ".vec", ec));
    const auto h = fs::file_size(dpath + ".hnsw", ec);
    if (!ec) dense_bytes += int64_t(h);
  }
  if (as_json) {
    json j = info_json(i);
    j["dense_index"] = dense ? json{{"embedder", dense_tag}, {"bytes", dense_bytes}} : json(nullptr);
    j["model_path"] = side.value("model_path", "");
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  const MemoryShape& s = i.shape;
  std::printf("bank           %s\n", i.dir.c_str());
  std::printf("model          %s (%s), fingerprint %s%s\n", i.model_name.c_str(), i.model_architecture.c_str(),
              i.model_fingerprint.c_str(), side.contains("model_path") ? (", written by " + side["model_path"].get<std::string>()).c_str() : "");
  std::printf("memory shape   Lm=%d G=%d K=%d D=%d (%lld slots), prefix \"%s\"\n", s.layers, s.kv_heads, s.kept, s.head_dim,
              static_cast<long long>(s.slots()), i.prefix_text.c_str());
  std::printf("codecs         key %s, value %s\n", i.key_codec.c_str(), i.value_codec.c_str());
  std::printf("documents      %lld (%lld deleted)\n", static_cast<long long>(i.documents), static_cast<long long>(i.deleted_documents));
  std::printf("references     %lld (%lld deleted)\n", static_cast<long long>(i.references), static_cast<long long>(i.deleted_references));
  std::printf("memories       %lld\n", static_cast<long long>(i.memories));
  std::printf("bytes/memory   %lld on disk (header, positions and checksum included)\n", static_cast<long long>(i.record_bytes));
  std::printf("kv codes       %lld per memory (keys and values only: the paper's measure)\n", static_cast<long long>(i.code_bytes));
  std::printf("raw bf16       %lld per memory; compression %.2fx vs bf16, %.1fx vs the full KV cache (%lld)\n",
              static_cast<long long>(i.raw_bf16_bytes), i.compression_vs_bf16, i.compression_vs_full_kv,
              static_cast<long long>(i.full_kv_bytes));
  if (is_remote_bank(i.payload))
    std::printf("records        %lld bytes (%s) in %s\n", static_cast<long long>(i.records_file_bytes),
                human_bytes(double(i.records_file_bytes)).c_str(), i.payload.c_str());
  else
    std::printf("records.bin    %lld bytes (%s)\n", static_cast<long long>(i.records_file_bytes),
                human_bytes(double(i.records_file_bytes)).c_str());
  if (dense)
    std::printf("dense index    %s (%s), embedder %s\n", (dpath + ".vec").c_str(), human_bytes(double(dense_bytes)).c_str(), dense_tag.c_str());
  else
    std::printf("dense index    none\n");
}

void bank_verify(const std::string& dir_arg) {
  const std::string dir = local_bank_dir(dir_arg);
  auto bank = MemoryBank::open(dir, nullptr, false);
  const VerifyReport r = bank->verify();
  std::vector<std::string> problems;
  for (int64_t id : r.corrupted) problems.push_back("record " + std::to_string(id) + " is corrupted (magic, id or checksum)");
  for (const std::string& p : r.problems) problems.push_back(p);
  // The dense index, when there is one: intact, and holding exactly the live references.
  const std::string dpath = bank_dense_path(dir);
  int64_t dense_vectors = -1;
  if (DenseIndex::exists(dpath)) {
    try {
      auto index = DenseIndex::load(dpath, read_dense_tag(dpath));
      const std::vector<char> live = live_references(*bank);
      int64_t stale = 0, missing = 0;
      for (int64_t id : index->ids()) stale += id < 0 || id >= int64_t(live.size()) || !live[size_t(id)];
      for (int64_t id = 0; id < int64_t(live.size()); ++id) missing += live[size_t(id)] && !index->contains(id);
      if (stale) problems.push_back("dense index holds " + std::to_string(stale) + " deleted or unknown reference ids");
      if (missing) problems.push_back("dense index lacks " + std::to_string(missing) + " live references (resume m3 memorize)");
      dense_vectors = index->size();
    } catch (const Error& e) {
      problems.push_back(std::string("dense index: ") + e.what());
    }
  }
  for (const std::string& p : problems) std::fprintf(stderr, "bank %s: %s\n", dir.c_str(), p.c_str());
  if (!problems.empty()) {
    std::string ids;
    for (size_t k = 0; k < r.corrupted.size() && k < 10; ++k) ids += (k ? ", " : "") + std::to_string(r.corrupted[k]);
    if (r.corrupted.size() > 10) ids += ", ...";
    throw Error("bank " + dir + " failed verification: " + std::to_string(problems.size()) + " problem(s)" +
                (r.corrupted.empty() ? "" : "; corrupted records: " + ids));
  }
  std::printf("ok: %lld records verified%s\n", static_cast<long long>(r.records_checked),
              dense_vectors >= 0 ? (", dense index of " + std::to_string(dense_vectors) + " vectors consistent").c_str() : "");
}

void bank_show(const std::string& dir_arg, const std::string& id_arg, bool as_json) {
  const std::string dir = local_bank_dir(dir_arg);
  int64_t id = 0;
  {
    const char* b = id_arg.data();
    const char* e = b + id_arg.size();
    const auto r = std::from_chars(b, e, id);
    if (r.ec != std::errc() || r.ptr != e || b == e || id < 0) throw Error("reference id '" + id_arg + "' is not a number >= 0");
  }
  auto bank = MemoryBank::open(dir, nullptr, false);
  const ReferenceInfo ref = bank->reference(id);
  const bool has_memory = id < bank->memory_count();
  ExplicitMemory m;
  if (has_memory) m = bank->read(id);
  const MemoryShape& s = bank->shape();
  auto norm = [&](const std::vector<float>& x, int64_t slot) {
    double ss = 0;
    for (int d = 0; d < s.head_dim; ++d) ss += double(x[size_t(slot * s.head_dim + d)]) * x[size_t(slot * s.head_dim + d)];
    return std::sqrt(ss);
  };
  if (as_json) {
    json j = {{"id", id}, {"doc_id", ref.doc_id}, {"doc_title", ref.doc_title}, {"text", ref.text}, {"char_begin", ref.char_begin},
              {"char_end", ref.char_end}, {"n_tokens", ref.tokens.size()}, {"deleted", ref.deleted}, {"memorized", has_memory}};
    if (has_memory) {
      j["positions"] = m.positions;
      std::vector<double> kn, vn;
      for (int64_t slot = 0; slot < s.slots(); ++slot) {
        kn.push_back(norm(m.keys, slot));
        vn.push_back(norm(m.values, slot));
      }
      j["key_norms"] = kn;
      j["value_norms"] = vn;
    }
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("reference %lld of document '%s'%s, bytes %lld..%lld, %zu tokens%s\n", static_cast<long long>(id), ref.doc_id.c_str(),
              ref.doc_title.empty() ? "" : (" (" + ref.doc_title + ")").c_str(), static_cast<long long>(ref.char_begin),
              static_cast<long long>(ref.char_end), ref.tokens.size(), ref.deleted ? ", deleted" : "");
  std::printf("text   %s\n", one_line(ref.text, 200).c_str());
  if (!has_memory) {
    std::printf("memory none yet (the bank holds %lld memories)\n", static_cast<long long>(bank->memory_count()));
    return;
  }
  for (int l = 0; l < s.layers; ++l)
    for (int g = 0; g < s.kv_heads; ++g) {
      const int64_t s0 = (int64_t(l) * s.kv_heads + g) * s.kept;
      std::string pos;
      double kn = 0, vn = 0;
      int used = 0;
      for (int k = 0; k < s.kept; ++k) {
        const int p = m.positions[size_t(s0 + k)];
        if (k) pos += ' ';
        pos += std::to_string(p);
        if (p >= 0) {
          kn += norm(m.keys, s0 + k);
          vn += norm(m.values, s0 + k);
          ++used;
        }
      }
      std::printf("layer %2d head %2d  positions [%s]  mean |k| %.3f  mean |v| %.3f\n", l, g, pos.c_str(), used ? kn / used : 0.0,
                  used ? vn / used : 0.0);
    }
}

void bank_delete(const std::string& dir_arg, const std::string& doc_id) {
  const std::string dir = clean_dir(dir_arg);
  auto bank = MemoryBank::open(dir, nullptr, true);
  const int64_t n = bank->delete_document(doc_id);
  const std::string dpath = bank_dense_path(dir);
  int64_t removed = 0;
  if (DenseIndex::exists(dpath)) {
    // A crash before this save leaves the deleted ids in the index; search skips deleted
    // references, and the next memorize or delete drops them.
    const std::string tag = read_dense_tag(dpath);
    ThreadPool pool(1);
    auto index = DenseIndex::load(dpath, tag, HnswOptions{}, &pool);
    removed = drop_dead(*index, live_references(*bank));
    if (removed) index->save(dpath, tag);
  }
  std::printf("deleted document '%s': %lld references (their records stay until `m3 bank compact`)%s\n", doc_id.c_str(),
              static_cast<long long>(n), removed ? (", " + std::to_string(removed) + " removed from the dense index").c_str() : "");
}

void bank_compact(const std::string& dir_arg, int threads) {
  const std::string dir = clean_dir(dir_arg);
  auto bank = MemoryBank::open(dir, nullptr, true);
  const json side = read_side(dir);
  const std::vector<char> live = live_references(*bank);
  // compact() swaps in a new directory holding only the bank's own files: keep memorize.json and
  // the dense index in memory, and write them into the new directory with the ids renumbered
  // (survivors keep their order, so new id = rank among the live ids). A crash before they are
  // written leaves a bank without a dense index (search says so; nothing wrong is ever returned).
  const std::string dpath = bank_dense_path(dir);
  std::unique_ptr<DenseIndex> old_index;
  std::string tag;
  ThreadPool pool(resolve_threads(threads));
  if (DenseIndex::exists(dpath)) {
    tag = read_dense_tag(dpath);
    old_index = DenseIndex::load(dpath, tag, HnswOptions{}, &pool);
  }
  const int64_t removed = bank->compact();
  if (!side.empty()) write_side(dir, side);
  int64_t vectors = -1;
  if (old_index) {
    std::vector<int64_t> new_id(live.size(), -1);
    int64_t next = 0;
    for (size_t i = 0; i < live.size(); ++i)
      if (live[i]) new_id[i] = next++;
    const int dim = old_index->dim();
    std::vector<int64_t> ids;
    std::vector<float> x;
    const auto old_ids = old_index->ids();
    const auto old_x = old_index->vectors();
    for (size_t r = 0; r < old_ids.size(); ++r) {
      const int64_t id = old_ids[r];
      if (id < 0 || id >= int64_t(live.size()) || new_id[size_t(id)] < 0) continue;
      ids.push_back(new_id[size_t(id)]);
      x.insert(x.end(), old_x.begin() + int64_t(r) * dim, old_x.begin() + int64_t(r + 1) * dim);
    }
    DenseIndex index(dim, old_index->options());
    index.add(ids, x, &pool);
    index.save(dpath, tag);
    vectors = index.size();
  }
  const BankInfo i = bank->info();
  std::printf("compacted %s: removed %lld references; %lld references, %lld memories left%s\n", dir.c_str(),
              static_cast<long long>(removed), static_cast<long long>(i.references), static_cast<long long>(i.memories),
              vectors >= 0 ? (", dense index renumbered (" + std::to_string(vectors) + " vectors)").c_str() : "");
}

void bank_push(const std::string& dir_arg, const std::string& uri, int batch, bool verify) {
  const std::string dir = clean_dir(dir_arg);
  PushOptions o;
  o.batch_records = batch;
  o.verify = verify;
  if (const char* t = std::getenv("M3_PUSH_THROTTLE_MS")) o.throttle_ms = std::atof(t);  // test hook
  std::unique_ptr<ProgressBar> bar;
  std::string phase;
  o.on_progress = [&](const PushProgress& p) {
    if (phase != p.phase) {
      if (bar) bar->finish();
      phase = p.phase;
      bar = std::make_unique<ProgressBar>(std::string("push ") + p.phase, p.total, phase == "files" ? "files" : "rec");
    }
    bar->update(p.done);
  };
  const PushReport r = push_bank(dir, uri, o);
  if (bar) bar->finish();
  std::printf("pushed %s to %s: %lld records (resumed at %lld, copied %lld, verified %lld, rewritten %lld); "
              "files: %d sent (%s), %d unchanged; %d masters, replicas %s; %.1f s\n",
              dir.c_str(), uri.c_str(), static_cast<long long>(r.records), static_cast<long long>(r.resumed_at),
              static_cast<long long>(r.copied), static_cast<long long>(r.verified), static_cast<long long>(r.rewritten),
              r.files_sent, human_bytes(double(r.file_bytes_sent)).c_str(), r.files_unchanged, r.masters,
              r.replicated ? "in sync" : "NOT in sync yet (check the cluster)", r.seconds);
}

// ---- search -----------------------------------------------------------------------------------

struct SearchOpts {
  std::string bank, query, k = "5", retriever = "bm25", model;
  bool json = false;
  int threads = 0;
};

// Stands in for the real embedder while make_retriever checks a spec.
class NullEmbedder : public Embedder {
 public:
  int dim() const override { return 1; }
  std::vector<float> embed(const std::string&) const override { return {0.0f}; }
  std::string spec() const override { return "null"; }
};

void search(const SearchOpts& o) {
  const int k = parse_positive(o.k, "-k");
  const std::string dir = clean_dir(o.bank);
  const std::string kind = o.retriever.substr(0, o.retriever.find(':'));
  if (kind != "bm25" && kind != "dense" && kind != "hybrid") make_retriever(o.retriever, {});  // throws, listing the forms

  std::unique_ptr<Model> model;
  std::unique_ptr<MemoryBank> bank;
  RetrieverOptions ro;
  ro.catalog_path = dir + "/catalog.sqlite";
  std::unique_ptr<ThreadPool> pool;
  if (kind == "bm25") {
    bank = MemoryBank::open(dir, nullptr, false);
  } else {
    bank = MemoryBank::open(dir, nullptr, false);  // the bank's own errors first
    {
      // The whole spec is checked before the model is loaded.
      RetrieverOptions check = ro;
      check.embedder = std::make_shared<NullEmbedder>();
      make_retriever(o.retriever, check);
    }
    const std::string dpath = bank_dense_path(dir);
    if (!DenseIndex::exists(dpath))
      throw Error("bank " + dir + " has no dense index (" + dpath + ".vec): `m3 memorize` builds it unless given --retriever none");
    std::string model_path = o.model;
    if (model_path.empty()) {
      const json side = read_side(dir);
      model_path = side.value("model_path", "");
      if (model_path.empty()) throw Error("bank " + dir + " does not record its model's path: give the model with -m");
      if (!fs::exists(model_path))
        throw Error("bank " + dir + " was written with " + model_path + ", which is gone: give the model with -m");
    }
    model = Model::load(model_path, FileLoad::Map);
    bank = MemoryBank::open(dir, model.get(), false);  // refuses another model's bank
    need_tokenizer(*model, model_path);
    const ModelEmbedderSpec es = parse_model_embedder_spec(read_dense_tag(dpath), dpath + ".vec");
    pool = std::make_unique<ThreadPool>(resolve_threads(o.threads));
    ro.embedder = std::make_shared<ModelEmbedder>(*model, es.layer, pool.get(), es.max_tokens);
    ro.index_path = dpath;
    ro.pool = pool.get();
  }
  auto retriever = make_retriever(o.retriever, ro);

  // A dense index may still hold references deleted just before a crash: skip them.
  std::vector<std::pair<SearchHit, ReferenceInfo>> hits;
  const int64_t deleted = bank->info().deleted_references;
  for (int depth = k;; depth = int(std::min<int64_t>(int64_t(k) + deleted, 1 << 30))) {
    hits.clear();
    const std::vector<SearchHit> raw = retriever->search(o.query, depth);
    for (const SearchHit& h : raw) {
      ReferenceInfo r = bank->reference(h.id);
      if (!r.deleted && int(hits.size()) < k) hits.emplace_back(h, std::move(r));
    }
    if (int(hits.size()) >= k || int(raw.size()) < depth || depth >= k + deleted) break;
  }

  if (o.json) {
    json j = {{"query", o.query}, {"retriever", retriever->spec()}, {"hits", json::array()}};
    for (size_t i = 0; i < hits.size(); ++i) {
      const auto& [h, r] = hits[i];
      j["hits"].push_back({{"rank", i + 1}, {"id", h.id}, {"score", h.score}, {"doc_id", r.doc_id}, {"doc_title", r.doc_title},
                           {"text", r.text}});
    }
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  if (hits.empty()) {
    std::fprintf(stderr, "no hits (%s)\n", retriever->spec().c_str());
    return;
  }
  std::printf("%4s  %6s  %9s  %-20s  %s\n", "rank", "id", "score", "document", "text");
  for (size_t i = 0; i < hits.size(); ++i) {
    const auto& [h, r] = hits[i];
    std::printf("%4zu  %6lld  %9.4f  %-20s  %s\n", i + 1, static_cast<long long>(h.id), double(h.score),
                one_line(r.doc_id, 40).c_str(), one_line(r.text, 100).c_str());
  }
}

}  // namespace

void register_memorize(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "memorize",
      "Write the explicit memories of a knowledge base into a memory bank (resumable: run it again after an interruption)");
  auto o = std::make_shared<MemorizeOpts>();
  cmd->add_option("-m,--model", o->model, "Model file (GGUF) whose memory layers write the memories")->required();
  cmd->add_option("--kb", o->kb, "Knowledge base: a folder of .txt/.md/.jsonl files, or one such file")->required();
  cmd->add_option("-o,--output", o->out, "Bank directory (created, or resumed when it holds a bank)")->required();
  o->codec_opt = cmd->add_option("--codec", o->codec,
                                 "Codec of keys and values: bf16 (the paper's raw form), f16, int8, pq (the paper's "
                                 "OPQ-Residual-PQ scaled to the head dim, trained), or pq:<FAISS factory string>")
                     ->capture_default_str();
  o->key_opt = cmd->add_option("--key-codec", o->key_codec, "Codec of the keys (overrides --codec)");
  o->value_opt = cmd->add_option("--value-codec", o->value_codec, "Codec of the values (overrides --codec)");
  cmd->add_option("--train-sample", o->train_sample, "References whose memories train a pq codec (evenly spaced; all when fewer)")
      ->capture_default_str();
  cmd->add_option("--retriever", o->retriever, "Index to build beside the bank: dense (hnsw over model-mean embeddings) or none "
                                               "(bm25 needs no index)")
      ->capture_default_str();
  o->embed_opt = cmd->add_option("--embed-layer", o->embed_layer, "Layer whose mean residual stream embeds texts (default: the last memory layer)");
  cmd->add_option("-t,--threads", o->threads, "Threads (0 = all cores)")->capture_default_str();
  o->limit_opt = cmd->add_option("--limit", o->limit, "Only the first N references of the knowledge base");
  cmd->callback([o] { memorize(*o); });
}

void register_bank(CLI::App& app) {
  auto* cmd = app.add_subcommand("bank", "Inspect, verify, delete from, compact and push a memory bank");
  cmd->require_subcommand(1);

  auto dir = std::make_shared<std::string>();
  auto as_json = std::make_shared<bool>(false);
  auto* info = cmd->add_subcommand("info", "Print a bank's model, shape, codecs, counts and bytes per memory");
  info->add_option("bank", *dir, "Bank directory or redis:// URI")->required();
  info->add_flag("--json", *as_json, "Machine-readable output");
  info->callback([dir, as_json] { bank_info(*dir, *as_json); });

  auto* verify = cmd->add_subcommand("verify", "Check every record's checksum and the catalog (and the dense index); exit 1 on any problem");
  verify->add_option("bank", *dir, "Bank directory or redis:// URI")->required();
  verify->callback([dir] { bank_verify(*dir); });

  auto id = std::make_shared<std::string>();
  auto* show = cmd->add_subcommand("show", "Print one reference and its memory (kept positions, key and value norms)");
  show->add_option("bank", *dir, "Bank directory or redis:// URI")->required();
  show->add_option("id", *id, "Reference id")->required()->type_name("INT");
  show->add_flag("--json", *as_json, "Machine-readable output");
  show->callback([dir, id, as_json] { bank_show(*dir, *id, *as_json); });

  auto doc = std::make_shared<std::string>();
  auto* del = cmd->add_subcommand("delete", "Delete a document: its references leave search at once, its records at the next compact");
  del->add_option("bank", *dir, "Bank directory")->required();
  del->add_option("doc_id", *doc, "Document id (a file's path relative to the knowledge base folder, or a JSONL id)")->required();
  del->callback([dir, doc] { bank_delete(*dir, *doc); });

  auto threads = std::make_shared<int>(0);
  auto* compact = cmd->add_subcommand("compact", "Rewrite the bank without deleted documents (reference ids are renumbered; "
                                                 "the dense index follows)");
  compact->add_option("bank", *dir, "Bank directory")->required();
  compact->add_option("-t,--threads", *threads, "Threads for rebuilding the dense index's graph (0 = all cores)")->capture_default_str();
  compact->callback([dir, threads] { bank_compact(*dir, *threads); });

  auto uri = std::make_shared<std::string>();
  auto batch = std::make_shared<int>(256);
  auto no_verify = std::make_shared<bool>(false);
  auto* push = cmd->add_subcommand("push", "Copy a bank to a Redis Cluster (redis://host:port[,host:port...]/NAME): records in "
                                           "pipelined batches, resumable, read back and verified; then its files");
  push->add_option("bank", *dir, "Bank directory")->required();
  push->add_option("uri", *uri, "redis://host:port[,host:port...]/NAME[?connect_timeout_ms=N&command_timeout_ms=N&retry_ms=N]")
      ->required();
  push->add_option("--batch", *batch, "Records per pipelined batch (a killed push resumes after the last whole batch)")
      ->capture_default_str();
  push->add_flag("--no-verify", *no_verify, "Do not read the records and files back");
  push->callback([dir, uri, batch, no_verify] { bank_push(*dir, *uri, *batch, !*no_verify); });
}

void register_search(CLI::App& app) {
  auto* cmd = app.add_subcommand("search", "Search a bank's references: rank, id, score, document and text of each hit");
  auto o = std::make_shared<SearchOpts>();
  cmd->add_option("bank", o->bank, "Bank directory")->required();
  cmd->add_option("query", o->query, "Query text")->required();
  cmd->add_option("-k", o->k, "Number of hits")->capture_default_str()->type_name("INT");
  cmd->add_option("--retriever", o->retriever,
                  "bm25, dense (= dense:hnsw), dense:hnsw:ef=N, dense:exact, hybrid, hybrid:exact, hybrid:hnsw:ef=N")
      ->capture_default_str();
  cmd->add_option("-m,--model", o->model, "Model file for dense/hybrid (default: the one recorded by memorize; fingerprints must match)");
  cmd->add_option("-t,--threads", o->threads, "Threads (0 = all cores)")->capture_default_str();
  cmd->add_flag("--json", o->json, "Machine-readable output");
  cmd->callback([o] { search(*o); });
}

}  // namespace m3::cli
