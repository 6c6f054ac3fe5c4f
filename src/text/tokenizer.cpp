// tokenizer.cpp — m3::Tokenizer over libsentencepiece (BPE with byte fallback).
//
// SentencePiece does the real work (training, encoding, decoding), so ids are exactly what any
// other SentencePiece user (Python, llama.cpp's SPM tokenizer) gets from the same model proto.
// What this file adds: m3's fixed training recipe, strict UTF-8 checking with offsets, errors as
// m3::Error naming the file, and a streaming decoder that reproduces decode() piece by piece.
//
// The streamer needs two facts the C++ API does not expose (whether the model drops the leading
// "▁" when decoding, and which pieces are user-defined), so the serialized ModelProto is read
// with a tiny protobuf wire-format reader below: libsentencepiece does not install its generated
// protobuf headers, and those few fields do not justify a protobuf dependency.
#include "m3/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>
#include <unordered_map>

#include "m3/error.h"

namespace m3 {

namespace {

// Everything here is fixed by decisions.md (ids 0/1/2 = unk/bos/eos, then the 256 byte pieces).
constexpr int kSpecialPieces = 3;
constexpr int kBytePieces = 256;
// Below this the model has no room for a single learned piece; the trainer wants more still (one
// per distinct character it must cover) and says so itself.
constexpr int kMinVocab = kSpecialPieces + kBytePieces + 1;
// Rare characters (the last 0.05% of the text) are left to byte fallback rather than spending a
// vocabulary slot each: nothing is lost (bytes round-trip) and small vocabularies stay usable on
// text with a few stray symbols.
constexpr const char* kCharacterCoverage = "0.9995";
constexpr const char* kSpaceSymbol = "\xE2\x96\x81";  // U+2581 "▁", SentencePiece's space
constexpr const char* kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// ---- UTF-8 ---------------------------------------------------------------------------------------

bool is_trail(unsigned char c) { return (c & 0xC0) == 0x80; }

// Length of the sequence a lead byte announces (1..4), or 0 for a byte that cannot start one.
// The same classification as SentencePiece's DecodeUTF8, so held-back bytes resolve the same way.
int sequence_length(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0) return 2;
  if ((c & 0xF0) == 0xE0) return 3;
  if ((c & 0xF8) == 0xF0) return 4;
  return 0;
}

// Length of the valid UTF-8 character at the start of s (strict: no overlongs, no surrogates,
// nothing above U+10FFFF, no truncation), or 0 when it is not one.
int valid_char_length(std::string_view s) {
  if (s.empty()) return 0;
  const auto b = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  const int n = sequence_length(b(0));
  if (n == 0 || static_cast<size_t>(n) > s.size()) return 0;
  if (n == 1) return 1;
  uint32_t cp = b(0) & (0x7F >> n);
  for (int i = 1; i < n; ++i) {
    if (!is_trail(b(i))) return 0;
    cp = (cp << 6) | (b(i) & 0x3F);
  }
  static constexpr uint32_t kMinForLength[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMinForLength[n]) return 0;              // overlong
  if (cp >= 0xD800 && cp <= 0xDFFF) return 0;       // UTF-16 surrogate
  if (cp > 0x10FFFF) return 0;                      // beyond Unicode
  return n;
}

// True when s (shorter than its lead byte announces) could still become a valid character as
// more bytes arrive. Conservative: it does not look at overlong/surrogate ranges, so at worst a
// doomed prefix is held back one byte longer; the final text is the same either way.
bool incomplete_char(std::string_view s) {
  if (s.empty()) return false;
  const int n = sequence_length(static_cast<unsigned char>(s[0]));
  if (n <= 1 || s.size() >= static_cast<size_t>(n)) return false;
  for (size_t i = 1; i < s.size(); ++i)
    if (!is_trail(static_cast<unsigned char>(s[i]))) return false;
  return true;
}

// Decodes a run of byte-piece bytes into text the way SentencePiece's decoder does: each valid
// character as is, each byte that does not start one as U+FFFD. When `hold_incomplete`, a tail
// that may still become a character is left in `bytes` instead of being replaced.
std::string drain_bytes(std::string& bytes, bool hold_incomplete) {
  std::string out;
  size_t at = 0;
  while (at < bytes.size()) {
    const std::string_view rest(bytes.data() + at, bytes.size() - at);
    if (const int n = valid_char_length(rest); n > 0) {
      out.append(rest.substr(0, static_cast<size_t>(n)));
      at += static_cast<size_t>(n);
    } else if (hold_incomplete && incomplete_char(rest)) {
      break;
    } else {
      out += kReplacement;
      at += 1;
    }
  }
  bytes.erase(0, at);
  return out;
}

// ---- protobuf wire format (just enough of sentencepiece_model.proto) ---------------------------
//
// ModelProto { repeated SentencePiece pieces = 1; NormalizerSpec normalizer_spec = 3;
//              NormalizerSpec denormalizer_spec = 5; }
// SentencePiece { string piece = 1; float score = 2; Type type = 3 [default NORMAL]; }
// NormalizerSpec { bool add_dummy_prefix = 3 [default true];
//                  bool remove_extra_whitespaces = 4 [default true]; }

class WireReader {
 public:
  explicit WireReader(std::string_view data) : data_(data) {}
  bool done() const { return pos_ >= data_.size(); }

  // Reads the next field header; false on malformed input.
  bool next(uint32_t& field, uint32_t& wire_type) {
    uint64_t key = 0;
    if (!varint(key)) return false;
    field = static_cast<uint32_t>(key >> 3);
    wire_type = static_cast<uint32_t>(key & 7);
    return field != 0;
  }
  bool varint(uint64_t& v) {
    v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= data_.size()) return false;
      const auto c = static_cast<unsigned char>(data_[pos_++]);
      v |= static_cast<uint64_t>(c & 0x7F) << shift;
      if (!(c & 0x80)) return true;
    }
    return false;
  }
  bool bytes(std::string_view& out) {
    uint64_t n = 0;
    if (!varint(n) || n > data_.size() - pos_) return false;
    out = data_.substr(pos_, static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return true;
  }
  bool skip(uint32_t wire_type) {
    uint64_t v = 0;
    std::string_view s;
    switch (wire_type) {
      case 0: return varint(v);
      case 1: return advance(8);
      case 2: return bytes(s);
      case 5: return advance(4);
      default: return false;  // groups (3, 4) are not used by this proto
    }
  }

 private:
  bool advance(size_t n) {
    if (n > data_.size() - pos_) return false;
    pos_ += n;
    return true;
  }
  std::string_view data_;
  size_t pos_ = 0;
};

struct ProtoFacts {
  std::vector<PieceType> types;
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
  bool has_denormalizer = false;
};

bool read_normalizer(std::string_view spec, ProtoFacts& facts) {
  WireReader r(spec);
  while (!r.done()) {
    uint32_t field = 0, wt = 0;
    if (!r.next(field, wt)) return false;
    uint64_t v = 0;
    if ((field == 3 || field == 4) && wt == 0) {
      if (!r.varint(v)) return false;
      (field == 3 ? facts.add_dummy_prefix : facts.remove_extra_whitespaces) = v != 0;
    } else if (!r.skip(wt)) {
      return false;
    }
  }
  return true;
}

bool read_proto_facts(std::string_view proto, ProtoFacts& facts) {
  WireReader r(proto);
  while (!r.done()) {
    uint32_t field = 0, wt = 0;
    if (!r.next(field, wt)) return false;
    std::string_view sub;
    if (field == 1 && wt == 2) {
      if (!r.bytes(sub)) return false;
      WireReader p(sub);
      PieceType type = PieceType::Normal;
      while (!p.done()) {
        uint32_t f = 0, w = 0;
        uint64_t v = 0;
        if (!p.next(f, w)) return false;
        if (f == 3 && w == 0) {
          if (!p.varint(v)) return false;
          type = static_cast<PieceType>(static_cast<int32_t>(v));
        } else if (!p.skip(w)) {
          return false;
        }
      }
      facts.types.push_back(type);
    } else if (field == 3 && wt == 2) {
      if (!r.bytes(sub) || !read_normalizer(sub, facts)) return false;
    } else if (field == 5 && wt == 2) {
      if (!r.bytes(sub)) return false;
      facts.has_denormalizer = !sub.empty();
    } else if (!r.skip(wt)) {
      return false;
    }
  }
  return true;
}

// ---- training input --------------------------------------------------------------------------

// "Internal: ./src/trainer_interface.cc(580) [cond] Message" → "Message".
std::string spm_message(const sentencepiece::util::Status& status) {
  const std::string m = status.ToString();
  const size_t close = m.find("] ");
  if (close == std::string::npos || m.find(" [") > close || close + 2 == m.size()) return m;
  return m.substr(close + 2);
}

std::string join_files(const std::vector<std::string>& files) {
  std::string s;
  for (size_t i = 0; i < files.size() && i < 3; ++i) s += (i ? ", " : "") + files[i];
  if (files.size() > 3) s += " and " + std::to_string(files.size() - 3) + " more";
  return s;
}

// Feeds the trainer line by line from the files, so that over-long lines are split rather than
// silently skipped (SentencePiece drops any sentence longer than max_sentence_length), CRLF files
// train like LF files, and bad UTF-8 stops training with the file, line and offset.
class LineIterator : public sentencepiece::SentenceIterator {
 public:
  LineIterator(const std::vector<std::string>& files, size_t max_len) : files_(files), max_len_(max_len) { Next(); }

  bool done() const override { return done_; }
  const std::string& value() const override { return value_; }
  sentencepiece::util::Status status() const override {
    if (error_.empty()) return sentencepiece::util::Status();  // OK
    return sentencepiece::util::Status(sentencepiece::util::StatusCode::kInvalidArgument, error_);
  }
  const std::string& error() const { return error_; }

  void Next() override {
    while (!done_) {
      if (!pieces_.empty()) {
        value_ = std::move(pieces_.back());
        pieces_.pop_back();
        return;
      }
      if (!in_.is_open() && !open_next()) return;
      std::string line;
      if (!std::getline(in_, line)) {
        if (in_.bad()) return fail(files_[file_] + ": read error");
        if (lines_with_text_ == 0) return fail(files_[file_] + ": no text (the file is empty or has only blank lines)");
        in_.close();
        ++file_;
        continue;
      }
      ++line_no_;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty()) continue;
      if (const int64_t bad = find_invalid_utf8(line); bad >= 0)
        return fail(files_[file_] + ":" + std::to_string(line_no_) + ": invalid UTF-8 at byte " + std::to_string(bad) +
                    " of the line");
      ++lines_with_text_;
      split(line);
    }
  }

 private:
  bool open_next() {
    if (file_ >= files_.size()) {
      done_ = true;
      return false;
    }
    in_.open(files_[file_], std::ios::binary);
    if (!in_.is_open()) {
      fail(files_[file_] + ": cannot open");
      return false;
    }
    line_no_ = 0;
    lines_with_text_ = 0;
    return true;
  }

  void fail(const std::string& message) {
    error_ = message;
    done_ = true;
  }

  // Cuts a line into pieces of at most max_len_ bytes, preferring a space in the second half of
  // the window and never cutting inside a UTF-8 character. Pieces are stacked in reverse so that
  // Next() pops them in order.
  void split(std::string& line) {
    std::vector<std::string> parts;
    size_t at = 0;
    while (line.size() - at > max_len_) {
      size_t cut = at + max_len_;
      while (cut > at && is_trail(static_cast<unsigned char>(line[cut]))) --cut;
      const size_t space = line.rfind(' ', cut - 1);
      if (space != std::string::npos && space > at + max_len_ / 2) cut = space;
      if (cut == at) cut = at + max_len_;  // unreachable for valid UTF-8 and max_len_ >= 4
      parts.emplace_back(line, at, cut - at);
      at = cut;
    }
    parts.emplace_back(line, at);
    pieces_.assign(std::make_move_iterator(parts.rbegin()), std::make_move_iterator(parts.rend()));
  }

  const std::vector<std::string>& files_;
  const size_t max_len_;
  size_t file_ = 0;
  std::ifstream in_;
  int64_t line_no_ = 0;
  int64_t lines_with_text_ = 0;
  std::vector<std::string> pieces_;
  std::string value_;
  std::string error_;
  bool done_ = false;
};

}  // namespace

// ---- Tokenizer -----------------------------------------------------------------------------------

struct Tokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
  std::string origin;
  ProtoFacts facts;
  std::string unk_surface;  // what decode() prints for <unk> (" ⁇ " unless the model says else)
  std::vector<int16_t> byte_value;  // per id: the byte a byte piece ("<0xAB>") stands for, else -1

  void check_id(int32_t id) const {
    if (id < 0 || id >= static_cast<int32_t>(facts.types.size()))
      throw Error(origin + ": token id " + std::to_string(id) + " is out of range (vocabulary has " +
                  std::to_string(facts.types.size()) + " tokens)");
  }
};

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}
Tokenizer::~Tokenizer() = default;

int64_t find_invalid_utf8(std::string_view text) {
  size_t at = 0;
  while (at < text.size()) {
    // ASCII runs are the common case; skip them without the general decoder.
    if (static_cast<unsigned char>(text[at]) < 0x80) {
      ++at;
      continue;
    }
    const int n = valid_char_length(text.substr(at));
    if (n == 0) return static_cast<int64_t>(at);
    at += static_cast<size_t>(n);
  }
  return -1;
}

std::string Tokenizer::train(const std::vector<std::string>& text_files, const TokenizerTrainOptions& options) {
  if (text_files.empty()) throw Error("tokenizer training: no input files given");
  for (const std::string& f : text_files) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(f, ec)) throw Error(f + ": tokenizer training text not found (or not a regular file)");
    if (std::filesystem::file_size(f, ec) == 0 || ec) throw Error(f + ": tokenizer training text is empty");
  }
  const std::string what = "tokenizer training on " + join_files(text_files);
  if (options.vocab_size < kMinVocab)
    throw Error(what + ": vocab_size " + std::to_string(options.vocab_size) + " is too small: byte fallback alone needs " +
                std::to_string(kSpecialPieces + kBytePieces) + " pieces (3 special + 256 bytes), plus one per distinct character");
  if (options.max_sentence_length < 16)
    throw Error(what + ": max_sentence_length " + std::to_string(options.max_sentence_length) + " is too small (minimum 16 bytes)");
  if (options.input_sentence_size < 0)
    throw Error(what + ": input_sentence_size must be >= 0, got " + std::to_string(options.input_sentence_size));
  if (options.threads < 0) throw Error(what + ": threads must be >= 0, got " + std::to_string(options.threads));
  const unsigned threads = options.threads > 0 ? static_cast<unsigned>(options.threads) : std::max(1u, std::thread::hardware_concurrency());

  const std::unordered_map<std::string, std::string> args = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(options.vocab_size)},
      {"byte_fallback", "true"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"character_coverage", kCharacterCoverage},
      {"split_digits", "true"},
      // Text is kept exactly as written: no NFKC, no whitespace folding, so decode(encode(t)) == t.
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"allow_whitespace_only_pieces", "true"},
      {"train_extremely_large_corpus", "false"},
      {"max_sentence_length", std::to_string(options.max_sentence_length)},
      {"input_sentence_size", std::to_string(options.input_sentence_size)},
      {"shuffle_input_sentence", "true"},
      {"num_threads", std::to_string(threads)},
      // Progress goes to stderr at INFO level and is long; errors come back in the status.
      {"minloglevel", "2"},
  };
  // The sampling of input sentences is the only randomness in BPE training; SentencePiece seeds it
  // from this process-wide generator (so concurrent trainings in one process are not supported).
  // SentencePiece reserves seed 0xFFFFFFFF for "seed from std::random_device"; keep every seed
  // deterministic.
  sentencepiece::SetRandomGeneratorSeed(options.seed == 0xFFFFFFFFu ? 0xFFFFFFFEu : options.seed);

  LineIterator lines(text_files, static_cast<size_t>(options.max_sentence_length));
  std::string proto;
  const sentencepiece::util::Status st = sentencepiece::SentencePieceTrainer::Train(args, &lines, &proto);
  if (!lines.error().empty()) throw Error(lines.error());
  if (!st.ok()) {
    const std::string m = spm_message(st);
    if (m.find("smaller than required_chars") != std::string::npos)
      throw Error(what + ": vocab_size " + std::to_string(options.vocab_size) + " is too small for this text (" + m + ")");
    if (m.find("Vocabulary size too high") != std::string::npos)
      throw Error(what + ": vocab_size " + std::to_string(options.vocab_size) + " is too large for this text (" + m + ")");
    throw Error(what + ": " + m);
  }
  if (proto.empty()) throw Error(what + ": SentencePiece returned no model");
  return proto;
}

std::unique_ptr<Tokenizer> Tokenizer::from_serialized(const std::string& model_proto, const std::string& origin) {
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  Impl& im = *t->impl_;
  im.origin = origin;
  if (model_proto.empty()) throw Error(origin + ": tokenizer model is empty");
  if (const auto st = im.sp.LoadFromSerializedProto(model_proto); !st.ok())
    throw Error(origin + ": not a valid SentencePiece model (" + spm_message(st) + ")");
  if (!read_proto_facts(model_proto, im.facts) || static_cast<int>(im.facts.types.size()) != im.sp.GetPieceSize())
    throw Error(origin + ": malformed SentencePiece model proto");
  if (im.sp.unk_id() >= 0) im.unk_surface = im.sp.DecodeIds({im.sp.unk_id()});
  im.byte_value.assign(im.facts.types.size(), -1);
  for (size_t id = 0; id < im.facts.types.size(); ++id) {
    if (im.facts.types[id] != PieceType::Byte) continue;
    const std::string& p = im.sp.IdToPiece(static_cast<int>(id));
    unsigned value = 0;
    if (p.size() != 6 || p.compare(0, 3, "<0x") != 0 || p[5] != '>' || std::sscanf(p.c_str() + 3, "%2X", &value) != 1)
      throw Error(origin + ": byte piece " + std::to_string(id) + " is spelled '" + p + "', expected <0xHH>");
    im.byte_value[id] = static_cast<int16_t>(value);
  }
  t->serialized_ = model_proto;
  return t;
}

std::unique_ptr<Tokenizer> Tokenizer::from_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open tokenizer model");
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw Error(path + ": read error");
  return from_serialized(data, path);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos, bool add_eos) const {
  if (const int64_t bad = find_invalid_utf8(text); bad >= 0)
    throw Error(impl_->origin + ": cannot tokenize: invalid UTF-8 at byte " + std::to_string(bad) + " of the text");
  std::vector<int> ids;
  if (const auto st = impl_->sp.Encode(text, &ids); !st.ok())
    throw Error(impl_->origin + ": cannot tokenize: " + spm_message(st));
  std::vector<int32_t> out;
  out.reserve(ids.size() + 2);
  if (add_bos) out.push_back(bos_id());
  out.insert(out.end(), ids.begin(), ids.end());
  if (add_eos) out.push_back(eos_id());
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  for (const int32_t id : ids) impl_->check_id(id);
  std::string text;
  const std::vector<int> as_int(ids.begin(), ids.end());
  if (const auto st = impl_->sp.Decode(as_int, &text); !st.ok())
    throw Error(impl_->origin + ": cannot decode: " + spm_message(st));
  return text;
}

std::vector<int32_t> Tokenizer::prefix_tokens(const std::string& prefix_text) const {
  static constexpr std::string_view kBos = "<s>";
  const std::string_view s(prefix_text);
  if (s.substr(0, kBos.size()) != kBos) return encode(s);
  return encode(s.substr(kBos.size()), /*add_bos=*/true);
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->facts.types.size()); }
int32_t Tokenizer::bos_id() const { return impl_->sp.bos_id(); }
int32_t Tokenizer::eos_id() const { return impl_->sp.eos_id(); }
int32_t Tokenizer::unk_id() const { return impl_->sp.unk_id(); }

std::string Tokenizer::piece(int32_t id) const {
  impl_->check_id(id);
  return impl_->sp.IdToPiece(id);
}

float Tokenizer::score(int32_t id) const {
  impl_->check_id(id);
  return impl_->sp.GetScore(id);
}

PieceType Tokenizer::type(int32_t id) const {
  impl_->check_id(id);
  return impl_->facts.types[static_cast<size_t>(id)];
}

// ---- TokenStreamer -------------------------------------------------------------------------------
//
// Mirrors SentencePieceProcessor::Decode one piece at a time: consecutive byte pieces form a run
// whose bytes are decoded together; any other piece ends the run. The first piece that starts
// with "▁" loses it (when the model adds a dummy prefix) as long as nothing visible came before.
// A model with a denormalizer (none of ours; identity normalization) post-processes the whole
// text in decode(), which a streamer cannot reproduce; such models stream without it.

TokenStreamer::TokenStreamer(const Tokenizer& tokenizer) : tokenizer_(&tokenizer) {}

std::string TokenStreamer::finish_bytes() {
  std::string out = drain_bytes(pending_, /*hold_incomplete=*/false);
  if (!out.empty()) emitted_ = true;
  return out;
}

std::string TokenStreamer::push(int32_t id) {
  const Tokenizer::Impl& im = *tokenizer_->impl_;
  im.check_id(id);
  const PieceType type = im.facts.types[static_cast<size_t>(id)];
  if (type == PieceType::Byte) {
    pending_.push_back(static_cast<char>(im.byte_value[static_cast<size_t>(id)]));
    std::string out = drain_bytes(pending_, /*hold_incomplete=*/true);
    if (!out.empty()) emitted_ = true;
    return out;
  }

  std::string out = finish_bytes();
  if (dropped_space_ || emitted_) at_start_ = false;
  dropped_space_ = false;
  if (type == PieceType::Control) return out;
  if (type == PieceType::Unknown) {
    out += im.unk_surface;
  } else {
    std::string_view piece = im.sp.IdToPiece(id);
    const std::string_view space(kSpaceSymbol);
    if (at_start_ && (im.facts.add_dummy_prefix || im.facts.remove_extra_whitespaces) && piece.substr(0, space.size()) == space) {
      piece.remove_prefix(space.size());
      // With whitespace folding SentencePiece keeps dropping leading spaces until text appears.
      dropped_space_ = !im.facts.remove_extra_whitespaces;
    }
    for (size_t at = 0; at < piece.size();) {
      if (piece.substr(at, space.size()) == space) {
        out += ' ';
        at += space.size();
      } else {
        out += piece[at++];
      }
    }
  }
  if (!out.empty()) emitted_ = true;
  return out;
}

std::string TokenStreamer::flush() {
  std::string out = finish_bytes();
  reset();
  return out;
}

void TokenStreamer::reset() {
  pending_.clear();
  at_start_ = true;
  dropped_space_ = false;
  emitted_ = false;
}

}  // namespace m3
