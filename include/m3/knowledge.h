// m3/knowledge.h — a knowledge base as input to `m3 memorize`: documents, and their split into
// references (spec §2.1: a reference is at most 128 tokens of one document).
//
// What it is not: a retriever or a store. Documents and references go into a MemoryBank's
// catalog (m3/bank.h); retrieval reads them from there.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace m3 {

class Tokenizer;

struct Document {
  std::string id;      // unique within a knowledge base
  std::string title;   // may be empty
  std::string source;  // where it came from (a file path, or "<file>:<line>" for JSONL)
  std::string text;    // valid UTF-8
};

// Loads a knowledge base from `path`:
//   - a folder, walked recursively in sorted (byte-wise) relative-path order, holding
//       .txt / .md files: one document each; id = the path relative to the folder ('/'
//                         separated), title = the first Markdown heading ("# ...") or else the
//                         file stem, text = the whole file;
//       .jsonl files:     one document per non-blank line, an object with string fields "id"
//                         and "text" (required) and "title", "source" (optional; other fields
//                         are ignored). An integer id is accepted and turned into its decimal text.
//     other files and names starting with '.' are skipped;
//   - or a single .txt, .md or .jsonl file.
// Throws m3::Error naming the file (and line, field or byte offset) when the path is missing or
// of an unknown kind, a JSONL line is not a JSON object, "id"/"text" is missing or not a string,
// a file is not valid UTF-8, or two documents share an id.
std::vector<Document> load_knowledge_base(const std::string& path);

// One reference: a span of a document's text and its tokens.
struct ReferenceText {
  std::string doc_id;
  std::string text;              // == document.text.substr(char_begin, char_end - char_begin)
  int64_t char_begin = 0;        // byte offsets into the document's UTF-8 text
  int64_t char_end = 0;
  std::vector<int32_t> tokens;   // tokenizer.encode(text), no BOS/EOS; 1..max_tokens of them
};

// Splits a document into references of at most max_tokens tokens each. Pieces are packed
// greedily, whole units at a time, preferring the strongest boundary available:
//   paragraphs (a whitespace run holding two or more '\n')  — consecutive paragraphs are packed
//     into one reference while its actual token count stays <= max_tokens;
//   a paragraph that alone exceeds max_tokens is split into sentences (a '.', '!' or '?'
//     followed by whitespace ends one), packed the same way, starting a new reference;
//   a sentence that alone exceeds it is split into words (whitespace-separated), and a word that
//     alone exceeds it is cut between UTF-8 characters.
// Every reference is trimmed of ASCII whitespace (space, \t, \n, \r, \f, \v) at both ends and is
// never empty; whitespace-only documents give no references. The references are in document
// order, do not overlap, and together cover every non-whitespace byte of the text. Token counts
// are those of the reference's own text (tokenizing a concatenation can differ from the sum of
// its parts, so the packed text is always re-tokenized).
// Deterministic. Throws m3::Error naming the document when its text is not valid UTF-8 or when
// max_tokens is below 8 (a single UTF-8 character can take up to 5 tokens with byte fallback).
std::vector<ReferenceText> split_into_references(const Document& doc, const Tokenizer& tokenizer,
                                                 int max_tokens = 128);

}  // namespace m3
