// `m3 serve` (m3/server.h) and `m3 chat`: the OpenAI-compatible endpoints against an in-process
// server on a free port (streamed text equals non-streamed text, provenance names references that
// are in the bank, knowledge add/search/delete reach retrieval and memory reading, the API key,
// concurrency with slots and a bounded queue, every kind of bad request), and the CLI processes
// (`m3 serve` prints its URL and stops cleanly on SIGTERM; `m3 chat` reads a piped script).
// Model: tests/data/test-rt.gguf (memory3-test, context 512: a session holds 512 − 10 − 128 = 374
// tokens). Its weights are random, so texts are gibberish; tests compare texts with each other,
// never with expected prose.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <regex>
#include <thread>

#include <nlohmann/json.hpp>

#include "m3/bank.h"
#include "m3/chat_template.h"
#include "m3/knowledge.h"
#include "m3/memory_writer.h"
#include "m3/model.h"
#include "m3/server.h"
#include "test_helpers.h"

namespace m3 {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

const std::string kData = M3_TEST_DATA;
const std::string kModelPath = kData + "/test-rt.gguf";

const Model& test_model() {
  static const std::unique_ptr<Model> model = Model::load(kModelPath);
  return *model;
}

// The bank every test starts from: documents with distinctive words, written with the library
// (MemoryBank + MemoryWriter), not through the server.
const std::vector<Document>& bank_documents() {
  static const std::vector<Document> docs = {
      {"aardvark", "Aardvarks", "test", "Aardvarks amble around Amsterdam every April afternoon, eating ants."},
      {"bluebird", "Bluebirds", "test", "Bluebirds build beautiful burrows beside Brussels and Bruges."},
      {"cheetah", "Cheetahs", "test", "Cheetahs chase chickens across Chile in chilly December evenings."},
      {"dolphin", "Dolphins", "test", "Dolphins dive deep near Dover during dark December dawns."},
      {"elephant", "Elephants", "test", "Elephants enjoy evening walks in Estonia, eating elderberries."},
  };
  return docs;
}

void build_bank(const std::string& dir) {
  const Model& model = test_model();
  auto bank = MemoryBank::create(dir, model, "bf16", "bf16");
  std::vector<std::vector<ReferenceText>> refs;
  for (const Document& d : bank_documents())
    refs.push_back(split_into_references(d, *model.tokenizer(), model.config().memory.reference_length));
  bank->add_references(bank_documents(), refs);
  ThreadPool pool(1);
  MemoryWriter writer(model, &pool);
  int64_t id = 0;
  for (const auto& rs : refs)
    for (const ReferenceText& r : rs) bank->append(writer.write(r.tokens, id++));
  bank->flush();
}

// A server on a free port, running on its own thread until the object goes.
class TestServer {
 public:
  explicit TestServer(ServerOptions o) {
    o.port = 0;
    if (o.threads == 0) o.threads = 2;
    if (o.model_id.empty()) o.model_id = "test-rt";
    server_ = std::make_unique<Server>(test_model(), o);
    port_ = server_->bind();
    thread_ = std::thread([this] { server_->run(); });
    for (int i = 0; i < 200; ++i) {  // until it answers
      if (auto r = client().Get("/health")) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ADD_FAILURE() << "the server did not come up";
  }
  ~TestServer() {
    server_->stop();
    thread_.join();
  }
  httplib::Client client(int read_timeout_s = 60) const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(read_timeout_s, 0);
    c.set_connection_timeout(5, 0);
    return c;
  }
  int port() const { return port_; }

 private:
  std::unique_ptr<Server> server_;
  std::thread thread_;
  int port_ = -1;
};

struct Reply {
  int status = 0;
  json body;
  std::string raw;
  std::string retry_after;
};

Reply send(const httplib::Client& c0, const std::string& method, const std::string& path, const std::string& body = "",
           const std::string& api_key = "") {
  httplib::Client& c = const_cast<httplib::Client&>(c0);
  httplib::Headers h;
  if (!api_key.empty()) h.emplace("Authorization", "Bearer " + api_key);
  httplib::Result r = method == "GET"      ? c.Get(path, h)
                      : method == "DELETE" ? c.Delete(path, h)
                                           : c.Post(path, h, body, "application/json");
  Reply out;
  if (!r) {
    out.status = -1;
    return out;
  }
  out.status = r->status;
  out.raw = r->body;
  out.retry_after = r->get_header_value("Retry-After");
  if (r->get_header_value("Content-Type").find("application/json") != std::string::npos) out.body = json::parse(r->body, nullptr, false);
  return out;
}

Reply post(const TestServer& s, const std::string& path, const json& body, const std::string& key = "") {
  return send(s.client(), "POST", path, body.dump(), key);
}

// An OpenAI error object: {"error": {"message": non-empty string, "type", "param", "code"}}.
void expect_error_shape(const Reply& r, int status, const std::string& type, const std::string& param = "") {
  EXPECT_EQ(r.status, status) << r.raw;
  ASSERT_TRUE(r.body.is_object()) << r.raw;
  ASSERT_TRUE(r.body.contains("error")) << r.raw;
  const json& e = r.body["error"];
  ASSERT_TRUE(e.is_object());
  EXPECT_TRUE(e["message"].is_string() && !e["message"].get<std::string>().empty()) << r.raw;
  EXPECT_EQ(e["type"], type) << r.raw;
  EXPECT_TRUE(e.contains("param") && e.contains("code")) << r.raw;
  if (!param.empty()) {
    EXPECT_EQ(e["param"], param) << r.raw;
  }
}

// Server-Sent Events: the JSON of every "data:" line but [DONE], and whether [DONE] ended it.
struct Sse {
  std::vector<json> events;
  bool done = false;
};
Sse parse_sse(const std::string& body) {
  Sse s;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t end = body.find("\n\n", pos);
    if (end == std::string::npos) end = body.size();
    const std::string ev = body.substr(pos, end - pos);
    pos = end + 2;
    if (ev.rfind("data: ", 0) != 0) continue;
    const std::string data = ev.substr(6);
    EXPECT_FALSE(s.done) << "an event after [DONE]";
    if (data == "[DONE]") s.done = true;
    else s.events.push_back(json::parse(data));
  }
  return s;
}

// Concatenated text of a stream (completions: choices[0].text; chat: choices[0].delta.content).
std::string stream_text(const Sse& s, bool chat, std::string* finish = nullptr, json* last = nullptr) {
  std::string text;
  for (const json& e : s.events) {
    if (e.contains("error")) ADD_FAILURE() << e.dump();
    if (e["choices"].empty()) continue;
    const json& c = e["choices"][0];
    if (chat) {
      if (c["delta"].contains("content")) text += c["delta"]["content"].get<std::string>();
    } else {
      text += c["text"].get<std::string>();
    }
    if (!c["finish_reason"].is_null()) {
      if (finish) *finish = c["finish_reason"];
      if (last) *last = e;
    }
  }
  return text;
}

// A metric's value in Prometheus text ("name{labels} value"), -1 when absent.
double metric(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 && line[series.size()] == ' ')
      return std::stod(line.substr(series.size() + 1));
  return -1;
}

std::set<std::string> provenance_documents(const json& memories, const std::string& bank_dir);

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    bank_dir = dir.file("bank");
    build_bank(bank_dir);
  }
  ServerOptions with_bank() const {
    ServerOptions o;
    o.bank_dir = bank_dir;
    return o;
  }
  test::TempDir dir;
  std::string bank_dir;
};

const std::string kCheetahPrompt = "Tell me about the cheetahs that chase chickens across Chile.";

// ---- the chat template ----------------------------------------------------------------------------

TEST(ChatTemplate, RenderingAtOnceEqualsBuildingTurnByTurn) {
  const std::vector<ChatMessage> msgs = {{"user", "Hi"}, {"system", "Be kind."}, {"assistant", "Hello!"}, {"user", "Why?"}};
  // `m3 chat` builds the transcript from the pieces; `m3 serve` renders whole conversations.
  const std::string turn_by_turn = ChatTemplate::system_block("Be kind.") + ChatTemplate::user_turn("Hi") + " Hello!" +
                                   ChatTemplate::assistant_end() + ChatTemplate::user_turn("Why?");
  EXPECT_EQ(ChatTemplate::render(msgs), turn_by_turn);
  EXPECT_EQ(ChatTemplate::render({{"user", "Hi"}}), ChatTemplate::user_turn("Hi"));
  // Without a generation prompt the transcript stops after the last message.
  EXPECT_EQ(ChatTemplate::render({{"user", "Hi"}}, false) + "Assistant:", ChatTemplate::render({{"user", "Hi"}}));
  // The next turn starts with a stop string, so a model that writes it ends its reply there.
  const std::string two = ChatTemplate::render({{"user", "a"}, {"assistant", "b"}, {"user", "c"}});
  const std::string first = ChatTemplate::render({{"user", "a"}});
  ASSERT_EQ(two.rfind(first, 0), 0u);
  const std::string rest = two.substr(first.size());
  bool starts_with_stop = false;
  for (const auto& stop : ChatTemplate::stop_strings()) starts_with_stop |= rest.find(stop) == std::string(" b").size();
  EXPECT_TRUE(starts_with_stop) << rest;
  EXPECT_THROW(ChatTemplate::render({{"tool", "x"}}), Error);
  // Streaming the reply piece by piece drops the same leading whitespace as reply_text().
  LeadingSpaceTrimmer trim;
  std::string streamed;
  for (const char* piece : {" ", "\n ", " Hel", "lo", " there "}) streamed += trim.push(piece);
  EXPECT_EQ(streamed, ChatTemplate::reply_text(" \n  Hello there "));
  EXPECT_EQ(streamed, "Hello there ");
}

// ---- completions ------------------------------------------------------------------------------

TEST_F(ServerTest, StreamedTextEqualsTheNonStreamedTextForTheSameSeed) {
  TestServer s(with_bank());
  for (const bool chat : {false, true})
    for (const double temp : {0.0, 0.9}) {
      SCOPED_TRACE(std::string(chat ? "chat" : "completions") + " temperature " + std::to_string(temp));
      json req = {{"model", "test-rt"}, {"max_tokens", 24}, {"temperature", temp}, {"seed", 7}};
      if (chat) req["messages"] = {{{"role", "system"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", kCheetahPrompt}}};
      else req["prompt"] = kCheetahPrompt;
      const std::string path = chat ? "/v1/chat/completions" : "/v1/completions";
      const Reply plain = post(s, path, req);
      ASSERT_EQ(plain.status, 200) << plain.raw;
      req["stream"] = true;
      req["stream_options"] = {{"include_usage", true}};
      const Reply streamed = post(s, path, req);
      ASSERT_EQ(streamed.status, 200) << streamed.raw;
      const Sse sse = parse_sse(streamed.raw);
      EXPECT_TRUE(sse.done);
      ASSERT_GE(sse.events.size(), 3u);
      std::string finish;
      json last;
      const std::string text = stream_text(sse, chat, &finish, &last);
      const json& choice = plain.body["choices"][0];
      const std::string want = chat ? choice["message"]["content"].get<std::string>() : choice["text"].get<std::string>();
      EXPECT_FALSE(want.empty());
      EXPECT_EQ(text, want);
      EXPECT_EQ(finish, choice["finish_reason"]);
      // The same memories were read, and the usage agrees.
      EXPECT_EQ(last["memories"], plain.body["memories"]);
      const json& usage = sse.events.back()["usage"];
      EXPECT_EQ(usage, plain.body["usage"]);
      EXPECT_EQ(plain.body["usage"]["total_tokens"],
                plain.body["usage"]["prompt_tokens"].get<int>() + plain.body["usage"]["completion_tokens"].get<int>());
      if (chat) {
        EXPECT_EQ(choice["message"]["role"], "assistant");
        EXPECT_EQ(sse.events[0]["choices"][0]["delta"]["role"], "assistant");
        EXPECT_EQ(sse.events[0]["object"], "chat.completion.chunk");
      }
      // The prompt is what the template renders: its token count is usage.prompt_tokens.
      const std::string rendered = chat ? ChatTemplate::render({{"system", "Be brief."}, {"user", kCheetahPrompt}}) : kCheetahPrompt;
      EXPECT_EQ(plain.body["usage"]["prompt_tokens"], test_model().tokenizer()->encode(rendered, true).size());
    }
}

TEST_F(ServerTest, ModelsHealthAndGreedyRepeatability) {
  TestServer s(with_bank());
  const Reply models = send(s.client(), "GET", "/v1/models");
  ASSERT_EQ(models.status, 200);
  EXPECT_EQ(models.body["object"], "list");
  ASSERT_EQ(models.body["data"].size(), 1u);
  EXPECT_EQ(models.body["data"][0]["id"], "test-rt");
  EXPECT_EQ(models.body["data"][0]["object"], "model");
  EXPECT_EQ(models.body["data"][0]["session_capacity"], 374);
  EXPECT_EQ(send(s.client(), "GET", "/v1/models/test-rt").status, 200);
  expect_error_shape(send(s.client(), "GET", "/v1/models/other"), 404, "invalid_request_error", "model");
  const Reply health = send(s.client(), "GET", "/health");
  ASSERT_EQ(health.status, 200);
  EXPECT_EQ(health.body["status"], "ok");

  // Greedy: the same prompt gives the same text, whether the slot reuses its cached prefix or not;
  // a different seed changes a sampled completion.
  const json req = {{"prompt", kCheetahPrompt}, {"max_tokens", 16}, {"temperature", 0}};
  const Reply a = post(s, "/v1/completions", req), b = post(s, "/v1/completions", req);
  ASSERT_EQ(a.status, 200);
  EXPECT_EQ(a.body["choices"][0]["text"], b.body["choices"][0]["text"]);
  std::set<std::string> sampled;
  for (int seed = 1; seed <= 4; ++seed)
    sampled.insert(post(s, "/v1/completions", {{"prompt", kCheetahPrompt}, {"max_tokens", 16}, {"temperature", 1.0}, {"seed", seed}})
                       .body["choices"][0]["text"]
                       .get<std::string>());
  EXPECT_GT(sampled.size(), 1u) << "the seed does not reach the sampler";
}

TEST_F(ServerTest, SlotReuseKeepsOnlyWholeChunksOfTheEarlierPrompt) {
  // Two prompts share their first ~70 tokens (words no bank document holds), then differ inside
  // chunk 1. A slot that ran A may reuse chunk 0 only: chunk 1 of B must retrieve with B's own
  // text (dolphins), not keep A's choice (cheetahs).
  const Tokenizer& tok = *test_model().tokenizer();
  std::string shared = "zero";
  for (int i = 0; tok.encode(shared, true).size() < 70; ++i) shared += " one two three four five six seven eight nine";
  const std::string a = shared + " Cheetahs chase chickens across Chile.", b = shared + " Dolphins dive deep near Dover.";
  const json req_b = {{"prompt", b}, {"max_tokens", 8}, {"temperature", 0}};
  ServerOptions o = with_bank();
  o.slots = 1;
  TestServer s(o);
  ASSERT_EQ(post(s, "/v1/completions", {{"prompt", a}, {"max_tokens", 2}}).status, 200);
  const Reply reused = post(s, "/v1/completions", req_b);
  ASSERT_EQ(reused.status, 200);
  EXPECT_EQ(metric(send(s.client(), "GET", "/metrics").raw, "m3_prompt_tokens_reused_total"), 64);
  ServerOptions fo = with_bank();
  fo.read_only = true;
  TestServer fresh(fo);
  const Reply alone = post(fresh, "/v1/completions", req_b);
  EXPECT_EQ(reused.body["memories"], alone.body["memories"]);
  EXPECT_EQ(reused.body["choices"][0]["text"], alone.body["choices"][0]["text"]);
  ASSERT_GE(alone.body["memories"].size(), 2u);
  EXPECT_TRUE(provenance_documents(json::array({alone.body["memories"][1]}), bank_dir).count("dolphin"));
}

TEST_F(ServerTest, StopStringsEndTheCompletionBeforeThem) {
  TestServer s(with_bank());
  const json req = {{"prompt", kCheetahPrompt}, {"max_tokens", 40}, {"temperature", 0}};
  const std::string full = post(s, "/v1/completions", req).body["choices"][0]["text"];
  ASSERT_GE(full.size(), 6u);
  // A stop string taken from the middle of the greedy text cuts it right there.
  const std::string stop = full.substr(full.size() / 2, 2);
  json with_stop = req;
  with_stop["stop"] = json::array({"\x01never", stop});
  const Reply r = post(s, "/v1/completions", with_stop);
  ASSERT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.body["choices"][0]["text"], full.substr(0, full.find(stop)));
  EXPECT_EQ(r.body["choices"][0]["finish_reason"], "stop");
  with_stop["stop"] = stop;  // a plain string works too
  EXPECT_EQ(post(s, "/v1/completions", with_stop).body["choices"][0]["text"], full.substr(0, full.find(stop)));
}

// ---- provenance and knowledge --------------------------------------------------------------------

// The document ids of every reference a completion's provenance lists; checks each against the bank.
std::set<std::string> provenance_documents(const json& memories, const std::string& bank_dir) {
  auto bank = MemoryBank::open(bank_dir, nullptr, false);
  std::set<std::string> docs;
  for (const json& chunk : memories) {
    EXPECT_TRUE(chunk["query"].is_string());
    EXPECT_LT(chunk["token_begin"].get<int>(), chunk["token_end"].get<int>());
    for (const json& ref : chunk["references"]) {
      const int64_t id = ref["id"];
      EXPECT_LT(id, bank->memory_count()) << "a reference without a memory";
      const ReferenceInfo info = bank->reference(id);
      EXPECT_EQ(ref["document"], info.doc_id);
      EXPECT_EQ(ref["text"], info.text);
      docs.insert(info.doc_id);
    }
  }
  return docs;
}

TEST_F(ServerTest, ProvenanceListsTheBankReferencesEachChunkRead) {
  TestServer s(with_bank());
  // A prompt of three chunks (64 tokens each): every chunk retrieves with its own text.
  std::string prompt = kCheetahPrompt;
  while (test_model().tokenizer()->encode(prompt, true).size() < 140) prompt += " Dolphins dive deep near Dover. " + kCheetahPrompt;
  const Reply r = post(s, "/v1/completions", {{"prompt", prompt}, {"max_tokens", 8}, {"temperature", 0}});
  ASSERT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.body["memory_mode"], "memory");
  const json& mem = r.body["memories"];
  ASSERT_GE(mem.size(), 3u) << mem.dump();  // the prompt's three chunks, and one more if generation reached it
  for (size_t c = 0; c < mem.size(); ++c) EXPECT_EQ(mem[c]["chunk"], c);
  const std::set<std::string> docs = provenance_documents(mem, bank_dir);
  EXPECT_TRUE(docs.count("cheetah")) << mem.dump();
  EXPECT_TRUE(docs.count("dolphin")) << mem.dump();
  EXPECT_FALSE(docs.count("bluebird")) << "a document with none of the prompt's words was read";

  // Without a bank: a plain language model, no memories.
  TestServer plain(ServerOptions{});
  const Reply p = post(plain, "/v1/completions", {{"prompt", prompt}, {"max_tokens", 8}, {"temperature", 0}});
  ASSERT_EQ(p.status, 200);
  EXPECT_EQ(p.body["memory_mode"], "none");
  EXPECT_TRUE(p.body["memories"].empty());
  expect_error_shape(post(plain, "/v1/knowledge/search", {{"query", "x"}}), 404, "invalid_request_error");
}

TEST_F(ServerTest, KnowledgeAddSearchAnswerDelete) {
  TestServer s(with_bank());
  const std::string text = "Quokkas quietly quarrel over quinces on Rottnest quays. Quokkas smile.";
  const Reply add = post(s, "/v1/knowledge/documents", {{"id", "quokka"}, {"title", "Quokkas"}, {"text", text}});
  ASSERT_EQ(add.status, 200) << add.raw;
  ASSERT_EQ(add.body["references"].size(), 1u);
  const int64_t ref_id = add.body["references"][0]["id"];
  {
    // In the bank: the catalog reference and a memory equal to what the writer makes of it.
    auto bank = MemoryBank::open(bank_dir, nullptr, false);
    EXPECT_EQ(bank->memory_count(), ref_id + 1);
    const ReferenceInfo info = bank->reference(ref_id);
    EXPECT_EQ(info.doc_id, "quokka");
    EXPECT_EQ(info.text, text);
    ThreadPool pool(1);
    MemoryWriter writer(test_model(), &pool);
    EXPECT_EQ(bank->read(ref_id).positions, writer.write(info.tokens, ref_id).positions);
  }
  expect_error_shape(post(s, "/v1/knowledge/documents", {{"id", "quokka"}, {"text", "again"}}), 409, "invalid_request_error", "id");

  const Reply found = post(s, "/v1/knowledge/search", {{"query", "quokkas quarrel over quinces"}, {"k", 3}});
  ASSERT_EQ(found.status, 200) << found.raw;
  ASSERT_FALSE(found.body["data"].empty());
  EXPECT_EQ(found.body["data"][0]["document"], "quokka");
  EXPECT_EQ(found.body["data"][0]["id"], ref_id);

  const json ask = {{"messages", {{{"role", "user"}, {"content", "Why do quokkas quarrel over quinces?"}}}}, {"max_tokens", 8}, {"temperature", 0}};
  const Reply answer = post(s, "/v1/chat/completions", ask);
  ASSERT_EQ(answer.status, 200) << answer.raw;
  EXPECT_TRUE(provenance_documents(answer.body["memories"], bank_dir).count("quokka")) << answer.body["memories"].dump();

  const Reply del = send(s.client(), "DELETE", "/v1/knowledge/documents/quokka");
  ASSERT_EQ(del.status, 200) << del.raw;
  EXPECT_EQ(del.body["references"], 1);
  const Reply gone = post(s, "/v1/knowledge/search", {{"query", "quokkas quarrel over quinces"}, {"k", 10}});
  ASSERT_EQ(gone.status, 200);
  for (const json& hit : gone.body["data"]) EXPECT_NE(hit["document"], "quokka");
  const Reply after = post(s, "/v1/chat/completions", ask);
  ASSERT_EQ(after.status, 200);
  EXPECT_FALSE(provenance_documents(after.body["memories"], bank_dir).count("quokka"));
  expect_error_shape(send(s.client(), "DELETE", "/v1/knowledge/documents/quokka"), 404, "invalid_request_error", "id");
  // A deleted id may be added again (a replacement), with new references.
  const Reply again = post(s, "/v1/knowledge/documents", {{"id", "quokka"}, {"text", "Quokkas quietly quarrel again."}});
  ASSERT_EQ(again.status, 200) << again.raw;
  EXPECT_GT(again.body["references"][0]["id"].get<int64_t>(), ref_id);

  // Bad knowledge requests.
  expect_error_shape(post(s, "/v1/knowledge/documents", {{"text", "no id"}}), 400, "invalid_request_error", "id");
  expect_error_shape(post(s, "/v1/knowledge/documents", {{"id", "x"}, {"text", 5}}), 400, "invalid_request_error", "text");
  expect_error_shape(post(s, "/v1/knowledge/documents", {{"id", "x"}, {"text", " \n "}}), 400, "invalid_request_error", "text");
  expect_error_shape(post(s, "/v1/knowledge/search", {{"query", "q"}, {"k", 0}}), 400, "invalid_request_error", "k");
  expect_error_shape(post(s, "/v1/knowledge/search", {{"k", 2}}), 400, "invalid_request_error", "query");

  // Read-only: searches work, changes are refused.
  ServerOptions ro = with_bank();
  ro.read_only = true;
  TestServer r(ro);
  EXPECT_EQ(post(r, "/v1/knowledge/search", {{"query", "quokkas"}}).status, 200);
  expect_error_shape(post(r, "/v1/knowledge/documents", {{"id", "y"}, {"text", "text"}}), 403, "permission_error");
}

TEST_F(ServerTest, DenseAndHybridRetrieversFollowKnowledgeChanges) {
  // A bank with a dense index, written by `m3 memorize` from the same documents.
  const std::string kb = dir.file("kb"), dense_bank = dir.file("dense-bank");
  std::filesystem::create_directories(kb);
  for (const Document& d : bank_documents()) test::write_all(kb + "/" + d.id + ".txt", d.text + "\n");
  const auto made = test::run(test::m3_binary() + " memorize -m " + kModelPath + " --kb " + kb + " -o " + dense_bank + " -t 2");
  ASSERT_EQ(made.exit_code, 0) << made.out;
  auto verify = [&] {
    const auto v = test::run(test::m3_binary() + " bank verify " + dense_bank);
    EXPECT_EQ(v.exit_code, 0) << v.out;
    std::smatch m;
    return std::regex_search(v.out, m, std::regex(R"(dense index of (\d+) vectors consistent)")) ? std::stoi(m[1]) : -1;
  };
  ASSERT_EQ(verify(), 5);
  for (const std::string retriever : {"hybrid", "bm25"}) {  // bm25: the dense index beside it is kept in step too
    SCOPED_TRACE(retriever);
    ServerOptions o;
    o.bank_dir = dense_bank;
    o.retriever = retriever;
    TestServer s(o);
    const std::string id = "quokka-" + retriever;
    ASSERT_EQ(post(s, "/v1/knowledge/documents", {{"id", id}, {"text", "Quokkas quietly quarrel over quinces."}}).status, 200);
    EXPECT_EQ(verify(), 6);
    const Reply found = post(s, "/v1/knowledge/search", {{"query", "quokkas quarrel over quinces"}, {"k", 2}});
    ASSERT_FALSE(found.body["data"].empty()) << found.raw;
    EXPECT_EQ(found.body["data"][0]["document"], id);
    EXPECT_EQ(found.body["retriever"], retriever == "hybrid" ? "hybrid:hnsw:ef=64" : "bm25");
    const Reply r = post(s, "/v1/completions", {{"prompt", "Quokkas quietly quarrel over quinces?"}, {"max_tokens", 4}});
    EXPECT_TRUE(provenance_documents(r.body["memories"], dense_bank).count(id)) << r.raw;
    ASSERT_EQ(send(s.client(), "DELETE", "/v1/knowledge/documents/" + id).status, 200);
    EXPECT_EQ(verify(), 5);
    const Reply gone = post(s, "/v1/knowledge/search", {{"query", "quokkas quarrel over quinces"}, {"k", 10}});
    ASSERT_EQ(gone.status, 200);
    for (const json& hit : gone.body["data"]) EXPECT_NE(hit["document"], id);
  }
}

TEST_F(ServerTest, RagPutsTheRetrievedReferencesInThePrompt) {
  ServerOptions o = with_bank();
  o.rag = true;
  TestServer rag(o);
  TestServer plain(ServerOptions{});
  const json req = {{"prompt", kCheetahPrompt}, {"max_tokens", 4}, {"temperature", 0}};
  const Reply r = post(rag, "/v1/completions", req);
  const Reply p = post(plain, "/v1/completions", req);
  ASSERT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.body["memory_mode"], "rag");
  ASSERT_EQ(r.body["memories"].size(), 1u);
  EXPECT_TRUE(provenance_documents(r.body["memories"], bank_dir).count("cheetah"));
  // The references' text went into the prompt: it is longer than the bare prompt by their tokens.
  std::string block;
  for (const json& ref : r.body["memories"][0]["references"]) block += "Reference: " + ref["text"].get<std::string>() + "\n";
  EXPECT_EQ(r.body["usage"]["prompt_tokens"], test_model().tokenizer()->encode(block + "\n" + kCheetahPrompt, true).size());
  EXPECT_GT(r.body["usage"]["prompt_tokens"].get<int>(), p.body["usage"]["prompt_tokens"].get<int>() + 10);
}

// ---- metrics ------------------------------------------------------------------------------------

TEST_F(ServerTest, MetricsCountRequestsTokensAndMemoryReads) {
  TestServer s(with_bank());
  auto scrape = [&] {
    const Reply m = send(s.client(), "GET", "/metrics");
    EXPECT_EQ(m.status, 200);
    return m.raw;
  };
  const std::string before = scrape();
  EXPECT_EQ(metric(before, "m3_slots_busy"), 0);
  EXPECT_EQ(metric(before, "m3_queue_depth"), 0);
  EXPECT_EQ(metric(before, "m3_completion_tokens_total"), 0);
  const Reply r = post(s, "/v1/completions", {{"prompt", kCheetahPrompt}, {"max_tokens", 12}, {"temperature", 0}});
  ASSERT_EQ(r.status, 200);
  post(s, "/v1/completions", {{"prompt", 5}});  // a 400
  const std::string after = scrape();
  EXPECT_EQ(metric(after, R"(m3_requests_total{endpoint="/v1/completions",status="200"})"), 1);
  EXPECT_EQ(metric(after, R"(m3_requests_total{endpoint="/v1/completions",status="400"})"), 1);
  EXPECT_EQ(metric(after, R"(m3_requests_total{endpoint="/metrics",status="200"})"), 1);  // the first scrape
  EXPECT_EQ(metric(after, "m3_completion_tokens_total"), r.body["usage"]["completion_tokens"].get<double>());
  EXPECT_EQ(metric(after, "m3_prompt_tokens_total"), r.body["usage"]["prompt_tokens"].get<double>());
  EXPECT_GT(metric(after, "m3_decode_tokens_per_second"), 0);
  EXPECT_EQ(metric(after, "m3_time_to_first_token_seconds_count"), 1);
  // Memory reads went through the cache: one miss per memory read from the bank.
  const double misses = metric(after, "m3_memory_cache_misses_total"), hits = metric(after, "m3_memory_cache_hits_total");
  EXPECT_GT(misses, 0);
  EXPECT_EQ(metric(after, "m3_retrieval_seconds_count"), 1);  // one chunk
  post(s, "/v1/completions", {{"prompt", kCheetahPrompt + " Again."}, {"max_tokens", 4}, {"temperature", 0}});
  const std::string third = scrape();
  EXPECT_GT(metric(third, "m3_memory_cache_hits_total"), hits) << "the same references again should hit the cache";
  EXPECT_EQ(metric(third, "m3_memory_cache_misses_total"), misses);
}

// ---- security and limits ------------------------------------------------------------------------------

TEST_F(ServerTest, ApiKeyIsRequiredWhenSet) {
  ServerOptions o = with_bank();
  o.api_key = "s3cret";
  TestServer s(o);
  expect_error_shape(send(s.client(), "GET", "/v1/models"), 401, "authentication_error");
  expect_error_shape(send(s.client(), "GET", "/v1/models", "", "wrong"), 401, "authentication_error");
  expect_error_shape(send(s.client(), "POST", "/v1/completions", R"({"prompt":"hi"})"), 401, "authentication_error");
  expect_error_shape(send(s.client(), "GET", "/metrics"), 401, "authentication_error");
  EXPECT_EQ(send(s.client(), "GET", "/v1/models", "", "s3cret").status, 200);
  EXPECT_EQ(send(s.client(), "POST", "/v1/completions", R"({"prompt":"hi","max_tokens":2})", "s3cret").status, 200);
  EXPECT_EQ(send(s.client(), "GET", "/health").status, 200);  // health stays open for probes
}

TEST_F(ServerTest, BadRequestsGetOpenAiErrorsAndTheServerLivesOn) {
  ServerOptions o = with_bank();
  o.max_body_bytes = 64 * 1024;
  o.max_tokens_limit = 100;
  TestServer s(o);
  auto raw = [&](const std::string& body, const std::string& path = "/v1/completions") { return send(s.client(), "POST", path, body); };
  const char* inv = "invalid_request_error";
  expect_error_shape(raw("{\"prompt\": \"hi\""), 400, inv);
  expect_error_shape(raw("not json"), 400, inv);
  expect_error_shape(raw(""), 400, inv);
  expect_error_shape(raw("[1, 2]"), 400, inv);
  expect_error_shape(raw("{\"prompt\": \"caf\xC3\x28\"}"), 400, inv);                // invalid UTF-8 bytes
  expect_error_shape(raw("{\"prompt\": \"\\ud800\"}"), 400, inv);                       // a lone surrogate
  expect_error_shape(raw(std::string(30000, '[') + std::string(30000, ']')), 400, inv);  // deep nesting
  expect_error_shape(raw("{}"), 400, inv, "prompt");
  expect_error_shape(raw("{\"prompt\": 5}"), 400, inv, "prompt");
  expect_error_shape(raw("{\"prompt\": [\"a\", \"b\"]}"), 400, inv, "prompt");
  expect_error_shape(raw("{\"prompt\": [1, 99999]}"), 400, inv, "prompt");
  expect_error_shape(raw("{\"prompt\": \"hi\", \"max_tokens\": \"10\"}"), 400, inv, "max_tokens");
  expect_error_shape(raw("{\"prompt\": \"hi\", \"max_tokens\": 0}"), 400, inv, "max_tokens");
  expect_error_shape(raw("{\"prompt\": \"hi\", \"max_tokens\": -3}"), 400, inv, "max_tokens");
  expect_error_shape(raw("{\"prompt\": \"hi\", \"max_tokens\": 101}"), 400, inv, "max_tokens");
  expect_error_shape(raw("{\"prompt\": \"hi\", \"max_tokens\": 2.5}"), 400, inv, "max_tokens");
  expect_error_shape(raw("{\"prompt\": \"hi\", \"temperature\": \"hot\"}"), 400, inv, "temperature");
  expect_error_shape(raw("{\"prompt\": \"hi\", \"temperature\": 7}"), 400, inv, "temperature");
  expect_error_shape(raw("{\"prompt\": \"hi\", \"top_p\": 1.5}"), 400, inv, "top_p");
  expect_error_shape(raw("{\"prompt\": \"hi\", \"stop\": 3}"), 400, inv, "stop");
  expect_error_shape(raw("{\"prompt\": \"hi\", \"stop\": [\"a\", 1]}"), 400, inv, "stop[1]");
  expect_error_shape(raw("{\"prompt\": \"hi\", \"stream\": \"yes\"}"), 400, inv, "stream");
  expect_error_shape(raw("{\"prompt\": \"hi\", \"seed\": \"x\"}"), 400, inv, "seed");
  expect_error_shape(raw("{\"prompt\": \"hi\", \"n\": 2}"), 400, inv, "n");
  expect_error_shape(raw("{\"messages\": \"hi\"}", "/v1/chat/completions"), 400, inv, "messages");
  expect_error_shape(raw("{\"messages\": []}", "/v1/chat/completions"), 400, inv, "messages");
  expect_error_shape(raw("{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}", "/v1/chat/completions"), 400, inv,
                     "messages[0].role");
  expect_error_shape(raw("{\"messages\": [{\"role\": \"user\", \"content\": 7}]}", "/v1/chat/completions"), 400, inv,
                     "messages[0].content");
  expect_error_shape(raw("{\"messages\": [{\"role\": \"user\"}]}", "/v1/chat/completions"), 400, inv, "messages[0].content");
  // A prompt longer than the session holds (374 tokens).
  std::string longp;
  for (int i = 0; i < 400; ++i) longp += " word";
  const Reply too_long = raw(json({{"prompt", longp}}).dump());
  expect_error_shape(too_long, 400, inv, "prompt");
  EXPECT_EQ(too_long.body["error"]["code"], "context_length_exceeded");
  // A body over --max-body.
  const Reply huge = raw(json({{"prompt", std::string(100 * 1024, 'a')}}).dump());
  expect_error_shape(huge, 413, inv);
  // Unknown endpoints and methods.
  expect_error_shape(send(s.client(), "GET", "/v2/nothing"), 404, inv);
  expect_error_shape(send(s.client(), "GET", "/v1/completions"), 404, inv);
  // Unknown fields are ignored, as OpenAI does; text parts are read; the server still works.
  const Reply ok = raw(R"({"prompt": "hi", "max_tokens": 3, "frobnicate": {"x": [1]}, "user": "u", "logit_bias": {}})");
  EXPECT_EQ(ok.status, 200) << ok.raw;
  const Reply parts = raw(R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "max_tokens": 2})",
                          "/v1/chat/completions");
  EXPECT_EQ(parts.status, 200) << parts.raw;
  EXPECT_EQ(send(s.client(), "GET", "/health").status, 200);
}

// ---- concurrency ----------------------------------------------------------------------------------

// Prompts sharing a 100-token beginning, so slots reuse cached chunks across requests.
std::vector<std::string> concurrent_prompts(int n) {
  std::string shared = "Cheetahs chase chickens across Chile.";
  while (test_model().tokenizer()->encode(shared, true).size() < 100) shared += " Aardvarks amble around Amsterdam in April.";
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) out.push_back(shared + " Question " + std::to_string(i) + ": what do dolphins do?");
  return out;
}

TEST_F(ServerTest, ConcurrentClientsGetTheSequentialAnswers) {
  ServerOptions o = with_bank();
  o.slots = 2;
  o.queue = 16;
  o.token_delay_ms = 2;  // the completions overlap
  TestServer s(o);
  const int n = 10;
  const auto prompts = concurrent_prompts(n);
  auto request = [&](int i) {
    json req = {{"prompt", prompts[size_t(i)]}, {"max_tokens", 12}, {"temperature", 0}};
    return req;
  };
  std::vector<std::string> sequential;
  for (int i = 0; i < n; ++i) {
    const Reply r = post(s, "/v1/completions", request(i));
    ASSERT_EQ(r.status, 200) << r.raw;
    sequential.push_back(r.body["choices"][0]["text"]);
  }
  std::vector<Reply> got(static_cast<size_t>(n));
  std::vector<std::thread> clients;
  for (int i = 0; i < n; ++i)
    clients.emplace_back([&, i] {
      json req = request(i);
      req["stream"] = (i % 2 == 1);  // half of them stream
      got[size_t(i)] = post(s, "/v1/completions", req);
    });
  for (auto& t : clients) t.join();
  for (int i = 0; i < n; ++i) {
    ASSERT_EQ(got[size_t(i)].status, 200) << got[size_t(i)].raw;
    const std::string text = i % 2 ? stream_text(parse_sse(got[size_t(i)].raw), false)
                                   : got[size_t(i)].body["choices"][0]["text"].get<std::string>();
    EXPECT_EQ(text, sequential[size_t(i)]) << "client " << i;
  }
  const std::string m = send(s.client(), "GET", "/metrics").raw;
  EXPECT_GT(metric(m, "m3_prompt_tokens_reused_total"), 0) << "slots never reused a cached prefix";
  EXPECT_EQ(metric(m, "m3_slots_busy"), 0);
  // Reusing a slot's cached chunks changes nothing: a fresh server (nothing to reuse) agrees.
  for (int i : {1, n - 1}) {
    ServerOptions fresh_opts = with_bank();
    fresh_opts.slots = 2;
    fresh_opts.read_only = true;  // the first server holds the bank's write lock
    TestServer fresh(fresh_opts);
    EXPECT_EQ(post(fresh, "/v1/completions", request(i)).body["choices"][0]["text"], sequential[size_t(i)]) << "prompt " << i;
    EXPECT_EQ(metric(send(fresh.client(), "GET", "/metrics").raw, "m3_prompt_tokens_reused_total"), 0);
  }
}

TEST_F(ServerTest, OverloadGets503WithRetryAfterAndNobodyHangs) {
  ServerOptions o = with_bank();
  o.slots = 2;
  o.queue = 1;
  o.token_delay_ms = 2;  // each completion takes about 0.1 s, so the 10 overlap
  TestServer s(o);
  const int n = 10;
  const auto prompts = concurrent_prompts(n);
  std::vector<std::string> sequential;
  for (int i = 0; i < n; ++i)
    sequential.push_back(post(s, "/v1/completions", {{"prompt", prompts[size_t(i)]}, {"max_tokens", 48}, {"temperature", 0}})
                             .body["choices"][0]["text"]);
  std::vector<Reply> got(static_cast<size_t>(n));
  std::atomic<int> go{0};
  std::vector<std::thread> clients;
  const auto t0 = Clock::now();
  for (int i = 0; i < n; ++i)
    clients.emplace_back([&, i] {
      ++go;
      while (go < n) std::this_thread::yield();
      got[size_t(i)] = post(s, "/v1/completions", {{"prompt", prompts[size_t(i)]}, {"max_tokens", 48}, {"temperature", 0}});
    });
  for (auto& t : clients) t.join();
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 30);
  int ok = 0, busy = 0;
  for (int i = 0; i < n; ++i) {
    const Reply& r = got[size_t(i)];
    if (r.status == 200) {
      ++ok;
      EXPECT_EQ(r.body["choices"][0]["text"], sequential[size_t(i)]) << "client " << i;
    } else {
      ++busy;
      expect_error_shape(r, 503, "server_error");
      EXPECT_EQ(r.retry_after, "1");
    }
  }
  EXPECT_GE(ok, 2);
  EXPECT_GE(busy, 1) << "10 clients at once, 2 slots and a queue of 1: someone must be turned away";
  const std::string m = send(s.client(), "GET", "/metrics").raw;
  EXPECT_EQ(metric(m, R"(m3_rejected_total{reason="queue_full"})"), busy);
}

TEST_F(ServerTest, AQueuedRequestTimesOut) {
  ServerOptions o = with_bank();
  o.slots = 1;
  o.queue = 4;
  o.queue_timeout_s = 0.2;
  o.token_delay_ms = 5;  // the tiny test model would finish in milliseconds
  TestServer s(o);
  // One completion holds the only slot for about 0.75 s (ignore_eos: it runs all 150 tokens).
  std::atomic<bool> long_done{false};
  double long_seconds = 0;
  std::thread long_one([&] {
    const auto t0 = Clock::now();
    const Reply r = post(s, "/v1/completions", {{"prompt", "A long one"}, {"max_tokens", 150}, {"temperature", 0}, {"ignore_eos", true}});
    long_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    EXPECT_EQ(r.status, 200);
    long_done = true;
  });
  while (!long_done && metric(send(s.client(), "GET", "/metrics").raw, "m3_slots_busy") < 1) std::this_thread::yield();
  const auto t0 = Clock::now();
  const Reply r = post(s, "/v1/completions", {{"prompt", "hi"}, {"max_tokens", 2}});
  const double waited = std::chrono::duration<double>(Clock::now() - t0).count();
  const bool overlapped = !long_done;
  long_one.join();
  ASSERT_TRUE(overlapped) << "the long completion took only " << long_seconds << " s";
  expect_error_shape(r, 503, "server_error");
  EXPECT_EQ(r.retry_after, "1");
  EXPECT_NE(r.body["error"]["message"].get<std::string>().find("No slot became free"), std::string::npos) << r.raw;
  EXPECT_GE(waited, 0.15);
  EXPECT_LT(waited, 1.2);
}

// ---- the CLI processes ----------------------------------------------------------------------------------

TEST_F(ServerTest, CliServePrintsItsUrlAndStopsGracefullyOnSigterm) {
  ::setenv("M3_SERVE_TOKEN_DELAY_MS", "5", 1);  // the stream below lasts about 1 s
  test::ChildProcess c = test::spawn({test::m3_binary(), "serve", "-m", kModelPath, "--bank", bank_dir, "--port", "0", "--api-key", "k", "-t", "2"});
  ::unsetenv("M3_SERVE_TOKEN_DELAY_MS");
  const std::string line = test::read_line(c.out());
  std::smatch m;
  ASSERT_TRUE(std::regex_search(line, m, std::regex(R"(listening on http://127\.0\.0\.1:(\d+))"))) << line;
  const int port = std::stoi(m[1]);
  httplib::Client cli("127.0.0.1", port);
  cli.set_read_timeout(60, 0);
  EXPECT_EQ(send(cli, "GET", "/health").status, 200);
  EXPECT_EQ(send(cli, "GET", "/v1/models").status, 401);

  // A stream in flight when SIGTERM comes still ends properly.
  std::atomic<bool> first_chunk{false};
  std::string streamed;
  std::thread client([&] {
    httplib::Client sc("127.0.0.1", port);
    sc.set_read_timeout(60, 0);
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.headers = {{"Authorization", "Bearer k"}, {"Content-Type", "application/json"}};
    req.body = json({{"prompt", "Hello"}, {"max_tokens", 200}, {"temperature", 0}, {"stream", true}, {"ignore_eos", true}}).dump();
    req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
      streamed.append(data, n);
      first_chunk = true;
      return true;
    };
    sc.send(req);
  });
  for (int i = 0; i < 1000 && !first_chunk; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  c.send_signal(SIGTERM);
  EXPECT_EQ(c.wait_exit(20), 0);
  client.join();
  std::string rest;
  for (std::string l; !(l = test::read_line(c.out())).empty() || !std::feof(c.out());) rest += l + "\n";
  EXPECT_NE(rest.find("SIGTERM"), std::string::npos) << rest;
  EXPECT_NE(rest.find("m3 serve: stopped"), std::string::npos) << rest;
  const Sse sse = parse_sse(streamed);
  EXPECT_TRUE(sse.done) << streamed;
}

TEST_F(ServerTest, CliServeRejectsBadSetups) {
  const std::string m3 = test::m3_binary() + " serve -m " + kModelPath;
  auto r = test::run(m3 + " --bank " + dir.file("none"));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("m3: error: bank"), std::string::npos) << r.out;
  r = test::run(m3 + " --rag");
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("--rag needs a bank"), std::string::npos) << r.out;
  r = test::run(m3 + " --bank " + bank_dir + " --retriever dense");
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("no dense index"), std::string::npos) << r.out;
  r = test::run(m3 + " --bank " + dir.file("new") + " --create --codec pq");
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("needs training"), std::string::npos) << r.out;
}

// The replies in `m3 chat` output when every message in the script is followed by /help: the
// text between the "[commands: ...]" lines (a reply may hold newlines), other "[...]" lines dropped.
std::vector<std::string> replies(const std::string& out) {
  std::vector<std::string> r;
  std::string cur;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("[commands:", 0) == 0) {
      if (!cur.empty() && cur.back() == '\n') cur.pop_back();
      r.push_back(cur);
      cur.clear();
    } else if (line.rfind("[conversation reset]", 0) != 0) {
      cur += line + "\n";
    }
  }
  return r;
}

TEST_F(ServerTest, CliChatKeepsTheConversationResetsAndShowsMemories) {
  const std::string chat = test::m3_binary() + " chat -m " + kModelPath + " --greedy -n 10 -t 2 --bank " + bank_dir;
  auto script = [&](const std::string& lines) { return test::run("printf '" + lines + "' | " + chat + " 2>/dev/null"); };
  const std::string msg = "Cheetahs chase chickens in Chile\\n/help\\n";
  const auto one = script(msg);
  ASSERT_EQ(one.exit_code, 0) << one.out;
  const auto two = script(msg + msg + "/quit\\n");
  const auto reset = script(msg + "/reset\\n" + msg);
  ASSERT_EQ(replies(one.out).size(), 1u) << one.out;
  ASSERT_EQ(replies(two.out).size(), 2u) << two.out;
  ASSERT_EQ(replies(reset.out).size(), 2u) << reset.out;
  EXPECT_FALSE(replies(one.out)[0].empty());
  // The second turn sees the first (another answer); after /reset the first answer comes again.
  EXPECT_EQ(replies(two.out)[0], replies(one.out)[0]);
  EXPECT_NE(replies(two.out)[1], replies(one.out)[0]) << "the second turn did not see the first";
  EXPECT_EQ(replies(reset.out)[1], replies(one.out)[0]) << "/reset did not forget the first turn";
  // The same turn through the server's template gives the same greedy answer.
  {
    TestServer s(with_bank());
    const Reply r = post(s, "/v1/chat/completions",
                         {{"messages", {{{"role", "user"}, {"content", "Cheetahs chase chickens in Chile"}}}}, {"max_tokens", 10}, {"temperature", 0}});
    EXPECT_EQ(r.body["choices"][0]["message"]["content"], replies(one.out)[0]);
  }

  // /memories: the references the answer's chunk read, which are in the bank.
  const auto mem = script("Cheetahs chase chickens in Chile\\n/memories\\n");
  ASSERT_EQ(mem.exit_code, 0);
  std::regex ref_line(R"(\[  reference (\d+)  document (\S+)  ")");
  auto bank = MemoryBank::open(bank_dir, nullptr, false);
  std::set<std::string> docs;
  std::istringstream in(mem.out);
  for (std::string line; std::getline(in, line);) {
    std::smatch m;
    if (!std::regex_search(line, m, ref_line)) continue;
    EXPECT_EQ(bank->reference(std::stoll(m[1])).doc_id, m[2]) << line;
    docs.insert(m[2]);
  }
  EXPECT_TRUE(docs.count("cheetah")) << mem.out;
  // Without a bank there is nothing to show.
  const auto plain = test::run("printf 'hi\\n/memories\\n' | " + test::m3_binary() + " chat -m " + kModelPath + " -n 3 2>/dev/null");
  EXPECT_NE(plain.out.find("[no memories"), std::string::npos) << plain.out;
}

}  // namespace
}  // namespace m3
