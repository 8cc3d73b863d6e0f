// nn::Embedding: a table of num_embeddings rows of size dim, like
// torch.nn.Embedding (weight initialised N(0, 1); padding_idx's row zero
// and without gradient).
#pragma once

#include <optional>

#include <loom/nn/module.h>

namespace loom::nn {

class Embedding : public Module {
 public:
  Embedding(int64_t num_embeddings, int64_t embedding_dim, std::optional<int64_t> padding_idx = std::nullopt);

  // ids: int64 of any shape -> ids.shape + [embedding_dim].
  Tensor forward(const Tensor& ids) const;

  Tensor weight;  // [num_embeddings, embedding_dim]
  std::optional<int64_t> padding_idx;
};

}  // namespace loom::nn
