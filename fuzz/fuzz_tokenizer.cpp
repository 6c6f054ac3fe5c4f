// fuzz_tokenizer — the tokenizer's input path (src/text/tokenizer.cpp): arbitrary bytes, valid
// UTF-8 or not, into encode(), and arbitrary ids into decode() and the TokenStreamer.
//
// The first byte picks the tokenizer (the two committed test models and the demo model's, read
// from models/memory3-tiny-kb.gguf when present) and the operation; the rest is the text or the
// ids (u16 each, taken modulo vocab + 8 so that a few are out of range). What must hold:
//   encode: invalid UTF-8 (find_invalid_utf8 >= 0) throws m3::Error; valid UTF-8 encodes, every
//           id is in the vocabulary, and decode(encode(t)) == t with U+2581 read as a space;
//   decode / TokenStreamer: out-of-range ids throw m3::Error; otherwise the concatenation of
//           push() for each id and flush() equals decode(ids) (the streamer's contract in
//           m3/tokenizer.h), and both are valid UTF-8.
// A broken property aborts with the input, as a crash would.
#include <cstring>
#include <memory>
#include <vector>

#include "fuzz_common.h"
#include "m3/error.h"
#include "m3/gguf.h"
#include "m3/tokenizer.h"

namespace {

using namespace m3;

std::vector<std::unique_ptr<Tokenizer>> g_tokenizers;

[[noreturn]] void fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_tokenizer: %s\n%s\n", what, detail.c_str());
  std::abort();
}

std::string hex(const std::string& s) {
  std::string out;
  char buf[4];
  for (unsigned char c : s) {
    std::snprintf(buf, sizeof buf, "%02x ", c);
    out += buf;
  }
  return out;
}

// decode() turns SentencePiece's space marker back into a space; so does the expectation.
std::string spaces_for_markers(std::string_view s) {
  static const std::string marker = "\xE2\x96\x81";
  std::string out;
  for (size_t i = 0; i < s.size();) {
    if (s.compare(i, marker.size(), marker) == 0) {
      out += ' ';
      i += marker.size();
    } else {
      out += s[i++];
    }
  }
  return out;
}

void check_encode(const Tokenizer& tok, std::string_view text) {
  const bool valid = find_invalid_utf8(text) < 0;
  std::vector<int32_t> ids;
  try {
    ids = tok.encode(text, true, true);
  } catch (const Error& e) {
    if (valid) fail("encode refused valid UTF-8", std::string(e.what()) + "\ninput: " + hex(std::string(text)));
    return;
  }
  if (!valid) fail("encode accepted invalid UTF-8", hex(std::string(text)));
  if (ids.size() < 2 || ids.front() != tok.bos_id() || ids.back() != tok.eos_id()) fail("encode lost BOS/EOS", hex(std::string(text)));
  for (int32_t id : ids)
    if (id < 0 || id >= tok.vocab_size()) fail("encode produced an id outside the vocabulary", std::to_string(id));
  const std::string back = tok.decode(ids);
  if (back != spaces_for_markers(text))
    fail("decode(encode(t)) != t", "t:    " + hex(std::string(text)) + "\nback: " + hex(back));
}

void check_decode(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  bool in_range = true;
  for (int32_t id : ids) in_range = in_range && id >= 0 && id < tok.vocab_size();
  std::string whole;
  try {
    whole = tok.decode(ids);
  } catch (const Error&) {
    if (in_range) fail("decode refused in-range ids", "");
    return;
  }
  if (!in_range) fail("decode accepted an out-of-range id", "");
  if (find_invalid_utf8(whole) >= 0) fail("decode produced invalid UTF-8", hex(whole));
  TokenStreamer streamer(tok);
  std::string streamed;
  for (int32_t id : ids) {
    const std::string piece = streamer.push(id);
    if (find_invalid_utf8(piece) >= 0) fail("TokenStreamer::push produced invalid UTF-8", hex(piece));
    streamed += piece;
  }
  streamed += streamer.flush();
  if (streamed != whole) fail("TokenStreamer output != decode()", "decode:   " + hex(whole) + "\nstreamed: " + hex(streamed));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const std::string data = std::string(M3_SOURCE_DIR) + "/tests/data/";
  g_tokenizers.push_back(Tokenizer::from_file(data + "test-tokenizer.model"));
  g_tokenizers.push_back(Tokenizer::from_file(data + "tokenizer_test.model"));
  const std::string demo = std::string(M3_SOURCE_DIR) + "/models/memory3-tiny-kb.gguf";
  if (std::filesystem::exists(demo)) {
    auto f = GGUFFile::open(demo, FileLoad::Map);
    const GGUFValue* v = f->find("tokenizer.sentencepiece.model");
    if (v) g_tokenizers.push_back(Tokenizer::from_serialized(std::string(v->bytes.begin(), v->bytes.end()), demo));
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const Tokenizer& tok = *g_tokenizers[data[0] % g_tokenizers.size()];
  const bool ids_mode = (data[0] / g_tokenizers.size()) % 4 == 3;  // a quarter of the inputs decode ids
  if (!ids_mode) {
    check_encode(tok, std::string_view(reinterpret_cast<const char*>(data + 1), size - 1));
    return 0;
  }
  fuzz::Bytes in(data + 1, size - 1);
  std::vector<int32_t> ids;
  const uint32_t range = static_cast<uint32_t>(tok.vocab_size()) + 8;
  while (in.left() >= 2) {
    const uint16_t v = in.u16();
    ids.push_back(v == 0xffff ? -1 : static_cast<int32_t>(v % range));  // 0xffff: a negative id
  }
  check_decode(tok, ids);
  return 0;
}
