// nn::Attention: x-transformers' Attention module and its Attend (nn/attention.cpp).
//
//   q = to_q(x), k = to_k(context or [mem, x]), v = to_v(context or [mem, x])   (no biases)
//   split heads -> [value residual mix] -> [qk-norm] -> [rotary] -> [memory key/values in front]
//   -> attend -> [· head_scale] [· σ(to_v_head_gate(x))] -> merge heads
//   -> [· σ(to_v_gate(x))] -> to_out [-> GLU (on_attn)] -> zero rows where mask is False
//
// attend is the fused loom::attention op (ops/attention.cpp) unless an option
// needs the (b, h, i, j) logits or weights themselves — residual attention,
// talking heads, soft-clamped logits, sparse top-k — then it is x-transformers'
// Attend written out in plain ops, in its order:
//
//   s = scale · q·kᵀ [+ prev_attn]; [p = pre_scale_post(s)]; [s = s + pre_talking(s)];
//   s = s + bias; [s = c·tanh(s / c)]; masks; causal; [selective]; -> pre_softmax
//   a = softmax(s) (or the top-k softmax); dropout; [a = post_talking(a)]; [a = a · p]; out = a·v
//
// Either way a query that has no key to attend to gets zeros (see
// docs/attention.md for where x-transformers differs).
//
// Parameter names match x-transformers: to_q.weight, to_k.weight,
// to_v.weight, to_out.weight (to_out.0.weight with on_attn), mem_k, mem_v,
// to_v_gate.{weight,bias}, to_v_head_gate.{weight,bias}, qk_norm_q_scale,
// qk_norm_k_scale, head_scale_params, attend.pre_softmax_talking_heads.weight,
// attend.post_softmax_talking_heads.weight, attend.pre_scale_post_talking_heads.weight,
// to_value_residual_mix.0.{weight,bias}.
#pragma once

#include <loom/core/generator.h>
#include <loom/nn/layers.h>
#include <loom/nn/positional.h>

namespace loom::nn {

struct AttentionConfig {
  int64_t dim = 512;
  int64_t dim_head = 64;
  int64_t heads = 8;
  int64_t kv_heads = 0;      // 0 = heads; fewer for grouped-query attention (query head h uses kv head h mod kv_heads)
  bool one_kv_head = false;  // multi-query attention: kv_heads = 1
  int64_t dim_context = 0;   // width of the context for cross-attention; 0 = dim
  int64_t value_dim_head = 0;  // 0 = dim_head
  int64_t dim_out = 0;         // 0 = dim
  bool causal = false;
  double dropout = 0.0;  // on the attention weights, in training
  bool qk_norm = false;
  double qk_norm_scale = 10;
  bool qk_norm_dim_scale = false;
  int64_t num_mem_kv = 0;
  bool gate_values = false;
  bool swiglu_values = false;
  bool gate_value_heads = false;  // per-head gate σ(W x + b) on the heads' outputs (W = 0, b = 10 at init)
  bool selective = false;
  // Selective attention's training-time memory loss (Leviathan et al. 2024,
  // as recalled): AutoregressiveWrapper::loss adds selective_memory_loss (ε)
  // times the mean over self-attention layers of (1/n)·max_i N_i, N_i =
  // Σ_{j≤i} max(0, 1 − F_ij/τ) the soft count of keys query i still sees.
  // 0 = off (no cost); the paper's value is recalled as 0.1, τ as 1.
  double selective_memory_loss = 0;
  double selective_memory_loss_tau = 1;
  bool zero_init_output = false;
  // Options on the logits / weights (the materialised path):
  bool pre_talking_heads = false;    // s + W·s across heads before the softmax (W identity at init)
  bool post_talking_heads = false;   // W·a across heads after it
  bool pre_scale_post_talking_heads = false;  // a · (W·s), W·s of the logits before bias and masks
  bool softclamp_logits = false;     // s = c·tanh(s / c) after the bias, before the masks
  double logit_softclamp_value = 50;
  int64_t sparse_topk = 0;           // > 0: softmax over the k largest logits of each row only
  bool sparse_topk_straight_through = false;  // forward the top-k weights, backward the full softmax's
  bool head_scale = false;           // a learned scale per head on the heads' outputs (init 1)
  bool on_attn = false;              // attention on attention: to_out gives 2·dim_out, then a GLU
  // Value residual (ResFormer), set by AttentionLayers for add_value_residual:
  // a per-head, per-token mix σ(Linear(x)) instead of 0.5.
  bool learned_value_residual_mix = false;
};

// Keys and values of the positions seen so far, for decoding step by step
// (keys before rotary, as x-transformers caches them). For cross-attention
// it holds the context's keys and values, computed on the first call.
struct KVCache {
  Tensor k, v;    // (b, kv_heads, cached, dim_head)
  Tensor values;  // cross-attention: the context's values before any value residual mix
  // Self-attention, per cached key (b, cached): its absolute position
  // (int64; the rows differ once keys are evicted), its key mask (bool,
  // kept once a mask was given), and with selective attention the F it has
  // accumulated from every query so far (float).
  Tensor pos, mask, F;
  int64_t seen = 0;  // self-attention: positions this layer has been given
  int64_t bytes() const;  // what the tensors above hold
};

// Selective attention's context pruning (Leviathan et al. 2024, section 4):
// keeps at most `budget` keys in a self-attention cache, per batch row,
// evicting first keys the mask hides, then those with the highest F (the
// most masked; ties: the oldest). The kept keys stay in position order.
void prune(KVCache& cache, int64_t budget);

// What one call attends with. Masks are bool, True = attend.
struct AttentionInputs {
  Tensor context;       // (b, j, dim_context) for cross-attention
  Tensor mask;          // (b, i): query rows (their outputs are zeroed) and, in self-attention, keys
  Tensor context_mask;  // (b, j): keys; in self-attention it replaces mask for the keys
  Tensor attn_mask;     // (i, j), (h, i, j) or (b, h, i, j)
  Tensor attn_bias;     // additive, broadcastable to (b, h, i, j); must span the memory columns
  Tensor rel_pos_bias;  // additive (h, i, j) or (b, h, i, j) from a position bias; padded for memory columns
  const RotaryEmbedding::Output* rotary = nullptr;  // angles for q and k (self-attention)
  KVCache* cache = nullptr;  // when set: x holds only the new positions; the cache is read and extended
  // Residual attention (RealFormer): the previous layer's pre-softmax logits,
  // added to this layer's; and where to put this layer's for the next one.
  Tensor prev_attn;
  Tensor* pre_softmax_out = nullptr;
  // Value residual (ResFormer): the first layer's values, mixed into this
  // layer's; and where to put this layer's values (before any mixing).
  Tensor value_residual;
  Tensor* values_out = nullptr;
  // Transformer-XL memory: earlier hidden states (b, m, dim), already
  // normed, in front of x as keys and values (self-attention); mem_mask (b, m).
  Tensor mem, mem_mask;
  // Selective self-attention without a cache: receives this call's memory
  // term (1/n)·max_i N_i (AttentionConfig::selective_memory_loss), the mean
  // over batch rows, with autograd.
  Tensor* selective_memory_out = nullptr;
};

class Attention : public Module {
 public:
  explicit Attention(const AttentionConfig& config);
  Tensor forward(const Tensor& x, const AttentionInputs& in = {}) const;
  // Whether attend needs the logits materialised (residual attention aside).
  bool materialises() const;

  AttentionConfig config;
  std::shared_ptr<Linear> to_q, to_k, to_v, to_out, to_v_gate, to_v_head_gate, to_value_residual_mix;
  Tensor mem_k, mem_v;                       // (kv_heads, num_mem_kv, dim_head)
  Tensor qk_norm_q_scale, qk_norm_k_scale;   // (heads | kv_heads, 1, dim_head)
  Tensor head_scale_params;                  // (1, heads, 1, 1)
  // The 1×1 convolutions across heads, (heads, heads, 1, 1) as nn.Conv2d stores them.
  Tensor pre_softmax_talking_heads, post_softmax_talking_heads, pre_scale_post_talking_heads;
  Generator* generator = nullptr;            // for dropout; nullptr = the default generator

 private:
  // Selective attention across cached calls: F carried in, which keys may
  // be gated, where the F after this call goes (see loom::AttentionOptions).
  struct Carry {
    Tensor F, gated;
    Tensor* out = nullptr;
    Tensor* gate = nullptr;  // receives head 0's gate G (b, i, j) with autograd, for the memory loss
  };
  Tensor attend(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask, const Tensor& bias,
                const AttentionInputs& in, const Carry& carry) const;
};

}  // namespace loom::nn
