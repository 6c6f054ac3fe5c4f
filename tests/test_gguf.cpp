// GGUF container: round trips and every kind of bad file gives an m3::Error naming the file.
#include <gtest/gtest.h>

#include <cstring>

#include "m3/error.h"
#include "m3/gguf.h"
#include "m3/model.h"
#include "test_helpers.h"

namespace m3 {
namespace {

using test::TempDir;

TEST(GGUF, MetadataAndTensorsRoundTrip) {
  TempDir dir;
  const std::string path = dir.file("rt.gguf");
  GGUFWriter w;
  w.set_string("general.architecture", "memory3");
  w.set_u32("a.u32", 4000000000u);
  w.set_i32("a.i32", -7);
  w.set_u64("a.u64", 1ull << 40);
  w.set_f32("a.f32", 0.25f);
  w.set_bool("a.bool", true);
  w.set_strings("a.strs", {"x", "", "▁héllo"});
  w.set_f32s("a.f32s", {1.5f, -2.0f});
  w.set_i32s("a.i32s", {-1, 2, 3});
  w.set_bytes("a.bytes", std::string("\0\1\2\xff", 4));
  std::vector<float> a(3 * 32);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i) * 0.5f - 3;
  std::vector<uint8_t> q(3 * sizeof(BlockQ8_0));
  quantize_row(DType::Q8_0, a.data(), q.data(), 96);
  w.add_tensor("t.f32", DType::F32, {32, 3}, a.data());
  w.add_tensor("t.q8", DType::Q8_0, {96}, q.data());
  w.write(path);

  auto f = GGUFFile::open(path);
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->get_string("general.architecture"), "memory3");
  EXPECT_EQ(f->get_int("a.u32"), 4000000000ll);
  EXPECT_EQ(f->get_int("a.i32"), -7);
  EXPECT_EQ(f->get_int("a.u64"), 1ll << 40);
  EXPECT_FLOAT_EQ(static_cast<float>(f->get_float("a.f32")), 0.25f);
  EXPECT_TRUE(f->get_bool("a.bool"));
  EXPECT_EQ(f->find("a.strs")->strings, (std::vector<std::string>{"x", "", "▁héllo"}));
  EXPECT_EQ(f->find("a.f32s")->numbers, (std::vector<double>{1.5, -2.0}));
  EXPECT_EQ(f->find("a.i32s")->numbers, (std::vector<double>{-1, 2, 3}));
  EXPECT_EQ(f->find("a.bytes")->bytes, (std::vector<uint8_t>{0, 1, 2, 255}));
  const TensorView* t = f->find_tensor("t.f32");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->ne[0], 32);
  EXPECT_EQ(t->ne[1], 3);
  EXPECT_EQ(std::memcmp(t->data, a.data(), a.size() * 4), 0);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t->data) % kGGUFAlignment, 0u);
  const TensorView* tq = f->find_tensor("t.q8");
  ASSERT_NE(tq, nullptr);
  EXPECT_EQ(tq->type, DType::Q8_0);
  EXPECT_EQ(std::memcmp(tq->data, q.data(), q.size()), 0);
  // Typed getters name the key and the problem.
  try {
    f->get_string("a.u32");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("a.u32"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos);
  }
  EXPECT_THROW(f->get_int("missing.key"), Error);
}

// Expects loading `path` as a model to throw m3::Error whose message contains the path and `needle`.
void expect_model_error(const std::string& path, const std::string& needle) {
  try {
    Model::load(path);
    ADD_FAILURE() << "no error for " << path << " (expected '" << needle << "')";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
  }
}

TEST(GGUF, ModelLoadsAndValidates) {
  TempDir dir;
  const std::string path = dir.file("m.gguf");
  ModelConfig c = test::write_test_model(path);
  auto m = Model::load(path);
  EXPECT_EQ(m->config().n_layers, c.n_layers);
  EXPECT_EQ(m->config().memory.memory_layers, c.n_layers / 2);
  EXPECT_EQ(m->config().memory.prefix_text, "<s>Reference:");
  EXPECT_EQ(m->fingerprint(), m->compute_fingerprint());
  EXPECT_EQ(m->fingerprint().size(), 16u);
}

TEST(GGUF, FingerprintChangesWithWeights) {
  TempDir dir;
  test::write_test_model(dir.file("a.gguf"), 1);
  test::write_test_model(dir.file("b.gguf"), 2);
  EXPECT_NE(Model::load(dir.file("a.gguf"))->fingerprint(), Model::load(dir.file("b.gguf"))->fingerprint());
}

TEST(GGUF, TruncatedFilesAreErrorsAtEveryLength) {
  TempDir dir;
  const std::string good = dir.file("good.gguf");
  test::write_test_model(good);
  const std::string bytes = test::read_all(good);
  const std::string bad = dir.file("truncated.gguf");
  // Every cut in the header region, then coarse steps through the data.
  std::vector<size_t> cuts;
  for (size_t n = 0; n < 600; ++n) cuts.push_back(n);
  for (size_t n = 600; n < bytes.size(); n += bytes.size() / 97 + 1) cuts.push_back(n);
  cuts.push_back(bytes.size() - 1);
  for (size_t n : cuts) {
    test::write_all(bad, bytes.substr(0, n));
    EXPECT_THROW(Model::load(bad), Error) << "cut at " << n;
  }
  test::write_all(bad, bytes.substr(0, bytes.size() - 1));
  expect_model_error(bad, "truncated");
}

TEST(GGUF, WrongMagicVersionArchitecture) {
  TempDir dir;
  const std::string good = dir.file("good.gguf");
  test::write_test_model(good);
  std::string bytes = test::read_all(good);

  std::string magic = bytes;
  std::memcpy(magic.data(), "GGML", 4);
  test::write_all(dir.file("magic.gguf"), magic);
  expect_model_error(dir.file("magic.gguf"), "wrong magic");

  std::string version = bytes;
  const uint32_t v99 = 99;
  std::memcpy(version.data() + 4, &v99, 4);
  test::write_all(dir.file("version.gguf"), version);
  expect_model_error(dir.file("version.gguf"), "unsupported GGUF version 99");

  // Same length string so offsets stay valid: "memory3" → "gpt9neo".
  std::string arch = bytes;
  const size_t at = arch.find("memory3");
  ASSERT_NE(at, std::string::npos);
  std::memcpy(arch.data() + at, "gpt9neo", 7);
  test::write_all(dir.file("arch.gguf"), arch);
  expect_model_error(dir.file("arch.gguf"), "unknown architecture 'gpt9neo'");

  test::write_all(dir.file("empty.gguf"), "");
  expect_model_error(dir.file("empty.gguf"), "not a GGUF file");
  expect_model_error(dir.file("does-not-exist.gguf"), "cannot open");
}

TEST(GGUF, MissingAndMisshapedTensors) {
  TempDir dir;
  ModelConfig c = model_preset("memory3-test");
  {
    auto w = init_weights(c, 1);
    w.erase(std::find_if(w.begin(), w.end(), [](const OwnedTensor& t) { return t.name == "blk.1.ffn_up.weight"; }));
    save_model(dir.file("missing.gguf"), c, "", w);
    expect_model_error(dir.file("missing.gguf"), "missing tensor 'blk.1.ffn_up.weight'");
  }
  {
    auto w = init_weights(c, 1);
    for (auto& t : w)
      if (t.name == "blk.0.attn_k.weight") t.ne = {static_cast<int64_t>(c.dim) / 2, int64_t(c.n_kv_heads) * c.head_dim * 2};
    save_model(dir.file("shape.gguf"), c, "", w);
    expect_model_error(dir.file("shape.gguf"), "tensor 'blk.0.attn_k.weight' has shape");
  }
  {
    // A norm stored as q8_0 is refused by type.
    ModelConfig c2 = c;
    auto w = init_weights(c2, 1);
    for (auto& t : w)
      if (t.name == "output_norm.weight") {
        Buffer b(dtype_row_bytes(DType::Q8_0, c2.dim));
        quantize_row(DType::Q8_0, t.data.as<float>(), b.data(), c2.dim);
        t.data = std::move(b);
        t.type = DType::Q8_0;
      }
    save_model(dir.file("type.gguf"), c2, "", w);
    expect_model_error(dir.file("type.gguf"), "norm weights must be f32");
  }
}

TEST(GGUF, ImpossibleConfigIsRefused) {
  ModelConfig c = model_preset("memory3-test");
  c.n_kv_heads = 3;  // 4 heads not a multiple of 3
  EXPECT_THROW(c.validate(), Error);
  c = model_preset("memory3-test");
  c.memory.memory_layers = c.n_layers + 1;
  EXPECT_THROW(c.validate(), Error);
  EXPECT_THROW(model_preset("no-such-preset"), Error);
}

TEST(GGUF, QuantizeKeepsConfigAndChangesMatrices) {
  TempDir dir;
  test::write_test_model(dir.file("f32.gguf"));
  for (DType t : {DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0}) {
    const std::string out = dir.file(std::string(dtype_name(t)) + ".gguf");
    quantize_model(dir.file("f32.gguf"), out, t);
    auto m = Model::load(out);
    EXPECT_EQ(m->layers[0].wq.type, t);
    EXPECT_EQ(m->token_embd.type, t);
    EXPECT_EQ(m->layers[0].attn_norm.type, DType::F32);
    EXPECT_EQ(m->config().n_layers, 2);
    EXPECT_EQ(m->fingerprint(), m->compute_fingerprint());
  }
}

}  // namespace
}  // namespace m3
