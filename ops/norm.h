// layer_norm and rms_norm (ops/norm.cpp).
#pragma once

#include <optional>

#include <loom/core/tensor.h>

namespace loom {

// torch.nn.functional.layer_norm: normalises over the trailing dims given by
// normalized_shape; weight and bias (of that shape) are optional.
Tensor layer_norm(const Tensor& x, Shape normalized_shape, const Tensor& weight = Tensor(),
                  const Tensor& bias = Tensor(), double eps = 1e-5);

// torch.nn.functional.rms_norm: x / sqrt(mean(x²) + eps) * weight; eps
// defaults to float32's machine epsilon, as in PyTorch.
Tensor rms_norm(const Tensor& x, Shape normalized_shape, const Tensor& weight = Tensor(),
                std::optional<double> eps = std::nullopt);

}  // namespace loom
