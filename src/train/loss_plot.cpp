// Training-log parsing and SVG loss curves; see m3/loss_plot.h.
#include "m3/loss_plot.h"
#include "m3/xml.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>

#include "m3/error.h"

namespace m3 {

namespace {

constexpr int kColumns = 8;
const char* const kColumnNames[kColumns] = {"step", "tokens", "lr", "loss", "val_loss", "grad_norm", "tokens_per_s", "elapsed_s"};

std::string trim(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && (s[a] == ' ' || s[a] == '\t' || s[a] == '\r')) ++a;
  while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t' || s[b - 1] == '\r')) --b;
  return s.substr(a, b - a);
}

std::vector<std::string> split_commas(const std::string& line) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t comma = line.find(',', start);
    out.push_back(trim(line.substr(start, comma == std::string::npos ? std::string::npos : comma - start)));
    if (comma == std::string::npos) return out;
    start = comma + 1;
  }
}

std::string where(const std::string& name, size_t line) { return name + ":" + std::to_string(line); }

int64_t parse_int(const std::string& field, int col, const std::string& name, size_t line) {
  int64_t v = 0;
  const char* end = field.data() + field.size();
  auto [p, ec] = std::from_chars(field.data(), end, v);
  if (field.empty() || ec != std::errc() || p != end)
    throw Error(where(name, line) + ": column '" + kColumnNames[col] + "' is '" + field + "', not an integer");
  return v;
}

double parse_double(const std::string& field, int col, const std::string& name, size_t line) {
  double v = 0;
  const char* end = field.data() + field.size();
  auto [p, ec] = std::from_chars(field.data(), end, v);
  if (field.empty()) throw Error(where(name, line) + ": column '" + kColumnNames[col] + "' is empty");
  if (ec != std::errc() || p != end)
    throw Error(where(name, line) + ": column '" + kColumnNames[col] + "' is '" + field + "', not a number");
  return v;
}

LossRow parse_row(const std::string& text, const std::string& name, size_t line) {
  const std::vector<std::string> f = split_commas(text);
  if (f.size() != kColumns)
    throw Error(where(name, line) + ": " + std::to_string(f.size()) + " column" + (f.size() == 1 ? "" : "s") + ", expected " +
                std::to_string(kColumns) + " (" + kLossLogHeader + ")");
  LossRow r;
  r.step = parse_int(f[0], 0, name, line);
  r.tokens = parse_int(f[1], 1, name, line);
  r.lr = parse_double(f[2], 2, name, line);
  r.loss = parse_double(f[3], 3, name, line);
  r.has_val = !f[4].empty();
  if (r.has_val) r.val_loss = parse_double(f[4], 4, name, line);
  r.grad_norm = parse_double(f[5], 5, name, line);
  r.tokens_per_s = parse_double(f[6], 6, name, line);
  r.elapsed_s = parse_double(f[7], 7, name, line);
  return r;
}

// ---- number formatting and axes ------------------------------------------------------------------

std::string fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), format, v);
  return buf;
}

// A coordinate: one decimal is a tenth of a pixel.
std::string coord(double v) {
  std::string s = fmt("%.1f", v);
  if (s.size() > 2 && s.compare(s.size() - 2, 2, ".0") == 0) s.resize(s.size() - 2);
  if (s == "-0") s = "0";
  return s;
}


// 1, 2 or 5 times a power of ten, near x (round) or at least x (ceiling).
double nice_number(double x, bool round) {
  const double e = std::floor(std::log10(x));
  const double p = std::pow(10.0, e);
  const double f = x / p;
  double n;
  if (round) n = f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10;
  else n = f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10;
  return n * p;
}

struct Axis {
  double lo = 0, hi = 1;  // the axis range, in data units
  bool log = false;
  std::vector<double> ticks;
  double step = 1;  // tick spacing (linear axes), for label precision
};

// A linear axis whose nice bounds cover [lo, hi], with about `target` ticks (whole-number ticks
// when `integer`).
Axis linear_axis(double lo, double hi, int target, bool integer = false) {
  if (!(hi > lo)) {
    const double pad = std::max(std::fabs(lo) * 0.05, 0.5);
    lo -= pad;
    hi += pad;
  }
  Axis a;
  a.step = nice_number((hi - lo) / (target - 1), true);
  if (integer) a.step = std::max(a.step, 1.0);
  a.lo = std::floor(lo / a.step + 1e-9) * a.step;
  a.hi = std::ceil(hi / a.step - 1e-9) * a.step;
  for (double t = a.lo; t <= a.hi + a.step * 1e-6; t += a.step) a.ticks.push_back(std::fabs(t) < a.step * 1e-9 ? 0.0 : t);
  return a;
}

// A log10 axis over [lo, hi] (both > 0), a little wider than the data.
Axis log_axis(double lo, double hi) {
  Axis a;
  a.log = true;
  double llo = std::log10(lo), lhi = std::log10(hi);
  const double pad = std::max((lhi - llo) * 0.04, 0.02);
  llo -= pad;
  lhi += pad;
  a.lo = std::pow(10.0, llo);
  a.hi = std::pow(10.0, lhi);
  const double decades = lhi - llo;
  if (decades >= 1) {
    const std::vector<double> mantissas = decades > 4 ? std::vector<double>{1} : std::vector<double>{1, 2, 5};
    for (int e = static_cast<int>(std::floor(llo)); e <= static_cast<int>(std::ceil(lhi)); ++e)
      for (double m : mantissas) {
        const double t = m * std::pow(10.0, e);
        if (t >= a.lo && t <= a.hi) a.ticks.push_back(t);
      }
    a.step = a.ticks.empty() ? 1 : a.ticks.front();
  } else {
    // Less than a decade: linear nice ticks inside the range, placed logarithmically.
    const Axis lin = linear_axis(a.lo, a.hi, 6);
    for (double t : lin.ticks)
      if (t >= a.lo && t <= a.hi && t > 0) a.ticks.push_back(t);
    a.step = lin.step;
  }
  return a;
}

// Tick labels: integers, decimals as fine as the spacing needs, or k/M/G for large values.
std::string tick_label(double v, const Axis& a, bool si) {
  if (si && std::fabs(v) >= 1000) {
    const char* suffix[] = {"", "k", "M", "G", "T"};
    int i = 0;
    double x = v;
    while (std::fabs(x) >= 1000 && i < 4) {
      x /= 1000;
      ++i;
    }
    std::string s = fmt("%.2f", x);
    while (s.back() == '0') s.pop_back();
    if (s.back() == '.') s.pop_back();
    return s + suffix[i];
  }
  const double step = a.log ? std::min(v, a.step) : a.step;
  const int decimals = std::clamp(static_cast<int>(-std::floor(std::log10(step) + 1e-9)), 0, 6);
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, v);
  return buf;
}

std::string mix_with_black(const std::string& hex, double t) {
  unsigned r = 0, g = 0, b = 0;
  std::sscanf(hex.c_str(), "#%02x%02x%02x", &r, &g, &b);
  char buf[8];
  std::snprintf(buf, sizeof(buf), "#%02x%02x%02x", static_cast<unsigned>(r * (1 - t)), static_cast<unsigned>(g * (1 - t)),
                static_cast<unsigned>(b * (1 - t)));
  return buf;
}

// A trailing moving average over the last n finite values.
std::vector<double> moving_average(const std::vector<double>& v, int n) {
  std::vector<double> out(v.size());
  double sum = 0;
  size_t start = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    sum += v[i];
    if (i - start + 1 > static_cast<size_t>(n)) sum -= v[start++];
    out[i] = sum / static_cast<double>(i - start + 1);
  }
  return out;
}

std::string format_value(double v) { return fmt(std::fabs(v) >= 100 ? "%.1f" : "%.4f", v); }

}  // namespace

LossLog parse_loss_log(const std::string& text, const std::string& name) {
  LossLog log;
  log.path = name;
  std::vector<std::string> lines;
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t nl = text.find('\n', pos);
    lines.push_back(text.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos));
    if (nl == std::string::npos) break;
    pos = nl + 1;
  }
  const bool torn_tail = !text.empty() && text.back() != '\n';
  if (lines.empty() || trim(lines[0]).empty())
    throw Error(name + ": empty, expected a training log starting with the header '" + kLossLogHeader + "'");
  const std::string header = trim(lines[0].size() >= 3 && lines[0].compare(0, 3, "\xEF\xBB\xBF") == 0 ? lines[0].substr(3) : lines[0]);
  if (header != kLossLogHeader) {
    std::string shown = header.size() > 120 ? header.substr(0, 120) + "..." : header;
    throw Error(where(name, 1) + ": header is '" + shown + "', expected '" + kLossLogHeader + "'");
  }
  for (size_t i = 1; i < lines.size(); ++i) {
    if (trim(lines[i]).empty()) continue;
    try {
      log.rows.push_back(parse_row(lines[i], name, i + 1));
    } catch (const Error&) {
      if (torn_tail && i + 1 == lines.size()) break;  // the row being written right now
      throw;
    }
  }
  return log;
}

LossLog read_loss_log(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(path + ": read failed");
  return parse_loss_log(ss.str(), path);
}

std::vector<std::string> loss_log_labels(const std::vector<LossLog>& logs) {
  // Path components of each log, last first.
  std::vector<std::vector<std::string>> parts;
  size_t most = 0;
  for (const LossLog& l : logs) {
    std::vector<std::string> p;
    std::string cur;
    for (char c : l.path) {
      if (c == '/') {
        if (!cur.empty() && cur != ".") p.push_back(cur);
        cur.clear();
      } else {
        cur += c;
      }
    }
    if (!cur.empty()) p.push_back(cur);
    if (p.empty()) p.push_back(l.path);
    std::reverse(p.begin(), p.end());
    most = std::max(most, p.size());
    parts.push_back(std::move(p));
  }
  auto suffix = [&](size_t i, size_t n) {
    std::string s;
    const size_t k = std::min(n, parts[i].size());
    for (size_t j = k; j-- > 0;) s += parts[i][j] + (j ? "/" : "");
    return s;
  };
  std::vector<std::string> labels(logs.size());
  for (size_t n = 1; n <= std::max<size_t>(most, 1); ++n) {
    for (size_t i = 0; i < logs.size(); ++i) labels[i] = suffix(i, n);
    bool unique = true;
    for (size_t i = 0; i < logs.size() && unique; ++i)
      for (size_t j = i + 1; j < logs.size() && unique; ++j) unique = labels[i] != labels[j];
    if (unique) break;
  }
  for (size_t i = 0; i < logs.size(); ++i)  // the same file given twice: number them
    for (size_t j = 0; j < i; ++j)
      if (labels[i] == labels[j]) labels[i] += " (" + std::to_string(i + 1) + ")";
  return labels;
}

std::string render_loss_svg(const std::vector<LossLog>& logs, const PlotOptions& o) {
  if (logs.empty()) throw Error("plot: no training logs given");
  if (o.smooth < 0) throw Error("plot: --smooth must be 0 or more, got " + std::to_string(o.smooth));
  if (o.width < 200 || o.height < 150)
    throw Error("plot: the picture must be at least 200×150, got " + std::to_string(o.width) + "×" + std::to_string(o.height));
  const bool by_tokens = o.x == PlotX::Tokens;
  const std::vector<std::string> labels = loss_log_labels(logs);

  // ---- the series: x and y per log, finite values only.
  struct Series {
    std::vector<double> x, y;
  };
  std::vector<Series> train(logs.size()), val(logs.size());
  double xmin = std::numeric_limits<double>::infinity(), xmax = -xmin, ymin = xmin, ymax = -xmin;
  auto take = [&](Series& s, double x, double y) {
    if (!std::isfinite(y)) return;
    s.x.push_back(x);
    s.y.push_back(y);
    xmin = std::min(xmin, x);
    xmax = std::max(xmax, x);
    ymin = std::min(ymin, y);
    ymax = std::max(ymax, y);
  };
  for (size_t i = 0; i < logs.size(); ++i) {
    if (logs[i].rows.empty()) throw Error(logs[i].path + ": no rows yet (only the header)");
    for (const LossRow& r : logs[i].rows) {
      const double x = by_tokens ? static_cast<double>(r.tokens) : static_cast<double>(r.step);
      take(train[i], x, r.loss);
      if (r.has_val) take(val[i], x, r.val_loss);
    }
    if (train[i].x.empty() && val[i].x.empty()) throw Error(logs[i].path + ": no finite loss in any row");
  }
  if (o.log_y && ymin <= 0) {
    for (const LossLog& l : logs)
      for (size_t k = 0; k < l.rows.size(); ++k)
        if ((std::isfinite(l.rows[k].loss) && l.rows[k].loss <= 0) || (l.rows[k].has_val && l.rows[k].val_loss <= 0))
          throw Error(l.path + ": step " + std::to_string(l.rows[k].step) + " has a loss <= 0, which a log scale (--log-y) cannot show");
  }

  // ---- layout.
  const double W = o.width, H = o.height;
  const double left = 72, right = 24, top = 48, bottom = 56;
  const double pw = W - left - right, ph = H - top - bottom;
  Axis ax = linear_axis(xmin, xmax, std::max(3, static_cast<int>(pw / 110)), /*integer=*/true);
  if (xmax > xmin && ax.hi - xmax > 0.02 * (ax.hi - ax.lo)) {
    // The x axis ends at the last step rather than at the next round number: no empty stretch.
    ax.hi = xmax;
    while (!ax.ticks.empty() && ax.ticks.back() > xmax + 1e-9 * ax.step) ax.ticks.pop_back();
  }
  // A little room above and below the data so no point sits on the frame (not below 0 for losses >= 0).
  const double ypad = 0.02 * (ymax - ymin);
  const Axis ay = o.log_y ? log_axis(ymin, ymax)
                          : linear_axis(ymin >= 0 ? std::max(0.0, ymin - ypad) : ymin - ypad, ymax + ypad,
                                        std::max(3, static_cast<int>(ph / 70)));
  const bool si_x = std::max(std::fabs(ax.lo), std::fabs(ax.hi)) >= 10000;
  auto px = [&](double x) { return left + (x - ax.lo) / (ax.hi - ax.lo) * pw; };
  auto py = [&](double y) {
    const double t = ay.log ? (std::log10(y) - std::log10(ay.lo)) / (std::log10(ay.hi) - std::log10(ay.lo)) : (y - ay.lo) / (ay.hi - ay.lo);
    return top + (1 - t) * ph;
  };

  static const char* const palette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b",
                                        "#e377c2", "#17becf", "#7f7f7f", "#bcbd22", "#d62728"};
  const bool single = logs.size() == 1;
  auto train_colour = [&](size_t i) { return std::string(palette[i % 10]); };
  auto val_colour = [&](size_t i) { return single ? std::string("#d62728") : mix_with_black(palette[i % 10], 0.35); };

  std::string title = o.title;
  if (title.empty()) title = single ? "Training loss: " + labels[0] : "Training loss";

  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << o.width << "\" height=\"" << o.height << "\" viewBox=\"0 0 "
    << o.width << " " << o.height << "\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" font-size=\"12\">\n";
  s << "<title>" << xml_escape(title) << "</title>\n";
  s << "<defs><clipPath id=\"plot-area\"><rect x=\"" << coord(left) << "\" y=\"" << coord(top) << "\" width=\"" << coord(pw)
    << "\" height=\"" << coord(ph) << "\"/></clipPath></defs>\n";
  s << "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n";
  s << "<text class=\"title\" x=\"" << coord(W / 2) << "\" y=\"28\" text-anchor=\"middle\" font-size=\"16\" font-weight=\"bold\">"
    << xml_escape(title) << "</text>\n";

  // Grid and axes.
  s << "<g class=\"x-axis\" data-min=\"" << fmt("%.17g", ax.lo) << "\" data-max=\"" << fmt("%.17g", ax.hi) << "\">\n";
  for (double t : ax.ticks) {
    const double x = px(t);
    s << "<line x1=\"" << coord(x) << "\" y1=\"" << coord(top) << "\" x2=\"" << coord(x) << "\" y2=\"" << coord(top + ph)
      << "\" stroke=\"#e6e6e6\"/>";
    s << "<line x1=\"" << coord(x) << "\" y1=\"" << coord(top + ph) << "\" x2=\"" << coord(x) << "\" y2=\"" << coord(top + ph + 5)
      << "\" stroke=\"#333333\"/>";
    s << "<text x=\"" << coord(x) << "\" y=\"" << coord(top + ph + 19) << "\" text-anchor=\"middle\">"
      << xml_escape(tick_label(t, ax, si_x)) << "</text>\n";
  }
  s << "<text class=\"x-label\" x=\"" << coord(left + pw / 2) << "\" y=\"" << coord(H - 14) << "\" text-anchor=\"middle\" font-size=\"13\">"
    << (by_tokens ? "tokens" : "step") << "</text>\n</g>\n";
  s << "<g class=\"y-axis\" data-min=\"" << fmt("%.17g", ay.lo) << "\" data-max=\"" << fmt("%.17g", ay.hi) << "\" data-scale=\""
    << (ay.log ? "log" : "linear") << "\">\n";
  for (double t : ay.ticks) {
    const double y = py(t);
    s << "<line x1=\"" << coord(left) << "\" y1=\"" << coord(y) << "\" x2=\"" << coord(left + pw) << "\" y2=\"" << coord(y)
      << "\" stroke=\"#e6e6e6\"/>";
    s << "<line x1=\"" << coord(left - 5) << "\" y1=\"" << coord(y) << "\" x2=\"" << coord(left) << "\" y2=\"" << coord(y)
      << "\" stroke=\"#333333\"/>";
    s << "<text x=\"" << coord(left - 8) << "\" y=\"" << coord(y + 4) << "\" text-anchor=\"end\">" << xml_escape(tick_label(t, ay, false))
      << "</text>\n";
  }
  s << "<text class=\"y-label\" x=\"18\" y=\"" << coord(top + ph / 2) << "\" text-anchor=\"middle\" font-size=\"13\" transform=\"rotate(-90 18 "
    << coord(top + ph / 2) << ")\">loss" << (ay.log ? " (log scale)" : "") << "</text>\n</g>\n";
  s << "<rect class=\"frame\" x=\"" << coord(left) << "\" y=\"" << coord(top) << "\" width=\"" << coord(pw) << "\" height=\"" << coord(ph)
    << "\" fill=\"none\" stroke=\"#333333\"/>\n";

  // Curves.
  auto polyline = [&](const char* cls, size_t log, const std::vector<double>& xs, const std::vector<double>& ys, const std::string& colour,
                      const char* extra) {
    s << "<polyline class=\"" << cls << "\" data-log=\"" << log << "\" fill=\"none\" stroke=\"" << colour << "\" " << extra << " points=\"";
    for (size_t k = 0; k < xs.size(); ++k) s << (k ? " " : "") << coord(px(xs[k])) << "," << coord(py(ys[k]));
    s << "\"/>\n";
  };
  s << "<g class=\"curves\" clip-path=\"url(#plot-area)\" stroke-linejoin=\"round\" stroke-linecap=\"round\">\n";
  const bool smoothing = o.smooth > 1;
  for (size_t i = 0; i < logs.size(); ++i) {
    const Series& t = train[i];
    if (!t.x.empty()) {
      if (smoothing) {
        polyline("train-raw", i, t.x, t.y, train_colour(i), "stroke-width=\"1\" stroke-opacity=\"0.25\"");
        polyline("train", i, t.x, moving_average(t.y, o.smooth), train_colour(i), "stroke-width=\"1.8\"");
      } else {
        polyline("train", i, t.x, t.y, train_colour(i), "stroke-width=\"1.5\"");
      }
      if (t.x.size() <= 20) {  // a few points: mark them (a single point draws no line)
        s << "<g class=\"train-markers\" data-log=\"" << i << "\" fill=\"" << train_colour(i) << "\">";
        for (size_t k = 0; k < t.x.size(); ++k) s << "<circle cx=\"" << coord(px(t.x[k])) << "\" cy=\"" << coord(py(t.y[k])) << "\" r=\"2.2\"/>";
        s << "</g>\n";
      }
    }
    const Series& v = val[i];
    if (!v.x.empty()) {
      polyline("val", i, v.x, v.y, val_colour(i), "stroke-width=\"1.5\" stroke-dasharray=\"6 3\"");
      if (v.x.size() <= 400) {
        s << "<g class=\"val-markers\" data-log=\"" << i << "\" fill=\"" << val_colour(i) << "\">";
        for (size_t k = 0; k < v.x.size(); ++k) s << "<circle cx=\"" << coord(px(v.x[k])) << "\" cy=\"" << coord(py(v.y[k])) << "\" r=\"2.8\"/>";
        s << "</g>\n";
      }
    }
  }
  s << "</g>\n";

  // Legend, top right inside the plot: a line sample and a label per series.
  struct Entry {
    std::string colour, dash, text;
    bool marker;
  };
  std::vector<Entry> entries;
  for (size_t i = 0; i < logs.size(); ++i) {
    const std::string who = single ? "" : labels[i] + " ";
    if (!train[i].x.empty()) {
      std::string text = who + "train" + (smoothing ? " (mean of " + std::to_string(o.smooth) + ")" : "") + ", last " +
                         format_value(train[i].y.back());
      entries.push_back({train_colour(i), "", text, false});
    }
    if (!val[i].x.empty()) {
      const auto best = std::min_element(val[i].y.begin(), val[i].y.end()) - val[i].y.begin();
      const double bx = val[i].x[static_cast<size_t>(best)];
      std::string at = by_tokens ? tick_label(bx, ax, true) + " tokens" : "step " + fmt("%.0f", bx);
      entries.push_back({val_colour(i), "6 3", who + "val, best " + format_value(val[i].y[static_cast<size_t>(best)]) + " at " + at, true});
    }
  }
  size_t longest = 0;
  for (const Entry& e : entries) longest = std::max(longest, e.text.size());
  const double lw = std::min(pw - 20, 46 + 6.8 * static_cast<double>(longest)), lh = 10 + 18 * static_cast<double>(entries.size());
  const double lx = left + pw - lw - 10, ly = top + 10;
  s << "<g class=\"legend\">\n<rect x=\"" << coord(lx) << "\" y=\"" << coord(ly) << "\" width=\"" << coord(lw) << "\" height=\"" << coord(lh)
    << "\" fill=\"#ffffff\" fill-opacity=\"0.88\" stroke=\"#bbbbbb\"/>\n";
  for (size_t k = 0; k < entries.size(); ++k) {
    const Entry& e = entries[k];
    const double y = ly + 14 + 18 * static_cast<double>(k);
    s << "<line x1=\"" << coord(lx + 8) << "\" y1=\"" << coord(y) << "\" x2=\"" << coord(lx + 34) << "\" y2=\"" << coord(y) << "\" stroke=\""
      << e.colour << "\" stroke-width=\"2\"" << (e.dash.empty() ? "" : " stroke-dasharray=\"" + e.dash + "\"") << "/>";
    if (e.marker) s << "<circle cx=\"" << coord(lx + 21) << "\" cy=\"" << coord(y) << "\" r=\"2.8\" fill=\"" << e.colour << "\"/>";
    s << "<text x=\"" << coord(lx + 40) << "\" y=\"" << coord(y + 4) << "\">" << xml_escape(e.text) << "</text>\n";
  }
  s << "</g>\n</svg>\n";
  return s.str();
}

}  // namespace m3
