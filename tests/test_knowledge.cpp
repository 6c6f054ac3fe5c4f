// Knowledge bases: loading (txt/md/jsonl and their errors) and the reference splitter's
// invariants, as rapidcheck properties over random texts.
#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include <filesystem>

#include "m3/error.h"
#include "m3/knowledge.h"
#include "m3/model.h"
#include "test_helpers.h"

namespace m3 {
namespace {

const std::string kData = M3_TEST_DATA;

const Tokenizer& tokenizer() {
  static const std::unique_ptr<Model> model = Model::load(kData + "/test-f32.gguf");
  return *model->tokenizer();
}

using test::error_of;

void mkfile(const test::TempDir& dir, const std::string& rel, const std::string& bytes) {
  std::filesystem::create_directories(std::filesystem::path(dir.file(rel)).parent_path());
  test::write_all(dir.file(rel), bytes);
}

TEST(Knowledge, LoadsFolderInSortedOrder) {
  test::TempDir dir;
  mkfile(dir, "b.md", "Intro line\n\n## The B Title ##\nbody");
  mkfile(dir, "a/z.txt", "plain text\n");
  mkfile(dir, "a/c.jsonl",
         "{\"id\": \"j1\", \"text\": \"first\", \"title\": \"T1\", \"extra\": [1,2]}\n\n"
         "{\"id\": 7, \"text\": \"second\", \"source\": \"web\"}\n");
  mkfile(dir, "notes.csv", "ignored");
  mkfile(dir, ".hidden/x.txt", "ignored");
  mkfile(dir, ".y.txt", "ignored");
  const auto docs = load_knowledge_base(dir.file(""));
  ASSERT_EQ(docs.size(), 4u);
  EXPECT_EQ(docs[0].id, "j1");  // a/c.jsonl sorts before a/z.txt and b.md
  EXPECT_EQ(docs[0].title, "T1");
  EXPECT_EQ(docs[0].text, "first");
  EXPECT_NE(docs[0].source.find("c.jsonl:1"), std::string::npos);
  EXPECT_EQ(docs[1].id, "7");
  EXPECT_EQ(docs[1].source, "web");
  EXPECT_EQ(docs[1].title, "");
  EXPECT_EQ(docs[2].id, "a/z.txt");
  EXPECT_EQ(docs[2].title, "z");
  EXPECT_EQ(docs[2].text, "plain text\n");
  EXPECT_EQ(docs[3].id, "b.md");
  EXPECT_EQ(docs[3].title, "The B Title");
}

TEST(Knowledge, LoadsSingleFiles) {
  test::TempDir dir;
  mkfile(dir, "kb.jsonl", "{\"id\":\"x\",\"text\":\"hello\"}");  // no final newline
  mkfile(dir, "doc.md", "\xEF\xBB\xBF# Heading\ntext");
  EXPECT_EQ(load_knowledge_base(dir.file("kb.jsonl")).at(0).text, "hello");
  const auto md = load_knowledge_base(dir.file("doc.md"));
  ASSERT_EQ(md.size(), 1u);
  EXPECT_EQ(md[0].id, "doc.md");
  EXPECT_EQ(md[0].title, "Heading");
  EXPECT_EQ(md[0].text, "# Heading\ntext");  // byte-order mark dropped
}

TEST(Knowledge, ErrorsNameFileLineAndField) {
  test::TempDir dir;
  mkfile(dir, "bad.jsonl", "{\"id\":\"a\",\"text\":\"ok\"}\n{\"id\":\"b\",\"text\":\"ok\"}\n{\"id\": \"c\", text}\n");
  std::string e = error_of([&] { load_knowledge_base(dir.file("bad.jsonl")); });
  EXPECT_NE(e.find("bad.jsonl:3"), std::string::npos) << e;
  EXPECT_NE(e.find("malformed JSON"), std::string::npos) << e;

  mkfile(dir, "notext.jsonl", "{\"id\":\"a\",\"text\":\"ok\"}\n{\"id\":\"b\"}\n");
  e = error_of([&] { load_knowledge_base(dir.file("notext.jsonl")); });
  EXPECT_NE(e.find("notext.jsonl:2"), std::string::npos) << e;
  EXPECT_NE(e.find("'text'"), std::string::npos) << e;

  mkfile(dir, "noid.jsonl", "{\"text\":\"ok\"}\n");
  e = error_of([&] { load_knowledge_base(dir.file("noid.jsonl")); });
  EXPECT_NE(e.find("noid.jsonl:1"), std::string::npos) << e;
  EXPECT_NE(e.find("'id'"), std::string::npos) << e;

  mkfile(dir, "wrongtype.jsonl", "{\"id\":\"a\",\"text\":5}\n");
  e = error_of([&] { load_knowledge_base(dir.file("wrongtype.jsonl")); });
  EXPECT_NE(e.find("'text' must be a string"), std::string::npos) << e;

  mkfile(dir, "array.jsonl", "[1, 2]\n");
  e = error_of([&] { load_knowledge_base(dir.file("array.jsonl")); });
  EXPECT_NE(e.find("expected a JSON object"), std::string::npos) << e;

  mkfile(dir, "latin1.txt", "caf\xE9 au lait");
  e = error_of([&] { load_knowledge_base(dir.file("latin1.txt")); });
  EXPECT_NE(e.find("latin1.txt"), std::string::npos) << e;
  EXPECT_NE(e.find("byte offset 3"), std::string::npos) << e;

  mkfile(dir, "dup.jsonl", "{\"id\":\"a\",\"text\":\"1\"}\n{\"id\":\"a\",\"text\":\"2\"}\n");
  e = error_of([&] { load_knowledge_base(dir.file("dup.jsonl")); });
  EXPECT_NE(e.find("duplicate document id 'a'"), std::string::npos) << e;
  EXPECT_NE(e.find("dup.jsonl:1"), std::string::npos) << e;  // where it was first defined

  e = error_of([&] { load_knowledge_base(dir.file("missing")); });
  EXPECT_NE(e.find("not found"), std::string::npos) << e;
  mkfile(dir, "x.csv", "a,b");
  e = error_of([&] { load_knowledge_base(dir.file("x.csv")); });
  EXPECT_NE(e.find("unknown knowledge base file type"), std::string::npos) << e;
}

TEST(Knowledge, DuplicateIdsAcrossFiles) {
  test::TempDir dir;
  mkfile(dir, "a.jsonl", "{\"id\":\"b.txt\",\"text\":\"1\"}\n");
  mkfile(dir, "b.txt", "2");
  const std::string e = error_of([&] { load_knowledge_base(dir.file("")); });
  EXPECT_NE(e.find("duplicate document id 'b.txt'"), std::string::npos) << e;
}

// ---- splitting ----------------------------------------------------------------------------------

Document doc_of(std::string text) { return Document{"d", "", "", std::move(text)}; }

TEST(Split, ShortDocumentIsOneTrimmedReference) {
  const auto refs = split_into_references(doc_of("\n  Call me Ishmael. Some years ago.\n\n"), tokenizer(), 128);
  ASSERT_EQ(refs.size(), 1u);
  EXPECT_EQ(refs[0].text, "Call me Ishmael. Some years ago.");
  EXPECT_EQ(refs[0].char_begin, 3);
  EXPECT_EQ(refs[0].doc_id, "d");
  EXPECT_EQ(refs[0].tokens, tokenizer().encode(refs[0].text));
  EXPECT_TRUE(split_into_references(doc_of(" \n\t \n"), tokenizer(), 128).empty());
  EXPECT_TRUE(split_into_references(doc_of(""), tokenizer(), 128).empty());
}

TEST(Split, PrefersParagraphsThenSentences) {
  // Three paragraphs of ~10 tokens each: a 24-token limit packs two short paragraphs together
  // only if they fit, and never cuts inside a paragraph that fits.
  const std::string p1 = "The whale swam far away.", p2 = "The ship sailed on.", p3 = "Call me Ishmael now.";
  const std::string text = p1 + "\n\n" + p2 + "\n\n" + p3;
  const int n12 = int(tokenizer().encode(p1 + "\n\n" + p2).size());
  const int n3 = int(tokenizer().encode(p3).size());
  const auto refs = split_into_references(doc_of(text), tokenizer(), n12);
  ASSERT_GE(refs.size(), 2u);
  EXPECT_EQ(refs[0].text, p1 + "\n\n" + p2);
  EXPECT_EQ(refs[1].text, p3);
  EXPECT_LE(n3, n12);

  // One long paragraph: sentences.
  const std::vector<std::string> sentences = {"One fish swims here.", "Two fish swim there!", "Red fish?", "Blue fish."};
  std::string s;
  int limit = 8;
  for (const auto& x : sentences) {
    s += (s.empty() ? "" : " ") + x;
    limit = std::max(limit, int(tokenizer().encode(x).size()));
  }
  ASSERT_GT(int(tokenizer().encode(s).size()), limit);
  const auto srefs = split_into_references(doc_of(s), tokenizer(), limit);
  ASSERT_GE(srefs.size(), 2u);
  for (const auto& r : srefs) {
    const char last = r.text.back();
    EXPECT_TRUE(last == '.' || last == '!' || last == '?') << r.text;
  }
}

TEST(Split, RejectsTinyLimitsAndBadUtf8) {
  EXPECT_THROW(split_into_references(doc_of("hello"), tokenizer(), 7), Error);
  EXPECT_THROW(split_into_references(doc_of("caf\xE9"), tokenizer(), 128), Error);
}

TEST(Split, HardCutsNeverSplitCharacters) {
  std::string word;
  for (int i = 0; i < 200; ++i) word += (i % 3 == 0) ? "\xE6\x97\xA5" : (i % 3 == 1 ? "\xF0\x9F\x98\x80" : "q");
  const auto refs = split_into_references(doc_of(word), tokenizer(), 8);
  ASSERT_GT(refs.size(), 1u);
  std::string joined;
  for (const auto& r : refs) {
    EXPECT_GE(r.tokens.size(), 1u);
    EXPECT_LE(r.tokens.size(), 8u);
    EXPECT_EQ(find_invalid_utf8(r.text), -1);
    joined += r.text;
  }
  EXPECT_EQ(joined, word);
}

// Random texts: words (ASCII and multi-byte), sentence punctuation, spaces, newlines, blank
// lines, and now and then a long word that only a hard cut can split.
rc::Gen<std::string> gen_text() {
  static const std::vector<std::string> words = {
      "the", "whale", "Ishmael", "sea", "ship", "a", "of", "naïve", "café", "日本語", "😀", "Ω", "x1", "42", "—", "(ok)", "\"quoted\""};
  static const std::vector<std::string> seps = {" ", " ", " ", " ", "  ", "\n", "\n\n", " \n \n", "\t", "\r\n\r\n"};
  static const std::vector<std::string> punct = {".", "!", "?", ",", ";", ""};
  return rc::gen::map(
      rc::gen::container<std::vector<std::tuple<int, int, int, int, std::string>>>(rc::gen::tuple(
          rc::gen::inRange(0, int(words.size())), rc::gen::inRange(0, int(seps.size())),
          rc::gen::inRange(0, int(punct.size() * 2)), rc::gen::inRange(0, 40),
          rc::gen::container<std::string>(rc::gen::inRange('a', 'z')))),
      [](const std::vector<std::tuple<int, int, int, int, std::string>>& parts) {
        std::string t;
        for (const auto& [w, s, p, longword, letters] : parts) {
          if (longword == 0 && !letters.empty()) {
            std::string lw;
            while (lw.size() < 300) lw += letters + "é";
            t += lw;
          } else {
            t += words[size_t(w)];
          }
          if (size_t(p) < punct.size()) t += punct[size_t(p)];
          t += seps[size_t(s)];
        }
        return t;
      });
}

bool space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

struct Range {
  int64_t b, e;
};

// The unit of t[lo, hi) containing position pos, where units are separated by whitespace runs
// for which `boundary(run_begin, run_end)` holds; the unit is trimmed.
template <class F>
Range unit_around(const std::string& t, Range within, int64_t pos, F boundary) {
  Range u{within.b, within.e};
  for (int64_t i = within.b; i < within.e;) {
    if (!space(t[size_t(i)])) {
      ++i;
      continue;
    }
    int64_t j = i;
    while (j < within.e && space(t[size_t(j)])) ++j;
    if (i > within.b && j < within.e && boundary(i, j)) {
      if (j <= pos) u.b = j;
      if (i >= pos && u.e == within.e) u.e = i;
    }
    i = j;
  }
  while (u.b < u.e && space(t[size_t(u.b)])) ++u.b;
  while (u.e > u.b && space(t[size_t(u.e - 1)])) --u.e;
  return u;
}

size_t count(const std::string& t, Range r) {
  return tokenizer().encode(std::string_view(t).substr(size_t(r.b), size_t(r.e - r.b))).size();
}

RC_GTEST_PROP(SplitProperty, InvariantsHold, ()) {
  const std::string text = *gen_text();
  const int max_tokens = *rc::gen::inRange(8, 48);
  const auto refs = split_into_references(doc_of(text), tokenizer(), max_tokens);
  const Range all{0, int64_t(text.size())};
  auto paragraph_run = [&](int64_t i, int64_t j) { return std::count(text.begin() + i, text.begin() + j, '\n') >= 2; };
  auto sentence_run = [&](int64_t i, int64_t j) {
    const char c = text[size_t(i - 1)];
    return paragraph_run(i, j) || c == '.' || c == '!' || c == '?';
  };
  auto word_run = [](int64_t, int64_t) { return true; };

  int64_t prev_end = 0;
  for (size_t k = 0; k < refs.size(); ++k) {
    const auto& r = refs[k];
    // Offsets, substring identity, tokens, limits, trimming, UTF-8 boundaries.
    RC_ASSERT(r.char_begin >= prev_end);
    RC_ASSERT(r.char_end > r.char_begin);
    RC_ASSERT(r.text == text.substr(size_t(r.char_begin), size_t(r.char_end - r.char_begin)));
    RC_ASSERT(r.tokens == tokenizer().encode(r.text));
    RC_ASSERT(!r.tokens.empty());
    RC_ASSERT(int(r.tokens.size()) <= max_tokens);
    RC_ASSERT(!space(r.text.front()) && !space(r.text.back()));
    RC_ASSERT((static_cast<unsigned char>(r.text.front()) & 0xC0) != 0x80);
    RC_ASSERT(r.char_end == int64_t(text.size()) || (static_cast<unsigned char>(text[size_t(r.char_end)]) & 0xC0) != 0x80);
    // Coverage: what lies between references is whitespace only.
    for (int64_t i = prev_end; i < r.char_begin; ++i) RC_ASSERT(space(text[size_t(i)]));
    prev_end = r.char_end;

    if (k + 1 == refs.size()) continue;
    const auto& next = refs[k + 1];
    // Boundary preference: a cut below some level only happens inside a unit of that level that
    // does not fit on its own.
    const int64_t cut = r.char_end;  // text[cut - 1] is the last byte of r
    const bool gap = next.char_begin > cut;
    const bool para_cut = gap && paragraph_run(cut, next.char_begin);
    const bool sent_cut = gap && sentence_run(cut, next.char_begin);
    const Range para = unit_around(text, all, cut - 1, paragraph_run);
    if (!para_cut) RC_ASSERT(int(count(text, para)) > max_tokens);
    const Range sent = unit_around(text, para, cut - 1, sentence_run);
    if (!sent_cut) RC_ASSERT(int(count(text, sent)) > max_tokens);
    if (!gap) RC_ASSERT(int(count(text, unit_around(text, sent, cut - 1, word_run))) > max_tokens);

    // Greedy: a reference of whole units was closed only because the next unit did not fit.
    if (para_cut && unit_around(text, all, r.char_begin, paragraph_run).b == r.char_begin) {
      const Range q = unit_around(text, all, next.char_begin, paragraph_run);
      if (int(count(text, q)) <= max_tokens) RC_ASSERT(int(count(text, {r.char_begin, q.e})) > max_tokens);
    }
    if (sent_cut && !para_cut && unit_around(text, para, r.char_begin, sentence_run).b == r.char_begin) {
      const Range s = unit_around(text, para, next.char_begin, sentence_run);
      if (int(count(text, s)) <= max_tokens) RC_ASSERT(int(count(text, {r.char_begin, s.e})) > max_tokens);
    }
  }
  for (int64_t i = prev_end; i < int64_t(text.size()); ++i) RC_ASSERT(space(text[size_t(i)]));
  // Deterministic.
  RC_ASSERT(split_into_references(doc_of(text), tokenizer(), max_tokens).size() == refs.size());
}

}  // namespace
}  // namespace m3
