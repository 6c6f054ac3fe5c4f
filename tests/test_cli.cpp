// The m3 command line: help is complete, bad input is one line naming the problem with a
// non-zero exit code (never a crash), and the commands do what they say.
#include <gtest/gtest.h>

#include <cstring>

#include "m3/npy.h"
#include "test_helpers.h"

namespace m3 {
namespace {

using test::expect_error;
using test::run;
const std::string kData = M3_TEST_DATA;
const std::string kM3 = test::m3_binary();

std::string q(const std::string& s) { return "'" + s + "'"; }

TEST(Cli, HelpListsEverySubcommandAndEachHasHelp) {
  const auto top = run(kM3 + " --help");
  EXPECT_EQ(top.exit_code, 0);
  for (const char* sub : {"init", "inspect", "quantize", "generate", "logits", "tokenize", "tokenizer"}) {
    EXPECT_NE(top.out.find(sub), std::string::npos) << sub;
    const auto h = run(kM3 + " " + sub + " --help");
    EXPECT_EQ(h.exit_code, 0) << sub;
    EXPECT_NE(h.out.find("OPTIONS"), std::string::npos) << sub << ": " << h.out;
  }
  const auto th = run(kM3 + " tokenizer train --help");
  EXPECT_EQ(th.exit_code, 0);
  EXPECT_NE(th.out.find("--vocab"), std::string::npos);
  const auto gh = run(kM3 + " generate --help");
  for (const char* opt : {"--temp", "--top-k", "--top-p", "--min-p", "--repeat-penalty", "--seed", "-n"})
    EXPECT_NE(gh.out.find(opt), std::string::npos) << opt;
  EXPECT_NE(run(kM3).exit_code, 0);  // a subcommand is required
}

TEST(Cli, BadModelFilesAreOneLineErrors) {
  test::TempDir dir;
  const std::string good = test::read_all(kData + "/test-f32.gguf");
  test::write_all(dir.file("trunc.gguf"), good.substr(0, good.size() / 2));
  expect_error("inspect " + q(dir.file("trunc.gguf")), "truncated file");
  std::string magic = good;
  std::memcpy(magic.data(), "XXXX", 4);
  test::write_all(dir.file("magic.gguf"), magic);
  expect_error("generate -m " + q(dir.file("magic.gguf")) + " -p hi", "wrong magic");
  std::string version = good;
  const uint32_t v = 7;
  std::memcpy(version.data() + 4, &v, 4);
  test::write_all(dir.file("v7.gguf"), version);
  expect_error("logits -m " + q(dir.file("v7.gguf")) + " -p hi -o " + q(dir.file("x.npy")), "unsupported GGUF version 7");
  expect_error("inspect " + q(dir.file("nope.gguf")), "nope.gguf: cannot open");
  expect_error("inspect " + q(dir.file("")), "is a directory");
}

TEST(Cli, BadPromptsAreOneLineErrors) {
  test::TempDir dir;
  const std::string model = kData + "/test-f32.gguf";
  // The test model's context is 256 tokens.
  std::string long_prompt;
  for (int i = 0; i < 60; ++i) long_prompt += "The whale surfaced again. ";
  test::write_all(dir.file("long.txt"), long_prompt);
  expect_error("generate -m " + q(model) + " -f " + q(dir.file("long.txt")) + " -n 4", "more than the model's context length 256");
  test::write_all(dir.file("bad.txt"), std::string("caf\xc3", 4) + "(");
  expect_error("generate -m " + q(model) + " -f " + q(dir.file("bad.txt")) + " -n 4", "UTF-8");
  expect_error("generate -m " + q(model) + " -p hi -n -3", "--n-predict");
  expect_error("quantize " + q(model) + " " + q(dir.file("o.gguf")) + " -t q3_k", "q3_k");
  expect_error("generate -m " + q(model) + " -f " + q(dir.file("missing.txt")), "missing.txt");
}

TEST(Cli, GenerateIsDeterministicForASeed) {
  const std::string model = kData + "/test-q8_0.gguf";
  const std::string base = kM3 + " generate -m " + q(model) + " -p 'Call me Ishmael.' -n 24 --ignore-eos ";
  const auto a = run(base + "--seed 5 --temp 0.9");
  const auto b = run(base + "--seed 5 --temp 0.9");
  const auto c = run(base + "--seed 6 --temp 0.9");
  const auto g1 = run(base + "--greedy -t 1");
  const auto g2 = run(base + "--greedy -t 2");
  ASSERT_EQ(a.exit_code, 0) << a.out;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, c.out);
  EXPECT_EQ(g1.out, g2.out);
  EXPECT_EQ(a.out.rfind("Call me Ishmael.", 0), 0u) << a.out;
  EXPECT_GT(a.out.size(), std::string("Call me Ishmael.").size() + 8);
}

TEST(Cli, GenerateStopsBeforeAStopString) {
  const std::string base = kM3 + " generate -m " + q(kData + "/test-q8_0.gguf") + " -p 'Call me Ishmael.' -n 24 --ignore-eos --greedy ";
  const auto full = run(base);
  ASSERT_EQ(full.exit_code, 0) << full.out;
  const std::string completion = full.out.substr(std::string("Call me Ishmael.").size());
  ASSERT_GT(completion.size(), 6u);
  const std::string stop = completion.substr(3, 2);  // text the greedy completion reaches
  const size_t cut = completion.find(stop);
  const auto stopped = run(base + "--stop " + q(stop));
  ASSERT_EQ(stopped.exit_code, 0) << stopped.out;
  EXPECT_EQ(stopped.out, "Call me Ishmael." + completion.substr(0, cut) + "\n");
  expect_error("generate -m " + q(kData + "/test-q8_0.gguf") + " -p x --stop ''", "empty stop string");
}

TEST(Cli, LogitsWritesNpyOfTokensByVocab) {
  test::TempDir dir;
  const auto r = run(kM3 + " logits -m " + q(kData + "/test-f32.gguf") + " -p 'Call me Ishmael.' -o " + q(dir.file("l.npy")) +
                     " --tokens-out " + q(dir.file("t.json")));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const NpyArray a = read_npy(dir.file("l.npy"));
  const auto tok = run(kM3 + " tokenize --ids --bos -m " + q(kData + "/test-f32.gguf") + " -p 'Call me Ishmael.'");
  const int64_t n_tokens = std::count(tok.out.begin(), tok.out.end(), ' ') + 1;
  ASSERT_EQ(a.shape.size(), 2u);
  EXPECT_EQ(a.shape[0], n_tokens);
  EXPECT_EQ(a.shape[1], 512);
  EXPECT_NE(test::read_all(dir.file("t.json")).find("\"tokens\""), std::string::npos);
}

TEST(Cli, InitQuantizeInspectRoundTrip) {
  test::TempDir dir;
  const std::string f32 = dir.file("m.gguf"), q4 = dir.file("m-q4.gguf");
  ASSERT_EQ(run(kM3 + " init --preset memory3-test --tokenizer " + q(kData + "/test-tokenizer.model") + " --seed 3 -o " + q(f32)).exit_code, 0);
  ASSERT_EQ(run(kM3 + " quantize " + q(f32) + " " + q(q4) + " -t q4_0").exit_code, 0);
  const auto info = run(kM3 + " inspect --verify --tensors " + q(q4));
  ASSERT_EQ(info.exit_code, 0) << info.out;
  EXPECT_NE(info.out.find("q4_0"), std::string::npos);
  EXPECT_NE(info.out.find("verify        ok"), std::string::npos);
  EXPECT_NE(info.out.find("blk.1.ffn_down.weight"), std::string::npos);
  EXPECT_NE(info.out.find("prefix tokens [1 "), std::string::npos) << info.out;
}

}  // namespace
}  // namespace m3
