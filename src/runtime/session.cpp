// Chunked inference with explicit memories (m3/session.h).
#include "m3/session.h"

#include <algorithm>
#include <cstring>

#include "m3/error.h"

namespace m3 {

PrefixKV::PrefixKV(const Model& model, ThreadPool* pool) {
  const ModelConfig& c = model.config();
  if (!model.tokenizer()) throw Error("the model carries no tokenizer: the memory prefix cannot be tokenized");
  tokens_ = model.tokenizer()->prefix_tokens(c.memory.prefix_text);
  n_layers_ = c.n_layers;
  row_ = static_cast<size_t>(c.n_kv_heads) * c.head_dim;
  cache_ = std::make_unique<KVCache>(c, static_cast<int>(tokens_.size()));
  Forward fwd(model, pool, static_cast<int>(tokens_.size()));
  fwd.eval(tokens_, *cache_, nullptr, false, EvalOptions{});
}

void PrefixKV::copy_into(KVCache& cache) const {
  if (cache.size() != 0) throw Error("PrefixKV::copy_into needs an empty cache");
  const int p = size();
  for (int l = 0; l < n_layers_; ++l) {
    std::memcpy(cache.k(l, 0), cache_->k(l, 0), sizeof(float) * row_ * p);
    std::memcpy(cache.v(l, 0), cache_->v(l, 0), sizeof(float) * row_ * p);
  }
  cache.advance(p);
}

namespace {
int default_capacity(const ModelConfig& c, const PrefixKV* prefix) {
  // Positions (p + reference_length) + t must stay below the context length.
  if (!prefix) return c.context_length;
  return std::max(0, c.context_length - prefix->size() - c.memory.reference_length);
}
}  // namespace

Session::Session(const Model& model, ThreadPool* pool, const PrefixKV* prefix, MemorySource* memories, int capacity)
    : model_(model),
      pool_(pool),
      prefix_(prefix),
      p_(prefix ? prefix->size() : 0),
      source_(memories),
      capacity_(capacity > 0 ? std::min(capacity, default_capacity(model.config(), prefix)) : default_capacity(model.config(), prefix)),
      chunk_length_(model.config().memory.chunk_length > 0 ? model.config().memory.chunk_length : 64),
      forward_(model, pool, chunk_length_),
      cache_(model.config(), p_ + std::max(1, capacity_)) {
  if (capacity_ <= 0)
    throw Error("the model's context length " + std::to_string(model.config().context_length) +
                " leaves no room for a context after the memory prefix and window");
  if (memories && !prefix) throw Error("a session with memories needs the memory prefix");
  if (memories && model.config().memory.memory_layers <= 0) throw Error("the model has no memory layers: it cannot read memories");
  if (prefix_) {
    prefix_->copy_into(cache_);
    cache_.set_position_gap(p_, model.config().memory.reference_length);
  }
}

Session::~Session() = default;

void Session::truncate(int n) {
  if (n < 0 || n > n_tokens()) throw Error("Session::truncate: " + std::to_string(n) + " outside 0.." + std::to_string(n_tokens()));
  tokens_.resize(static_cast<size_t>(n));
  cache_.truncate(p_ + n);
  // Chunks with no token left lose their choice; a partly kept chunk keeps it.
  const size_t keep_chunks = static_cast<size_t>((n + chunk_length_ - 1) / chunk_length_);
  if (chosen_.size() > keep_chunks) chosen_.resize(keep_chunks);
  while (!records_.empty() && static_cast<size_t>(records_.back().chunk) >= keep_chunks) records_.pop_back();
  if (!records_.empty()) records_.back().token_end = std::min(records_.back().token_end, n);
  if (extra_chunk_ >= static_cast<int>(keep_chunks)) extra_chunk_ = -1;
}

void Session::ensure_chunk(int chunk, bool from_prompt, std::span<const int32_t> prompt_part) {
  if (static_cast<int>(chosen_.size()) > chunk) return;
  chosen_.resize(static_cast<size_t>(chunk) + 1);
  ChunkRecord rec;
  rec.chunk = chunk;
  rec.token_begin = chunk * chunk_length_;
  rec.token_end = rec.token_begin;
  if (source_) {
    const Tokenizer* tok = model_.tokenizer();
    std::vector<int32_t> query_tokens;
    if (from_prompt) {
      query_tokens.assign(prompt_part.begin(), prompt_part.end());
    } else if (chunk > 0) {
      const int b = (chunk - 1) * chunk_length_;
      query_tokens.assign(tokens_.begin() + b, tokens_.begin() + std::min<int>(b + chunk_length_, n_tokens()));
    }
    rec.query = tok ? tok->decode(query_tokens) : std::string();
    chosen_[chunk] = source_->select(chunk, rec.query);
    const size_t limit = static_cast<size_t>(model_.config().memory.memories_per_chunk);
    if (chosen_[chunk].size() > limit) chosen_[chunk].resize(limit);
    for (const auto& m : chosen_[chunk]) rec.reference_ids.push_back(m.reference_id);
  }
  records_.push_back(std::move(rec));
}

void Session::build_extra(int chunk) {
  if (extra_chunk_ == chunk) return;
  const ModelConfig& c = model_.config();
  const MemoryShape shape = MemoryShape::of(c);
  const int Lm = shape.layers, G = shape.kv_heads, K = shape.kept, D = shape.head_dim;
  const auto& mems = chosen_[chunk];
  int n = 0;
  for (const auto& m : mems) n += m.memory->kept_tokens(shape);
  extra_k_.assign(static_cast<size_t>(Lm), {});
  extra_v_.assign(static_cast<size_t>(Lm), {});
  extra_.assign(static_cast<size_t>(Lm), ExtraKV{});
  for (int l = 0; l < Lm && n > 0; ++l) {
    auto& ek = extra_k_[l];
    auto& ev = extra_v_[l];
    ek.resize(static_cast<size_t>(G) * n * D);
    ev.resize(ek.size());
    for (int g = 0; g < G; ++g) {
      float* dk = ek.data() + static_cast<size_t>(g) * n * D;
      float* dv = ev.data() + static_cast<size_t>(g) * n * D;
      for (const auto& m : mems) {
        const int kept = m.memory->kept_tokens(shape);
        const size_t src = ((static_cast<size_t>(l) * G + g) * K) * D;
        std::memcpy(dk, m.memory->keys.data() + src, sizeof(float) * kept * D);
        std::memcpy(dv, m.memory->values.data() + src, sizeof(float) * kept * D);
        dk += static_cast<size_t>(kept) * D;
        dv += static_cast<size_t>(kept) * D;
      }
    }
    extra_[l] = ExtraKV{ek.data(), ev.data(), n};
  }
  extra_chunk_ = chunk;
}

void Session::eval_segment(std::span<const int32_t> tokens, bool from_prompt, float* last_logits, float* all_logits) {
  const int begin = n_tokens();
  const int chunk = begin / chunk_length_;
  ensure_chunk(chunk, from_prompt, tokens);
  build_extra(chunk);
  EvalOptions opts;
  opts.extra = extra_;
  float* out = all_logits ? all_logits : last_logits;
  forward_.eval(tokens, cache_, out, all_logits != nullptr, opts);
  if (all_logits && last_logits)
    std::memcpy(last_logits, all_logits + (tokens.size() - 1) * static_cast<size_t>(model_.config().vocab_size),
                sizeof(float) * model_.config().vocab_size);
  tokens_.insert(tokens_.end(), tokens.begin(), tokens.end());
  records_.back().token_end = n_tokens();
}

void Session::prompt(std::span<const int32_t> tokens, float* last_logits, float* all_logits) {
  if (tokens.empty()) throw Error("empty prompt: nothing to evaluate");
  if (n_tokens() + static_cast<int64_t>(tokens.size()) > capacity_)
    throw Error("the context would hold " + std::to_string(n_tokens() + tokens.size()) + " tokens, more than the session's capacity of " +
                std::to_string(capacity_) + " (context length " + std::to_string(model_.config().context_length) +
                " minus the memory prefix and window)");
  const size_t V = static_cast<size_t>(model_.config().vocab_size);
  size_t done = 0;
  while (done < tokens.size()) {
    const int in_chunk = n_tokens() % chunk_length_;
    const size_t n = std::min(tokens.size() - done, static_cast<size_t>(chunk_length_ - in_chunk));
    const bool last = done + n == tokens.size();
    eval_segment(tokens.subspan(done, n), true, last ? last_logits : nullptr, all_logits ? all_logits + done * V : nullptr);
    done += n;
  }
}

void Session::decode(int32_t token, float* logits) {
  if (n_tokens() + 1 > capacity_)
    throw Error("the context is full (" + std::to_string(capacity_) + " tokens): nothing more can be generated");
  const int32_t one[1] = {token};
  eval_segment(std::span<const int32_t>(one, 1), false, logits, nullptr);
}

}  // namespace m3
