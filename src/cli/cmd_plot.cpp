// m3 plot: loss curves of one or more training logs (run/log.csv) as an SVG picture.
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "cli/commands.h"
#include "m3/error.h"
#include "m3/loss_plot.h"

namespace m3::cli {

void register_plot(CLI::App& app) {
  auto* cmd = app.add_subcommand("plot", "Draw the loss curves of training logs (log.csv of `m3 train`) as an SVG");
  struct Opts {
    std::vector<std::string> logs;
    std::string out, title, x = "step";
    int smooth = 0, width = 960, height = 560;
    bool log_y = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("logs", o->logs, "Training logs (CSV: " + std::string(kLossLogHeader) + ")")->required();
  cmd->add_option("-o,--output", o->out, "SVG file to write")->required();
  cmd->add_option("--title", o->title, "Title (default: 'Training loss' and the log's name)");
  cmd->add_option("--smooth", o->smooth, "Draw train loss as the moving average of this many steps (raw curve faint behind)")
      ->capture_default_str();
  cmd->add_option("--x", o->x, "Horizontal axis: step or tokens")->capture_default_str();
  cmd->add_flag("--log-y", o->log_y, "Logarithmic loss axis");
  cmd->add_option("--width", o->width, "Picture width in pixels")->capture_default_str();
  cmd->add_option("--height", o->height, "Picture height in pixels")->capture_default_str();
  cmd->callback([o] {
    PlotOptions opts;
    if (o->x == "step" || o->x == "steps") opts.x = PlotX::Step;
    else if (o->x == "tokens") opts.x = PlotX::Tokens;
    else throw Error("--x '" + o->x + "' is not one of step, tokens");
    opts.title = o->title;
    opts.smooth = o->smooth;
    opts.log_y = o->log_y;
    opts.width = o->width;
    opts.height = o->height;
    std::vector<LossLog> logs;
    for (const std::string& path : o->logs) logs.push_back(read_loss_log(path));
    const std::string svg = render_loss_svg(logs, opts);

    // Written next to its final name, then renamed: a viewer never sees half a picture.
    const std::string tmp = o->out + ".tmp";
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      if (!out) throw Error(o->out + ": cannot write (does its directory exist?)");
      out.write(svg.data(), static_cast<std::streamsize>(svg.size()));
      out.close();
      if (!out) {
        std::remove(tmp.c_str());
        throw Error(o->out + ": write failed");
      }
    }
    std::error_code ec;
    std::filesystem::rename(tmp, o->out, ec);
    if (ec) {
      std::remove(tmp.c_str());
      throw Error(o->out + ": cannot write: " + ec.message());
    }
    size_t rows = 0;
    for (const LossLog& l : logs) rows += l.rows.size();
    const LossRow& last = logs.front().rows.back();
    std::printf("wrote %s: %zu log%s, %zu rows; %s step %lld loss %.4f\n", o->out.c_str(), logs.size(), logs.size() == 1 ? "" : "s", rows,
                logs.front().path.c_str(), static_cast<long long>(last.step), last.loss);
  });
}

}  // namespace m3::cli
