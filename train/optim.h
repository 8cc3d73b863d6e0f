// Optimizers, learning-rate schedules and gradient clipping, as torch.optim
// (train/optim.cpp).
//
//   loom::AdamW opt(model.named_parameters(), {.lr = 3e-4, .weight_decay = 0.1});
//   loss.backward();
//   loom::clip_grad_norm(model.parameters(), 1.0);
//   opt.step();
//   opt.zero_grad();
//
// Each step is one fused loop over a parameter's elements (vectorised by the
// compiler, threaded above a size threshold); the update rule is written out
// above each step() in the language of the math.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <loom/core/tensor.h>

namespace loom {

using NamedParams = std::vector<std::pair<std::string, Tensor>>;

struct SGDOptions {
  double lr = 1e-2;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;  // L2, added to the gradient
  bool nesterov = false;
};

struct AdamOptions {
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  // Adam: L2 added to the gradient (PyTorch's default 0). AdamW: decoupled,
  // p -= lr · wd · p (PyTorch's default 0.01).
  double weight_decay = 0.0;
  // AdamW only: which parameters decay. By default those with two or more
  // dims (weights, embeddings); biases and norm gains (one dim) do not.
  bool decay_1d = false;
};

class Optimizer {
 public:
  explicit Optimizer(NamedParams params);
  virtual ~Optimizer() = default;
  virtual void step() = 0;
  void zero_grad();  // set to none, as PyTorch's default
  double lr() const { return lr_; }
  void set_lr(double lr) { lr_ = lr; }
  int64_t steps() const { return steps_; }
  // Everything needed to resume exactly: step count and per-parameter state,
  // named "<param>.<state>" (e.g. "layers.0.1.to_q.weight.exp_avg"); every
  // parameter has all of its state (zeros where no step has touched it yet).
  // load_state_dict refuses a state with an entry missing, of the wrong
  // shape or dtype, or belonging to no parameter.
  NamedParams state_dict() const;
  void load_state_dict(const NamedParams& state);
  // The state each parameter has: {"exp_avg", "exp_avg_sq"} for Adam.
  virtual std::vector<std::string> state_names() const = 0;

 protected:
  NamedParams params_;
  std::vector<std::vector<std::pair<std::string, Tensor>>> state_;  // per parameter
  double lr_ = 0;
  int64_t steps_ = 0;
  Tensor& state(size_t param, const std::string& name);
};

class SGD : public Optimizer {
 public:
  SGD(NamedParams params, const SGDOptions& options = {});
  void step() override;
  std::vector<std::string> state_names() const override;
  SGDOptions options;
};

class Adam : public Optimizer {
 public:
  Adam(NamedParams params, const AdamOptions& options = {}, bool decoupled = false);
  void step() override;
  std::vector<std::string> state_names() const override;
  AdamOptions options;
  bool decoupled;
};

// AdamW: Adam with decoupled weight decay (default 0.01, as PyTorch).
class AdamW : public Adam {
 public:
  AdamW(NamedParams params, AdamOptions options = {.weight_decay = 0.01});
};

// Scales all gradients so their global L2 norm is at most max_norm; returns
// the norm before clipping (torch.nn.utils.clip_grad_norm_).
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);

// Learning rate at `step` (0-based): linear warm-up from 0 over warmup_steps,
// then cosine (or linear) decay to min_lr at total_steps.
struct LRSchedule {
  double max_lr = 1e-3;
  double min_lr = 0.0;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  std::string decay = "cosine";  // "cosine", "linear" or "constant"
  double at(int64_t step) const;
};

}  // namespace loom
