// Basic layers, as torch.nn and x-transformers define them (nn/layers.cpp):
// Linear, LayerNorm, RMSNorm, ScaleNorm, FeedForward.
//
// Norms follow x-transformers, not torch.nn: no bias, and with unit_offset
// (AttentionLayers' default, norm_add_unit_offset) the stored gain is
// gamma' = gamma - 1, initialised to 0, so weight decay pulls the gain
// towards 1 rather than 0.
#pragma once

#include <string>

#include <loom/nn/module.h>

namespace loom::nn {

// y = x Wᵀ + b, W (out, in). PyTorch's init: W and b uniform in ±1/√in.
class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true);
  Tensor forward(const Tensor& x) const;

  int64_t in_features, out_features;
  Tensor weight, bias;  // bias undefined when bias = false
};

// Zeroes each element with probability p in training mode and scales the
// rest by 1 / (1 - p); the identity in eval mode (torch.nn.Dropout).
class Dropout : public Module {
 public:
  explicit Dropout(double p = 0.5);
  Tensor forward(const Tensor& x) const;
  double p;
};

// (x - mean) / sqrt(var + 1e-5) * (gamma + offset); parameter `gamma`.
class LayerNorm : public Module {
 public:
  explicit LayerNorm(int64_t dim, bool unit_offset = false);
  Tensor forward(const Tensor& x) const;

  int64_t dim;
  bool unit_offset;
  Tensor gamma;
};

// x / max(‖x‖₂, 1e-12) · √dim · (g + offset), per row; parameter `g` (dim).
// ScaleNorm is the same with a single gain `g` (1).
class RMSNorm : public Module {
 public:
  explicit RMSNorm(int64_t dim, bool unit_offset = false, bool scalar_gain = false);
  Tensor forward(const Tensor& x) const;

  int64_t dim;
  bool unit_offset;
  Tensor g;
};
std::shared_ptr<RMSNorm> make_scale_norm(int64_t dim, bool unit_offset = false);

// x-transformers' FeedForward: Linear(dim, mult·dim) → activation
// [→ LayerNorm] → Dropout → Linear(mult·dim, dim_out). With glu the first
// Linear produces 2·mult·dim features [value | gate] and the block computes
// value · act(gate). Activation: GELU (erf), or SiLU (swish), or ReLU²
// (relu_squared). Parameter names as x-transformers' `ff.0.0.weight`,
// `ff.0.proj.weight` (glu), `ff.1.gamma` (post_act_ln), `ff.2.weight`.
struct FeedForwardConfig {
  int64_t dim = 512;
  int64_t dim_out = 0;  // 0 = dim
  double mult = 4;
  bool glu = false;
  bool swish = false;
  bool relu_squared = false;
  bool post_act_ln = false;
  double dropout = 0.0;
  bool no_bias = false;
  bool zero_init_output = false;
};

class FeedForward : public Module {
 public:
  explicit FeedForward(const FeedForwardConfig& config);
  Tensor forward(const Tensor& x) const;

  FeedForwardConfig config;
  std::shared_ptr<Linear> proj_in, proj_out;
  std::shared_ptr<LayerNorm> post_act_norm;  // null unless post_act_ln

 private:
  Tensor activation(const Tensor& x) const;
};

}  // namespace loom::nn
