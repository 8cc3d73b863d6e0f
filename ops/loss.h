// Losses (ops/loss.cpp).
#pragma once

#include <string>

#include <loom/core/tensor.h>

namespace loom {

// torch.nn.functional.cross_entropy with class-index targets: logits [N, C]
// or [N, C, d1, ...] (classes on dim 1) or [C]; target int64 [N] / [N, d1,
// ...] / []. Targets equal to ignore_index count for nothing (and not in the
// mean's denominator). reduction: "mean", "sum" or "none".
Tensor cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index = -100,
                     double label_smoothing = 0.0, const std::string& reduction = "mean");

// torch.nn.functional.mse_loss: (input - target)², the two broadcast to each
// other, reduced ("mean", "sum" or "none"). Both float32.
Tensor mse_loss(const Tensor& input, const Tensor& target, const std::string& reduction = "mean");

}  // namespace loom
