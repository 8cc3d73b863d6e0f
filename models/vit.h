// ViTransformerWrapper: images in, class logits out, as x-transformers'
// (models/vit.cpp):
//   img (b, c, H, W) -> patches (b, (H/p)(W/p), p·p·c) -> LayerNorm -> Linear -> LayerNorm
//   -> + pos_embedding -> [post_emb_norm] -> dropout -> [register tokens] -> Encoder
//   -> mean over patches -> [mlp_head]
#pragma once

#include <loom/nn/transformer.h>

namespace loom {

struct ViTransformerWrapperConfig {
  int64_t image_size = 0;
  int64_t patch_size = 0;
  std::shared_ptr<nn::AttentionLayers> attn_layers;  // an Encoder
  int64_t channels = 3;
  int64_t num_classes = 0;  // 0: no mlp_head (x-transformers' Identity), forward returns the pooled (b, dim)
  bool post_emb_norm = false;
  int64_t num_register_tokens = 0;
  double emb_dropout = 0.0;
};

class ViTransformerWrapper : public nn::Module {
 public:
  explicit ViTransformerWrapper(const ViTransformerWrapperConfig& config);
  // img: float32 (b, channels, image_size, image_size) -> logits (b, num_classes),
  // the mean-pooled embedding (b, dim) without num_classes, or the patch
  // embeddings (b, patches, dim) with return_embeddings.
  Tensor forward(const Tensor& img, bool return_embeddings = false) const;

  // (b, c, H, W) -> (b, (H/p)(W/p), p·p·c), x-transformers' patch layout.
  static Tensor patchify(const Tensor& img, int64_t patch_size);

  ViTransformerWrapperConfig config;
  Tensor pos_embedding;   // (1, patches, dim)
  Tensor register_tokens;  // (num_register_tokens, dim)
  std::shared_ptr<nn::LayerNorm> patch_norm_in, patch_norm_out, post_emb_norm;
  std::shared_ptr<nn::Linear> patch_linear, mlp_head;
  std::shared_ptr<nn::AttentionLayers> attn_layers;
};

}  // namespace loom
