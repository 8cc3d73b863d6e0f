// Matrix products through oneDNN (ops/matmul.cpp).
#pragma once

#include <cstddef>

#include <loom/core/tensor.h>

namespace loom {

// torch.matmul: 1-D and 2-D operands, and batched with broadcast batch dims.
// Under an AutocastGuard (core/autocast.h) matmul and linear round their
// inputs to bfloat16 and accumulate in float32, forward and backward.
Tensor matmul(const Tensor& a, const Tensor& b);

// torch.nn.functional.linear: x · weightᵀ + bias, weight [out, in], bias
// [out] or undefined; x [..., in]. The bias add is fused into the product.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

// How many oneDNN matmul primitives linear has cached (one per shape, layout
// and thread count).
size_t matmul_cache_size();

}  // namespace loom
