// embedding and one_hot (ops/embedding.cpp).
#pragma once

#include <optional>

#include <loom/core/tensor.h>

namespace loom {

// torch.nn.functional.embedding(input, weight): the rows of weight
// [num_embeddings, dim] picked by the int64 ids, shape ids.shape + [dim].
// The row padding_idx gets no gradient.
Tensor embedding(const Tensor& ids, const Tensor& weight, std::optional<int64_t> padding_idx = std::nullopt);

// torch.nn.functional.one_hot: int64 of shape ids.shape + [num_classes];
// num_classes = -1 means max(ids) + 1.
Tensor one_hot(const Tensor& ids, int64_t num_classes = -1);

}  // namespace loom
