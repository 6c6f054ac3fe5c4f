// Training logs → loss curves: the CSV reader (strict, errors naming file and line), the SVG
// renderer (well-formed, one polyline per series with one point per row, axes covering the data)
// and the `m3 plot` command.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <regex>

#include "m3/loss_plot.h"
#include "test_helpers.h"

namespace m3 {
namespace {

using test::error_of;
using test::read_all;
using test::run;
using test::TempDir;
using test::write_all;

const std::string kHeader = std::string(kLossLogHeader) + "\n";

// A log of n steps: loss falls from 10 towards 2, val_loss every `every` steps.
std::string make_log(int n, int every, double scale = 1.0) {
  std::string s = kHeader;
  for (int i = 1; i <= n; ++i) {
    char row[256];
    const double loss = scale * (2.0 + 8.0 * std::exp(-i / 20.0)) + 0.05 * std::sin(i);
    char val[32] = "";
    if (every > 0 && i % every == 0) std::snprintf(val, sizeof(val), "%.6f", loss + 0.1);
    std::snprintf(row, sizeof(row), "%d,%d,%.6g,%.6f,%s,%.4f,%.1f,%.3f\n", i, i * 4096, 3e-4, loss, val, 1.5 / i, 12345.0, 0.5 * i);
    s += row;
  }
  return s;
}

struct Polyline {
  std::string cls;
  int log = -1;
  std::vector<std::pair<double, double>> points;
};

std::vector<Polyline> polylines(const std::string& svg) {
  std::vector<Polyline> out;
  static const std::regex re("<polyline class=\"([^\"]+)\" data-log=\"(\\d+)\"[^>]*points=\"([^\"]*)\"");
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), re); it != std::sregex_iterator(); ++it) {
    Polyline p;
    p.cls = (*it)[1];
    p.log = std::stoi((*it)[2]);
    std::istringstream pts((*it)[3].str());
    std::string pair;
    while (pts >> pair) {
      const size_t comma = pair.find(',');
      p.points.emplace_back(std::stod(pair.substr(0, comma)), std::stod(pair.substr(comma + 1)));
    }
    out.push_back(p);
  }
  return out;
}

std::vector<Polyline> of_class(const std::vector<Polyline>& all, const std::string& cls) {
  std::vector<Polyline> out;
  for (const Polyline& p : all)
    if (p.cls == cls) out.push_back(p);
  return out;
}

// data-min / data-max of the <g class="NAME"> element.
std::pair<double, double> axis_range(const std::string& svg, const std::string& name) {
  std::smatch m;
  const std::regex re("<g class=\"" + name + "\" data-min=\"([^\"]+)\" data-max=\"([^\"]+)\"");
  if (!std::regex_search(svg, m, re)) return {NAN, NAN};
  return {std::stod(m[1]), std::stod(m[2])};
}

// Every tag opened is closed in order; returns "" or what went wrong.
std::string check_balanced(const std::string& svg) {
  std::vector<std::string> stack;
  size_t pos = 0;
  while ((pos = svg.find('<', pos)) != std::string::npos) {
    const size_t end = svg.find('>', pos);
    if (end == std::string::npos) return "unterminated tag at " + std::to_string(pos);
    const std::string tag = svg.substr(pos + 1, end - pos - 1);
    pos = end + 1;
    if (tag.empty()) return "empty tag";
    if (tag[0] == '?' || tag[0] == '!') continue;
    if (tag[0] == '/') {
      const std::string name = tag.substr(1);
      if (stack.empty() || stack.back() != name) return "</" + name + "> closes " + (stack.empty() ? "nothing" : "<" + stack.back() + ">");
      stack.pop_back();
      continue;
    }
    const std::string name = tag.substr(0, tag.find_first_of(" \t\n/"));
    const size_t quotes = std::count(tag.begin(), tag.end(), '"');
    if (quotes % 2) return "odd number of quotes in <" + name + ">";
    if (tag.back() != '/') stack.push_back(name);
  }
  if (!stack.empty()) return "<" + stack.back() + "> never closed";
  return "";
}

TEST(LossLog, ParsesRowsAndEmptyValColumn) {
  const std::string text = kHeader +
                           "1,4096,0.0003,10.5,,2.5,15000.0,0.270\n"
                           "2,8192,0.0003,9.25,9.5,2.25,15100.5,0.540\n"
                           "3,12288,2.5e-05,-nan,,1e+3,0,0.9\n";  // glibc prints a negative NaN as -nan
  const LossLog log = parse_loss_log(text, "run/log.csv");
  ASSERT_EQ(log.rows.size(), 3u);
  EXPECT_EQ(log.path, "run/log.csv");
  EXPECT_EQ(log.rows[0].step, 1);
  EXPECT_EQ(log.rows[0].tokens, 4096);
  EXPECT_DOUBLE_EQ(log.rows[0].lr, 0.0003);
  EXPECT_DOUBLE_EQ(log.rows[0].loss, 10.5);
  EXPECT_FALSE(log.rows[0].has_val);
  EXPECT_TRUE(log.rows[1].has_val);
  EXPECT_DOUBLE_EQ(log.rows[1].val_loss, 9.5);
  EXPECT_DOUBLE_EQ(log.rows[1].tokens_per_s, 15100.5);
  EXPECT_DOUBLE_EQ(log.rows[1].elapsed_s, 0.54);
  EXPECT_TRUE(std::isnan(log.rows[2].loss));  // a diverged step is data, not a parse error
  EXPECT_DOUBLE_EQ(log.rows[2].grad_norm, 1000);
}

TEST(LossLog, ToleratesCrlfBlankLinesAndAHalfWrittenLastRow) {
  const LossLog crlf = parse_loss_log(std::string(kLossLogHeader) + "\r\n1,1,1,5,,1,1,1\r\n\r\n2,2,1,4,,1,1,1\r\n", "a.csv");
  EXPECT_EQ(crlf.rows.size(), 2u);
  // The trainer is writing row 3 right now: no newline yet, too few columns.
  const LossLog live = parse_loss_log(kHeader + "1,1,1,5,,1,1,1\n2,2,1,4,,1,1,1\n3,3,1,", "live.csv");
  EXPECT_EQ(live.rows.size(), 2u);
  // A complete last row without its newline still counts.
  EXPECT_EQ(parse_loss_log(kHeader + "1,1,1,5,,1,1,1", "b.csv").rows.size(), 1u);
  EXPECT_EQ(parse_loss_log(kHeader, "header-only.csv").rows.size(), 0u);
}

TEST(LossLog, MalformedInputNamesFileAndLine) {
  EXPECT_NE(error_of([] { parse_loss_log("", "e.csv"); }).find("e.csv: empty"), std::string::npos);
  const std::string hdr = error_of([] { parse_loss_log("step,loss\n1,2\n", "h.csv"); });
  EXPECT_NE(hdr.find("h.csv:1: header is 'step,loss', expected 'step,tokens,lr,loss"), std::string::npos) << hdr;
  const std::string cols = error_of([] { parse_loss_log(kHeader + "1,1,1,5,,1,1,1\n2,2,1,4,1,1,1\n3,3,1,3,,1,1,1\n", "c.csv"); });
  EXPECT_NE(cols.find("c.csv:3: 7 columns, expected 8"), std::string::npos) << cols;
  const std::string many = error_of([] { parse_loss_log(kHeader + "1,1,1,5,,1,1,1,9\n", "m.csv"); });
  EXPECT_NE(many.find("m.csv:2: 9 columns"), std::string::npos) << many;
  const std::string num = error_of([] { parse_loss_log(kHeader + "1,1,1,5,,1,1,1\n2,2,1,abc,,1,1,1\n", "n.csv"); });
  EXPECT_NE(num.find("n.csv:3: column 'loss' is 'abc', not a number"), std::string::npos) << num;
  const std::string val = error_of([] { parse_loss_log(kHeader + "1,1,1,5,x,1,1,1\n", "v.csv"); });
  EXPECT_NE(val.find("v.csv:2: column 'val_loss' is 'x'"), std::string::npos) << val;
  const std::string step = error_of([] { parse_loss_log(kHeader + "1.5,1,1,5,,1,1,1\n", "s.csv"); });
  EXPECT_NE(step.find("s.csv:2: column 'step' is '1.5', not an integer"), std::string::npos) << step;
  const std::string empty = error_of([] { parse_loss_log(kHeader + "1,1,1,,,1,1,1\n", "l.csv"); });
  EXPECT_NE(empty.find("l.csv:2: column 'loss' is empty"), std::string::npos) << empty;
  // A broken row in the middle is an error even when the file lacks its final newline.
  const std::string mid = error_of([] { parse_loss_log(kHeader + "1,1,1,5,,1\n2,2,1,4,,1,1,1", "t.csv"); });
  EXPECT_NE(mid.find("t.csv:2: 6 columns"), std::string::npos) << mid;
  EXPECT_NE(error_of([] { read_loss_log("/nonexistent/log.csv"); }).find("/nonexistent/log.csv: cannot open"), std::string::npos);
}

TEST(LossPlot, SvgIsWellFormedWithOnePolylinePerSeries) {
  const LossLog log = parse_loss_log(make_log(100, 10), "run/log.csv");
  const std::string svg = render_loss_svg({log}, PlotOptions{});
  ASSERT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("xmlns=\"http://www.w3.org/2000/svg\""), std::string::npos);
  EXPECT_EQ(check_balanced(svg), "");
  const auto lines = polylines(svg);
  const auto train = of_class(lines, "train"), val = of_class(lines, "val");
  ASSERT_EQ(lines.size(), 2u);
  ASSERT_EQ(train.size(), 1u);
  ASSERT_EQ(val.size(), 1u);
  EXPECT_EQ(train[0].points.size(), 100u);
  EXPECT_EQ(val[0].points.size(), 10u);
  // x increases with the step, and a falling loss draws downwards-rising y (SVG y grows down).
  EXPECT_LT(train[0].points.front().first, train[0].points.back().first);
  EXPECT_LT(train[0].points.front().second, train[0].points.back().second);
  // Everything lies inside the picture.
  for (const auto& p : lines)
    for (auto [x, y] : p.points) {
      EXPECT_GE(x, 0);
      EXPECT_LE(x, 960);
      EXPECT_GE(y, 0);
      EXPECT_LE(y, 560);
    }
  EXPECT_NE(svg.find("Training loss: log.csv"), std::string::npos);  // default title
  EXPECT_NE(svg.find(">step</text>"), std::string::npos);
  EXPECT_NE(svg.find("val, best"), std::string::npos);
  EXPECT_EQ(render_loss_svg({log}, PlotOptions{}), svg);  // deterministic
}

TEST(LossPlot, AxesCoverTheData) {
  for (bool log_y : {false, true}) {
    const LossLog log = parse_loss_log(make_log(300, 25, 0.7), "log.csv");
    double lo = 1e30, hi = -1e30;
    for (const LossRow& r : log.rows) {
      lo = std::min({lo, r.loss, r.has_val ? r.val_loss : lo});
      hi = std::max({hi, r.loss, r.has_val ? r.val_loss : hi});
    }
    PlotOptions o;
    o.log_y = log_y;
    const std::string svg = render_loss_svg({log}, o);
    const auto [ymin, ymax] = axis_range(svg, "y-axis");
    EXPECT_LE(ymin, lo) << "log_y " << log_y;
    EXPECT_GE(ymax, hi) << "log_y " << log_y;
    EXPECT_LT(ymax - ymin, 3 * (hi - lo)) << "the axis should not be far wider than the data";
    const auto [xmin, xmax] = axis_range(svg, "x-axis");
    EXPECT_LE(xmin, 1);
    EXPECT_GE(xmax, 300);
    EXPECT_NE(svg.find(log_y ? "data-scale=\"log\"" : "data-scale=\"linear\""), std::string::npos);
    EXPECT_EQ(check_balanced(svg), "");
  }
}

TEST(LossPlot, TokensAxisSmoothingAndSeveralLogs) {
  const LossLog a = parse_loss_log(make_log(60, 20), "runs/a/log.csv");
  const LossLog b = parse_loss_log(make_log(80, 0, 1.2), "runs/b/log.csv");  // no validation at all
  PlotOptions o;
  o.smooth = 10;
  o.x = PlotX::Tokens;
  o.title = "A <&> B";
  const std::string svg = render_loss_svg({a, b}, o);
  EXPECT_EQ(check_balanced(svg), "");
  const auto lines = polylines(svg);
  const auto train = of_class(lines, "train"), raw = of_class(lines, "train-raw"), val = of_class(lines, "val");
  ASSERT_EQ(train.size(), 2u);
  ASSERT_EQ(raw.size(), 2u);
  ASSERT_EQ(val.size(), 1u);  // b has no val_loss: no val series, no legend entry
  EXPECT_EQ(train[0].points.size(), 60u);
  EXPECT_EQ(train[1].points.size(), 80u);
  EXPECT_EQ(raw[1].points.size(), 80u);
  EXPECT_EQ(val[0].log, 0);
  EXPECT_EQ(val[0].points.size(), 3u);
  // The smoothed curve is flatter than the raw one: less total vertical travel.
  auto travel = [](const Polyline& p) {
    double t = 0;
    for (size_t i = 1; i < p.points.size(); ++i) t += std::fabs(p.points[i].second - p.points[i - 1].second);
    return t;
  };
  EXPECT_LT(travel(train[1]), travel(raw[1]));
  EXPECT_NE(svg.find("a/log.csv train (mean of 10)"), std::string::npos);
  EXPECT_NE(svg.find("b/log.csv train"), std::string::npos);
  EXPECT_EQ(svg.find("b/log.csv val"), std::string::npos);
  EXPECT_NE(svg.find(">tokens</text>"), std::string::npos);
  EXPECT_NE(svg.find("A &lt;&amp;&gt; B"), std::string::npos);
  const auto [xmin, xmax] = axis_range(svg, "x-axis");
  EXPECT_GE(xmax, 80 * 4096);
  EXPECT_LE(xmin, 4096);
}

TEST(LossPlot, NonFiniteLossesAreLeftOutAndBadInputsAreErrors) {
  const LossLog log = parse_loss_log(kHeader + "1,1,1,5,,1,1,1\n2,2,1,nan,,1,1,1\n3,3,1,4,4.5,1,1,1\n4,4,1,inf,,1,1,1\n", "d.csv");
  const auto train = of_class(polylines(render_loss_svg({log}, PlotOptions{})), "train");
  ASSERT_EQ(train.size(), 1u);
  EXPECT_EQ(train[0].points.size(), 2u);
  EXPECT_NE(error_of([] { render_loss_svg({}, PlotOptions{}); }).find("no training logs"), std::string::npos);
  const LossLog empty = parse_loss_log(kHeader, "empty.csv");
  EXPECT_NE(error_of([&] { render_loss_svg({empty}, PlotOptions{}); }).find("empty.csv: no rows"), std::string::npos);
  const LossLog zero = parse_loss_log(kHeader + "1,1,1,0,,1,1,1\n", "z.csv");
  EXPECT_NE(render_loss_svg({zero}, PlotOptions{}).find("<svg"), std::string::npos);  // a flat single point draws
  PlotOptions lg;
  lg.log_y = true;
  EXPECT_NE(error_of([&] { render_loss_svg({zero}, lg); }).find("z.csv: step 1 has a loss <= 0"), std::string::npos);
  PlotOptions neg;
  neg.smooth = -1;
  EXPECT_NE(error_of([&] { render_loss_svg({log}, neg); }).find("--smooth"), std::string::npos);
}

TEST(LossPlot, LabelsAreShortestDistinctSuffixes) {
  auto labels = [](std::vector<std::string> paths) {
    std::vector<LossLog> logs;
    for (auto& p : paths) logs.push_back(LossLog{p, {}});
    return loss_log_labels(logs);
  };
  EXPECT_EQ(labels({"runs/a/log.csv", "runs/b/log.csv"}), (std::vector<std::string>{"a/log.csv", "b/log.csv"}));
  EXPECT_EQ(labels({"x.csv", "dir/y.csv"}), (std::vector<std::string>{"x.csv", "y.csv"}));
  EXPECT_EQ(labels({"/abs/run1/log.csv"}), (std::vector<std::string>{"log.csv"}));
  EXPECT_EQ(labels({"log.csv", "log.csv"}), (std::vector<std::string>{"log.csv", "log.csv (2)"}));
}

TEST(PlotCli, WritesAnSvgAndReportsBadInputOnOneLine) {
  TempDir dir;
  const std::string a = dir.file("a.csv"), b = dir.file("b.csv"), out = dir.file("loss.svg");
  write_all(a, make_log(50, 10));
  write_all(b, make_log(40, 0, 1.1));
  const auto ok = run(test::m3_binary() + " plot " + a + " " + b + " -o " + out + " --smooth 5 --x tokens --log-y --title 'Two runs'");
  ASSERT_EQ(ok.exit_code, 0) << ok.out;
  EXPECT_NE(ok.out.find("wrote " + out), std::string::npos) << ok.out;
  const std::string svg = read_all(out);
  ASSERT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_EQ(check_balanced(svg), "");
  EXPECT_EQ(of_class(polylines(svg), "train").size(), 2u);
  EXPECT_NE(svg.find("Two runs"), std::string::npos);

  const std::string bad = dir.file("bad.csv");
  write_all(bad, kHeader + "1,1,1,5,,1,1,1\n2,2,1,oops,,1,1,1\n");
  auto one_line_error = [&](const std::string& args, const std::string& expect) {
    const auto r = run(test::m3_binary() + " plot " + args);
    EXPECT_EQ(r.exit_code, 1) << r.out;
    EXPECT_EQ(r.out.rfind("m3: error: ", 0), 0u) << r.out;
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
    EXPECT_NE(r.out.find(expect), std::string::npos) << r.out;
  };
  one_line_error(bad + " -o " + dir.file("x.svg"), bad + ":3: column 'loss' is 'oops', not a number");
  one_line_error(a + " -o " + dir.file("x.svg") + " --x seconds", "--x 'seconds' is not one of step, tokens");
  one_line_error(dir.file("missing.csv") + " -o " + dir.file("x.svg"), "missing.csv: cannot open");
  one_line_error(a + " -o " + dir.file("no/such/dir/x.svg"), "cannot write");
  EXPECT_FALSE(std::filesystem::exists(dir.file("x.svg")));
  EXPECT_NE(run(test::m3_binary() + " plot " + a).exit_code, 0);  // -o is required
}

}  // namespace
}  // namespace m3
