// Elementwise ops with broadcasting, forward and backward side by side.
//
//   add  out = a + b    da = g          db = g
//   sub  out = a - b    da = g          db = -g
//   mul  out = a * b    da = g * b      db = g * a
//   div  out = a / b    da = g / b      db = -g * a / b^2
//   neg  out = -a       da = -g
//   relu out = max(a,0) da = g * [a > 0]
//
// Gradients come back in the broadcast (output) shape; the autograd engine
// sums them down to each input's shape.
#include <loom/core/autograd.h>
#include <loom/core/loop.h>
#include <loom/ops/ops.h>

namespace loom {

Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    // Align from the right; a missing dim counts as 1.
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    LOOM_CHECK(da == db || da == 1 || db == 1, op, ": shapes ", a, " and ", b, " cannot be broadcast together (",
               da, " vs ", db, " at dimension ", int64_t(i) - int64_t(n), ")");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

namespace {

// Byte strides of t as seen from `shape` (t broadcast to it): 0 where t repeats.
Shape broadcast_byte_strides(const Tensor& t, const Shape& shape) {
  Shape s(shape.size(), 0);
  size_t lead = shape.size() - size_t(t.dim());
  int64_t elem = int64_t(element_size(t.dtype()));
  for (size_t i = lead; i < shape.size(); ++i)
    if (t.sizes()[i - lead] != 1) s[i] = t.strides()[i - lead] * elem;
  return s;
}

void check_dtype_supported(const char* op, const Tensor& t) {
  LOOM_CHECK(t.defined(), op, ": tensor is undefined");
  LOOM_CHECK(t.dtype() == kFloat32 || t.dtype() == kInt64, op, ": not implemented for dtype ",
             dtype_name(t.dtype()), " (shape ", t.sizes(), ")");
}

// out[...] = f(a[...], b[...]) over the broadcast shape, in dtype `d`.
template <typename F>
Tensor binary_kernel(const char* op, const Tensor& a_in, const Tensor& b_in, DType d, F f) {
  check_dtype_supported(op, a_in);
  check_dtype_supported(op, b_in);
  Shape shape = broadcast_shapes(op, a_in.sizes(), b_in.sizes());
  Tensor a = a_in.to(d), b = b_in.to(d);  // no-ops when the dtype already matches
  Tensor out = empty(shape, d);
  visit_dtype(d, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, int64_t>) {
      for_each_run<3>(shape,
                      {static_cast<char*>(out.raw_data()), static_cast<char*>(a.raw_data()),
                       static_cast<char*>(b.raw_data())},
                      {broadcast_byte_strides(out, shape), broadcast_byte_strides(a, shape),
                       broadcast_byte_strides(b, shape)},
                      [&](char* const* p, const int64_t* s, int64_t n) {
                        for (int64_t i = 0; i < n; ++i)
                          *reinterpret_cast<T*>(p[0] + i * s[0]) = f(*reinterpret_cast<const T*>(p[1] + i * s[1]),
                                                                     *reinterpret_cast<const T*>(p[2] + i * s[2]));
                      });
    }
  });
  return out;
}

// out[...] = f(a[...]) for float32 (and int64 where f allows).
template <typename F>
Tensor unary_kernel(const char* op, const Tensor& a, F f) {
  check_dtype_supported(op, a);
  Tensor out = empty(a.sizes(), a.dtype());
  visit_dtype(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, int64_t>) {
      for_each_run<2>(a.sizes(), {static_cast<char*>(out.raw_data()), static_cast<char*>(a.raw_data())},
                      {broadcast_byte_strides(out, a.sizes()), broadcast_byte_strides(a, a.sizes())},
                      [&](char* const* p, const int64_t* s, int64_t n) {
                        for (int64_t i = 0; i < n; ++i)
                          *reinterpret_cast<T*>(p[0] + i * s[0]) = f(*reinterpret_cast<const T*>(p[1] + i * s[1]));
                      });
    }
  });
  return out;
}

DType result_dtype(const Tensor& a, const Tensor& b) { return promote_types(a.dtype(), b.dtype()); }

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = binary_kernel("add", a, b, result_dtype(a, b), [](auto x, auto y) { return x + y; });
  record("add", {a, b}, out, [](const Tensor& g) { return Grads{g, g}; });
  return out;
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = binary_kernel("sub", a, b, result_dtype(a, b), [](auto x, auto y) { return x - y; });
  record("sub", {a, b}, out, [](const Tensor& g) { return Grads{g, neg(g)}; });
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_kernel("mul", a, b, result_dtype(a, b), [](auto x, auto y) { return x * y; });
  record("mul", {a, b}, out, [a, b](const Tensor& g) { return Grads{mul(g, b), mul(g, a)}; });
  return out;
}

Tensor div(const Tensor& a, const Tensor& b) {
  // True division, as torch.div: integer inputs give a float32 result.
  Tensor out = binary_kernel("div", a, b, kFloat32, [](auto x, auto y) { return x / y; });
  record("div", {a, b}, out, [a, b](const Tensor& g) {
    return Grads{div(g, b), neg(div(mul(g, a), mul(b, b)))};
  });
  return out;
}

Tensor neg(const Tensor& a) {
  Tensor out = unary_kernel("neg", a, [](auto x) { return -x; });
  record("neg", {a}, out, [](const Tensor& g) { return Grads{neg(g)}; });
  return out;
}

Tensor relu(const Tensor& a) {
  Tensor out = unary_kernel("relu", a, [](auto x) { return x > 0 ? x : decltype(x)(0); });
  record("relu", {a}, out, [a](const Tensor& g) {
    // g * [a > 0]: one fused pass instead of building a mask tensor.
    return Grads{binary_kernel("relu_backward", g, a, kFloat32, [](float gi, float ai) { return ai > 0 ? gi : 0.0f; })};
  });
  return out;
}

// ---- in-place, on Tensor (not recorded; see check_inplace) -------------------------------
namespace {
template <typename F>
const Tensor& inplace_kernel(const char* op, const Tensor& self, const Tensor& other_in, F f) {
  check_inplace(op, self);
  check_dtype_supported(op, self);
  check_dtype_supported(op, other_in);
  Shape shape = broadcast_shapes(op, self.sizes(), other_in.sizes());
  LOOM_CHECK(shape == self.sizes(), op, ": the result of shape ", shape, " does not fit in the tensor of shape ",
             self.sizes());
  Tensor other = other_in.to(self.dtype());
  visit_dtype(self.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, int64_t>) {
      for_each_run<2>(shape, {static_cast<char*>(self.raw_data()), static_cast<char*>(other.raw_data())},
                      {broadcast_byte_strides(self, shape), broadcast_byte_strides(other, shape)},
                      [&](char* const* p, const int64_t* s, int64_t n) {
                        for (int64_t i = 0; i < n; ++i) {
                          T& x = *reinterpret_cast<T*>(p[0] + i * s[0]);
                          x = f(x, *reinterpret_cast<const T*>(p[1] + i * s[1]));
                        }
                      });
    }
  });
  return self;
}
}  // namespace

const Tensor& Tensor::add_(const Tensor& other, double alpha) const {
  return inplace_kernel("add_", *this, other, [alpha](auto x, auto y) { return x + decltype(x)(alpha) * y; });
}
const Tensor& Tensor::mul_(const Tensor& other) const {
  return inplace_kernel("mul_", *this, other, [](auto x, auto y) { return x * y; });
}
const Tensor& Tensor::mul_(double value) const { return mul_(scalar_tensor(value, dtype())); }
const Tensor& Tensor::div_(const Tensor& other) const {
  LOOM_CHECK(is_floating_point(), "div_: true division of a ", dtype_name(dtype()), " tensor cannot be stored in "
             "place (shape ", sizes(), "); use div() for a float32 result");
  return inplace_kernel("div_", *this, other, [](auto x, auto y) { return x / y; });
}

Tensor Tensor::relu() const { return loom::relu(*this); }

}  // namespace loom
