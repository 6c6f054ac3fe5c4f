// Evaluation reports: Markdown tables, JSON with every item, an SVG bar chart (m3/eval.h).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "m3/eval.h"
#include "m3/xml.h"

namespace m3 {

namespace {

using json = nlohmann::ordered_json;

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}
std::string pct(double v) { return fmt("%.2f", 100.0 * v); }

bool has_kind(const EvalReport& r, EvalTaskKind k) {
  return std::any_of(r.results.begin(), r.results.end(), [&](const EvalSliceResult& s) { return s.kind == k; });
}

// Table cells must not break the table.
std::string cell(std::string s) {
  std::string out;
  for (char c : s) {
    if (c == '|') out += "\\|";
    else if (c == '\n' || c == '\r') out += ' ';
    else out += c;
  }
  return out;
}


std::string leakage_text(double t) {
  return t > 1.0 ? "off" : fmt("%.4g", t) + " (a reference with Eq. 6 overlap >= it is dropped)";
}

}  // namespace

std::string eval_report_markdown(const EvalReport& r) {
  std::string md = "# m3 eval\n\n";
  md += "- model: `" + r.model_path + "` (" + r.model_name + ", fingerprint " + r.model_fingerprint + ")\n";
  if (!r.bank.empty()) {
    md += "- bank: `" + r.bank + "`, retriever " + r.retriever + ", " + std::to_string(r.memories) + " memories per chunk, rag " +
          std::to_string(r.rag_references) + " references\n";
    md += "- leakage filter: " + leakage_text(r.leakage) + "\n";
  } else {
    md += "- no bank: mode none only\n";
  }
  std::string modes;
  for (EvalMode m : r.modes) modes += std::string(modes.empty() ? "" : ", ") + eval_mode_name(m);
  md += "- modes: " + modes + (r.limit > 0 ? "; first " + std::to_string(r.limit) + " items per file" : "") + "\n";

  if (has_kind(r, EvalTaskKind::Qa)) {
    md += "\n## Question answering (greedy, at most " + std::to_string(r.max_new_tokens) + " tokens, exact match %)\n\n";
    md += "| slice | mode | n | exact | exact, any case | s / question | dropped refs |\n";
    md += "|---|---|--:|--:|--:|--:|--:|\n";
    for (const EvalSliceResult& s : r.results)
      if (s.kind == EvalTaskKind::Qa)
        md += "| " + cell(s.slice) + " | " + eval_mode_name(s.mode) + " | " + std::to_string(s.n) + " | " + pct(s.accuracy) + " | " +
              pct(s.accuracy_ci) + " | " + fmt("%.3f", s.seconds_per_item) + " | " + std::to_string(s.dropped) + " |\n";
  }
  if (has_kind(r, EvalTaskKind::MultipleChoice)) {
    md += "\n## Multiple choice (log-likelihood of each choice, accuracy %)\n\n";
    md += "| slice | mode | n | acc | acc_norm | s / item | dropped refs |\n";
    md += "|---|---|--:|--:|--:|--:|--:|\n";
    for (const EvalSliceResult& s : r.results)
      if (s.kind == EvalTaskKind::MultipleChoice)
        md += "| " + cell(s.slice) + " | " + eval_mode_name(s.mode) + " | " + std::to_string(s.n) + " | " + pct(s.accuracy) + " | " +
              pct(s.accuracy_norm) + " | " + fmt("%.3f", s.seconds_per_item) + " | " + std::to_string(s.dropped) + " |\n";
  }
  if (has_kind(r, EvalTaskKind::Perplexity)) {
    md += "\n## Perplexity (windows of " + std::to_string(r.perplexity_window) + " tokens)\n\n";
    md += "| slice | mode | documents | tokens | nll / token | perplexity | s / document | dropped refs |\n";
    md += "|---|---|--:|--:|--:|--:|--:|--:|\n";
    for (const EvalSliceResult& s : r.results) {
      if (s.kind != EvalTaskKind::Perplexity) continue;
      if (s.skipped) {
        md += "| " + cell(s.slice) + " | " + eval_mode_name(s.mode) + " | n/a | | | | | |\n";
        continue;
      }
      md += "| " + cell(s.slice) + " | " + eval_mode_name(s.mode) + " | " + std::to_string(s.n) + " | " + std::to_string(s.tokens) +
            " | " + fmt("%.4f", s.nll_per_token) + " | " + fmt("%.3f", s.perplexity) + " | " + fmt("%.3f", s.seconds_per_item) +
            " | " + std::to_string(s.dropped) + " |\n";
    }
  }
  return md;
}

std::string eval_report_json(const EvalReport& r) {
  json modes = json::array();
  for (EvalMode m : r.modes) modes.push_back(eval_mode_name(m));
  json settings = {
      {"model", {{"path", r.model_path}, {"name", r.model_name}, {"fingerprint", r.model_fingerprint}}},
      {"bank", r.bank.empty() ? json(nullptr) : json(r.bank)},
      {"retriever", r.retriever.empty() ? json(nullptr) : json(r.retriever)},
      {"memories", r.memories},
      {"rag_references", r.rag_references},
      {"leakage", r.leakage > 1.0 ? json(nullptr) : json(r.leakage)},
      {"modes", modes},
      {"max_new_tokens", r.max_new_tokens},
      {"limit", r.limit > 0 ? json(r.limit) : json(nullptr)},
      {"threads", r.threads},
      {"perplexity_window", r.perplexity_window},
  };
  json results = json::array();
  for (const EvalSliceResult& s : r.results) {
    json j = {{"slice", s.slice}, {"path", s.path}, {"task", eval_task_name(s.kind)}, {"mode", eval_mode_name(s.mode)}};
    if (s.skipped) {
      j["skipped"] = true;
      j["note"] = s.note;
      results.push_back(j);
      continue;
    }
    j["n"] = s.n;
    j["seconds_per_item"] = s.seconds_per_item;
    j["dropped"] = s.dropped;
    if (s.kind == EvalTaskKind::Qa) {
      j["exact_match"] = s.accuracy;
      j["exact_match_ignore_case"] = s.accuracy_ci;
    } else if (s.kind == EvalTaskKind::MultipleChoice) {
      j["acc"] = s.accuracy;
      j["acc_norm"] = s.accuracy_norm;
    } else {
      j["tokens"] = s.tokens;
      j["nll_per_token"] = s.nll_per_token;
      j["perplexity"] = s.perplexity;
    }
    json items = json::array();
    for (const EvalRecord& e : s.records) {
      json it = {{"id", e.id}, {"line", e.line}, {"seconds", e.seconds}, {"dropped", e.dropped}};
      json refs = json::array();
      for (const EvalReference& ref : e.references) {
        if (s.kind == EvalTaskKind::Perplexity) refs.push_back(ref.id);  // ids only: documents read many
        else refs.push_back({{"id", ref.id}, {"text", ref.text}});
      }
      it["references"] = refs;
      if (s.kind == EvalTaskKind::Qa) {
        it["answer"] = e.answer;
        it["gold"] = e.golds;
        it["exact"] = e.exact;
        it["exact_ignore_case"] = e.exact_ci;
      } else if (s.kind == EvalTaskKind::MultipleChoice) {
        it["loglik"] = e.loglik;
        it["choice_tokens"] = e.choice_tokens;
        it["gold"] = e.gold;
        it["pred"] = e.pred;
        it["pred_norm"] = e.pred_norm;
      } else {
        it["tokens"] = e.tokens;
        it["nll"] = e.nll;
      }
      items.push_back(std::move(it));
    }
    j["items"] = std::move(items);
    results.push_back(std::move(j));
  }
  // Generated answers may hold broken UTF-8 (a model's byte tokens): replaced, never an error.
  return json{{"settings", settings}, {"results", results}}.dump(1, ' ', false, json::error_handler_t::replace) + "\n";
}

std::string eval_report_svg(const EvalReport& r) {
  // Groups: the accuracy slices (QA exact match, MC acc) in report order; one bar per mode.
  struct Group {
    std::string label;
    std::vector<const EvalSliceResult*> bars;  // per r.modes entry, null when missing
  };
  std::vector<Group> groups;
  for (const EvalSliceResult& s : r.results) {
    if (s.kind == EvalTaskKind::Perplexity || s.skipped) continue;
    const std::string label = s.slice + (s.kind == EvalTaskKind::Qa ? " (qa)" : " (mc)");
    auto g = std::find_if(groups.begin(), groups.end(), [&](const Group& x) { return x.label == label; });
    if (g == groups.end()) {
      groups.push_back({label, std::vector<const EvalSliceResult*>(r.modes.size(), nullptr)});
      g = groups.end() - 1;
    }
    for (size_t m = 0; m < r.modes.size(); ++m)
      if (r.modes[m] == s.mode) g->bars[m] = &s;
  }
  const int n_modes = std::max<int>(1, static_cast<int>(r.modes.size()));
  const int bar = 36, gap = 28, left = 56, right = 24, top = 64, plot_h = 240, bottom = 64;
  const int group_w = n_modes * bar;
  const std::string title = "Accuracy per slice and mode (" + r.model_name + ")";
  // ~9 px per character of the 15 px bold title, so it is never cut
  const int title_w = left + 9 * static_cast<int>(title.size()) + right;
  const int width = std::max({420, title_w, left + static_cast<int>(groups.size()) * (group_w + gap) + gap + right});
  const int height = top + plot_h + bottom;
  auto color = [](EvalMode m) { return m == EvalMode::Memory ? "#2b6cb0" : m == EvalMode::Rag ? "#dd8a2e" : "#8a8a8a"; };
  std::string svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + std::to_string(width) + "\" height=\"" +
                    std::to_string(height) + "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  svg += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  svg += "<text x=\"" + std::to_string(left) + "\" y=\"22\" font-size=\"15\" font-weight=\"bold\">" + xml_escape(title) +
         "</text>\n";
  // Legend.
  int lx = left;
  for (EvalMode m : r.modes) {
    svg += "<rect x=\"" + std::to_string(lx) + "\" y=\"34\" width=\"12\" height=\"12\" fill=\"" + color(m) + "\"/>";
    svg += "<text x=\"" + std::to_string(lx + 16) + "\" y=\"45\">" + eval_mode_name(m) + "</text>\n";
    lx += 90;
  }
  if (groups.empty()) {
    svg += "<text x=\"" + std::to_string(left) + "\" y=\"" + std::to_string(top + plot_h / 2) +
           "\">no QA or multiple-choice slices (perplexity is in results.md)</text>\n</svg>\n";
    return svg;
  }
  // Axis and grid: 0..100 %.
  const int x1 = width - right, y0 = top + plot_h;
  for (int p = 0; p <= 100; p += 25) {
    const int y = y0 - plot_h * p / 100;
    svg += "<line x1=\"" + std::to_string(left) + "\" y1=\"" + std::to_string(y) + "\" x2=\"" + std::to_string(x1) + "\" y2=\"" +
           std::to_string(y) + "\" stroke=\"" + (p == 0 ? "#333" : "#ddd") + "\"/>";
    svg += "<text x=\"" + std::to_string(left - 6) + "\" y=\"" + std::to_string(y + 4) + "\" text-anchor=\"end\">" + std::to_string(p) +
           "%</text>\n";
  }
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    const int gx = left + gap + static_cast<int>(gi) * (group_w + gap);
    for (size_t m = 0; m < groups[gi].bars.size(); ++m) {
      const EvalSliceResult* s = groups[gi].bars[m];
      if (!s) continue;
      const double v = std::clamp(s->accuracy, 0.0, 1.0);
      const int h = static_cast<int>(std::lround(v * plot_h));
      const int x = gx + static_cast<int>(m) * bar;
      svg += "<rect x=\"" + std::to_string(x + 2) + "\" y=\"" + std::to_string(y0 - h) + "\" width=\"" + std::to_string(bar - 4) +
             "\" height=\"" + std::to_string(h) + "\" fill=\"" + color(s->mode) + "\"><title>" + xml_escape(groups[gi].label) + " " +
             eval_mode_name(s->mode) + ": " + pct(s->accuracy) + "% of " + std::to_string(s->n) + "</title></rect>";
      svg += "<text x=\"" + std::to_string(x + bar / 2) + "\" y=\"" + std::to_string(y0 - h - 4) +
             "\" text-anchor=\"middle\" font-size=\"10\">" + fmt("%.1f", 100.0 * s->accuracy) + "</text>\n";
    }
    // Long names are cut to the group's width (the full one is in the bars' tooltips).
    const size_t fit = static_cast<size_t>(std::max(6, (group_w + gap) / 7));
    const std::string& label = groups[gi].label;
    svg += "<text x=\"" + std::to_string(gx + group_w / 2) + "\" y=\"" + std::to_string(y0 + 18) + "\" text-anchor=\"middle\">" +
           xml_escape(label.size() > fit ? label.substr(0, fit - 2) + ".." : label) + "</text>\n";
  }
  svg += "<text x=\"" + std::to_string(left) + "\" y=\"" + std::to_string(height - 14) +
         "\" fill=\"#555\">QA: exact match %; multiple choice: acc %</text>\n";
  svg += "</svg>\n";
  return svg;
}

}  // namespace m3
