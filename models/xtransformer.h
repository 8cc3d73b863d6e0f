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
  nn::AttentionLayersConfig enc;  // dim is set from above
  int64_t dec_num_tokens = 0, dec_max_seq_len = 0;
  nn::AttentionLayersConfig dec;  // dim, causal and cross_attend are set
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
  Tensor encode(const Tensor& src, const Tensor& src_mask = Tensor()) const;

  XTransformerConfig config;
  std::shared_ptr<TransformerWrapper> encoder, decoder_net;
  AutoregressiveWrapper decoder;
};

}  // namespace loom
