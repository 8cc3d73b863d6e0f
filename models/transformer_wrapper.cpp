#include <loom/models/transformer_wrapper.h>

#include <algorithm>
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

  std::shared_ptr<nn::Embedding> emb = o.token_emb;
  if (emb) {
    LOOM_CHECK(emb->weight.size(1) == o.emb_dim, "TransformerWrapper: the given token_emb is ", emb->weight.size(1),
               " wide, the model's emb_dim is ", o.emb_dim);
  } else {
    emb = std::make_shared<nn::Embedding>(o.num_tokens, o.emb_dim);
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
  LOOM_CHECK(!(o.use_cls_token && o.average_pool_embed),
             "TransformerWrapper: use at most one of use_cls_token, average_pool_embed");
  LOOM_CHECK(o.num_cls_tokens >= 1, "TransformerWrapper: num_cls_tokens must be >= 1, got ", o.num_cls_tokens);
  LOOM_CHECK(o.emb_frac_gradient > 0 && o.emb_frac_gradient <= 1,
             "TransformerWrapper: emb_frac_gradient must be in (0, 1], got ", o.emb_frac_gradient);
  if (o.use_cls_token) cls_token = register_parameter("cls_token", randn({o.num_cls_tokens, dim}) * 0.02f);
  if (o.num_memory_tokens > 0) memory_tokens = register_parameter("memory_tokens", randn({o.num_memory_tokens, dim}));
}

// x-transformers' `pos`: int64 positions index the absolute embedding (or
// feed the sinusoid); a float tensor is an external position embedding, added
// as it is. Without either embedding an int64 pos has nothing to index
// (x-transformers silently drops it): an error that points at layer_pos.
Tensor TransformerWrapper::position_embedding(const Tensor& x, const Tensor& pos, int64_t offset) const {
  const int64_t n = x.size(1);
  if (pos.defined() && pos.dtype() != kInt64) {
    LOOM_CHECK(pos.dtype() == kFloat32 && pos.dim() >= 2 && pos.size(-1) == config.emb_dim && pos.size(-2) == n,
               "TransformerWrapper: a float pos is an external position embedding and must be (b, ", n, ", ",
               config.emb_dim, ") or (", n, ", ", config.emb_dim, "), got ", dtype_name(pos.dtype()), " ", pos.sizes(),
               " (positions for ALiBi or rotary go in layer_pos)");
    return pos;
  }
  LOOM_CHECK(!pos.defined() || abs_pos_emb || sinu_pos_emb,
             "TransformerWrapper: pos (int64) indexes the absolute position embedding, which this model does not have; "
             "positions for ALiBi or rotary go in layer_pos");
  if (abs_pos_emb) return abs_pos_emb->forward(x, pos.defined() ? pos : (offset > 0 ? arange(offset, offset + n) : Tensor()));
  if (sinu_pos_emb)
    return sinu_pos_emb->forward(x, pos.defined() ? pos : (offset > 0 ? arange(offset, offset + n, kFloat32) : Tensor()));
  return Tensor();  // no position embedding
}

bool TransformerWrapper::can_cache_kv() const {
  return config.num_memory_tokens == 0 && !config.use_cls_token && !config.average_pool_embed &&
         attn_layers->can_cache_kv();
}

Tensor TransformerWrapper::forward(const Tensor& tokens, const WrapperInputs& in, nn::LayersCache* cache) const {
  const TransformerWrapperConfig& o = config;
  LOOM_CHECK(tokens.dim() == 2 && tokens.dtype() == kInt64, "TransformerWrapper: expects int64 tokens (b, n), got ",
             dtype_name(tokens.dtype()), " ", tokens.sizes());
  const int64_t b = tokens.size(0), n = tokens.size(1), offset = cache ? cache->length : 0;
  LOOM_CHECK(!abs_pos_emb || offset + n <= o.max_seq_len, "TransformerWrapper: sequence length ", offset + n,
             " exceeds max_seq_len ", o.max_seq_len);
  LOOM_CHECK(!cache || can_cache_kv(), "TransformerWrapper: this model cannot use a KV cache (it needs a causal "
             "decoder without memory or cls tokens, pooling or residual attention)");
  LOOM_CHECK(!(cache && (!in.mems.empty() || in.mems_out)), "TransformerWrapper: memories cannot be combined with a KV cache");
  LOOM_CHECK(!(cache && (in.pos.defined() || in.layer_pos.defined())),
             "TransformerWrapper: pos and layer_pos cannot be combined with a KV cache");

  Tensor x = token_emb->forward(tokens);
  if (o.l2norm_embed) x = l2norm(x);
  if (Tensor pe = position_embedding(x, in.pos, offset); pe.defined()) x = x + pe;
  if (post_emb_norm) x = post_emb_norm->forward(x);
  if (o.emb_frac_gradient < 1) x = x * float(o.emb_frac_gradient) + x.detach() * float(1 - o.emb_frac_gradient);
  x = dropout(x, o.emb_dropout, is_training() && o.emb_dropout > 0);
  if (project_emb) x = project_emb->forward(x);

  nn::LayersInputs li;
  li.context = in.context, li.context_mask = in.context_mask, li.attn_mask = in.attn_mask;
  li.attn_bias = in.attn_bias, li.pos = in.layer_pos, li.mask = in.mask;
  li.condition = in.condition, li.prefix_attn_len = in.prefix_attn_len;
  li.selective_memory_loss = in.selective_memory_loss;
  // Learned tokens in front of the sequence, visible to all: cls tokens,
  // then memory (register) tokens before them.
  const int64_t c = o.use_cls_token ? o.num_cls_tokens : 0, m = o.num_memory_tokens;
  if (c + m > 0)
    LOOM_CHECK(!in.layer_pos.defined() && !in.attn_mask.defined() && !in.attn_bias.defined(),
               "TransformerWrapper: cls and memory tokens cannot be combined with layer_pos, attn_mask or attn_bias");
  if (c > 0) {
    x = cat({cls_token.unsqueeze(0).expand({b, -1, -1}), x}, 1);
    if (li.mask.defined()) li.mask = cat({ones({b, c}, kBool), li.mask}, 1);
  }
  if (m > 0) {
    x = cat({memory_tokens.unsqueeze(0).expand({b, -1, -1}), x}, 1);
    if (li.mask.defined()) li.mask = cat({ones({b, m}, kBool), li.mask}, 1);
  }
  // Transformer-XL memories: the old ones go in; the new ones are each
  // self-attention layer's input, after the old memories, last max_mem_len.
  std::vector<Tensor> mems = in.mems;
  if (o.shift_mem_down > 0 && !mems.empty()) {
    const size_t k = size_t(o.shift_mem_down) % mems.size();
    std::rotate(mems.begin(), mems.begin() + k, mems.end());
  }
  li.mems = mems;
  std::vector<Tensor> hiddens;
  if (in.mems_out) li.hiddens_out = &hiddens;
  x = attn_layers->forward(x, li, cache);
  if (in.mems_out) {
    in.mems_out->clear();
    for (size_t l = 0; l < hiddens.size(); ++l) {
      Tensor t = mems.empty() ? hiddens[l] : cat({mems[l], hiddens[l]}, 1);
      const int64_t keep = o.max_mem_len > 0 ? std::min(o.max_mem_len, t.size(1)) : t.size(1);
      in.mems_out->push_back(t.narrow(1, t.size(1) - keep, keep).detach());
    }
  }
  if (m > 0) x = x.narrow(1, m, c + n);
  if (o.average_pool_embed) {  // the mean over the real tokens
    if (in.mask.defined()) {
      Tensor w = in.mask.to(kFloat32).unsqueeze(-1);
      x = sum(x * w, {1}) / clamp(sum(w, {1}), 1.0);
    } else {
      x = mean(x, {1});
    }
  }
  if (c > 0) x = c == 1 ? x.select(1, 0) : x.narrow(1, 0, c);  // the cls tokens' outputs
  if (in.return_embeddings || o.return_only_embed) return x;
  return o.tie_embedding ? matmul(x, token_emb->weight.t()) : to_logits->forward(x);
}

}  // namespace loom
