// The OpenAI request and error shapes of `m3 serve` (m3/server.h): parsing and validating a
// request body into what a completion needs, and OpenAI's error object. No HTTP, no model.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "m3/chat_template.h"
#include "m3/sampler.h"

namespace m3::server {

using json = nlohmann::json;

// An error answered with OpenAI's shape {"error": {"message", "type", "param", "code"}}.
struct ApiError : std::runtime_error {
  ApiError(int http_status, const std::string& message, std::string error_type, std::string error_param = "",
           std::string error_code = "")
      : std::runtime_error(message),
        status(http_status),
        type(std::move(error_type)),
        param(std::move(error_param)),
        code(std::move(error_code)) {}
  int status;
  std::string type, param, code;
};

// 400 invalid_request_error about `param`.
ApiError bad_request(const std::string& message, const std::string& param = "", const std::string& code = "");

json error_json(const std::string& message, const std::string& type, const std::string& param, const std::string& code);
json error_json(const ApiError& e);
// The error object for an HTTP status without a more specific message (404, 413, 500, ...).
json error_json_for_status(int status, const std::string& method, const std::string& path);

// Parses a request body: a JSON object, else 400 (malformed JSON and invalid UTF-8 included).
json parse_body(const std::string& body);

struct CompletionRequest {
  bool chat = false;
  std::string model;
  std::string prompt;                  // completions: the prompt text
  std::vector<int32_t> prompt_tokens;  // completions: a prompt given as token ids (prompt_is_tokens)
  bool prompt_is_tokens = false;
  std::vector<ChatMessage> messages;   // chat
  int max_tokens = -1;                 // -1: not given
  SamplerParams sampler;
  bool seed_given = false;
  std::vector<std::string> stop;       // non-empty strings
  bool stream = false;
  bool include_usage = false;
  bool ignore_eos = false;             // m3 extension (as llama.cpp's server): generate past end-of-sequence
};

// Reads the fields listed in m3/server.h; unknown fields are ignored. `defaults` supplies
// top_k, min_p, repeat_penalty (and the rest when a request does not set them); temperature and
// top_p default to OpenAI's 1. Throws ApiError (400) naming the field: wrong type, out of range
// (max_tokens 1..max_tokens_limit, temperature 0..2, top_p 0..1, n = 1, at most 16 stop strings),
// a missing prompt or messages, an unknown role, a token id outside 0..vocab_size-1.
CompletionRequest parse_completion(const json& body, bool chat, const SamplerParams& defaults, int max_tokens_limit,
                                   int vocab_size);

// POST /v1/knowledge/documents: {id (1..1024 bytes), text, title?, source? (default "api")}.
struct DocumentRequest {
  std::string id, text, title, source;
};
DocumentRequest parse_document(const json& body);

// POST /v1/knowledge/search: {query, k? (1..100, default 5)}.
struct SearchRequest {
  std::string query;
  int k = 5;
};
SearchRequest parse_search(const json& body);

}  // namespace m3::server
