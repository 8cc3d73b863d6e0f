// Position encodings (see positional.h). Each is built from ops that carry
// their own gradients, so only the learned tables (T5's E, the absolute
// embedding, the sinusoid's scale) and the inputs of apply_rotary_pos_emb
// need no backward code here.
#include <loom/nn/positional.h>

#include <cmath>

#include <loom/core/autograd.h>
#include <loom/core/error.h>
#include <loom/nn/layers.h>
#include <loom/ops/ops.h>

namespace loom::nn {

namespace {

// f applied to each element of a float tensor that needs no gradient (angles
// and positions are inputs, not trained). There is no sin/cos op in ops/
// because nothing else needs one.
template <class F>
Tensor map_no_grad(const char* op, const Tensor& x, F f) {
  LOOM_CHECK(!(is_grad_enabled() && x.requires_grad()), op, ": positions and angles must not require grad");
  std::vector<float> v = x.to(kFloat32).contiguous().to_vector<float>();
  for (float& e : v) e = f(e);
  return from_vector(v, x.sizes());
}

Tensor as_positions(const char* op, const Tensor& pos) {
  LOOM_CHECK(pos.defined(), op, ": positions are undefined");
  LOOM_CHECK(pos.dtype() != kBool, op, ": positions must be numbers, got a bool tensor of shape ", pos.sizes());
  return pos.to(kFloat32);
}

}  // namespace

// ---- T5 relative position bias ---------------------------------------------

RelativePositionBias::RelativePositionBias(const RelativePositionBiasOptions& o) : options(o) {
  LOOM_CHECK(o.heads > 0, "RelativePositionBias: heads must be positive, got ", o.heads);
  LOOM_CHECK(o.num_buckets >= (o.causal ? 2 : 4), "RelativePositionBias: num_buckets must be at least ",
             o.causal ? 2 : 4, (o.causal ? " (causal)" : " (bidirectional)"), ", got ", o.num_buckets);
  LOOM_CHECK(o.num_buckets <= o.max_distance, "RelativePositionBias: num_buckets (", o.num_buckets,
             ") must not exceed max_distance (", o.max_distance, ")");
  relative_attention_bias = register_module("relative_attention_bias", std::make_shared<Embedding>(o.num_buckets, o.heads));
}

// n = q_pos - k_pos (positive: the key is in the past).
//   causal:        n <- max(n, 0), all future keys share bucket 0
//   bidirectional: half the buckets each side; future keys are offset by nb/2
// Then, with me = nb / 2: bucket n when n < me (exact), else logarithmic up
// to max_distance, me + trunc(ln(n / me) / ln(md / me) * (nb - me)), capped at
// nb - 1. The log term is computed in float32, as PyTorch does.
Tensor RelativePositionBias::bucket(const Tensor& relative_position, bool causal, int64_t num_buckets,
                                    int64_t max_distance) {
  LOOM_CHECK(relative_position.dtype() == kInt64, "RelativePositionBias::bucket: expects int64 positions, got ",
             dtype_name(relative_position.dtype()));
  std::vector<int64_t> rel = relative_position.contiguous().to_vector<int64_t>();
  int64_t nb = num_buckets;
  if (!causal) nb /= 2;
  const int64_t max_exact = nb / 2;
  const float log_ratio = float(std::log(double(max_distance) / double(max_exact)));
  for (int64_t& r : rel) {
    int64_t n = -r, ret = 0;
    if (causal) {
      n = std::max<int64_t>(n, 0);
    } else {
      if (n < 0) ret = nb;
      n = std::abs(n);
    }
    if (n < max_exact) {
      ret += n;
    } else {
      const float large = std::log(float(n) / float(max_exact)) / log_ratio * float(nb - max_exact);
      ret += std::min<int64_t>(max_exact + int64_t(large), nb - 1);
    }
    r = ret;
  }
  return from_vector(rel, relative_position.sizes());
}

Tensor RelativePositionBias::forward(int64_t i, int64_t j) const {
  LOOM_CHECK(i >= 0 && i <= j, "RelativePositionBias: needs 0 <= i <= j for right-aligned queries, got i = ", i,
             ", j = ", j);
  return forward(arange(j - i, j), arange(j));
}

Tensor RelativePositionBias::forward(const Tensor& q_pos, const Tensor& k_pos) const {
  LOOM_CHECK((q_pos.dim() == 1 || q_pos.dim() == 2) && q_pos.dim() == k_pos.dim() && q_pos.dtype() == kInt64 &&
                 k_pos.dtype() == kInt64 && (q_pos.dim() == 1 || q_pos.size(0) == k_pos.size(0)),
             "RelativePositionBias: positions must be int64, both (n) or both (b, n), got q_pos ", q_pos.sizes(), " ",
             dtype_name(q_pos.dtype()), " and k_pos ", k_pos.sizes(), " ", dtype_name(k_pos.dtype()));
  Tensor rel = k_pos.unsqueeze(-2) - q_pos.unsqueeze(-1);  // (.., i, j): k_pos - q_pos
  Tensor ids = bucket(rel, options.causal, options.num_buckets, options.max_distance);
  Tensor values = relative_attention_bias->forward(ids);  // (.., i, j, h)
  return (rel.dim() == 2 ? values.permute({2, 0, 1}) : values.permute({0, 3, 1, 2})) * options.scale;
}

// ---- Dynamic position bias --------------------------------------------------

namespace {
// torch.nn.LayerNorm(dim): weight and bias, eps 1e-5 (x-transformers uses it
// in the dynamic position bias's later layers, its own bias-less LayerNorm
// in the first).
struct TorchLayerNorm : Module {
  explicit TorchLayerNorm(int64_t dim) {
    weight = register_parameter("weight", ones({dim}));
    bias = register_parameter("bias", zeros({dim}));
  }
  Tensor weight, bias;
};
}  // namespace

DynamicPositionBias::DynamicPositionBias(const DynamicPositionBiasOptions& o) : options(o) {
  LOOM_CHECK(o.depth >= 1, "DynamicPositionBias: depth must be >= 1, got ", o.depth);
  LOOM_CHECK(o.dim > 0 && o.heads > 0, "DynamicPositionBias: dim and heads must be positive, got ", o.dim, " and ", o.heads);
  auto mlp = register_module("mlp", std::make_shared<ModuleList>());
  for (int64_t l = 0; l < o.depth; ++l) {  // Sequential(Linear, [norm], SiLU)
    auto seq = std::make_shared<ModuleList>();
    linears.push_back(std::make_shared<Linear>(l == 0 ? 1 : o.dim, o.dim));
    seq->append(linears.back());
    if (o.norm) {
      norms.push_back(l == 0 ? std::shared_ptr<Module>(std::make_shared<LayerNorm>(o.dim))
                             : std::shared_ptr<Module>(std::make_shared<TorchLayerNorm>(o.dim)));
      seq->append(norms.back());
    }
    mlp->append(seq);
  }
  linears.push_back(std::make_shared<Linear>(o.dim, o.heads));
  mlp->append(linears.back());
}

Tensor DynamicPositionBias::forward(int64_t i, int64_t j) const {
  LOOM_CHECK(i >= 0 && i <= j && j > 0, "DynamicPositionBias: needs 0 <= i <= j, got i = ", i, ", j = ", j);
  // The MLP once per distance, -(j - 1) .. j - 1, then gathered into (i, j).
  Tensor d = arange(double(1 - j), double(j), 1.0, kFloat32).unsqueeze(-1);
  if (options.log_distance) d = map_no_grad("DynamicPositionBias", d, [](float v) {
      return (v > 0 ? 1.0f : v < 0 ? -1.0f : 0.0f) * std::log(std::abs(v) + 1.0f);
    });
  Tensor h = d;
  for (size_t l = 0; l + 1 < linears.size(); ++l) {
    h = linears[l]->forward(h);
    if (options.norm) {
      if (auto ln = std::dynamic_pointer_cast<LayerNorm>(norms[l])) h = ln->forward(h);
      else {
        auto t = std::static_pointer_cast<TorchLayerNorm>(norms[l]);
        h = layer_norm(h, {options.dim}, t->weight, t->bias, 1e-5);
      }
    }
    h = silu(h);
  }
  h = linears.back()->forward(h);  // (2j - 1, heads)
  // query at j - i + r, key c: distance (j - i + r) - c, row (j - i + r) - c + j - 1
  Tensor q = arange(j - i, j).view({i, 1}), k = arange(j).view({1, j});
  Tensor rows = (q - k + (j - 1)).reshape({i * j});
  return index_select(h, 0, rows).view({i, j, options.heads}).permute({2, 0, 1});
}

// ---- ALiBi ---------------------------------------------------------------

std::vector<double> AlibiPositionalBias::get_slopes(int64_t heads) {
  LOOM_CHECK(heads > 0, "AlibiPositionalBias: heads must be positive, got ", heads);
  auto power_of_2 = [](int64_t n) {  // start = ratio = 2^(-8/n)
    const double start = std::pow(2.0, -std::pow(2.0, -(std::log2(double(n)) - 3)));
    std::vector<double> s;
    for (int64_t k = 0; k < n; ++k) s.push_back(start * std::pow(start, double(k)));
    return s;
  };
  const int64_t p = int64_t(1) << int64_t(std::floor(std::log2(double(heads))));
  std::vector<double> slopes = power_of_2(p);
  if (p == heads) return slopes;
  std::vector<double> finer = power_of_2(2 * p);
  for (int64_t k = 0; int64_t(slopes.size()) < heads; k += 2) slopes.push_back(finer[size_t(k)]);
  return slopes;
}

AlibiPositionalBias::AlibiPositionalBias(const AlibiOptions& o) : options(o) {
  if (options.total_heads == 0) options.total_heads = options.heads;
  LOOM_CHECK(options.heads > 0 && options.heads <= options.total_heads, "AlibiPositionalBias: needs 0 < heads <= total_heads, got heads = ",
             options.heads, ", total_heads = ", options.total_heads);
  if (options.slopes.empty()) options.slopes = get_slopes(options.heads);
  LOOM_CHECK(int64_t(options.slopes.size()) == options.heads, "AlibiPositionalBias: ", options.slopes.size(),
             " slopes given for ", options.heads, " heads");
  slopes = register_buffer("slopes", tensor(options.slopes).reshape({options.heads, 1, 1}), false);
}

Tensor AlibiPositionalBias::forward(int64_t i, int64_t j) const {
  LOOM_CHECK(i >= 0 && i <= j, "AlibiPositionalBias: needs 0 <= i <= j for right-aligned queries, got i = ", i,
             ", j = ", j);
  return forward(arange(j - i, j, kFloat32), arange(0, j, kFloat32));
}

Tensor AlibiPositionalBias::forward(const Tensor& pos) const { return forward(pos, pos); }

Tensor AlibiPositionalBias::forward(const Tensor& pos_i_in, const Tensor& pos_j_in) const {
  Tensor pos_i = as_positions("AlibiPositionalBias", pos_i_in), pos_j = as_positions("AlibiPositionalBias", pos_j_in);
  LOOM_CHECK(pos_i.dim() >= 1 && pos_i.dim() <= 3 && pos_i.dim() == pos_j.dim(),
             "AlibiPositionalBias: positions must be (n), (b, n) or (b, heads, n), got ", pos_i.sizes(), " and ",
             pos_j.sizes());
  Tensor bias = -abs(pos_j.unsqueeze(-2) - pos_i.unsqueeze(-1));  // (..., i, j)
  if (bias.dim() == 3) bias = bias.unsqueeze(1);                  // (b, 1, i, j): one set of positions per sample
  LOOM_CHECK(pos_i.dim() < 3 || pos_i.size(1) == options.heads,
             "AlibiPositionalBias: per-head positions need one row per ALiBi head (", options.heads, "), got ",
             pos_i.sizes());
  bias = bias * slopes;  // (heads, i, j) or (b, heads, i, j)
  const int64_t unalibied = options.total_heads - options.heads;
  if (unalibied > 0) bias = pad(bias, {0, 0, 0, 0, 0, unalibied});  // zero bias for the remaining heads
  return bias;
}

// ---- Rotary --------------------------------------------------------------

RotaryEmbedding::RotaryEmbedding(const RotaryOptions& o) : options(o) {
  LOOM_CHECK(o.dim >= 2 && o.dim % 2 == 0, "RotaryEmbedding: dim must be even and at least 2, got ", o.dim);
  LOOM_CHECK(o.interpolation_factor >= 1, "RotaryEmbedding: interpolation_factor must be >= 1, got ",
             o.interpolation_factor);
  const double base = o.base * std::pow(o.base_rescale_factor, double(o.dim) / double(o.dim - 2));
  std::vector<float> inv, scale;
  for (int64_t k = 0; k < o.dim; k += 2) {
    inv.push_back(float(1.0 / std::pow(base, double(float(k) / float(o.dim)))));
    scale.push_back((float(k) + 0.4f * float(o.dim)) / (1.4f * float(o.dim)));
  }
  inv_freq = register_buffer("inv_freq", tensor(inv));
  if (o.use_xpos) xpos_scale = register_buffer("scale", tensor(scale));
}

namespace {
// (..., n, r/2) -> (..., n, r): each value twice, side by side.
Tensor interleave_pairs(const Tensor& x) { return stack({x, x}, -1).flatten(-2); }
}  // namespace

RotaryEmbedding::Output RotaryEmbedding::forward(const Tensor& t_in) const {
  LOOM_CHECK(t_in.dim() == 1 || t_in.dim() == 2, "RotaryEmbedding: positions must be (n) or (b, n), got ",
             t_in.sizes());
  LOOM_CHECK(t_in.numel() > 0 || !options.use_xpos, "RotaryEmbedding: xpos needs at least one position");
  NoGradGuard no_grad;  // angles are functions of positions only
  Tensor t = as_positions("RotaryEmbedding", t_in);
  if (t.dim() == 1) t = t.unsqueeze(0);
  Output out;
  out.freqs = interleave_pairs(t.unsqueeze(-1) * inv_freq / options.interpolation_factor);
  if (options.use_xpos) {
    // power = (t - floor(max_pos / 2)) / scale_base, max_pos = max(t) + 1
    const double max_pos = max(t).item<float>() + 1.0;
    Tensor power = (t - std::floor(max_pos / 2)) / options.scale_base;
    out.scale = interleave_pairs(pow(xpos_scale, power.unsqueeze(-1)));
  }
  return out;
}

RotaryEmbedding::Output RotaryEmbedding::forward_from_seq_len(int64_t seq_len) const {
  return forward(arange(seq_len));
}

Tensor apply_rotary_pos_emb(const Tensor& t, const Tensor& freqs_in, const Tensor& scale_in) {
  LOOM_CHECK(t.dim() >= 2 && (freqs_in.dim() == 2 || freqs_in.dim() == 3),
             "apply_rotary_pos_emb: needs t (..., n, d) and freqs (n, r) or (b, n, r), got ", t.sizes(), " and ",
             freqs_in.sizes());
  const int64_t n = t.size(-2), d = t.size(-1), rot = freqs_in.size(-1);
  LOOM_CHECK(rot % 2 == 0 && rot <= d && freqs_in.size(-2) >= n, "apply_rotary_pos_emb: freqs ", freqs_in.sizes(),
             " cannot rotate t ", t.sizes(), " (needs an even rotary dim <= ", d, " and at least ", n, " positions)");
  LOOM_CHECK(!scale_in.defined() || scale_in.sizes() == freqs_in.sizes(), "apply_rotary_pos_emb: scale ",
             scale_in.sizes(), " must match freqs ", freqs_in.sizes());
  // Right-align the angles to t's n positions (ops/rotary.h shares them over heads).
  auto align = [&](const Tensor& f) { return f.narrow(-2, f.size(-2) - n, n); };
  Tensor freqs = align(freqs_in);
  Tensor cos = map_no_grad("apply_rotary_pos_emb", freqs, [](float x) { return std::cos(x); });
  Tensor sin = map_no_grad("apply_rotary_pos_emb", freqs, [](float x) { return std::sin(x); });
  if (scale_in.defined()) {
    Tensor scale = align(scale_in);
    cos = cos * scale;
    sin = sin * scale;
  }
  return rotary(t, cos, sin);
}

// ---- Absolute positions ----------------------------------------------------

AbsolutePositionalEmbedding::AbsolutePositionalEmbedding(const AbsolutePositionalEmbeddingOptions& o)
    : options(o), scale(o.l2norm_embed ? 1.0 : 1.0 / std::sqrt(double(o.dim))) {
  LOOM_CHECK(o.dim > 0 && o.max_seq_len > 0, "AbsolutePositionalEmbedding: dim and max_seq_len must be positive, got ",
             o.dim, " and ", o.max_seq_len);
  emb = register_module("emb", std::make_shared<Embedding>(o.max_seq_len, o.dim));
}

Tensor AbsolutePositionalEmbedding::forward(const Tensor& x, const Tensor& pos_in) const {
  LOOM_CHECK(x.dim() >= 2, "AbsolutePositionalEmbedding: x must be (b, n, ...), got ", x.sizes());
  const int64_t n = x.size(1);
  LOOM_CHECK(n <= options.max_seq_len, "AbsolutePositionalEmbedding: sequence length ", n,
             " exceeds max_seq_len ", options.max_seq_len);
  Tensor pos = pos_in.defined() ? pos_in : arange(n);
  Tensor out = emb->forward(pos) * scale;
  if (!options.l2norm_embed) return out;
  // F.normalize: x / max(||x||, 1e-12) along the last dim
  return out / clamp(sqrt(sum(out * out, {-1}, true)), 1e-12);
}

ScaledSinusoidalEmbedding::ScaledSinusoidalEmbedding(int64_t dim, double theta) {
  LOOM_CHECK(dim > 0 && dim % 2 == 0, "ScaledSinusoidalEmbedding: dim must be even and positive, got ", dim);
  const int64_t half = dim / 2;
  std::vector<float> inv;
  for (int64_t k = 0; k < half; ++k) inv.push_back(std::pow(float(theta), -(float(k) / float(half))));
  scale = register_parameter("scale", full({1}, 1.0 / std::sqrt(double(dim))));
  inv_freq = register_buffer("inv_freq", tensor(inv), false);
}

Tensor ScaledSinusoidalEmbedding::forward(const Tensor& x, const Tensor& pos_in) const {
  LOOM_CHECK(x.dim() >= 2, "ScaledSinusoidalEmbedding: x must be (b, n, ...), got ", x.sizes());
  Tensor pos = pos_in.defined() ? as_positions("ScaledSinusoidalEmbedding", pos_in) : arange(0, x.size(1), kFloat32);
  Tensor angles;
  {
    NoGradGuard no_grad;
    angles = pos.unsqueeze(-1) * inv_freq;
  }
  Tensor emb = cat({map_no_grad("ScaledSinusoidalEmbedding", angles, [](float a) { return std::sin(a); }),
                    map_no_grad("ScaledSinusoidalEmbedding", angles, [](float a) { return std::cos(a); })},
                   -1);
  return emb * scale;
}

}  // namespace loom::nn
