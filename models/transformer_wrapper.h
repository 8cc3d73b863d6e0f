// TransformerWrapper: token ids in, logits out, as x-transformers'
// TransformerWrapper (models/transformer_wrapper.cpp):
//
//   tokens -> token_emb [+ pos_emb] [-> post_emb_norm] -> dropout [-> project_emb]
//   [memory tokens in front] -> attn_layers [memory tokens removed] -> to_logits
//
//   auto model = loom::TransformerWrapper({.num_tokens = 256, .max_seq_len = 1024,
//       .attn_layers = loom::nn::Decoder({.dim = 512, .depth = 6, .heads = 8})});
//   loom::Tensor logits = model.forward(tokens, {.mask = mask});
#pragma once

#include <loom/nn/transformer.h>

namespace loom {

struct TransformerWrapperConfig {
  int64_t num_tokens = 0;
  int64_t max_seq_len = 0;
  std::shared_ptr<nn::AttentionLayers> attn_layers;
  int64_t emb_dim = 0;  // 0 = attn_layers' dim; otherwise projected by project_emb
  double emb_dropout = 0.0;
  bool post_emb_norm = false;
  int64_t num_memory_tokens = 0;
  bool tie_embedding = false;
  int64_t logits_dim = 0;  // 0 = num_tokens
  bool use_abs_pos_emb = true;
  bool scaled_sinu_pos_emb = false;
  bool l2norm_embed = false;
  bool return_only_embed = false;
};

struct WrapperInputs {
  Tensor mask;          // (b, n) bool, True = a real token
  Tensor pos;           // positions (n) or (b, n): int64 for the absolute embedding; any for ALiBi / rotary
  Tensor context, context_mask, attn_mask, attn_bias;  // passed to attn_layers
  bool return_embeddings = false;  // the final hidden states (b, n, dim) instead of logits
};

class TransformerWrapper : public nn::Module {
 public:
  explicit TransformerWrapper(const TransformerWrapperConfig& config);
  // tokens: int64 (b, n) -> logits (b, n, logits_dim). With a cache, tokens
  // are only the positions after cache->length (see AttentionLayers).
  Tensor forward(const Tensor& tokens, const WrapperInputs& in = {}, nn::LayersCache* cache = nullptr) const;
  // Whether step-by-step decoding with a KV cache is possible.
  bool can_cache_kv() const;

  TransformerWrapperConfig config;
  std::shared_ptr<nn::Embedding> token_emb;  // token_emb.emb.weight
  std::shared_ptr<nn::AbsolutePositionalEmbedding> abs_pos_emb;
  std::shared_ptr<nn::ScaledSinusoidalEmbedding> sinu_pos_emb;
  std::shared_ptr<nn::LayerNorm> post_emb_norm;
  std::shared_ptr<nn::Linear> project_emb, to_logits;
  std::shared_ptr<nn::AttentionLayers> attn_layers;
  Tensor memory_tokens;  // (num_memory_tokens, dim)
};

}  // namespace loom
