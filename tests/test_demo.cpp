// The committed demo model (models/memory3-tiny-kb.gguf, trained here with stage 1 and stage 2;
// docs/results.md) end to end, as a user's first command runs it: memorize the committed knowledge
// base, then read it. Checks (each can fail if any piece of the path breaks: the model file, its
// tokenizer, the writer, the bank, bm25, the read path, generation, `m3 eval`):
//   - six memory-only questions of different relations that the full evaluation answered correctly
//     with memory and wrongly without (docs/results.md: 503 of 786 are; 64.9% exact match with
//     memory, 0.9% without) still are;
//   - memories lower the held-out text's loss (knowledge/heldout.jsonl: memory-only facts, never
//     trained on; full evaluation: 2.062 vs 2.871 nats per token).
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "test_helpers.h"

namespace m3 {
namespace {

const std::string kSource = M3_SOURCE_DIR;
const std::string kModel = kSource + "/models/memory3-tiny-kb.gguf";
const std::set<std::string> kFacts = {"airport_city:bos",         "airport_city:lis",         "birth_year:edgard-varese",
                                      "country_code:new-zealand", "region_capital:tatarstan", "country_capital:new-caledonia"};

nlohmann::json results(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  return nlohmann::json::parse(in)["results"];
}

TEST(DemoModel, ReadsItsMemoriesEndToEnd) {
  test::TempDir dir;
  const std::string d = dir.file("");
  std::ifstream qs(kSource + "/knowledge/questions/memory_only.jsonl");
  ASSERT_TRUE(qs.good());
  std::ofstream asked(d + "questions.jsonl");
  int n = 0;
  for (std::string line; std::getline(qs, line);)
    if (kFacts.count(nlohmann::json::parse(line)["fact_id"].get<std::string>())) asked << line << "\n", ++n;
  asked.close();
  ASSERT_EQ(n, int(kFacts.size()));
  std::ifstream held(kSource + "/knowledge/heldout.jsonl");
  std::ofstream text(d + "heldout.jsonl");
  std::string line;
  for (int i = 0; i < 60 && std::getline(held, line); ++i) text << line << "\n";
  text.close();

  const std::string m3 = test::m3_binary();
  const auto mem = test::run(m3 + " memorize -m " + kModel + " --kb " + kSource + "/knowledge/kb.jsonl -o " + d +
                             "bank --retriever none");
  ASSERT_EQ(mem.exit_code, 0) << mem.out;
  const auto ev = test::run(m3 + " eval -m " + kModel + " --bank " + d + "bank --qa " + d + "questions.jsonl --perplexity " +
                            d + "heldout.jsonl --modes memory,none --out " + d + "eval");
  ASSERT_EQ(ev.exit_code, 0) << ev.out;
  double exact[2] = {-1, -1}, nll[2] = {-1, -1};
  for (const auto& r : results(d + "eval/results.json")) {
    const int m = r["mode"] == "memory" ? 0 : 1;
    if (r["task"] == "qa") {
      exact[m] = r["exact_match"].get<double>();  // a fraction
      for (const auto& item : r["items"])
        std::printf("[ %s ] %s -> '%s' (gold '%s')\n", r["mode"].get<std::string>().c_str(),
                    item["id"].get<std::string>().c_str(), item["answer"].get<std::string>().c_str(),
                    item["gold"][0].get<std::string>().c_str());
    } else {
      nll[m] = r["nll_per_token"].get<double>();
    }
  }
  std::printf("[ demo ] exact match with memory %.0f%%, without %.0f%%; held-out nll %.4f with memory, %.4f without\n",
              100 * exact[0], 100 * exact[1], nll[0], nll[1]);
  EXPECT_EQ(exact[0], 1.0);
  EXPECT_EQ(exact[1], 0.0);
  EXPECT_GT(nll[0], 0.0);
  EXPECT_LT(nll[0], nll[1] - 0.05);
}

}  // namespace
}  // namespace m3
