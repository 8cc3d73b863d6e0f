// Tensor metadata, factories, copies and conversion. Views live in
// ops/view.cpp (they are differentiable ops); math lives in ops/.
#include <loom/core/tensor.h>

#include <cmath>
#include <cstring>

#include <loom/core/autograd.h>
#include <loom/core/generator.h>
#include <loom/core/loop.h>

namespace loom {

// ---- helpers ------------------------------------------------------------------
int64_t numel_of(const Shape& shape) {
  int64_t n = 1;
  for (int64_t s : shape)
    if (__builtin_mul_overflow(n, s, &n)) fail("shape ", shape, " has more than 2^63 elements");
  return n;
}

// The strides step over sizes of at least 1, so a shape with a zero size can
// still overflow them ([0, 2^62, 2^62]). The kernels use strides in bytes (up
// to 8 per element), so the span is capped at 2^63 / 8 elements.
Shape contiguous_strides(const Shape& shape) {
  constexpr int64_t kMaxSpan = INT64_MAX / 8;
  Shape strides(shape.size());
  int64_t s = 1;
  for (int64_t d = int64_t(shape.size()) - 1; d >= 0; --d) {
    strides[d] = s;
    if (__builtin_mul_overflow(s, std::max<int64_t>(shape[d], 1), &s) || s > kMaxSpan)
      fail("shape ", shape, " is too large: its strides overflow int64");
  }
  return strides;
}

int64_t wrap_dim(const char* op, int64_t dim, int64_t ndim) {
  int64_t lo = ndim == 0 ? -1 : -ndim, hi = ndim == 0 ? 0 : ndim - 1;  // a 0-d tensor takes 0 and -1
  LOOM_CHECK(dim >= lo && dim <= hi, op, ": dimension ", dim, " out of range for a ", ndim,
             "-d tensor (expected ", lo, " to ", hi, ")");
  return dim < 0 ? dim + std::max<int64_t>(ndim, 1) : dim;
}

Tensor make_view(const Tensor& t, Shape shape, Shape strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = t.impl()->storage;
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = t.dtype();
  return Tensor(std::move(impl));
}

namespace detail {
std::vector<int64_t> element_offsets(const Tensor& t) {
  std::vector<int64_t> out;
  out.reserve(size_t(t.numel()));
  const Shape& shape = t.sizes();
  const Shape& strides = t.strides();
  if (t.numel() == 0) return out;
  Shape idx(shape.size(), 0);
  int64_t pos = t.storage_offset();
  while (true) {
    out.push_back(pos);
    int64_t d = int64_t(shape.size()) - 1;
    for (; d >= 0; --d) {
      pos += strides[d];
      if (++idx[d] < shape[d]) break;
      pos -= strides[d] * shape[d];
      idx[d] = 0;
    }
    if (d < 0) return out;
  }
}
}  // namespace detail

// ---- metadata -------------------------------------------------------------------
#define LOOM_REQUIRE_DEFINED(what) LOOM_CHECK(defined(), what, ": tensor is undefined")

const Shape& Tensor::sizes() const { LOOM_REQUIRE_DEFINED("sizes"); return impl_->shape; }
const Shape& Tensor::strides() const { LOOM_REQUIRE_DEFINED("strides"); return impl_->strides; }
int64_t Tensor::size(int64_t d) const { return sizes()[size_t(wrap_dim("size", d, dim()))]; }
int64_t Tensor::stride(int64_t d) const { return strides()[size_t(wrap_dim("stride", d, dim()))]; }
int64_t Tensor::dim() const { return int64_t(sizes().size()); }
int64_t Tensor::numel() const { return numel_of(sizes()); }
DType Tensor::dtype() const { LOOM_REQUIRE_DEFINED("dtype"); return impl_->dtype; }
int64_t Tensor::storage_offset() const { LOOM_REQUIRE_DEFINED("storage_offset"); return impl_->offset; }

bool Tensor::is_contiguous() const {
  const Shape& shape = sizes();
  int64_t expected = 1;
  for (int64_t d = int64_t(shape.size()) - 1; d >= 0; --d) {
    if (shape[d] != 1 && impl_->strides[d] != expected) return false;
    expected *= shape[d];
  }
  return true;
}

bool Tensor::is_same_storage(const Tensor& other) const {
  return defined() && other.defined() && impl_->storage == other.impl()->storage;
}

void* Tensor::raw_data() const {
  LOOM_REQUIRE_DEFINED("data_ptr");
  return static_cast<char*>(impl_->storage->data()) + impl_->offset * int64_t(element_size(impl_->dtype));
}

// ---- autograd accessors --------------------------------------------------------------
bool Tensor::requires_grad() const { return defined() && impl_->requires_grad; }

const Tensor& Tensor::requires_grad_(bool requires_grad) const {
  LOOM_REQUIRE_DEFINED("requires_grad_");
  LOOM_CHECK(!requires_grad || is_floating_point(), "requires_grad_: only floating point tensors can "
             "require gradients, this one is ", dtype_name(dtype()));
  LOOM_CHECK(requires_grad || is_leaf(), "requires_grad_: cannot turn off requires_grad on a non-leaf "
             "tensor (made by '", impl_->grad_fn->name, "'); use detach()");
  impl_->requires_grad = requires_grad;
  return *this;
}

const Tensor& Tensor::grad() const { LOOM_REQUIRE_DEFINED("grad"); return impl_->grad; }
Tensor& Tensor::mutable_grad() const { LOOM_REQUIRE_DEFINED("grad"); return impl_->grad; }
bool Tensor::is_leaf() const { return defined() && !impl_->grad_fn; }
const std::shared_ptr<Node>& Tensor::grad_fn() const { LOOM_REQUIRE_DEFINED("grad_fn"); return impl_->grad_fn; }

void Tensor::backward(const Tensor& gradient, bool retain_graph) const {
  run_backward(*this, gradient, retain_graph);
}

Tensor Tensor::detach() const {
  LOOM_REQUIRE_DEFINED("detach");
  return make_view(*this, impl_->shape, impl_->strides, impl_->offset);
}

// ---- copying ----------------------------------------------------------------------------
namespace {
Shape byte_strides(const Tensor& t) {
  Shape s = t.strides();
  for (int64_t& v : s) v *= int64_t(element_size(t.dtype()));
  return s;
}

// dst[...] = convert(src[...]) over dst's shape; src already has dst's shape.
void strided_copy(const Tensor& dst, const Tensor& src) {
  visit_dtype(dst.dtype(), [&](auto d) {
    visit_dtype(src.dtype(), [&](auto s) {
      using D = decltype(d);
      using S = decltype(s);
      parallel_for_each_run<2>(dst.sizes(), {static_cast<char*>(dst.raw_data()), static_cast<char*>(src.raw_data())},
                      {byte_strides(dst), byte_strides(src)}, 1,
                      [](char* const* p, const int64_t* st, int64_t n) {
                        if (st[0] == int64_t(sizeof(D)) && st[1] == int64_t(sizeof(S))) {  // a contiguous run
                          D* d = reinterpret_cast<D*>(p[0]);
                          const S* s = reinterpret_cast<const S*>(p[1]);
                          if constexpr (std::is_same_v<D, S>) std::memcpy(d, s, size_t(n) * sizeof(D));
                          else
                            for (int64_t i = 0; i < n; ++i) d[i] = convert<D>(s[i]);
                          return;
                        }
                        for (int64_t i = 0; i < n; ++i)
                          *reinterpret_cast<D*>(p[0] + i * st[0]) =
                              convert<D>(*reinterpret_cast<const S*>(p[1] + i * st[1]));
                      });
    });
  });
}
}  // namespace

const Tensor& Tensor::copy_(const Tensor& src) const {
  check_inplace("copy_", *this);
  LOOM_CHECK(src.defined(), "copy_: source tensor is undefined");
  Tensor s = src;
  if (s.sizes() != sizes()) {
    NoGradGuard no_grad;
    s = src.expand(sizes());  // throws a clear error when not broadcastable
  }
  strided_copy(*this, s);
  return *this;
}

// A fresh contiguous copy; differentiable (the gradient passes straight through).
Tensor Tensor::clone() const {
  LOOM_REQUIRE_DEFINED("clone");
  Tensor out = empty(sizes(), dtype());
  strided_copy(out, *this);
  record("clone", {*this}, out, [](const Tensor& g) { return Grads{g}; });
  return out;
}

Tensor Tensor::contiguous() const {
  LOOM_REQUIRE_DEFINED("contiguous");
  return is_contiguous() ? *this : clone();
}

Tensor Tensor::to(DType target) const {
  LOOM_REQUIRE_DEFINED("to");
  if (target == dtype()) return *this;
  Tensor out = empty(sizes(), target);
  strided_copy(out, *this);
  if (is_floating_point() && loom::is_floating_point(target)) {
    DType from = dtype();
    record("to", {*this}, out, [from](const Tensor& g) { return Grads{g.to(from)}; });
  }
  return out;
}

const Tensor& Tensor::fill_(double value) const {
  check_inplace("fill_", *this);
  visit_dtype(dtype(), [&](auto tag) {
    using T = decltype(tag);
    T v = convert<T>(value);
    for_each_run<1>(sizes(), {static_cast<char*>(raw_data())}, {byte_strides(*this)},
                    [v](char* const* p, const int64_t* st, int64_t n) {
                      if (st[0] == int64_t(sizeof(T))) {  // a contiguous run: std::fill (memset, or vector stores)
                        T* d = reinterpret_cast<T*>(p[0]);
                        std::fill(d, d + n, v);
                        return;
                      }
                      for (int64_t i = 0; i < n; ++i) *reinterpret_cast<T*>(p[0] + i * st[0]) = v;
                    });
  });
  return *this;
}

const Tensor& Tensor::zero_() const { return fill_(0.0); }

// ---- factories -----------------------------------------------------------------------------
Tensor empty(Shape shape, TensorOptions options) {
  for (int64_t s : shape) LOOM_CHECK(s >= 0, "empty: negative dimension in shape ", shape);
  auto impl = std::make_shared<TensorImpl>();
  // contiguous_strides first: it refuses sizes whose strides (in bytes) overflow,
  // so the byte count below cannot.
  impl->strides = contiguous_strides(shape);
  impl->storage = std::make_shared<Storage>(size_t(numel_of(shape)) * element_size(options.dtype_));
  impl->shape = std::move(shape);
  impl->dtype = options.dtype_;
  Tensor t(std::move(impl));
  if (options.requires_grad_) t.requires_grad_();
  return t;
}

Tensor full(Shape shape, double value, TensorOptions options) {
  Tensor t = empty(std::move(shape), options.dtype_);
  t.fill_(value);
  if (options.requires_grad_) t.requires_grad_();
  return t;
}
Tensor zeros(Shape shape, TensorOptions options) { return full(std::move(shape), 0.0, options); }
Tensor ones(Shape shape, TensorOptions options) { return full(std::move(shape), 1.0, options); }
Tensor scalar_tensor(double value, TensorOptions options) { return full({}, value, options); }
Tensor empty_like(const Tensor& t) { return empty(t.sizes(), t.dtype()); }
Tensor zeros_like(const Tensor& t) { return zeros(t.sizes(), t.dtype()); }
Tensor ones_like(const Tensor& t) { return ones(t.sizes(), t.dtype()); }
Tensor full_like(const Tensor& t, double value) { return full(t.sizes(), value, t.dtype()); }

Tensor arange(double start, double end, double step, TensorOptions options) {
  LOOM_CHECK(step != 0, "arange: step must be nonzero");
  LOOM_CHECK(std::isfinite(start) && std::isfinite(end), "arange: start and end must be finite, got ",
             start, " and ", end);
  LOOM_CHECK((end - start) * step >= 0, "arange: upper bound and lower bound inconsistent with step sign "
             "(start ", start, ", end ", end, ", step ", step, ")");
  int64_t n = int64_t(std::ceil((end - start) / step));
  Tensor t = empty({n}, options.dtype_);
  visit_dtype(t.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* p = static_cast<T*>(t.raw_data());
    for (int64_t i = 0; i < n; ++i) p[i] = convert<T>(start + double(i) * step);
  });
  if (options.requires_grad_) t.requires_grad_();
  return t;
}

namespace {
template <typename T>
Tensor tensor_from(const T* values, size_t n, TensorOptions options) {
  Tensor t = empty({int64_t(n)}, dtype_of<T>::value);
  T* p = static_cast<T*>(t.raw_data());
  for (size_t i = 0; i < n; ++i) p[i] = values[i];
  t = t.to(options.dtype_);
  if (options.requires_grad_) t.requires_grad_();
  return t;
}
}  // namespace

Tensor tensor(const std::vector<float>& v, TensorOptions o) { return tensor_from(v.data(), v.size(), o); }
Tensor tensor(std::initializer_list<float> v, TensorOptions o) { return tensor_from(v.begin(), v.size(), o); }
Tensor tensor(const std::vector<int64_t>& v, TensorOptions o) { return tensor_from(v.data(), v.size(), o); }
Tensor tensor(const std::vector<double>& v, TensorOptions o) {
  std::vector<float> f(v.begin(), v.end());
  return tensor_from(f.data(), f.size(), o);
}
Tensor tensor(const std::vector<int>& v, TensorOptions o) {
  std::vector<int64_t> w(v.begin(), v.end());
  return tensor_from(w.data(), w.size(), o);
}
Tensor tensor(const std::vector<bool>& v, TensorOptions o) {
  std::unique_ptr<bool[]> b(new bool[v.size()]);
  for (size_t i = 0; i < v.size(); ++i) b[i] = v[i];
  return tensor_from(b.get(), v.size(), o);
}

// ---- random factories ------------------------------------------------------------------------
// Each fills element i from block (first + i / 4), lane i % 4 of the
// generator, so element i's value depends only on the seed and offset.
namespace {
Tensor finish_random(Tensor t, TensorOptions options) {
  t = t.to(options.dtype_);
  if (options.requires_grad_) t.requires_grad_();
  return t;
}
}  // namespace

Tensor rand(Shape shape, Generator& gen, TensorOptions options) {
  LOOM_CHECK(loom::is_floating_point(options.dtype_), "rand: dtype must be floating point, got ",
             dtype_name(options.dtype_));
  Tensor t = empty(std::move(shape), kFloat32);
  float* p = t.data_ptr<float>();
  int64_t n = t.numel();
  uint64_t first = gen.advance(uint64_t(n + 3) / 4);
  for (int64_t b = 0; b * 4 < n; ++b) {
    auto r = gen.block(first + uint64_t(b));
    for (int64_t k = 0; k < 4 && b * 4 + k < n; ++k) p[b * 4 + k] = uniform_from_bits(r[size_t(k)]);
  }
  return finish_random(t, options);
}

Tensor randn(Shape shape, Generator& gen, TensorOptions options) {
  LOOM_CHECK(loom::is_floating_point(options.dtype_), "randn: dtype must be floating point, got ",
             dtype_name(options.dtype_));
  Tensor t = empty(std::move(shape), kFloat32);
  float* p = t.data_ptr<float>();
  int64_t n = t.numel();
  uint64_t first = gen.advance(uint64_t(n + 3) / 4);
  // Box-Muller: each block's 4 uniforms give 4 normals, computed in double.
  const double two_pi = 6.283185307179586;
  for (int64_t b = 0; b * 4 < n; ++b) {
    auto r = gen.block(first + uint64_t(b));
    double z[4];
    for (int pair = 0; pair < 2; ++pair) {
      double u1 = (double(r[size_t(2 * pair)]) + 1.0) / 4294967296.0;  // (0, 1]: log is finite
      double u2 = double(r[size_t(2 * pair + 1)]) / 4294967296.0;
      double radius = std::sqrt(-2.0 * std::log(u1));
      z[2 * pair] = radius * std::cos(two_pi * u2);
      z[2 * pair + 1] = radius * std::sin(two_pi * u2);
    }
    for (int64_t k = 0; k < 4 && b * 4 + k < n; ++k) p[b * 4 + k] = float(z[k]);
  }
  return finish_random(t, options);
}

Tensor randint(int64_t low, int64_t high, Shape shape, Generator& gen, TensorOptions options) {
  LOOM_CHECK(low < high, "randint: low (", low, ") must be less than high (", high, ")");
  Tensor t = empty(std::move(shape), kInt64);
  int64_t* p = t.data_ptr<int64_t>();
  int64_t n = t.numel();
  uint64_t range = uint64_t(high - low);
  uint64_t first = gen.advance(uint64_t(n + 1) / 2);
  for (int64_t b = 0; b * 2 < n; ++b) {
    auto r = gen.block(first + uint64_t(b));
    for (int64_t k = 0; k < 2 && b * 2 + k < n; ++k) {
      uint64_t bits = (uint64_t(r[size_t(2 * k)]) << 32) | r[size_t(2 * k + 1)];
      // Multiply-shift maps 64 random bits onto [0, range) (Lemire).
      p[b * 2 + k] = low + int64_t((unsigned __int128)bits * range >> 64);
    }
  }
  return finish_random(t, options);
}

Tensor rand(Shape shape, TensorOptions o) { return rand(std::move(shape), default_generator(), o); }
Tensor randn(Shape shape, TensorOptions o) { return randn(std::move(shape), default_generator(), o); }
Tensor randint(int64_t low, int64_t high, Shape shape, TensorOptions o) {
  return randint(low, high, std::move(shape), default_generator(), o);
}

}  // namespace loom
