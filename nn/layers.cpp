#include <loom/nn/layers.h>

#include <cmath>

#include <loom/core/error.h>
#include <loom/ops/ops.h>

namespace loom::nn {

namespace {
// Uniform in [-bound, bound) from the default generator.
Tensor uniform(Shape shape, double bound) { return rand(shape) * float(2 * bound) - float(bound); }
}  // namespace

// ---- Linear ------------------------------------------------------------------

Linear::Linear(int64_t in, int64_t out, bool with_bias) : in_features(in), out_features(out) {
  LOOM_CHECK(in > 0 && out > 0, "Linear: in_features and out_features must be positive, got ", in, " and ", out);
  // kaiming_uniform_(a = √5) gives bound √(6 / ((1 + 5) in)) = 1/√in; the bias uses 1/√in too.
  const double bound = 1.0 / std::sqrt(double(in));
  weight = register_parameter("weight", uniform({out, in}, bound));
  if (with_bias) bias = register_parameter("bias", uniform({out}, bound));
}

Tensor Linear::forward(const Tensor& x) const {
  LOOM_CHECK(x.dim() >= 1 && x.size(-1) == in_features, "Linear: expects input (..., ", in_features, "), got ",
             x.sizes());
  return linear(x, weight, bias);
}

// ---- Dropout -------------------------------------------------------------------

Dropout::Dropout(double p_) : p(p_) { LOOM_CHECK(p >= 0 && p < 1, "Dropout: p must be in [0, 1), got ", p); }

Tensor Dropout::forward(const Tensor& x) const { return dropout(x, p, is_training() && p > 0); }

// ---- norms -------------------------------------------------------------------

LayerNorm::LayerNorm(int64_t d, bool offset) : dim(d), unit_offset(offset) {
  LOOM_CHECK(d > 0, "LayerNorm: dim must be positive, got ", d);
  gamma = register_parameter("gamma", full({d}, offset ? 0.0 : 1.0));
}

Tensor LayerNorm::forward(const Tensor& x) const {
  LOOM_CHECK(x.dim() >= 1 && x.size(-1) == dim, "LayerNorm: expects input (..., ", dim, "), got ", x.sizes());
  return layer_norm(x, {dim}, unit_offset ? gamma + 1.0f : gamma);
}

RMSNorm::RMSNorm(int64_t d, bool offset, bool scalar_gain) : dim(d), unit_offset(offset) {
  LOOM_CHECK(d > 0, "RMSNorm: dim must be positive, got ", d);
  g = register_parameter("g", full({scalar_gain ? 1 : d}, offset ? 0.0 : 1.0));
}

Tensor RMSNorm::forward(const Tensor& x) const {
  LOOM_CHECK(x.dim() >= 1 && x.size(-1) == dim, "RMSNorm: expects input (..., ", dim, "), got ", x.sizes());
  // x / max(‖x‖, 1e-12) · √dim = x / sqrt(mean(x²)) for any row not near zero;
  // the fused rms_norm with eps = 1e-24 / dim (the clamp, squared, per
  // element) agrees with it to float precision and stays finite at x = 0.
  Tensor gain = unit_offset ? g + 1.0f : g;
  Tensor y = rms_norm(x, {dim}, Tensor(), 1e-24 / double(dim));
  return y * gain;
}

std::shared_ptr<RMSNorm> make_scale_norm(int64_t dim, bool unit_offset) {
  return std::make_shared<RMSNorm>(dim, unit_offset, true);
}

// ---- FeedForward -------------------------------------------------------------

namespace {
// x-transformers' GLU module: its Linear is named `proj`.
struct GLUProjection : Module {
  explicit GLUProjection(std::shared_ptr<Linear> proj) { register_module("proj", std::move(proj)); }
};
}  // namespace

FeedForward::FeedForward(const FeedForwardConfig& c) : config(c) {
  LOOM_CHECK(c.dim > 0 && c.mult > 0, "FeedForward: dim and mult must be positive, got dim = ", c.dim, ", mult = ", c.mult);
  LOOM_CHECK(c.dropout >= 0 && c.dropout < 1, "FeedForward: dropout must be in [0, 1), got ", c.dropout);
  if (config.dim_out == 0) config.dim_out = c.dim;
  const int64_t inner = int64_t(double(c.dim) * c.mult);
  auto ff = register_module("ff", std::make_shared<ModuleList>());
  if (c.glu) {
    proj_in = std::make_shared<Linear>(c.dim, 2 * inner, true);  // x-transformers' GLU always has a bias
    ff->append(std::make_shared<GLUProjection>(proj_in));
  } else {
    proj_in = std::make_shared<Linear>(c.dim, inner, !c.no_bias);
    auto seq = std::make_shared<ModuleList>();
    seq->append(proj_in);
    ff->append(seq);
  }
  if (c.post_act_ln) {
    post_act_norm = std::make_shared<LayerNorm>(inner);
    ff->append(post_act_norm);
  }
  ff->append(nullptr);  // Dropout: no parameters, but it holds an index
  proj_out = std::make_shared<Linear>(inner, config.dim_out, !c.no_bias);
  if (c.zero_init_output) {
    proj_out->weight.detach().fill_(0.0);
    if (proj_out->bias.defined()) proj_out->bias.detach().fill_(0.0);
  }
  ff->append(proj_out);
}

Tensor FeedForward::activation(const Tensor& x) const {
  if (config.relu_squared) return pow(relu(x), 2.0);
  if (config.swish) return silu(x);
  return gelu(x);
}

Tensor FeedForward::forward(const Tensor& x) const {
  Tensor h = proj_in->forward(x);
  if (config.glu) {
    std::vector<Tensor> parts = chunk(h, 2, -1);  // [value | gate]
    h = parts[0] * activation(parts[1]);
  } else {
    h = activation(h);
  }
  if (post_act_norm) h = post_act_norm->forward(h);
  h = dropout(h, config.dropout, is_training() && config.dropout > 0);
  return proj_out->forward(h);
}

}  // namespace loom::nn
