// AttentionLayers, and its Encoder / Decoder / CrossAttender presets:
// x-transformers' stack of attention ('a'), cross-attention ('c') and
// feedforward ('f') layers with their norms, residuals and position
// encodings (nn/transformer.cpp).
//
// Each layer i is stored as x-transformers stores it, so checkpoints load
// by name: layers.i.0.{0,1,2} are its pre-branch, post-branch (sandwich) and
// post-main norms (those in use), layers.i.1 the block, layers.i.2 the
// residual (no parameters); then final_norm, rel_pos, rotary_pos_emb.
#pragma once

#include <string>
#include <vector>

#include <loom/nn/attention.h>
#include <loom/nn/layers.h>
#include <loom/nn/positional.h>

namespace loom::nn {

struct AttentionLayersConfig {
  int64_t dim = 512;
  int64_t depth = 0;  // number of default blocks; not needed with custom_layers
  int64_t heads = 8;
  bool causal = false;
  bool cross_attend = false;
  bool only_cross = false;
  // norms: LayerNorm unless one of these
  bool use_scalenorm = false;
  bool use_rmsnorm = false;
  bool norm_add_unit_offset = true;
  bool pre_norm = true;
  bool sandwich_norm = false;
  bool macaron = false;
  bool residual_attn = false;        // RealFormer: each self-attention adds the previous one's pre-softmax logits
  bool cross_residual_attn = false;  // the same across cross-attention layers
  std::vector<std::string> custom_layers;  // e.g. {"a", "c", "f"}; replaces depth × default block
  // position encodings
  bool alibi_pos_bias = false;
  int64_t alibi_num_heads = 0;  // 0 = heads
  bool rel_pos_bias = false;    // T5, shared by every self-attention layer
  int64_t rel_pos_num_buckets = 32;
  int64_t rel_pos_max_distance = 128;
  // loom's extension: a separate, bidirectional T5 bias for the cross-
  // attention layers (x-transformers has none there), with explicit query
  // and context positions. Parameter name cross_rel_pos.relative_attention_bias.weight.
  bool cross_rel_pos_bias = false;
  // For comparison only (x-transformers issue #229): hand the self-attention
  // T5 bias (causal in a Decoder, right-aligned) to the cross-attention layers
  // too. Needs rel_pos_bias; excludes cross_rel_pos_bias.
  bool cross_attn_self_rel_pos = false;
  bool rotary_pos_emb = false;
  int64_t rotary_emb_dim = 0;  // 0 = dim_head / 2
  bool rotary_xpos = false;
  double rotary_xpos_scale_base = 512;
  double rotary_interpolation_factor = 1;
  double rotary_base_rescale_factor = 1;
  // per-layer options (x-transformers' attn_*, cross_attn_*, ff_* keywords)
  AttentionConfig attn;  // dim, heads and causal are set from the above
  int64_t cross_attn_dim_context = 0;  // context width for 'c' layers; 0 = dim
  FeedForwardConfig ff;  // dim is set from the above
};

struct LayersInputs {
  Tensor context;       // (b, j, cross_attn_dim_context)
  Tensor mask;          // (b, n) bool
  Tensor context_mask;  // (b, j) bool
  Tensor attn_mask;     // self-attention: (i, j), (h, i, j) or (b, h, i, j)
  Tensor attn_bias;     // external additive bias for self-attention
  Tensor pos;           // positions (n) or (b, n): ALiBi (any floats) and rotary
  Tensor cross_q_pos, context_pos;  // int64 positions for the cross relative bias; default 0..n-1, 0..j-1
};

// The KV caches of every attention layer, for step-by-step decoding.
struct LayersCache {
  std::vector<KVCache> layers;  // one per 'a' and 'c' layer, in order
  int64_t length = 0;           // positions seen so far
};

class AttentionLayers : public Module {
 public:
  explicit AttentionLayers(const AttentionLayersConfig& config);
  // With a cache, x holds only the positions after cache->length; the result
  // equals the matching rows of a forward over the whole sequence. Needs
  // causal attention, no masks and no selective attention.
  Tensor forward(const Tensor& x, const LayersInputs& in = {}, LayersCache* cache = nullptr) const;

  // Whether TransformerWrapper should skip its absolute position embedding
  // (x-transformers: with a T5 bias or rotary, not with ALiBi).
  bool disable_abs_pos_emb() const { return config.rel_pos_bias || config.rotary_pos_emb; }

  AttentionLayersConfig config;
  std::vector<std::string> layer_types;
  std::shared_ptr<ModuleList> layers;
  std::shared_ptr<Module> final_norm;  // null with post-norm
  std::shared_ptr<RelativePositionBias> rel_pos, cross_rel_pos;
  std::shared_ptr<AlibiPositionalBias> alibi;
  std::shared_ptr<RotaryEmbedding> rotary;

 private:
  struct Layer {
    std::string type;
    std::shared_ptr<Module> pre_norm, post_branch_norm, post_main_norm;
    std::shared_ptr<Attention> attention;
    std::shared_ptr<FeedForward> ff;
  };
  std::vector<Layer> stack_;
  std::shared_ptr<Module> make_norm() const;
  Tensor norm(const std::shared_ptr<Module>& n, const Tensor& x) const;
};

std::shared_ptr<AttentionLayers> Encoder(AttentionLayersConfig config);       // causal = false
std::shared_ptr<AttentionLayers> Decoder(AttentionLayersConfig config);       // causal = true
std::shared_ptr<AttentionLayers> CrossAttender(AttentionLayersConfig config);  // cross-attention and feedforward only

}  // namespace loom::nn
