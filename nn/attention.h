// nn::Attention: x-transformers' Attention module (nn/attention.cpp) on top
// of the fused loom::attention op.
//
//   q = to_q(x), k = to_k(context or x), v = to_v(context or x)   (no biases)
//   split heads -> [qk-norm] -> [rotary] -> [memory key/values in front]
//   -> attention(q, k, v; masks, bias, causal, selective) -> merge heads
//   -> [· σ(to_v_gate(x))] -> to_out -> zero rows where mask is False
//
// Parameter names match x-transformers: to_q.weight, to_k.weight,
// to_v.weight, to_out.weight, mem_k, mem_v, to_v_gate.{weight,bias},
// qk_norm_q_scale, qk_norm_k_scale.
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
  bool selective = false;
  bool zero_init_output = false;
};

// Keys and values of the positions seen so far, for decoding step by step
// (keys before rotary, as x-transformers caches them). For cross-attention
// it holds the context's keys and values, computed on the first call.
struct KVCache {
  Tensor k, v;  // (b, kv_heads, cached, dim_head)
};

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
  // Either one materialises the (b, h, i, j) logits.
  Tensor prev_attn;
  Tensor* pre_softmax_out = nullptr;
};

class Attention : public Module {
 public:
  explicit Attention(const AttentionConfig& config);
  Tensor forward(const Tensor& x, const AttentionInputs& in = {}) const;

  AttentionConfig config;
  std::shared_ptr<Linear> to_q, to_k, to_v, to_out, to_v_gate;
  Tensor mem_k, mem_v;                       // (kv_heads, num_mem_kv, dim_head)
  Tensor qk_norm_q_scale, qk_norm_k_scale;   // (heads | kv_heads, 1, dim_head)
  Generator* generator = nullptr;            // for dropout; nullptr = the default generator
};

}  // namespace loom::nn
