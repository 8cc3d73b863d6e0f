// Reductions.
//
//   sum  out = sum over dims of a   da = g broadcast back over the summed dims
//   mean out = sum / count          da = g / count, broadcast back
//
// The kernel moves the summed dims to the end (a view), makes that
// contiguous, and adds up each row of `inner` elements in double, so the
// result does not depend on thread count or layout.
#include <algorithm>

#include <loom/core/autograd.h>
#include <loom/ops/ops.h>

namespace loom {

namespace {

// The sorted, wrapped, de-duplicated dims to reduce (all dims when empty).
std::vector<bool> reduced_mask(const char* op, const Tensor& a, const Shape& dims) {
  std::vector<bool> mask(size_t(a.dim()), dims.empty());
  for (int64_t d : dims) {
    int64_t w = wrap_dim(op, d, a.dim());
    if (a.dim() == 0) continue;
    LOOM_CHECK(!mask[size_t(w)], op, ": dimension ", w, " appears more than once in ", dims);
    mask[size_t(w)] = true;
  }
  return mask;
}

// The output shape with keepdim (reduced dims become 1).
Shape keepdim_shape(const Tensor& a, const std::vector<bool>& mask) {
  Shape s = a.sizes();
  for (size_t d = 0; d < s.size(); ++d)
    if (mask[d]) s[d] = 1;
  return s;
}

Tensor sum_kernel(const Tensor& a, const std::vector<bool>& mask) {
  // Kept dims first, reduced dims last; then each output is one contiguous row.
  Shape order, kept_shape;
  int64_t inner = 1;
  for (size_t d = 0; d < mask.size(); ++d)
    if (!mask[d]) { order.push_back(int64_t(d)); kept_shape.push_back(a.sizes()[d]); }
  for (size_t d = 0; d < mask.size(); ++d)
    if (mask[d]) { order.push_back(int64_t(d)); inner *= a.sizes()[d]; }
  Tensor x = a.detach().permute(order).contiguous();
  int64_t outer = numel_of(kept_shape);
  DType out_dtype = a.is_floating_point() ? a.dtype() : kInt64;  // sums of bools and ints are int64
  Tensor out = empty(kept_shape, out_dtype);
  visit_dtype(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using Acc = std::conditional_t<std::is_same_v<T, float> || std::is_same_v<T, BFloat16>, double, int64_t>;
    const T* src = static_cast<const T*>(x.raw_data());
    visit_dtype(out_dtype, [&](auto out_tag) {
      using O = decltype(out_tag);
      O* dst = static_cast<O*>(out.raw_data());
      for (int64_t o = 0; o < outer; ++o) {
        Acc acc = 0;
        const T* row = src + o * inner;
        for (int64_t i = 0; i < inner; ++i) acc += convert<Acc>(row[i]);
        dst[o] = convert<O>(acc);
      }
    });
  });
  return out;
}

}  // namespace

Tensor sum(const Tensor& a, Shape dims, bool keepdim) {
  LOOM_CHECK(a.defined(), "sum: tensor is undefined");
  std::vector<bool> mask = reduced_mask("sum", a, dims);
  Shape kept = keepdim_shape(a, mask);
  Tensor out = sum_kernel(a, mask);
  if (keepdim) out = out.view(kept);
  Shape in_shape = a.sizes();
  record("sum", {a}, out, [in_shape, kept](const Tensor& g) {
    return Grads{g.reshape(kept).expand(in_shape)};
  });
  return out;
}

Tensor sum(const Tensor& a) { return sum(a, {}, false); }

Tensor mean(const Tensor& a, Shape dims, bool keepdim) {
  LOOM_CHECK(a.defined(), "mean: tensor is undefined");
  LOOM_CHECK(a.is_floating_point(), "mean: needs a floating point tensor, got ", dtype_name(a.dtype()),
             " (use .to(loom::kFloat32) first)");
  std::vector<bool> mask = reduced_mask("mean", a, dims);
  int64_t count = 1;
  for (size_t d = 0; d < mask.size(); ++d)
    if (mask[d]) count *= a.sizes()[d];
  // mean = sum / count; autograd differentiates through both.
  return div(sum(a, dims, keepdim), scalar_tensor(double(count), a.dtype()));
}

Tensor mean(const Tensor& a) { return mean(a, {}, false); }

Tensor sum_to(const Tensor& a, const Shape& shape) {
  if (a.sizes() == shape) return a;
  LOOM_CHECK(a.dim() >= int64_t(shape.size()), "sum_to: cannot sum shape ", a.sizes(), " down to ", shape);
  size_t lead = size_t(a.dim()) - shape.size();
  Shape dims;
  for (size_t d = 0; d < size_t(a.dim()); ++d) {
    if (d < lead) { dims.push_back(int64_t(d)); continue; }
    int64_t want = shape[d - lead];
    LOOM_CHECK(want == a.sizes()[d] || want == 1, "sum_to: cannot sum shape ", a.sizes(), " down to ", shape);
    if (want == 1 && a.sizes()[d] != 1) dims.push_back(int64_t(d));
  }
  if (dims.empty()) return a.reshape(shape);
  return sum(a, dims, true).reshape(shape);
}

Tensor Tensor::sum() const { return loom::sum(*this); }
Tensor Tensor::sum(Shape dims, bool keepdim) const { return loom::sum(*this, std::move(dims), keepdim); }
Tensor Tensor::mean() const { return loom::mean(*this); }
Tensor Tensor::mean(Shape dims, bool keepdim) const { return loom::mean(*this, std::move(dims), keepdim); }

}  // namespace loom
