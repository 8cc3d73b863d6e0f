#include <loom/train/optim.h>

#include <cmath>

#include <loom/core/autograd.h>
#include <loom/core/error.h>
#include <loom/core/parallel.h>
#include <loom/ops/kernels/kernels.h>
#include <loom/ops/ops.h>

namespace loom {

namespace {
// Runs f(first, end) over a parameter's elements, threaded above the grain.
template <class F>
void over_elements(int64_t n, F f) {
  parallel_for(n, 8, [&](int64_t b, int64_t e) { f(b, e); });
}

float* data_of(const Tensor& t, const char* op, const std::string& name) {
  LOOM_CHECK(t.dtype() == kFloat32 && t.is_contiguous(), op, ": parameter '", name,
             "' must be a contiguous float32 tensor");
  return t.data_ptr<float>();
}
}  // namespace

Optimizer::Optimizer(NamedParams params) : params_(std::move(params)), state_(params_.size()) {
  for (const auto& [name, p] : params_)
    LOOM_CHECK(p.defined() && p.requires_grad(), "Optimizer: parameter '", name, "' must be defined and require grad");
}

void Optimizer::zero_grad() {
  for (auto& [name, p] : params_) p.mutable_grad() = Tensor();
}

Tensor& Optimizer::state(size_t i, const std::string& name) {
  for (auto& [n, t] : state_[i])
    if (n == name) return t;
  state_[i].emplace_back(name, zeros(params_[i].second.sizes()));
  return state_[i].back().second;
}

NamedParams Optimizer::state_dict() const {
  NamedParams out = {{"step", scalar_tensor(double(steps_), kInt64)}};
  for (size_t i = 0; i < params_.size(); ++i)
    for (const std::string& name : state_names()) {
      Tensor t;
      for (const auto& [n, s] : state_[i])
        if (n == name) t = s;
      // Not created yet (no gradient so far): zeros, which is what a step would start from.
      out.emplace_back(params_[i].first + "." + name, t.defined() ? t : zeros(params_[i].second.sizes()));
    }
  return out;
}

void Optimizer::load_state_dict(const NamedParams& state) {
  const char* op = "Optimizer::load_state_dict";
  std::vector<std::vector<std::pair<std::string, Tensor>>> loaded(params_.size());
  bool has_step = false;
  int64_t steps = 0;
  for (const auto& [key, t] : state) {
    if (key == "step") {
      LOOM_CHECK(t.dtype() == kInt64 && t.dim() == 0 && t.item<int64_t>() >= 0, op,
                 ": 'step' must be a non-negative int64 scalar, got ", dtype_name(t.dtype()), " ", t.sizes());
      steps = t.item<int64_t>(), has_step = true;
      continue;
    }
    bool found = false;
    for (size_t i = 0; i < params_.size() && !found; ++i) {
      const std::string& p = params_[i].first;
      if (key.size() > p.size() + 1 && key.compare(0, p.size(), p) == 0 && key[p.size()] == '.' &&
          key.find('.', p.size() + 1) == std::string::npos) {
        LOOM_CHECK(t.sizes() == params_[i].second.sizes() && t.dtype() == kFloat32, op, ": '", key, "' is ",
                   dtype_name(t.dtype()), " ", t.sizes(), ", the parameter float32 ", params_[i].second.sizes());
        loaded[i].emplace_back(key.substr(p.size() + 1), t.contiguous().clone());
        found = true;
      }
    }
    LOOM_CHECK(found, op, ": '", key, "' belongs to no parameter of this optimizer");
  }
  // An entry missing would silently restart that moment from zero: refuse it.
  LOOM_CHECK(has_step, op, ": the state has no 'step' (incomplete optimizer state)");
  for (size_t i = 0; i < params_.size(); ++i)
    for (const std::string& name : state_names()) {
      bool present = false;
      for (const auto& [n, t] : loaded[i]) present = present || n == name;
      LOOM_CHECK(present, op, ": the state has no '", params_[i].first, ".", name, "' (incomplete optimizer state)");
    }
  state_ = std::move(loaded);
  steps_ = steps;
}

// ---- SGD ---------------------------------------------------------------------
//   g ← g + wd·p
//   b ← g (first step), else b ← μ·b + (1 − dampening)·g      (with momentum μ)
//   g ← g + μ·b (Nesterov), else g ← b
//   p ← p − lr·g

SGD::SGD(NamedParams params, const SGDOptions& o) : Optimizer(std::move(params)), options(o) {
  LOOM_CHECK(o.lr >= 0 && o.momentum >= 0 && o.weight_decay >= 0, "SGD: lr, momentum and weight_decay must be >= 0");
  LOOM_CHECK(!o.nesterov || (o.momentum > 0 && o.dampening == 0), "SGD: nesterov needs momentum > 0 and dampening 0");
  lr_ = o.lr;
}

std::vector<std::string> SGD::state_names() const {
  if (options.momentum > 0) return {"momentum_buffer"};
  return {};
}

void SGD::step() {
  NoGradGuard no_grad;
  const float lr = float(lr_), mu = float(options.momentum), damp = float(options.dampening),
              wd = float(options.weight_decay);
  const bool first = steps_ == 0, nesterov = options.nesterov;
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& [name, p] = params_[i];
    if (!p.grad().defined()) continue;
    Tensor grad = p.grad().contiguous();
    float* w = data_of(p, "SGD", name);
    const float* g = grad.data_ptr<float>();
    float* buf = mu > 0 ? state(i, "momentum_buffer").data_ptr<float>() : nullptr;
    const kernels::SGDStep s{lr, mu, damp, wd, first, nesterov};
    over_elements(p.numel(), [&](int64_t b, int64_t e) {
      kernels::table().sgd_update(w + b, g + b, buf ? buf + b : nullptr, e - b, s);
    });
  }
  ++steps_;
}

// ---- Adam / AdamW ------------------------------------------------------------
//   p ← p·(1 − lr·wd)                        (AdamW: decoupled decay)
//   g ← g + wd·p                             (Adam: L2)
//   m ← β₁m + (1 − β₁)g      v ← β₂v + (1 − β₂)g²
//   p ← p − lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)

Adam::Adam(NamedParams params, const AdamOptions& o, bool decoupled_)
    : Optimizer(std::move(params)), options(o), decoupled(decoupled_) {
  LOOM_CHECK(o.lr >= 0 && o.eps >= 0 && o.weight_decay >= 0, "Adam: lr, eps and weight_decay must be >= 0");
  LOOM_CHECK(o.beta1 >= 0 && o.beta1 < 1 && o.beta2 >= 0 && o.beta2 < 1, "Adam: betas must be in [0, 1), got ", o.beta1,
             ", ", o.beta2);
  lr_ = o.lr;
}

AdamW::AdamW(NamedParams params, AdamOptions o) : Adam(std::move(params), o, true) {}

std::vector<std::string> Adam::state_names() const { return {"exp_avg", "exp_avg_sq"}; }

void Adam::step() {
  NoGradGuard no_grad;
  ++steps_;
  const double t = double(steps_);
  const float b1 = float(options.beta1), b2 = float(options.beta2), eps = float(options.eps);
  const float step_size = float(lr_ / (1 - std::pow(options.beta1, t)));
  const float inv_sqrt_bc2 = float(1 / std::sqrt(1 - std::pow(options.beta2, t)));
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& [name, p] = params_[i];
    if (!p.grad().defined()) continue;
    Tensor grad = p.grad().contiguous();
    float* w = data_of(p, "Adam", name);
    const float* g = grad.data_ptr<float>();
    float* m = state(i, "exp_avg").data_ptr<float>();
    float* v = state(i, "exp_avg_sq").data_ptr<float>();
    const bool decays = !decoupled || options.decay_1d || p.dim() >= 2;
    const float wd = decays ? float(options.weight_decay) : 0.0f;
    const float shrink = decoupled ? float(1 - lr_ * wd) : 1.0f, l2 = decoupled ? 0.0f : wd;
    const kernels::AdamStep s{b1, b2, eps, step_size, inv_sqrt_bc2, shrink, l2};
    over_elements(p.numel(), [&](int64_t b, int64_t e) {
      kernels::table().adam_update(w + b, g + b, m + b, v + b, e - b, s);
    });
  }
}

// ---- clipping and schedules ----------------------------------------------------

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  LOOM_CHECK(max_norm > 0, "clip_grad_norm: max_norm must be positive, got ", max_norm);
  NoGradGuard no_grad;
  // Σ g² in fixed chunks (the SIMD kernel, in double across chunks), the
  // chunks added in order: the same bits for any thread count and ISA.
  constexpr int64_t kChunk = 1 << 16;
  double total = 0;
  for (const Tensor& p : params) {
    if (!p.grad().defined()) continue;
    const Tensor g = p.grad().contiguous();
    const float* x = g.data_ptr<float>();
    const int64_t n = g.numel(), chunks = (n + kChunk - 1) / kChunk;
    std::vector<double> partial(static_cast<size_t>(chunks));
    parallel_for(chunks, kChunk, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c)
        partial[size_t(c)] = kernels::table().sum_squares(x + c * kChunk, std::min(kChunk, n - c * kChunk));
    });
    for (double s : partial) total += s;
  }
  const double norm = std::sqrt(total);
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1)
    for (const Tensor& p : params)
      if (p.grad().defined()) p.grad().mul_(float(coef));  // in place: no new gradient tensors
  return norm;
}

double LRSchedule::at(int64_t step) const {
  if (warmup_steps > 0 && step < warmup_steps) return max_lr * double(step + 1) / double(warmup_steps);
  if (decay == "constant") return max_lr;
  const double span = double(std::max<int64_t>(1, total_steps - warmup_steps));
  const double progress = std::min(1.0, double(step - warmup_steps) / span);
  if (decay == "linear") return max_lr + (min_lr - max_lr) * progress;
  LOOM_CHECK(decay == "cosine", "LRSchedule: decay must be \"cosine\", \"linear\" or \"constant\", got \"", decay, "\"");
  return min_lr + 0.5 * (max_lr - min_lr) * (1 + std::cos(M_PI * progress));
}

}  // namespace loom
