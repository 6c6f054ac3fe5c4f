// OpenAI request parsing and error objects (src/server/api.h).
#include "server/api.h"

#include <cmath>
#include <limits>

namespace m3::server {

ApiError bad_request(const std::string& message, const std::string& param, const std::string& code) {
  return ApiError(400, message, "invalid_request_error", param, code);
}

json error_json(const std::string& message, const std::string& type, const std::string& param, const std::string& code) {
  return {{"error",
           {{"message", message},
            {"type", type},
            {"param", param.empty() ? json(nullptr) : json(param)},
            {"code", code.empty() ? json(nullptr) : json(code)}}}};
}

json error_json(const ApiError& e) { return error_json(e.what(), e.type, e.param, e.code); }

json error_json_for_status(int status, const std::string& method, const std::string& path) {
  switch (status) {
    case 400: return error_json("Bad request.", "invalid_request_error", "", "");
    case 401: return error_json("Missing or invalid API key.", "authentication_error", "", "invalid_api_key");
    case 404: return error_json("Unknown endpoint: " + method + " " + path, "invalid_request_error", "", "unknown_url");
    case 405: return error_json("Method not allowed: " + method + " " + path, "invalid_request_error", "", "method_not_allowed");
    case 413: return error_json("The request body is larger than this server accepts.", "invalid_request_error", "", "request_too_large");
    case 414: return error_json("The request URI is too long.", "invalid_request_error", "", "uri_too_long");
    case 503: return error_json("The server is busy; retry later.", "server_error", "", "server_busy");
    default:
      if (status >= 500) return error_json("Internal server error.", "server_error", "", "");
      return error_json("Request failed with status " + std::to_string(status) + ".", "invalid_request_error", "", "");
  }
}

json parse_body(const std::string& body) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {
    // nlohmann rejects malformed JSON, invalid UTF-8 and lone surrogate escapes alike.
    throw bad_request(std::string("The request body is not valid JSON: ") + e.what(), "", "invalid_json");
  }
  if (!j.is_object()) throw bad_request("The request body must be a JSON object.", "", "invalid_json");
  return j;
}

namespace {

const char* type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    case json::value_t::number_float: return "a number";
    default: return "an integer";
  }
}

ApiError wrong_type(const std::string& field, const char* expected, const json& v) {
  return bad_request("'" + field + "' must be " + expected + ", not " + type_name(v) + ".", field, "invalid_type");
}

// The field when present and not null.
const json* get(const json& body, const char* field) {
  auto it = body.find(field);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

double number(const json& v, const std::string& field, double lo, double hi) {
  if (!v.is_number()) throw wrong_type(field, "a number", v);
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < lo || x > hi)
    throw bad_request("'" + field + "' must be between " + nlohmann::json(lo).dump() + " and " + nlohmann::json(hi).dump() + ".", field,
                      "invalid_value");
  return x;
}

// An integer; a float with an integral value (JSON has one number type) counts too.
int64_t integer(const json& v, const std::string& field) {
  if (v.is_number_integer()) {
    if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
      throw bad_request("'" + field + "' is out of range.", field, "invalid_value");
    return v.get<int64_t>();
  }
  if (v.is_number_float()) {
    const double x = v.get<double>();
    if (std::isfinite(x) && x == std::floor(x) && std::fabs(x) < 9.0e15) return static_cast<int64_t>(x);
  }
  throw wrong_type(field, "an integer", v);
}

std::string content_text(const json& content, const std::string& field) {
  if (content.is_string()) return content.get<std::string>();
  if (content.is_null()) return "";
  if (content.is_array()) {  // [{"type": "text", "text": "..."}]
    std::string out;
    for (size_t i = 0; i < content.size(); ++i) {
      const json& part = content[i];
      const std::string f = field + "[" + std::to_string(i) + "]";
      if (!part.is_object()) throw wrong_type(f, "an object", part);
      const json* type = get(part, "type");
      if (!type || !type->is_string() || type->get<std::string>() != "text")
        throw bad_request("'" + f + ".type' must be \"text\": this server reads text only.", f + ".type", "invalid_value");
      const json* text = get(part, "text");
      if (!text || !text->is_string()) throw bad_request("'" + f + ".text' must be a string.", f + ".text", "invalid_type");
      out += text->get<std::string>();
    }
    return out;
  }
  throw wrong_type(field, "a string or an array of text parts", content);
}

}  // namespace

CompletionRequest parse_completion(const json& body, bool chat, const SamplerParams& defaults, int max_tokens_limit,
                                   int vocab_size) {
  CompletionRequest r;
  r.chat = chat;
  r.sampler = defaults;
  r.sampler.temperature = 1.0f;  // OpenAI's defaults
  r.sampler.top_p = 1.0f;

  if (const json* v = get(body, "model")) {
    if (!v->is_string()) throw wrong_type("model", "a string", *v);
    r.model = v->get<std::string>();
  }

  if (chat) {
    const json* msgs = get(body, "messages");
    if (!msgs) throw bad_request("'messages' is required.", "messages", "missing_required_parameter");
    if (!msgs->is_array()) throw wrong_type("messages", "an array", *msgs);
    if (msgs->empty()) throw bad_request("'messages' must hold at least one message.", "messages", "invalid_value");
    for (size_t i = 0; i < msgs->size(); ++i) {
      const json& m = (*msgs)[i];
      const std::string f = "messages[" + std::to_string(i) + "]";
      if (!m.is_object()) throw wrong_type(f, "an object", m);
      const json* role = get(m, "role");
      if (!role) throw bad_request("'" + f + ".role' is required.", f + ".role", "missing_required_parameter");
      if (!role->is_string()) throw wrong_type(f + ".role", "a string", *role);
      ChatMessage cm;
      cm.role = role->get<std::string>();
      if (cm.role != "system" && cm.role != "developer" && cm.role != "user" && cm.role != "assistant")
        throw bad_request("'" + f + ".role' is '" + cm.role + "'; this server supports system, developer, user and assistant.",
                          f + ".role", "invalid_value");
      auto c = m.find("content");
      if (c == m.end()) throw bad_request("'" + f + ".content' is required.", f + ".content", "missing_required_parameter");
      cm.content = content_text(*c, f + ".content");
      r.messages.push_back(std::move(cm));
    }
  } else {
    const json* p = get(body, "prompt");
    if (!p) throw bad_request("'prompt' is required.", "prompt", "missing_required_parameter");
    if (p->is_string()) {
      r.prompt = p->get<std::string>();
    } else if (p->is_array()) {
      // [string] (one prompt) or [token ids]
      if (p->size() == 1 && (*p)[0].is_string()) {
        r.prompt = (*p)[0].get<std::string>();
      } else if (!p->empty() && (*p)[0].is_string()) {
        throw bad_request("This server completes one prompt per request; 'prompt' holds " + std::to_string(p->size()) + ".",
                          "prompt", "invalid_value");
      } else {
        r.prompt_is_tokens = true;
        for (size_t i = 0; i < p->size(); ++i) {
          const json& t = (*p)[i];
          if (!t.is_number_integer()) throw wrong_type("prompt[" + std::to_string(i) + "]", "a token id (integer)", t);
          const int64_t id = integer(t, "prompt");
          if (id < 0 || id >= vocab_size)
            throw bad_request("'prompt[" + std::to_string(i) + "]' = " + std::to_string(id) + " is not a token id (0.." +
                                  std::to_string(vocab_size - 1) + ").",
                              "prompt", "invalid_value");
          r.prompt_tokens.push_back(static_cast<int32_t>(id));
        }
      }
    } else {
      throw wrong_type("prompt", "a string, an array of one string, or an array of token ids", *p);
    }
  }

  for (const char* f : {"max_tokens", "max_completion_tokens"}) {
    const json* v = get(body, f);
    if (!v) continue;
    const int64_t n = integer(*v, f);
    if (n < 1 || n > max_tokens_limit)
      throw bad_request("'" + std::string(f) + "' is " + std::to_string(n) + "; it must be between 1 and " +
                            std::to_string(max_tokens_limit) + ".",
                        f, "invalid_value");
    r.max_tokens = static_cast<int>(n);
  }
  if (const json* v = get(body, "n")) {
    if (integer(*v, "n") != 1) throw bad_request("This server returns one choice per request: 'n' must be 1.", "n", "invalid_value");
  }
  if (const json* v = get(body, "temperature")) r.sampler.temperature = static_cast<float>(number(*v, "temperature", 0, 2));
  if (const json* v = get(body, "top_p")) r.sampler.top_p = static_cast<float>(number(*v, "top_p", 0, 1));
  if (const json* v = get(body, "min_p")) r.sampler.min_p = static_cast<float>(number(*v, "min_p", 0, 1));
  if (const json* v = get(body, "repeat_penalty")) r.sampler.repeat_penalty = static_cast<float>(number(*v, "repeat_penalty", 0.01, 100));
  if (const json* v = get(body, "top_k")) {
    const int64_t k = integer(*v, "top_k");
    if (k < 0 || k > 1000000) throw bad_request("'top_k' must be between 0 (off) and 1000000.", "top_k", "invalid_value");
    r.sampler.top_k = static_cast<int>(k);
  }
  if (const json* v = get(body, "seed")) {
    r.sampler.seed = static_cast<uint64_t>(integer(*v, "seed"));
    r.seed_given = true;
  }
  if (const json* v = get(body, "stop")) {
    std::vector<std::string> stop;
    if (v->is_string()) {
      stop.push_back(v->get<std::string>());
    } else if (v->is_array()) {
      if (v->size() > 16) throw bad_request("'stop' holds " + std::to_string(v->size()) + " strings; at most 16.", "stop", "invalid_value");
      for (size_t i = 0; i < v->size(); ++i) {
        if (!(*v)[i].is_string()) throw wrong_type("stop[" + std::to_string(i) + "]", "a string", (*v)[i]);
        stop.push_back((*v)[i].get<std::string>());
      }
    } else {
      throw wrong_type("stop", "a string or an array of strings", *v);
    }
    for (auto& s : stop)
      if (!s.empty()) r.stop.push_back(std::move(s));  // an empty stop string stops nothing
  }
  if (const json* v = get(body, "stream")) {
    if (!v->is_boolean()) throw wrong_type("stream", "a boolean", *v);
    r.stream = v->get<bool>();
  }
  if (const json* v = get(body, "ignore_eos")) {
    if (!v->is_boolean()) throw wrong_type("ignore_eos", "a boolean", *v);
    r.ignore_eos = v->get<bool>();
  }
  if (const json* v = get(body, "stream_options")) {
    if (!v->is_object()) throw wrong_type("stream_options", "an object", *v);
    if (const json* u = get(*v, "include_usage")) {
      if (!u->is_boolean()) throw wrong_type("stream_options.include_usage", "a boolean", *u);
      r.include_usage = u->get<bool>();
    }
  }
  return r;
}

DocumentRequest parse_document(const json& body) {
  auto str = [&](const char* f, bool required) {
    const json* v = get(body, f);
    if (!v) {
      if (required) throw bad_request(std::string("'") + f + "' is required.", f, "missing_required_parameter");
      return std::string();
    }
    if (!v->is_string()) throw wrong_type(f, "a string", *v);
    return v->get<std::string>();
  };
  DocumentRequest d;
  d.id = str("id", true);
  d.text = str("text", true);
  d.title = str("title", false);
  d.source = str("source", false);
  if (d.source.empty()) d.source = "api";
  if (d.id.empty() || d.id.size() > 1024) throw bad_request("'id' must be 1 to 1024 bytes long.", "id", "invalid_value");
  return d;
}

SearchRequest parse_search(const json& body) {
  SearchRequest s;
  const json* q = get(body, "query");
  if (!q) throw bad_request("'query' is required.", "query", "missing_required_parameter");
  if (!q->is_string()) throw wrong_type("query", "a string", *q);
  s.query = q->get<std::string>();
  if (const json* v = get(body, "k")) {
    const int64_t k = integer(*v, "k");
    if (k < 1 || k > 100) throw bad_request("'k' must be between 1 and 100.", "k", "invalid_value");
    s.k = static_cast<int>(k);
  }
  return s;
}

}  // namespace m3::server
