// Matrix products (ops/matmul.cpp).
#pragma once

#include <loom/core/tensor.h>

namespace loom {

// ---- linear algebra ---------------------------------------------------------------
// torch.matmul: 1-D and 2-D operands, and batched with broadcast batch dims.
Tensor matmul(const Tensor& a, const Tensor& b);

}  // namespace loom
