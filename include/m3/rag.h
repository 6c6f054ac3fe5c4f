// m3/rag.h — the RAG baseline (spec §5, Tables 20–21): references retrieved once with the
// question's text and placed, as text, in front of the prompt of a plain language model (no
// memory prefix, no memories). Shared by `m3 generate --rag` and `m3 eval`.
//
// The text block is "Reference: <text>\n" per reference, then one "\n" (nothing when there is no
// reference), and the prompt follows it.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "m3/bank.h"
#include "m3/retriever.h"
#include "m3/tokenizer.h"

namespace m3 {

struct RagOptions {
  int references = 5;  // at most this many references
  // Leakage filter, as BankMemoryOptions: drop a reference whose Eq. 6 overlap with the
  // comparison tokens is >= max_overlap (above 1: keep all; the paper's evaluation: 2/3).
  double max_overlap = 2.0;
  const Tokenizer* tokenizer = nullptr;  // tokenizes the query for the filter
  std::vector<int32_t> leakage_tokens;   // compare with these instead of the query's tokens
};

struct RagReferences {
  std::vector<ReferenceInfo> references;  // best first, none deleted
  int dropped = 0;                        // references the leakage filter dropped
};

// Searches `query` and keeps the first options.references hits that exist in the catalog, are
// not deleted and pass the leakage filter. Throws m3::Error when filtering without a tokenizer
// or leakage_tokens, or when the retriever or the bank fails.
RagReferences retrieve_rag_references(const MemoryBank& bank, const Retriever& retriever, const std::string& query,
                                      const RagOptions& options);

// "Reference: <text>\n" for each, then "\n"; empty for no references.
std::string rag_block(std::span<const ReferenceInfo> references);

}  // namespace m3
