#include <loom/nn/transformer.h>

#include <cmath>

#include <loom/core/error.h>
#include <loom/ops/ops.h>

namespace loom::nn {

namespace {
// x-transformers' Scale(0.5, ff) for macaron layers: the block is `fn`.
struct Scaled : Module {
  explicit Scaled(std::shared_ptr<Module> fn) { register_module("fn", std::move(fn)); }
};
}  // namespace

std::shared_ptr<Module> AttentionLayers::make_norm() const {
  const bool offset = config.norm_add_unit_offset;
  if (config.use_scalenorm) return make_scale_norm(config.dim, offset);
  if (config.use_rmsnorm) return std::make_shared<RMSNorm>(config.dim, offset);
  return std::make_shared<LayerNorm>(config.dim, offset);
}

Tensor AttentionLayers::norm(const std::shared_ptr<Module>& n, const Tensor& x) const {
  if (auto ln = std::dynamic_pointer_cast<LayerNorm>(n)) return ln->forward(x);
  return std::static_pointer_cast<RMSNorm>(n)->forward(x);
}

AttentionLayers::AttentionLayers(const AttentionLayersConfig& c) : config(c) {
  AttentionLayersConfig& o = config;
  LOOM_CHECK(o.dim > 0 && o.heads > 0, "AttentionLayers: dim and heads must be positive, got dim = ", o.dim,
             ", heads = ", o.heads);
  LOOM_CHECK(int(o.use_scalenorm) + int(o.use_rmsnorm) <= 1, "AttentionLayers: use at most one of use_scalenorm, use_rmsnorm");
  LOOM_CHECK(int(o.alibi_pos_bias) + int(o.rel_pos_bias) <= 1,
             "AttentionLayers: use at most one of alibi_pos_bias, rel_pos_bias");
  LOOM_CHECK(o.pre_norm || !o.sandwich_norm, "AttentionLayers: sandwich_norm needs pre_norm");
  LOOM_CHECK(!o.cross_rel_pos_bias || o.cross_attend, "AttentionLayers: cross_rel_pos_bias needs cross_attend");
  LOOM_CHECK(!o.cross_attn_self_rel_pos || (o.cross_attend && o.rel_pos_bias && !o.cross_rel_pos_bias),
             "AttentionLayers: cross_attn_self_rel_pos needs cross_attend and rel_pos_bias, and excludes cross_rel_pos_bias");
  LOOM_CHECK(!o.rotary_xpos || o.causal, "AttentionLayers: rotary_xpos needs causal attention");

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

  AttentionConfig self_attn = o.attn;
  self_attn.dim = o.dim, self_attn.heads = o.heads, self_attn.causal = o.causal;
  AttentionConfig cross_attn = self_attn;
  cross_attn.causal = false, cross_attn.selective = false;
  cross_attn.dim_context = o.cross_attn_dim_context > 0 ? o.cross_attn_dim_context : o.dim;
  FeedForwardConfig ff = o.ff;
  ff.dim = o.dim;
  ff.dim_out = 0;
  const int64_t dim_head = o.attn.dim_head;

  layers = register_module("layers", std::make_shared<ModuleList>());
  for (const std::string& type : layer_types) {
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
      module = o.macaron ? std::shared_ptr<Module>(std::make_shared<Scaled>(l.ff)) : l.ff;
    } else {
      l.attention = std::make_shared<Attention>(type == "a" ? self_attn : cross_attn);
      module = l.attention;
    }
    auto entry = std::make_shared<ModuleList>();
    entry->append(norms);
    entry->append(module);
    entry->append(nullptr);  // the residual: no parameters
    layers->append(entry);
    stack_.push_back(l);
  }
  if (o.pre_norm) final_norm = register_module("final_norm", make_norm());

  if (o.rel_pos_bias)
    rel_pos = register_module("rel_pos", std::make_shared<RelativePositionBias>(RelativePositionBiasOptions{
                                             .scale = std::sqrt(double(dim_head)), .causal = o.causal,
                                             .num_buckets = o.rel_pos_num_buckets,
                                             .max_distance = o.rel_pos_max_distance, .heads = o.heads}));
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
  if (o.rotary_pos_emb || o.rotary_xpos) {
    const int64_t rdim = o.rotary_emb_dim > 0 ? o.rotary_emb_dim : dim_head / 2;
    LOOM_CHECK(rdim <= dim_head, "AttentionLayers: rotary_emb_dim (", rdim, ") must not exceed dim_head (", dim_head, ")");
    rotary = register_module("rotary_pos_emb", std::make_shared<RotaryEmbedding>(RotaryOptions{
                                                   .dim = rdim, .use_xpos = o.rotary_xpos,
                                                   .scale_base = o.rotary_xpos_scale_base,
                                                   .interpolation_factor = o.rotary_interpolation_factor,
                                                   .base_rescale_factor = o.rotary_base_rescale_factor}));
  }
}

Tensor AttentionLayers::forward(const Tensor& x_in, const LayersInputs& in, LayersCache* cache) const {
  LOOM_CHECK(x_in.dim() == 3 && x_in.size(2) == config.dim, "AttentionLayers: expects x (b, n, ", config.dim, "), got ",
             x_in.sizes());
  LOOM_CHECK(config.cross_attend == in.context.defined(),
             config.cross_attend ? "AttentionLayers: cross_attend needs a context"
                                 : "AttentionLayers: a context was given but cross_attend is false");
  const int64_t n = x_in.size(1);
  if (in.mask.defined())
    LOOM_CHECK(in.mask.dtype() == kBool && in.mask.sizes() == Shape({x_in.size(0), n}), "AttentionLayers: mask must be bool (",
               x_in.size(0), ", ", n, "), got ", dtype_name(in.mask.dtype()), " ", in.mask.sizes());

  // With a cache, the n new positions follow `offset` earlier ones.
  const int64_t offset = cache ? cache->length : 0, total = offset + n;
  if (cache) {
    LOOM_CHECK(config.causal, "AttentionLayers: a KV cache needs causal attention");
    LOOM_CHECK(!in.pos.defined() && !in.attn_bias.defined(),
               "AttentionLayers: pos and attn_bias cannot be combined with a KV cache");
    int64_t attn_layers = 0;
    for (const std::string& t : layer_types) attn_layers += t != "f";
    if (cache->layers.empty()) cache->layers.resize(size_t(attn_layers));
    LOOM_CHECK(int64_t(cache->layers.size()) == attn_layers, "AttentionLayers: the cache has ", cache->layers.size(),
               " layers, the model ", attn_layers);
  }

  // Position encodings, computed once for all layers.
  AttentionInputs self_in, cross_in;
  self_in.mask = in.mask, self_in.attn_mask = in.attn_mask, self_in.attn_bias = in.attn_bias;
  RotaryEmbedding::Output rot;
  if (rotary) {
    rot = in.pos.defined() ? rotary->forward(in.pos) : rotary->forward_from_seq_len(total);
    self_in.rotary = &rot;
  }
  if (rel_pos) self_in.rel_pos_bias = rel_pos->forward(n, total);
  if (alibi) self_in.rel_pos_bias = in.pos.defined() ? alibi->forward(in.pos) : alibi->forward(n, total);
  if (config.cross_attend) {
    cross_in.context = in.context, cross_in.mask = in.mask, cross_in.context_mask = in.context_mask;
    if (cross_rel_pos) {
      Tensor qp = in.cross_q_pos.defined() ? in.cross_q_pos : arange(offset, total);
      Tensor kp = in.context_pos.defined() ? in.context_pos : arange(in.context.size(1));
      cross_in.rel_pos_bias = cross_rel_pos->forward(qp, kp);
    }
    if (config.cross_attn_self_rel_pos) cross_in.rel_pos_bias = rel_pos->forward(n, in.context.size(1));
  }

  LOOM_CHECK(!(cache && (config.residual_attn || config.cross_residual_attn)),
             "AttentionLayers: residual attention cannot be combined with a KV cache");
  Tensor x = x_in;
  size_t attn_index = 0;
  Tensor prev_attn, prev_cross_attn;  // residual attention: the last pre-softmax logits
  for (const Layer& l : stack_) {
    const Tensor residual = x;
    Tensor h = l.pre_norm ? norm(l.pre_norm, x) : x;
    Tensor out;
    if (l.type == "f") {
      out = l.ff->forward(h);
      if (config.macaron) out = out * 0.5f;
    } else {
      AttentionInputs& ai = l.type == "a" ? self_in : cross_in;
      ai.cache = cache ? &cache->layers[attn_index++] : nullptr;
      const bool residual = l.type == "a" ? config.residual_attn : config.cross_residual_attn;
      Tensor& prev = l.type == "a" ? prev_attn : prev_cross_attn;
      Tensor next;
      ai.prev_attn = residual ? prev : Tensor();
      ai.pre_softmax_out = residual ? &next : nullptr;
      out = l.attention->forward(h, ai);
      if (residual) prev = next;
    }
    if (l.post_branch_norm) out = norm(l.post_branch_norm, out);
    x = out + residual;
    if (l.post_main_norm) x = norm(l.post_main_norm, x);
  }
  if (cache) cache->length = total;
  return final_norm ? norm(final_norm, x) : x;
}

std::shared_ptr<AttentionLayers> Encoder(AttentionLayersConfig config) {
  config.causal = false;
  return std::make_shared<AttentionLayers>(config);
}

std::shared_ptr<AttentionLayers> Decoder(AttentionLayersConfig config) {
  config.causal = true;
  return std::make_shared<AttentionLayers>(config);
}

std::shared_ptr<AttentionLayers> CrossAttender(AttentionLayersConfig config) {
  config.cross_attend = true;
  config.only_cross = true;
  return std::make_shared<AttentionLayers>(config);
}

}  // namespace loom::nn
