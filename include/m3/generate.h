// m3/generate.h — one completion: prompt → sampled tokens → text, streamed, with stop strings,
// over a Session (with or without memories). Shared by `m3 generate`, `m3 chat` and `m3 serve`.
#pragma once

#include <functional>
#include <span>
#include <string>
#include <vector>

#include "m3/sampler.h"
#include "m3/session.h"

namespace m3 {

struct GenerateOptions {
  int max_tokens = 128;
  SamplerParams sampler;
  std::vector<std::string> stop;  // generation ends before the first occurrence of any (not included)
  bool ignore_eos = false;
};

struct GenerateResult {
  std::string text;                 // the completion, stop string excluded
  std::vector<int32_t> tokens;      // the tokens sampled (a stop string's tokens included)
  int prompt_tokens = 0;
  std::string finish_reason;        // "stop" (EOS or a stop string), "length" (max_tokens or a full context), "cancelled"
  double prompt_seconds = 0, decode_seconds = 0;  // time to the first token's logits; time after it
};

// Feeds `prompt` to the session (which may already hold earlier turns), then samples up to
// max_tokens. on_text receives the text as it becomes final — text that might begin a stop
// string is held back until it cannot — and returns false to cancel. Throws m3::Error when the
// prompt does not fit the session.
GenerateResult generate(Session& session, std::span<const int32_t> prompt, const GenerateOptions& options,
                        const std::function<bool(const std::string&)>& on_text = {});

}  // namespace m3
