// Opening a bank's retriever (m3/bank_retriever.h).
#include "m3/bank_retriever.h"

#include <charconv>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "m3/error.h"
#include "m3/model.h"

namespace m3 {

std::string bank_dense_path(const std::string& bank_dir) { return bank_dir + "/dense"; }

std::string read_dense_tag(const std::string& path) {
  const std::string file = path + ".vec";
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(file + ": cannot open");
  char hdr[28];
  if (!in.read(hdr, sizeof hdr)) throw Error(file + ": truncated (no header)");
  if (std::memcmp(hdr, "M3DENSE\0", 8) != 0) throw Error(file + ": not an m3 dense index (bad magic)");
  uint32_t len;
  std::memcpy(&len, hdr + 24, 4);
  if (len > 4096) throw Error(file + ": tag length " + std::to_string(len) + " is out of range");
  std::string tag(len, '\0');
  if (!in.read(tag.data(), len)) throw Error(file + ": truncated (in the tag)");
  return tag;
}

ModelEmbedderSpec parse_model_embedder_spec(const std::string& spec, const std::string& where) {
  ModelEmbedderSpec e;
  std::vector<std::string> parts;
  std::stringstream ss(spec);
  for (std::string p; std::getline(ss, p, ':');) parts.push_back(p);
  auto num = [](const std::string& s, const char* key, int* out) {
    const size_t n = std::strlen(key);
    if (s.compare(0, n, key) != 0) return false;
    const char* b = s.data() + n;
    const char* end = s.data() + s.size();
    return b != end && std::from_chars(b, end, *out).ptr == end;
  };
  if (parts.size() != 4 || parts[0] != "model-mean" || !num(parts[1], "layer=", &e.layer) ||
      !num(parts[2], "max_tokens=", &e.max_tokens) || parts[3].rfind("fp=", 0) != 0)
    throw Error(where + ": embedder '" + spec + "' is not one this m3 can embed queries with (model-mean:layer=L:max_tokens=M:fp=F)");
  e.fingerprint = parts[3].substr(3);
  return e;
}

BankRetriever open_bank_retriever(const MemoryBank& bank, const Model* model, const std::string& spec, ThreadPool* pool) {
  BankRetriever out;
  RetrieverOptions opts;
  opts.catalog_path = bank.catalog_path();
  opts.pool = pool;
  const bool needs_dense = spec.rfind("dense", 0) == 0 || spec.rfind("hybrid", 0) == 0;
  if (needs_dense) {
    const std::string path = bank_dense_path(bank.dir());
    if (!DenseIndex::exists(path))
      throw Error(bank.dir() + ": has no dense index (" + path + ".vec); memorize without --retriever none, or use --retriever bm25");
    if (!model) throw Error("retriever '" + spec + "' embeds queries with the bank's model: give -m MODEL");
    const std::string tag = read_dense_tag(path);
    const ModelEmbedderSpec e = parse_model_embedder_spec(tag, path + ".vec");
    auto embedder = std::make_shared<ModelEmbedder>(*model, e.layer, pool, e.max_tokens);
    if (embedder->spec() != tag)
      throw Error(path + ".vec: was embedded with '" + tag + "', this model embeds as '" + embedder->spec() +
                  "' (another model?): rebuild the bank with m3 memorize");
    out.embedder = embedder;
    opts.embedder = embedder;
    opts.index_path = path;
  }
  out.retriever = make_retriever(spec, opts);
  return out;
}

}  // namespace m3
