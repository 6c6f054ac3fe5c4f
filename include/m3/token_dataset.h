// m3/token_dataset.h — a pretraining corpus tokenized once into binary shards, and the batches a
// trainer draws from it (decisions.md "Training").
//
// A dataset is a directory:
//   dataset.json       format 1, vocab_size, tokenizer_hash, the shard files of each split with their
//                      token and document counts, the sources it was built from. Written last.
//   tokenizer.model    the SentencePiece model the tokens come from (embedded in trained models)
//   train-00000.bin …  shards of the training split
//   val-00000.bin …    shards of the held-out validation split
//
// Shard file (little-endian): a 64-byte header
//   char magic[8] "M3TOKENS" | u32 version (1) | u32 token_bytes (2 or 4) | u32 vocab_size |
//   u32 reserved (0) | u64 n_tokens | u64 n_documents | u64 tokenizer_hash | u64 payload_hash |
//   u64 reserved (0)
// then n_tokens token ids of token_bytes each. tokenizer_hash is XXH3-64 of the serialized
// tokenizer, payload_hash XXH3-64 of the token bytes. Every document is stored as
// BOS, its tokens, EOS, so documents never run into each other unmarked.
//
// The split is by document: document i (counted over all inputs, in order) is held out when
// XXH3-64(i, seed) falls below val_fraction of the 64-bit range; deterministic for a seed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "m3/thread_pool.h"
#include "m3/tokenizer.h"

namespace m3 {

constexpr char kShardMagic[8] = {'M', '3', 'T', 'O', 'K', 'E', 'N', 'S'};
constexpr uint32_t kShardVersion = 1;
constexpr size_t kShardHeaderBytes = 64;

// XXH3-64 of a serialized tokenizer: what shards and datasets record to refuse another vocabulary.
uint64_t tokenizer_hash(const Tokenizer& tokenizer);

struct ShardInfo {
  std::string path;
  uint32_t vocab_size = 0;
  uint64_t tokenizer_hash = 0;
  int64_t n_tokens = 0;
  int64_t n_documents = 0;
};

// Writes one shard atomically (tmp + fsync + rename).
void write_shard(const std::string& path, const std::vector<int32_t>& tokens, int64_t n_documents,
                 uint32_t vocab_size, uint64_t tokenizer_hash);
// Reads a shard, checking magic, version, size, payload checksum and that every token is below
// vocab_size. Throws m3::Error naming the file and what is wrong.
std::vector<int32_t> read_shard(const std::string& path, ShardInfo* info = nullptr);
ShardInfo read_shard_header(const std::string& path);

struct BuildDatasetOptions {
  double val_fraction = 0.01;
  uint64_t seed = 1;
  int64_t shard_tokens = 64 << 20;  // tokens per shard file at most
  int threads = 0;                  // 0 = all cores
  bool progress = true;             // a progress bar on stderr
};

struct DatasetSummary {
  int64_t train_tokens = 0, val_tokens = 0;
  int64_t train_documents = 0, val_documents = 0;
  int64_t bytes_of_text = 0;
};

// Tokenizes the documents of `inputs` (.jsonl: one {"text": ...} object per line, other fields
// ignored; anything else, e.g. .txt/.md: whole lines grouped into documents of >= 4 KiB) into a dataset at
// out_dir (created; must not hold a dataset yet). Throws m3::Error naming the file and line of a
// malformed JSON line, invalid UTF-8, or an input that is missing; and when there is no text at all.
DatasetSummary build_dataset(const std::vector<std::string>& inputs, const Tokenizer& tokenizer,
                             const std::string& out_dir, const BuildDatasetOptions& options = {});

// A dataset opened for training: both splits loaded into memory (int32), checked against each
// other and against the manifest.
class TokenDataset {
 public:
  // Throws m3::Error when dataset.json is missing or malformed, a shard is missing, corrupt, or
  // of another tokenizer or vocabulary than the manifest, or the training split is empty.
  explicit TokenDataset(const std::string& dir);

  const std::string& dir() const { return dir_; }
  uint32_t vocab_size() const { return vocab_size_; }
  uint64_t tokenizer_hash() const { return tokenizer_hash_; }
  const std::string& tokenizer_proto() const { return tokenizer_proto_; }
  const std::vector<int32_t>& train() const { return train_; }
  const std::vector<int32_t>& val() const { return val_; }

 private:
  std::string dir_;
  uint32_t vocab_size_ = 0;
  uint64_t tokenizer_hash_ = 0;
  std::string tokenizer_proto_;
  std::vector<int32_t> train_, val_;
};

// Draws training windows from a token stream without repeats within an epoch: the stream is cut
// into n = (size − 1) / T windows of T + 1 tokens (stride T); each epoch visits them in the order
// of a Fisher–Yates permutation seeded by (seed, epoch). Window k of the whole run (k = 0, 1, ...)
// is therefore a pure function of (seed, k): the data cursor of a checkpoint is just k.
class WindowSampler {
 public:
  // Throws m3::Error when the stream has fewer than T + 1 tokens.
  WindowSampler(const std::vector<int32_t>& tokens, int T, uint64_t seed);
  int64_t windows_per_epoch() const { return n_; }
  // Fills inputs and targets ([count, T] each) with windows cursor, cursor+1, ...
  void fill(int64_t cursor, int count, int32_t* inputs, int32_t* targets);

 private:
  void ensure_epoch(int64_t epoch);
  const std::vector<int32_t>& tokens_;
  int T_;
  uint64_t seed_;
  int64_t n_;
  int64_t epoch_ = -1;
  std::vector<int64_t> order_;
};

}  // namespace m3
