// XTransformer: an encoder-decoder, as x-transformers' XTransformer
// (models/xtransformer.cpp). The encoder is a TransformerWrapper returning
// embeddings; the decoder a causal TransformerWrapper that cross-attends to
// them, trained and sampled through an AutoregressiveWrapper. Parameter
// names: encoder.*, decoder.net.*.
#pragma once

#include <loom/models/autoregressive.h>

namespace loom {

struct XTransformerConfig {
  int64_t dim = 512;
  int64_t enc_num_tokens = 0, enc_max_seq_len = 0;
  double enc_emb_dropout = 0;
  int64_t enc_num_memory_tokens = 0;
  bool enc_scaled_sinu_pos_emb = false, enc_use_abs_pos_emb = true;
  nn::AttentionLayersConfig enc;  // dim is set from above
  int64_t dec_num_tokens = 0, dec_max_seq_len = 0;
  double dec_emb_dropout = 0;
  bool dec_scaled_sinu_pos_emb = false, dec_use_abs_pos_emb = true;
  nn::AttentionLayersConfig dec;  // dim, causal and cross_attend are set
  bool tie_token_emb = false;     // the decoder uses the encoder's token embedding (one tensor, two names)
  double cross_attn_tokens_dropout = 0;  // in training the decoder sees a random (1 - p) of the encoded tokens
  int64_t ignore_index = -100;
  int64_t pad_value = 0;
};

class XTransformer : public nn::Module {
 public:
  explicit XTransformer(const XTransformerConfig& config);
  // Next-token loss of tgt (b, m + 1) given src (b, n); src_mask (b, n) bool.
  Tensor loss(const Tensor& src, const Tensor& tgt, const Tensor& src_mask = Tensor()) const;
  // Encodes src once, then decodes seq_len tokens after `start` (b, t).
  // (Switches to eval mode while it runs.)
  Tensor generate(const Tensor& src, const Tensor& start, int64_t seq_len, const GenerateOptions& options,
                  Generator& gen, const Tensor& src_mask = Tensor());
  // The encoder's embeddings of src (b, n, dim); attn_mask for its self-attention.
  Tensor encode(const Tensor& src, const Tensor& src_mask = Tensor(), const Tensor& attn_mask = Tensor()) const;
  // The decoder's logits for tgt (b, m) given src: x-transformers'
  // decoder.net(tgt, context = encoder(src, mask, attn_mask), context_mask = mask),
  // (b, m, dec_num_tokens). (x-transformers' forward returns the loss of
  // these logits on tgt[:, 1:]; `loss` below.)
  Tensor forward(const Tensor& src, const Tensor& tgt, const Tensor& src_mask = Tensor(),
                 const Tensor& attn_mask = Tensor()) const;

  XTransformerConfig config;
  std::shared_ptr<TransformerWrapper> encoder, decoder_net;
  Generator* generator = nullptr;  // for cross_attn_tokens_dropout; nullptr = the default generator
  AutoregressiveWrapper decoder;
};

}  // namespace loom
