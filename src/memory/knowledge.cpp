// Knowledge bases: loading documents (txt/md/jsonl) and splitting them into references.
//
// The splitter is a greedy packer over a boundary hierarchy (paragraph > sentence > word >
// character). It re-tokenizes every candidate span instead of summing unit token counts,
// because SentencePiece can tokenize a concatenation differently from its parts.
#include "m3/knowledge.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "m3/error.h"
#include "m3/tokenizer.h"

namespace m3 {
namespace {

namespace fs = std::filesystem;

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw Error(p.string() + ": cannot open for reading");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(p.string() + ": read failed");
  return ss.str();
}

// 1-based line number of byte offset `off` (for error messages).
int64_t line_of(const std::string& s, int64_t off) {
  return 1 + std::count(s.begin(), s.begin() + std::min<int64_t>(off, int64_t(s.size())), '\n');
}

void check_utf8(const std::string& bytes, const std::string& file) {
  const int64_t bad = find_invalid_utf8(bytes);
  if (bad >= 0)
    throw Error(file + ": invalid UTF-8 at byte offset " + std::to_string(bad) + " (line " +
                std::to_string(line_of(bytes, bad)) + ")");
}

void strip_bom(std::string& s) {
  if (s.size() >= 3 && s.compare(0, 3, "\xEF\xBB\xBF") == 0) s.erase(0, 3);
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// The text of the first ATX Markdown heading ("# Title", up to six '#'), or "" when none.
std::string first_heading(const std::string& text) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    size_t i = 0;
    while (i < line.size() && i < 3 && line[i] == ' ') ++i;
    size_t hashes = 0;
    while (i + hashes < line.size() && line[i + hashes] == '#') ++hashes;
    if (hashes == 0 || hashes > 6) continue;
    size_t b = i + hashes;
    if (b < line.size() && line[b] != ' ' && line[b] != '\t') continue;  // "#hashtag" is not a heading
    size_t e = line.size();
    while (e > b && (is_space(line[e - 1]) || line[e - 1] == '#')) --e;
    while (b < e && is_space(line[b])) ++b;
    if (b < e) return line.substr(b, e - b);
  }
  return "";
}

struct Loader {
  std::vector<Document> docs;
  std::map<std::string, std::string> where;  // id -> location of its first definition

  void add(Document d, const std::string& location) {
    auto [it, inserted] = where.emplace(d.id, location);
    if (!inserted)
      throw Error(location + ": duplicate document id '" + d.id + "' (first defined at " + it->second + ")");
    docs.push_back(std::move(d));
  }

  void text_file(const fs::path& file, const std::string& id) {
    std::string text = read_file(file);
    strip_bom(text);
    check_utf8(text, file.string());
    Document d;
    d.id = id;
    d.title = first_heading(text);
    if (d.title.empty()) d.title = file.stem().string();
    d.source = file.string();
    d.text = std::move(text);
    add(std::move(d), file.string());
  }

  void jsonl_file(const fs::path& file) {
    std::string bytes = read_file(file);
    strip_bom(bytes);
    const std::string name = file.string();
    check_utf8(bytes, name);
    int64_t line_no = 0;
    size_t pos = 0;
    while (pos < bytes.size()) {
      size_t nl = bytes.find('\n', pos);
      if (nl == std::string::npos) nl = bytes.size();
      const std::string_view line(bytes.data() + pos, nl - pos);
      pos = nl + 1;
      ++line_no;
      if (std::all_of(line.begin(), line.end(), is_space)) continue;
      const std::string at = name + ":" + std::to_string(line_no);
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        throw Error(at + ": malformed JSON (" + e.what() + ")");
      }
      if (!j.is_object()) throw Error(at + ": expected a JSON object, got " + std::string(j.type_name()));
      auto field = [&](const char* key, bool required) -> std::string {
        auto it = j.find(key);
        if (it == j.end() || it->is_null()) {
          if (required) throw Error(at + ": missing required field '" + key + "'");
          return "";
        }
        if (it->is_string()) return it->get<std::string>();
        if (it->is_number_integer() && std::string(key) == "id") return std::to_string(it->get<int64_t>());
        throw Error(at + ": field '" + key + "' must be a string, got " + std::string(it->type_name()));
      };
      Document d;
      d.id = field("id", true);
      d.text = field("text", true);
      d.title = field("title", false);
      d.source = field("source", false);
      if (d.source.empty()) d.source = at;
      if (d.id.empty()) throw Error(at + ": field 'id' is empty");
      add(std::move(d), at);
    }
  }

  void file(const fs::path& p, const std::string& id) {
    const std::string ext = p.extension().string();
    if (ext == ".jsonl") jsonl_file(p);
    else if (ext == ".txt" || ext == ".md") text_file(p, id);
  }
};

bool known_extension(const fs::path& p) {
  const std::string ext = p.extension().string();
  return ext == ".txt" || ext == ".md" || ext == ".jsonl";
}

// ---- splitting --------------------------------------------------------------------------------

enum Level { kChar = 0, kWord = 1, kSentence = 2, kParagraph = 3 };

struct Span {
  int64_t b, e;
};

int utf8_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xE) return 3;
  return 4;  // the text was validated, so this is an 0xF0..0xF4 lead byte
}

// The units of s at `level`: the spans between boundary whitespace runs, trimmed, non-empty.
std::vector<Span> units_of(const std::string& t, Span s, Level level) {
  std::vector<Span> out;
  if (level == kChar) {
    for (int64_t i = s.b; i < s.e;) {
      const int64_t n = std::min<int64_t>(utf8_length(static_cast<unsigned char>(t[i])), s.e - i);
      out.push_back({i, i + n});
      i += n;
    }
    return out;
  }
  int64_t unit_begin = -1, unit_end = -1;  // unit_end: just after its last non-space byte
  for (int64_t i = s.b; i < s.e;) {
    if (!is_space(t[i])) {
      if (unit_begin < 0) unit_begin = i;
      unit_end = ++i;
      continue;
    }
    const int64_t run_begin = i;
    int newlines = 0;
    for (; i < s.e && is_space(t[i]); ++i) newlines += t[i] == '\n';
    if (unit_begin < 0) continue;
    bool boundary = level == kWord;
    if (level == kSentence) {
      const char c = t[run_begin - 1];
      boundary = c == '.' || c == '!' || c == '?';
    }
    if (level == kParagraph) boundary = newlines >= 2;
    if (boundary) {
      out.push_back({unit_begin, unit_end});
      unit_begin = -1;
    }
  }
  if (unit_begin >= 0) out.push_back({unit_begin, unit_end});
  return out;
}

class Splitter {
 public:
  Splitter(const Document& doc, const Tokenizer& tok, int max_tokens, std::vector<ReferenceText>& out)
      : doc_(doc), tok_(tok), max_(size_t(max_tokens)), out_(out) {}

  // Packs the units of s at `level` greedily; a unit too long on its own is split one level down.
  // The longest run of units that fits is found by galloping and then bisecting over the run's
  // end, so a reference costs O(log units) encodes rather than one per unit (which matters at
  // the character level: CJK text or data without spaces). Every decision uses the exact token
  // count of the candidate text, and the run is closed only after the next unit was seen not to
  // fit.
  void split(Span s, Level level) {
    const std::vector<Span> us = units_of(doc_.text, s, level);
    const size_t n = us.size();
    for (size_t i = 0; i < n;) {
      std::vector<int32_t> tokens = encode(us[i]);
      if (tokens.size() > max_) {
        if (level == kChar)
          throw Error("document '" + doc_.id + "': the character at byte " + std::to_string(us[i].b) + " takes " +
                      std::to_string(tokens.size()) + " tokens, more than max_tokens (" + std::to_string(max_) + ")");
        split(us[i], Level(level - 1));
        ++i;
        continue;
      }
      size_t good = i, bad = n;  // units i..good fit; i..bad does not (n: not known)
      for (size_t step = 1; good + 1 < n;) {
        const size_t probe = std::min(good + step, n - 1);
        auto candidate = encode({us[i].b, us[probe].e});
        if (candidate.size() > max_) {
          bad = probe;
          break;
        }
        good = probe;
        tokens = std::move(candidate);
        step *= 2;
      }
      while (bad < n && bad - good > 1) {
        const size_t mid = good + (bad - good) / 2;
        auto candidate = encode({us[i].b, us[mid].e});
        if (candidate.size() > max_) {
          bad = mid;
        } else {
          good = mid;
          tokens = std::move(candidate);
        }
      }
      emit({us[i].b, us[good].e}, std::move(tokens));
      i = good + 1;
    }
  }

 private:
  std::vector<int32_t> encode(Span s) const {
    return tok_.encode(std::string_view(doc_.text).substr(size_t(s.b), size_t(s.e - s.b)));
  }

  void emit(Span s, std::vector<int32_t> tokens) {
    // Only a normalizing tokenizer can map non-space text to no tokens; such a piece carries
    // nothing a model would see, so it is dropped rather than stored as an empty reference.
    if (tokens.empty()) return;
    ReferenceText r;
    r.doc_id = doc_.id;
    r.text = doc_.text.substr(size_t(s.b), size_t(s.e - s.b));
    r.char_begin = s.b;
    r.char_end = s.e;
    r.tokens = std::move(tokens);
    out_.push_back(std::move(r));
  }

  const Document& doc_;
  const Tokenizer& tok_;
  size_t max_;
  std::vector<ReferenceText>& out_;
};

}  // namespace

std::vector<Document> load_knowledge_base(const std::string& path) {
  const fs::path root(path);
  std::error_code ec;
  const auto st = fs::status(root, ec);
  if (ec || !fs::exists(st)) throw Error(path + ": knowledge base not found");
  Loader loader;
  if (fs::is_regular_file(st)) {
    if (!known_extension(root))
      throw Error(path + ": unknown knowledge base file type (expected .txt, .md, .jsonl or a folder of them)");
    loader.file(root, root.filename().generic_string());
    return std::move(loader.docs);
  }
  if (!fs::is_directory(st)) throw Error(path + ": not a file or folder");

  std::vector<std::pair<std::string, fs::path>> files;  // (relative path, full path)
  for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    const fs::path& p = it->path();
    if (p.filename().string().starts_with(".")) {
      if (it->is_directory()) it.disable_recursion_pending();
      continue;
    }
    if (it->is_regular_file() && known_extension(p))
      files.emplace_back(fs::relative(p, root).generic_string(), p);
  }
  if (ec) throw Error(path + ": cannot list folder (" + ec.message() + ")");
  // Sorted so that document order, and with it reference ids, do not depend on the file system.
  std::sort(files.begin(), files.end());
  for (const auto& [rel, full] : files) loader.file(full, rel);
  return std::move(loader.docs);
}

std::vector<ReferenceText> split_into_references(const Document& doc, const Tokenizer& tokenizer, int max_tokens) {
  if (max_tokens < 8)
    throw Error("split_into_references: max_tokens is " + std::to_string(max_tokens) + ", must be at least 8");
  const int64_t bad = find_invalid_utf8(doc.text);
  if (bad >= 0)
    throw Error("document '" + doc.id + "': invalid UTF-8 at byte offset " + std::to_string(bad));
  std::vector<ReferenceText> out;
  Splitter(doc, tokenizer, max_tokens, out).split({0, int64_t(doc.text.size())}, kParagraph);
  return out;
}

}  // namespace m3
