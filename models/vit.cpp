#include <loom/models/vit.h>

#include <loom/core/error.h>
#include <loom/ops/ops.h>

namespace loom {

ViTransformerWrapper::ViTransformerWrapper(const ViTransformerWrapperConfig& c) : config(c) {
  LOOM_CHECK(c.attn_layers != nullptr, "ViTransformerWrapper: attn_layers is required");
  LOOM_CHECK(c.image_size > 0 && c.patch_size > 0 && c.image_size % c.patch_size == 0,
             "ViTransformerWrapper: image_size (", c.image_size, ") must be a positive multiple of patch_size (",
             c.patch_size, ")");
  LOOM_CHECK(c.channels > 0, "ViTransformerWrapper: channels must be positive, got ", c.channels);
  const int64_t dim = c.attn_layers->config.dim;
  const int64_t patches = (c.image_size / c.patch_size) * (c.image_size / c.patch_size);
  const int64_t patch_dim = c.channels * c.patch_size * c.patch_size;
  pos_embedding = register_parameter("pos_embedding", randn({1, patches, dim}));
  if (c.num_register_tokens > 0) register_tokens = register_parameter("register_tokens", randn({c.num_register_tokens, dim}));
  // patch_to_embedding = Sequential(LayerNorm(patch_dim), Linear(patch_dim, dim), LayerNorm(dim))
  auto seq = register_module("patch_to_embedding", std::make_shared<nn::ModuleList>());
  patch_norm_in = std::make_shared<nn::LayerNorm>(patch_dim);
  patch_linear = std::make_shared<nn::Linear>(patch_dim, dim);
  patch_norm_out = std::make_shared<nn::LayerNorm>(dim);
  seq->append(patch_norm_in);
  seq->append(patch_linear);
  seq->append(patch_norm_out);
  if (c.post_emb_norm) post_emb_norm = register_module("post_emb_norm", std::make_shared<nn::LayerNorm>(dim));
  attn_layers = register_module("attn_layers", c.attn_layers);
  if (c.num_classes > 0) mlp_head = register_module("mlp_head", std::make_shared<nn::Linear>(dim, c.num_classes));
}

Tensor ViTransformerWrapper::patchify(const Tensor& img, int64_t p) {
  const int64_t b = img.size(0), ch = img.size(1), h = img.size(2) / p, w = img.size(3) / p;
  // 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'
  return img.reshape({b, ch, h, p, w, p}).permute({0, 2, 4, 3, 5, 1}).reshape({b, h * w, p * p * ch});
}

Tensor ViTransformerWrapper::forward(const Tensor& img, bool return_embeddings) const {
  const ViTransformerWrapperConfig& c = config;
  LOOM_CHECK(img.dim() == 4 && img.dtype() == kFloat32 && img.size(1) == c.channels && img.size(2) == c.image_size &&
                 img.size(3) == c.image_size,
             "ViTransformerWrapper: expects float32 images (b, ", c.channels, ", ", c.image_size, ", ", c.image_size,
             "), got ", img.sizes());
  const int64_t b = img.size(0);
  Tensor x = patch_norm_out->forward(patch_linear->forward(patch_norm_in->forward(patchify(img, c.patch_size))));
  const int64_t n = x.size(1);
  x = x + pos_embedding;
  if (post_emb_norm) x = post_emb_norm->forward(x);
  x = dropout(x, c.emb_dropout, is_training() && c.emb_dropout > 0);
  if (c.num_register_tokens > 0) x = cat({x, register_tokens.unsqueeze(0).expand({b, -1, -1})}, 1);  // after the patches
  x = attn_layers->forward(x);
  if (c.num_register_tokens > 0) x = x.narrow(1, 0, n);
  if (return_embeddings) return x;
  Tensor pooled = mean(x, {1});  // over the patches (registers removed)
  return mlp_head ? mlp_head->forward(pooled) : pooled;
}

}  // namespace loom
