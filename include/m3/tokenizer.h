// m3/tokenizer.h — SentencePiece BPE (byte fallback) through libsentencepiece.
//
// The tokenizer travels inside the model file: the serialized SentencePiece ModelProto is stored
// in GGUF (key tokenizer.sentencepiece.model), so a model file tokenizes exactly on its own.
// Ids: <unk> = 0, <s> (BOS) = 1, </s> (EOS) = 2, then 256 byte-fallback pieces <0x00>..<0xFF>,
// then the learned merges.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace m3 {

struct TokenizerTrainOptions {
  int vocab_size = 4096;
  int64_t max_sentence_length = 16384;   // bytes; longer lines are split, not dropped
  int64_t input_sentence_size = 2000000; // lines sampled for training (0 = all)
  int threads = 0;                       // 0 = all hardware threads
  uint32_t seed = 42;
};

// Piece kinds as llama.cpp's tokenizer.ggml.token_type stores them.
enum class PieceType : int32_t { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };

class Tokenizer {
 public:
  // Trains a BPE model with byte fallback on plain-text files (one sentence or paragraph per
  // line). Returns the serialized ModelProto. Throws m3::Error naming the file when a file is
  // missing or empty or when vocab_size is impossible for the text.
  static std::string train(const std::vector<std::string>& text_files, const TokenizerTrainOptions& options);

  // Loads a serialized ModelProto (as stored in GGUF or written by `m3 tokenizer train`).
  // `origin` names where it came from, for error messages.
  static std::unique_ptr<Tokenizer> from_serialized(const std::string& model_proto, const std::string& origin);
  static std::unique_ptr<Tokenizer> from_file(const std::string& path);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Text → ids. Throws m3::Error if text is not valid UTF-8 (names the byte offset).
  // decode(encode(t)) == t for every valid t, except that a literal U+2581 "▁" (SentencePiece's
  // own space marker) comes back as a space.
  std::vector<int32_t> encode(std::string_view text, bool add_bos = false, bool add_eos = false) const;
  // ids → text (BOS/EOS/control ids produce nothing). Ids out of range throw m3::Error.
  std::string decode(const std::vector<int32_t>& ids) const;

  // The reference prefix of Memory³: BOS followed by the tokens of the text after "<s>"
  // (decisions.md: "<s>Reference:" = BOS + encode("Reference:")).
  std::vector<int32_t> prefix_tokens(const std::string& prefix_text) const;

  int32_t vocab_size() const;
  int32_t bos_id() const;
  int32_t eos_id() const;
  int32_t unk_id() const;
  std::string piece(int32_t id) const;  // the raw piece, e.g. "▁the" or "<0x0A>"
  float score(int32_t id) const;
  PieceType type(int32_t id) const;
  const std::string& serialized() const { return serialized_; }

 private:
  friend class TokenStreamer;
  Tokenizer();
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string serialized_;
};

// Turns ids into text as they are generated, one id at a time, so that the concatenation of
// everything push() and flush() return equals tokenizer.decode(all ids) exactly. It only emits
// complete UTF-8: the byte-fallback pieces of one multi-byte character arrive as separate ids and
// are held back until the character is complete; bytes that can never form a character come out
// as U+FFFD, one per byte, as decode() does. The "▁" that opens the first word (SentencePiece's
// dummy prefix, also after a BOS) is dropped, as decode() does.
// To continue after text that is already on screen (a prompt), push() the prompt's ids first and
// discard what they return; otherwise the first generated word loses its leading space.
// Not thread-safe; one streamer per generated sequence. The tokenizer must outlive it.
class TokenStreamer {
 public:
  explicit TokenStreamer(const Tokenizer& tokenizer);
  // The new complete text that `id` makes available (often empty for byte pieces). Ids out of
  // range throw m3::Error and leave the streamer unchanged.
  std::string push(int32_t id);
  // Ends the sequence: returns what is still held back (an incomplete character, as U+FFFD per
  // byte) and starts a new sequence (whose first "▁" is dropped again).
  std::string flush();
  // Drops anything held back and starts a new sequence.
  void reset();

 private:
  std::string finish_bytes();  // decodes the held-back bytes as the end of a byte run

  const Tokenizer* tokenizer_;
  std::string pending_;         // bytes of a byte-piece run not yet emitted
  bool at_start_ = true;        // a leading "▁" may still be dropped
  bool dropped_space_ = false;  // the previous piece had its leading "▁" dropped
  bool emitted_ = false;        // some non-empty text has been emitted in this sequence
};

// Checks UTF-8 validity; returns the offset of the first bad byte or -1 if valid.
int64_t find_invalid_utf8(std::string_view text);

}  // namespace m3
