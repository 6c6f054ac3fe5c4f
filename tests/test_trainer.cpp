// Stage-1 training runs: token shards and datasets, the window sampler, configs, exact resume
// (in process and after SIGKILL), and a smoke test that a tiny model learns the real corpus.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "m3/error.h"
#include "m3/model.h"
#include "m3/token_dataset.h"
#include "m3/trainer.h"
#include "test_helpers.h"

namespace m3 {
namespace {

namespace fs = std::filesystem;
using test::error_of;
const std::string kData = M3_TEST_DATA;
const std::string kCorpus = std::string(M3_SOURCE_DIR) + "/data/embedded/moby-dick.txt";
const std::string kTokenizer = kData + "/test-tokenizer.model";

bool contains(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

// Rows of a run's log.csv, by step: the columns that must repeat exactly (lr, loss, val_loss, grad_norm).
std::map<int64_t, std::string> log_rows(const std::string& path) {
  std::map<int64_t, std::string> rows;
  std::istringstream in(test::read_all(path));
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "step,tokens,lr,loss,val_loss,grad_norm,tokens_per_s,elapsed_s");
  while (std::getline(in, line)) {
    std::vector<std::string> f;
    std::stringstream ss(line);
    std::string x;
    while (std::getline(ss, x, ',')) f.push_back(x);
    if (line.back() == ',') f.push_back("");
    EXPECT_EQ(f.size(), 8u) << line;
    if (f.size() != 8) continue;
    const int64_t step = std::stoll(f[0]);
    EXPECT_FALSE(rows.count(step)) << "step " << step << " logged twice";
    rows[step] = f[1] + "," + f[2] + "," + f[3] + "," + f[4] + "," + f[5];
  }
  return rows;
}

// A small dataset from the embedded Moby-Dick slice, with the test tokenizer.
std::string make_dataset(const test::TempDir& dir, double val_fraction = 0.1) {
  const std::string out = dir.file("ds");
  auto tok = Tokenizer::from_file(kTokenizer);
  BuildDatasetOptions o;
  o.val_fraction = val_fraction;
  o.progress = false;
  o.threads = 2;
  build_dataset({kCorpus}, *tok, out, o);
  return out;
}

TrainConfig small_config(const std::string& data, const std::string& out) {
  TrainConfig c;
  c.preset = "memory3-test";
  c.data = data;
  c.out = out;
  c.batch = 4;
  c.seq_len = 64;
  c.steps = 12;
  c.lr = 3e-3f;
  c.warmup = 3;
  c.eval_interval = 4;
  c.eval_tokens = 1024;
  c.checkpoint_interval = 5;
  c.threads = 2;
  c.seed = 7;
  return c;
}

TrainRunOptions quiet(bool resume = false, int64_t stop_after = -1) {
  TrainRunOptions o;
  o.progress = false;
  o.resume = resume;
  o.stop_after = stop_after;
  return o;
}

// ---- shards -------------------------------------------------------------------------------------

TEST(TokenShard, RoundTripsBothWidthsAndChecksEverything) {
  test::TempDir dir;
  for (uint32_t vocab : {512u, 70000u}) {
    std::vector<int32_t> tokens(1000);
    std::mt19937 rng(vocab);
    for (auto& t : tokens) t = static_cast<int32_t>(rng() % vocab);
    const std::string path = dir.file("s" + std::to_string(vocab) + ".bin");
    write_shard(path, tokens, 3, vocab, 0x1234);
    ShardInfo info;
    EXPECT_EQ(read_shard(path, &info), tokens);
    EXPECT_EQ(info.vocab_size, vocab);
    EXPECT_EQ(info.n_tokens, 1000);
    EXPECT_EQ(info.n_documents, 3);
    EXPECT_EQ(info.tokenizer_hash, 0x1234u);
    EXPECT_EQ(fs::file_size(path), kShardHeaderBytes + 1000 * (vocab <= 65536 ? 2 : 4));
  }
  const std::string path = dir.file("s512.bin");
  const std::string good = test::read_all(path);
  std::string flipped = good;
  flipped[kShardHeaderBytes + 17] ^= 1;
  test::write_all(dir.file("flip.bin"), flipped);
  EXPECT_TRUE(contains(error_of([&] { read_shard(dir.file("flip.bin")); }), "checksum mismatch"));
  test::write_all(dir.file("trunc.bin"), good.substr(0, good.size() - 3));
  EXPECT_TRUE(contains(error_of([&] { read_shard(dir.file("trunc.bin")); }), "truncated"));
  test::write_all(dir.file("head.bin"), good.substr(0, 20));
  EXPECT_TRUE(contains(error_of([&] { read_shard(dir.file("head.bin")); }), "truncated token shard"));
  std::string magic = good;
  magic[0] = 'X';
  test::write_all(dir.file("magic.bin"), magic);
  EXPECT_TRUE(contains(error_of([&] { read_shard(dir.file("magic.bin")); }), "wrong magic"));
  EXPECT_TRUE(contains(error_of([&] { write_shard(dir.file("bad.bin"), {1, 600}, 1, 512, 0); }), "outside the vocabulary"));
}

TEST(TokenDataset, SplitsByDocumentAndStoresBosTokensEos) {
  test::TempDir dir;
  std::string jsonl;
  std::vector<std::string> texts;
  for (int i = 0; i < 200; ++i) {
    texts.push_back("Document number " + std::to_string(i) + " talks about whales and ships, " + std::string(i % 7, 'x') + ".");
    jsonl += nlohmann::json{{"id", i}, {"text", texts.back()}}.dump() + "\n";
  }
  test::write_all(dir.file("c.jsonl"), jsonl);
  auto tok = Tokenizer::from_file(kTokenizer);
  BuildDatasetOptions o;
  o.val_fraction = 0.25;
  o.progress = false;
  o.shard_tokens = 500;  // several shards per split
  const DatasetSummary s = build_dataset({dir.file("c.jsonl")}, *tok, dir.file("ds"), o);
  EXPECT_EQ(s.train_documents + s.val_documents, 200);
  EXPECT_GT(s.val_documents, 25);
  EXPECT_LT(s.val_documents, 80);

  // Oracle: every document encoded on its own, BOS ... EOS, routed to one split, in order.
  TokenDataset ds(dir.file("ds"));
  EXPECT_EQ(ds.vocab_size(), 512u);
  std::vector<int32_t> all = ds.train();
  all.insert(all.end(), ds.val().begin(), ds.val().end());
  std::multiset<std::vector<int32_t>> docs_in_dataset, docs_expected;
  for (const auto& t : texts) docs_expected.insert(tok->encode(t, true, true));
  std::vector<int32_t> cur;
  for (int32_t id : all) {
    cur.push_back(id);
    if (id == tok->eos_id()) {
      docs_in_dataset.insert(cur);
      cur.clear();
    }
  }
  EXPECT_TRUE(cur.empty());
  EXPECT_EQ(docs_in_dataset, docs_expected);
  EXPECT_GT(fs::directory_iterator(dir.file("ds")) != fs::directory_iterator(), false);
  EXPECT_TRUE(fs::exists(dir.file("ds/train-00001.bin")));

  // The same inputs and seed give the same bytes; another seed another split.
  build_dataset({dir.file("c.jsonl")}, *tok, dir.file("ds2"), o);
  EXPECT_EQ(test::read_all(dir.file("ds/val-00000.bin")), test::read_all(dir.file("ds2/val-00000.bin")));
  o.seed = 99;
  build_dataset({dir.file("c.jsonl")}, *tok, dir.file("ds3"), o);
  EXPECT_NE(TokenDataset(dir.file("ds3")).val(), ds.val());
}

TEST(TokenDataset, BadInputIsAClearError) {
  test::TempDir dir;
  auto tok = Tokenizer::from_file(kTokenizer);
  BuildDatasetOptions o;
  o.progress = false;
  EXPECT_TRUE(contains(error_of([&] { build_dataset({dir.file("nope.jsonl")}, *tok, dir.file("a"), o); }), "nope.jsonl: corpus input not found"));
  test::write_all(dir.file("empty.txt"), "");
  EXPECT_TRUE(contains(error_of([&] { build_dataset({dir.file("empty.txt")}, *tok, dir.file("b"), o); }), "the corpus is empty"));
  test::write_all(dir.file("bad.jsonl"), "{\"text\": \"ok\"}\n{\"text\": oops}\n");
  EXPECT_TRUE(contains(error_of([&] { build_dataset({dir.file("bad.jsonl")}, *tok, dir.file("c"), o); }), "bad.jsonl:2: malformed JSON"));
  test::write_all(dir.file("notext.jsonl"), "{\"body\": \"x\"}\n");
  EXPECT_TRUE(contains(error_of([&] { build_dataset({dir.file("notext.jsonl")}, *tok, dir.file("d"), o); }), "notext.jsonl:1: expected an object"));
  test::write_all(dir.file("utf8.txt"), std::string("fine text\nbad \xC3\x28 byte\n"));
  EXPECT_TRUE(contains(error_of([&] { build_dataset({dir.file("utf8.txt")}, *tok, dir.file("e"), o); }), "utf8.txt"));
  EXPECT_TRUE(contains(error_of([&] { TokenDataset x(dir.file("nothing")); }), "not a token dataset"));

  // A shard written for another vocabulary inside a dataset is refused.
  const std::string ds = make_dataset(dir);
  write_shard(ds + "/val-00000.bin", {1, 2, 3}, 1, 1024, 42);
  const std::string e = error_of([&] { TokenDataset x(ds); });
  EXPECT_TRUE(contains(e, "val-00000.bin: shard was tokenized for another vocabulary")) << e;
  EXPECT_TRUE(contains(error_of([&] { build_dataset({kCorpus}, *tok, ds, o); }), "already holds a dataset"));
}

TEST(WindowSampler, EachEpochIsAPermutationAndDeterministic) {
  std::vector<int32_t> tokens(1 + 10 * 8);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>(i);
  WindowSampler a(tokens, 8, 5), b(tokens, 8, 5), c(tokens, 8, 6);
  EXPECT_EQ(a.windows_per_epoch(), 10);
  std::vector<int32_t> in(8), tg(8), in2(8), tg2(8);
  for (int epoch = 0; epoch < 3; ++epoch) {
    std::set<int32_t> starts;
    for (int k = 0; k < 10; ++k) {
      a.fill(epoch * 10 + k, 1, in.data(), tg.data());
      for (int j = 0; j < 8; ++j) {
        ASSERT_EQ(in[j], in[0] + j);
        ASSERT_EQ(tg[j], in[j] + 1);
      }
      EXPECT_EQ(in[0] % 8, 0);
      starts.insert(in[0]);
    }
    EXPECT_EQ(starts.size(), 10u) << "epoch " << epoch << " repeats a window";
  }
  int differ = 0;
  for (int k = 29; k >= 0; --k) {  // random access order gives the same windows
    a.fill(k, 1, in.data(), tg.data());
    b.fill(k, 1, in2.data(), tg2.data());
    EXPECT_EQ(in, in2);
    c.fill(k, 1, in2.data(), tg2.data());
    differ += in != in2;
  }
  EXPECT_GT(differ, 5);
  EXPECT_TRUE(contains(error_of([&] { WindowSampler x(std::vector<int32_t>(8), 8, 1); }), "fewer than one window"));
}

// ---- config ---------------------------------------------------------------------------------------

TEST(TrainConfigToml, ReadsWritesAndRejectsUnknownKeys) {
  test::TempDir dir;
  test::write_all(dir.file("a.toml"),
                  "[model]\npreset = \"memory3-test\"\nlayers = 3\n[data]\ndir = \"d\"\n[train]\nbatch = 4\nseq_len = 32\n"
                  "steps = 10\nlr = 0.002\nmin_lr = 1e-5\n[output]\ndir = \"o\"\nexport_type = \"q8_0\"\n");
  const TrainConfig c = load_train_config(dir.file("a.toml"));
  EXPECT_EQ(c.preset, "memory3-test");
  EXPECT_EQ(c.layers, 3);
  EXPECT_EQ(c.batch, 4);
  EXPECT_EQ(c.steps, 10);
  EXPECT_FLOAT_EQ(c.lr, 0.002f);
  EXPECT_FLOAT_EQ(c.min_lr, 1e-5f);
  EXPECT_EQ(c.export_type, "q8_0");
  test::write_all(dir.file("b.toml"), to_toml(c));
  EXPECT_EQ(to_toml(load_train_config(dir.file("b.toml"))), to_toml(c));

  auto err = [&](const std::string& text) {
    test::write_all(dir.file("x.toml"), text);
    return error_of([&] { load_train_config(dir.file("x.toml")); });
  };
  const std::string base = "[data]\ndir = \"d\"\n[output]\ndir = \"o\"\n[train]\nsteps = 5\n";
  EXPECT_TRUE(contains(err(base + "bacth = 4\n"), "x.toml:7: unknown key 'train.bacth'"));
  EXPECT_TRUE(contains(err(base + "[optim]\nlr = 1\n"), "unknown section or key 'optim'"));
  EXPECT_TRUE(contains(err(base + "batch = \"big\"\n"), "train.batch must be an integer"));
  EXPECT_TRUE(contains(err(base + "batch = 0\n"), "train.batch must be positive"));
  EXPECT_TRUE(contains(err(base + "lr = [1\n"), "TOML syntax error"));
  EXPECT_TRUE(contains(err("[train]\nsteps = 5\n"), "data.dir is required"));
  EXPECT_TRUE(contains(err(base + "[model]\nlayers = -2\n"), "must not be negative"));
  EXPECT_TRUE(contains(error_of([&] { load_train_config(dir.file("missing.toml")); }), "missing.toml"));
}

TEST(Train, ImpossibleShapesAndDataFailBeforeAnyStep) {
  test::TempDir dir;
  const std::string ds = make_dataset(dir);
  TrainConfig c = small_config(ds, dir.file("run"));
  c.heads = 3;  // not a multiple of 2 KV heads
  EXPECT_TRUE(contains(error_of([&] { train(c, quiet()); }), "multiple"));
  EXPECT_FALSE(fs::exists(dir.file("run/log.csv")));
  c = small_config(ds, dir.file("run"));
  c.seq_len = 1000;
  EXPECT_TRUE(contains(error_of([&] { train(c, quiet()); }), "exceeds the model's context length"));
  c = small_config(dir.file("nodata"), dir.file("run"));
  EXPECT_TRUE(contains(error_of([&] { train(c, quiet()); }), "not a token dataset"));
  // A model whose vocabulary is not the data's.
  c = small_config(ds, dir.file("run"));
  ModelConfig mc = model_preset("memory3-test");
  mc.vocab_size = 600;
  save_model(dir.file("v600.gguf"), mc, "", init_weights(mc, 1));
  c.init = dir.file("v600.gguf");
  EXPECT_TRUE(contains(error_of([&] { train(c, quiet()); }), "600"));
  EXPECT_FALSE(fs::exists(dir.file("run/log.csv")));
  // Resuming what does not exist, or starting over an existing run.
  c = small_config(ds, dir.file("run"));
  EXPECT_TRUE(contains(error_of([&] { train(c, quiet(true)); }), "no run to resume"));
  c.steps = 2;
  train(c, quiet());
  EXPECT_TRUE(contains(error_of([&] { train(c, quiet()); }), "already holds a run"));
  c.lr = 1e-2f;
  EXPECT_TRUE(contains(error_of([&] { train(c, quiet(true)); }), "the config differs"));
}

// ---- resume -------------------------------------------------------------------------------------

TEST(Train, StoppedAndResumedRunRepeatsTheUninterruptedLosses) {
  test::TempDir dir;
  const std::string ds = make_dataset(dir);
  const TrainConfig a = small_config(ds, dir.file("a"));
  const TrainResult ra = train(a, quiet());
  EXPECT_TRUE(ra.finished);
  EXPECT_EQ(ra.steps_done, 12);

  const TrainConfig b = small_config(ds, dir.file("b"));
  EXPECT_FALSE(train(b, quiet(false, 3)).finished);   // stops between checkpoint intervals
  EXPECT_FALSE(train(b, quiet(true, 7)).finished);    // resumes at 3, checkpoint at 5, stops at 7
  // A crash after step 9 (rows logged past the last checkpoint at 7) is redone, not duplicated.
  {
    std::ofstream log(dir.file("b/log.csv"), std::ios::app);
    log << "8,256,0.003,9.999999,,1,1,1\n9,288,0.003,9.999999,,1,1,1\n10,3";
  }
  EXPECT_TRUE(train(b, quiet(true)).finished);

  const auto rows_a = log_rows(dir.file("a/log.csv")), rows_b = log_rows(dir.file("b/log.csv"));
  ASSERT_EQ(rows_a.size(), 12u);
  EXPECT_EQ(rows_a, rows_b);
  EXPECT_EQ(Model::load(dir.file("a/model.gguf"))->fingerprint(), Model::load(dir.file("b/model.gguf"))->fingerprint());
  // Losses fell, and the validation loss is logged at the eval interval.
  EXPECT_LT(std::stof(rows_a.at(12).substr(rows_a.at(12).find(',', rows_a.at(12).find(',') + 1) + 1)),
            std::stof(rows_a.at(1).substr(rows_a.at(1).find(',', rows_a.at(1).find(',') + 1) + 1)));
  // The exported model runs and carries the dataset's tokenizer.
  auto m = Model::load(dir.file("a/model.gguf"));
  ASSERT_NE(m->tokenizer(), nullptr);
  EXPECT_EQ(tokenizer_hash(*m->tokenizer()), TokenDataset(ds).tokenizer_hash());
  EXPECT_EQ(test::read_all(dir.file("a/loss.svg")).rfind("<svg", 0), 0u);
  // Only the newest checkpoints are kept.
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir.file("a/checkpoints"))) n += e.is_directory();
  EXPECT_EQ(n, 2);
}

pid_t spawn(const std::vector<std::string>& args, const std::string& log) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

TEST(TrainCli, SigkilledRunResumesToTheSameLosses) {
  test::TempDir dir;
  const std::string ds = make_dataset(dir);
  const std::string m3 = test::m3_binary();
  auto args = [&](const std::string& out, bool resume) {
    std::vector<std::string> a = {m3, "train", "--data", ds, "-o", out, "--preset", "memory3-test", "-b", "4", "--seq-len", "64",
                                  "--steps", "80", "--lr", "0.003", "--warmup", "5", "--eval-interval", "10", "--eval-tokens",
                                  "512", "--checkpoint-interval", "4", "-t", "2", "--seed", "3", "-q"};
    if (resume) a.push_back("--resume");
    return a;
  };
  const auto full = test::run(m3 + " train --data " + ds + " -o " + dir.file("full") +
                              " --preset memory3-test -b 4 --seq-len 64 --steps 80 --lr 0.003 --warmup 5 --eval-interval 10"
                              " --eval-tokens 512 --checkpoint-interval 4 -t 2 --seed 3 -q");
  ASSERT_EQ(full.exit_code, 0) << full.out;

  // Kill at random points after the run has made progress (so most kills land between two
  // checkpoints and the resumed run has steps to redo), then let it finish.
  std::mt19937 rng(2024);
  auto rows_now = [&] { return fs::exists(dir.file("killed/log.csv")) ? log_rows(dir.file("killed/log.csv")).size() : 0u; };
  int kills = 0;
  bool done = false;
  for (int attempt = 0; attempt < 20 && !done; ++attempt) {
    const size_t before = rows_now();
    const pid_t pid = spawn(args(dir.file("killed"), attempt > 0), dir.file("out.txt"));
    const size_t target = before + 1 + rng() % 7;
    int status = 0;
    bool exited = false;
    while (!exited && (kills >= 8 || rows_now() < target)) {
      exited = ::waitpid(pid, &status, WNOHANG) == pid;
      if (!exited) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    if (!exited) {
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % 20000));
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      if (WIFSIGNALED(status)) {
        ++kills;
        continue;
      }
    }
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << test::read_all(dir.file("out.txt"));
    done = true;
  }
  ASSERT_TRUE(done);
  EXPECT_EQ(kills, 8);
  // Each resumed process continued from a checkpoint past step 0.
  const std::string out = test::read_all(dir.file("out.txt"));
  int resumed = 0;
  for (size_t p = out.find("resumed at step "); p != std::string::npos; p = out.find("resumed at step ", p + 1))
    resumed += std::atoi(out.c_str() + p + 16) > 0;
  EXPECT_GE(resumed, 6) << out;
  EXPECT_EQ(log_rows(dir.file("full/log.csv")), log_rows(dir.file("killed/log.csv")));
  EXPECT_TRUE(test::read_all(dir.file("full/model.gguf")) == test::read_all(dir.file("killed/model.gguf")))
      << "the exported models differ";
  // The exported model is a model `m3 generate` runs.
  const auto gen = test::run(m3 + " generate -m " + dir.file("full/model.gguf") + " -p 'Call me Ishmael.' -n 8 --seed 1");
  EXPECT_EQ(gen.exit_code, 0) << gen.out;
  EXPECT_EQ(gen.out.rfind("Call me Ishmael.", 0), 0u) << gen.out;
}

// ---- CLI: tokenizer from .jsonl, data tokenize, train errors ----------------------------------------

TEST(TrainCli, TokenizerTrainsOnJsonlAndDataTokenizeBuildsADataset) {
  test::TempDir dir;
  const std::string m3 = test::m3_binary();
  std::string jsonl;
  const std::string text = test::read_all(kCorpus);
  std::istringstream lines(text);
  std::string line, doc;
  while (std::getline(lines, line)) {  // whole lines, so no UTF-8 sequence is cut
    doc += line + "\n";
    if (doc.size() > 2000) jsonl += nlohmann::json{{"text", doc}}.dump() + "\n", doc.clear();
  }
  test::write_all(dir.file("c.jsonl"), jsonl);
  auto r = test::run(m3 + " tokenizer train " + dir.file("c.jsonl") + " --vocab 512 -o " + dir.file("t.model"));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(Tokenizer::from_file(dir.file("t.model"))->vocab_size(), 512);
  r = test::run(m3 + " data tokenize " + dir.file("c.jsonl") + " --tokenizer " + dir.file("t.model") + " -o " + dir.file("ds") +
                " --val-fraction 0.1");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const TokenDataset ds(dir.file("ds"));
  EXPECT_EQ(ds.vocab_size(), 512u);
  EXPECT_GT(ds.val().size(), 1000u);

  test::write_all(dir.file("bad.jsonl"), "{\"text\": \"a\"}\nnot json\n");
  r = test::run(m3 + " tokenizer train " + dir.file("bad.jsonl") + " --vocab 300 -o " + dir.file("u.model"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(contains(r.out, "bad.jsonl:2: malformed JSON")) << r.out;
  // Training errors are one line before any step: a config with an unknown key, a missing dataset.
  test::write_all(dir.file("x.toml"), "[train]\nsteps = 3\nbatchsize = 2\n");
  r = test::run(m3 + " train -c " + dir.file("x.toml"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out.rfind("m3: error: ", 0), 0u) << r.out;
  EXPECT_TRUE(contains(r.out, "x.toml:3: unknown key 'train.batchsize'")) << r.out;
  r = test::run(m3 + " train --data " + dir.file("none") + " -o " + dir.file("run") + " --steps 3");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(contains(r.out, "not a token dataset")) << r.out;
}

// ---- smoke: a tiny model learns real text ---------------------------------------------------------

TEST(TrainSmoke, ValidationLossFallsWellBelowTheUnigramEntropy) {
  test::TempDir dir;
  const std::string ds = make_dataset(dir);
  TrainConfig c = small_config(ds, dir.file("run"));
  c.batch = 8;
  c.seq_len = 128;
  c.steps = 300;
  c.warmup = 20;
  c.eval_interval = 0;
  c.eval_tokens = 1 << 20;  // the whole validation split
  c.checkpoint_interval = 0;
  const TrainResult r = train(c, quiet());
  ASSERT_TRUE(r.finished);

  // Unigram entropy (nats) of the validation slice: the loss of the best context-free model.
  const TokenDataset data(ds);
  std::map<int32_t, double> counts;
  for (size_t i = 1; i < data.val().size(); ++i) counts[data.val()[i]] += 1;
  double h = 0;
  const double n = static_cast<double>(data.val().size() - 1);
  for (const auto& [id, k] : counts) h -= k / n * std::log(k / n);
  std::printf("unigram entropy %.3f nats, validation loss after %lld steps %.3f\n", h, static_cast<long long>(r.steps_done),
              static_cast<double>(r.final_val_loss));
  EXPECT_LT(r.final_val_loss, h - 0.5) << "the model learned less than a unigram model";
}

}  // namespace
}  // namespace m3
