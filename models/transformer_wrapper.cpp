#include <loom/models/transformer_wrapper.h>

#include <cmath>

#include <loom/core/autograd.h>
#include <loom/core/error.h>
#include <loom/ops/ops.h>

namespace loom {

namespace {
// x-transformers' TokenEmbedding: the table is `emb`.
struct TokenEmbedding : nn::Module {
  explicit TokenEmbedding(std::shared_ptr<nn::Embedding> emb) { register_module("emb", std::move(emb)); }
};

Tensor l2norm(const Tensor& x) { return x / clamp(sqrt(sum(x * x, {-1}, true)), 1e-12); }
}  // namespace

TransformerWrapper::TransformerWrapper(const TransformerWrapperConfig& c) : config(c) {
  TransformerWrapperConfig& o = config;
  LOOM_CHECK(o.attn_layers != nullptr, "TransformerWrapper: attn_layers is required");
  LOOM_CHECK(o.num_tokens > 0, "TransformerWrapper: num_tokens must be positive, got ", o.num_tokens);
  LOOM_CHECK(o.max_seq_len >= 0, "TransformerWrapper: max_seq_len must be >= 0, got ", o.max_seq_len);
  LOOM_CHECK(o.emb_dropout >= 0 && o.emb_dropout < 1, "TransformerWrapper: emb_dropout must be in [0, 1), got ",
             o.emb_dropout);
  const int64_t dim = o.attn_layers->config.dim;
  if (o.emb_dim == 0) o.emb_dim = dim;
  if (o.logits_dim == 0) o.logits_dim = o.num_tokens;

  auto emb = std::make_shared<nn::Embedding>(o.num_tokens, o.emb_dim);
  {
    NoGradGuard no_grad;  // kaiming_normal_: std √(2 / emb_dim); l2norm_embed: std 1e-5
    emb->weight.copy_(randn({o.num_tokens, o.emb_dim}) * float(o.l2norm_embed ? 1e-5 : std::sqrt(2.0 / double(o.emb_dim))));
  }
  token_emb = emb;
  register_module("token_emb", std::make_shared<TokenEmbedding>(emb));

  const bool abs_pos = o.max_seq_len > 0 && o.use_abs_pos_emb && !o.attn_layers->disable_abs_pos_emb();
  if (abs_pos && o.scaled_sinu_pos_emb) {
    sinu_pos_emb = register_module("pos_emb", std::make_shared<nn::ScaledSinusoidalEmbedding>(o.emb_dim));
  } else if (abs_pos) {
    abs_pos_emb = register_module("pos_emb", std::make_shared<nn::AbsolutePositionalEmbedding>(
                                                 nn::AbsolutePositionalEmbeddingOptions{o.emb_dim, o.max_seq_len, o.l2norm_embed}));
    if (o.l2norm_embed) {
      NoGradGuard no_grad;
      abs_pos_emb->emb->weight.copy_(randn({o.max_seq_len, o.emb_dim}) * 1e-5f);
    }
  }
  if (o.post_emb_norm) post_emb_norm = register_module("post_emb_norm", std::make_shared<nn::LayerNorm>(o.emb_dim));
  if (o.emb_dim != dim) project_emb = register_module("project_emb", std::make_shared<nn::Linear>(o.emb_dim, dim));
  attn_layers = register_module("attn_layers", o.attn_layers);
  if (!o.return_only_embed && !o.tie_embedding)
    to_logits = register_module("to_logits", std::make_shared<nn::Linear>(dim, o.logits_dim, false));
  LOOM_CHECK(!o.tie_embedding || o.emb_dim == dim, "TransformerWrapper: tie_embedding needs emb_dim == dim");
  if (o.num_memory_tokens > 0) memory_tokens = register_parameter("memory_tokens", randn({o.num_memory_tokens, dim}));
}

bool TransformerWrapper::can_cache_kv() const {
  const nn::AttentionLayersConfig& l = attn_layers->config;
  return config.num_memory_tokens == 0 && l.causal && !l.attn.selective && !l.residual_attn && !l.cross_residual_attn;
}

Tensor TransformerWrapper::forward(const Tensor& tokens, const WrapperInputs& in, nn::LayersCache* cache) const {
  const TransformerWrapperConfig& o = config;
  LOOM_CHECK(tokens.dim() == 2 && tokens.dtype() == kInt64, "TransformerWrapper: expects int64 tokens (b, n), got ",
             dtype_name(tokens.dtype()), " ", tokens.sizes());
  const int64_t b = tokens.size(0), n = tokens.size(1), offset = cache ? cache->length : 0;
  LOOM_CHECK(!abs_pos_emb || offset + n <= o.max_seq_len, "TransformerWrapper: sequence length ", offset + n,
             " exceeds max_seq_len ", o.max_seq_len);
  LOOM_CHECK(!cache || can_cache_kv(), "TransformerWrapper: this model cannot use a KV cache (it needs a causal "
             "decoder without memory tokens or selective attention)");
  LOOM_CHECK(!(cache && in.pos.defined()), "TransformerWrapper: pos cannot be combined with a KV cache");

  Tensor x = token_emb->forward(tokens);
  if (o.l2norm_embed) x = l2norm(x);
  if (abs_pos_emb) {
    LOOM_CHECK(!in.pos.defined() || in.pos.dtype() == kInt64,
               "TransformerWrapper: non-integer positions need use_abs_pos_emb = false (the absolute embedding "
               "indexes a table), got ", dtype_name(in.pos.dtype()));
    Tensor pos = in.pos.defined() ? in.pos : (cache ? arange(offset, offset + n) : Tensor());
    x = x + abs_pos_emb->forward(x, pos);
  } else if (sinu_pos_emb) {
    x = x + sinu_pos_emb->forward(x, in.pos.defined() ? in.pos : (cache ? arange(offset, offset + n, kFloat32) : Tensor()));
  }
  if (post_emb_norm) x = post_emb_norm->forward(x);
  x = dropout(x, o.emb_dropout, is_training() && o.emb_dropout > 0);
  if (project_emb) x = project_emb->forward(x);

  nn::LayersInputs li;
  li.context = in.context, li.context_mask = in.context_mask, li.attn_mask = in.attn_mask;
  li.attn_bias = in.attn_bias, li.pos = in.pos, li.mask = in.mask;
  const int64_t m = o.num_memory_tokens;
  if (m > 0) {  // learned tokens in front of the sequence, visible to all
    LOOM_CHECK(!in.pos.defined() && !in.attn_mask.defined() && !in.attn_bias.defined(),
               "TransformerWrapper: memory tokens cannot be combined with pos, attn_mask or attn_bias");
    x = cat({memory_tokens.unsqueeze(0).expand({b, -1, -1}), x}, 1);
    if (in.mask.defined()) li.mask = cat({ones({b, m}, kBool), in.mask}, 1);
  }
  x = attn_layers->forward(x, li, cache);
  if (m > 0) x = x.narrow(1, m, n);
  if (in.return_embeddings || o.return_only_embed) return x;
  return o.tie_embedding ? matmul(x, token_emb->weight.t()) : to_logits->forward(x);
}

}  // namespace loom
