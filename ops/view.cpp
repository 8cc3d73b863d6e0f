// Views: new shape and strides over the same storage, no data copied.
// Each is differentiable; its backward rule puts the gradient back into the
// input's layout.
//
//   view/reshape  d/dx = grad.reshape(x.shape)
//   permute       d/dx = grad.permute(inverse permutation)
//   slice/select  d/dx = zeros(x.shape) with grad written into the slice
//   expand        d/dx = grad summed over the broadcast dims (done by the
//                 autograd engine, which sums every gradient to its input's shape)
#include <algorithm>
#include <optional>

#include <loom/core/autograd.h>
#include <loom/ops/ops.h>

namespace loom {

namespace {

// Replaces one -1 in `shape` by what makes numel match; checks the total.
Shape infer_shape(const char* op, Shape shape, int64_t numel, const Shape& from) {
  int64_t known = 1, infer_at = -1;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == -1) {
      LOOM_CHECK(infer_at < 0, op, ": only one dimension can be -1, got ", shape);
      infer_at = int64_t(d);
    } else {
      LOOM_CHECK(shape[d] >= 0, op, ": invalid size ", shape[d], " in shape ", shape);
      known *= shape[d];
    }
  }
  if (infer_at >= 0) {
    LOOM_CHECK(known != 0 && numel % known == 0, op, ": shape ", shape, " is invalid for input of shape ",
               from, " (", numel, " elements)");
    shape[size_t(infer_at)] = numel / known;
  }
  LOOM_CHECK(numel_of(shape) == numel, op, ": shape ", shape, " is invalid for input of shape ", from,
             " (", numel, " elements)");
  return shape;
}

// Strides that let `new_shape` view memory laid out as (old_shape,
// old_strides), or nothing when the view would need a copy. This is
// PyTorch's computeStride: it walks the old dims in contiguous chunks and
// fits the new dims into each chunk.
std::optional<Shape> view_strides(const Shape& old_shape, const Shape& old_strides, const Shape& new_shape) {
  if (old_shape.empty() || numel_of(old_shape) == 0) return contiguous_strides(new_shape);
  Shape new_strides(new_shape.size());
  int64_t view_d = int64_t(new_shape.size()) - 1;
  int64_t chunk_base_stride = old_strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t tensor_d = int64_t(old_shape.size()) - 1; tensor_d >= 0; --tensor_d) {
    tensor_numel *= old_shape[size_t(tensor_d)];
    bool chunk_ends = tensor_d == 0 || (old_shape[size_t(tensor_d - 1)] != 1 &&
                                        old_strides[size_t(tensor_d - 1)] != tensor_numel * chunk_base_stride);
    if (!chunk_ends) continue;
    while (view_d >= 0 && (view_numel < tensor_numel || new_shape[size_t(view_d)] == 1)) {
      new_strides[size_t(view_d)] = view_numel * chunk_base_stride;
      view_numel *= new_shape[size_t(view_d)];
      --view_d;
    }
    if (view_numel != tensor_numel) return std::nullopt;
    if (tensor_d > 0) {
      chunk_base_stride = old_strides[size_t(tensor_d - 1)];
      tensor_numel = 1;
      view_numel = 1;
    }
  }
  if (view_d != -1) return std::nullopt;
  return new_strides;
}

// The gradient of a slice-like view: zeros of the input's shape with the
// incoming gradient written into the same slice.
Tensor scatter_into_zeros(const Shape& input_shape, const Tensor& g,
                          const std::function<Tensor(const Tensor&)>& same_view) {
  Tensor z = zeros(input_shape, g.dtype());
  same_view(z).copy_(g);
  return z;
}

}  // namespace

Tensor Tensor::view(Shape shape) const {
  shape = infer_shape("view", std::move(shape), numel(), sizes());
  auto strides = view_strides(sizes(), this->strides(), shape);
  LOOM_CHECK(strides.has_value(), "view: shape ", shape, " is not compatible with input of shape ", sizes(),
             " and strides ", this->strides(), " (not contiguous enough); use reshape() instead");
  Tensor out = make_view(*this, shape, *strides, storage_offset());
  Shape in_shape = sizes();
  record("view", {*this}, out, [in_shape](const Tensor& g) { return Grads{g.reshape(in_shape)}; });
  return out;
}

Tensor Tensor::reshape(Shape shape) const {
  shape = infer_shape("reshape", std::move(shape), numel(), sizes());
  if (view_strides(sizes(), strides(), shape)) return view(std::move(shape));
  return clone().view(std::move(shape));
}

Tensor Tensor::flatten(int64_t start_dim, int64_t end_dim) const {
  if (dim() == 0) return reshape({1});
  int64_t s = wrap_dim("flatten", start_dim, dim()), e = wrap_dim("flatten", end_dim, dim());
  LOOM_CHECK(s <= e, "flatten: start_dim ", start_dim, " comes after end_dim ", end_dim);
  Shape shape(sizes().begin(), sizes().begin() + s);
  shape.push_back(-1);
  shape.insert(shape.end(), sizes().begin() + e + 1, sizes().end());
  return reshape(shape);
}

Tensor Tensor::permute(Shape dims) const {
  LOOM_CHECK(int64_t(dims.size()) == dim(), "permute: got ", dims.size(), " dims ", dims, " for a tensor of shape ",
             sizes());
  Shape shape(dims.size()), strides(dims.size()), inverse(dims.size());
  std::vector<bool> used(dims.size(), false);
  for (size_t i = 0; i < dims.size(); ++i) {
    int64_t d = wrap_dim("permute", dims[i], dim());
    LOOM_CHECK(!used[size_t(d)], "permute: dimension ", d, " repeats in ", dims);
    used[size_t(d)] = true;
    shape[i] = sizes()[size_t(d)];
    strides[i] = this->strides()[size_t(d)];
    inverse[size_t(d)] = int64_t(i);
  }
  Tensor out = make_view(*this, shape, strides, storage_offset());
  record("permute", {*this}, out, [inverse](const Tensor& g) { return Grads{g.permute(inverse)}; });
  return out;
}

Tensor Tensor::transpose(int64_t dim0, int64_t dim1) const {
  Shape dims(static_cast<size_t>(dim()));
  for (int64_t i = 0; i < dim(); ++i) dims[size_t(i)] = i;
  if (dim() == 0) return *this;
  std::swap(dims[size_t(wrap_dim("transpose", dim0, dim()))], dims[size_t(wrap_dim("transpose", dim1, dim()))]);
  return permute(dims);
}

Tensor Tensor::movedim(int64_t source, int64_t destination) const {
  int64_t src = wrap_dim("movedim", source, dim()), dst = wrap_dim("movedim", destination, dim());
  if (dim() == 0 || src == dst) return *this;
  Shape order;
  for (int64_t i = 0; i < dim(); ++i)
    if (i != src) order.push_back(i);
  order.insert(order.begin() + dst, src);
  return permute(order);
}

Tensor Tensor::t() const {
  LOOM_CHECK(dim() <= 2, "t: expects a tensor with <= 2 dimensions, got shape ", sizes());
  return dim() < 2 ? *this : transpose(0, 1);
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end, int64_t step) const {
  d = wrap_dim("slice", d, dim());
  LOOM_CHECK(step > 0, "slice: step must be positive, got ", step);
  int64_t n = sizes()[size_t(d)];
  // Python slicing: negative indices count from the end; out-of-range clamps.
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape shape = sizes(), strides = this->strides();
  shape[size_t(d)] = (end - start + step - 1) / step;
  strides[size_t(d)] *= step;
  Tensor out = make_view(*this, shape, strides, storage_offset() + start * this->strides()[size_t(d)]);
  Shape in_shape = sizes();
  record("slice", {*this}, out, [in_shape, d, start, end, step](const Tensor& g) {
    return Grads{scatter_into_zeros(in_shape, g, [&](const Tensor& z) { return z.slice(d, start, end, step); })};
  });
  return out;
}

Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
  d = wrap_dim("narrow", d, dim());
  int64_t n = sizes()[size_t(d)];
  if (start < 0) start += n;
  LOOM_CHECK(start >= 0 && length >= 0 && start + length <= n, "narrow: start ", start, " and length ", length,
             " are out of range for dimension ", d, " of size ", n, " (shape ", sizes(), ")");
  return slice(d, start, start + length);
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  d = wrap_dim("select", d, dim());
  int64_t n = sizes()[size_t(d)];
  LOOM_CHECK(index >= -n && index < n, "select: index ", index, " is out of range for dimension ", d,
             " of size ", n, " (shape ", sizes(), ")");
  if (index < 0) index += n;
  Shape shape = sizes(), strides = this->strides();
  shape.erase(shape.begin() + d);
  strides.erase(strides.begin() + d);
  Tensor out = make_view(*this, shape, strides, storage_offset() + index * this->strides()[size_t(d)]);
  Shape in_shape = sizes();
  record("select", {*this}, out, [in_shape, d, index](const Tensor& g) {
    return Grads{scatter_into_zeros(in_shape, g, [&](const Tensor& z) { return z.select(d, index); })};
  });
  return out;
}

Tensor Tensor::expand(Shape shape) const {
  LOOM_CHECK(int64_t(shape.size()) >= dim(), "expand: the target shape ", shape, " has fewer dimensions than ",
             "the tensor's shape ", sizes());
  size_t lead = shape.size() - size_t(dim());
  Shape strides(shape.size(), 0);
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i < lead) {
      LOOM_CHECK(shape[i] >= 0, "expand: new leading dimension ", i, " cannot be ", shape[i], " in ", shape);
      continue;  // new leading dims repeat the whole tensor: stride 0
    }
    int64_t have = sizes()[i - lead];
    if (shape[i] == -1) shape[i] = have;
    LOOM_CHECK(have == shape[i] || have == 1, "expand: the expanded size ", shape[i], " must match the existing "
               "size ", have, " at non-singleton dimension ", i, " (shape ", sizes(), " to ", shape, ")");
    strides[i] = have == shape[i] ? this->strides()[i - lead] : 0;
  }
  Tensor out = make_view(*this, shape, strides, storage_offset());
  // The engine sums each gradient down to its input's shape, which is exactly
  // expand's backward.
  record("expand", {*this}, out, [](const Tensor& g) { return Grads{g}; });
  return out;
}

Tensor Tensor::squeeze() const {
  Shape shape;
  for (int64_t s : sizes())
    if (s != 1) shape.push_back(s);
  return view(shape);
}

Tensor Tensor::squeeze(int64_t d) const {
  if (dim() == 0) return *this;
  d = wrap_dim("squeeze", d, dim());
  if (sizes()[size_t(d)] != 1) return *this;  // as in PyTorch: a no-op, not an error
  Shape shape = sizes();
  shape.erase(shape.begin() + d);
  return view(shape);
}

Tensor Tensor::unsqueeze(int64_t d) const {
  d = wrap_dim("unsqueeze", d, dim() + 1);
  Shape shape = sizes();
  shape.insert(shape.begin() + d, 1);
  return view(shape);
}

}  // namespace loom
