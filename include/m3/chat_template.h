// m3/chat_template.h — turning a conversation into prompt text for a model that was never
// instruction-tuned (m3's models are pretrained on plain text), shared by `m3 chat` and `m3 serve`.
//
// The template is plain text that reads like a transcript, so a base model continues it as one:
//
//   <system text>\n\n          only when there is a system message (several are joined by "\n")
//   User: <user text>\n        one line per user turn (the text itself may hold newlines)
//   Assistant: <reply>\n       one per earlier assistant turn
//   Assistant:                 the generation prompt: the model writes " <reply>"
//
// The prompt ends with "Assistant:" and no space, because SentencePiece attaches a word's space to
// the word ("▁Paris"): the model produces the space itself, and reply_text() removes it. A reply
// ends at end-of-sequence or where the model starts the next turn: stop_strings() = {"\nUser:"}.
// What it is not: a Jinja engine or any model's own chat format (m3 models have none).
#pragma once

#include <string>
#include <vector>

namespace m3 {

struct ChatMessage {
  std::string role;     // "system", "user" or "assistant"
  std::string content;
};

class ChatTemplate {
 public:
  // The full prompt for `messages` (system messages are gathered first, in order, wherever they
  // appear). add_generation_prompt: end with "Assistant:" for the model to answer. Throws
  // m3::Error for a role other than system, developer (= system), user, assistant.
  static std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt = true);

  // The pieces render() is made of, for a conversation built turn by turn (`m3 chat`):
  //   render(msgs) == system_block(sys) + user_turn(u1) + " " + a1 + assistant_end() + user_turn(u2) + ...
  static std::string system_block(const std::string& system);  // "" for an empty system text
  static std::string user_turn(const std::string& text);       // "User: " + text + "\nAssistant:"
  static const char* assistant_end() { return "\n"; }          // after a reply, before the next "User:"

  // Generation ends before any of these (not included in the reply).
  static std::vector<std::string> stop_strings() { return {"\nUser:"}; }

  // The reply as a message: without the leading whitespace the model writes after "Assistant:".
  static std::string reply_text(const std::string& generated);
};

// Strips leading whitespace from a stream of text pieces, so that a streamed reply concatenates to
// ChatTemplate::reply_text() of the whole: push() returns what to show of each piece.
class LeadingSpaceTrimmer {
 public:
  std::string push(const std::string& piece);

 private:
  bool started_ = false;
};

}  // namespace m3
