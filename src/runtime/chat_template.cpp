// The plain-text chat template (m3/chat_template.h).
#include "m3/chat_template.h"

#include "m3/error.h"

namespace m3 {

namespace {
bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
}  // namespace

std::string ChatTemplate::system_block(const std::string& system) {
  if (system.empty()) return "";
  return system + "\n\n";
}

std::string ChatTemplate::user_turn(const std::string& text) { return "User: " + text + "\nAssistant:"; }

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  std::string system;
  for (const ChatMessage& m : messages) {
    if (m.role == "system" || m.role == "developer") {
      if (!system.empty()) system += "\n";
      system += m.content;
    } else if (m.role != "user" && m.role != "assistant") {
      throw Error("unsupported message role '" + m.role + "' (use system, user or assistant)");
    }
  }
  std::string out = system_block(system);
  for (const ChatMessage& m : messages) {
    if (m.role == "user") out += "User: " + m.content + "\n";
    else if (m.role == "assistant") out += "Assistant: " + m.content + assistant_end();
  }
  if (add_generation_prompt) out += "Assistant:";
  return out;
}

std::string ChatTemplate::reply_text(const std::string& generated) {
  size_t b = 0;
  while (b < generated.size() && is_space(generated[b])) ++b;
  return generated.substr(b);
}

std::string LeadingSpaceTrimmer::push(const std::string& piece) {
  if (started_) return piece;
  size_t b = 0;
  while (b < piece.size() && is_space(piece[b])) ++b;
  if (b == piece.size()) return "";
  started_ = true;
  return piece.substr(b);
}

}  // namespace m3
