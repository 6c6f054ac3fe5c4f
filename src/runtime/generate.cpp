// Sampling loop with streaming and stop strings (m3/generate.h).
#include "m3/generate.h"

#include <chrono>

#include "m3/error.h"

namespace m3 {

namespace {
using Clock = std::chrono::steady_clock;

// Length of the longest suffix of `text` that is a proper prefix of some stop string: the text a
// stream must hold back because the next token may complete a stop string.
size_t held_back(const std::string& text, const std::vector<std::string>& stop) {
  size_t best = 0;
  for (const auto& s : stop)
    for (size_t n = std::min(text.size(), s.size() - 1); n > best; --n)
      if (text.compare(text.size() - n, n, s, 0, n) == 0) {
        best = n;
        break;
      }
  return best;
}
}  // namespace

GenerateResult generate(Session& session, std::span<const int32_t> prompt, const GenerateOptions& options,
                        const std::function<bool(const std::string&)>& on_text) {
  const Model& model = session.model();
  const Tokenizer* tok = model.tokenizer();
  if (!tok) throw Error("the model carries no tokenizer: cannot generate text");
  for (const auto& s : options.stop)
    if (s.empty()) throw Error("a stop string is empty");
  const int V = model.config().vocab_size;
  GenerateResult r;
  r.prompt_tokens = static_cast<int>(prompt.size());
  std::vector<float> logits(static_cast<size_t>(V));
  Sampler sampler(options.sampler);
  for (int32_t id : session.tokens()) sampler.accept(id);
  for (int32_t id : prompt) sampler.accept(id);
  TokenStreamer stream(*tok);
  for (int32_t id : session.tokens()) stream.push(id);
  for (int32_t id : prompt) stream.push(id);  // so the first generated word keeps its space

  const auto t0 = Clock::now();
  session.prompt(prompt, logits.data());
  const auto t1 = Clock::now();
  r.prompt_seconds = std::chrono::duration<double>(t1 - t0).count();

  std::string pending;  // final text not yet handed to on_text
  bool cancelled = false;
  auto emit = [&](bool all) {
    const size_t keep = all ? 0 : held_back(pending, options.stop);
    if (pending.size() > keep) {
      const std::string out = pending.substr(0, pending.size() - keep);
      r.text += out;
      pending.erase(0, pending.size() - keep);
      if (on_text && !on_text(out)) cancelled = true;
    }
  };
  r.finish_reason = "length";
  bool stop_string = false;
  while (static_cast<int>(r.tokens.size()) < options.max_tokens) {
    const int32_t next = sampler.sample(logits.data(), V);
    if (next == tok->eos_id() && !options.ignore_eos) {
      r.finish_reason = "stop";
      break;
    }
    sampler.accept(next);
    r.tokens.push_back(next);
    pending += stream.push(next);
    // A stop string anywhere in the not-yet-final text ends the completion before it.
    size_t cut = std::string::npos;
    for (const auto& s : options.stop) cut = std::min(cut, pending.find(s));
    if (cut != std::string::npos) {
      pending.resize(cut);
      emit(true);
      r.finish_reason = "stop";
      stop_string = true;
      break;
    }
    emit(false);
    if (cancelled) {
      r.finish_reason = "cancelled";
      break;
    }
    if (static_cast<int>(r.tokens.size()) >= options.max_tokens || session.n_tokens() >= session.capacity()) break;
    session.decode(next, logits.data());
  }
  if (!stop_string && !cancelled) {
    pending += stream.flush();
    emit(true);
  }
  r.decode_seconds = std::chrono::duration<double>(Clock::now() - t1).count();
  return r;
}

}  // namespace m3
