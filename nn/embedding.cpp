#include <loom/nn/embedding.h>

#include <loom/core/autograd.h>
#include <loom/core/error.h>
#include <loom/ops/ops.h>

namespace loom::nn {

Embedding::Embedding(int64_t num_embeddings, int64_t embedding_dim, std::optional<int64_t> padding_idx_)
    : padding_idx(padding_idx_) {
  LOOM_CHECK(num_embeddings > 0 && embedding_dim > 0, "Embedding: num_embeddings and embedding_dim must be positive, got ",
             num_embeddings, " and ", embedding_dim);
  if (padding_idx && *padding_idx < 0) *padding_idx += num_embeddings;  // PyTorch accepts negative indices
  LOOM_CHECK(!padding_idx || (*padding_idx >= 0 && *padding_idx < num_embeddings), "Embedding: padding_idx ",
             *padding_idx_, " out of range for ", num_embeddings, " embeddings");
  Tensor w = randn({num_embeddings, embedding_dim});
  if (padding_idx) w.select(0, *padding_idx).fill_(0.0);
  weight = register_parameter("weight", w);
}

Tensor Embedding::forward(const Tensor& ids) const { return embedding(ids, weight, padding_idx); }

}  // namespace loom::nn
