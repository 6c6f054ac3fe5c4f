#include "m3/progress.h"

#include <unistd.h>

#include <cstdio>

namespace m3 {

ProgressBar::ProgressBar(std::string label, int64_t total, std::string unit, int64_t start)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), start_(start), done_(start),
      t0_(std::chrono::steady_clock::now()), last_draw_(t0_), tty_(::isatty(2) != 0) {}

void ProgressBar::update(int64_t done, const std::string& extra) {
  done_ = done;
  const auto now = std::chrono::steady_clock::now();
  const double since = std::chrono::duration<double>(now - last_draw_).count();
  if (since < (tty_ ? 0.1 : 5.0)) return;
  last_draw_ = now;
  draw(false, extra);
}

void ProgressBar::finish(const std::string& extra) { draw(true, extra); }

void ProgressBar::draw(bool final, const std::string& extra) {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  const double rate = elapsed > 0 ? static_cast<double>(done_ - start_) / elapsed : 0.0;
  const double frac = total_ > 0 ? static_cast<double>(done_) / static_cast<double>(total_) : 1.0;
  const int width = 20, filled = static_cast<int>(frac * width + 0.5);
  std::string bar(static_cast<size_t>(filled), '#');
  bar.append(static_cast<size_t>(width - filled), '.');
  const double eta = rate > 0 ? static_cast<double>(total_ - done_) / rate : 0.0;
  const long eta_s = static_cast<long>(eta + 0.5);
  std::fprintf(stderr, "%s%-10s [%s] %lld/%lld %3.0f%% %8.1f %s/s  %s %ld:%02ld  %s%s", tty_ ? "\r\033[2K" : "", label_.c_str(),
               bar.c_str(), static_cast<long long>(done_), static_cast<long long>(total_), 100.0 * frac, rate, unit_.c_str(),
               final ? "took" : "ETA", final ? static_cast<long>(elapsed) / 60 : eta_s / 60,
               final ? static_cast<long>(elapsed) % 60 : eta_s % 60, extra.c_str(), (final || !tty_) ? "\n" : "");
  std::fflush(stderr);
}

}  // namespace m3
