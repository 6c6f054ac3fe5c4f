// Random memories and corpora for bank tests (test_bank.cpp, test_redis_cluster.cpp): memories
// are random numbers of a bank's shape, deterministic in (seed, reference id).
#pragma once

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "m3/knowledge.h"
#include "m3/memory.h"

namespace m3::test {

// A memory of reference `id` with n_tokens tokens: sorted distinct kept positions, normal values.
inline ExplicitMemory random_memory(const MemoryShape& s, int64_t id, int n_tokens, uint64_t seed) {
  std::mt19937_64 rng(seed * 7919 + uint64_t(id));
  std::normal_distribution<float> normal(0.0f, 1.5f);
  ExplicitMemory m;
  m.reference_id = id;
  m.n_tokens = n_tokens;
  m.resize(s);
  const int used = m.kept_tokens(s);
  std::vector<int16_t> all(static_cast<size_t>(n_tokens));
  for (int i = 0; i < n_tokens; ++i) all[size_t(i)] = int16_t(i);
  for (int64_t s0 = 0; s0 < s.slots(); s0 += s.kept) {
    std::shuffle(all.begin(), all.end(), rng);
    std::vector<int16_t> pick(all.begin(), all.begin() + used);
    std::sort(pick.begin(), pick.end());
    for (int k = 0; k < used; ++k) {
      m.positions[size_t(s0 + k)] = pick[size_t(k)];
      for (int d = 0; d < s.head_dim; ++d) {
        m.keys[size_t((s0 + k) * s.head_dim + d)] = normal(rng);
        m.values[size_t((s0 + k) * s.head_dim + d)] = normal(rng);
      }
    }
  }
  return m;
}

// Documents doc0..doc{n_docs-1}, each with refs_per_doc references of varying lengths.
struct Corpus {
  std::vector<Document> docs;
  std::vector<std::vector<ReferenceText>> refs;
  std::vector<int> n_tokens;  // by reference id
};

inline Corpus make_corpus(int n_docs, int refs_per_doc) {
  Corpus c;
  const std::vector<std::string> words = {"whale", "ship", "harpoon", "captain", "ocean"};
  for (int d = 0; d < n_docs; ++d) {
    Document doc{"doc" + std::to_string(d), "Title " + std::to_string(d), "src", ""};
    std::vector<ReferenceText> refs;
    for (int r = 0; r < refs_per_doc; ++r) {
      ReferenceText rt;
      rt.doc_id = doc.id;
      rt.text = words[size_t(d) % words.size()] + " number" + std::to_string(d) + " part" + std::to_string(r);
      rt.char_begin = int64_t(doc.text.size());
      doc.text += rt.text + "\n\n";
      rt.char_end = rt.char_begin + int64_t(rt.text.size());
      const int n = 1 + (d * 37 + r * 11) % 128;  // 1..128 tokens, some shorter than K
      for (int i = 0; i < n; ++i) rt.tokens.push_back(3 + i);
      c.n_tokens.push_back(n);
      refs.push_back(rt);
    }
    c.docs.push_back(doc);
    c.refs.push_back(refs);
  }
  return c;
}

}  // namespace m3::test
