// m3/progress.h — a one-line progress bar for long jobs (memorize, train), written to stderr.
//
//   memorize  [##########..........]  512/1024  50%  38.2 ref/s  ETA 0:13  loss 2.31
//
// Redraws at most ~10 times a second; when stderr is not a terminal it prints a plain line every
// few seconds instead, so logs stay readable.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace m3 {

class ProgressBar {
 public:
  ProgressBar(std::string label, int64_t total, std::string unit, int64_t start = 0);
  // Sets the absolute position; `extra` is appended to the line (e.g. "loss 2.31").
  void update(int64_t done, const std::string& extra = "");
  void finish(const std::string& extra = "");

 private:
  void draw(bool final, const std::string& extra);
  std::string label_, unit_;
  int64_t total_, start_, done_;
  std::chrono::steady_clock::time_point t0_, last_draw_;
  bool tty_;
};

}  // namespace m3
