// Reading with explicit memories: the chunked, memory-augmented forward against the PyTorch
// oracle (tools/reference/memory_forward.py), decode across chunk boundaries, which text each
// chunk retrieves with, and capacity limits.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "m3/bank.h"
#include "m3/bank_memory_source.h"
#include "m3/error.h"
#include "m3/knowledge.h"
#include "m3/memory_writer.h"
#include "m3/npy.h"
#include "m3/session.h"
#include "test_helpers.h"

namespace m3 {
namespace {

const std::string kData = M3_TEST_DATA;
const std::string kGolden = kData + "/golden/runtime";

struct Golden {
  nlohmann::json index;
  std::vector<std::shared_ptr<const ExplicitMemory>> memories;
  NpyArray logits;
};

Golden load_golden(const MemoryShape& s) {
  Golden g;
  std::ifstream in(kGolden + "/runtime.json");
  g.index = nlohmann::json::parse(in);
  const NpyArray pos = read_npy(kGolden + "/memories.positions.npy");
  const NpyArray keys = read_npy(kGolden + "/memories.keys.npy");
  const NpyArray vals = read_npy(kGolden + "/memories.values.npy");
  const int64_t R = pos.shape[0];
  for (int64_t r = 0; r < R; ++r) {
    auto m = std::make_shared<ExplicitMemory>();
    m->resize(s);
    m->reference_id = r;
    m->n_tokens = static_cast<int>(g.index["references"][r].size());
    for (int64_t i = 0; i < s.slots(); ++i) m->positions[i] = static_cast<int16_t>(pos.i32[r * s.slots() + i]);
    std::copy_n(keys.f32.begin() + r * s.floats(), s.floats(), m->keys.begin());
    std::copy_n(vals.f32.begin() + r * s.floats(), s.floats(), m->values.begin());
    g.memories.push_back(m);
  }
  g.logits = read_npy(kGolden + "/logits.npy");
  return g;
}

// Gives chunk c the references the oracle assigned to it, whatever the query; records queries.
class FixedSource : public MemorySource {
 public:
  FixedSource(const Golden& g) : g_(g) {}
  std::vector<ChunkMemory> select(int chunk, const std::string& query) override {
    queries[chunk] = query;
    std::vector<ChunkMemory> out;
    const auto& refs = g_.index["chunk_refs"];
    if (chunk < static_cast<int>(refs.size()))
      for (int r : refs[chunk]) out.push_back({r, g_.memories[r]});
    return out;
  }
  std::map<int, std::string> queries;

 private:
  const Golden& g_;
};

class SessionGolden : public ::testing::Test {
 protected:
  void SetUp() override {
    model = Model::load(kData + "/test-rt.gguf");
    golden = load_golden(MemoryShape::of(model->config()));
    prompt = golden.index["prompt"].get<std::vector<int32_t>>();
    prefix = std::make_unique<PrefixKV>(*model, &pool);
  }
  ThreadPool pool{2};
  std::unique_ptr<Model> model;
  Golden golden;
  std::vector<int32_t> prompt;
  std::unique_ptr<PrefixKV> prefix;
};

TEST_F(SessionGolden, PrefixIsTheOraclesPrefix) {
  EXPECT_EQ(prefix->tokens(), golden.index["prefix"].get<std::vector<int32_t>>());
  ASSERT_EQ(prompt.size(), 200u);  // 4 chunks of 64
  ASSERT_EQ(golden.logits.shape, (std::vector<int64_t>{200, model->config().vocab_size}));
}

TEST_F(SessionGolden, PromptReadChunkByChunkMatchesTheOracle) {
  FixedSource source(golden);
  Session s(*model, &pool, prefix.get(), &source);
  const size_t V = static_cast<size_t>(model->config().vocab_size);
  std::vector<float> all(prompt.size() * V), last(V);
  s.prompt(prompt, last.data(), all.data());
  const double e = test::nmse(all.data(), golden.logits.f32.data(), all.size());
  EXPECT_LE(e, 1e-6) << "NMSE vs oracle";
  std::printf("memory-augmented prefill NMSE vs PyTorch: %.3g\n", e);
  // Per chunk too, so an error confined to one chunk's memories shows.
  for (int c = 0; c < 4; ++c) {
    const size_t b = static_cast<size_t>(c) * 64 * V, n = std::min<size_t>(64, prompt.size() - c * 64) * V;
    EXPECT_LE(test::nmse(all.data() + b, golden.logits.f32.data() + b, n), 1e-6) << "chunk " << c;
  }
  EXPECT_TRUE(std::equal(last.begin(), last.end(), all.end() - V));
  ASSERT_EQ(s.chunks().size(), 4u);
  EXPECT_EQ(s.chunks()[0].reference_ids, (std::vector<int64_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(s.chunks()[2].reference_ids, std::vector<int64_t>{});
  EXPECT_EQ(s.chunks()[3].token_begin, 192);
  EXPECT_EQ(s.chunks()[3].token_end, 200);

  // The memories matter: the same prompt without them gives other logits from chunk 0 on.
  Session plain(*model, &pool, prefix.get(), nullptr);
  std::vector<float> all_plain(all.size());
  plain.prompt(prompt, last.data(), all_plain.data());
  EXPECT_GT(test::nmse(all_plain.data(), golden.logits.f32.data(), 64 * V), 1e-4);
}

TEST_F(SessionGolden, DecodingAcrossChunkBoundariesSwapsMemoriesAsTheRulesSay) {
  FixedSource source(golden);
  Session s(*model, &pool, prefix.get(), &source);
  const size_t V = static_cast<size_t>(model->config().vocab_size);
  std::vector<float> logits(V);
  const int n_prompt = 100;  // ends inside chunk 1
  s.prompt(std::span<const int32_t>(prompt.data(), n_prompt), logits.data());
  double worst = 0;
  for (size_t t = n_prompt; t < prompt.size(); ++t) {
    s.decode(prompt[t], logits.data());
    worst = std::max(worst, test::nmse(logits.data(), golden.logits.f32.data() + t * V, V));
  }
  EXPECT_LE(worst, 1e-6) << "decode through chunks 1..3 vs oracle";
  // Queries: prompt chunks retrieve with their own prompt text; a chunk reached while decoding
  // with the previous chunk's whole text.
  const Tokenizer& tok = *model->tokenizer();
  auto text = [&](int b, int e) { return tok.decode(std::vector<int32_t>(prompt.begin() + b, prompt.begin() + e)); };
  ASSERT_EQ(source.queries.size(), 4u);
  EXPECT_EQ(source.queries[0], text(0, 64));
  EXPECT_EQ(source.queries[1], text(64, 100));   // the prompt part of chunk 1 only
  EXPECT_EQ(source.queries[2], text(64, 128));   // chunk 1, completed by generation
  EXPECT_EQ(source.queries[3], text(128, 192));
  EXPECT_EQ(s.chunks()[2].query, text(64, 128));
}

TEST_F(SessionGolden, CapacityAndBadInputAreErrors) {
  Session s(*model, &pool, prefix.get(), nullptr);
  // 512 positions − prefix − 128-position window.
  EXPECT_EQ(s.capacity(), 512 - prefix->size() - 128);
  std::vector<int32_t> too_long(static_cast<size_t>(s.capacity()) + 1, 5);
  std::vector<float> logits(static_cast<size_t>(model->config().vocab_size));
  const std::string e = test::error_of([&] { s.prompt(too_long, logits.data()); });
  EXPECT_NE(e.find("capacity"), std::string::npos) << e;
  EXPECT_EQ(s.n_tokens(), 0);
  const std::string bad = test::error_of([&] { s.prompt(std::vector<int32_t>{1, 99999}, logits.data()); });
  EXPECT_NE(bad.find("outside the vocabulary"), std::string::npos) << bad;
  EXPECT_NE(test::error_of([&] { s.prompt({}, logits.data()); }).find("empty prompt"), std::string::npos);
  // Truncating and re-feeding repeats the same logits (the cache really is rolled back).
  Session a(*model, &pool, prefix.get(), nullptr);
  std::vector<float> l1(logits.size()), l2(logits.size());
  a.prompt(std::span<const int32_t>(prompt.data(), 80), l1.data());
  a.decode(prompt[80], l1.data());
  a.truncate(80);
  a.decode(prompt[80], l2.data());
  EXPECT_EQ(l1, l2);
}

}  // namespace
}  // namespace m3

// ---- BankMemorySource ---------------------------------------------------------------------------

namespace m3 {
namespace {

// Returns fixed ids, whatever the query (a stale index would).
class FixedRetriever : public Retriever {
 public:
  explicit FixedRetriever(std::vector<int64_t> ids) : ids_(std::move(ids)) {}
  std::string spec() const override { return "fixed"; }
  std::vector<SearchHit> search(const std::string&, int k) const override {
    std::vector<SearchHit> out;
    for (int64_t id : ids_)
      if (static_cast<int>(out.size()) < k) out.push_back({id, 1.0f});
    return out;
  }
  void add(int64_t, const std::string&) override {}
  void remove(int64_t) override {}
  void save() const override {}

 private:
  std::vector<int64_t> ids_;
};

TEST(BankMemorySource, ReadsTheBanksMemoriesAndNeverADeletedOne) {
  test::TempDir dir;
  auto model = Model::load(kData + "/test-rt.gguf");
  ThreadPool pool(2);
  std::vector<Document> docs(3);
  std::vector<std::vector<ReferenceText>> refs;
  for (int d = 0; d < 3; ++d) {
    docs[d].id = "doc" + std::to_string(d);
    docs[d].text = "Document " + std::to_string(d) + " is about whales, ships and the sea, part " + std::to_string(d) + ".";
    refs.push_back(split_into_references(docs[d], *model->tokenizer()));
  }
  auto bank = MemoryBank::create(dir.file("bank"), *model, "bf16", "bf16");
  bank->add_references(docs, refs);
  MemoryWriter writer(*model, &pool);
  for (int64_t id = 0; id < bank->reference_count(); ++id) bank->append(writer.write(bank->reference(id).tokens, id));
  ASSERT_EQ(bank->memory_count(), 3);
  bank->delete_document("doc1");

  FixedRetriever retriever({1, 2, 0, 99});  // 1 is deleted, 99 does not exist
  MemoryCache cache(8);
  BankMemorySource source(*bank, retriever, &cache, {});
  const std::vector<ChunkMemory> got = source.select(0, "whales");
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].reference_id, 2);
  EXPECT_EQ(got[1].reference_id, 0);
  const ExplicitMemory direct = bank->read(2);
  EXPECT_EQ(got[0].memory->keys, direct.keys);
  source.select(1, "whales");
  EXPECT_EQ(cache.stats().hits, 2u);  // the second chunk's memories came from the cache
  EXPECT_EQ(source.stats().selections, 2u);
}

}  // namespace
}  // namespace m3
