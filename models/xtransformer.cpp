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
      .return_only_embed = true});
}

std::shared_ptr<TransformerWrapper> make_decoder(const XTransformerConfig& c) {
  nn::AttentionLayersConfig layers = c.dec;
  layers.dim = c.dim;
  layers.cross_attend = true;
  return std::make_shared<TransformerWrapper>(TransformerWrapperConfig{
      .num_tokens = c.dec_num_tokens, .max_seq_len = c.dec_max_seq_len, .attn_layers = nn::Decoder(layers)});
}
}  // namespace

XTransformer::XTransformer(const XTransformerConfig& c)
    : config(c), encoder(make_encoder(c)), decoder_net(make_decoder(c)), decoder(decoder_net, c.ignore_index, c.pad_value) {
  register_module("encoder", encoder);
  register_module("decoder", std::make_shared<NetHolder>(decoder_net));
}

Tensor XTransformer::encode(const Tensor& src, const Tensor& src_mask) const {
  WrapperInputs in;
  in.mask = src_mask;
  return encoder->forward(src, in);
}

Tensor XTransformer::loss(const Tensor& src, const Tensor& tgt, const Tensor& src_mask) const {
  WrapperInputs in;
  in.context = encode(src, src_mask);
  in.context_mask = src_mask;
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
