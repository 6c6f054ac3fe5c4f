// The training loop (stage 1, and stage 2 with memory): data → TrainableModel → AdamW, with
// validation, a CSV log, atomic checkpoints and exact resume (m3/trainer.h).
#include "m3/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "m3/dtype.h"
#include "m3/error.h"
#include "m3/file_io.h"
#include "m3/loss_plot.h"
#include "m3/model.h"
#include "m3/progress.h"
#include "m3/thread_pool.h"
#include "m3/token_dataset.h"
#include "m3/tokenizer.h"
#include "train/memory_batcher.h"

namespace fs = std::filesystem;

namespace m3 {

namespace {

using Clock = std::chrono::steady_clock;
constexpr const char* kLogHeader = "step,tokens,lr,loss,val_loss,grad_norm,tokens_per_s,elapsed_s";

std::string checkpoint_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "step-%08lld", static_cast<long long>(step));
  return buf;
}

// The config fields that do not change the numbers a run produces: a resumed run may change them.
TrainConfig with_free_fields_of(TrainConfig c, const TrainConfig& from) {
  c.threads = from.threads;
  c.eval_interval = from.eval_interval;
  c.checkpoint_interval = from.checkpoint_interval;
  c.keep_checkpoints = from.keep_checkpoints;
  c.export_type = from.export_type;
  c.out = from.out;
  return c;
}

// The first line where two TOML texts differ, for "the config changed" errors.
std::string first_difference(const std::string& a, const std::string& b) {
  std::istringstream sa(a), sb(b);
  std::string la, lb;
  while (true) {
    const bool ga = static_cast<bool>(std::getline(sa, la));
    const bool gb = static_cast<bool>(std::getline(sb, lb));
    if (!ga && !gb) return "";
    if (!ga || !gb || la != lb) return "'" + (gb ? lb : std::string("<end>")) + "' was '" + (ga ? la : std::string("<end>")) + "'";
  }
}

std::string format_row(const TrainStep& s) {
  char buf[256];
  char val[32] = "";
  if (s.val_loss >= 0) std::snprintf(val, sizeof(val), "%.6f", static_cast<double>(s.val_loss));
  std::snprintf(buf, sizeof(buf), "%lld,%lld,%.6g,%.6f,%s,%.6g,%.1f,%.3f\n", static_cast<long long>(s.step),
                static_cast<long long>(s.tokens), static_cast<double>(s.lr), static_cast<double>(s.loss), val, s.grad_norm,
                s.tokens_per_s, s.elapsed_s);
  return buf;
}

// Keeps the header and the complete rows of steps <= last_step; everything after a crash's
// checkpoint is redone by the resumed run.
void truncate_log(const std::string& path, int64_t last_step) {
  std::string kept = std::string(kLogHeader) + "\n";
  if (fs::exists(path)) {
    const std::string text = read_file(path);
    size_t pos = text.find('\n');
    while (pos != std::string::npos && pos + 1 < text.size()) {
      const size_t end = text.find('\n', pos + 1);
      if (end == std::string::npos) break;  // a torn last row
      const std::string row = text.substr(pos + 1, end - pos - 1);
      char* rest = nullptr;
      const long long step = std::strtoll(row.c_str(), &rest, 10);
      if (rest != row.c_str() && step <= last_step) kept += row + "\n";
      pos = end;
    }
  }
  write_file_atomic(path, kept);
}

struct Checkpoint {
  int64_t step = 0;
  double elapsed_s = 0;
};

}  // namespace

ModelConfig resolve_model_config(const TrainConfig& c, int vocab_size) {
  ModelConfig m = model_preset(c.preset);
  auto set = [](int& field, int v) {
    if (v > 0) field = v;
  };
  set(m.n_layers, c.layers);
  set(m.dim, c.dim);
  set(m.n_heads, c.heads);
  set(m.n_kv_heads, c.kv_heads);
  set(m.head_dim, c.head_dim);
  set(m.ffn_dim, c.ffn);
  set(m.context_length, c.context);
  if (c.layers > 0) m.memory.memory_layers = m.n_layers / 2;
  if (c.memory_layers >= 0) m.memory.memory_layers = c.memory_layers;
  m.vocab_size = vocab_size;
  m.name = c.preset;
  m.validate();
  return m;
}

TrainResult train(const TrainConfig& config_in, const TrainRunOptions& options) {
  TrainConfig cfg = config_in;
  validate(cfg);
  const fs::path run = cfg.out;
  const fs::path ckpt_dir = run / "checkpoints";
  const std::string log_path = (run / "log.csv").string();
  const std::string config_path = (run / "config.toml").string();

  // ---- the run directory: a new run must not overwrite one; a resumed run must be the same run.
  if (options.resume) {
    if (!fs::exists(config_path)) throw Error(run.string() + ": no run to resume (no config.toml); start it without --resume");
    const TrainConfig saved = load_train_config(config_path);
    const std::string a = to_toml(with_free_fields_of(saved, cfg)), b = to_toml(cfg);
    if (a != b)
      throw Error(run.string() + ": the config differs from the run's (" + first_difference(a, b) +
                  "); only threads, eval/checkpoint intervals, export type may change on --resume");
  } else if (fs::exists(config_path) || fs::exists(log_path)) {
    throw Error(run.string() + ": already holds a run (config.toml); continue it with --resume or choose another output directory");
  }

  // ---- data and model, all checked before the first step.
  TokenDataset data(cfg.data);
  ModelConfig mc;
  std::unique_ptr<TrainableModel> model;
  std::unique_ptr<Model> init;  // stage 2 keeps it: its tokenizer splits and queries the knowledge base
  if (!cfg.init.empty()) {
    init = Model::load(cfg.init);
    mc = init->config();
    if (mc.vocab_size != static_cast<int>(data.vocab_size()))
      throw Error(cfg.init + ": the model's vocabulary has " + std::to_string(mc.vocab_size) + " tokens, the dataset " + cfg.data +
                  " was tokenized for " + std::to_string(data.vocab_size()));
    if (init->tokenizer() && tokenizer_hash(*init->tokenizer()) != data.tokenizer_hash())
      throw Error(cfg.init + ": the model's tokenizer is not the one dataset " + cfg.data + " was tokenized with");
    model = std::make_unique<TrainableModel>(*init);
  } else {
    mc = resolve_model_config(cfg, static_cast<int>(data.vocab_size()));
  }
  if (cfg.seq_len > mc.context_length)
    throw Error("train.seq_len = " + std::to_string(cfg.seq_len) + " exceeds the model's context length " +
                std::to_string(mc.context_length));
  std::unique_ptr<MemoryBatcher> batcher;
  if (cfg.stage == 2) {
    const MemoryConfig& mem = mc.memory;
    if (mem.memory_layers <= 0) throw Error(cfg.init + ": the model has no memory layers; stage 2 needs them");
    if (!init->tokenizer()) throw Error(cfg.init + ": the model has no tokenizer; stage 2 needs it to retrieve");
    const int64_t p = static_cast<int64_t>(init->tokenizer()->prefix_tokens(mem.prefix_text).size());
    if (p + mem.reference_length + cfg.seq_len > mc.context_length)
      throw Error("train.seq_len = " + std::to_string(cfg.seq_len) + ": with the prefix (" + std::to_string(p) +
                  ") and the memory window (" + std::to_string(mem.reference_length) + ") it exceeds the model's context length " +
                  std::to_string(mc.context_length));
  }
  WindowSampler sampler(data.train(), cfg.seq_len, cfg.seed);
  const int64_t total_steps =
      cfg.steps > 0 ? cfg.steps : (cfg.tokens + cfg.tokens_per_step() - 1) / cfg.tokens_per_step();
  const int64_t val_windows =
      data.val().size() > static_cast<size_t>(cfg.seq_len)
          ? std::max<int64_t>(1, std::min<int64_t>(cfg.eval_tokens / cfg.seq_len, (static_cast<int64_t>(data.val().size()) - 1) / cfg.seq_len))
          : 0;
  if (cfg.eval_tokens > 0 && val_windows == 0)
    throw Error(cfg.data + ": the validation split has " + std::to_string(data.val().size()) +
                " tokens, fewer than one window of seq_len + 1; rebuild with a larger val fraction or set eval.tokens = 0");

  ThreadPool pool(cfg.threads > 0 ? cfg.threads : 0);
  set_blas_threads(1);
  if (!model) model = std::make_unique<TrainableModel>(mc, cfg.seed);
  AdamWConfig ac;
  ac.beta1 = cfg.beta1;
  ac.beta2 = cfg.beta2;
  ac.weight_decay = cfg.weight_decay;
  ac.grad_clip = cfg.grad_clip;
  auto adam = std::make_unique<AdamW>(*model, ac);
  WSDSchedule schedule{cfg.lr, cfg.min_lr, cfg.warmup, total_steps, cfg.decay_fraction};

  // ---- start or restore.
  Checkpoint start;
  TrainResult result;
  if (options.resume && fs::exists(ckpt_dir / "latest")) {
    std::string name = read_file((ckpt_dir / "latest").string());
    while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
    const fs::path dir = ckpt_dir / name;
    auto saved = Model::load((dir / "model.gguf").string());
    if (saved->config().summary() != mc.summary())
      throw Error((dir / "model.gguf").string() + ": checkpoint shape " + saved->config().summary() + " differs from the run's " + mc.summary());
    model = std::make_unique<TrainableModel>(*saved);
    adam = std::make_unique<AdamW>(*model, ac);
    adam->load((dir / "optimizer.bin").string());
    try {
      const auto st = nlohmann::json::parse(read_file((dir / "state.json").string()));
      start.step = st.at("step").get<int64_t>();
      start.elapsed_s = st.at("elapsed_s").get<double>();
      if (st.at("seed").get<uint64_t>() != cfg.seed) throw Error((dir / "state.json").string() + ": seed differs from the config's");
    } catch (const nlohmann::json::exception& e) {
      throw Error((dir / "state.json").string() + ": malformed checkpoint state (" + std::string(e.what()) + ")");
    }
    truncate_log(log_path, start.step);
    result.resumed_at = start.step;
  } else {
    fs::create_directories(ckpt_dir);
    write_file_atomic(config_path, to_toml(cfg));
    truncate_log(log_path, 0);
  }
  model->set_thread_pool(&pool);
  if (cfg.stage == 2) {
    batcher = std::make_unique<MemoryBatcher>(*init, cfg.kb, (run / "kb").string(), cfg.retrieve_k, cfg.references_per_chunk,
                                              pool.size());
    if (options.progress)
      std::fprintf(stderr, "stage 2: %lld references from %s\n", static_cast<long long>(batcher->reference_count()), cfg.kb.c_str());
  }
  // One micro-batch: with memory in stage 2.
  auto step_loss = [&](const int32_t* in, const int32_t* tg, int b, int t, int64_t denominator, bool backward) -> float {
    if (batcher) {
      const MemoryBatch mb = batcher->make(in, tg, b, t, &pool);
      return backward ? model->memory_forward_backward(mb, denominator) : model->memory_loss(mb);
    }
    return backward ? model->forward_backward(in, tg, b, t, denominator) : model->loss(in, tg, b, t);
  };
  if (options.on_start) options.on_start(result.resumed_at);
  const std::string tokenizer_proto = data.tokenizer_proto();

  auto save_checkpoint = [&](int64_t step, double elapsed) {
    const std::string name = checkpoint_name(step);
    const fs::path tmp = ckpt_dir / (name + ".tmp"), dir = ckpt_dir / name;
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    save_model((tmp / "model.gguf").string(), mc, tokenizer_proto, model->export_tensors());
    write_file_atomic((tmp / "optimizer.bin").string(), adam->save_state());
    const nlohmann::json st = {{"step", step}, {"cursor", step * cfg.batch * cfg.grad_accum}, {"seed", cfg.seed},
                               {"elapsed_s", elapsed}, {"tokens", step * cfg.tokens_per_step()}};
    write_file_atomic((tmp / "state.json").string(), st.dump(2) + "\n");
    fsync_path(log_path, false);
    fs::remove_all(dir);
    fs::rename(tmp, dir);
    fsync_path(ckpt_dir.string(), true);
    write_file_atomic((ckpt_dir / "latest").string(), name + "\n");
    // Keep the newest keep_checkpoints complete checkpoints.
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(ckpt_dir)) {
      const std::string n = e.path().filename().string();
      if (e.is_directory() && n.rfind("step-", 0) == 0 && n.find(".tmp") == std::string::npos) names.push_back(n);
    }
    std::sort(names.begin(), names.end());
    for (size_t i = 0; i + static_cast<size_t>(cfg.keep_checkpoints) < names.size(); ++i)
      if (names[i] != name) fs::remove_all(ckpt_dir / names[i]);
  };

  const int B = cfg.batch, T = cfg.seq_len, A = cfg.grad_accum;
  std::vector<int32_t> inputs(static_cast<size_t>(B) * T), targets(inputs.size());
  auto evaluate = [&]() -> float {
    double sum = 0;
    int64_t n = 0;
    for (int64_t w = 0; w < val_windows; w += B) {
      const int b = static_cast<int>(std::min<int64_t>(B, val_windows - w));
      for (int i = 0; i < b; ++i) {
        const int64_t first = (w + i) * T;
        std::copy_n(data.val().begin() + first, T, inputs.begin() + static_cast<int64_t>(i) * T);
        std::copy_n(data.val().begin() + first + 1, T, targets.begin() + static_cast<int64_t>(i) * T);
      }
      sum += static_cast<double>(step_loss(inputs.data(), targets.data(), b, T, 0, false)) * b;
      n += b;
    }
    return static_cast<float>(sum / static_cast<double>(n));
  };

  std::FILE* log = std::fopen(log_path.c_str(), "ab");
  if (!log) throw Error(log_path + ": cannot open the training log for appending");
  struct Closer {
    std::FILE* f;
    ~Closer() { std::fclose(f); }
  } closer{log};

  const int64_t stop = options.stop_after >= 0 ? std::min(options.stop_after, total_steps) : total_steps;
  ProgressBar bar("train", total_steps, "step", start.step);
  const auto t_run = Clock::now();
  int64_t step = start.step;
  float val_loss = -1;
  while (step < stop) {
    const auto t0 = Clock::now();
    model->zero_grad();
    double loss_sum = 0;
    for (int a = 0; a < A; ++a) {
      sampler.fill((step * A + a) * B, B, inputs.data(), targets.data());
      loss_sum += step_loss(inputs.data(), targets.data(), B, T, static_cast<int64_t>(A) * B * T, true);
    }
    const float lr = schedule.lr(step);
    const double norm = adam->step(*model, lr);
    const double step_s = std::chrono::duration<double>(Clock::now() - t0).count();
    ++step;
    const float loss = static_cast<float>(loss_sum / A);
    if (!std::isfinite(loss)) throw Error("training diverged at step " + std::to_string(step) + " (loss is " + std::to_string(loss) + "): lower train.lr");
    TrainStep rec;
    rec.step = step;
    rec.tokens = step * cfg.tokens_per_step();
    rec.lr = lr;
    rec.loss = loss;
    rec.grad_norm = norm;
    rec.tokens_per_s = static_cast<double>(cfg.tokens_per_step()) / step_s;
    const bool eval_now = val_windows > 0 && ((cfg.eval_interval > 0 && step % cfg.eval_interval == 0) || step == total_steps);
    if (eval_now) val_loss = rec.val_loss = evaluate();
    rec.elapsed_s = start.elapsed_s + std::chrono::duration<double>(Clock::now() - t_run).count();
    const std::string row = format_row(rec);
    if (std::fwrite(row.data(), 1, row.size(), log) != row.size() || std::fflush(log) != 0)
      throw Error(log_path + ": cannot append to the training log");
    if (options.on_step) options.on_step(rec);
    if (options.progress) {
      char extra[160];
      std::snprintf(extra, sizeof(extra), "loss %.3f%s lr %.2e %.1fk tok/s", static_cast<double>(loss),
                    val_loss >= 0 ? (" val " + std::to_string(val_loss).substr(0, 5)).c_str() : "", static_cast<double>(lr),
                    rec.tokens_per_s / 1000.0);
      bar.update(step, extra);
    }
    if ((cfg.checkpoint_interval > 0 && step % cfg.checkpoint_interval == 0) || step == stop)
      save_checkpoint(step, rec.elapsed_s);
  }
  if (options.progress) bar.finish();
  if (batcher && options.progress) {
    const MemoryBatcher::Stats& st = batcher->stats();
    std::fprintf(stderr, "stage 2: %lld of %lld chunks read a reference of their own; %lld hits skipped as leaks (overlap > 0.9)\n",
                 static_cast<long long>(st.with_reference), static_cast<long long>(st.chunks),
                 static_cast<long long>(st.leaks_skipped));
  }
  result.steps_done = step;
  result.final_val_loss = val_loss;
  result.finished = step >= total_steps;
  if (result.finished) {
    const std::string out = (run / "model.gguf").string();
    const DType type = *dtype_from_name(cfg.export_type);
    if (type == DType::F32) {
      save_model(out, mc, tokenizer_proto, model->export_tensors());
    } else {
      const std::string tmp = out + ".f32.tmp";
      save_model(tmp, mc, tokenizer_proto, model->export_tensors());
      quantize_model(tmp, out, type);
      fs::remove(tmp);
    }
    result.model_path = out;
    PlotOptions plot;
    plot.title = "stage " + std::to_string(cfg.stage) + ": " + run.filename().string();
    plot.smooth = static_cast<int>(std::clamp<int64_t>(total_steps / 50, 1, 50));
    write_file_atomic((run / "loss.svg").string(), render_loss_svg({read_loss_log(log_path)}, plot));
  }
  return result;
}

}  // namespace m3
