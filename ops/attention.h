// Attention: softmax(scale · q·kᵀ + bias − selective) · v, fused (ops/attention.cpp).
#pragma once

#include <optional>

#include <loom/core/generator.h>
#include <loom/core/tensor.h>

namespace loom {

struct AttentionOptions {
  // Boolean masks, True = attend; they combine by AND.
  Tensor key_padding_mask;  // [b, j]
  Tensor attn_mask;         // broadcastable to [b, h, i, j]
  // Added to the scaled logits; broadcastable to [b, h, i, j], e.g. [h, i, j]
  // (T5 relative bias) or [b, h, i, j] (ALiBi at per-sample positions).
  // Gets a gradient when it requires grad.
  Tensor bias;
  // Query r sees key c when c <= r + (j - i): the i queries are the last i
  // positions of the j keys (cached decoding).
  bool causal = false;
  // Selective attention (Leviathan et al. 2024), as x-transformers'
  // attn_selective: head 0's ReLU'd logits, shifted and summed over earlier
  // queries, are subtracted from every head's logits. Needs causal.
  bool selective = false;
  // Selective attention across calls (cached decoding, nn::KVCache):
  // selective_carry [b, j] is the F each key has accumulated from the
  // queries of earlier calls (0 for keys new in this call); this call's
  // queries add their gates on top. selective_carry_out, when set, receives
  // [b, j]: the carry plus every query's gate, which the next call starts
  // from. selective_gated [b, j] bool says which keys may be gated at all
  // (false: memory keys and the sequence's first position); unset, the keys
  // c <= j - i are not, x-transformers' rule for one call over the whole
  // sequence. A query's own key (c = r + j - i) is never gated. No gradient
  // flows into the carry.
  Tensor selective_carry, selective_gated;
  Tensor* selective_carry_out = nullptr;
  std::optional<double> scale;  // default 1 / sqrt(d)
  double dropout = 0.0;         // on the attention weights, from `generator`
  Generator* generator = nullptr;
};

// q [b, h, i, d], k [b, h_kv, j, d], v [b, h_kv, j, d_v] with h a multiple
// of h_kv: query head q uses key/value head q mod h_kv (x-transformers' GQA
// layout). Returns [b, h, i, d_v]. A query with no key to attend to gets a
// zero output and zero gradients.
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& options = {});

// The same, plus the attention weights [b, h, i, j] (after softmax, before
// dropout; not differentiable), for tests and pictures.
struct AttentionResult {
  Tensor out;
  Tensor weights;
};
AttentionResult attention_with_weights(const Tensor& q, const Tensor& k, const Tensor& v,
                                       const AttentionOptions& options = {});

}  // namespace loom
