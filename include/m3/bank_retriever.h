// m3/bank_retriever.h — the retriever of a memory bank written by `m3 memorize`: bm25 over the
// bank's catalog, dense (and hybrid) over the index beside it, <bank>/dense.{vec,hnsw}, whose
// queries are embedded exactly as its vectors were (the embedder spec stored in the index).
#pragma once

#include <memory>
#include <string>

#include "m3/bank.h"
#include "m3/embedder.h"
#include "m3/retriever.h"

namespace m3 {

class Model;
class ThreadPool;

// "<bank>/dense": the prefix DenseIndex::save/load add .vec and .hnsw to.
std::string bank_dense_path(const std::string& bank_dir);

// The embedder spec stored in <path>.vec (DenseIndex::save's header), without loading the index.
std::string read_dense_tag(const std::string& path);

// How a ModelEmbedder made a dense index: "model-mean:layer=L:max_tokens=M:fp=F".
struct ModelEmbedderSpec {
  int layer = 0;
  int max_tokens = 512;
  std::string fingerprint;
};
ModelEmbedderSpec parse_model_embedder_spec(const std::string& spec, const std::string& where);

// A retriever for `spec` (make_retriever's forms) over the bank. dense/hybrid need the model
// that wrote the index (same fingerprint) and the index file; the embedder made for them is kept
// alive by the retriever's owner through `embedder` (may be null for bm25).
struct BankRetriever {
  std::shared_ptr<const Embedder> embedder;
  std::unique_ptr<Retriever> retriever;
};
// Throws m3::Error naming the file or the spec: no dense index ("run m3 memorize without
// --retriever none"), an index of another model, an unknown spec.
BankRetriever open_bank_retriever(const MemoryBank& bank, const Model* model, const std::string& spec, ThreadPool* pool);

}  // namespace m3
