// Reductions (ops/reduce.cpp).
#pragma once

#include <loom/core/tensor.h>

namespace loom {

// ---- reductions ---------------------------------------------------------------------
Tensor sum(const Tensor& a);  // all elements -> 0-d
Tensor sum(const Tensor& a, Shape dims, bool keepdim = false);
Tensor mean(const Tensor& a);
Tensor mean(const Tensor& a, Shape dims, bool keepdim = false);
// Sums a broadcast gradient back down to `shape` (the backward of expand).
Tensor sum_to(const Tensor& a, const Shape& shape);

}  // namespace loom
