// Reductions, forward and backward side by side.
//
//   sum       out = Σ a                    da = g broadcast back over the summed dims
//   mean      out = Σ a / N                da = g / N, broadcast back
//   var       out = Σ (a - mean)² / (N - c)   (composed of the ops above)
//   max/min   out = a[argmax]              da = g at the chosen index, 0 elsewhere
//   logsumexp out = m + log Σ exp(a - m)   (composed; m = max, held constant)
//   cumsum    out_i = Σ_{j<=i} a_j         da_i = Σ_{j>=i} g_j
//
// Layout: the summed dims are moved to the end (a view) and made contiguous
// only if they are not already, so each output element is one contiguous
// row, summed by the SIMD kernel (ops/kernels) in a fixed order. When the
// summed dims are the leading ones (a bias gradient: sum over batch rows),
// rows are added into the output instead, with no copy. Either way the
// result does not depend on the thread count.
#include <algorithm>
#include <cmath>

#include <loom/core/autograd.h>
#include <loom/core/parallel.h>
#include <loom/ops/kernels/kernels.h>
#include <loom/ops/ops.h>

namespace loom {

namespace {

// Which dims are reduced (all when `dims` is empty).
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

// a as [outer, inner] rows: kept dims first, reduced dims last, contiguous.
struct Rows {
  Tensor data;
  Shape kept_shape;
  int64_t outer = 1, inner = 1;
};
Rows to_rows(const Tensor& a, const std::vector<bool>& mask) {
  Rows r;
  Shape order;
  for (size_t d = 0; d < mask.size(); ++d)
    if (!mask[d]) { order.push_back(int64_t(d)); r.kept_shape.push_back(a.sizes()[d]); r.outer *= a.sizes()[d]; }
  for (size_t d = 0; d < mask.size(); ++d)
    if (mask[d]) { order.push_back(int64_t(d)); r.inner *= a.sizes()[d]; }
  r.data = a.detach().permute(order).contiguous();
  return r;
}

// Column sums of a contiguous [rows, cols] float block into out[cols]: rows
// are added one after another, threads split the columns.
void sum_leading_rows(const float* x, int64_t rows, int64_t cols, float* out) {
  const kernels::Table& k = kernels::table();
  parallel_for(cols, rows, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) out[c] = 0;
    for (int64_t r = 0; r < rows; ++r) k.binary(kernels::BinaryOp::Add, out + c0, 1, x + r * cols + c0, 1, out + c0, c1 - c0);
  });
}

// Sum of each of `outer` contiguous rows of `inner` floats.
void sum_rows(const float* x, int64_t outer, int64_t inner, float* out) {
  const kernels::Table& k = kernels::table();
  if (outer > 1 || inner < kParallelGrain) {
    parallel_for(outer, inner, [&](int64_t o0, int64_t o1) {
      for (int64_t o = o0; o < o1; ++o) out[o] = float(k.sum(x + o * inner, inner));
    });
    return;
  }
  // One long row: fixed-size blocks in parallel, their sums added in order.
  const int64_t block = 1 << 16, blocks = (inner + block - 1) / block;
  std::vector<double> partial(static_cast<size_t>(blocks));
  parallel_for(blocks, block, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) partial[size_t(b)] = k.sum(x + b * block, std::min(block, inner - b * block));
  });
  double total = 0;
  for (double p : partial) total += p;
  out[0] = float(total);
}

Tensor sum_kernel(const Tensor& a, const std::vector<bool>& mask) {
  // Leading dims reduced, the rest contiguous: add rows, no copy.
  size_t lead = 0;
  while (lead < mask.size() && mask[lead]) ++lead;
  bool rest_kept = std::none_of(mask.begin() + long(lead), mask.end(), [](bool m) { return m; });
  if (a.dtype() == kFloat32 && a.is_contiguous() && lead > 0 && rest_kept && lead < mask.size()) {
    Shape kept(a.sizes().begin() + long(lead), a.sizes().end());
    Tensor out = empty(kept, kFloat32);
    int64_t cols = numel_of(kept);
    sum_leading_rows(a.data_ptr<float>(), a.numel() / cols, cols, out.data_ptr<float>());
    return out;
  }
  Rows r = to_rows(a, mask);
  if (a.dtype() == kFloat32) {
    Tensor out = empty(r.kept_shape, kFloat32);
    sum_rows(r.data.data_ptr<float>(), r.outer, r.inner, out.data_ptr<float>());
    return out;
  }
  // int64 and bool sum to int64 (plain loop).
  LOOM_CHECK(a.dtype() == kInt64 || a.dtype() == kBool, "sum: not implemented for dtype ", dtype_name(a.dtype()));
  Tensor out = empty(r.kept_shape, kInt64);
  int64_t* dst = out.data_ptr<int64_t>();
  visit_dtype(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, int64_t> || std::is_same_v<T, bool>) {
      const T* src = static_cast<const T*>(r.data.raw_data());
      for (int64_t o = 0; o < r.outer; ++o) {
        int64_t acc = 0;
        for (int64_t i = 0; i < r.inner; ++i) acc += int64_t(src[o * r.inner + i]);
        dst[o] = acc;
      }
    }
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
  record("sum", {a}, out, [in_shape, kept](const Tensor& g) { return Grads{g.reshape(kept).expand(in_shape)}; });
  return out;
}

Tensor sum(const Tensor& a) { return sum(a, {}, false); }

namespace {
int64_t reduced_count(const Tensor& a, const std::vector<bool>& mask) {
  int64_t count = 1;
  for (size_t d = 0; d < mask.size(); ++d)
    if (mask[d]) count *= a.sizes()[d];
  return count;
}
void check_float(const char* op, const Tensor& a) {
  LOOM_CHECK(a.defined(), op, ": tensor is undefined");
  LOOM_CHECK(a.dtype() == kFloat32, op, ": needs a floating point tensor, got ", dtype_name(a.dtype()),
             " (use .to(loom::kFloat32) first)");
}
}  // namespace

Tensor mean(const Tensor& a, Shape dims, bool keepdim) {
  check_float("mean", a);
  int64_t count = reduced_count(a, reduced_mask("mean", a, dims));
  // mean = sum / count; autograd differentiates through both.
  return div(sum(a, dims, keepdim), scalar_tensor(double(count)));
}

Tensor mean(const Tensor& a) { return mean(a, {}, false); }

Tensor var(const Tensor& a, Shape dims, int64_t correction, bool keepdim) {
  check_float("var", a);
  int64_t count = reduced_count(a, reduced_mask("var", a, dims));
  Tensor centered = sub(a, mean(a, dims, true));
  // As torch.var: a denominator <= 0 gives inf or nan, not an error.
  return div(sum(mul(centered, centered), dims, keepdim), scalar_tensor(double(count - correction)));
}

// ---- max / min --------------------------------------------------------------------------
namespace {
// Values and first indices of the extreme along `dim`. NaN counts as the
// extreme (it propagates, as in PyTorch).
std::tuple<Tensor, Tensor> extreme(const char* op, const Tensor& a, int64_t dim, bool keepdim, bool want_max) {
  check_float(op, a);
  int64_t d = wrap_dim(op, dim, a.dim());
  std::vector<bool> mask(size_t(a.dim()), false);
  if (a.dim() > 0) mask[size_t(d)] = true;
  LOOM_CHECK(a.dim() == 0 || a.sizes()[size_t(d)] > 0, op, ": cannot reduce over dimension ", d,
             " of size 0 (shape ", a.sizes(), ")");
  Rows r = to_rows(a, mask);
  Tensor values = empty(r.kept_shape, kFloat32), indices = empty(r.kept_shape, kInt64);
  const float* x = r.data.data_ptr<float>();
  float* v = values.data_ptr<float>();
  int64_t* idx = indices.data_ptr<int64_t>();
  parallel_for(r.outer, r.inner, [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      const float* row = x + o * r.inner;
      int64_t best = 0;
      for (int64_t i = 1; i < r.inner && !std::isnan(row[best]); ++i)
        if (std::isnan(row[i]) || (want_max ? row[i] > row[best] : row[i] < row[best])) best = i;
      v[o] = row[best];
      idx[o] = best;
    }
  });
  Shape kept = keepdim_shape(a, mask);
  if (keepdim) {
    values = values.view(kept);
    indices = indices.view(kept);
  }
  // Backward: g goes to the chosen position of each row, zero elsewhere.
  Shape in_shape = a.sizes();
  Tensor saved_idx = indices.reshape({-1});
  record(op, {a}, values, [in_shape, saved_idx, d](const Tensor& g) {
    const int64_t n = in_shape.empty() ? 1 : in_shape[size_t(d)], outer = saved_idx.numel();
    Tensor grid = zeros({outer, n});  // rows in the order of the outputs
    Tensor gc = g.contiguous();
    const float* gp = gc.data_ptr<float>();
    const int64_t* ip = saved_idx.data_ptr<int64_t>();
    float* out = grid.data_ptr<float>();
    for (int64_t o = 0; o < outer; ++o) out[o * n + ip[o]] = gp[o];
    if (in_shape.empty()) return Grads{grid.reshape({})};
    Shape moved = in_shape;  // [kept..., n]: put dim d back in its place
    moved.erase(moved.begin() + d);
    moved.push_back(n);
    return Grads{grid.view(moved).movedim(-1, d)};
  });
  return {values, indices};
}
}  // namespace

std::tuple<Tensor, Tensor> max(const Tensor& a, int64_t dim, bool keepdim) { return extreme("max", a, dim, keepdim, true); }
std::tuple<Tensor, Tensor> min(const Tensor& a, int64_t dim, bool keepdim) { return extreme("min", a, dim, keepdim, false); }
Tensor max(const Tensor& a) { return std::get<0>(extreme("max", a.reshape({-1}), 0, false, true)); }
Tensor min(const Tensor& a) { return std::get<0>(extreme("min", a.reshape({-1}), 0, false, false)); }
Tensor argmax(const Tensor& a, int64_t dim, bool keepdim) {
  NoGradGuard no_grad;
  return std::get<1>(extreme("argmax", a, dim, keepdim, true));
}
Tensor argmin(const Tensor& a, int64_t dim, bool keepdim) {
  NoGradGuard no_grad;
  return std::get<1>(extreme("argmin", a, dim, keepdim, false));
}

Tensor logsumexp(const Tensor& a, Shape dims, bool keepdim) {
  check_float("logsumexp", a);
  std::vector<bool> mask = reduced_mask("logsumexp", a, dims);
  // m = the max over the reduced dims, a constant for autograd (the
  // gradient of the result is softmax(a) with or without it).
  Tensor m;
  {
    NoGradGuard no_grad;
    m = a.detach();
    for (size_t d = 0; d < mask.size(); ++d)
      if (mask[d]) m = std::get<0>(max(m, int64_t(d), true));
    m = masked_fill(m, eq(abs(m), scalar_tensor(INFINITY)), 0.0);  // all -inf rows stay -inf, not nan
  }
  Tensor out = add(log(sum(exp(sub(a, m)), dims, true)), m);
  if (keepdim) return out;
  Shape squeezed;
  for (size_t d = 0; d < mask.size(); ++d)
    if (!mask[d]) squeezed.push_back(a.sizes()[d]);
  return out.reshape(squeezed);
}

// ---- cumsum ------------------------------------------------------------------------------
namespace {
// Running sums along the last dim of contiguous rows; reverse = from the end.
Tensor scan_rows(const Tensor& a, int64_t d, bool reverse) {
  Tensor x = a.detach().movedim(d, -1).contiguous();
  int64_t n = a.dim() == 0 ? 1 : a.sizes()[size_t(d)];
  int64_t outer = n == 0 ? 0 : x.numel() / n;
  Tensor y = empty(x.sizes(), kFloat32);
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  parallel_for(outer, n, [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      float acc = 0;
      for (int64_t j = 0; j < n; ++j) {
        int64_t i = reverse ? n - 1 - j : j;
        acc += xp[o * n + i];
        yp[o * n + i] = acc;
      }
    }
  });
  return a.dim() == 0 ? y : y.movedim(-1, d);
}
}  // namespace

Tensor cumsum(const Tensor& a, int64_t dim) {
  check_float("cumsum", a);
  int64_t d = wrap_dim("cumsum", dim, a.dim());
  Tensor out = scan_rows(a, d, false).contiguous();
  record("cumsum", {a}, out, [d](const Tensor& g) { return Grads{scan_rows(g, d, true)}; });
  return out;
}

Tensor sum_to(const Tensor& a, const Shape& shape) {
  if (a.sizes() == shape) return a;
  LOOM_CHECK(a.dim() >= int64_t(shape.size()), "sum_to: cannot sum shape ", a.sizes(), " down to ", shape);
  size_t lead = size_t(a.dim()) - shape.size();
  Shape dims;
  for (size_t d = 0; d < size_t(a.dim()); ++d) {
    if (d < lead) {  // a leading dim of size 1 needs no sum: the reshape drops it
      if (a.sizes()[d] != 1) dims.push_back(int64_t(d));
      continue;
    }
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
