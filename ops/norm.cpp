// layer_norm and rms_norm, fused: one kernel call per row each way.
//
// Over each row of n = numel(normalized_shape) elements, with weight w and bias b:
//
//   layer_norm  x̂ = (x - mean) * rstd,  rstd = 1 / sqrt(var + eps)    var = mean((x - mean)²), biased
//   rms_norm    x̂ = x * rstd,           rstd = 1 / sqrt(mean(x²) + eps)
//               y = x̂ * w + b            (w = 1 and b = 0 when absent; rms_norm has no b)
//
//   layer_norm  dx = rstd * (ĝ - mean(ĝ) - x̂ * mean(ĝ x̂)),   ĝ = g * w
//   rms_norm    dx = rstd * (ĝ - x̂ * mean(ĝ x̂))
//   both        dw = Σ_rows g * x̂,   db = Σ_rows g
//
// (rms_norm: d rstd / dx_i = -rstd³ x_i / n, so dx_i = rstd ĝ_i - x_i rstd³ Σ_j ĝ_j x_j / n,
// which is the line above. layer_norm adds the mean's path, -mean(ĝ).)
//
// Row statistics (kernels_impl.h, `norm`): two passes, first the mean (the
// fixed-order `sum` kernel, in double over blocks), then Σ (x - mean)² in
// float SIMD lanes, reduced at the end; never E[x²] - E[x]², which cancels
// catastrophically when |mean| >> std. The forward saves each row's mean and
// rstd (float), so the backward is one more pass over x and g per row.
//
// Rows run in parallel. dw and db are sums over rows: threads split the
// columns, in blocks of 16 (a multiple of every SIMD width, so no column's
// arithmetic depends on where a thread's share starts), and each column adds
// its rows in row order. The results are the same for any thread count.
#include <algorithm>
#include <cfloat>
#include <utility>

#include <loom/core/autocast.h>
#include <loom/core/autograd.h>
#include <loom/core/parallel.h>
#include <loom/ops/kernels/kernels.h>
#include <loom/ops/norm.h>

namespace loom {

namespace {

void check_param(const char* op, const char* what, const Tensor& p, const Shape& normalized_shape) {
  if (!p.defined()) return;
  LOOM_CHECK(p.dtype() == kFloat32 && p.sizes() == normalized_shape, op, ": ", what, " must be float32 of shape ",
             normalized_shape, ", got ", dtype_name(p.dtype()), " ", p.sizes());
}

Tensor norm_impl(const char* op, const Tensor& x, const Shape& normalized_shape, const Tensor& weight,
                 const Tensor& bias, double eps, bool rms) {
  LOOM_CHECK(x.defined(), op, ": tensor is undefined");
  LOOM_CHECK(x.dtype() == kFloat32, op, ": expects a float32 tensor, got ", dtype_name(x.dtype()), " (shape ",
             x.sizes(), ")");
  const int64_t nd = int64_t(normalized_shape.size());
  LOOM_CHECK(nd >= 1, op, ": normalized_shape must name at least one dim, got []");
  LOOM_CHECK(nd <= x.dim() && Shape(x.sizes().end() - nd, x.sizes().end()) == normalized_shape, op,
             ": normalized_shape ", normalized_shape, " does not match the trailing dims of input shape ", x.sizes());
  check_param(op, "weight", weight, normalized_shape);
  check_param(op, "bias", bias, normalized_shape);
  const int64_t n = numel_of(normalized_shape), rows = n == 0 ? 0 : x.numel() / n;

  Tensor xc, w, b;
  {
    NoGradGuard no_grad;  // the copies are not part of the graph
    xc = x.contiguous();
    if (weight.defined()) w = weight.contiguous();
    if (bias.defined()) b = bias.contiguous();
  }
  Tensor y = empty(x.sizes()), mean = empty({rows}), rstd = empty({rows});
  const Tensor twin = make_bf16_twin(y);  // under autocast: y rounded for the linears it feeds, row by row
  {
    const float *xp = xc.data_ptr<float>(), *wp = w.defined() ? w.data_ptr<float>() : nullptr,
                *bp = b.defined() ? b.data_ptr<float>() : nullptr;
    float *yp = y.data_ptr<float>(), *mp = mean.data_ptr<float>(), *rp = rstd.data_ptr<float>();
    uint16_t* tp = twin.defined() ? static_cast<uint16_t*>(twin.raw_data()) : nullptr;
    const kernels::Table& k = kernels::table();
    parallel_for(rows, 4 * n, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        k.norm(xp + r * n, wp, bp, yp + r * n, n, float(eps), rms, mp + r, rp + r);
        if (tp) k.to_bf16_dot(yp + r * n, tp + r * n, n);
      }
    });
  }

  const bool want_x = x.requires_grad(), want_w = weight.defined() && weight.requires_grad(),
             want_b = bias.defined() && bias.requires_grad();
  auto backward = [xc, w, mean, rstd, rows, n, rms, normalized_shape, want_x, want_w, want_b](const Tensor& g_in) {
    const kernels::Table& k = kernels::table();
    Tensor g = g_in.contiguous();
    const float *xp = xc.data_ptr<float>(), *gp = g.data_ptr<float>(), *wp = w.defined() ? w.data_ptr<float>() : nullptr;
    const float *mp = mean.data_ptr<float>(), *rp = rstd.data_ptr<float>();
    Tensor dx, dw, db;
    if (want_x) {  // dx = rstd * (ĝ - mean(ĝ) - x̂ * mean(ĝ x̂)), one row per call
      dx = empty(xc.sizes());
      float* dp = dx.data_ptr<float>();
      parallel_for(rows, 4 * n, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) k.norm_backward(xp + r * n, wp, gp + r * n, mp[r], rp[r], dp + r * n, n, rms);
      });
    }
    if (want_w || want_b) {  // dw = Σ_rows g * x̂, db = Σ_rows g
      constexpr int64_t kCols = 16;
      Tensor dw_all = zeros(normalized_shape), db_all = want_b ? zeros(normalized_shape) : Tensor();
      float *dwp = dw_all.data_ptr<float>(), *dbp = want_b ? db_all.data_ptr<float>() : nullptr;
      parallel_for((n + kCols - 1) / kCols, kCols * 4 * rows, [&](int64_t c0, int64_t c1) {
        const int64_t begin = c0 * kCols, count = std::min(n, c1 * kCols) - begin;
        for (int64_t r = 0; r < rows; ++r)  // rows in order
          k.norm_param_grads(xp + r * n + begin, gp + r * n + begin, mp[r], rp[r], dwp + begin,
                             dbp ? dbp + begin : nullptr, count);
      });
      if (want_w) dw = dw_all;
      if (want_b) db = db_all;
    }
    return Grads{dx, dw, db};
  };
  record(op, {x, weight, bias}, y, std::move(backward));
  return y;
}

}  // namespace

Tensor layer_norm(const Tensor& x, Shape normalized_shape, const Tensor& weight, const Tensor& bias, double eps) {
  return norm_impl("layer_norm", x, normalized_shape, weight, bias, eps, false);
}

Tensor rms_norm(const Tensor& x, Shape normalized_shape, const Tensor& weight, std::optional<double> eps) {
  // PyTorch's default when eps is None: the machine epsilon of the input's dtype (float32).
  return norm_impl("rms_norm", x, normalized_shape, weight, Tensor(), eps.value_or(FLT_EPSILON), true);
}

}  // namespace loom
