// Tensor: a reference-counted handle to (storage, shape, strides, offset,
// dtype) plus its autograd state. Copying a Tensor copies the handle, not
// the data, exactly like libtorch's at::Tensor. Views (reshape, permute,
// narrow, expand, ...) make a new handle onto the same Storage.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <iosfwd>
#include <memory>
#include <type_traits>
#include <vector>

#include <loom/core/dtype.h>
#include <loom/core/error.h>
#include <loom/core/storage.h>

namespace loom {

using Shape = std::vector<int64_t>;

struct Node;        // autograd node (core/autograd.h)
struct TensorImpl;  // defined below
class Generator;    // core/generator.h

// What a factory makes: dtype and whether the result requires grad.
// Converts implicitly from a DType, so `zeros({2, 3}, kInt64)` works.
struct TensorOptions {
  DType dtype_ = kFloat32;
  bool requires_grad_ = false;

  TensorOptions() = default;
  TensorOptions(DType d) : dtype_(d) {}  // NOLINT: implicit on purpose
  TensorOptions dtype(DType d) const { TensorOptions o = *this; o.dtype_ = d; return o; }
  TensorOptions requires_grad(bool r = true) const { TensorOptions o = *this; o.requires_grad_ = r; return o; }
};

class Tensor {
 public:
  Tensor() = default;  // an undefined tensor (like a default at::Tensor)
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  bool defined() const { return impl_ != nullptr; }
  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

  // ---- metadata ----------------------------------------------------------
  const Shape& sizes() const;
  const Shape& shape() const { return sizes(); }
  const Shape& strides() const;
  int64_t size(int64_t dim) const;
  int64_t stride(int64_t dim) const;
  int64_t dim() const;
  int64_t numel() const;
  DType dtype() const;
  DType scalar_type() const { return dtype(); }
  int64_t storage_offset() const;
  bool is_contiguous() const;
  bool is_floating_point() const { return loom::is_floating_point(dtype()); }
  // True when both handles look at the same Storage (a view and its base).
  bool is_same_storage(const Tensor& other) const;

  // ---- element access -------------------------------------------------------
  // Pointer to the first element (storage + offset). Checks the dtype.
  template <typename T> T* data_ptr() const;
  void* raw_data() const;  // no dtype check
  // The value of a one-element tensor, converted to T.
  template <typename T> T item() const;
  // All elements in row-major order, converted to T (any layout, any view).
  template <typename T> std::vector<T> to_vector() const;

  // ---- views (share storage; differentiable) -------------------------------
  Tensor view(Shape shape) const;     // needs compatible strides
  Tensor reshape(Shape shape) const;  // a view when possible, else a copy
  Tensor flatten(int64_t start_dim = 0, int64_t end_dim = -1) const;
  Tensor permute(Shape dims) const;
  Tensor transpose(int64_t dim0, int64_t dim1) const;
  Tensor movedim(int64_t source, int64_t destination) const;  // one dim moved, the others keep their order
  Tensor t() const;  // 2-D transpose
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step = 1) const;
  Tensor select(int64_t dim, int64_t index) const;
  Tensor operator[](int64_t index) const { return select(0, index); }
  Tensor expand(Shape shape) const;  // -1 keeps a size; new leading dims allowed
  Tensor expand_as(const Tensor& other) const { return expand(other.sizes()); }
  Tensor squeeze() const;
  Tensor squeeze(int64_t dim) const;
  Tensor unsqueeze(int64_t dim) const;
  Tensor contiguous() const;  // itself when already contiguous, else a copy

  // ---- copies and conversion -----------------------------------------------
  Tensor clone() const;
  Tensor to(DType dtype) const;  // itself when already that dtype
  Tensor detach() const;         // same storage, cut from the graph

  // ---- autograd -------------------------------------------------------------
  bool requires_grad() const;
  const Tensor& requires_grad_(bool requires_grad = true) const;
  const Tensor& grad() const;  // undefined until a backward reaches it
  Tensor& mutable_grad() const;
  bool is_leaf() const;
  const std::shared_ptr<Node>& grad_fn() const;
  // Reverse-mode autodiff from this tensor. A non-scalar needs `gradient`
  // (same shape). Frees the graph unless retain_graph.
  void backward(const Tensor& gradient = Tensor(), bool retain_graph = false) const;

  // ---- in-place (write through views; not recorded by autograd) -------------
  const Tensor& zero_() const;
  const Tensor& fill_(double value) const;
  const Tensor& copy_(const Tensor& src) const;  // broadcasts and converts src
  const Tensor& add_(const Tensor& other, double alpha = 1.0) const;
  const Tensor& sub_(const Tensor& other, double alpha = 1.0) const { return add_(other, -alpha); }
  const Tensor& mul_(const Tensor& other) const;
  const Tensor& mul_(double value) const;
  const Tensor& div_(const Tensor& other) const;
  const Tensor& operator+=(const Tensor& other) const { return add_(other); }
  const Tensor& operator-=(const Tensor& other) const { return sub_(other); }
  const Tensor& operator*=(const Tensor& other) const { return mul_(other); }
  const Tensor& operator/=(const Tensor& other) const { return div_(other); }
  const Tensor& operator*=(double value) const { return mul_(value); }

  // ---- math as methods (the functions in ops/ do the work) -----------------
  Tensor sum() const;
  Tensor sum(Shape dims, bool keepdim = false) const;
  Tensor mean() const;
  Tensor mean(Shape dims, bool keepdim = false) const;
  Tensor relu() const;
  Tensor matmul(const Tensor& other) const;

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// Everything a tensor is. Public so kernels can read it directly; user code
// goes through Tensor.
struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Shape strides;       // in elements, not bytes
  int64_t offset = 0;  // in elements, into storage
  DType dtype = kFloat32;

  // autograd state
  bool requires_grad = false;
  Tensor grad;                    // accumulated by backward() on leaves
  std::shared_ptr<Node> grad_fn;  // the node that made this tensor, if any
};

// ---- helpers shared by core and ops ------------------------------------------
int64_t numel_of(const Shape& shape);
Shape contiguous_strides(const Shape& shape);
// Wraps a possibly negative dim into [0, ndim); names `op` in the error.
int64_t wrap_dim(const char* op, int64_t dim, int64_t ndim);
// A new handle on t's storage with the given geometry. No autograd.
Tensor make_view(const Tensor& t, Shape shape, Shape strides, int64_t offset);

// ---- factories (libtorch names) -----------------------------------------------
Tensor empty(Shape shape, TensorOptions options = {});
Tensor zeros(Shape shape, TensorOptions options = {});
Tensor ones(Shape shape, TensorOptions options = {});
Tensor full(Shape shape, double value, TensorOptions options = {});
Tensor scalar_tensor(double value, TensorOptions options = {});
Tensor empty_like(const Tensor& t);
Tensor zeros_like(const Tensor& t);
Tensor ones_like(const Tensor& t);
Tensor full_like(const Tensor& t, double value);

// arange(end), arange(start, end), arange(start, end, step): int64 when every
// argument is an integer and no dtype is given, else float32, as in PyTorch.
Tensor arange(double start, double end, double step, TensorOptions options);
template <typename A, typename B = int64_t, typename C = int64_t,
          typename = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B> &&
                                      std::is_arithmetic_v<C>>>
Tensor arange(A start, B end, C step = 1) {
  bool all_int = std::is_integral_v<A> && std::is_integral_v<B> && std::is_integral_v<C>;
  return arange(double(start), double(end), double(step), all_int ? kInt64 : kFloat32);
}
template <typename A, typename B, typename = std::enable_if_t<std::is_arithmetic_v<A>>>
Tensor arange(A start, B end, TensorOptions options) {
  return arange(double(start), double(end), 1.0, options);
}
inline Tensor arange(int64_t end, TensorOptions options = kInt64) {
  return arange(0.0, double(end), 1.0, options);
}

// From data. tensor(...) is 1-D like torch::tensor; from_vector takes a shape.
Tensor tensor(const std::vector<float>& values, TensorOptions options = {});
Tensor tensor(const std::vector<double>& values, TensorOptions options = {});
Tensor tensor(const std::vector<int64_t>& values, TensorOptions options = kInt64);
Tensor tensor(const std::vector<int>& values, TensorOptions options = kInt64);
Tensor tensor(const std::vector<bool>& values, TensorOptions options = kBool);
Tensor tensor(std::initializer_list<float> values, TensorOptions options = {});
template <typename T>
Tensor from_vector(const std::vector<T>& values, Shape shape, TensorOptions options = dtype_of<T>::value);

// Random tensors from a Generator (the global one when none is given):
// the same numbers on every machine and thread count for a given seed.
Tensor rand(Shape shape, TensorOptions options = {});
Tensor rand(Shape shape, Generator& gen, TensorOptions options = {});
Tensor randn(Shape shape, TensorOptions options = {});
Tensor randn(Shape shape, Generator& gen, TensorOptions options = {});
Tensor randint(int64_t low, int64_t high, Shape shape, TensorOptions options = kInt64);
Tensor randint(int64_t low, int64_t high, Shape shape, Generator& gen, TensorOptions options = kInt64);

// Printing like PyTorch: tensor([[0., 1.], [2., 3.]], shape=[2, 2], dtype=float32)
std::ostream& operator<<(std::ostream& os, const Tensor& t);
std::string to_string(const Tensor& t);

// ---- template definitions ------------------------------------------------------
template <typename T>
T* Tensor::data_ptr() const {
  LOOM_CHECK(defined(), "data_ptr: tensor is undefined");
  LOOM_CHECK(dtype() == dtype_of<std::remove_const_t<T>>::value, "data_ptr: tensor has dtype ",
             dtype_name(dtype()), " but ", dtype_name(dtype_of<std::remove_const_t<T>>::value),
             " was asked for");
  return static_cast<T*>(raw_data());
}

namespace detail {
// Reads element `i` (an index into storage) of a tensor with dtype `d` as T.
template <typename T>
T read_as(const void* base, DType d, int64_t i) {
  switch (d) {
    case DType::Float32: return static_cast<T>(static_cast<const float*>(base)[i]);
    case DType::Int64: return static_cast<T>(static_cast<const int64_t*>(base)[i]);
    case DType::Bool: return static_cast<T>(static_cast<const bool*>(base)[i]);
    case DType::BFloat16: return static_cast<T>(float(static_cast<const BFloat16*>(base)[i]));
  }
  return T();
}
// Storage indices of all elements of t in row-major order.
std::vector<int64_t> element_offsets(const Tensor& t);
}  // namespace detail

template <typename T>
T Tensor::item() const {
  LOOM_CHECK(defined(), "item: tensor is undefined");
  LOOM_CHECK(numel() == 1, "item: a tensor with ", numel(), " elements (shape ", sizes(),
             ") cannot be converted to a scalar");
  return detail::read_as<T>(impl_->storage->data(), dtype(), impl_->offset);
}

template <typename T>
std::vector<T> Tensor::to_vector() const {
  LOOM_CHECK(defined(), "to_vector: tensor is undefined");
  std::vector<T> out;
  out.reserve(size_t(numel()));
  const void* base = impl_->storage->data();
  for (int64_t i : detail::element_offsets(*this)) out.push_back(detail::read_as<T>(base, dtype(), i));
  return out;
}

template <typename T>
Tensor from_vector(const std::vector<T>& values, Shape shape, TensorOptions options) {
  LOOM_CHECK(numel_of(shape) == int64_t(values.size()), "from_vector: ", values.size(),
             " values do not fill shape ", shape, " (", numel_of(shape), " elements)");
  Tensor out = tensor(values).view(std::move(shape)).to(options.dtype_);
  if (options.requires_grad_) out.requires_grad_();
  return out;
}

}  // namespace loom
