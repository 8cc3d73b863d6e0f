#include <loom/nn/transformer.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include <loom/core/autograd.h>
#include <loom/core/error.h>
#include <loom/ops/ops.h>

namespace loom::nn {

namespace {
constexpr double kMaxNeg = -3.4028234663852886e38;

// A block wrapped by x-transformers' Scale, ShiftTokens, LayerScale or
// AdaptiveLayerScale: the block moves to `fn`; the wrapper's own weights sit
// beside it (LayerScale's gamma, AdaptiveLayerScale's to_gamma).
struct Wrapped : Module {
  explicit Wrapped(std::shared_ptr<Module> fn) { register_module("fn", std::move(fn)); }
  Tensor add_gamma(int64_t dim, double value) { return register_parameter("gamma", full({dim}, value)); }
  std::shared_ptr<Linear> add_to_gamma(int64_t dim_condition, int64_t dim) {
    auto l = register_module("to_gamma", std::make_shared<Linear>(dim_condition, dim, true));
    l->weight.detach().fill_(0.0);  // σ(-2) ≈ 0.12 of the branch at init, as x-transformers
    l->bias.detach().fill_(-2.0);
    return l;
  }
};

// The norms that have no class of their own in nn/layers.h.
struct SimpleRMSNorm : Module {  // x / ‖x‖ · √dim, no gain
  explicit SimpleRMSNorm(int64_t d) : dim(d) {}
  int64_t dim;
};
struct AdaptiveNorm : Module {  // LayerNorm or RMSNorm without a gain, times 1 + to_gamma(condition)
  AdaptiveNorm(int64_t d, int64_t dim_condition, bool rms_) : dim(d), rms(rms_) {
    to_gamma = register_module("to_gamma", std::make_shared<Linear>(dim_condition, d, false));
    to_gamma->weight.detach().fill_(0.0);
  }
  int64_t dim;
  bool rms;
  std::shared_ptr<Linear> to_gamma;
};

// x / max(‖x‖, 1e-12) · √dim, fused (see RMSNorm::forward).
Tensor simple_rms(const Tensor& x, int64_t dim) { return rms_norm(x, {dim}, Tensor(), 1e-24 / double(dim)); }

// A condition (b, d) acts on every position: (b, 1, d).
Tensor per_position(const Tensor& condition) { return condition.dim() == 2 ? condition.unsqueeze(1) : condition; }

// x-transformers' Residual (with scale_residual) and GRUGating (a GRUCell
// whose input is the branch output and whose hidden state is the residual).
struct ResidualScale : Module {
  ResidualScale(int64_t dim, bool scale) {
    if (scale) residual_scale = register_parameter("residual_scale", ones({dim}));
  }
  Tensor residual_scale;
};
struct GRUCell : Module {  // torch.nn.GRUCell(dim, dim): gates r, z, n stacked in that order
  explicit GRUCell(int64_t dim) {
    const float bound = 1.0f / std::sqrt(float(dim));
    auto u = [&](Shape s) { return rand(s) * (2 * bound) - bound; };
    weight_ih = register_parameter("weight_ih", u({3 * dim, dim}));
    weight_hh = register_parameter("weight_hh", u({3 * dim, dim}));
    bias_ih = register_parameter("bias_ih", u({3 * dim}));
    bias_hh = register_parameter("bias_hh", u({3 * dim}));
  }
  Tensor forward(const Tensor& x, const Tensor& h) const {
    std::vector<Tensor> gi = chunk(linear(x, weight_ih, bias_ih), 3, -1), gh = chunk(linear(h, weight_hh, bias_hh), 3, -1);
    Tensor r = sigmoid(gi[0] + gh[0]), z = sigmoid(gi[1] + gh[1]);
    Tensor cand = tanh(gi[2] + r * gh[2]);
    return (1.0f - z) * cand + z * h;
  }
  Tensor weight_ih, weight_hh, bias_ih, bias_hh;
};
struct GRUGating : ResidualScale {
  GRUGating(int64_t dim, bool scale) : ResidualScale(dim, scale) {
    gru = register_module("gru", std::make_shared<GRUCell>(dim));
  }
  std::shared_ptr<GRUCell> gru;
};

struct WeightOnly : Module {
  explicit WeightOnly(int64_t dim) { weight = register_parameter("weight", ones({dim})); }
  Tensor weight;
};

// x-transformers' HyperConnection (Zhu et al. 2024, dynamic, one input
// view): s residual streams; each layer reads a learned mix of them and
// writes its output back into each with a learned weight.
struct HyperConnection : Module {
  HyperConnection(int64_t dim, int64_t layer_index, int64_t s) : streams(s) {
    static_beta = register_parameter("static_beta", ones({s}));
    std::vector<float> alpha(size_t(s * (s + 1)), 0.0f);  // [one-hot of layer_index % s | identity]
    for (int64_t r = 0; r < s; ++r) {
      alpha[size_t(r * (s + 1))] = r == layer_index % s ? 1.0f : 0.0f;
      alpha[size_t(r * (s + 1) + 1 + r)] = 1.0f;
    }
    static_alpha = register_parameter("static_alpha", from_vector(alpha, {s, s + 1}));
    dynamic_alpha_fn = register_parameter("dynamic_alpha_fn", zeros({dim, s + 1}));
    dynamic_alpha_scale = register_parameter("dynamic_alpha_scale", scalar_tensor(1e-2));
    dynamic_beta_fn = register_parameter("dynamic_beta_fn", zeros({dim}));
    dynamic_beta_scale = register_parameter("dynamic_beta_scale", scalar_tensor(1e-2));
    auto n = std::make_shared<WeightOnly>(dim);  // nn.LayerNorm(dim, bias = False): `norm.weight`
    norm = register_module("norm", n);
    norm_weight = n->weight;
  }
  // x (b·s, n, d) -> the branch input (b, n, d); keeps the mixed streams (b, n, s, d) and β (b, n, s).
  Tensor prepare(const Tensor& x, Tensor& residuals, Tensor& beta) const {
    const int64_t b = x.size(0) / streams, n = x.size(1), d = x.size(2);
    Tensor res = x.view({b, streams, n, d}).permute({0, 2, 1, 3});  // '(b s) n d -> b n s d'
    Tensor normed = layer_norm(res, {d}, norm_weight, Tensor(), 1e-5);
    Tensor alpha = tanh(matmul(normed, dynamic_alpha_fn)) * dynamic_alpha_scale + static_alpha;  // (b, n, s, 1 + s)
    beta = tanh(matmul(normed, dynamic_beta_fn.unsqueeze(-1)).squeeze(-1)) * dynamic_beta_scale + static_beta;
    Tensor mixed = matmul(alpha.transpose(-1, -2), res);  // (b, n, 1 + s, d)
    residuals = mixed.narrow(2, 1, streams);
    return mixed.select(2, 0);
  }
  Tensor combine(const Tensor& out, const Tensor& residuals, const Tensor& beta) const {
    const int64_t b = out.size(0), n = out.size(1), d = out.size(2);
    Tensor r = out.unsqueeze(2) * beta.unsqueeze(-1) + residuals;    // (b, n, s, d)
    return r.permute({0, 2, 1, 3}).reshape({b * streams, n, d});     // 'b n s d -> (b s) n d'
  }
  int64_t streams;
  Tensor static_beta, static_alpha, dynamic_alpha_fn, dynamic_alpha_scale, dynamic_beta_fn, dynamic_beta_scale;
  std::shared_ptr<Module> norm;
  Tensor norm_weight;
};

// x-transformers' ShiftTokens: the features split into len(shifts) chunks
// (the rest unshifted); chunk c moves shifts[c] positions along the sequence
// (positive: from earlier tokens), zero-filled, after zeroing masked tokens.
Tensor shift_tokens(const Tensor& x, const std::vector<int64_t>& shifts, const Tensor& mask) {
  const int64_t b = x.size(0), n = x.size(1), d = x.size(2), segments = int64_t(shifts.size());
  const int64_t feats = d / segments;
  std::vector<Tensor> parts = split(x, feats, -1);
  for (int64_t s = 0; s < segments; ++s) {
    const int64_t amount = std::clamp<int64_t>(shifts[size_t(s)], -n, n);
    if (amount == 0) continue;  // (x-transformers leaves an unshifted chunk unmasked too)
    Tensor t = parts[size_t(s)];
    if (mask.defined()) t = masked_fill(t, logical_not(mask).unsqueeze(-1), 0.0);
    const int64_t a = std::abs(amount), c = t.size(2);
    Tensor fill = zeros({b, a, c});
    parts[size_t(s)] = amount > 0 ? cat({fill, t.narrow(1, 0, n - a)}, 1) : cat({t.narrow(1, a, n - a), fill}, 1);
  }
  return cat(parts, -1);
}

}  // namespace

void dropout_seq(Tensor& context, Tensor& context_mask, double p, Generator* gen) {
  const int64_t b = context.size(0), n = context.size(1), d = context.size(2);
  const double keep_prob = 1.0 - p;
  const int64_t keep = std::max<int64_t>(1, int64_t(keep_prob * double(n)));
  std::vector<float> draws = (gen ? randn({b, n}, *gen) : randn({b, n})).to_vector<float>();
  std::vector<bool> m;
  if (context_mask.defined()) {
    std::vector<float> mf = context_mask.to(kFloat32).to_vector<float>();
    for (float v : mf) m.push_back(v != 0);
    for (size_t e = 0; e < draws.size(); ++e)
      if (!m[e]) draws[e] = float(kMaxNeg);
  }
  std::vector<int64_t> idx(size_t(b * keep));
  std::vector<bool> kept;
  for (int64_t r = 0; r < b; ++r) {
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t u, int64_t v) { return draws[size_t(r * n + u)] > draws[size_t(r * n + v)]; });
    int64_t count = 0;
    if (!m.empty())
      for (int64_t c = 0; c < n; ++c) count += m[size_t(r * n + c)];
    const int64_t keep_count = int64_t(std::ceil(float(count) * float(keep_prob)));
    for (int64_t c = 0; c < keep; ++c) {
      idx[size_t(r * keep + c)] = order[size_t(c)];
      if (!m.empty()) kept.push_back(m[size_t(r * n + order[size_t(c)])] && c < keep_count);
    }
  }
  Tensor index = from_vector(idx, {b, keep});
  context = gather(context, 1, index.unsqueeze(-1).expand({b, keep, d}));
  if (context_mask.defined()) context_mask = tensor(kept).reshape({b, keep});
}

std::shared_ptr<Module> AttentionLayers::make_norm() const {
  const AttentionLayersConfig& o = config;
  const int64_t dc = (o.dim_condition > 0 ? o.dim_condition : o.dim) *
                     (o.adaptive_condition_mlp ? o.adaptive_condition_mlp_expansion : 1);
  if (o.use_adaptive_layernorm || o.use_adaptive_rmsnorm)
    return std::make_shared<AdaptiveNorm>(o.dim, dc, o.use_adaptive_rmsnorm);
  if (o.use_simple_rmsnorm) return std::make_shared<SimpleRMSNorm>(o.dim);
  const bool offset = o.norm_add_unit_offset;
  if (o.use_scalenorm) return make_scale_norm(o.dim, offset);
  if (o.use_rmsnorm) return std::make_shared<RMSNorm>(o.dim, offset);
  return std::make_shared<LayerNorm>(o.dim, offset);
}

Tensor AttentionLayers::norm(const std::shared_ptr<Module>& n, const Tensor& x, const Tensor& condition) const {
  if (auto ln = std::dynamic_pointer_cast<LayerNorm>(n)) return ln->forward(x);
  if (auto rms = std::dynamic_pointer_cast<RMSNorm>(n)) return rms->forward(x);
  if (auto s = std::dynamic_pointer_cast<SimpleRMSNorm>(n)) return simple_rms(x, s->dim);
  auto a = std::static_pointer_cast<AdaptiveNorm>(n);
  Tensor normed = a->rms ? simple_rms(x, a->dim) : layer_norm(x, {a->dim});
  return normed * (a->to_gamma->forward(condition) + 1.0f);
}

AttentionLayers::AttentionLayers(const AttentionLayersConfig& c) : config(c) {
  AttentionLayersConfig& o = config;
  LOOM_CHECK(o.dim > 0 && o.heads > 0, "AttentionLayers: dim and heads must be positive, got dim = ", o.dim,
             ", heads = ", o.heads);
  LOOM_CHECK(int(o.use_scalenorm) + int(o.use_rmsnorm) + int(o.use_simple_rmsnorm) + int(o.use_adaptive_layernorm) +
                     int(o.use_adaptive_rmsnorm) <=
                 1,
             "AttentionLayers: use at most one of use_scalenorm, use_rmsnorm, use_simple_rmsnorm, "
             "use_adaptive_layernorm, use_adaptive_rmsnorm");
  LOOM_CHECK(int(o.alibi_pos_bias) + int(o.rel_pos_bias) + int(o.dynamic_pos_bias) <= 1,
             "AttentionLayers: use at most one of alibi_pos_bias, rel_pos_bias, dynamic_pos_bias");
  LOOM_CHECK(!(o.use_layerscale && o.use_adaptive_layerscale),
             "AttentionLayers: use at most one of use_layerscale, use_adaptive_layerscale");
  LOOM_CHECK(o.pre_norm || !o.sandwich_norm, "AttentionLayers: sandwich_norm needs pre_norm");
  LOOM_CHECK(!o.cross_rel_pos_bias || o.cross_attend, "AttentionLayers: cross_rel_pos_bias needs cross_attend");
  LOOM_CHECK(!o.cross_attn_self_rel_pos || (o.cross_attend && o.rel_pos_bias && !o.cross_rel_pos_bias),
             "AttentionLayers: cross_attn_self_rel_pos needs cross_attend and rel_pos_bias, and excludes cross_rel_pos_bias");
  LOOM_CHECK(!o.rotary_xpos || o.causal, "AttentionLayers: rotary_xpos needs causal attention");
  LOOM_CHECK(!(o.prefix_decoder && o.causal), "AttentionLayers: a PrefixDecoder is causal by its mask, not causal = true");
  LOOM_CHECK(o.num_residual_streams >= 1, "AttentionLayers: num_residual_streams must be >= 1, got ",
             o.num_residual_streams);
  LOOM_CHECK(!(o.num_residual_streams > 1 && o.gate_residual),
             "AttentionLayers: gate_residual cannot be combined with hyper-connections (num_residual_streams > 1)");
  LOOM_CHECK(o.layer_dropout >= 0 && o.layer_dropout < 1, "AttentionLayers: layer_dropout must be in [0, 1), got ",
             o.layer_dropout);
  LOOM_CHECK(o.cross_attn_tokens_dropout >= 0 && o.cross_attn_tokens_dropout < 1,
             "AttentionLayers: cross_attn_tokens_dropout must be in [0, 1), got ", o.cross_attn_tokens_dropout);
  o.rotary_pos_emb = o.rotary_pos_emb || o.rotary_xpos;  // x-transformers: xPos is a kind of rotary
  const int64_t dim_condition = o.dim_condition > 0 ? o.dim_condition : o.dim;
  const int64_t dc = dim_condition * (o.adaptive_condition_mlp ? o.adaptive_condition_mlp_expansion : 1);

  // Layer pattern: depth × (a, [c], f), or the custom one.
  std::vector<std::string> block = o.cross_attend ? (o.only_cross ? std::vector<std::string>{"c", "f"}
                                                                  : std::vector<std::string>{"a", "c", "f"})
                                                  : std::vector<std::string>{"a", "f"};
  if (o.macaron) block.insert(block.begin(), "f");
  if (!o.custom_layers.empty()) {
    layer_types = o.custom_layers;
  } else {
    LOOM_CHECK(o.depth > 0, "AttentionLayers: depth must be positive (or give custom_layers), got ", o.depth);
    for (int64_t d = 0; d < o.depth; ++d) layer_types.insert(layer_types.end(), block.begin(), block.end());
  }
  for (const std::string& t : layer_types)
    LOOM_CHECK(t == "a" || t == "c" || t == "f", "AttentionLayers: custom_layers entries must be 'a', 'c' or 'f', got '",
               t, "'");
  std::vector<int64_t> shifts = o.shift_tokens;  // one value: every layer
  if (shifts.size() == 1) shifts.assign(layer_types.size(), shifts[0]);
  LOOM_CHECK(shifts.empty() || shifts.size() == layer_types.size(), "AttentionLayers: shift_tokens has ", shifts.size(),
             " entries for ", layer_types.size(), " layers");

  AttentionConfig self_attn = o.attn;
  if (o.zero_init_branch_output) self_attn.zero_init_output = true;
  AttentionConfig cross_attn = o.cross_attn.value_or(self_attn);
  if (o.zero_init_branch_output) cross_attn.zero_init_output = true;
  self_attn.dim = o.dim, self_attn.heads = o.heads, self_attn.causal = o.causal;
  cross_attn.dim = o.dim, cross_attn.heads = o.heads, cross_attn.causal = false, cross_attn.selective = false;
  cross_attn.learned_value_residual_mix = false;  // cross layers mix the first one's values 0.5 : 0.5
  if (o.cross_attn_dim_context > 0) cross_attn.dim_context = o.cross_attn_dim_context;
  if (cross_attn.dim_context == 0) cross_attn.dim_context = o.dim;
  FeedForwardConfig ff = o.ff;
  ff.dim = o.dim;
  ff.dim_out = 0;
  if (o.zero_init_branch_output) ff.zero_init_output = true;
  const int64_t dim_head = o.attn.dim_head;
  const bool learned_mix = o.add_value_residual && o.learned_value_residual_mix;

  if (o.num_residual_streams > 1) stream_emb = register_parameter("stream_emb", zeros({o.num_residual_streams, o.dim}));
  layers = register_module("layers", std::make_shared<ModuleList>());
  bool first_self_attn = true;
  for (size_t ind = 0; ind < layer_types.size(); ++ind) {
    const std::string& type = layer_types[ind];
    Layer l;
    l.type = type;
    auto norms = std::make_shared<ModuleList>();
    if (o.pre_norm) l.pre_norm = make_norm();
    if (o.sandwich_norm) l.post_branch_norm = make_norm();
    if (!o.pre_norm) l.post_main_norm = make_norm();
    norms->append(l.pre_norm);
    norms->append(l.post_branch_norm);
    norms->append(l.post_main_norm);
    std::shared_ptr<Module> module;
    if (type == "f") {
      l.ff = std::make_shared<FeedForward>(ff);
      module = o.macaron ? std::shared_ptr<Module>(std::make_shared<Wrapped>(l.ff)) : l.ff;  // Scale(0.5, ff)
    } else {
      AttentionConfig ac = type == "a" ? self_attn : cross_attn;
      if (type == "a") ac.learned_value_residual_mix = learned_mix && !first_self_attn, first_self_attn = false;
      l.attention = std::make_shared<Attention>(ac);
      module = l.attention;
    }
    const int64_t shift = shifts.empty() ? 0 : shifts[ind];
    if (shift > 0) {  // range(-shift or 0, shift + 1)
      for (int64_t a = o.causal ? 0 : -shift; a <= shift; ++a) l.shifts.push_back(a);
      module = std::make_shared<Wrapped>(module);
    }
    if (o.use_layerscale) {  // stored as init - 1 with unit offset
      auto w = std::make_shared<Wrapped>(module);
      l.layerscale = w->add_gamma(o.dim, o.layerscale_init_value - (o.norm_add_unit_offset ? 1.0 : 0.0));
      module = w;
    } else if (o.use_adaptive_layerscale) {
      auto w = std::make_shared<Wrapped>(module);
      l.adaptive_scale = w->add_to_gamma(dc, o.dim);
      module = w;
    }
    if (o.num_residual_streams > 1) l.residual = std::make_shared<HyperConnection>(o.dim, int64_t(ind), o.num_residual_streams);
    else if (o.gate_residual) l.residual = std::make_shared<GRUGating>(o.dim, o.scale_residual);
    else if (o.scale_residual) l.residual = std::make_shared<ResidualScale>(o.dim, true);
    auto entry = std::make_shared<ModuleList>();
    entry->append(norms);
    entry->append(module);
    entry->append(l.residual);  // nullptr: a plain residual has no parameters
    layers->append(entry);
    stack_.push_back(l);
  }
  if (o.pre_norm) final_norm = register_module("final_norm", make_norm());
  if (needs_condition() && o.adaptive_condition_mlp) {  // Sequential(LinearNoBias(dc, dc · expansion), SiLU)
    auto seq = register_module("adaptive_mlp", std::make_shared<ModuleList>());
    adaptive_mlp = std::make_shared<Linear>(dim_condition, dc, false);
    seq->append(adaptive_mlp);
  }

  if (o.rel_pos_bias)
    rel_pos = register_module("rel_pos", std::make_shared<RelativePositionBias>(RelativePositionBiasOptions{
                                             .scale = std::sqrt(double(dim_head)), .causal = o.causal,
                                             .num_buckets = o.rel_pos_num_buckets,
                                             .max_distance = o.rel_pos_max_distance, .heads = o.heads}));
  if (o.dynamic_pos_bias)
    dynamic_pos = register_module("rel_pos", std::make_shared<DynamicPositionBias>(DynamicPositionBiasOptions{
                                                 .dim = o.dim / 4, .heads = o.heads, .depth = o.dynamic_pos_bias_mlp_depth,
                                                 .log_distance = o.dynamic_pos_bias_log_distance,
                                                 .norm = o.dynamic_pos_bias_norm}));
  if (o.alibi_pos_bias) {
    LOOM_CHECK(o.alibi_num_heads <= o.heads, "AttentionLayers: alibi_num_heads (", o.alibi_num_heads,
               ") must not exceed heads (", o.heads, ")");
    alibi = register_module("rel_pos", std::make_shared<AlibiPositionalBias>(AlibiOptions{
                                           .heads = o.alibi_num_heads > 0 ? o.alibi_num_heads : o.heads,
                                           .total_heads = o.heads}));
  }
  if (o.cross_rel_pos_bias)
    cross_rel_pos = register_module("cross_rel_pos", std::make_shared<RelativePositionBias>(RelativePositionBiasOptions{
                                                         .scale = std::sqrt(double(dim_head)), .causal = false,
                                                         .num_buckets = o.rel_pos_num_buckets,
                                                         .max_distance = o.rel_pos_max_distance, .heads = o.heads}));
  if (o.rotary_pos_emb) {
    const int64_t rdim = o.rotary_emb_dim > 0 ? o.rotary_emb_dim : dim_head / 2;
    LOOM_CHECK(rdim <= dim_head, "AttentionLayers: rotary_emb_dim (", rdim, ") must not exceed dim_head (", dim_head, ")");
    rotary = register_module("rotary_pos_emb", std::make_shared<RotaryEmbedding>(RotaryOptions{
                                                   .dim = rdim, .use_xpos = o.rotary_xpos,
                                                   .scale_base = o.rotary_xpos_scale_base,
                                                   .interpolation_factor = o.rotary_interpolation_factor,
                                                   .base_rescale_factor = o.rotary_base_rescale_factor}));
  }
}

bool AttentionLayers::needs_condition() const {
  return config.use_adaptive_layernorm || config.use_adaptive_rmsnorm || config.use_adaptive_layerscale;
}

// Token shift reads the previous positions' features, which a cached step
// does not have (x-transformers caches anyway and shifts in zeros).
int64_t AttentionLayers::self_attention_layers() const {
  return int64_t(std::count(layer_types.begin(), layer_types.end(), "a"));
}

bool AttentionLayers::can_cache_kv() const {
  const AttentionLayersConfig& o = config;
  const bool shifts = std::any_of(o.shift_tokens.begin(), o.shift_tokens.end(), [](int64_t s) { return s != 0; });
  return o.causal && !o.residual_attn && !o.cross_residual_attn && !shifts;
}

int64_t LayersCache::bytes() const {
  int64_t total = 0;
  for (const KVCache& c : layers) total += c.bytes();
  return total;
}

// The self-attention position bias for n queries right-aligned to `total` keys.
Tensor AttentionLayers::self_attention_bias(int64_t n, int64_t total, const Tensor& pos) const {
  if (rel_pos) return rel_pos->forward(n, total);
  if (dynamic_pos) return dynamic_pos->forward(n, total);
  if (alibi) return pos.defined() ? alibi->forward(pos) : alibi->forward(n, total);
  return Tensor();
}

Tensor AttentionLayers::forward(const Tensor& x_in, const LayersInputs& in, LayersCache* cache) const {
  const AttentionLayersConfig& o = config;
  LOOM_CHECK(x_in.dim() == 3 && x_in.size(2) == o.dim, "AttentionLayers: expects x (b, n, ", o.dim, "), got ",
             x_in.sizes());
  LOOM_CHECK(o.cross_attend == in.context.defined(),
             o.cross_attend ? "AttentionLayers: cross_attend needs a context"
                            : "AttentionLayers: a context was given but cross_attend is false");
  LOOM_CHECK(needs_condition() == in.condition.defined(),
             needs_condition() ? "AttentionLayers: adaptive norms / layerscale need a condition"
                               : "AttentionLayers: a condition was given but no adaptive norm or layerscale uses it");
  const int64_t b = x_in.size(0), n = x_in.size(1);
  if (in.mask.defined())
    LOOM_CHECK(in.mask.dtype() == kBool && in.mask.sizes() == Shape({b, n}), "AttentionLayers: mask must be bool (", b,
               ", ", n, "), got ", dtype_name(in.mask.dtype()), " ", in.mask.sizes());
  LOOM_CHECK(!in.pos.defined() || !(rel_pos || dynamic_pos),
             "AttentionLayers: custom positions work with ALiBi, not with the T5 or dynamic position bias");
  LOOM_CHECK(!in.pos.defined() || alibi || rotary,
             "AttentionLayers: pos (custom positions) is used by ALiBi and rotary only; these layers have neither");
  LOOM_CHECK(!in.prefix_attn_len.defined() || o.prefix_decoder, "AttentionLayers: prefix_attn_len needs a PrefixDecoder");
  Tensor condition;
  if (in.condition.defined()) {
    const int64_t want = o.dim_condition > 0 ? o.dim_condition : o.dim;
    LOOM_CHECK((in.condition.dim() == 2 || in.condition.dim() == 3) && in.condition.size(-1) == want,
               "AttentionLayers: condition must be (b, ", want, ") or (b, n, ", want, "), got ", in.condition.sizes());
    condition = per_position(in.condition);
    if (adaptive_mlp) condition = silu(adaptive_mlp->forward(condition));
  }

  // Transformer-XL memories: one per self-attention layer, all of one length.
  int64_t num_self = 0;
  for (const std::string& t : layer_types) num_self += t == "a";
  const int64_t mem_len = in.mems.empty() ? 0 : in.mems[0].size(1);
  LOOM_CHECK(in.mems.empty() || int64_t(in.mems.size()) == num_self, "AttentionLayers: ", in.mems.size(),
             " memories for ", num_self, " self-attention layers");
  for (const Tensor& m : in.mems)
    LOOM_CHECK(m.dim() == 3 && m.size(1) == mem_len, "AttentionLayers: memories must all be (b, ", mem_len, ", ", o.dim,
               "), got ", m.sizes());
  LOOM_CHECK(in.mem_masks.empty() || in.mem_masks.size() == in.mems.size(), "AttentionLayers: ", in.mem_masks.size(),
             " memory masks for ", in.mems.size(), " memories");
  LOOM_CHECK(!(mem_len > 0 && (cache || in.pos.defined())),
             "AttentionLayers: memories cannot be combined with a KV cache or custom positions");

  // With a cache, the n new positions follow `offset` earlier ones.
  const int64_t offset = cache ? cache->length : 0, total = offset + n;
  if (cache) {
    LOOM_CHECK(o.causal, "AttentionLayers: a KV cache needs causal attention");
    LOOM_CHECK(!in.pos.defined() && !in.attn_bias.defined(),
               "AttentionLayers: pos and attn_bias cannot be combined with a KV cache");
    LOOM_CHECK(!(o.residual_attn || o.cross_residual_attn),
               "AttentionLayers: residual attention cannot be combined with a KV cache");
    int64_t attn_layers = 0;
    for (const std::string& t : layer_types) attn_layers += t != "f";
    const int64_t self_layers = self_attention_layers();
    const std::vector<int64_t>& k = cache->budgets;
    LOOM_CHECK(k.size() <= 1 || int64_t(k.size()) == self_layers, "AttentionLayers: ", k.size(),
               " cache budgets for ", self_layers, " self-attention layers (give one for all, or one per layer)");
    const bool pruned = std::any_of(k.begin(), k.end(), [](int64_t v) { return v != 0; });
    LOOM_CHECK(std::all_of(k.begin(), k.end(), [](int64_t v) { return v >= 0; }),
               "AttentionLayers: cache budgets must be >= 0, got ", k);
    LOOM_CHECK(!pruned || o.attn.selective, "AttentionLayers: a cache budget (context pruning) needs selective attention");
    LOOM_CHECK(!pruned || !dynamic_pos, "AttentionLayers: a cache budget cannot be combined with the dynamic position bias");
    if (cache->layers.empty()) cache->layers.resize(size_t(attn_layers));
    LOOM_CHECK(int64_t(cache->layers.size()) == attn_layers, "AttentionLayers: the cache has ", cache->layers.size(),
               " layers, the model ", attn_layers);
  }

  // Position encodings, computed once for all layers.
  AttentionInputs self_in, cross_in;
  self_in.mask = in.mask, self_in.attn_mask = in.attn_mask, self_in.attn_bias = in.attn_bias;
  if (o.prefix_decoder) {
    // x-transformers' PrefixDecoder: a causal mask, except that every query
    // sees the first prefix_attn_len keys; AND the given attn_mask.
    Tensor allowed = tril(ones({n, n}, kBool)).view({1, 1, n, n});
    if (in.prefix_attn_len.defined()) {
      Tensor len = in.prefix_attn_len.to(kInt64).reshape({-1, 1, 1, 1});
      allowed = logical_or(allowed, lt(arange(n).view({1, 1, 1, n}), len));
    }
    self_in.attn_mask = in.attn_mask.defined() ? logical_and(allowed, in.attn_mask) : allowed;
  }
  RotaryEmbedding::Output rot;
  if (rotary) {  // memories sit at negative positions
    rot = in.pos.defined() ? rotary->forward(in.pos)
                           : (mem_len > 0 ? rotary->forward(arange(-mem_len, n)) : rotary->forward_from_seq_len(total));
    self_in.rotary = &rot;
  }
  self_in.rel_pos_bias = self_attention_bias(n, total + mem_len, in.pos);
  Tensor context = in.context, context_mask = in.context_mask;
  if (o.cross_attend) {
    if (cross_rel_pos) {
      Tensor qp = in.cross_q_pos.defined() ? in.cross_q_pos : arange(offset, total);
      Tensor kp = in.context_pos.defined() ? in.context_pos : arange(context.size(1));
      cross_in.rel_pos_bias = cross_rel_pos->forward(qp, kp);
    }
    if (o.cross_attn_self_rel_pos) cross_in.rel_pos_bias = rel_pos->forward(n, context.size(1));
  }

  // Hyper-connections: s copies of the stream, each with its embedding.
  const int64_t streams = o.num_residual_streams;
  Tensor x = x_in;
  if (streams > 1) x = (x.unsqueeze(1) + stream_emb.unsqueeze(1)).reshape({b * streams, n, o.dim});

  size_t attn_index = 0, self_index = 0;
  std::vector<Tensor> memory_terms;  // the selective memory loss's, one per self-attention layer run
  Tensor prev_attn, prev_cross_attn;      // residual attention: the last pre-softmax logits
  Tensor first_values, first_cross_values;  // value residual: the first layers' values
  for (size_t li = 0; li < stack_.size(); ++li) {
    const Layer& l = stack_[li];
    if (is_training() && o.layer_dropout > 0) {  // stochastic depth: the layer is skipped
      const float u = (generator ? rand({1}, *generator) : rand({1})).item<float>();
      if (u < o.layer_dropout) {
        if (l.type != "f" && cache) ++attn_index;
        continue;
      }
    }
    Tensor layer_mem, layer_mem_mask;
    if (l.type == "a") {
      if (in.hiddens_out) in.hiddens_out->push_back(x);
      if (!in.mems.empty()) layer_mem = in.mems[self_index];
      if (!in.mem_masks.empty()) layer_mem_mask = in.mem_masks[self_index];
      ++self_index;
    }
    if (l.type == "c" && is_training() && o.cross_attn_tokens_dropout > 0)
      dropout_seq(context, context_mask, o.cross_attn_tokens_dropout, generator);

    Tensor residual = x, branch = x, hyper_beta;
    auto hyper = std::dynamic_pointer_cast<HyperConnection>(l.residual);
    if (hyper) branch = hyper->prepare(x, residual, hyper_beta);
    Tensor h = branch;
    if (l.pre_norm) {
      h = norm(l.pre_norm, h, condition);
      if (layer_mem.defined()) layer_mem = norm(l.pre_norm, layer_mem, condition);
    }
    if (!l.shifts.empty()) h = shift_tokens(h, l.shifts, l.type == "f" ? Tensor() : in.mask);
    Tensor out;
    if (l.type == "f") {
      out = l.ff->forward(h);
      if (o.macaron) out = out * 0.5f;
    } else {
      AttentionInputs& ai = l.type == "a" ? self_in : cross_in;
      if (l.type == "c") ai.context = context, ai.mask = in.mask, ai.context_mask = context_mask;
      ai.cache = cache ? &cache->layers[attn_index++] : nullptr;
      ai.mem = layer_mem, ai.mem_mask = layer_mem_mask;
      const bool res_attn = l.type == "a" ? o.residual_attn : o.cross_residual_attn;
      Tensor& prev = l.type == "a" ? prev_attn : prev_cross_attn;
      Tensor& first = l.type == "a" ? first_values : first_cross_values;
      Tensor next, values;
      ai.prev_attn = res_attn ? prev : Tensor();
      ai.pre_softmax_out = res_attn ? &next : nullptr;
      ai.value_residual = o.add_value_residual ? first : Tensor();
      ai.values_out = first.defined() ? nullptr : &values;
      Tensor memory_term;
      if (l.type == "a") ai.selective_memory_out = in.selective_memory_loss ? &memory_term : nullptr;
      if (l.type == "a" && ai.cache && ai.cache->pos.defined() && ai.cache->pos.size(1) < ai.cache->seen) {
        // A pruned cache: this layer's keys are no longer 0..total-1, so its
        // position encodings come from the positions it kept.
        const KVCache& lc = *ai.cache;
        const int64_t rows = lc.pos.size(0);
        Tensor qpos = arange(offset, total).unsqueeze(0).expand({rows, n}).contiguous();
        Tensor kpos = cat({lc.pos, qpos}, 1);
        AttentionInputs pruned = ai;
        RotaryEmbedding::Output layer_rot;
        if (rotary) layer_rot = rotary->forward(kpos), pruned.rotary = &layer_rot;  // q's angles: the last n rows
        if (rel_pos) pruned.rel_pos_bias = rel_pos->forward(qpos, kpos);
        if (alibi) pruned.rel_pos_bias = alibi->forward(qpos, kpos);
        out = l.attention->forward(h, pruned);
      } else {
        out = l.attention->forward(h, ai);
      }
      if (l.type == "a" && cache && !cache->budgets.empty()) {
        const int64_t k = cache->budgets[cache->budgets.size() == 1 ? 0 : self_index - 1];
        if (k > 0) prune(*ai.cache, k);
      }
      if (memory_term.defined()) memory_terms.push_back(memory_term);
      if (res_attn) prev = next;
      if (!first.defined()) first = values;
    }
    if (l.layerscale.defined()) out = out * (o.norm_add_unit_offset ? l.layerscale + 1.0f : l.layerscale);
    if (l.adaptive_scale) out = out * sigmoid(l.adaptive_scale->forward(condition));
    if (l.post_branch_norm) out = norm(l.post_branch_norm, out, condition);
    if (hyper) {
      x = hyper->combine(out, residual, hyper_beta);
    } else if (auto gru = std::dynamic_pointer_cast<GRUGating>(l.residual)) {
      Tensor r = gru->residual_scale.defined() ? residual * gru->residual_scale : residual;
      x = gru->gru->forward(out.reshape({-1, o.dim}), r.reshape({-1, o.dim})).view(out.sizes());
    } else {
      auto scale = std::dynamic_pointer_cast<ResidualScale>(l.residual);
      if (scale) residual = residual * scale->residual_scale;
      if (o.scale_residual_constant != 1) residual = residual * float(o.scale_residual_constant);
      x = out + residual;
    }
    if (l.post_main_norm) x = norm(l.post_main_norm, x, condition);
  }
  if (cache) cache->length = total;
  if (in.selective_memory_loss) {  // ε · (1/L) Σ_l, over the layers that ran (layer dropout skips some)
    Tensor terms = scalar_tensor(0.0);
    for (const Tensor& t : memory_terms) terms = terms + t;
    *in.selective_memory_loss = terms * float(o.attn.selective_memory_loss / double(std::max<size_t>(1, memory_terms.size())));
  }
  if (streams > 1) x = sum(x.view({b, streams, n, o.dim}), {1});  // the streams summed
  return final_norm ? norm(final_norm, x, condition) : x;
}

std::shared_ptr<AttentionLayers> Encoder(AttentionLayersConfig config) {
  config.causal = false;
  return std::make_shared<AttentionLayers>(config);
}

std::shared_ptr<AttentionLayers> Decoder(AttentionLayersConfig config) {
  config.causal = true;
  return std::make_shared<AttentionLayers>(config);
}

std::shared_ptr<AttentionLayers> PrefixDecoder(AttentionLayersConfig config) {
  config.causal = false;
  config.prefix_decoder = true;
  return std::make_shared<AttentionLayers>(config);
}

std::shared_ptr<AttentionLayers> CrossAttender(AttentionLayersConfig config) {
  config.cross_attend = true;
  config.only_cross = true;
  return std::make_shared<AttentionLayers>(config);
}

}  // namespace loom::nn
