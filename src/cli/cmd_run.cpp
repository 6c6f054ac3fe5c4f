// m3 generate / logits / tokenize: running a model.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "m3/error.h"
#include "m3/forward.h"
#include "m3/npy.h"
#include "m3/bank.h"
#include "m3/bank_memory_source.h"
#include "m3/bank_remote.h"
#include "m3/bank_retriever.h"
#include "m3/generate.h"
#include "m3/memory_cache.h"
#include "m3/rag.h"
#include "m3/sampler.h"
#include "m3/session.h"

namespace m3::cli {

namespace {

struct PromptOpts {
  std::string model, prompt, prompt_file;
  bool no_bos = false, mmap = false;
  int threads = 0;
};

void add_prompt_options(CLI::App* cmd, PromptOpts& o) {
  cmd->add_option("-m,--model", o.model, "Model file (GGUF)")->required();
  cmd->add_option("-p,--prompt", o.prompt, "Prompt text");
  cmd->add_option("-f,--file", o.prompt_file, "Read the prompt from this file");
  cmd->add_flag("--no-bos", o.no_bos, "Do not prepend the BOS token");
  cmd->add_option("-t,--threads", o.threads, "Threads (0 = all cores)")->capture_default_str();
  cmd->add_flag("--mmap", o.mmap, "Map the model file instead of copying it into huge-page memory (faster start, slower decode)");
}

std::string prompt_text(const PromptOpts& o) {
  if (!o.prompt_file.empty()) {
    if (!o.prompt.empty()) throw Error("give either --prompt or --file, not both");
    std::ifstream in(o.prompt_file, std::ios::binary);
    if (!in) throw Error(o.prompt_file + ": cannot open prompt file");
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  return o.prompt;
}

const Tokenizer& need_tokenizer(const Model& m, const std::string& path) {
  if (!m.tokenizer()) throw Error(path + ": the model file carries no tokenizer (create it with `m3 init --train-tokenizer` or `--tokenizer`)");
  return *m.tokenizer();
}

std::vector<int32_t> tokenize_prompt(const Model& m, const PromptOpts& o) {
  const Tokenizer& tok = need_tokenizer(m, o.model);
  std::vector<int32_t> ids = tok.encode(prompt_text(o), !o.no_bos);
  if (ids.empty()) throw Error("the prompt is empty (and --no-bos was given): nothing to run");
  if (static_cast<int64_t>(ids.size()) > m.config().context_length)
    throw Error("prompt has " + std::to_string(ids.size()) + " tokens, more than the model's context length " +
                std::to_string(m.config().context_length));
  return ids;
}

}  // namespace

void add_sampler_options(CLI::App* cmd, SamplerParams& sp) {
  cmd->add_option("--seed", sp.seed, "Sampling seed")->capture_default_str();
  cmd->add_option("--temp", sp.temperature, "Temperature (<= 0: greedy)")->capture_default_str();
  cmd->add_option("--top-k", sp.top_k, "Keep the k most likely tokens (<= 0: off)")->capture_default_str();
  cmd->add_option("--top-p", sp.top_p, "Nucleus sampling mass (>= 1: off)")->capture_default_str();
  cmd->add_option("--min-p", sp.min_p, "Drop tokens below min-p × the top probability (<= 0: off)")->capture_default_str();
  cmd->add_option("--repeat-penalty", sp.repeat_penalty, "Penalty for recently seen tokens (1: off)")->capture_default_str();
  cmd->add_option("--repeat-last-n", sp.repeat_last_n, "How many recent tokens the penalty sees")->capture_default_str();
}

void register_generate(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate", "Generate text from a prompt, streaming tokens to stdout; with --bank, read explicit memories");
  struct Opts : PromptOpts {
    int n = 64;
    SamplerParams sp;
    bool greedy = false, stats = false, ignore_eos = false, show_memories = false, rag = false;
    std::string bank, bank_cache, retriever = "bm25";
    int cache_mb = 256, rag_references = 0;
    std::vector<std::string> stop;
  };
  auto o = std::make_shared<Opts>();
  add_prompt_options(cmd, *o);
  cmd->add_option("-n,--n-predict", o->n, "Tokens to generate")->capture_default_str();
  cmd->add_option("--stop", o->stop, "Stop before this text (repeatable; \\n is a newline)");
  add_sampler_options(cmd, o->sp);
  cmd->add_flag("--greedy", o->greedy, "Greedy decoding (same as --temp 0)");
  cmd->add_flag("--ignore-eos", o->ignore_eos, "Keep generating after the end-of-sequence token");
  cmd->add_flag("--stats", o->stats, "Print prompt and decode speed to stderr");
  cmd->add_option("--bank", o->bank, "Memory bank (m3 memorize), or redis://host:port/NAME (m3 bank push): every 64-token chunk "
                                    "reads the memories it retrieves");
  cmd->add_option("--bank-cache", o->bank_cache, "With a redis:// bank: where its files are fetched (default ~/.cache/m3/banks/...)");
  cmd->add_option("--retriever", o->retriever, "With --bank: bm25, dense, dense:exact, hybrid")->capture_default_str();
  cmd->add_option("--cache-mb", o->cache_mb, "With --bank: RAM for decoded memories (0: read every memory from the bank)")->capture_default_str();
  cmd->add_flag("--memories", o->show_memories, "With --bank: print which references each chunk read (to stderr)");
  cmd->add_flag("--rag", o->rag, "With --bank: the RAG baseline — the retrieved references' text goes in front of the prompt, no memories");
  cmd->add_option("--rag-references", o->rag_references, "With --rag: how many references (0: the model's memories per chunk)");
  cmd->callback([o] {
    if (o->n < 0) throw Error("--n-predict must be >= 0");
    if (o->cache_mb < 0) throw Error("--cache-mb must be >= 0");
    auto model = Model::load(o->model, o->mmap ? FileLoad::Map : FileLoad::Read);
    need_tokenizer(*model, o->model);
    std::vector<int32_t> ids = tokenize_prompt(*model, *o);
    const int threads = resolve_threads(o->threads);
    ThreadPool pool(threads);
    std::unique_ptr<MemoryBank> bank;
    std::unique_ptr<PrefixKV> prefix;
    BankRetriever retriever;
    std::unique_ptr<MemoryCache> cache;
    std::unique_ptr<BankMemorySource> source;
    std::vector<int64_t> rag_ids;
    if (o->rag && o->bank.empty()) throw Error("--rag needs --bank: it puts the bank's references in the prompt");
    if (o->rag) {
      // The RAG baseline (spec Table 21, m3/rag.h): references retrieved once with the prompt, as
      // text in front of it, a plain LM.
      bank = open_bank_for_reading(o->bank, model.get(), o->bank_cache);
      retriever = open_bank_retriever(*bank, model.get(), o->retriever, &pool);
      RagOptions ro;
      ro.references = o->rag_references > 0 ? o->rag_references : model->config().memory.memories_per_chunk;
      const RagReferences refs = retrieve_rag_references(*bank, *retriever.retriever, prompt_text(*o), ro);
      for (const ReferenceInfo& ref : refs.references) rag_ids.push_back(ref.id);
      PromptOpts with_refs = *o;
      with_refs.prompt = rag_block(refs.references) + prompt_text(*o);
      with_refs.prompt_file.clear();
      ids = tokenize_prompt(*model, with_refs);
    } else if (!o->bank.empty()) {
      bank = open_bank_for_reading(o->bank, model.get(), o->bank_cache);
      prefix = std::make_unique<PrefixKV>(*model, &pool);
      retriever = open_bank_retriever(*bank, model.get(), o->retriever, &pool);
      cache = std::make_unique<MemoryCache>(MemoryCache::capacity_for_bytes(int64_t(o->cache_mb) << 20, bank->shape()));
      BankMemoryOptions bo;
      bo.per_chunk = model->config().memory.memories_per_chunk;
      source = std::make_unique<BankMemorySource>(*bank, *retriever.retriever, cache.get(), bo);
    }
    Session session(*model, &pool, prefix.get(), source.get(), static_cast<int>(ids.size()) + std::max(o->n, 1));
    if (o->greedy) o->sp.temperature = 0;
    GenerateOptions go;
    go.max_tokens = o->n;
    go.sampler = o->sp;
    go.ignore_eos = o->ignore_eos;
    for (const std::string& given : o->stop) {
      std::string s;  // with "\n" (backslash, n) read as a newline
      for (size_t i = 0; i < given.size(); ++i) {
        if (given[i] == '\\' && i + 1 < given.size() && given[i + 1] == 'n') {
          s += '\n';
          ++i;
        } else {
          s += given[i];
        }
      }
      if (s.empty()) throw Error("--stop: an empty stop string would end every completion at once");
      go.stop.push_back(s);
    }
    const std::string prompt = prompt_text(*o);
    std::fwrite(prompt.data(), 1, prompt.size(), stdout);
    std::fflush(stdout);
    const GenerateResult r = generate(session, ids, go, [](const std::string& piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
      return true;
    });
    std::printf("\n");
    std::fflush(stdout);  // before the stats and memories on stderr
    if (o->stats) {
      const int gen = static_cast<int>(r.tokens.size());
      std::fprintf(stderr, "prompt: %zu tokens in %.3f s (%.1f tok/s); generated %d tokens in %.3f s (%.2f tok/s); %d threads\n",
                   ids.size(), r.prompt_seconds, ids.size() / std::max(r.prompt_seconds, 1e-9), gen, r.decode_seconds,
                   gen / std::max(r.decode_seconds, 1e-9), threads);
    }
    if (r.finish_reason == "length" && static_cast<int>(r.tokens.size()) < o->n)
      std::fprintf(stderr, "m3: stopped: the context is full (%d tokens)\n", session.capacity());
    if (o->show_memories && o->rag) {
      std::fprintf(stderr, "rag: the prompt carried %zu references (%zu tokens in all):\n", rag_ids.size(), ids.size());
      for (int64_t id : rag_ids) std::fprintf(stderr, "  #%lld  %s\n", static_cast<long long>(id), bank->reference(id).doc_id.c_str());
    }
    if (o->show_memories && bank && !o->rag) {
      for (const ChunkRecord& ch : session.chunks()) {
        std::fprintf(stderr, "chunk %d (tokens %d..%d) read %zu memories:\n", ch.chunk, ch.token_begin, ch.token_end - 1,
                     ch.reference_ids.size());
        for (int64_t id : ch.reference_ids) {
          const ReferenceInfo ref = bank->reference(id);
          std::string line = ref.text.substr(0, 100);
          for (char& c : line) if (c == '\n') c = ' ';
          std::fprintf(stderr, "  #%lld  %s  %s%s\n", static_cast<long long>(id), ref.doc_id.c_str(), line.c_str(),
                       ref.text.size() > 100 ? "..." : "");
        }
      }
    }
  });
}

void register_logits(CLI::App& app) {
  auto* cmd = app.add_subcommand("logits", "Write the logits of every prompt position as a float32 .npy [tokens, vocab]");
  struct Opts : PromptOpts {
    std::string out, tokens_out;
    bool decode = false;
  };
  auto o = std::make_shared<Opts>();
  add_prompt_options(cmd, *o);
  cmd->add_option("-o,--output", o->out, ".npy file to write")->required();
  cmd->add_option("--tokens-out", o->tokens_out, "Also write the prompt's token ids as JSON");
  cmd->add_flag("--decode", o->decode, "Run token by token through the decode path instead of one prefill batch");
  cmd->callback([o] {
    auto model = Model::load(o->model, o->mmap ? FileLoad::Map : FileLoad::Read);
    std::vector<int32_t> ids = tokenize_prompt(*model, *o);
    const int threads = resolve_threads(o->threads);
    ThreadPool pool(threads);
    const ModelConfig& c = model->config();
    KVCache cache(c, static_cast<int>(ids.size()));
    Forward fwd(*model, &pool);
    std::vector<float> logits(ids.size() * static_cast<size_t>(c.vocab_size));
    if (o->decode) {
      for (size_t i = 0; i < ids.size(); ++i) fwd.eval(std::span<const int32_t>(&ids[i], 1), cache, logits.data() + i * c.vocab_size, false);
    } else {
      fwd.eval(ids, cache, logits.data(), true);
    }
    write_npy(o->out, logits.data(), {static_cast<int64_t>(ids.size()), c.vocab_size});
    if (!o->tokens_out.empty()) {
      std::ofstream out(o->tokens_out);
      if (!out) throw Error(o->tokens_out + ": cannot create");
      out << nlohmann::json{{"tokens", ids}}.dump() << "\n";
    }
    std::fprintf(stderr, "wrote %s: [%zu, %d] float32\n", o->out.c_str(), ids.size(), c.vocab_size);
  });
}

void register_tokenize(CLI::App& app) {
  auto* cmd = app.add_subcommand("tokenize", "Show how a model (or a tokenizer file) splits text into tokens");
  struct Opts {
    std::string model, tokenizer, prompt, file;
    bool ids_only = false, bos = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("-m,--model", o->model, "Model file whose tokenizer to use");
  cmd->add_option("--tokenizer", o->tokenizer, "SentencePiece model file instead of a model");
  cmd->add_option("-p,--prompt", o->prompt, "Text to tokenize");
  cmd->add_option("-f,--file", o->file, "Read the text from this file");
  cmd->add_flag("--bos", o->bos, "Prepend BOS");
  cmd->add_flag("--ids", o->ids_only, "Print only the ids, space-separated");
  cmd->callback([o] {
    std::unique_ptr<Model> model;
    std::unique_ptr<Tokenizer> own;
    const Tokenizer* tok = nullptr;
    if (!o->model.empty() == !o->tokenizer.empty()) throw Error("give exactly one of --model or --tokenizer");
    if (!o->model.empty()) {
      model = Model::load(o->model, FileLoad::Map);
      tok = &need_tokenizer(*model, o->model);
    } else {
      own = Tokenizer::from_file(o->tokenizer);
      tok = own.get();
    }
    PromptOpts po;
    po.prompt = o->prompt;
    po.prompt_file = o->file;
    const std::vector<int32_t> ids = tok->encode(prompt_text(po), o->bos);
    if (o->ids_only) {
      for (size_t i = 0; i < ids.size(); ++i) std::printf(i ? " %d" : "%d", ids[i]);
      std::printf("\n");
      return;
    }
    for (int32_t id : ids) std::printf("%6d  %s\n", id, tok->piece(id).c_str());
    std::printf("%zu tokens\n", ids.size());
  });
}

void register_tokenizer(CLI::App& app) {
  auto* cmd = app.add_subcommand("tokenizer", "Tokenizer tools");
  cmd->require_subcommand(1);
  auto* train = cmd->add_subcommand("train", "Train a SentencePiece BPE tokenizer (byte fallback) on text files");
  struct Opts {
    std::vector<std::string> files;
    std::string out;
    TokenizerTrainOptions opts;
  };
  auto o = std::make_shared<Opts>();
  train->add_option("files", o->files, "Training files: plain text (UTF-8), or .jsonl with a \"text\" field per line")->required();
  train->add_option("-o,--output", o->out, "Tokenizer model file to write")->required();
  train->add_option("--vocab", o->opts.vocab_size, "Vocabulary size")->capture_default_str();
  train->add_option("--threads", o->opts.threads, "Threads (0 = all cores)")->capture_default_str();
  train->add_option("--seed", o->opts.seed, "Seed")->capture_default_str();
  train->callback([o] {
    // .jsonl corpora (m3's cleaned sources): their "text" fields, one line per paragraph, in a
    // temporary file, because SentencePiece reads plain lines.
    std::vector<std::string> files;
    std::vector<std::string> temps;
    struct Cleanup {
      std::vector<std::string>& paths;
      ~Cleanup() {
        for (const auto& p : paths) std::remove(p.c_str());
      }
    } cleanup{temps};
    for (const auto& f : o->files) {
      if (f.size() < 6 || f.substr(f.size() - 6) != ".jsonl") {
        files.push_back(f);
        continue;
      }
      std::ifstream in(f);
      if (!in) throw Error(f + ": cannot open");
      const std::string tmp = (std::filesystem::temp_directory_path() /
                               ("m3-tokenizer-" + std::to_string(::getpid()) + "-" + std::to_string(temps.size()) + ".txt")).string();
      temps.push_back(tmp);
      std::ofstream out(tmp, std::ios::binary);
      std::string line;
      int64_t line_no = 0;
      while (std::getline(in, line)) {
        ++line_no;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(line);
        } catch (const nlohmann::json::exception& e) {
          throw Error(f + ":" + std::to_string(line_no) + ": malformed JSON line (" + std::string(e.what()) + ")");
        }
        if (!j.is_object() || !j.contains("text") || !j["text"].is_string())
          throw Error(f + ":" + std::to_string(line_no) + ": expected an object with a string field \"text\"");
        out << j["text"].get<std::string>() << "\n";
      }
      if (!out) throw Error(tmp + ": cannot write");
      files.push_back(tmp);
    }
    const std::string proto = Tokenizer::train(files, o->opts);
    std::ofstream out(o->out, std::ios::binary);
    if (!out) throw Error(o->out + ": cannot create");
    out.write(proto.data(), static_cast<std::streamsize>(proto.size()));
    if (!out) throw Error(o->out + ": write failed");
    auto tok = Tokenizer::from_serialized(proto, o->out);
    std::printf("wrote %s: %d pieces\n", o->out.c_str(), tok->vocab_size());
  });
}

}  // namespace m3::cli
