// m3 eval (m3/eval.h, src/cli/cmd_eval.cpp): the scores against separate computations (Forward's
// full-sequence logits, fresh Sessions per choice), the three modes against `m3 generate` with
// and without --bank / --rag, the leakage filter, the reports, and bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>

#include <nlohmann/json.hpp>

#include "m3/bank.h"
#include "m3/bank_memory_source.h"
#include "m3/bank_retriever.h"
#include "m3/error.h"
#include "m3/eval.h"
#include "m3/forward.h"
#include "m3/session.h"
#include "test_helpers.h"

namespace m3 {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using test::expect_error;
using test::run;

const std::string kData = M3_TEST_DATA;
const std::string kModel = kData + "/test-rt.gguf";
const std::string kM3 = test::m3_binary();
const std::string kQuestion = "What is the capital of Chad?";

std::string q(const std::string& s) { return "'" + s + "'"; }

const Model& model() {
  static const std::unique_ptr<Model> m = Model::load(kModel);
  return *m;
}

std::string sea_words(std::mt19937_64& rng, int n) {
  static const std::vector<std::string> words = {"whale", "ship", "harpoon", "captain", "ocean", "sea", "sail", "wind",
                                                 "storm", "island", "harbor", "anchor", "deck", "mast", "crew", "voyage"};
  std::string s;
  for (int i = 0; i < n; ++i) s += (i ? " " : "") + words[rng() % words.size()];
  return s;
}

// log softmax(row)[target], in double.
double log_prob(const float* row, int V, int target) {
  const float m = *std::max_element(row, row + V);
  double s = 0;
  for (int v = 0; v < V; ++v) s += std::exp(double(row[v]) - m);
  return double(row[target]) - m - std::log(s);
}

// One bank for the whole file: a reference identical to kQuestion, facts, and sea paragraphs.
class Eval : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir;
    const std::string kb = dir_->file("kb");
    fs::create_directories(kb);
    test::write_all(kb + "/chad.txt", kQuestion + "\n");
    test::write_all(kb + "/facts.txt",
                    "The capital of Chad is N'Djamena, a city on the Chari river.\n\n"
                    "Whales are large marine mammals that breathe air through a blowhole.\n");
    std::mt19937_64 rng(7);
    for (int d = 0; d < 4; ++d) test::write_all(kb + "/sea" + std::to_string(d) + ".txt", sea_words(rng, 30) + ".\n\n" + sea_words(rng, 25) + ".\n");
    bank_ = dir_->file("bank");
    const auto r = run(kM3 + " memorize -m " + q(kModel) + " --kb " + q(kb) + " -o " + q(bank_) + " -t 1 --retriever none");
    ASSERT_EQ(r.exit_code, 0) << r.out;
    auto bank = MemoryBank::open(bank_, &model(), false);
    for (int64_t id = 0; id < bank->reference_count(); ++id)
      if (bank->reference(id).text == kQuestion) chad_ = id;
    ASSERT_GE(chad_, 0) << "the knowledge base should give a reference identical to the question";

    qa_ = dir_->file("capitals.jsonl");
    test::write_all(qa_, json{{"id", "chad"}, {"question", kQuestion}, {"answer", "N'Djamena"}}.dump() + "\n" +
                             json{{"id", "whales"}, {"question", "What do whales breathe?"}, {"answer", {"air", "Air"}}}.dump() + "\n\n" +
                             json{{"id", 3}, {"question", "Who watched the storm from the deck?"}, {"answer", "the captain"}}.dump() + "\n");
    mc_ = dir_->file("sea-mc.jsonl");
    test::write_all(mc_, json{{"id", "m1"}, {"context", "The capital of Chad is"}, {"choices", {" N'Djamena", " Paris", " Rome"}}, {"gold", 0}}.dump() +
                             "\n" +
                             json{{"id", "m2"}, {"context", "Whales breathe"}, {"choices", {" air", " water"}}, {"gold", 1}}.dump() + "\n");
    ppl_ = dir_->file("sea-text.jsonl");
    test::write_all(ppl_, json{{"text", "The captain watched the storm. " + sea_words(rng, 40)}}.dump() + "\n");
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }

  static test::TempDir* dir_;
  static std::string bank_, qa_, mc_, ppl_;
  static int64_t chad_;
};
test::TempDir* Eval::dir_ = nullptr;
std::string Eval::bank_, Eval::qa_, Eval::mc_, Eval::ppl_;
int64_t Eval::chad_ = -1;

EvalTask mc_task(const std::vector<McItem>& items) {
  EvalTask t;
  t.kind = EvalTaskKind::MultipleChoice;
  t.name = t.path = "inline";
  t.mc = items;
  return t;
}

// ---- scores against separate computations -------------------------------------------------------

TEST_F(Eval, ChoiceLoglikIsTheSumOfLogSoftmaxOverTheFullSequencesLogits) {
  ThreadPool pool(2);
  EvalSettings s;  // no bank: none mode
  Evaluator ev(model(), &pool, s);
  std::mt19937_64 rng(11);
  McItem item;
  item.id = "x";
  item.context = "The captain said: " + sea_words(rng, 25);  // ~100 tokens: the choices start past chunk 0
  item.choices = {" and the whale dove.", " storm", " harbor anchor deck mast crew voyage island"};
  item.gold = 2;
  const EvalRecord rec = ev.score_choices(mc_task({item}), item, EvalMode::None);
  ASSERT_EQ(rec.loglik.size(), 3u);

  const Tokenizer& tok = *model().tokenizer();
  const int V = model().config().vocab_size;
  const std::vector<int32_t> ctx = tok.encode(item.context, true);
  ASSERT_GT(ctx.size(), 64u);
  int best_norm = 0;
  for (size_t i = 0; i < item.choices.size(); ++i) {
    const std::vector<int32_t> whole = tok.encode(item.context + item.choices[i], true);
    size_t n = 0;
    while (n < ctx.size() && whole[n] == ctx[n]) ++n;
    KVCache cache(model().config(), static_cast<int>(whole.size()));
    Forward fwd(model(), &pool);
    std::vector<float> logits(whole.size() * size_t(V));
    fwd.eval(whole, cache, logits.data(), true);
    double ll = 0;
    for (size_t t = n; t < whole.size(); ++t) ll += log_prob(logits.data() + (t - 1) * V, V, whole[t]);
    EXPECT_NEAR(rec.loglik[i], ll, 1e-3 * std::max(1.0, std::abs(ll))) << "choice " << i;
    EXPECT_EQ(rec.choice_tokens[i], int(whole.size() - n));
    if (rec.loglik[i] / item.choices[i].size() > rec.loglik[best_norm] / item.choices[best_norm].size()) best_norm = int(i);
  }
  EXPECT_EQ(rec.pred, int(std::max_element(rec.loglik.begin(), rec.loglik.end()) - rec.loglik.begin()));
  EXPECT_EQ(rec.pred_norm, best_norm);
  EXPECT_TRUE(rec.references.empty());
}

TEST_F(Eval, MemoryModeChoicesEqualAFreshMemorySessionPerChoice) {
  // The evaluator runs the context once and truncates back between choices; a fresh session per
  // choice, reading the same bank through its own BankMemorySource, must give the same numbers.
  ThreadPool pool(2);
  EvalSettings s;
  s.bank = bank_;
  s.leakage = 2.0;
  Evaluator ev(model(), &pool, s);
  std::mt19937_64 rng(5);
  McItem item;
  item.id = "y";
  item.context = "Whales breathe air. The capital of Chad is N'Djamena. " + sea_words(rng, 20);
  item.choices = {" whale", " captain of the ship", " storm"};
  const EvalRecord rec = ev.score_choices(mc_task({item}), item, EvalMode::Memory);
  ASSERT_FALSE(rec.references.empty()) << "the context should retrieve memories";

  const Tokenizer& tok = *model().tokenizer();
  const int V = model().config().vocab_size;
  auto bank = MemoryBank::open(bank_, &model(), false);
  BankRetriever retriever = open_bank_retriever(*bank, &model(), "bm25", &pool);
  PrefixKV prefix(model(), &pool);
  const std::vector<int32_t> ctx = tok.encode(item.context, true);
  for (size_t i = 0; i < item.choices.size(); ++i) {
    const std::vector<int32_t> whole = tok.encode(item.context + item.choices[i], true);
    ASSERT_TRUE(std::equal(ctx.begin(), ctx.end(), whole.begin())) << "choose choices that do not merge with the context";
    BankMemorySource source(*bank, *retriever.retriever, nullptr, {});
    Session session(model(), &pool, &prefix, &source, static_cast<int>(whole.size()));
    std::vector<float> last(V), all((whole.size() - ctx.size()) * size_t(V));
    session.prompt(ctx, last.data());
    session.prompt(std::span<const int32_t>(whole.data() + ctx.size(), whole.size() - ctx.size()), nullptr, all.data());
    double ll = log_prob(last.data(), V, whole[ctx.size()]);
    for (size_t t = ctx.size() + 1; t < whole.size(); ++t) ll += log_prob(all.data() + (t - 1 - ctx.size()) * V, V, whole[t]);
    EXPECT_NEAR(rec.loglik[i], ll, 1e-9 * std::max(1.0, std::abs(ll))) << "choice " << i;
  }
  // Memories change the scores (the model reads them).
  const EvalRecord plain = ev.score_choices(mc_task({item}), item, EvalMode::None);
  EXPECT_GT(std::abs(plain.loglik[0] - rec.loglik[0]), 1e-4);
}

TEST_F(Eval, PerplexityIsTheMeanNllOfForwardOverTheWindows) {
  ThreadPool pool(2);
  Evaluator ev(model(), &pool, EvalSettings{});
  const int W = ev.perplexity_window();
  EXPECT_EQ(W, model().config().context_length - int(model().tokenizer()->prefix_tokens(model().config().memory.prefix_text).size()) -
                   model().config().memory.reference_length);
  std::mt19937_64 rng(3);
  EvalTask task;
  task.kind = EvalTaskKind::Perplexity;
  task.name = task.path = "inline";
  task.texts = {{"a", sea_words(rng, 300), 1}, {"b", "Short text.", 2}};
  const EvalSliceResult r = ev.run(task, EvalMode::None);

  const Tokenizer& tok = *model().tokenizer();
  const int V = model().config().vocab_size;
  double nll = 0;
  int64_t tokens = 0;
  for (const TextItem& t : task.texts) {
    const std::vector<int32_t> doc = tok.encode(t.text);
    for (size_t b = 0; b < doc.size(); b += W - 1) {
      std::vector<int32_t> seq = {tok.bos_id()};
      seq.insert(seq.end(), doc.begin() + b, doc.begin() + std::min(doc.size(), b + W - 1));
      KVCache cache(model().config(), int(seq.size()));
      Forward fwd(model(), &pool);
      std::vector<float> logits(seq.size() * size_t(V));
      fwd.eval(seq, cache, logits.data(), true);
      for (size_t i = 0; i + 1 < seq.size(); ++i) nll -= log_prob(logits.data() + i * V, V, seq[i + 1]);
      tokens += int64_t(seq.size()) - 1;
    }
  }
  ASSERT_GT(tokens, 2 * W) << "the first document should span three windows";
  EXPECT_EQ(r.tokens, tokens);
  EXPECT_NEAR(r.nll_per_token, nll / tokens, 1e-4);
  EXPECT_NEAR(r.perplexity, std::exp(nll / tokens), 1e-3 * r.perplexity);
  EXPECT_EQ(r.records[0].tokens + r.records[1].tokens, tokens);

  // rag does not score documents: skipped, with a reason.
  const EvalSliceResult rag = ev.run(task, EvalMode::Rag);
  EXPECT_TRUE(rag.skipped);
  EXPECT_FALSE(rag.note.empty());
}

// ---- the leakage filter -------------------------------------------------------------------------

TEST_F(Eval, LeakageFilterDropsAReferenceIdenticalToTheQuestion) {
  ThreadPool pool(2);
  const EvalTask task = load_eval_task(EvalTaskKind::Qa, qa_);
  const QaItem& chad = task.qa[0];
  ASSERT_EQ(chad.question, kQuestion);
  auto ids = [](const EvalRecord& r) {
    std::vector<int64_t> v;
    for (const auto& ref : r.references) v.push_back(ref.id);
    return v;
  };
  for (EvalMode mode : {EvalMode::Memory, EvalMode::Rag}) {
    SCOPED_TRACE(eval_mode_name(mode));
    EvalSettings off;
    off.bank = bank_;
    off.leakage = 2.0;
    Evaluator ev_off(model(), &pool, off);
    const EvalRecord kept = ev_off.answer(task, chad, mode);
    const auto kept_ids = ids(kept);
    EXPECT_NE(std::find(kept_ids.begin(), kept_ids.end(), chad_), kept_ids.end()) << "without the filter the question's twin is read";
    EXPECT_EQ(kept.dropped, 0);

    EvalSettings on = off;
    on.leakage = kEvaluationOverlapLimit;
    Evaluator ev_on(model(), &pool, on);
    const EvalRecord filtered = ev_on.answer(task, chad, mode);
    const auto filtered_ids = ids(filtered);
    EXPECT_EQ(std::find(filtered_ids.begin(), filtered_ids.end(), chad_), filtered_ids.end());
    EXPECT_GE(filtered.dropped, 1);
    EXPECT_FALSE(filtered.references.empty()) << "the other references are still read";
    // The slice counts what its items dropped.
    const EvalSliceResult slice = ev_on.run(task, mode);
    EXPECT_GE(slice.dropped, 1);
  }
}

// ---- the CLI against m3 generate ---------------------------------------------------------------

// The first line of what `m3 generate --greedy -n 24` adds to `prompt` (with `extra` options), trimmed.
std::string generate_first_line(const std::string& prompt_file, const std::string& extra) {
  const auto r = run("(" + kM3 + " generate -m " + q(kModel) + " -f " + q(prompt_file) + " --greedy -n 24 -t 1 " + extra + " 2>/dev/null)");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  const std::string prompt = test::read_all(prompt_file);
  EXPECT_EQ(r.out.rfind(prompt, 0), 0u) << r.out;
  std::string rest = r.out.substr(std::min(r.out.size(), prompt.size()));
  return eval_trim(rest.substr(0, rest.find('\n')));
}

json eval_json(const std::string& args) {
  const auto r = run("(" + kM3 + " eval -m " + q(kModel) + " -t 1 --json " + args + " 2>/dev/null)");
  EXPECT_EQ(r.exit_code, 0) << args << "\n" << r.out;
  try {
    return json::parse(r.out);
  } catch (const json::exception&) {
    ADD_FAILURE() << "not JSON: " << r.out;
    return json::object();
  }
}

TEST_F(Eval, EachModeAnswersAsMGenerateDoes) {
  // Items whose prompt is the question itself, so that rag retrieves with the same text as
  // `m3 generate --rag` (which retrieves with its whole prompt).
  const std::string qa = dir_->file("as-generate.jsonl");
  const std::vector<std::string> questions = {kQuestion, "What do whales breathe?", "Who watched the storm from the deck?"};
  std::string lines;
  for (const auto& s : questions) lines += json{{"question", s}, {"prompt", s}, {"answer", "x"}}.dump() + "\n";
  test::write_all(qa, lines);
  const json j = eval_json("--bank " + q(bank_) + " --leakage off --qa " + q(qa));
  ASSERT_EQ(j["results"].size(), 3u);
  int non_empty = 0;
  for (const json& slice : j["results"]) {
    const std::string mode = slice["mode"];
    const std::string extra = mode == "memory" ? "--bank " + q(bank_) : mode == "rag" ? "--bank " + q(bank_) + " --rag --rag-references 5" : "";
    ASSERT_EQ(slice["items"].size(), questions.size());
    for (size_t i = 0; i < questions.size(); ++i) {
      const std::string prompt_file = dir_->file("prompt.txt");
      test::write_all(prompt_file, questions[i]);
      const std::string answer = slice["items"][i]["answer"];
      EXPECT_EQ(answer, generate_first_line(prompt_file, extra)) << mode << ": " << questions[i];
      non_empty += !answer.empty();
    }
  }
  EXPECT_GT(non_empty, 0);
}

TEST_F(Eval, ReportsCoverEverySliceAndMode) {
  const std::string out = dir_->file("out");
  const auto r = run("(" + kM3 + " eval -m " + q(kModel) + " -t 1 --bank " + q(bank_) + " --qa " + q(qa_) + " --mc " + q(mc_) +
                     " --perplexity " + q(ppl_) + " --out " + q(out) + " --limit 2 --json 2>/dev/null)");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const json j = json::parse(test::read_all(out + "/results.json"));
  EXPECT_EQ(json::parse(r.out), j) << "--json prints results.json";
  EXPECT_EQ(j["settings"]["model"]["fingerprint"], model().fingerprint());
  EXPECT_EQ(j["settings"]["retriever"], "bm25");
  EXPECT_EQ(j["settings"]["memories"], 5);
  EXPECT_NEAR(j["settings"]["leakage"].get<double>(), 2.0 / 3.0, 1e-12) << "the default is the paper's 2/3";
  EXPECT_EQ(j["settings"]["modes"], json({"memory", "none", "rag"}));
  const std::string md = test::read_all(out + "/results.md");
  const std::string svg = test::read_all(out + "/results.svg");
  EXPECT_EQ(svg.rfind("<svg ", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  ASSERT_EQ(j["results"].size(), 9u);
  size_t at = 0;
  for (const std::string slice : {"capitals", "sea-mc", "sea-text"}) {
    for (const std::string mode : {"memory", "none", "rag"}) {
      SCOPED_TRACE(slice + " " + mode);
      const json& s = j["results"][at++];
      EXPECT_EQ(s["slice"], slice);
      EXPECT_EQ(s["mode"], mode);
      EXPECT_NE(md.find("| " + slice + " | " + mode + " |"), std::string::npos) << md;
      if (slice == "sea-text" && mode == "rag") {
        EXPECT_EQ(s["skipped"], true);
        continue;
      }
      EXPECT_EQ(s["n"], slice == "sea-text" ? 1 : 2) << "--limit 2";
      ASSERT_EQ(s["items"].size(), s["n"].get<size_t>());
      EXPECT_GT(s["seconds_per_item"].get<double>(), 0.0);
      if (slice == "capitals") {
        EXPECT_TRUE(s["items"][0].contains("answer"));
        EXPECT_EQ(s["items"][1]["gold"], json({"air", "Air"}));
        EXPECT_NE(svg.find("capitals (qa) " + mode + ": "), std::string::npos);
        if (mode != "none") {
          ASSERT_FALSE(s["items"][1]["references"].empty());
          EXPECT_TRUE(s["items"][1]["references"][0].contains("text"));
        }
      } else if (slice == "sea-mc") {
        EXPECT_EQ(s["items"][0]["loglik"].size(), 3u);
        const double acc = s["acc"];
        int hits = 0;
        for (const json& it : s["items"]) hits += it["pred"] == it["gold"];
        EXPECT_DOUBLE_EQ(acc, hits / 2.0);
        EXPECT_NE(svg.find("sea-mc (mc) " + mode + ": "), std::string::npos);
      } else {
        EXPECT_GT(s["tokens"].get<int>(), 10);
        EXPECT_NEAR(std::log(s["perplexity"].get<double>()), s["nll_per_token"].get<double>(), 1e-9);
      }
    }
  }
  // The memory and none perplexities differ: the memory mode read memories.
  EXPECT_NE(j["results"][6]["nll_per_token"], j["results"][7]["nll_per_token"]);
  EXPECT_FALSE(j["results"][6]["items"][0]["references"].empty());

  // Without --bank only none runs; the table on stdout is Markdown.
  const auto plain = run("(" + kM3 + " eval -m " + q(kModel) + " -t 1 --qa " + q(qa_) + " 2>/dev/null)");
  ASSERT_EQ(plain.exit_code, 0) << plain.out;
  EXPECT_NE(plain.out.find("| capitals | none | 3 |"), std::string::npos) << plain.out;
  EXPECT_EQ(plain.out.find("| memory |"), std::string::npos) << plain.out;
}

// ---- items and bad input ------------------------------------------------------------------------

TEST(EvalInput, ExactMatchAndModes) {
  EXPECT_TRUE(eval_exact_match("  Paris \n", {"Paris"}, false));
  EXPECT_FALSE(eval_exact_match("paris", {"Paris"}, false));
  EXPECT_TRUE(eval_exact_match("paris", {"London", "PARIS"}, true));
  EXPECT_FALSE(eval_exact_match("Paris.", {"Paris"}, true));
  EXPECT_EQ(parse_eval_modes("rag, none"), (std::vector<EvalMode>{EvalMode::Rag, EvalMode::None}));
  EXPECT_NE(test::error_of([] { parse_eval_modes("memory,retro"); }).find("unknown mode 'retro'"), std::string::npos);
  EXPECT_NE(test::error_of([] { parse_eval_modes("none,none"); }).find("twice"), std::string::npos);
}

TEST(EvalInput, QaPromptsAndLimit) {
  test::TempDir dir;
  const std::string f = dir.file("p.jsonl");
  test::write_all(f, json{{"question", "Q: Who?\nA:"}, {"answer", "x"}}.dump() + "\n" +
                         json{{"question", "Who?"}, {"answer", "x"}}.dump() + "\n" +
                         json{{"question", "Who?"}, {"prompt", "Name: "}, {"answer", "x"}, {"other", 1}}.dump() + "\n");
  const EvalTask t = load_eval_task(EvalTaskKind::Qa, f);
  ASSERT_EQ(t.qa.size(), 3u);
  EXPECT_EQ(t.name, "p");
  EXPECT_EQ(t.qa[0].prompt, "Q: Who?\nA:");  // already a prompt
  EXPECT_EQ(t.qa[1].prompt, "Q: Who?\nA:");
  EXPECT_EQ(t.qa[2].prompt, "Name: ");
  EXPECT_EQ(t.qa[1].id, "line 2");
  EXPECT_EQ(load_eval_task(EvalTaskKind::Qa, f, 2).qa.size(), 2u);
}

TEST_F(Eval, BadInputIsANamedOneLineError) {
  auto file = [&](const std::string& name, const std::string& text) {
    const std::string p = dir_->file(name);
    test::write_all(p, text);
    return q(p);
  };
  const std::string m = " eval -m " + q(kModel) + " -t 1";
  expect_error(m + " --qa " + file("noanswer.jsonl", "{\"id\":\"a\",\"question\":\"Why?\",\"answer\":\"x\"}\n{\"id\":\"b\",\"question\":\"Why?\"}\n"),
               "noanswer.jsonl:2: missing field \"answer\"");
  expect_error(m + " --qa " + file("badjson.jsonl", "{\"question\": \"Why?\", \"answer\": \n"), "badjson.jsonl:1: invalid JSON");
  expect_error(m + " --qa " + file("numanswer.jsonl", "{\"question\": \"Why?\", \"answer\": 42}\n"),
               "numanswer.jsonl:1: field \"answer\" must be a string or a non-empty array of strings, not an integer");
  expect_error(m + " --mc " + file("gold.jsonl", "{\"context\":\"A\",\"choices\":[\"b\",\"c\"],\"gold\":2}\n"),
               "gold.jsonl:1: field \"gold\" is 2, outside 0..1");
  expect_error(m + " --mc " + file("nochoices.jsonl", "{\"context\":\"A\",\"choices\":[],\"gold\":0}\n"),
               "nochoices.jsonl:1: field \"choices\" is empty");
  expect_error(m + " --mc " + file("emptychoice.jsonl", "{\"context\":\"A\",\"choices\":[\"b\",\"\"],\"gold\":0}\n"),
               "emptychoice.jsonl:1: choices[1] is empty");
  expect_error(m + " --perplexity " + file("notext.jsonl", "[1,2]\n"), "notext.jsonl:1: expected a JSON object, not an array");
  expect_error(m + " --perplexity " + file("blank.jsonl", "\n\n"), "blank.jsonl: no items");
  expect_error(m + " --qa " + q(dir_->file("missing.jsonl")), "missing.jsonl: cannot open qa file");
  expect_error(m + " --qa " + q(qa_) + " --modes none,retro", "unknown mode 'retro'");
  expect_error(m + " --qa " + q(qa_) + " --limit 0", "--limit must be >= 1");
  expect_error(m + " --qa " + q(qa_) + " --modes memory", "mode 'memory' needs a memory bank");
  expect_error(m + " --qa " + q(qa_) + " --modes rag", "mode 'rag' needs a memory bank");
  expect_error(m + " --qa " + q(qa_) + " --bank " + q(bank_) + " --leakage most", "--leakage 'most'");
  expect_error(m + " --qa " + q(qa_) + " --bank " + q(bank_) + " --memories 6", "--memories 6 is outside 0..5");
  expect_error(m, "nothing to evaluate");
  // An item too long for a memory session (context 512 less prefix and window) is named.
  const std::string long_q = json{{"id", "long"}, {"question", std::string(2000, 'x')}, {"answer", "y"}}.dump() + "\n";
  const auto r = run(kM3 + m + " --bank " + q(bank_) + " --modes memory --qa " + file("long.jsonl", long_q));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("long.jsonl:1 (id long): the prompt has"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace m3
