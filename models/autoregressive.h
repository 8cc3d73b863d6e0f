// AutoregressiveWrapper: next-token training loss and sampling for a
// TransformerWrapper decoder, as x-transformers' AutoregressiveWrapper
// (models/autoregressive.cpp).
#pragma once

#include <optional>

#include <loom/core/generator.h>
#include <loom/models/transformer_wrapper.h>

namespace loom {

struct GenerateOptions {
  double temperature = 1.0;  // 0 = greedy (argmax, no filtering)
  // Filters on the raw logits, applied in this order; each is off at 0.
  int64_t top_k = 0;         // keep the k largest
  double top_p = 0.0;        // nucleus: keep the smallest set whose probability exceeds top_p
  double min_p = 0.0;        // keep tokens with probability >= min_p · the largest probability
  std::optional<int64_t> eos_token;  // stop when every row has produced it; later tokens become pad_value
  int64_t pad_value = 0;
  bool cache_kv = true;      // decode with a KV cache when the model allows it
  // Selective attention's context pruning: at most this many positions in
  // each self-attention layer's KV cache, evicting the most masked (highest
  // F) after every step (nn::LayersCache::budgets, nn::prune): one value for
  // every layer or one per layer, 0 = that layer's whole context. Needs a
  // selective-attention model and cache_kv. Empty keeps the whole context.
  std::vector<int64_t> selective_budgets;
};

class AutoregressiveWrapper {
 public:
  explicit AutoregressiveWrapper(std::shared_ptr<TransformerWrapper> net, int64_t ignore_index = -100,
                                 int64_t pad_value = 0);

  // x: int64 (b, n + 1). Predicts x[:, 1:] from x[:, :-1]; targets equal to
  // ignore_index do not count. Returns the mean cross-entropy; in training,
  // plus selective attention's memory loss when the config sets it
  // (attn_selective_memory_loss, nn::AttentionConfig::selective_memory_loss).
  Tensor loss(const Tensor& x, const WrapperInputs& in = {}) const;

  // Continues each prompt (b, t) by seq_len tokens and returns only the new
  // ones, (b, seq_len). Runs in no-grad mode; random draws come from gen.
  // `extra` carries a context and context_mask for a decoder that cross-attends.
  Tensor generate(const Tensor& prompts, int64_t seq_len, const GenerateOptions& options, Generator& gen,
                  const WrapperInputs& extra = {}) const;

  // The filters, on logits (b, V): the removed entries become -inf.
  static Tensor filter_top_k(const Tensor& logits, int64_t k);
  static Tensor filter_top_p(const Tensor& logits, double p);
  static Tensor filter_min_p(const Tensor& logits, double min_p);

  std::shared_ptr<TransformerWrapper> net;
  int64_t ignore_index, pad_value;
};

}  // namespace loom
