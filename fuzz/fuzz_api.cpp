// fuzz_api — the server's request parsing (src/server/api.cpp): a request body as `m3 serve`
// receives it, through parse_body and each endpoint's parser (completions, chat completions,
// knowledge documents, knowledge search), then what the server does next with a parsed request
// that needs no model: the chat template and the tokenizer (test-tokenizer.model).
//
// The input is the body, verbatim (fuzz/api.dict holds the field names). What must hold: every
// parser returns or throws ApiError with a 4xx status (never another exception: the server would
// answer 500); an error object serializes as the server sends it and parses back as JSON; a parsed
// request is within the documented limits; its text (valid UTF-8, as nlohmann checked it) renders
// and tokenizes.
#include <memory>

#include "fuzz_common.h"
#include "m3/chat_template.h"
#include "m3/error.h"
#include "m3/tokenizer.h"
#include "server/api.h"

namespace {

using namespace m3;
using server::ApiError;
using server::json;

constexpr int kMaxTokensLimit = 1024;
std::unique_ptr<Tokenizer> g_tok;

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "fuzz_api: %s\n", what.c_str());
  std::abort();
}

void check_error(const ApiError& e) {
  if (e.status < 400 || e.status > 499) fail("a parser answered status " + std::to_string(e.status));
  // As the server sends it (invalid UTF-8 from the body replaced), and back.
  const std::string body = server::error_json(e).dump(-1, ' ', false, json::error_handler_t::replace);
  const json back = json::parse(body);
  if (!back.contains("error") || !back["error"].contains("message")) fail("error object without error.message: " + body);
}

void check_completion(const server::CompletionRequest& r) {
  if (r.max_tokens != -1 && (r.max_tokens < 1 || r.max_tokens > kMaxTokensLimit)) fail("max_tokens outside its limits");
  if (!(r.sampler.temperature >= 0 && r.sampler.temperature <= 2)) fail("temperature outside 0..2");
  if (!(r.sampler.top_p >= 0 && r.sampler.top_p <= 1)) fail("top_p outside 0..1");
  if (r.stop.size() > 16) fail("more than 16 stop strings");
  for (const std::string& s : r.stop)
    if (s.empty()) fail("an empty stop string was kept");
  for (int32_t id : r.prompt_tokens)
    if (id < 0 || id >= g_tok->vocab_size()) fail("a prompt token id outside the vocabulary");
  // What make_job does next. JSON strings are valid UTF-8, so neither may throw.
  try {
    const std::string text = r.chat ? ChatTemplate::render(r.messages) : r.prompt;
    (void)g_tok->encode(text, true);
    if (r.prompt_is_tokens) (void)g_tok->decode(r.prompt_tokens);
  } catch (const Error& e) {
    fail(std::string("a parsed request does not render or tokenize: ") + e.what());
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g_tok = Tokenizer::from_file(std::string(M3_SOURCE_DIR) + "/tests/data/test-tokenizer.model");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  json body;
  try {
    body = server::parse_body(std::string(reinterpret_cast<const char*>(data), size));
  } catch (const ApiError& e) {
    check_error(e);
    return 0;
  }
  SamplerParams defaults;
  for (const bool chat : {false, true}) {
    try {
      check_completion(server::parse_completion(body, chat, defaults, kMaxTokensLimit, g_tok->vocab_size()));
    } catch (const ApiError& e) {
      check_error(e);
    }
  }
  try {
    const server::DocumentRequest d = server::parse_document(body);
    if (d.id.empty() || d.id.size() > 1024 || d.source.empty()) fail("a document request outside its limits");
  } catch (const ApiError& e) {
    check_error(e);
  }
  try {
    const server::SearchRequest s = server::parse_search(body);
    if (s.k < 1 || s.k > 100) fail("a search request with k outside 1..100");
    (void)g_tok->encode(s.query);
  } catch (const ApiError& e) {
    check_error(e);
  }
  return 0;
}
