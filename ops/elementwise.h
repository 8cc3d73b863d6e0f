// Elementwise ops with broadcasting (ops/elementwise.cpp).
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
