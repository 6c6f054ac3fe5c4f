// Evaluation items from JSONL files, validated line by line (m3/eval.h).
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "m3/error.h"
#include "m3/eval.h"

namespace m3 {

namespace {

using json = nlohmann::json;

const char* type_name(const json& j) {
  return j.is_string() ? "a string" : j.is_number_integer() ? "an integer" : j.is_number() ? "a number" : j.is_array() ? "an array"
         : j.is_object() ? "an object" : j.is_boolean() ? "a boolean" : "null";
}

struct Line {
  const std::string& path;
  int no;
  const json& j;
  std::string where() const { return path + ":" + std::to_string(no); }
  [[noreturn]] void fail(const std::string& what) const { throw Error(where() + ": " + what); }
  const json& field(const char* name) const {
    if (!j.contains(name)) fail(std::string("missing field \"") + name + "\"");
    return j[name];
  }
  std::string string(const char* name, bool allow_empty) const {
    const json& v = field(name);
    if (!v.is_string()) fail(std::string("field \"") + name + "\" must be a string, not " + type_name(v));
    std::string s = v.get<std::string>();
    if (!allow_empty && s.empty()) fail(std::string("field \"") + name + "\" is empty");
    return s;
  }
  std::string id() const {
    if (!j.contains("id")) return "line " + std::to_string(no);
    const json& v = j["id"];
    if (v.is_string()) return v.get<std::string>();
    if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
    fail(std::string("field \"id\" must be a string or an integer, not ") + type_name(v));
  }
};

}  // namespace

const char* eval_task_name(EvalTaskKind kind) {
  switch (kind) {
    case EvalTaskKind::Qa: return "qa";
    case EvalTaskKind::MultipleChoice: return "mc";
    case EvalTaskKind::Perplexity: return "perplexity";
  }
  return "?";
}

size_t EvalTask::size() const {
  return kind == EvalTaskKind::Qa ? qa.size() : kind == EvalTaskKind::MultipleChoice ? mc.size() : texts.size();
}

EvalTask load_eval_task(EvalTaskKind kind, const std::string& path, int limit) {
  if (limit < 0) throw Error("load_eval_task: limit must be >= 0");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open " + eval_task_name(kind) + " file");
  EvalTask task;
  task.kind = kind;
  task.path = path;
  task.name = std::filesystem::path(path).stem().string();
  std::string text;
  int no = 0;
  while (std::getline(in, text)) {
    ++no;
    if (limit > 0 && static_cast<int>(task.size()) >= limit) break;
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    json j;
    try {
      j = json::parse(text);
    } catch (const json::exception& e) {
      throw Error(path + ":" + std::to_string(no) + ": invalid JSON (" + e.what() + ")");
    }
    const Line line{path, no, j};
    if (!j.is_object()) line.fail(std::string("expected a JSON object, not ") + type_name(j));
    switch (kind) {
      case EvalTaskKind::Qa: {
        QaItem item;
        item.id = line.id();
        item.line = no;
        item.question = line.string("question", false);
        const json& a = line.field("answer");
        if (a.is_string()) {
          item.answers.push_back(a.get<std::string>());
        } else if (a.is_array() && !a.empty()) {
          for (const json& s : a) {
            if (!s.is_string()) line.fail(std::string("field \"answer\" must hold strings, not ") + type_name(s));
            item.answers.push_back(s.get<std::string>());
          }
        } else {
          line.fail(std::string("field \"answer\" must be a string or a non-empty array of strings, not ") +
                    (a.is_array() ? "an empty array" : type_name(a)));
        }
        for (const std::string& s : item.answers)
          if (eval_trim(s).empty()) line.fail("field \"answer\" is empty (or only whitespace)");
        // The prompt: "prompt" when given; the question itself when it is already a prompt
        // (ends with "A:", as knowledge/questions/*.jsonl); else "Q: <question>\nA:".
        const std::string q = eval_trim(item.question);
        if (j.contains("prompt")) item.prompt = line.string("prompt", false);
        else if (q.size() >= 2 && q.compare(q.size() - 2, 2, "A:") == 0) item.prompt = item.question;
        else item.prompt = "Q: " + item.question + "\nA:";
        task.qa.push_back(std::move(item));
        break;
      }
      case EvalTaskKind::MultipleChoice: {
        McItem item;
        item.id = line.id();
        item.line = no;
        item.context = line.string("context", true);
        const json& c = line.field("choices");
        if (!c.is_array()) line.fail(std::string("field \"choices\" must be an array of strings, not ") + type_name(c));
        if (c.empty()) line.fail("field \"choices\" is empty");
        for (size_t i = 0; i < c.size(); ++i) {
          if (!c[i].is_string()) line.fail("choices[" + std::to_string(i) + "] must be a string, not " + type_name(c[i]));
          item.choices.push_back(c[i].get<std::string>());
          if (item.choices.back().empty()) line.fail("choices[" + std::to_string(i) + "] is empty");
        }
        const json& g = line.field("gold");
        if (!g.is_number_integer()) line.fail(std::string("field \"gold\" must be an integer, not ") + type_name(g));
        const int64_t gold = g.get<int64_t>();
        if (gold < 0 || gold >= static_cast<int64_t>(item.choices.size()))
          line.fail("field \"gold\" is " + std::to_string(gold) + ", outside 0.." + std::to_string(item.choices.size() - 1) +
                    " (" + std::to_string(item.choices.size()) + " choices)");
        item.gold = static_cast<int>(gold);
        task.mc.push_back(std::move(item));
        break;
      }
      case EvalTaskKind::Perplexity: {
        TextItem item;
        item.id = line.id();
        item.line = no;
        item.text = line.string("text", false);
        task.texts.push_back(std::move(item));
        break;
      }
    }
  }
  if (in.bad()) throw Error(path + ": read error");
  if (task.size() == 0) throw Error(path + ": no items (expected one JSON object per line)");
  return task;
}

}  // namespace m3
