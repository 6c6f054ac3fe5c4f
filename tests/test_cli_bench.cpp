// `m3 bench` end to end on the tiny preset with one run per measurement: the structure of its
// output and that every figure and ratio is positive and finite. Speed goals are never tests (they
// live in docs/performance.md and the benchmarks): nothing here depends on how fast the machine is.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "test_helpers.h"

namespace m3::test {
namespace {

using nlohmann::json;

// A few decoded tokens, a short prompt, small training steps: the whole run takes seconds.
const std::string kQuick =
    " bench --preset memory3-tiny --reps 1 --threads 2 --no-torch --decode-tokens 4 --prefill-tokens 64"
    " --memorize-refs 2 --bank-refs 6 --memory-tokens 64 --train-batch 2 --train-seq 64";

void expect_positive(const json& j, const std::string& key, const std::string& where) {
  ASSERT_TRUE(j.contains(key)) << where << " lacks " << key << ": " << j.dump();
  ASSERT_TRUE(j[key].is_number()) << where << "." << key << " = " << j[key].dump();
  const double v = j[key].get<double>();
  EXPECT_TRUE(std::isfinite(v) && v > 0) << where << "." << key << " = " << v;
}

TEST(CliBench, JsonHasEveryPartWithPositiveRatios) {
  TempDir dir;
  // stdout alone is the JSON; the progress text goes to stderr (kept in a file for failures).
  const auto r = run("{ M3_SOURCE_DIR=" M3_SOURCE_DIR " " + m3_binary() + kQuick + " --json --dir " + dir.file("work") + " 2>" +
                     dir.file("log") + "; }");
  ASSERT_EQ(r.exit_code, 0) << r.out << read_all(dir.file("log"));
  json j;
  ASSERT_NO_THROW(j = json::parse(r.out)) << r.out;
  EXPECT_EQ(j["preset"], "memory3-tiny");
  EXPECT_EQ(j["threads"], 2);
  EXPECT_EQ(j["reps"], 1);
  expect_positive(j["machine"], "read_gbs", "machine");
  expect_positive(j["machine"], "read_gbs_1_thread", "machine");
  expect_positive(j["machine"], "sgemm_peak_gflops", "machine");

  ASSERT_EQ(j["decode"].size(), 3u);
  ASSERT_EQ(j["prefill"].size(), 3u);
  const char* types[] = {"f32", "q8_0", "q4_0"};
  for (int i = 0; i < 3; ++i) {
    const json& d = j["decode"][i];
    EXPECT_EQ(d["type"], types[i]);
    for (const char* k : {"tok_s", "bytes_per_token", "gbs", "roofline_tok_s", "of_roofline"}) expect_positive(d, k, "decode");
    const json& p = j["prefill"][i];
    EXPECT_EQ(p["type"], types[i]);
    EXPECT_EQ(p["tokens"], 64);
    for (const char* k : {"seconds", "tok_s", "gflops", "of_sgemm_peak"}) expect_positive(p, k, "prefill");
  }
  const json& m = j["memorize"];
  EXPECT_EQ(m["refs"], 2);
  EXPECT_EQ(m["reference_tokens"], 128);
  EXPECT_EQ(m["layers"], 2);
  for (const char* k : {"write_refs_s", "write_gflops", "write_of_sgemm_peak", "prefill_refs_s", "prefill_gflops",
                        "prefill_of_sgemm_peak"})
    expect_positive(m, k, "memorize");
  const json& mem = j["memory"];
  EXPECT_EQ(mem["per_chunk"], 5);
  EXPECT_EQ(mem["memories"], 6);
  for (const char* k : {"with_tok_s", "without_tok_s", "ratio"}) expect_positive(mem, k, "memory");
  const json& t = j["train"];
  expect_positive(t, "m3_tok_s", "train");
  EXPECT_TRUE(t["torch_tok_s"].is_null());
  EXPECT_TRUE(t["ratio"].is_null());
  EXPECT_EQ(t["torch"], "not requested");
}

TEST(CliBench, TextSummaryNamesEachRatio) {
  TempDir dir;
  const auto r = run("M3_SOURCE_DIR=" M3_SOURCE_DIR " " + m3_binary() + kQuick + " --parts decode,prefill,memory --types q4_0 --dir " +
                     dir.file("work"));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  for (const char* s : {"read bandwidth", "sgemm peak", "summary", "decode q4_0", "of roofline", "prefill q4_0", "of sgemm peak",
                        "with / without memory"})
    EXPECT_NE(r.out.find(s), std::string::npos) << "missing '" << s << "' in:\n" << r.out;
  EXPECT_EQ(r.out.find("train"), std::string::npos) << r.out;
}

TEST(CliBench, BadOptionsAreOneLineErrors) {
  expect_error("bench --parts decode,nope", "unknown part 'nope'");
  expect_error("bench --types q5_k", "unknown weight type 'q5_k'");
  expect_error("bench --reps 0", "--reps must be at least 1");
  expect_error("bench --preset memory3-huge --parts decode", "unknown model preset");
}

}  // namespace
}  // namespace m3::test
