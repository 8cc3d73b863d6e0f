// ContinuousTransformerWrapper: vectors in, vectors out, as x-transformers'
// (models/continuous.cpp):
//   x (b, n, dim_in) -> project_in -> [+ pos_emb] -> [post_emb_norm] -> [memory tokens]
//   -> dropout -> attn_layers -> [average pool] -> project_out -> (b, n, dim_out)
#pragma once

#include <loom/nn/transformer.h>

namespace loom {

struct ContinuousTransformerWrapperConfig {
  int64_t max_seq_len = 0;
  std::shared_ptr<nn::AttentionLayers> attn_layers;
  int64_t dim_in = 0;   // 0: no project_in (inputs are already dim wide)
  int64_t dim_out = 0;  // 0: no project_out
  int64_t num_memory_tokens = 0;
  bool post_emb_norm = false;
  double emb_dropout = 0.0;
  bool use_abs_pos_emb = true;
  bool scaled_sinu_pos_emb = false;
  bool average_pool_embed = false;
};

struct ContinuousInputs {
  Tensor mask;  // (b, n) bool
  Tensor pos;        // int64 (n) or (b, n): positions for the absolute embedding (x-transformers' `pos`)
  Tensor layer_pos;  // positions for the layers' ALiBi / rotary (AttentionLayers.forward(pos=)); see WrapperInputs
  Tensor context, context_mask, attn_mask, attn_bias;
  Tensor condition, prefix_attn_len;  // for adaptive norms / a PrefixDecoder, as TransformerWrapper's
  bool return_embeddings = false;
};

class ContinuousTransformerWrapper : public nn::Module {
 public:
  explicit ContinuousTransformerWrapper(const ContinuousTransformerWrapperConfig& config);
  Tensor forward(const Tensor& x, const ContinuousInputs& in = {}) const;

  ContinuousTransformerWrapperConfig config;
  std::shared_ptr<nn::Linear> project_in, project_out;
  std::shared_ptr<nn::AbsolutePositionalEmbedding> abs_pos_emb;
  std::shared_ptr<nn::ScaledSinusoidalEmbedding> sinu_pos_emb;
  std::shared_ptr<nn::LayerNorm> post_emb_norm;
  std::shared_ptr<nn::AttentionLayers> attn_layers;
  Tensor memory_tokens;
};

}  // namespace loom
