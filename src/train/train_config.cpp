// TrainConfig <-> TOML (toml++), with strict keys: a typo is an error, not a silent default.
#include <toml++/toml.h>

#include <cstdlib>
#include <map>
#include <sstream>
#include <variant>

#include "m3/dtype.h"
#include "m3/error.h"
#include "m3/trainer.h"

namespace m3 {

namespace {

using FieldPtr = std::variant<int*, int64_t*, uint64_t*, float*, std::string*>;
using Schema = std::vector<std::pair<std::string, std::vector<std::pair<std::string, FieldPtr>>>>;

// Every key a config may hold, by section, in the order to_toml writes them.
Schema schema(TrainConfig& c) {
  return {
      {"model",
       {{"preset", &c.preset}, {"layers", &c.layers}, {"dim", &c.dim}, {"heads", &c.heads}, {"kv_heads", &c.kv_heads},
        {"head_dim", &c.head_dim}, {"ffn", &c.ffn}, {"context", &c.context}, {"memory_layers", &c.memory_layers},
        {"init", &c.init}}},
      {"data", {{"dir", &c.data}}},
      {"train",
       {{"stage", &c.stage}, {"batch", &c.batch}, {"seq_len", &c.seq_len}, {"grad_accum", &c.grad_accum}, {"steps", &c.steps},
        {"tokens", &c.tokens}, {"lr", &c.lr}, {"min_lr", &c.min_lr}, {"warmup", &c.warmup},
        {"decay_fraction", &c.decay_fraction}, {"weight_decay", &c.weight_decay}, {"grad_clip", &c.grad_clip},
        {"beta1", &c.beta1}, {"beta2", &c.beta2}, {"seed", &c.seed}, {"threads", &c.threads}}},
      {"memory", {{"kb", &c.kb}, {"retrieve_k", &c.retrieve_k}, {"references_per_chunk", &c.references_per_chunk}}},
      {"eval", {{"interval", &c.eval_interval}, {"tokens", &c.eval_tokens}}},
      {"checkpoint", {{"interval", &c.checkpoint_interval}, {"keep", &c.keep_checkpoints}}},
      {"output", {{"dir", &c.out}, {"export_type", &c.export_type}}},
  };
}

std::string where(const std::string& path, const toml::node& node) {
  const auto& src = node.source();
  return path + ":" + std::to_string(src.begin.line);
}

void assign(FieldPtr field, const toml::node& node, const std::string& at, const std::string& key) {
  auto integer = [&]() -> int64_t {
    if (!node.is_integer()) throw Error(at + ": " + key + " must be an integer");
    return node.as_integer()->get();
  };
  std::visit(
      [&](auto* p) {
        using T = std::remove_pointer_t<decltype(p)>;
        if constexpr (std::is_same_v<T, std::string>) {
          if (!node.is_string()) throw Error(at + ": " + key + " must be a string");
          *p = node.as_string()->get();
        } else if constexpr (std::is_same_v<T, float>) {
          if (node.is_floating_point())
            *p = static_cast<float>(node.as_floating_point()->get());
          else if (node.is_integer())
            *p = static_cast<float>(node.as_integer()->get());
          else
            throw Error(at + ": " + key + " must be a number");
        } else if constexpr (std::is_same_v<T, int>) {
          const int64_t v = integer();
          if (v < INT32_MIN || v > INT32_MAX) throw Error(at + ": " + key + " = " + std::to_string(v) + " is out of range");
          *p = static_cast<int>(v);
        } else if constexpr (std::is_same_v<T, uint64_t>) {
          const int64_t v = integer();
          if (v < 0) throw Error(at + ": " + key + " must not be negative");
          *p = static_cast<uint64_t>(v);
        } else {
          *p = integer();
        }
      },
      field);
}

// A TOML basic string: quotes, backslashes and control characters escaped.
std::string toml_string(const std::string& s) {
  std::string out = "\"";
  for (const unsigned char ch : s) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += static_cast<char>(ch);
    } else if (ch < 0x20 || ch == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04X", ch);
      out += buf;
    } else {
      out += static_cast<char>(ch);
    }
  }
  return out + "\"";
}

}  // namespace

TrainConfig load_train_config(const std::string& path) {
  toml::table root;
  try {
    root = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    const auto& src = e.source();
    if (src.begin.line == 0) throw Error(path + ": cannot read the config (" + std::string(e.description()) + ")");
    throw Error(path + ":" + std::to_string(src.begin.line) + ": TOML syntax error: " + std::string(e.description()));
  }
  TrainConfig c;
  const Schema s = schema(c);
  for (auto&& [section_key, section_node] : root) {
    const std::string section(section_key.str());
    auto sec = std::find_if(s.begin(), s.end(), [&](const auto& x) { return x.first == section; });
    if (sec == s.end()) {
      std::string known;
      for (const auto& x : s) known += (known.empty() ? "" : ", ") + x.first;
      throw Error(where(path, section_node) + ": unknown section or key '" + section + "' (sections: " + known + ")");
    }
    if (!section_node.is_table()) throw Error(where(path, section_node) + ": '" + section + "' must be a [section]");
    for (auto&& [key_node, value] : *section_node.as_table()) {
      const std::string key(key_node.str());
      auto f = std::find_if(sec->second.begin(), sec->second.end(), [&](const auto& x) { return x.first == key; });
      if (f == sec->second.end()) {
        std::string known;
        for (const auto& x : sec->second) known += (known.empty() ? "" : ", ") + x.first;
        throw Error(where(path, value) + ": unknown key '" + section + "." + key + "' (known in [" + section + "]: " + known + ")");
      }
      assign(f->second, value, where(path, value), section + "." + key);
    }
  }
  try {
    validate(c);
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
  return c;
}

std::string to_toml(const TrainConfig& config) {
  TrainConfig c = config;
  std::ostringstream out;
  out << "# m3 train config (resolved)\n";
  for (const auto& [section, fields] : schema(c)) {
    out << "\n[" << section << "]\n";
    for (const auto& [key, field] : fields) {
      out << key << " = ";
      std::visit(
          [&](auto* p) {
            using T = std::remove_pointer_t<decltype(p)>;
            if constexpr (std::is_same_v<T, std::string>) {
              out << toml_string(*p);
            } else if constexpr (std::is_same_v<T, float>) {
              // The shortest decimal that reads back as the same float.
              char buf[64];
              for (int digits = 6; digits <= 9; ++digits) {
                std::snprintf(buf, sizeof(buf), "%.*g", digits, static_cast<double>(*p));
                if (std::strtof(buf, nullptr) == *p) break;
              }
              std::string s = buf;
              if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
              out << s;
            } else {
              out << *p;
            }
          },
          field);
      out << "\n";
    }
  }
  return out.str();
}

void validate(const TrainConfig& c) {
  auto positive = [](int64_t v, const char* key) {
    if (v <= 0) throw Error(std::string(key) + " must be positive (got " + std::to_string(v) + ")");
  };
  auto not_negative = [](int64_t v, const char* key) {
    if (v < 0) throw Error(std::string(key) + " must not be negative (got " + std::to_string(v) + ")");
  };
  if (c.stage != 1 && c.stage != 2) throw Error("train.stage must be 1 or 2 (got " + std::to_string(c.stage) + ")");
  if (c.stage == 2 && c.kb.empty()) throw Error("train.stage = 2 needs memory.kb: the knowledge base the chunks read");
  if (c.stage == 2 && c.init.empty())
    throw Error("train.stage = 2 needs model.init: stage 2 continues a stage-1 model (training with memory from scratch does not help, spec 4.2)");
  positive(c.retrieve_k, "memory.retrieve_k");
  positive(c.references_per_chunk, "memory.references_per_chunk");
  positive(c.batch, "train.batch");
  positive(c.seq_len, "train.seq_len");
  positive(c.grad_accum, "train.grad_accum");
  not_negative(c.steps, "train.steps");
  not_negative(c.tokens, "train.tokens");
  if (c.steps == 0 && c.tokens == 0) throw Error("give train.steps or train.tokens: how long to train");
  if (!(c.lr > 0)) throw Error("train.lr must be positive");
  if (!(c.min_lr >= 0 && c.min_lr <= c.lr)) throw Error("train.min_lr must be in [0, train.lr]");
  not_negative(c.warmup, "train.warmup");
  if (!(c.decay_fraction >= 0 && c.decay_fraction <= 1)) throw Error("train.decay_fraction must be in [0, 1]");
  if (!(c.weight_decay >= 0)) throw Error("train.weight_decay must not be negative");
  if (!(c.beta1 >= 0 && c.beta1 < 1) || !(c.beta2 >= 0 && c.beta2 < 1)) throw Error("train.beta1 and train.beta2 must be in [0, 1)");
  not_negative(c.threads, "train.threads");
  not_negative(c.eval_interval, "eval.interval");
  not_negative(c.eval_tokens, "eval.tokens");
  not_negative(c.checkpoint_interval, "checkpoint.interval");
  positive(c.keep_checkpoints, "checkpoint.keep");
  for (int v : {c.layers, c.dim, c.heads, c.kv_heads, c.head_dim, c.ffn, c.context})
    if (v < 0) throw Error("model shape overrides must not be negative");
  if (c.data.empty()) throw Error("data.dir is required: a token dataset made by `m3 data tokenize`");
  if (c.out.empty()) throw Error("output.dir is required: the run directory");
  if (!dtype_from_name(c.export_type)) throw Error("output.export_type '" + c.export_type + "' is not one of f32, f16, bf16, q8_0, q4_0");
}

}  // namespace m3
