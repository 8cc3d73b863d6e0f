#include <loom/models/xtransformer.h>

#include <loom/core/autograd.h>
#include <loom/core/error.h>

namespace loom {

namespace {
// x-transformers wraps the decoder in an AutoregressiveWrapper, so its
// parameters live under decoder.net.
struct NetHolder : nn::Module {
  explicit NetHolder(std::shared_ptr<nn::Module> net) { register_module("net", std::move(net)); }
};

std::shared_ptr<TransformerWrapper> make_encoder(const XTransformerConfig& c) {
  nn::AttentionLayersConfig layers = c.enc;
  layers.dim = c.dim;
  return std::make_shared<TransformerWrapper>(TransformerWrapperConfig{
      .num_tokens = c.enc_num_tokens, .max_seq_len = c.enc_max_seq_len, .attn_layers = nn::Encoder(layers),
      .emb_dropout = c.enc_emb_dropout, .num_memory_tokens = c.enc_num_memory_tokens,
      .use_abs_pos_emb = c.enc_use_abs_pos_emb, .scaled_sinu_pos_emb = c.enc_scaled_sinu_pos_emb,
      .return_only_embed = true, .token_emb = nullptr});
}

// With tie_token_emb the decoder embeds with the encoder's table (x-transformers
// assigns decoder.token_emb = encoder.token_emb after building both).
std::shared_ptr<TransformerWrapper> make_decoder(const XTransformerConfig& c, const TransformerWrapper& encoder) {
  nn::AttentionLayersConfig layers = c.dec;
  layers.dim = c.dim;
  layers.cross_attend = true;
  return std::make_shared<TransformerWrapper>(TransformerWrapperConfig{
      .num_tokens = c.dec_num_tokens, .max_seq_len = c.dec_max_seq_len, .attn_layers = nn::Decoder(layers),
      .emb_dropout = c.dec_emb_dropout, .use_abs_pos_emb = c.dec_use_abs_pos_emb,
      .scaled_sinu_pos_emb = c.dec_scaled_sinu_pos_emb,
      .token_emb = c.tie_token_emb ? encoder.token_emb : nullptr});
}
}  // namespace

XTransformer::XTransformer(const XTransformerConfig& c)
    : config(c),
      encoder(make_encoder(c)),
      decoder_net(make_decoder(c, *encoder)),
      decoder(decoder_net, c.ignore_index, c.pad_value) {
  LOOM_CHECK(c.cross_attn_tokens_dropout >= 0 && c.cross_attn_tokens_dropout < 1,
             "XTransformer: cross_attn_tokens_dropout must be in [0, 1), got ", c.cross_attn_tokens_dropout);
  register_module("encoder", encoder);
  register_module("decoder", std::make_shared<NetHolder>(decoder_net));
}

Tensor XTransformer::encode(const Tensor& src, const Tensor& src_mask, const Tensor& attn_mask) const {
  WrapperInputs in;
  in.mask = src_mask, in.attn_mask = attn_mask;
  return encoder->forward(src, in);
}

Tensor XTransformer::forward(const Tensor& src, const Tensor& tgt, const Tensor& src_mask, const Tensor& attn_mask) const {
  WrapperInputs in;
  in.context = encode(src, src_mask, attn_mask);
  in.context_mask = src_mask;
  return decoder_net->forward(tgt, in);
}

Tensor XTransformer::loss(const Tensor& src, const Tensor& tgt, const Tensor& src_mask) const {
  WrapperInputs in;
  in.context = encode(src, src_mask);
  in.context_mask = src_mask;
  if (is_training() && config.cross_attn_tokens_dropout > 0)  // as x-transformers' forward
    nn::dropout_seq(in.context, in.context_mask, config.cross_attn_tokens_dropout, generator);
  return decoder.loss(tgt, in);
}

Tensor XTransformer::generate(const Tensor& src, const Tensor& start, int64_t seq_len, const GenerateOptions& options,
                              Generator& gen, const Tensor& src_mask) {
  NoGradGuard no_grad;
  const bool was_training = is_training();
  eval();
  WrapperInputs in;
  in.context = encode(src, src_mask);
  in.context_mask = src_mask;
  Tensor out = decoder.generate(start, seq_len, options, gen, in);
  train(was_training);
  return out;
}

}  // namespace loom
