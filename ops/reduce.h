// Reductions (ops/reduce.cpp).
#pragma once

#include <tuple>

#include <loom/core/tensor.h>

namespace loom {

Tensor sum(const Tensor& a);  // all elements -> 0-d
Tensor sum(const Tensor& a, Shape dims, bool keepdim = false);
Tensor mean(const Tensor& a);
Tensor mean(const Tensor& a, Shape dims, bool keepdim = false);
// Variance with Bessel's correction by default (torch.var's correction=1).
Tensor var(const Tensor& a, Shape dims, int64_t correction = 1, bool keepdim = false);
// Largest / smallest element overall (0-d), or along one dim with the index
// of its first occurrence, like torch.max(t, dim) -> (values, indices).
Tensor max(const Tensor& a);
Tensor min(const Tensor& a);
std::tuple<Tensor, Tensor> max(const Tensor& a, int64_t dim, bool keepdim = false);
std::tuple<Tensor, Tensor> min(const Tensor& a, int64_t dim, bool keepdim = false);
Tensor argmax(const Tensor& a, int64_t dim, bool keepdim = false);
Tensor argmin(const Tensor& a, int64_t dim, bool keepdim = false);
// log(sum(exp(a))) over dims, computed without overflow.
Tensor logsumexp(const Tensor& a, Shape dims, bool keepdim = false);
// Running sum along dim.
Tensor cumsum(const Tensor& a, int64_t dim);
// Sums a broadcast gradient back down to `shape` (the backward of expand).
Tensor sum_to(const Tensor& a, const Shape& shape);

}  // namespace loom
