// AttentionLayers, and its Encoder / Decoder / PrefixDecoder / CrossAttender
// presets: x-transformers' stack of attention ('a'), cross-attention ('c') and
// feedforward ('f') layers with their norms, residuals and position
// encodings (nn/transformer.cpp).
//
// Each layer i is stored as x-transformers stores it, so checkpoints load
// by name: layers.i.0.{0,1,2} are its pre-branch, post-branch (sandwich) and
// post-main norms (those in use), layers.i.1 the block, layers.i.2 the
// residual; then final_norm, rel_pos, rotary_pos_emb. A block wrapped the
// way x-transformers wraps it moves down one `.fn` per wrapper, outermost
// first: LayerScale / AdaptiveLayerScale (their gamma / to_gamma beside the
// fn), ShiftTokens, macaron's Scale(0.5) — e.g. layers.1.1.fn.fn.ff.0.0.weight
// for a shifted macaron feedforward.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <loom/core/generator.h>
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
  bool prefix_decoder = false;  // x-transformers' PrefixDecoder: causal by mask, with a bidirectional prefix
  // norms: LayerNorm unless one of these
  bool use_scalenorm = false;
  bool use_rmsnorm = false;
  bool use_simple_rmsnorm = false;      // RMSNorm without a gain
  bool use_adaptive_layernorm = false;  // gain 1 + W·condition (W zero at init); forward needs a condition
  bool use_adaptive_rmsnorm = false;
  bool norm_add_unit_offset = true;
  int64_t dim_condition = 0;            // 0 = dim
  bool adaptive_condition_mlp = false;  // condition -> SiLU(Linear(dim_condition, dim_condition · expansion)) first
  int64_t adaptive_condition_mlp_expansion = 4;
  bool pre_norm = true;
  bool sandwich_norm = false;
  bool macaron = false;
  bool residual_attn = false;        // RealFormer: each self-attention adds the previous one's pre-softmax logits
  bool cross_residual_attn = false;  // the same across cross-attention layers
  std::vector<std::string> custom_layers;  // e.g. {"a", "c", "f"}; replaces depth × default block
  // residuals and branches
  bool use_layerscale = false;     // branch output × learned per-dim γ (init layerscale_init_value)
  double layerscale_init_value = 0;
  bool use_adaptive_layerscale = false;  // branch output × σ(W·condition + b) (W = 0, b = -2 at init)
  bool zero_init_branch_output = false;  // attention and feedforward output projections start at 0
  bool gate_residual = false;            // a GRU cell mixes branch output and residual instead of adding
  bool scale_residual = false;           // residual × learned per-dim scale (init 1) before the add
  double scale_residual_constant = 1;
  std::vector<int64_t> shift_tokens;     // per layer (one value = every layer): token shift of feature chunks
  int64_t num_residual_streams = 1;      // > 1: hyper-connections (Zhu et al. 2024), dynamic
  bool add_value_residual = false;       // ResFormer: later attention layers mix in the first one's values
  bool learned_value_residual_mix = true;
  // Training only:
  double layer_dropout = 0;              // skip a whole layer with this probability (stochastic depth)
  double cross_attn_tokens_dropout = 0;  // each cross-attention layer keeps a random (1 - p) of the context
  // position encodings
  bool alibi_pos_bias = false;
  int64_t alibi_num_heads = 0;  // 0 = heads
  bool rel_pos_bias = false;    // T5, shared by every self-attention layer
  int64_t rel_pos_num_buckets = 32;
  int64_t rel_pos_max_distance = 128;
  bool dynamic_pos_bias = false;  // an MLP of the distance gives a bias per head
  bool dynamic_pos_bias_log_distance = false;
  int64_t dynamic_pos_bias_mlp_depth = 2;
  bool dynamic_pos_bias_norm = false;
  // loom's extension: a separate, bidirectional T5 bias for the cross-
  // attention layers (x-transformers has none there), with explicit query
  // and context positions. Parameter name cross_rel_pos.relative_attention_bias.weight.
  bool cross_rel_pos_bias = false;
  // For comparison only (x-transformers issue #229): hand the self-attention
  // T5 bias (causal in a Decoder, right-aligned) to the cross-attention layers
  // too. Needs rel_pos_bias; excludes cross_rel_pos_bias.
  bool cross_attn_self_rel_pos = false;
  bool rotary_pos_emb = false;  // also turned on by rotary_xpos, as in x-transformers
  int64_t rotary_emb_dim = 0;   // 0 = dim_head / 2
  bool rotary_xpos = false;
  double rotary_xpos_scale_base = 512;
  double rotary_interpolation_factor = 1;
  double rotary_base_rescale_factor = 1;
  // Whether a wrapper leaves out its absolute position embedding; unset:
  // with a T5 bias or rotary, not with ALiBi (x-transformers' default).
  std::optional<bool> disable_abs_pos_emb;
  // per-layer options (x-transformers' attn_*, cross_attn_*, ff_* keywords)
  AttentionConfig attn;  // dim, heads and causal are set from the above
  // The 'c' layers' options: attn with x-transformers' cross_attn_* keys on
  // top (cross_attn_dim_head, cross_attn_kv_heads, cross_attn_num_mem_kv, ...).
  // Unset: attn. dim, heads and causal are set from the above either way.
  std::optional<AttentionConfig> cross_attn;
  int64_t cross_attn_dim_context = 0;  // context width for 'c' layers; 0 = dim (also cross_attn->dim_context)
  FeedForwardConfig ff;  // dim is set from the above
};

struct LayersInputs {
  Tensor context;       // (b, j, cross_attn_dim_context)
  Tensor mask;          // (b, n) bool
  Tensor context_mask;  // (b, j) bool
  Tensor attn_mask;     // self-attention: (i, j), (h, i, j) or (b, h, i, j)
  Tensor attn_bias;     // external additive bias for self-attention
  Tensor pos;           // positions (n) or (b, n): ALiBi (any floats; per head (b, h, n)) and rotary
  Tensor cross_q_pos, context_pos;  // int64 positions for the cross relative bias; default 0..n-1, 0..j-1
  Tensor condition;     // (b, dim_condition) or (b, n, dim_condition), for the adaptive norms / layerscale
  Tensor prefix_attn_len;  // PrefixDecoder: int64 (b) or one value, keys every query sees
  // Transformer-XL: one memory (b, m, dim) per self-attention layer, in
  // front of its keys; mem_masks (b, m) optional. hiddens_out receives each
  // self-attention layer's input, from which a wrapper makes the next memories.
  std::vector<Tensor> mems, mem_masks;
  std::vector<Tensor>* hiddens_out = nullptr;
  // Selective attention's memory loss (AttentionConfig::selective_memory_loss
  // > 0, no cache): receives ε times the mean of the self-attention layers' terms.
  Tensor* selective_memory_loss = nullptr;
};

// The KV caches of every attention layer, for step-by-step decoding.
struct LayersCache {
  std::vector<KVCache> layers;  // one per 'a' and 'c' layer, in order
  int64_t length = 0;           // positions seen so far
  // Selective attention's context pruning: at most budgets[l] positions stay
  // in self-attention layer l's cache after every call, the most masked are
  // evicted (nn::prune); one entry holds for every layer, 0 keeps a layer's
  // whole context, none keeps everything.
  std::vector<int64_t> budgets;
  int64_t bytes() const;  // what the layers' caches hold
};

class AttentionLayers : public Module {
 public:
  explicit AttentionLayers(const AttentionLayersConfig& config);
  // With a cache, x holds only the positions after cache->length; the result
  // equals the matching rows of a forward over the whole sequence. Needs
  // causal attention; a mask (b, n) covers the new positions only. Once a
  // layer's cache is pruned (cache->budget), its position encodings are
  // computed from the absolute positions of the keys it kept.
  Tensor forward(const Tensor& x, const LayersInputs& in = {}, LayersCache* cache = nullptr) const;

  // Whether TransformerWrapper should skip its absolute position embedding
  // (x-transformers: with a T5 bias or rotary, not with ALiBi).
  bool disable_abs_pos_emb() const {
    return config.disable_abs_pos_emb.value_or(config.rel_pos_bias || config.rotary_pos_emb);
  }
  // Whether step-by-step decoding with a KV cache is possible.
  bool can_cache_kv() const;
  int64_t self_attention_layers() const;  // the 'a' layers, which LayersCache::budgets counts
  bool needs_condition() const;

  AttentionLayersConfig config;
  std::vector<std::string> layer_types;
  std::shared_ptr<ModuleList> layers;
  std::shared_ptr<Module> final_norm;  // null with post-norm
  std::shared_ptr<RelativePositionBias> rel_pos, cross_rel_pos;
  std::shared_ptr<AlibiPositionalBias> alibi;
  std::shared_ptr<DynamicPositionBias> dynamic_pos;
  std::shared_ptr<RotaryEmbedding> rotary;
  std::shared_ptr<Linear> adaptive_mlp;  // adaptive_condition_mlp
  Tensor stream_emb;                      // hyper-connections: (num_residual_streams, dim)
  Generator* generator = nullptr;         // layer and context-token dropout; nullptr = the default generator

 // One entry of layers, as forward runs it (tests read the blocks from here).
  struct Layer {
    std::string type;
    std::shared_ptr<Module> pre_norm, post_branch_norm, post_main_norm;
    std::shared_ptr<Attention> attention;
    std::shared_ptr<FeedForward> ff;
    std::vector<int64_t> shifts;              // token shift amounts, one per feature chunk
    Tensor layerscale;                        // LayerScale gamma
    std::shared_ptr<Linear> adaptive_scale;   // AdaptiveLayerScale to_gamma
    std::shared_ptr<Module> residual;         // Residual (with a scale), GRUGating, HyperConnection; or null
  };
  const std::vector<Layer>& stack() const { return stack_; }

 private:
  std::vector<Layer> stack_;
  std::shared_ptr<Module> make_norm() const;
  Tensor norm(const std::shared_ptr<Module>& n, const Tensor& x, const Tensor& condition) const;
  Tensor self_attention_bias(int64_t n, int64_t total, const Tensor& pos) const;
};

// x-transformers' dropout_seq (cross_attn_tokens_dropout): keeps max(1, ⌊(1 - p) n⌋)
// of seq's n tokens (b, n, d), those with the largest N(0, 1) draws from gen
// (masked ones last), in the order of the draws; mask (b, n), if given,
// becomes the kept tokens' mask with each sample's ⌈real · (1 - p)⌉ first.
void dropout_seq(Tensor& seq, Tensor& mask, double p, Generator* gen = nullptr);

std::shared_ptr<AttentionLayers> Encoder(AttentionLayersConfig config);        // causal = false
std::shared_ptr<AttentionLayers> Decoder(AttentionLayersConfig config);        // causal = true
std::shared_ptr<AttentionLayers> PrefixDecoder(AttentionLayersConfig config);  // causal mask, bidirectional prefix
std::shared_ptr<AttentionLayers> CrossAttender(AttentionLayersConfig config);  // cross-attention and feedforward only

}  // namespace loom::nn
