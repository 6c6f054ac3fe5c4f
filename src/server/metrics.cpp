// Prometheus text rendering of the server's counters (src/server/metrics.h).
#include "server/metrics.h"

#include <cstdio>
#include <sstream>

namespace m3::server {

namespace {
std::string num(double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", x);
  return buf;
}
}  // namespace

void Histogram::observe(double x) {
  for (size_t i = 0; i < le.size(); ++i)
    if (x <= le[i]) {
      ++counts[i];
      break;
    }
  ++count;
  sum += x;
}

std::string Histogram::render(const std::string& name, const std::string& help) const {
  std::ostringstream o;
  o << "# HELP " << name << " " << help << "\n# TYPE " << name << " histogram\n";
  uint64_t cum = 0;
  for (size_t i = 0; i < le.size(); ++i) {
    cum += counts[i];
    o << name << "_bucket{le=\"" << num(le[i]) << "\"} " << cum << "\n";
  }
  o << name << "_bucket{le=\"+Inf\"} " << count << "\n";
  o << name << "_sum " << num(sum) << "\n" << name << "_count " << count << "\n";
  return o.str();
}

void Metrics::request(const std::string& endpoint, int status) {
  std::lock_guard<std::mutex> l(mu_);
  ++requests_[{endpoint, status}];
}

void Metrics::generation(const GenerationSample& s) {
  std::lock_guard<std::mutex> l(mu_);
  ++generations_;
  prompt_tokens_ += uint64_t(s.prompt_tokens);
  reused_tokens_ += uint64_t(s.reused_tokens);
  completion_tokens_ += uint64_t(s.completion_tokens);
  prompt_seconds_ += s.prompt_seconds;
  decode_seconds_ += s.decode_seconds;
  const int evaluated = s.prompt_tokens - s.reused_tokens;
  if (s.prompt_seconds > 0) last_prompt_tps_ = evaluated / s.prompt_seconds;
  // The first token comes from the prompt's logits; the decode time covers the others.
  if (s.decode_seconds > 0 && s.completion_tokens > 1) {
    last_decode_tps_ = (s.completion_tokens - 1) / s.decode_seconds;
    decode_tps_.observe(last_decode_tps_);
  }
  ttft_.observe(s.queue_seconds + s.prompt_seconds);
  queue_.observe(s.queue_seconds);
}

void Metrics::rejected(const std::string& reason) {
  std::lock_guard<std::mutex> l(mu_);
  ++rejected_[reason];
}

void Metrics::knowledge(const std::string& what, int64_t n) {
  std::lock_guard<std::mutex> l(mu_);
  knowledge_[what] += uint64_t(n);
}

std::string Metrics::render(const std::vector<std::string>& extra) const {
  std::lock_guard<std::mutex> l(mu_);
  std::ostringstream o;
  o << "# HELP m3_requests_total HTTP requests answered, by endpoint and status.\n# TYPE m3_requests_total counter\n";
  for (const auto& [k, v] : requests_)
    o << "m3_requests_total{endpoint=\"" << k.first << "\",status=\"" << k.second << "\"} " << v << "\n";
  o << "# HELP m3_rejected_total Completions refused with 503, by reason.\n# TYPE m3_rejected_total counter\n";
  for (const char* r : {"queue_full", "queue_timeout", "stopping"}) {
    auto it = rejected_.find(r);
    o << "m3_rejected_total{reason=\"" << r << "\"} " << (it == rejected_.end() ? 0 : it->second) << "\n";
  }
  auto counter = [&](const char* name, const char* help, double v) {
    o << "# HELP " << name << " " << help << "\n# TYPE " << name << " counter\n" << name << " " << num(v) << "\n";
  };
  auto gauge = [&](const char* name, const char* help, double v) {
    o << "# HELP " << name << " " << help << "\n# TYPE " << name << " gauge\n" << name << " " << num(v) << "\n";
  };
  counter("m3_completions_total", "Completions generated (streamed or not).", double(generations_));
  counter("m3_prompt_tokens_total", "Prompt tokens of all completions (usage.prompt_tokens).", double(prompt_tokens_));
  counter("m3_prompt_tokens_reused_total", "Prompt tokens taken from a slot's cached prefix instead of evaluated.",
          double(reused_tokens_));
  counter("m3_completion_tokens_total", "Generated tokens (usage.completion_tokens).", double(completion_tokens_));
  counter("m3_prompt_seconds_total", "Time spent evaluating prompts.", prompt_seconds_);
  counter("m3_decode_seconds_total", "Time spent generating after the first token.", decode_seconds_);
  gauge("m3_prompt_tokens_per_second", "Prompt evaluation speed of the last completion.", last_prompt_tps_);
  gauge("m3_decode_tokens_per_second", "Generation speed of the last completion.", last_decode_tps_);
  o << decode_tps_.render("m3_decode_tokens_per_second_hist", "Generation speed per completion (tokens/s).");
  o << ttft_.render("m3_time_to_first_token_seconds", "Queue wait plus prompt evaluation per completion.");
  o << queue_.render("m3_queue_wait_seconds", "Time a completion waited for a slot.");
  o << "# HELP m3_knowledge_total Knowledge changes through the API.\n# TYPE m3_knowledge_total counter\n";
  for (const char* k : {"documents_added", "references_added", "documents_deleted", "references_deleted"}) {
    auto it = knowledge_.find(k);
    o << "m3_knowledge_total{change=\"" << k << "\"} " << (it == knowledge_.end() ? 0 : it->second) << "\n";
  }
  for (const auto& line : extra) o << line;
  return o.str();
}

}  // namespace m3::server
