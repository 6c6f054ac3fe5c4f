// test_tokenizer.cpp — m3::Tokenizer and m3::TokenStreamer.
//
// Three kinds of evidence: goldens from Python's sentencepiece (tools/reference/tokenizer_golden.py,
// an independent caller of the same library), the C++ training recipe reproducing the committed
// model trained by that script, and properties (round trips, streaming == decode) over random
// input.
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "m3/error.h"
#include "m3/tokenizer.h"

namespace fs = std::filesystem;
using m3::PieceType;
using m3::Tokenizer;
using m3::TokenStreamer;

namespace {

const std::string kCorpus = std::string(M3_SOURCE_DIR) + "/data/embedded/moby-dick.txt";
const std::string kTestModel = std::string(M3_TEST_DATA) + "/tokenizer_test.model";
const std::string kGolden = std::string(M3_TEST_DATA) + "/tokenizer_golden.json";

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A scratch directory per test binary run, removed at exit.
class TempDir {
 public:
  TempDir() {
    dir_ = fs::temp_directory_path() / ("m3_test_tokenizer_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string write(const std::string& name, const std::string& content) const {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary) << content;
    return path;
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

 private:
  fs::path dir_;
};

const TempDir& temp() {
  static TempDir d;
  return d;
}

// The tokenizer most tests use: the committed model (vocab 512, trained on the embedded corpus).
const Tokenizer& tok() {
  static const std::unique_ptr<Tokenizer> t = Tokenizer::from_file(kTestModel);
  return *t;
}

m3::TokenizerTrainOptions small_options(int vocab = 512) {
  m3::TokenizerTrainOptions o;
  o.vocab_size = vocab;
  o.threads = 1;
  o.seed = 42;
  return o;
}

// Expects `f` to throw m3::Error whose message contains every one of `parts`.
template <class F>
void expect_error(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "expected m3::Error mentioning '" << parts.front() << "'";
  } catch (const m3::Error& e) {
    const std::string m = e.what();
    for (const std::string& p : parts) EXPECT_NE(m.find(p), std::string::npos) << "message: " << m << "\nmissing: " << p;
    EXPECT_EQ(m.find('\n'), std::string::npos) << "error messages are one line: " << m;
  }
}

std::string utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (cp >> 18));
    s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

std::string stream_all(const Tokenizer& t, const std::vector<int32_t>& ids, std::vector<std::string>* parts = nullptr) {
  TokenStreamer s(t);
  std::string out;
  for (const int32_t id : ids) {
    std::string p = s.push(id);
    if (parts) parts->push_back(p);
    out += p;
  }
  std::string tail = s.flush();
  if (parts) parts->push_back(tail);
  return out + tail;
}

}  // namespace

// ---- the vocabulary layout decisions.md fixes ----------------------------------------------------

TEST(Tokenizer, SpecialAndBytePieceLayout) {
  const Tokenizer& t = tok();
  ASSERT_EQ(t.vocab_size(), 512);
  EXPECT_EQ(t.unk_id(), 0);
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_EQ(t.piece(0), "<unk>");
  EXPECT_EQ(t.piece(1), "<s>");
  EXPECT_EQ(t.piece(2), "</s>");
  EXPECT_EQ(t.type(0), PieceType::Unknown);
  EXPECT_EQ(t.type(1), PieceType::Control);
  EXPECT_EQ(t.type(2), PieceType::Control);
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    EXPECT_EQ(t.piece(3 + b), name);
    EXPECT_EQ(t.type(3 + b), PieceType::Byte);
  }
  for (int32_t id = 259; id < t.vocab_size(); ++id) EXPECT_EQ(t.type(id), PieceType::Normal) << t.piece(id);
  // BPE scores rank merges: non-increasing over the learned pieces.
  for (int32_t id = 260; id < t.vocab_size(); ++id) EXPECT_LE(t.score(id), t.score(id - 1)) << id;
}

TEST(Tokenizer, BosEosFlags) {
  const Tokenizer& t = tok();
  const std::vector<int32_t> plain = t.encode("Call me Ishmael.");
  std::vector<int32_t> both = plain;
  both.insert(both.begin(), 1);
  both.push_back(2);
  EXPECT_EQ(t.encode("Call me Ishmael.", true, true), both);
  EXPECT_EQ(t.encode("", true, false), std::vector<int32_t>{1});
  EXPECT_EQ(t.decode(both), "Call me Ishmael.");
}

// ---- cross-check against Python's sentencepiece --------------------------------------------------

TEST(Tokenizer, MatchesPythonGoldens) {
  const nlohmann::json g = nlohmann::json::parse(read_file(kGolden));
  const Tokenizer& t = tok();
  EXPECT_EQ(t.vocab_size(), g.at("vocab_size").get<int>());
  EXPECT_EQ(t.bos_id(), g.at("bos_id").get<int>());
  EXPECT_EQ(t.eos_id(), g.at("eos_id").get<int>());
  EXPECT_EQ(t.unk_id(), g.at("unk_id").get<int>());
  EXPECT_EQ(t.prefix_tokens("<s>Reference:"), g.at("prefix_ids").get<std::vector<int32_t>>());
  ASSERT_GE(g.at("cases").size(), 10u);
  for (const auto& c : g.at("cases")) {
    const std::string text = c.at("text");
    SCOPED_TRACE(text);
    const auto ids = t.encode(text);
    EXPECT_EQ(ids, c.at("ids").get<std::vector<int32_t>>());
    std::vector<std::string> pieces;
    for (const int32_t id : ids) pieces.push_back(t.piece(id));
    EXPECT_EQ(pieces, c.at("pieces").get<std::vector<std::string>>());
    EXPECT_EQ(t.decode(ids), c.at("decoded").get<std::string>());
    EXPECT_EQ(stream_all(t, ids), c.at("decoded").get<std::string>());
  }
}

// The C++ recipe, run on the same corpus, learns exactly the vocabulary the Python script learned
// with the recipe written out there: the two descriptions of "how m3 trains" agree.
TEST(Tokenizer, TrainingReproducesCommittedModel) {
  const std::string proto = Tokenizer::train({kCorpus}, small_options(512));
  const auto t = Tokenizer::from_serialized(proto, "trained");
  const Tokenizer& ref = tok();
  ASSERT_EQ(t->vocab_size(), ref.vocab_size());
  for (int32_t id = 0; id < ref.vocab_size(); ++id) {
    ASSERT_EQ(t->piece(id), ref.piece(id)) << "id " << id;
    EXPECT_EQ(t->score(id), ref.score(id)) << "id " << id;
    EXPECT_EQ(t->type(id), ref.type(id)) << "id " << id;
  }
  // Same seed, same text: the same model, byte for byte.
  EXPECT_EQ(Tokenizer::train({kCorpus}, small_options(512)), proto);
}

// ---- round trips ---------------------------------------------------------------------------------

TEST(Tokenizer, RoundTripExamples) {
  const Tokenizer& t = tok();
  const std::vector<std::string> texts = {
      "Call me Ishmael. Some years ago—never mind how long precisely",
      "é É ñ ß ø Œ",
      "中文 漢字 かな カナ 한글",
      "emoji 😀 🐋 👩‍👩‍👧 🇯🇵",
      "  \t mixed   whitespace \n\n and newlines \r\n ",
      "digits 0123456789 3.25e-10",
      "\xF4\x8F\xBF\xBF (U+10FFFF) and \xEF\xBF\xBD (U+FFFD)",
      std::string("nul \0 byte", 10),
  };
  for (const std::string& s : texts) {
    SCOPED_TRACE(s);
    const auto ids = t.encode(s);
    EXPECT_EQ(t.decode(ids), s);
    EXPECT_EQ(stream_all(t, ids), s);
  }
  // Characters the model never saw travel as byte pieces: 中 = E4 B8 AD.
  const auto ids = t.encode("中");
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(std::vector<int32_t>(ids.end() - 3, ids.end()), (std::vector<int32_t>{3 + 0xE4, 3 + 0xB8, 3 + 0xAD}));
}

namespace {
// Random text mixing ASCII (mostly), Latin-1, CJK, astral-plane characters and whitespace; never
// U+2581, which SentencePiece uses as its own space marker and decodes as " ".
rc::Gen<std::string> gen_text() {
  const auto cp = rc::gen::weightedOneOf<uint32_t>({
      {20, rc::gen::inRange<uint32_t>(0x20, 0x7F)},
      {3, rc::gen::element<uint32_t>(0x20u, 0x09u, 0x0Au, 0x0Du)},
      {3, rc::gen::inRange<uint32_t>(0xA0, 0x250)},
      {3, rc::gen::inRange<uint32_t>(0x4E00, 0x4F00)},
      {2, rc::gen::inRange<uint32_t>(0x1F300, 0x1F700)},
      {1, rc::gen::inRange<uint32_t>(0x10000, 0x110000)},
  });
  return rc::gen::map(rc::gen::container<std::vector<uint32_t>>(cp), [](const std::vector<uint32_t>& cps) {
    std::string s;
    for (const uint32_t c : cps) s += utf8(c);
    return s;
  });
}
}  // namespace

RC_GTEST_PROP(TokenizerProp, EncodeDecodeRoundTrip, ()) {
  const std::string s = *gen_text();
  const auto ids = tok().encode(s);
  RC_ASSERT(tok().decode(ids) == s);
  RC_ASSERT(stream_all(tok(), ids) == s);
  // With BOS first, as in generation: the streamer still drops only the dummy-prefix space.
  std::vector<int32_t> with_bos = ids;
  with_bos.insert(with_bos.begin(), tok().bos_id());
  RC_ASSERT(stream_all(tok(), with_bos) == s);
}

TEST(Tokenizer, SerializationRoundTrip) {
  const Tokenizer& t = tok();
  EXPECT_EQ(t.serialized(), read_file(kTestModel));
  const auto u = Tokenizer::from_serialized(t.serialized(), "copy");
  ASSERT_EQ(u->vocab_size(), t.vocab_size());
  for (int32_t id = 0; id < t.vocab_size(); ++id) {
    EXPECT_EQ(u->piece(id), t.piece(id));
    EXPECT_EQ(u->score(id), t.score(id));
    EXPECT_EQ(u->type(id), t.type(id));
  }
  const std::string text = read_file(kCorpus).substr(0, 20000);
  EXPECT_EQ(u->encode(text), t.encode(text));
  EXPECT_EQ(u->serialized(), t.serialized());
}

// ---- streaming -----------------------------------------------------------------------------------

// Random id sequences, weighted towards what is hard: byte pieces (complete, incomplete and
// invalid UTF-8), control ids in the middle of byte runs, <unk>, and pieces starting with "▁".
TEST(TokenStreamer, EqualsDecodeOnRandomIds) {
  const Tokenizer& t = tok();
  std::mt19937 rng(1234);
  const std::vector<uint8_t> lead = {0xC3, 0xE4, 0xF0, 0xED, 0xE0, 0xF4, 0x80, 0xBF, 0xFF, 0xC0};
  auto pick = [&](int n) { return static_cast<int32_t>(rng() % static_cast<uint32_t>(n)); };
  for (int trial = 0; trial < 3000; ++trial) {
    std::vector<int32_t> ids;
    const int len = pick(24);
    for (int i = 0; i < len; ++i) {
      switch (pick(6)) {
        case 0: ids.push_back(pick(3)); break;                                           // unk, bos, eos
        case 1: ids.push_back(3 + lead[static_cast<size_t>(pick(static_cast<int>(lead.size())))]); break;
        case 2: ids.push_back(3 + 0x80 + pick(0x40)); break;                             // continuation byte
        case 3: ids.push_back(3 + pick(256)); break;                                     // any byte
        default: ids.push_back(259 + pick(t.vocab_size() - 259)); break;                 // learned piece
      }
    }
    std::vector<std::string> parts;
    const std::string streamed = stream_all(t, ids, &parts);
    ASSERT_EQ(streamed, t.decode(ids)) << "trial " << trial;
    for (const std::string& p : parts) ASSERT_EQ(m3::find_invalid_utf8(p), -1) << "trial " << trial;
  }
}

TEST(TokenStreamer, HoldsBackIncompleteCharacters) {
  const Tokenizer& t = tok();
  TokenStreamer s(t);
  // "▁" piece then 中 as three byte pieces: nothing visible until the character is complete.
  const int32_t space = t.encode("中").front();
  ASSERT_EQ(t.piece(space), "\xE2\x96\x81");
  EXPECT_EQ(s.push(t.bos_id()), "");
  EXPECT_EQ(s.push(space), "");  // the dummy-prefix space of the first word is dropped
  EXPECT_EQ(s.push(3 + 0xE4), "");
  EXPECT_EQ(s.push(3 + 0xB8), "");
  EXPECT_EQ(s.push(3 + 0xAD), "中");
  // A later "▁" is a real space.
  EXPECT_EQ(s.push(space), " ");
  // An incomplete character at the end comes out as U+FFFD per byte, like decode().
  EXPECT_EQ(s.push(3 + 0xE4), "");
  EXPECT_EQ(s.push(3 + 0xB8), "");
  EXPECT_EQ(s.flush(), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(t.decode({3 + 0xE4, 3 + 0xB8}), "\xEF\xBF\xBD\xEF\xBF\xBD");
  // flush() started a new sequence: its first "▁" is dropped again.
  EXPECT_EQ(s.push(space), "");
  EXPECT_EQ(s.push(3 + 'A'), "A");
  // A byte that can never start a character is emitted at once.
  EXPECT_EQ(s.push(3 + 0xFF), "\xEF\xBF\xBD");
  expect_error([&] { s.push(t.vocab_size()); }, {"token id 512", "out of range"});
  expect_error([&] { s.push(-1); }, {"token id -1"});
}

// ---- UTF-8 validation ----------------------------------------------------------------------------

TEST(Utf8, FindInvalid) {
  struct Case {
    std::string text;
    int64_t offset;
  };
  const std::vector<Case> cases = {
      {"", -1},
      {"plain ascii", -1},
      {"\xC2\x80 \xDF\xBF \xE0\xA0\x80 \xED\x9F\xBF \xEE\x80\x80 \xEF\xBF\xBF \xF0\x90\x80\x80 \xF4\x8F\xBF\xBF", -1},
      {"ab\x80", 2},                     // lone continuation byte
      {"ab\xBF" "cd", 2},
      {"x\xE4\xB8", 1},                  // truncated at the end
      {"x\xE4\xB8y", 1},                 // truncated in the middle
      {"\xF0\x9F\x98", 0},               // truncated 4-byte sequence
      {"ok \xC0\xAF", 3},                // overlong '/'
      {"\xC1\xBF", 0},                   // overlong
      {"\xE0\x80\xAF", 0},               // overlong, 3 bytes
      {"\xF0\x80\x80\xAF", 0},           // overlong, 4 bytes
      {"a\xED\xA0\x80", 1},              // high surrogate U+D800
      {"a\xED\xBF\xBF", 1},              // low surrogate U+DFFF
      {"\xF4\x90\x80\x80", 0},           // U+110000
      {"\xF5\x80\x80\x80", 0},           // lead byte beyond Unicode
      {"\xF8\x88\x80\x80\x80", 0},       // 5-byte form
      {"\xFF", 0},
      {"\xFE", 0},
      {"caf\xC3\xA9\xC3", 5},            // valid é, then a truncated one
  };
  for (const Case& c : cases) EXPECT_EQ(m3::find_invalid_utf8(c.text), c.offset) << ::testing::PrintToString(c.text);
}

TEST(Tokenizer, EncodeRejectsInvalidUtf8WithOffset) {
  const Tokenizer& t = tok();
  expect_error([&] { t.encode("abc\x80"); }, {"invalid UTF-8", "byte 3"});
  expect_error([&] { t.encode("x\xED\xA0\x80"); }, {"invalid UTF-8", "byte 1"});
  expect_error([&] { t.encode("\xC0\xAF"); }, {"invalid UTF-8", "byte 0"});
  expect_error([&] { t.encode("\xF4\x90\x80\x80"); }, {"invalid UTF-8", "byte 0"});
  expect_error([&] { t.encode("caf\xC3"); }, {"invalid UTF-8", "byte 3"});
}

// ---- the Memory³ reference prefix ----------------------------------------------------------------

TEST(Tokenizer, PrefixTokens) {
  const Tokenizer& t = tok();
  const auto p = t.prefix_tokens("<s>Reference:");
  ASSERT_FALSE(p.empty());
  EXPECT_EQ(p.front(), t.bos_id());
  EXPECT_EQ(std::vector<int32_t>(p.begin() + 1, p.end()), t.encode("Reference:"));
  EXPECT_EQ(t.decode(p), "Reference:");
  EXPECT_EQ(std::count(p.begin(), p.end(), t.bos_id()), 1);
  // Without "<s>" it is plain text: no BOS.
  EXPECT_EQ(t.prefix_tokens("Reference:"), t.encode("Reference:"));
  EXPECT_EQ(t.prefix_tokens("<s>"), std::vector<int32_t>{t.bos_id()});
}

// ---- errors --------------------------------------------------------------------------------------

TEST(Tokenizer, DecodeAndLookupRejectOutOfRangeIds) {
  const Tokenizer& t = tok();
  expect_error([&] { t.decode({5, 512}); }, {"token id 512", "out of range", "512 tokens"});
  expect_error([&] { t.decode({-1}); }, {"token id -1"});
  expect_error([&] { t.piece(512); }, {"token id 512"});
  expect_error([&] { t.score(-3); }, {"token id -3"});
  expect_error([&] { t.type(100000); }, {"token id 100000"});
  EXPECT_EQ(t.decode({}), "");
}

TEST(Tokenizer, LoadErrorsNameTheSource) {
  expect_error([] { Tokenizer::from_file(temp().path("missing.model")); }, {"missing.model", "cannot open"});
  const std::string empty = temp().write("empty.model", "");
  expect_error([&] { Tokenizer::from_file(empty); }, {"empty.model", "empty"});
  const std::string junk = temp().write("junk.model", "this is not a protobuf at all");
  expect_error([&] { Tokenizer::from_file(junk); }, {"junk.model"});
  expect_error([] { Tokenizer::from_serialized("\x0a\xff\xff", "model.gguf"); }, {"model.gguf"});
}

TEST(TokenizerTrain, InputFileErrors) {
  const auto opts = small_options(400);
  expect_error([&] { Tokenizer::train({temp().path("nope.txt")}, opts); }, {"nope.txt", "not found"});
  const std::string empty = temp().write("empty.txt", "");
  expect_error([&] { Tokenizer::train({kCorpus, empty}, opts); }, {"empty.txt", "empty"});
  // A file of line breaks only has no text (a line of spaces would: spaces are kept exactly).
  const std::string breaks = temp().write("breaks.txt", "\n\n\r\n\n");
  expect_error([&] { Tokenizer::train({kCorpus, breaks}, opts); }, {"breaks.txt", "no text"});
  const std::string bad = temp().write("bad.txt", "fine line\nsecond \xC3\x28 line\n");
  expect_error([&] { Tokenizer::train({bad}, opts); }, {"bad.txt:2", "invalid UTF-8", "byte 7"});
  expect_error([] { Tokenizer::train({}, small_options()); }, {"no input files"});
}

TEST(TokenizerTrain, VocabSizeLimits) {
  // Below the fixed pieces: caught before training.
  expect_error([] { Tokenizer::train({kCorpus}, small_options(100)); }, {"vocab_size 100", "too small", "259"});
  // Above the fixed pieces but smaller than fixed pieces + the corpus's characters.
  expect_error([] { Tokenizer::train({kCorpus}, small_options(280)); }, {"vocab_size 280", "too small", "moby-dick.txt"});
  // More pieces than the text has merges.
  expect_error([] { Tokenizer::train({kCorpus}, small_options(200000)); }, {"vocab_size 200000", "too large", "moby-dick.txt"});
}

// Lines longer than max_sentence_length are split, not silently dropped (SentencePiece's own
// behaviour): a file that is one long line still trains.
TEST(TokenizerTrain, LongLinesAreSplitNotDropped) {
  std::string corpus = read_file(kCorpus).substr(0, 60000);
  std::replace(corpus.begin(), corpus.end(), '\n', ' ');
  const std::string one_line = temp().write("one_line.txt", corpus + "\n");
  auto opts = small_options(400);
  opts.max_sentence_length = 1024;
  const auto t = Tokenizer::from_serialized(Tokenizer::train({one_line}, opts), "one-line");
  EXPECT_EQ(t->vocab_size(), 400);
  EXPECT_EQ(t->decode(t->encode("Call me Ishmael.")), "Call me Ishmael.");
  // The learned pieces came from the text: common words are single pieces.
  EXPECT_LE(t->encode(" the").size(), 2u);
}

// CRLF files train exactly like LF files (the trailing '\r' is a line ending, not text).
TEST(TokenizerTrain, CrlfEqualsLf) {
  const std::string text = read_file(kCorpus).substr(0, 80000);
  std::string crlf;
  for (const char c : text) {
    if (c == '\n') crlf += '\r';
    crlf += c;
  }
  const std::string lf_path = temp().write("lf.txt", text);
  const std::string crlf_path = temp().write("crlf.txt", crlf);
  const auto a = Tokenizer::from_serialized(Tokenizer::train({lf_path}, small_options(400)), "lf");
  const auto b = Tokenizer::from_serialized(Tokenizer::train({crlf_path}, small_options(400)), "crlf");
  ASSERT_EQ(a->vocab_size(), b->vocab_size());
  for (int32_t id = 0; id < a->vocab_size(); ++id) EXPECT_EQ(a->piece(id), b->piece(id)) << id;
}

TEST(TokenizerTrain, SeveralFilesAndThreads) {
  const std::string text = read_file(kCorpus);
  const std::string a = temp().write("part_a.txt", text.substr(0, text.size() / 2));
  const std::string b = temp().write("part_b.txt", text.substr(text.size() / 2));
  auto opts = small_options(600);
  opts.threads = 0;  // all hardware threads
  const auto t = Tokenizer::from_serialized(Tokenizer::train({a, b}, opts), "two files");
  EXPECT_EQ(t->vocab_size(), 600);
  const std::string s = "It is a way I have of driving off the spleen, and regulating the circulation.";
  EXPECT_EQ(t->decode(t->encode(s)), s);
  // A bigger vocabulary compresses the training text better than the 512-piece model.
  const std::string sample = text.substr(0, 20000);
  EXPECT_LT(t->encode(sample).size(), tok().encode(sample).size());
}
