// m3 data tokenize / m3 train: building a token dataset and running stage-1 pretraining.
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "m3/error.h"
#include "m3/file_io.h"
#include "m3/model.h"
#include "m3/token_dataset.h"
#include "m3/trainer.h"

namespace m3::cli {

void register_data(CLI::App& app) {
  auto* cmd = app.add_subcommand("data", "Training data tools");
  cmd->require_subcommand(1);
  auto* tok = cmd->add_subcommand(
      "tokenize", "Tokenize a corpus (.jsonl with a \"text\" field per line, or .txt/.md files) into binary shards with a validation split");
  struct Opts {
    std::vector<std::string> inputs;
    std::string model, tokenizer, out;
    double val_fraction = 0.01;
    uint64_t seed = 1;
    int64_t shard_tokens = 64 << 20;
    int threads = 0;
  };
  auto o = std::make_shared<Opts>();
  tok->add_option("inputs", o->inputs, "Corpus files")->required();
  tok->add_option("-m,--model", o->model, "Use this model file's tokenizer");
  tok->add_option("--tokenizer", o->tokenizer, "Use this SentencePiece model (from `m3 tokenizer train`)");
  tok->add_option("-o,--output", o->out, "Dataset directory to create")->required();
  tok->add_option("--val-fraction", o->val_fraction, "Fraction of documents held out for validation")->capture_default_str();
  tok->add_option("--seed", o->seed, "Seed of the train/validation split")->capture_default_str();
  tok->add_option("--shard-tokens", o->shard_tokens, "Tokens per shard file at most")->capture_default_str();
  tok->add_option("-t,--threads", o->threads, "Threads (0 = all cores)")->capture_default_str();
  tok->callback([o] {
    if (o->model.empty() == o->tokenizer.empty()) throw Error("give exactly one of --model and --tokenizer");
    std::unique_ptr<Model> model;
    std::unique_ptr<Tokenizer> own;
    const Tokenizer* tokenizer = nullptr;
    if (!o->model.empty()) {
      model = Model::load(o->model, FileLoad::Map);
      if (!model->tokenizer()) throw Error(o->model + ": the model file carries no tokenizer");
      tokenizer = model->tokenizer();
    } else {
      own = Tokenizer::from_file(o->tokenizer);
      tokenizer = own.get();
    }
    BuildDatasetOptions opts;
    opts.val_fraction = o->val_fraction;
    opts.seed = o->seed;
    opts.shard_tokens = o->shard_tokens;
    opts.threads = o->threads;
    const DatasetSummary s = build_dataset(o->inputs, *tokenizer, o->out, opts);
    std::fprintf(stderr, "wrote %s: train %lld tokens in %lld documents, val %lld tokens in %lld documents (%.1f MiB of text, %.2f bytes/token)\n",
                 o->out.c_str(), static_cast<long long>(s.train_tokens), static_cast<long long>(s.train_documents),
                 static_cast<long long>(s.val_tokens), static_cast<long long>(s.val_documents),
                 static_cast<double>(s.bytes_of_text) / (1 << 20),
                 static_cast<double>(s.bytes_of_text) / static_cast<double>(std::max<int64_t>(1, s.train_tokens + s.val_tokens)));
  });
}

void register_train(CLI::App& app) {
  auto* cmd = app.add_subcommand("train", "Train a model on a token dataset: stage 1 (plain LM) or stage 2 (with memory), checkpoints, exact --resume");
  struct Opts {
    std::string config;
    bool resume = false, quiet = false;
    int64_t stop_after = -1;
    // Flag overrides of config keys (unset: the config's value).
    std::optional<std::string> preset, init, data, out, export_type, kb;
    std::optional<int> stage, batch, seq_len, grad_accum, threads, layers, dim, heads, kv_heads, head_dim, ffn, context;
    std::optional<int64_t> steps, tokens, warmup, eval_interval, eval_tokens, checkpoint_interval;
    std::optional<float> lr, min_lr;
    std::optional<uint64_t> seed;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("-c,--config", o->config, "TOML config ([model] [data] [train] [eval] [checkpoint] [output]; see docs/training.md)");
  cmd->add_flag("--resume", o->resume, "Continue the run in the output directory from its latest checkpoint");
  cmd->add_option("--preset", o->preset, "model.preset");
  cmd->add_option("--layers", o->layers, "model.layers");
  cmd->add_option("--dim", o->dim, "model.dim");
  cmd->add_option("--heads", o->heads, "model.heads");
  cmd->add_option("--kv-heads", o->kv_heads, "model.kv_heads");
  cmd->add_option("--head-dim", o->head_dim, "model.head_dim");
  cmd->add_option("--ffn", o->ffn, "model.ffn");
  cmd->add_option("--context", o->context, "model.context");
  cmd->add_option("--init", o->init, "model.init: start from this model file's weights");
  cmd->add_option("--data", o->data, "data.dir: token dataset (m3 data tokenize)");
  cmd->add_option("-o,--out", o->out, "output.dir: run directory");
  cmd->add_option("--export-type", o->export_type, "output.export_type of the final model.gguf");
  cmd->add_option("--stage", o->stage, "train.stage: 1 (plain LM) or 2 (with memory; needs --init and --kb)");
  cmd->add_option("--kb,--bank-source", o->kb, "memory.kb: knowledge base the stage-2 chunks retrieve from");
  cmd->add_option("-b,--batch", o->batch, "train.batch");
  cmd->add_option("--seq-len", o->seq_len, "train.seq_len");
  cmd->add_option("--grad-accum", o->grad_accum, "train.grad_accum");
  cmd->add_option("--steps", o->steps, "train.steps");
  cmd->add_option("--tokens", o->tokens, "train.tokens (when steps is 0)");
  cmd->add_option("--lr", o->lr, "train.lr (peak)");
  cmd->add_option("--min-lr", o->min_lr, "train.min_lr");
  cmd->add_option("--warmup", o->warmup, "train.warmup (steps)");
  cmd->add_option("--seed", o->seed, "train.seed");
  cmd->add_option("-t,--threads", o->threads, "train.threads (0 = all cores)");
  cmd->add_option("--eval-interval", o->eval_interval, "eval.interval (steps)");
  cmd->add_option("--eval-tokens", o->eval_tokens, "eval.tokens");
  cmd->add_option("--checkpoint-interval", o->checkpoint_interval, "checkpoint.interval (steps)");
  cmd->add_option("--stop-after", o->stop_after, "Stop (after a checkpoint) once this many steps are done; --resume continues");
  cmd->add_flag("-q,--quiet", o->quiet, "No progress bar");
  cmd->callback([o] {
    TrainConfig c;
    if (!o->config.empty()) {
      c = load_train_config(o->config);
    } else if (o->resume && o->out) {
      const std::string saved = (std::filesystem::path(*o->out) / "config.toml").string();
      if (std::filesystem::exists(saved)) c = load_train_config(saved);
    }
    auto take = [](auto& field, const auto& opt) {
      if (opt) field = *opt;
    };
    take(c.preset, o->preset);
    take(c.layers, o->layers);
    take(c.dim, o->dim);
    take(c.heads, o->heads);
    take(c.kv_heads, o->kv_heads);
    take(c.head_dim, o->head_dim);
    take(c.ffn, o->ffn);
    take(c.context, o->context);
    take(c.init, o->init);
    take(c.data, o->data);
    take(c.out, o->out);
    take(c.export_type, o->export_type);
    take(c.stage, o->stage);
    take(c.kb, o->kb);
    take(c.batch, o->batch);
    take(c.seq_len, o->seq_len);
    take(c.grad_accum, o->grad_accum);
    take(c.steps, o->steps);
    take(c.tokens, o->tokens);
    take(c.lr, o->lr);
    take(c.min_lr, o->min_lr);
    take(c.warmup, o->warmup);
    take(c.seed, o->seed);
    take(c.threads, o->threads);
    take(c.eval_interval, o->eval_interval);
    take(c.eval_tokens, o->eval_tokens);
    take(c.checkpoint_interval, o->checkpoint_interval);
    TrainRunOptions run;
    run.resume = o->resume;
    run.stop_after = o->stop_after;
    run.progress = !o->quiet;
    run.on_start = [](int64_t step) {
      if (step >= 0) std::fprintf(stderr, "resumed at step %lld\n", static_cast<long long>(step));
    };
    const TrainResult r = train(c, run);
    if (r.finished)
      std::fprintf(stderr, "done: %lld steps, val loss %.4f; model: %s\n", static_cast<long long>(r.steps_done),
                   static_cast<double>(r.final_val_loss), r.model_path.c_str());
    else
      std::fprintf(stderr, "stopped after %lld steps (checkpointed); continue with --resume\n", static_cast<long long>(r.steps_done));
  });
}

}  // namespace m3::cli
