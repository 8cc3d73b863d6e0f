// Elementwise ops with broadcasting, forward and backward side by side.
//
//   add      out = a + b          da = g                 db = g
//   sub      out = a - b          da = g                 db = -g
//   mul      out = a * b          da = g * b             db = g * a
//   div      out = a / b          da = g / b             db = -g * a / b^2
//   maximum  out = max(a, b)      da = g * ([a > b] + [a == b] / 2), db = the rest of g
//   pow      out = a^b            da = g * b * a^(b-1)   db = g * out * log(a)
//   neg      out = -a             da = -g
//   abs      out = |a|            da = g * sign(a)
//   clamp    out = min(max(a, lo), hi)   da = g * [lo <= a <= hi]
//   exp      out = e^a            da = g * out
//   log      out = ln a           da = g / a
//   sqrt     out = √a             da = g / (2 out)
//   rsqrt    out = 1/√a           da = -g * out^3 / 2
//   tanh     out = tanh a         da = g * (1 - out^2)
//   sigmoid  out = σ(a)           da = g * out * (1 - out)
//   relu     out = max(a, 0)      da = g * [a > 0]
//   gelu     out = a Φ(a)         da = g * (Φ(a) + a φ(a))   (and the tanh form)
//   silu     out = a σ(a)         da = g * σ(a) (1 + a (1 - σ(a)))
//   softplus out = ln(1 + e^a)    da = g * σ(a)
//   where    out = c ? a : b      da = g * [c]           db = g * [!c]
//
// Gradients come back in the broadcast (output) shape; the autograd engine
// sums them down to each input's shape.
//
// float32 goes through the SIMD kernels (ops/kernels), one call per
// contiguous run, in parallel when large. int64 and bool use plain loops.
#include <cmath>

#include <loom/core/autocast.h>
#include <loom/core/autograd.h>
#include <loom/core/loop.h>
#include <loom/ops/kernels/kernels.h>
#include <loom/ops/ops.h>

namespace loom {

using kernels::BinaryOp;
using kernels::UnaryOp;

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

char* bytes(const Tensor& t) { return static_cast<char*>(t.raw_data()); }

void check_defined(const char* op, const Tensor& t) { LOOM_CHECK(t.defined(), op, ": tensor is undefined"); }

void check_numeric(const char* op, const Tensor& t) {
  check_defined(op, t);
  LOOM_CHECK(t.dtype() == kFloat32 || t.dtype() == kInt64, op, ": not implemented for dtype ",
             dtype_name(t.dtype()), " (shape ", t.sizes(), ")");
}

void check_float(const char* op, const Tensor& t) {
  check_defined(op, t);
  LOOM_CHECK(t.dtype() == kFloat32, op, ": expects a float32 tensor, got ", dtype_name(t.dtype()), " (shape ",
             t.sizes(), ")");
}

// A piece of a strided operand, gathered into a contiguous buffer so the SIMD
// kernel always sees unit (or zero) steps.
constexpr int64_t kChunk = 1024;
const float* unit_or_gather(const char* p, int64_t byte_stride, int64_t n, float* buf, int64_t& step) {
  if (byte_stride == 0 || byte_stride == 4) {
    step = byte_stride / 4;
    return reinterpret_cast<const float*>(p);
  }
  for (int64_t i = 0; i < n; ++i) buf[i] = *reinterpret_cast<const float*>(p + i * byte_stride);
  step = 1;
  return buf;
}

// out = op(a, b), float32, broadcast. `out` must be contiguous of the
// broadcast shape; it may be `a` itself (each element is read before written).
Tensor float_binary(BinaryOp op, const Tensor& a, const Tensor& b, const Shape& shape, Tensor out = Tensor()) {
  if (!out.defined()) out = empty(shape, kFloat32);
  const kernels::Table& k = kernels::table();
  parallel_for_each_run<3>(
      shape, {bytes(out), bytes(a), bytes(b)},
      {broadcast_byte_strides(out, shape), broadcast_byte_strides(a, shape), broadcast_byte_strides(b, shape)}, 1,
      [&](char* const* p, const int64_t* s, int64_t n) {
        float abuf[kChunk], bbuf[kChunk];
        for (int64_t i = 0; i < n; i += kChunk) {
          int64_t m = std::min(kChunk, n - i), as, bs;
          const float* x = unit_or_gather(p[1] + i * s[1], s[1], m, abuf, as);
          const float* y = unit_or_gather(p[2] + i * s[2], s[2], m, bbuf, bs);
          k.binary(op, x, as, y, bs, reinterpret_cast<float*>(p[0]) + i, m);
        }
      });
  return out;
}

// out = f(a), float32; out is fresh and contiguous. With feeds_products,
// under autocast, out's bfloat16 twin too, chunk by chunk (core/autocast.h).
Tensor float_unary(UnaryOp op, const Tensor& a, bool feeds_products = false) {
  Tensor out = empty(a.sizes(), kFloat32);
  const Tensor twin = feeds_products ? make_bf16_twin(out) : Tensor();
  const char* base = bytes(out);
  uint16_t* tp = twin.defined() ? static_cast<uint16_t*>(twin.raw_data()) : nullptr;
  const kernels::Table& k = kernels::table();
  parallel_for_each_run<2>(a.sizes(), {bytes(out), bytes(a)},
                           {broadcast_byte_strides(out, a.sizes()), broadcast_byte_strides(a, a.sizes())},
                           8, [&](char* const* p, const int64_t* s, int64_t n) {
                             float buf[kChunk];
                             for (int64_t i = 0; i < n; i += kChunk) {
                               int64_t m = std::min(kChunk, n - i), step;
                               const float* x = unit_or_gather(p[1] + i * s[1], s[1], m, buf, step);
                               float* y = reinterpret_cast<float*>(p[0]) + i;
                               k.unary(op, x, y, m);
                               if (tp) k.to_bf16_dot(y, tp + (reinterpret_cast<const char*>(y) - base) / 4, m);
                             }
                           });
  return out;
}

// dx = g * f'(x), from x, out = f(x) and g, all the same shape.
Tensor float_unary_backward(UnaryOp op, const Tensor& x, const Tensor& out, const Tensor& g) {
  Tensor xc = x.contiguous(), oc = out.contiguous(), gc = g.contiguous();
  Tensor dx = empty(x.sizes(), kFloat32);
  const float *xp = xc.data_ptr<float>(), *op_ = oc.data_ptr<float>(), *gp = gc.data_ptr<float>();
  float* dp = dx.data_ptr<float>();
  const kernels::Table& k = kernels::table();
  parallel_for(x.numel(), 8, [&](int64_t begin, int64_t end) {
    k.unary_backward(op, xp + begin, op_ + begin, gp + begin, dp + begin, end - begin);
  });
  return dx;
}

// out[...] = f(a[...], b[...]) over the broadcast shape with plain loops, for
// int64/bool inputs (converted to T) and any result type R.
template <typename T, typename R, typename F>
Tensor scalar_binary(const char* op, const Tensor& a_in, const Tensor& b_in, DType out_dtype, F f) {
  Shape shape = broadcast_shapes(op, a_in.sizes(), b_in.sizes());
  Tensor a = a_in.to(dtype_of<T>::value), b = b_in.to(dtype_of<T>::value);
  Tensor out = empty(shape, out_dtype);
  parallel_for_each_run<3>(shape, {bytes(out), bytes(a), bytes(b)},
                           {broadcast_byte_strides(out, shape), broadcast_byte_strides(a, shape),
                            broadcast_byte_strides(b, shape)},
                           1, [&](char* const* p, const int64_t* s, int64_t n) {
                             for (int64_t i = 0; i < n; ++i)
                               *reinterpret_cast<R*>(p[0] + i * s[0]) =
                                   f(*reinterpret_cast<const T*>(p[1] + i * s[1]),
                                     *reinterpret_cast<const T*>(p[2] + i * s[2]));
                           });
  return out;
}

// The arithmetic ops: float32 through the kernels, int64 through plain loops.
template <typename IntF>
Tensor arithmetic(const char* op, BinaryOp kop, const Tensor& a, const Tensor& b, IntF int_f) {
  check_numeric(op, a);
  check_numeric(op, b);
  DType d = promote_types(a.dtype(), b.dtype());
  if (d == kInt64) return scalar_binary<int64_t, int64_t>(op, a, b, kInt64, int_f);
  Shape shape = broadcast_shapes(op, a.sizes(), b.sizes());
  return float_binary(kop, a.to(kFloat32), b.to(kFloat32), shape);
}

// Records a float unary op whose backward is the kernel table's rule.
// feeds_products: an activation, whose output a linear usually reads.
Tensor unary_op(const char* name, UnaryOp op, const Tensor& a, bool feeds_products = false) {
  check_float(name, a);
  Tensor out = float_unary(op, a, feeds_products);
  Tensor saved_out = out.detach();  // not `out`: a node must not own its own output
  record(name, {a}, out, [op, a, saved_out](const Tensor& g) {
    return Grads{float_unary_backward(op, a, saved_out, g)};
  });
  return out;
}

}  // namespace

// ---- arithmetic ----------------------------------------------------------------------------
Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = arithmetic("add", BinaryOp::Add, a, b, [](int64_t x, int64_t y) { return x + y; });
  record("add", {a, b}, out, [](const Tensor& g) { return Grads{g, g}; });
  return out;
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = arithmetic("sub", BinaryOp::Sub, a, b, [](int64_t x, int64_t y) { return x - y; });
  record("sub", {a, b}, out, [](const Tensor& g) { return Grads{g, neg(g)}; });
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = arithmetic("mul", BinaryOp::Mul, a, b, [](int64_t x, int64_t y) { return x * y; });
  record("mul", {a, b}, out, [a, b](const Tensor& g) { return Grads{mul(g, b), mul(g, a)}; });
  return out;
}

Tensor div(const Tensor& a, const Tensor& b) {
  // True division, as torch.div: integer inputs give a float32 result.
  check_numeric("div", a);
  check_numeric("div", b);
  Tensor out = float_binary(BinaryOp::Div, a.to(kFloat32), b.to(kFloat32), broadcast_shapes("div", a.sizes(), b.sizes()));
  record("div", {a, b}, out, [a, b](const Tensor& g) {
    return Grads{div(g, b), neg(div(mul(g, a), mul(b, b)))};
  });
  return out;
}

namespace {
// Share of the gradient that goes to `a` in maximum/minimum: 1 where a wins, 1/2 on ties.
Tensor winner_share(const Tensor& a_wins, const Tensor& tie) {
  return add(a_wins.to(kFloat32), mul(tie.to(kFloat32), scalar_tensor(0.5)));
}
}  // namespace

Tensor maximum(const Tensor& a, const Tensor& b) {
  Tensor out = arithmetic("maximum", BinaryOp::Maximum, a, b, [](int64_t x, int64_t y) { return x > y ? x : y; });
  record("maximum", {a, b}, out, [a, b](const Tensor& g) {
    Tensor share = winner_share(gt(a, b), eq(a, b));
    return Grads{mul(g, share), mul(g, sub(scalar_tensor(1.0), share))};
  });
  return out;
}

Tensor minimum(const Tensor& a, const Tensor& b) {
  Tensor out = arithmetic("minimum", BinaryOp::Minimum, a, b, [](int64_t x, int64_t y) { return x < y ? x : y; });
  record("minimum", {a, b}, out, [a, b](const Tensor& g) {
    Tensor share = winner_share(lt(a, b), eq(a, b));
    return Grads{mul(g, share), mul(g, sub(scalar_tensor(1.0), share))};
  });
  return out;
}

Tensor pow(const Tensor& a, const Tensor& e) {
  check_float("pow", a);
  check_float("pow", e);
  Tensor out = float_binary(BinaryOp::Pow, a, e, broadcast_shapes("pow", a.sizes(), e.sizes()));
  Tensor saved_out = out.detach();
  record("pow", {a, e}, out, [a, e, saved_out](const Tensor& g) {
    Tensor da = a.requires_grad() ? mul(g, mul(e, pow(a, sub(e, scalar_tensor(1.0))))) : Tensor();
    Tensor de = e.requires_grad() ? mul(g, mul(saved_out, log(a))) : Tensor();
    return Grads{da, de};
  });
  return out;
}

Tensor pow(const Tensor& a, double exponent) {
  check_float("pow", a);
  Tensor out = float_binary(BinaryOp::Pow, a, scalar_tensor(exponent), a.sizes());
  record("pow", {a}, out, [a, exponent](const Tensor& g) {
    if (exponent == 0) return Grads{zeros_like(a)};
    return Grads{mul(g, mul(pow(a, exponent - 1), scalar_tensor(exponent)))};
  });
  return out;
}

Tensor neg(const Tensor& a) {
  check_numeric("neg", a);
  Tensor out = a.dtype() == kInt64 ? scalar_binary<int64_t, int64_t>("neg", a, scalar_tensor(0, kInt64), kInt64,
                                                                    [](int64_t x, int64_t) { return -x; })
                                   : float_unary(UnaryOp::Neg, a);
  record("neg", {a}, out, [](const Tensor& g) { return Grads{neg(g)}; });
  return out;
}

Tensor abs(const Tensor& a) {
  check_numeric("abs", a);
  if (a.dtype() == kInt64)
    return scalar_binary<int64_t, int64_t>("abs", a, scalar_tensor(0, kInt64), kInt64,
                                           [](int64_t x, int64_t) { return x < 0 ? -x : x; });
  return unary_op("abs", UnaryOp::Abs, a);
}

Tensor clamp(const Tensor& a, std::optional<double> lo, std::optional<double> hi) {
  check_float("clamp", a);
  LOOM_CHECK(lo || hi, "clamp: at least one of min and max must be given");
  Tensor out = a;
  {
    NoGradGuard no_grad;
    if (lo) out = float_binary(BinaryOp::Maximum, out, scalar_tensor(*lo), a.sizes());
    if (hi) out = float_binary(BinaryOp::Minimum, out, scalar_tensor(*hi), a.sizes());
  }
  record("clamp", {a}, out, [a, lo, hi](const Tensor& g) {
    Tensor keep = ones_like(a).to(kBool);
    if (lo) keep = logical_and(keep, ge(a, scalar_tensor(*lo)));
    if (hi) keep = logical_and(keep, le(a, scalar_tensor(*hi)));
    return Grads{where(keep, g, scalar_tensor(0.0))};
  });
  return out;
}

// ---- float32 math ----------------------------------------------------------------------------
Tensor exp(const Tensor& a) { return unary_op("exp", UnaryOp::Exp, a); }
Tensor log(const Tensor& a) { return unary_op("log", UnaryOp::Log, a); }
Tensor sqrt(const Tensor& a) { return unary_op("sqrt", UnaryOp::Sqrt, a); }
Tensor rsqrt(const Tensor& a) { return unary_op("rsqrt", UnaryOp::Rsqrt, a); }
Tensor tanh(const Tensor& a) { return unary_op("tanh", UnaryOp::Tanh, a); }
Tensor sigmoid(const Tensor& a) { return unary_op("sigmoid", UnaryOp::Sigmoid, a); }
Tensor silu(const Tensor& a) { return unary_op("silu", UnaryOp::Silu, a); }
Tensor softplus(const Tensor& a) { return unary_op("softplus", UnaryOp::Softplus, a); }

Tensor relu(const Tensor& a) {
  check_numeric("relu", a);
  if (a.dtype() == kInt64)
    return scalar_binary<int64_t, int64_t>("relu", a, scalar_tensor(0, kInt64), kInt64,
                                           [](int64_t x, int64_t) { return x > 0 ? x : 0; });
  return unary_op("relu", UnaryOp::Relu, a, true);
}

Tensor gelu(const Tensor& a, const std::string& approximate) {
  LOOM_CHECK(approximate == "none" || approximate == "tanh", "gelu: approximate must be 'none' or 'tanh', got '",
             approximate, "'");
  return unary_op("gelu", approximate == "none" ? UnaryOp::GeluErf : UnaryOp::GeluTanh, a, true);
}

// ---- comparisons and logic ---------------------------------------------------------------------
namespace {
template <typename F>
Tensor compare(const char* op, const Tensor& a, const Tensor& b, F f) {
  check_defined(op, a);
  check_defined(op, b);
  LOOM_CHECK(a.dtype() != kBFloat16 && b.dtype() != kBFloat16, op, ": not implemented for bfloat16");
  DType d = promote_types(a.dtype(), b.dtype());
  return visit_dtype(d, [&](auto tag) -> Tensor {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, BFloat16>) return Tensor();
    else return scalar_binary<T, bool>(op, a, b, kBool, f);
  });
}
}  // namespace

Tensor eq(const Tensor& a, const Tensor& b) { return compare("eq", a, b, [](auto x, auto y) { return x == y; }); }
Tensor ne(const Tensor& a, const Tensor& b) { return compare("ne", a, b, [](auto x, auto y) { return x != y; }); }
Tensor lt(const Tensor& a, const Tensor& b) { return compare("lt", a, b, [](auto x, auto y) { return x < y; }); }
Tensor le(const Tensor& a, const Tensor& b) { return compare("le", a, b, [](auto x, auto y) { return x <= y; }); }
Tensor gt(const Tensor& a, const Tensor& b) { return compare("gt", a, b, [](auto x, auto y) { return x > y; }); }
Tensor ge(const Tensor& a, const Tensor& b) { return compare("ge", a, b, [](auto x, auto y) { return x >= y; }); }

Tensor logical_and(const Tensor& a, const Tensor& b) {
  check_defined("logical_and", a);
  check_defined("logical_and", b);
  return scalar_binary<bool, bool>("logical_and", a, b, kBool, [](bool x, bool y) { return x && y; });
}
Tensor logical_or(const Tensor& a, const Tensor& b) {
  check_defined("logical_or", a);
  check_defined("logical_or", b);
  return scalar_binary<bool, bool>("logical_or", a, b, kBool, [](bool x, bool y) { return x || y; });
}
Tensor logical_not(const Tensor& a) {
  check_defined("logical_not", a);
  return scalar_binary<bool, bool>("logical_not", a, scalar_tensor(0, kBool), kBool, [](bool x, bool) { return !x; });
}

// ---- selection ----------------------------------------------------------------------------------
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  check_defined("where", cond);
  check_numeric("where", a);
  check_numeric("where", b);
  LOOM_CHECK(cond.dtype() == kBool, "where: condition must be a bool tensor, got ", dtype_name(cond.dtype()));
  Shape shape = broadcast_shapes("where", broadcast_shapes("where", cond.sizes(), a.sizes()), b.sizes());
  DType d = promote_types(a.dtype(), b.dtype());
  Tensor ac = a.to(d), bc = b.to(d);
  Tensor out = empty(shape, d);
  visit_dtype(d, [&](auto tag) {
    using T = decltype(tag);
    parallel_for_each_run<4>(shape, {bytes(out), bytes(cond), bytes(ac), bytes(bc)},
                             {broadcast_byte_strides(out, shape), broadcast_byte_strides(cond, shape),
                              broadcast_byte_strides(ac, shape), broadcast_byte_strides(bc, shape)},
                             1, [&](char* const* p, const int64_t* s, int64_t n) {
                               for (int64_t i = 0; i < n; ++i)
                                 *reinterpret_cast<T*>(p[0] + i * s[0]) =
                                     *reinterpret_cast<const bool*>(p[1] + i * s[1])
                                         ? *reinterpret_cast<const T*>(p[2] + i * s[2])
                                         : *reinterpret_cast<const T*>(p[3] + i * s[3]);
                             });
  });
  record("where", {a, b}, out, [cond](const Tensor& g) {
    Tensor zero = scalar_tensor(0.0);
    return Grads{where(cond, g, zero), where(cond, zero, g)};
  });
  return out;
}

Tensor masked_fill(const Tensor& t, const Tensor& mask, double value) {
  check_numeric("masked_fill", t);
  check_defined("masked_fill", mask);
  LOOM_CHECK(mask.dtype() == kBool, "masked_fill: mask must be a bool tensor, got ", dtype_name(mask.dtype()));
  LOOM_CHECK(broadcast_shapes("masked_fill", t.sizes(), mask.sizes()) == t.sizes(), "masked_fill: mask of shape ",
             mask.sizes(), " does not broadcast to the tensor's shape ", t.sizes());
  return where(mask, scalar_tensor(value, t.dtype()), t);
}

// ---- in-place, on Tensor (not recorded; see check_inplace) -------------------------------
namespace {
// self = op(self, other), other broadcast to self's shape.
const Tensor& inplace(const char* op, BinaryOp kop, const Tensor& self, const Tensor& other_in,
                      int64_t (*int_f)(int64_t, int64_t)) {
  check_inplace(op, self);
  check_numeric(op, self);
  check_numeric(op, other_in);
  Shape shape = broadcast_shapes(op, self.sizes(), other_in.sizes());
  LOOM_CHECK(shape == self.sizes(), op, ": the result of shape ", shape, " does not fit in the tensor of shape ",
             self.sizes());
  Tensor other = other_in.to(self.dtype());
  if (self.dtype() == kInt64) {
    for_each_run<2>(shape, {bytes(self), bytes(other)},
                    {broadcast_byte_strides(self, shape), broadcast_byte_strides(other, shape)},
                    [&](char* const* p, const int64_t* s, int64_t n) {
                      for (int64_t i = 0; i < n; ++i) {
                        int64_t& x = *reinterpret_cast<int64_t*>(p[0] + i * s[0]);
                        x = int_f(x, *reinterpret_cast<const int64_t*>(p[1] + i * s[1]));
                      }
                    });
    return self;
  }
  // float32: straight into self when contiguous, else through a temporary.
  if (self.is_contiguous()) float_binary(kop, self, other, shape, self);
  else self.copy_(float_binary(kop, self, other, shape));
  return self;
}
}  // namespace

const Tensor& Tensor::add_(const Tensor& other, double alpha) const {
  if (alpha == 1.0) return inplace("add_", BinaryOp::Add, *this, other, [](int64_t x, int64_t y) { return x + y; });
  check_inplace("add_", *this);  // before the guard below turns grad mode off
  check_defined("add_", other);
  NoGradGuard no_grad;
  return add_(mul(other, scalar_tensor(alpha, is_floating_point() ? dtype() : kInt64)), 1.0);
}
const Tensor& Tensor::mul_(const Tensor& other) const {
  return inplace("mul_", BinaryOp::Mul, *this, other, [](int64_t x, int64_t y) { return x * y; });
}
const Tensor& Tensor::mul_(double value) const { return mul_(scalar_tensor(value, dtype())); }
const Tensor& Tensor::div_(const Tensor& other) const {
  LOOM_CHECK(is_floating_point(), "div_: true division of a ", dtype_name(dtype()), " tensor cannot be stored in "
             "place (shape ", sizes(), "); use div() for a float32 result");
  return inplace("div_", BinaryOp::Div, *this, other, nullptr);
}

Tensor Tensor::relu() const { return loom::relu(*this); }

}  // namespace loom
