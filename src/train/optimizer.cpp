// AdamW, global-norm gradient clipping and the warmup-stable-decay learning-rate schedule.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "m3/error.h"
#include "m3/train.h"

namespace m3 {

double grad_norm(const TrainableModel& model) {
  const float* g = model.grads();
  double ss = 0;
  for (int64_t i = 0; i < model.size(); ++i) ss += double(g[i]) * g[i];
  return std::sqrt(ss);
}

double clip_grad_norm(TrainableModel& model, double max_norm) {
  const double norm = grad_norm(model);
  if (max_norm <= 0) return norm;
  // torch.nn.utils.clip_grad_norm_'s rule, including its 1e-6, so the oracle clips identically
  const double scale = max_norm / (norm + 1e-6);
  if (scale < 1.0) {
    float* g = model.grads();
    const float s = static_cast<float>(scale);
    for (int64_t i = 0; i < model.size(); ++i) g[i] *= s;
  }
  return norm;
}

// ---- AdamW --------------------------------------------------------------------------------------

AdamW::AdamW(const TrainableModel& model, const AdamWConfig& config)
    : config_(config), n_(model.size()), m_(static_cast<size_t>(n_)), v_(static_cast<size_t>(n_)) {
  for (const ParamTensor& t : model.tensors()) {
    // Norm gains (1-D) never decay: shrinking them only fights the normalization.
    const bool decay = !t.is_vector() && (config.decay_embeddings || t.name != "token_embd.weight");
    decay_.push_back(decay ? 1 : 0);
    ranges_.emplace_back(t.offset, t.size);
  }
}

double AdamW::step(TrainableModel& model, float lr) {
  if (model.size() != n_) throw Error("AdamW::step: the optimizer was built for another model");
  const double norm = clip_grad_norm(model, config_.grad_clip);
  ++t_;
  const float b1 = config_.beta1, b2 = config_.beta2, eps = config_.eps;
  const double bc1 = 1.0 - std::pow(double(b1), double(t_));
  const double bc2 = 1.0 - std::pow(double(b2), double(t_));
  const float step_size = static_cast<float>(lr / bc1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  float* p = model.params();
  const float* g = model.grads();
  for (size_t r = 0; r < ranges_.size(); ++r) {
    const float keep = decay_[r] ? 1.0f - lr * config_.weight_decay : 1.0f;
    const int64_t end = ranges_[r].first + ranges_[r].second;
    for (int64_t i = ranges_[r].first; i < end; ++i) {
      p[i] *= keep;  // decoupled weight decay, before the Adam step (PyTorch's order)
      m_[i] = b1 * m_[i] + (1.0f - b1) * g[i];
      v_[i] = b2 * v_[i] + (1.0f - b2) * g[i] * g[i];
      p[i] -= step_size * m_[i] / (std::sqrt(v_[i]) / bc2_sqrt + eps);
    }
  }
  return norm;
}

namespace {
constexpr char kMagic[8] = {'M', '3', 'A', 'D', 'A', 'M', 'W', '1'};
}  // namespace

std::string AdamW::save_state() const {
  std::string out(kMagic, sizeof(kMagic));
  const uint64_t n = static_cast<uint64_t>(n_);
  out.append(reinterpret_cast<const char*>(&n), sizeof(n));
  out.append(reinterpret_cast<const char*>(&t_), sizeof(t_));
  out.append(reinterpret_cast<const char*>(m_.data()), m_.size() * sizeof(float));
  out.append(reinterpret_cast<const char*>(v_.data()), v_.size() * sizeof(float));
  return out;
}

void AdamW::load_state(const std::string& bytes) {
  const size_t want = sizeof(kMagic) + 16 + 2 * static_cast<size_t>(n_) * sizeof(float);
  if (bytes.size() < sizeof(kMagic) || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0)
    throw Error("AdamW state: bad magic (expected M3ADAMW1)");
  uint64_t n;
  std::memcpy(&n, bytes.data() + 8, sizeof(n));
  if (n != static_cast<uint64_t>(n_) || bytes.size() != want)
    throw Error("AdamW state: holds " + std::to_string(n) + " parameters in " + std::to_string(bytes.size()) +
                " bytes, the model has " + std::to_string(n_) + " (" + std::to_string(want) + " bytes)");
  std::memcpy(&t_, bytes.data() + 16, sizeof(t_));
  std::memcpy(m_.data(), bytes.data() + 24, m_.size() * sizeof(float));
  std::memcpy(v_.data(), bytes.data() + 24 + m_.size() * sizeof(float), v_.size() * sizeof(float));
}

void AdamW::save(const std::string& path) const {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  const std::string bytes = save_state();
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw Error(path + ": cannot write the AdamW state");
}

void AdamW::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open the AdamW state");
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    load_state(ss.str());
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
}

// ---- warmup-stable-decay ------------------------------------------------------------------------

int64_t WSDSchedule::decay_start() const {
  const auto decay_steps = static_cast<int64_t>(std::llround(double(decay_fraction) * double(total_steps)));
  return std::max(warmup_steps, total_steps - decay_steps);
}

float WSDSchedule::lr(int64_t step) const {
  if (step < warmup_steps) return peak_lr * float(step + 1) / float(warmup_steps);
  const int64_t start = decay_start();
  if (step < start) return peak_lr;
  if (step < total_steps) {
    const double progress = double(step + 1 - start) / double(total_steps - start);
    return static_cast<float>(peak_lr + (double(min_lr) - peak_lr) * progress);
  }
  return min_lr;
}

}  // namespace m3
