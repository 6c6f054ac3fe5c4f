// Counters and histograms of `m3 serve`, rendered in Prometheus' text format 0.0.4.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace m3::server {

// A cumulative histogram with fixed upper bounds (Prometheus "le" buckets, +Inf implied).
struct Histogram {
  explicit Histogram(std::vector<double> bounds) : le(std::move(bounds)), counts(le.size(), 0) {}
  void observe(double x);
  // "# TYPE name histogram" and its _bucket, _sum and _count lines.
  std::string render(const std::string& name, const std::string& help) const;

  std::vector<double> le;
  std::vector<uint64_t> counts;  // per bucket, not cumulative
  uint64_t count = 0;
  double sum = 0;
};

struct GenerationSample {
  int prompt_tokens = 0;     // the whole prompt
  int reused_tokens = 0;     // taken from the slot's cache instead of evaluated
  int completion_tokens = 0;
  double queue_seconds = 0, prompt_seconds = 0, decode_seconds = 0;
};

// Thread-safe.
class Metrics {
 public:
  void request(const std::string& endpoint, int status);
  void generation(const GenerationSample& s);
  void rejected(const std::string& reason);  // queue_full, queue_timeout, stopping
  void knowledge(const std::string& what, int64_t n);  // documents_added, references_added, documents_deleted

  // Gauges and counters kept elsewhere are passed in as ready lines (name value).
  std::string render(const std::vector<std::string>& extra) const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  std::map<std::string, uint64_t> rejected_, knowledge_;
  uint64_t generations_ = 0, prompt_tokens_ = 0, reused_tokens_ = 0, completion_tokens_ = 0;
  double prompt_seconds_ = 0, decode_seconds_ = 0;
  double last_prompt_tps_ = 0, last_decode_tps_ = 0;
  Histogram ttft_{{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}};
  Histogram queue_{{0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60}};
  Histogram decode_tps_{{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000}};
};

}  // namespace m3::server
