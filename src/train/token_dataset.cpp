// Token shards, dataset building and window sampling (m3/token_dataset.h).
#include "m3/token_dataset.h"

#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "m3/error.h"
#include "m3/file_io.h"
#include "m3/progress.h"

namespace fs = std::filesystem;

namespace m3 {

namespace {

struct ShardHeader {
  char magic[8];
  uint32_t version;
  uint32_t token_bytes;
  uint32_t vocab_size;
  uint32_t reserved0;
  uint64_t n_tokens;
  uint64_t n_documents;
  uint64_t tokenizer_hash;
  uint64_t payload_hash;
  uint64_t reserved1;
};
static_assert(sizeof(ShardHeader) == kShardHeaderBytes);

uint32_t token_bytes_for(uint32_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

ShardHeader parse_header(const std::string& bytes, const std::string& path) {
  if (bytes.size() < kShardHeaderBytes)
    throw Error(path + ": truncated token shard (" + std::to_string(bytes.size()) + " bytes, the header alone is 64)");
  ShardHeader h;
  std::memcpy(&h, bytes.data(), sizeof(h));
  if (std::memcmp(h.magic, kShardMagic, 8) != 0) throw Error(path + ": not a token shard (wrong magic, expected M3TOKENS)");
  if (h.version != kShardVersion)
    throw Error(path + ": unsupported token shard version " + std::to_string(h.version) + " (this m3 reads 1)");
  if (h.token_bytes != 2 && h.token_bytes != 4)
    throw Error(path + ": token shard header says " + std::to_string(h.token_bytes) + " bytes per token (2 or 4)");
  if (h.vocab_size == 0) throw Error(path + ": token shard header has vocab_size 0");
  return h;
}

constexpr size_t kTextDocumentBytes = 4096;

// One document as a string plus where it came from, for error messages.
struct SourceDoc {
  std::string text;
  std::string where;  // "file:line"
};

std::vector<SourceDoc> read_documents(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw Error(path + ": corpus input not found (expected a .jsonl, .txt or .md file)");
  std::vector<SourceDoc> docs;
  if (fs::path(path).extension() == ".jsonl") {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(path + ": cannot open");
    std::string line;
    int64_t line_no = 0;
    while (std::getline(in, line)) {
      ++line_no;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string where = path + ":" + std::to_string(line_no);
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        throw Error(where + ": malformed JSON line (" + std::string(e.what()) + ")");
      }
      if (!j.is_object() || !j.contains("text") || !j["text"].is_string())
        throw Error(where + ": expected an object with a string field \"text\"");
      std::string text = j["text"].get<std::string>();
      if (!text.empty()) docs.push_back({std::move(text), where});
    }
  } else {
    // Plain text: lines (paragraphs) grouped into documents of at least kTextDocumentBytes, so that one
    // long book still yields many documents for the validation split.
    const std::string text = read_file(path);
    size_t begin = 0;
    while (begin < text.size()) {
      size_t end = begin + kTextDocumentBytes;
      if (end >= text.size()) {
        end = text.size();
      } else {
        const size_t line_end = text.find('\n', end);  // whole lines (paragraphs) only
        end = line_end == std::string::npos ? text.size() : line_end + 1;
      }
      std::string doc = text.substr(begin, end - begin);
      if (doc.find_first_not_of(" \t\r\n") != std::string::npos)
        docs.push_back({std::move(doc), path + " (byte " + std::to_string(begin) + ")"});
      begin = end;
    }
  }
  return docs;
}

std::string shard_name(const char* split, int index) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%s-%05d.bin", split, index);
  return buf;
}

}  // namespace

uint64_t tokenizer_hash(const Tokenizer& tokenizer) {
  const std::string& s = tokenizer.serialized();
  return XXH3_64bits(s.data(), s.size());
}

void write_shard(const std::string& path, const std::vector<int32_t>& tokens, int64_t n_documents,
                 uint32_t vocab_size, uint64_t tok_hash) {
  ShardHeader h{};
  std::memcpy(h.magic, kShardMagic, 8);
  h.version = kShardVersion;
  h.token_bytes = token_bytes_for(vocab_size);
  h.vocab_size = vocab_size;
  h.n_tokens = tokens.size();
  h.n_documents = static_cast<uint64_t>(n_documents);
  h.tokenizer_hash = tok_hash;
  std::string payload(tokens.size() * h.token_bytes, '\0');
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || static_cast<uint32_t>(tokens[i]) >= vocab_size)
      throw Error(path + ": token " + std::to_string(tokens[i]) + " at " + std::to_string(i) + " is outside the vocabulary of " +
                  std::to_string(vocab_size));
    if (h.token_bytes == 2) {
      const uint16_t t = static_cast<uint16_t>(tokens[i]);
      std::memcpy(&payload[i * 2], &t, 2);
    } else {
      std::memcpy(&payload[i * 4], &tokens[i], 4);
    }
  }
  h.payload_hash = XXH3_64bits(payload.data(), payload.size());
  std::string bytes(reinterpret_cast<const char*>(&h), sizeof(h));
  bytes += payload;
  write_file_atomic(path, bytes);
}

ShardInfo read_shard_header(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open token shard");
  std::string head(kShardHeaderBytes, '\0');
  in.read(head.data(), static_cast<std::streamsize>(head.size()));
  head.resize(static_cast<size_t>(in.gcount()));
  const ShardHeader h = parse_header(head, path);
  return {path, h.vocab_size, h.tokenizer_hash, static_cast<int64_t>(h.n_tokens), static_cast<int64_t>(h.n_documents)};
}

std::vector<int32_t> read_shard(const std::string& path, ShardInfo* info) {
  const std::string bytes = read_file(path);
  const ShardHeader h = parse_header(bytes, path);
  const uint64_t payload = bytes.size() - kShardHeaderBytes;
  if (h.n_tokens > payload / h.token_bytes || payload != h.n_tokens * h.token_bytes)
    throw Error(path + ": token shard is truncated or padded: header says " + std::to_string(h.n_tokens) + " tokens (" +
                std::to_string(h.n_tokens * h.token_bytes) + " bytes), the file holds " + std::to_string(payload) + " bytes after the header");
  const char* p = bytes.data() + kShardHeaderBytes;
  if (XXH3_64bits(p, payload) != h.payload_hash) throw Error(path + ": token shard is corrupted (payload checksum mismatch)");
  std::vector<int32_t> tokens(h.n_tokens);
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (h.token_bytes == 2) {
      uint16_t t;
      std::memcpy(&t, p + i * 2, 2);
      tokens[i] = t;
    } else {
      std::memcpy(&tokens[i], p + i * 4, 4);
    }
    if (tokens[i] < 0 || static_cast<uint32_t>(tokens[i]) >= h.vocab_size)
      throw Error(path + ": token " + std::to_string(tokens[i]) + " at position " + std::to_string(i) +
                  " is outside the shard's vocabulary of " + std::to_string(h.vocab_size));
  }
  if (info) *info = {path, h.vocab_size, h.tokenizer_hash, static_cast<int64_t>(h.n_tokens), static_cast<int64_t>(h.n_documents)};
  return tokens;
}

DatasetSummary build_dataset(const std::vector<std::string>& inputs, const Tokenizer& tokenizer,
                             const std::string& out_dir, const BuildDatasetOptions& options) {
  if (inputs.empty()) throw Error("no corpus inputs given");
  if (!(options.val_fraction >= 0.0 && options.val_fraction < 1.0))
    throw Error("val fraction " + std::to_string(options.val_fraction) + " is outside [0, 1)");
  if (fs::exists(fs::path(out_dir) / "dataset.json"))
    throw Error(out_dir + ": already holds a dataset (dataset.json); choose another output directory");

  std::vector<SourceDoc> docs;
  std::vector<std::pair<std::string, int64_t>> sources;
  for (const auto& in : inputs) {
    auto d = read_documents(in);
    sources.emplace_back(in, static_cast<int64_t>(d.size()));
    for (auto& x : d) docs.push_back(std::move(x));
  }
  if (docs.empty()) throw Error("the corpus is empty: no text in " + std::to_string(inputs.size()) + " input file(s)");

  DatasetSummary summary;
  for (const auto& d : docs) summary.bytes_of_text += static_cast<int64_t>(d.text.size());

  // Tokenize in parallel, a block of documents at a time so the progress bar moves.
  std::vector<std::vector<int32_t>> ids(docs.size());
  ThreadPool pool(options.threads > 0 ? options.threads : 0);
  std::vector<std::string> errors(static_cast<size_t>(pool.size()));
  ProgressBar bar("tokenize", summary.bytes_of_text >> 10, "KiB");
  int64_t done_bytes = 0;
  const int64_t block = 2048;
  for (int64_t b0 = 0; b0 < static_cast<int64_t>(docs.size()); b0 += block) {
    const int64_t b1 = std::min<int64_t>(b0 + block, static_cast<int64_t>(docs.size()));
    pool.parallel_for(b1 - b0, [&](int64_t begin, int64_t end, int thread) {
      for (int64_t i = b0 + begin; i < b0 + end && errors[thread].empty(); ++i) {
        try {
          ids[i] = tokenizer.encode(docs[i].text, true, true);
        } catch (const Error& e) {
          errors[thread] = docs[i].where + ": " + e.what();
        }
      }
    });
    for (const auto& e : errors)
      if (!e.empty()) throw Error(e);
    for (int64_t i = b0; i < b1; ++i) done_bytes += static_cast<int64_t>(docs[i].text.size());
    if (options.progress) bar.update(done_bytes >> 10);
  }
  if (options.progress) bar.finish();

  fs::create_directories(out_dir);
  const uint32_t vocab = static_cast<uint32_t>(tokenizer.vocab_size());
  const uint64_t tok_hash = tokenizer_hash(tokenizer);
  const uint64_t threshold =
      options.val_fraction <= 0 ? 0 : static_cast<uint64_t>(std::ldexp(options.val_fraction, 64));

  struct Split {
    const char* name;
    std::vector<int32_t> buf;
    int64_t docs_in_buf = 0;
    nlohmann::json shards = nlohmann::json::array();
    int64_t tokens = 0, documents = 0;
  } splits[2] = {{"train", {}}, {"val", {}}};
  auto flush = [&](Split& s) {
    if (s.buf.empty()) return;
    const std::string name = shard_name(s.name, static_cast<int>(s.shards.size()));
    write_shard((fs::path(out_dir) / name).string(), s.buf, s.docs_in_buf, vocab, tok_hash);
    s.shards.push_back({{"file", name}, {"tokens", s.buf.size()}, {"documents", s.docs_in_buf}});
    s.buf.clear();
    s.docs_in_buf = 0;
  };
  for (size_t i = 0; i < ids.size(); ++i) {
    const uint64_t key = i;
    const bool val = XXH3_64bits_withSeed(&key, sizeof(key), options.seed) < threshold;
    Split& s = splits[val ? 1 : 0];
    s.buf.insert(s.buf.end(), ids[i].begin(), ids[i].end());
    s.docs_in_buf += 1;
    s.documents += 1;
    s.tokens += static_cast<int64_t>(ids[i].size());
    if (static_cast<int64_t>(s.buf.size()) >= options.shard_tokens) flush(s);
    std::vector<int32_t>().swap(ids[i]);
  }
  flush(splits[0]);
  flush(splits[1]);
  if (splits[0].tokens == 0) throw Error("every document went to the validation split: lower the val fraction");

  write_file_atomic((fs::path(out_dir) / "tokenizer.model").string(), tokenizer.serialized());
  nlohmann::json src = nlohmann::json::array();
  for (const auto& [path, n] : sources) src.push_back({{"path", path}, {"documents", n}});
  nlohmann::json manifest = {
      {"format", 1},
      {"vocab_size", vocab},
      {"tokenizer_hash", tok_hash},
      {"val_fraction", options.val_fraction},
      {"seed", options.seed},
      {"bytes_of_text", summary.bytes_of_text},
      {"sources", src},
      {"train", {{"tokens", splits[0].tokens}, {"documents", splits[0].documents}, {"shards", splits[0].shards}}},
      {"val", {{"tokens", splits[1].tokens}, {"documents", splits[1].documents}, {"shards", splits[1].shards}}},
  };
  write_file_atomic((fs::path(out_dir) / "dataset.json").string(), manifest.dump(2) + "\n");
  summary.train_tokens = splits[0].tokens;
  summary.val_tokens = splits[1].tokens;
  summary.train_documents = splits[0].documents;
  summary.val_documents = splits[1].documents;
  return summary;
}

TokenDataset::TokenDataset(const std::string& dir) : dir_(dir) {
  const std::string manifest_path = (fs::path(dir) / "dataset.json").string();
  if (!fs::exists(manifest_path))
    throw Error(dir + ": not a token dataset (no dataset.json; build one with `m3 data tokenize`)");
  nlohmann::json m;
  try {
    m = nlohmann::json::parse(read_file(manifest_path));
    if (m.at("format").get<int>() != 1) throw Error(manifest_path + ": unsupported dataset format " + m.at("format").dump());
    vocab_size_ = m.at("vocab_size").get<uint32_t>();
    tokenizer_hash_ = m.at("tokenizer_hash").get<uint64_t>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(manifest_path + ": malformed dataset manifest (" + std::string(e.what()) + ")");
  }
  tokenizer_proto_ = read_file((fs::path(dir) / "tokenizer.model").string());
  if (XXH3_64bits(tokenizer_proto_.data(), tokenizer_proto_.size()) != tokenizer_hash_)
    throw Error(dir + "/tokenizer.model: is not the tokenizer the dataset was built with (hash differs from dataset.json)");
  auto load_split = [&](const char* split, std::vector<int32_t>& out) {
    int64_t expected = 0;
    try {
      expected = m.at(split).at("tokens").get<int64_t>();
      for (const auto& s : m.at(split).at("shards")) {
        const std::string path = (fs::path(dir) / s.at("file").get<std::string>()).string();
        ShardInfo info;
        std::vector<int32_t> t = read_shard(path, &info);
        if (info.vocab_size != vocab_size_ || info.tokenizer_hash != tokenizer_hash_)
          throw Error(path + ": shard was tokenized for another vocabulary (vocab " + std::to_string(info.vocab_size) +
                      ", tokenizer " + std::to_string(info.tokenizer_hash) + "; the dataset has vocab " +
                      std::to_string(vocab_size_) + ", tokenizer " + std::to_string(tokenizer_hash_) + ")");
        out.insert(out.end(), t.begin(), t.end());
      }
    } catch (const nlohmann::json::exception& e) {
      throw Error(manifest_path + ": malformed dataset manifest (" + std::string(e.what()) + ")");
    }
    if (static_cast<int64_t>(out.size()) != expected)
      throw Error(manifest_path + ": the " + split + " shards hold " + std::to_string(out.size()) + " tokens, the manifest says " +
                  std::to_string(expected));
  };
  load_split("train", train_);
  load_split("val", val_);
  if (train_.empty()) throw Error(dir + ": the training split is empty");
}

WindowSampler::WindowSampler(const std::vector<int32_t>& tokens, int T, uint64_t seed)
    : tokens_(tokens), T_(T), seed_(seed) {
  if (T <= 0) throw Error("sequence length must be positive");
  n_ = tokens.size() > 0 ? (static_cast<int64_t>(tokens.size()) - 1) / T : 0;
  if (n_ <= 0)
    throw Error("the token stream has " + std::to_string(tokens.size()) + " tokens, fewer than one window of seq_len + 1 = " +
                std::to_string(T + 1));
}

void WindowSampler::ensure_epoch(int64_t epoch) {
  if (epoch == epoch_) return;
  order_.resize(static_cast<size_t>(n_));
  for (int64_t i = 0; i < n_; ++i) order_[i] = i;
  // Fisher–Yates with a counter-based generator (XXH3 of (epoch, i) under the seed): the same
  // order on every platform and standard library.
  for (int64_t i = n_ - 1; i > 0; --i) {
    const uint64_t key[2] = {static_cast<uint64_t>(epoch), static_cast<uint64_t>(i)};
    const uint64_t r = XXH3_64bits_withSeed(key, sizeof(key), seed_);
    const int64_t j = static_cast<int64_t>(r % static_cast<uint64_t>(i + 1));
    std::swap(order_[i], order_[j]);
  }
  epoch_ = epoch;
}

void WindowSampler::fill(int64_t cursor, int count, int32_t* inputs, int32_t* targets) {
  for (int b = 0; b < count; ++b) {
    const int64_t k = cursor + b;
    ensure_epoch(k / n_);
    const int64_t start = order_[k % n_] * T_;
    std::memcpy(inputs + static_cast<int64_t>(b) * T_, tokens_.data() + start, sizeof(int32_t) * T_);
    std::memcpy(targets + static_cast<int64_t>(b) * T_, tokens_.data() + start + 1, sizeof(int32_t) * T_);
  }
}

}  // namespace m3
