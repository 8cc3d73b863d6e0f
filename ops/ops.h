// The op library: plain functions on Tensors, like torch:: functions.
// Each op's forward kernel and backward rule sit together in one .cpp file:
//   ops/view.cpp        reshape, permute, slice, expand, ... (views)
//   ops/elementwise.cpp add, sub, mul, div, neg, relu
//   ops/reduce.cpp      sum, mean, sum_to
//   ops/matmul.cpp      matmul
#pragma once

#include <type_traits>

#include <loom/core/tensor.h>

namespace loom {

// ---- broadcasting --------------------------------------------------------------
// The shape two operands broadcast to (PyTorch/NumPy rules); `op` names the
// caller in the error.
Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b);

// ---- elementwise ------------------------------------------------------------------
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);  // true division: ints give float32
Tensor neg(const Tensor& a);
Tensor relu(const Tensor& a);

// ---- reductions ---------------------------------------------------------------------
Tensor sum(const Tensor& a);  // all elements -> 0-d
Tensor sum(const Tensor& a, Shape dims, bool keepdim = false);
Tensor mean(const Tensor& a);
Tensor mean(const Tensor& a, Shape dims, bool keepdim = false);
// Sums a broadcast gradient back down to `shape` (the backward of expand).
Tensor sum_to(const Tensor& a, const Shape& shape);

// ---- linear algebra ---------------------------------------------------------------
// torch.matmul: 1-D and 2-D operands, and batched with broadcast batch dims.
Tensor matmul(const Tensor& a, const Tensor& b);

// ---- operators ----------------------------------------------------------------------
// A scalar on the other side becomes a 0-d tensor of the tensor's dtype,
// except a floating scalar with an integer tensor, which gives float32
// (int_tensor * 0.5 is float, int_tensor * 2 stays int64), as in PyTorch.
template <typename S>
Tensor scalar_like(const Tensor& t, S value) {
  static_assert(std::is_arithmetic_v<S>);
  DType d = t.is_floating_point() ? t.dtype() : (std::is_floating_point_v<S> ? kFloat32 : kInt64);
  return scalar_tensor(double(value), d);
}

inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator-(const Tensor& a) { return neg(a); }

#define LOOM_SCALAR_OPERATOR(op, fn)                                                                  \
  template <typename S, typename = std::enable_if_t<std::is_arithmetic_v<S>>>                        \
  Tensor operator op(const Tensor& a, S s) { return fn(a, scalar_like(a, s)); }                       \
  template <typename S, typename = std::enable_if_t<std::is_arithmetic_v<S>>>                        \
  Tensor operator op(S s, const Tensor& a) { return fn(scalar_like(a, s), a); }
LOOM_SCALAR_OPERATOR(+, add)
LOOM_SCALAR_OPERATOR(-, sub)
LOOM_SCALAR_OPERATOR(*, mul)
LOOM_SCALAR_OPERATOR(/, div)
#undef LOOM_SCALAR_OPERATOR

}  // namespace loom
