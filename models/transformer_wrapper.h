// TransformerWrapper: token ids in, logits out, as x-transformers'
// TransformerWrapper (models/transformer_wrapper.cpp):
//
//   tokens -> token_emb [+ pos_emb] [-> post_emb_norm] -> dropout [-> project_emb]
//   [cls tokens, memory tokens in front] -> attn_layers [memory tokens removed]
//   [-> mean over the real tokens | the cls tokens] -> to_logits
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
  bool use_cls_token = false;       // learned tokens in front; the output is theirs: (b, V), or (b, num_cls_tokens, V)
  int64_t num_cls_tokens = 1;
  bool average_pool_embed = false;  // the output is the mean over the real tokens: (b, V)
  int64_t max_mem_len = 0;          // Transformer-XL: memories kept per layer (0 = all, as x-transformers)
  int64_t shift_mem_down = 0;       // the memories rotate down this many layers each call
  double emb_frac_gradient = 1.0;   // the share of the gradient that reaches the embeddings (CogView, GLM)
  // An existing token embedding to use (x-transformers' token_emb), e.g. another
  // model's, shared: one tensor under both models' names. Null: a new one.
  std::shared_ptr<nn::Embedding> token_emb;
};

struct WrapperInputs {
  Tensor mask;          // (b, n) bool, True = a real token
  // x-transformers' `pos`: int64 positions (n) or (b, n) for the absolute
  // position embedding, or a float (b, n, emb_dim) tensor added in its place
  // (an external position embedding). Never given to the layers.
  Tensor pos;
  // Positions for the layers' ALiBi and rotary embeddings (x-transformers'
  // AttentionLayers.forward(pos=), which its TransformerWrapper cannot reach):
  // (n) or (b, n), any numeric dtype; per head (b, h_alibi, n) for ALiBi.
  Tensor layer_pos;
  Tensor context, context_mask, attn_mask, attn_bias;  // passed to attn_layers
  Tensor condition;        // for adaptive norms / layerscale (dim_condition)
  Tensor prefix_attn_len;  // for a PrefixDecoder
  // Transformer-XL (max_mem_len): the memories of the previous segment, one
  // per self-attention layer (b, m, dim), and where to put this segment's
  // (each layer's input, after the old memories, the last max_mem_len
  // positions, detached).
  std::vector<Tensor> mems;
  std::vector<Tensor>* mems_out = nullptr;
  bool return_embeddings = false;  // the final hidden states (b, n, dim) instead of logits
  Tensor* selective_memory_loss = nullptr;  // see nn::LayersInputs (AutoregressiveWrapper::loss sets it)
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
  Tensor cls_token;      // (num_cls_tokens, dim)

 private:
  Tensor position_embedding(const Tensor& x, const Tensor& pos, int64_t offset) const;
};

}  // namespace loom
