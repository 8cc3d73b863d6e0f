#include <loom/models/continuous.h>

#include <loom/core/error.h>
#include <loom/ops/ops.h>

namespace loom {

ContinuousTransformerWrapper::ContinuousTransformerWrapper(const ContinuousTransformerWrapperConfig& c) : config(c) {
  LOOM_CHECK(c.attn_layers != nullptr, "ContinuousTransformerWrapper: attn_layers is required");
  LOOM_CHECK(c.emb_dropout >= 0 && c.emb_dropout < 1, "ContinuousTransformerWrapper: emb_dropout must be in [0, 1), got ",
             c.emb_dropout);
  const int64_t dim = c.attn_layers->config.dim;
  const bool abs_pos = c.max_seq_len > 0 && c.use_abs_pos_emb && !c.attn_layers->disable_abs_pos_emb();
  if (abs_pos && c.scaled_sinu_pos_emb)
    sinu_pos_emb = register_module("pos_emb", std::make_shared<nn::ScaledSinusoidalEmbedding>(dim));
  else if (abs_pos)
    abs_pos_emb = register_module("pos_emb", std::make_shared<nn::AbsolutePositionalEmbedding>(
                                                 nn::AbsolutePositionalEmbeddingOptions{dim, c.max_seq_len, false}));
  if (c.post_emb_norm) post_emb_norm = register_module("post_emb_norm", std::make_shared<nn::LayerNorm>(dim));
  if (c.num_memory_tokens > 0) memory_tokens = register_parameter("memory_tokens", randn({c.num_memory_tokens, dim}));
  attn_layers = register_module("attn_layers", c.attn_layers);
  if (c.dim_in > 0) project_in = register_module("project_in", std::make_shared<nn::Linear>(c.dim_in, dim, false));
  if (c.dim_out > 0) project_out = register_module("project_out", std::make_shared<nn::Linear>(dim, c.dim_out, false));
}

Tensor ContinuousTransformerWrapper::forward(const Tensor& x_in, const ContinuousInputs& in) const {
  const int64_t dim = attn_layers->config.dim, want = config.dim_in > 0 ? config.dim_in : dim;
  LOOM_CHECK(x_in.dim() == 3 && x_in.dtype() == kFloat32 && x_in.size(2) == want,
             "ContinuousTransformerWrapper: expects float32 x (b, n, ", want, "), got ", x_in.sizes());
  const int64_t b = x_in.size(0), n = x_in.size(1);
  Tensor x = project_in ? project_in->forward(x_in) : x_in;
  // x-transformers drops a pos it has no embedding for; loom says so.
  LOOM_CHECK(!in.pos.defined() || abs_pos_emb || sinu_pos_emb,
             "ContinuousTransformerWrapper: pos indexes the absolute position embedding, which this model does not "
             "have; positions for ALiBi or rotary go in layer_pos");
  if (abs_pos_emb) x = x + abs_pos_emb->forward(x, in.pos);
  if (sinu_pos_emb) x = x + sinu_pos_emb->forward(x, in.pos);
  if (post_emb_norm) x = post_emb_norm->forward(x);
  nn::LayersInputs li;
  li.mask = in.mask, li.context = in.context, li.context_mask = in.context_mask;
  li.attn_mask = in.attn_mask, li.attn_bias = in.attn_bias;
  li.pos = in.layer_pos;
  li.condition = in.condition, li.prefix_attn_len = in.prefix_attn_len;
  const int64_t m = config.num_memory_tokens;
  if (m > 0) {
    x = cat({memory_tokens.unsqueeze(0).expand({b, -1, -1}), x}, 1);
    if (in.mask.defined()) li.mask = cat({ones({b, m}, kBool), in.mask}, 1);
  }
  x = dropout(x, config.emb_dropout, is_training() && config.emb_dropout > 0);
  x = attn_layers->forward(x, li);
  if (m > 0) x = x.narrow(1, m, n);
  if (config.average_pool_embed) {  // mean over the real positions
    if (in.mask.defined()) {
      Tensor w = in.mask.to(kFloat32).unsqueeze(-1);
      x = sum(x * w, {1}) / clamp(sum(w, {1}), 1.0);
    } else {
      x = mean(x, {1});
    }
  }
  if (in.return_embeddings || !project_out) return x;
  return project_out->forward(x);
}

}  // namespace loom
