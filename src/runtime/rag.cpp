// The RAG baseline's retrieval and prompt text (m3/rag.h).
#include "m3/rag.h"

#include "m3/error.h"
#include "m3/overlap.h"

namespace m3 {

RagReferences retrieve_rag_references(const MemoryBank& bank, const Retriever& retriever, const std::string& query,
                                      const RagOptions& options) {
  RagReferences out;
  if (options.references <= 0) return out;
  const bool filter = options.max_overlap <= 1.0;
  if (filter && !options.tokenizer && options.leakage_tokens.empty())
    throw Error("RAG retrieval: the leakage filter needs a tokenizer or the tokens to compare with");
  std::vector<int32_t> query_tokens;
  if (filter && options.leakage_tokens.empty()) query_tokens = options.tokenizer->encode(query);
  const std::vector<int32_t>& leak = options.leakage_tokens.empty() ? query_tokens : options.leakage_tokens;
  // Deeper than needed: deleted references (a stale index) and filtered ones are skipped.
  const int depth = filter ? options.references * 4 : options.references + 8;
  const int64_t n_refs = bank.reference_count();
  for (const SearchHit& h : retriever.search(query, depth)) {
    if (static_cast<int>(out.references.size()) >= options.references) break;
    if (h.id < 0 || h.id >= n_refs) continue;
    ReferenceInfo ref = bank.reference(h.id);
    if (ref.deleted) continue;
    if (filter && overlap(leak, ref.tokens) >= options.max_overlap) {
      ++out.dropped;
      continue;
    }
    out.references.push_back(std::move(ref));
  }
  return out;
}

std::string rag_block(std::span<const ReferenceInfo> references) {
  std::string text;
  for (const ReferenceInfo& r : references) text += "Reference: " + r.text + "\n";
  return text.empty() ? text : text + "\n";
}

}  // namespace m3
