// m3/loss_plot.h — reading training logs and drawing their loss curves as SVG (`m3 plot`).
//
// The trainer writes run/log.csv with the header
//     step,tokens,lr,loss,val_loss,grad_norm,tokens_per_s,elapsed_s
// and one row per step; val_loss is empty on steps without evaluation. read_loss_log parses it
// strictly (errors name the file and line: "log.csv:7: 5 columns, expected 8"), except that a
// last line without its newline that does not parse is skipped: it is a row the trainer is still
// writing. render_loss_svg draws one or more logs: train loss as a line (optionally a trailing
// moving average, with the raw curve faint behind it), validation loss as a dashed line with
// markers, nice-number axis ticks, a legend and a title. The SVG is self-contained (no fonts,
// scripts or external references) and deterministic. Rows whose loss is not finite (nan, inf:
// a diverged run) are left out of the curves.
//
// Each series is a <polyline class="train|train-raw|val" data-log="I"> with one point per row
// that has the value; the axes carry their ranges as data-min / data-max attributes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace m3 {

// The exact header line of a training log.
inline constexpr const char* kLossLogHeader = "step,tokens,lr,loss,val_loss,grad_norm,tokens_per_s,elapsed_s";

struct LossRow {
  int64_t step = 0;
  int64_t tokens = 0;
  double lr = 0;
  double loss = 0;
  bool has_val = false;  // val_loss was evaluated at this step
  double val_loss = 0;
  double grad_norm = 0;
  double tokens_per_s = 0;
  double elapsed_s = 0;
};

struct LossLog {
  std::string path;  // the file it was read from (or the name given to parse_loss_log)
  std::vector<LossRow> rows;
};

// Parses the text of a log; `name` is what errors call it.
LossLog parse_loss_log(const std::string& text, const std::string& name);
// Reads and parses a log file; throws m3::Error naming the file (and line) on any problem.
LossLog read_loss_log(const std::string& path);

enum class PlotX { Step, Tokens };

struct PlotOptions {
  std::string title;  // empty: "Training loss" (+ the file's label when there is one log)
  int smooth = 0;     // > 1: train loss as the trailing moving average of this many rows
  PlotX x = PlotX::Step;
  bool log_y = false;  // logarithmic loss axis (all plotted losses must be > 0)
  int width = 960;
  int height = 560;
};

// Legend labels for several logs: the shortest path suffixes that tell them apart
// ("runs/a/log.csv", "runs/b/log.csv" → "a/log.csv", "b/log.csv").
std::vector<std::string> loss_log_labels(const std::vector<LossLog>& logs);

// The SVG document (starts with "<svg"). Throws m3::Error for no logs, a log without rows, a
// log-scale axis over a non-positive loss, or bad options.
std::string render_loss_svg(const std::vector<LossLog>& logs, const PlotOptions& options);

}  // namespace m3
