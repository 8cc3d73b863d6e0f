// Elementwise ops with broadcasting (ops/elementwise.cpp).
#pragma once

#include <optional>
#include <string>
#include <type_traits>

#include <loom/core/tensor.h>

namespace loom {

// ---- broadcasting --------------------------------------------------------------
// The shape two operands broadcast to (PyTorch/NumPy rules); `op` names the
// caller in the error.
Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b);

// ---- arithmetic (float32 and int64; results promote as in PyTorch) -----------------
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);  // true division: ints give float32
Tensor maximum(const Tensor& a, const Tensor& b);  // ties split the gradient evenly, as PyTorch
Tensor minimum(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, const Tensor& exponent);  // float32
Tensor pow(const Tensor& a, double exponent);
Tensor neg(const Tensor& a);
Tensor abs(const Tensor& a);
// clamp(x, min, max): either bound may be absent; the gradient passes where
// min <= x <= max.
Tensor clamp(const Tensor& a, std::optional<double> min, std::optional<double> max = std::nullopt);

// ---- float32 math --------------------------------------------------------------------
Tensor exp(const Tensor& a);
Tensor log(const Tensor& a);
Tensor sqrt(const Tensor& a);
Tensor rsqrt(const Tensor& a);
Tensor tanh(const Tensor& a);
Tensor sigmoid(const Tensor& a);
Tensor relu(const Tensor& a);
// approximate = "none" (the erf form, PyTorch's default) or "tanh".
Tensor gelu(const Tensor& a, const std::string& approximate = "none");
Tensor silu(const Tensor& a);
Tensor softplus(const Tensor& a);  // beta 1, threshold 20, as PyTorch's defaults

// ---- comparisons and logic (bool results; not differentiable) -------------------------
Tensor eq(const Tensor& a, const Tensor& b);
Tensor ne(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor le(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);
Tensor logical_and(const Tensor& a, const Tensor& b);
Tensor logical_or(const Tensor& a, const Tensor& b);
Tensor logical_not(const Tensor& a);

// ---- selection --------------------------------------------------------------------------
// where(cond, a, b): a where cond is true, else b; all three broadcast.
Tensor where(const Tensor& condition, const Tensor& a, const Tensor& b);
// masked_fill(t, mask, value): value where mask is true (mask broadcasts to t).
Tensor masked_fill(const Tensor& t, const Tensor& mask, double value);

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
inline Tensor operator==(const Tensor& a, const Tensor& b) { return eq(a, b); }
inline Tensor operator!=(const Tensor& a, const Tensor& b) { return ne(a, b); }
inline Tensor operator<(const Tensor& a, const Tensor& b) { return lt(a, b); }
inline Tensor operator<=(const Tensor& a, const Tensor& b) { return le(a, b); }
inline Tensor operator>(const Tensor& a, const Tensor& b) { return gt(a, b); }
inline Tensor operator>=(const Tensor& a, const Tensor& b) { return ge(a, b); }
inline Tensor operator&&(const Tensor& a, const Tensor& b) { return logical_and(a, b); }
inline Tensor operator||(const Tensor& a, const Tensor& b) { return logical_or(a, b); }
inline Tensor operator!(const Tensor& a) { return logical_not(a); }

#define LOOM_SCALAR_OPERATOR(op, fn)                                                                  \
  template <typename S, typename = std::enable_if_t<std::is_arithmetic_v<S>>>                        \
  Tensor operator op(const Tensor& a, S s) { return fn(a, scalar_like(a, s)); }                       \
  template <typename S, typename = std::enable_if_t<std::is_arithmetic_v<S>>>                        \
  Tensor operator op(S s, const Tensor& a) { return fn(scalar_like(a, s), a); }
LOOM_SCALAR_OPERATOR(+, add)
LOOM_SCALAR_OPERATOR(-, sub)
LOOM_SCALAR_OPERATOR(*, mul)
LOOM_SCALAR_OPERATOR(/, div)
LOOM_SCALAR_OPERATOR(==, eq)
LOOM_SCALAR_OPERATOR(!=, ne)
LOOM_SCALAR_OPERATOR(<, lt)
LOOM_SCALAR_OPERATOR(<=, le)
LOOM_SCALAR_OPERATOR(>, gt)
LOOM_SCALAR_OPERATOR(>=, ge)
#undef LOOM_SCALAR_OPERATOR

}  // namespace loom
