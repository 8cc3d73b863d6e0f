// layer_norm and rms_norm, fused: one kernel call per row each way.
//
//   x̂ = (x - mean) * rstd,  rstd = 1 / sqrt(var + eps)       (rms_norm: mean = 0, var = mean(x²))
//   y = x̂ * w + b
//
//   dx = rstd * (ĝ - mean(ĝ) - x̂ * mean(ĝ x̂)),  ĝ = g * w    (rms_norm: no mean(ĝ) term)
//   dw = Σ_rows g * x̂
//   db = Σ_rows g
//
// The forward saves each row's mean and rstd, so the backward needs one
// pass over x and g per row and nothing of size rows × n besides dx.
// Rows run in parallel; dw and db are summed over rows in row order, with
// threads splitting the columns, so they are the same for any thread count.
#include <cfloat>

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
  LOOM_CHECK(x.dtype() == kFloat32, op, ": expects a float32 tensor, got ", dtype_name(x.dtype()));
  const int64_t nd = int64_t(normalized_shape.size());
  LOOM_CHECK(nd >= 1 && nd <= x.dim() && Shape(x.sizes().end() - nd, x.sizes().end()) == normalized_shape, op,
             ": normalized_shape ", normalized_shape, " does not match the trailing dims of input shape ", x.sizes());
  check_param(op, "weight", weight, normalized_shape);
  check_param(op, "bias", bias, normalized_shape);
  const int64_t n = numel_of(normalized_shape), rows = n == 0 ? 0 : x.numel() / n;

  Tensor xc = x.contiguous(), w = weight.defined() ? weight.contiguous() : weight,
         b = bias.defined() ? bias.contiguous() : bias;
  Tensor y = empty(x.sizes()), mean = empty({rows}), rstd = empty({rows});
  {
    const float *xp = xc.data_ptr<float>(), *wp = w.defined() ? w.data_ptr<float>() : nullptr,
                *bp = b.defined() ? b.data_ptr<float>() : nullptr;
    float *yp = y.data_ptr<float>(), *mp = mean.data_ptr<float>(), *rp = rstd.data_ptr<float>();
    const kernels::Table& k = kernels::table();
    parallel_for(rows, 4 * n, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) k.norm(xp + r * n, wp, bp, yp + r * n, n, float(eps), rms, mp + r, rp + r);
    });
  }

  record(op, {x, weight, bias}, y, [xc, w, rows, n, mean, rstd, rms, x, weight, bias](const Tensor& g_in) {
    const kernels::Table& k = kernels::table();
    Tensor g = g_in.contiguous();
    const float *xp = xc.data_ptr<float>(), *gp = g.data_ptr<float>(), *wp = w.defined() ? w.data_ptr<float>() : nullptr;
    const float *mp = mean.data_ptr<float>(), *rp = rstd.data_ptr<float>();
    Tensor dx, dw, db;
    if (x.requires_grad()) {
      dx = empty(xc.sizes());
      float* dp = dx.data_ptr<float>();
      parallel_for(rows, 4 * n, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) k.norm_backward(xp + r * n, wp, gp + r * n, mp[r], rp[r], dp + r * n, n, rms);
      });
    }
    const bool want_w = weight.defined() && weight.requires_grad(), want_b = bias.defined() && bias.requires_grad();
    if (want_w || want_b) {
      Tensor dw_all = zeros({n}), db_all = zeros({n});
      float *dwp = dw_all.data_ptr<float>(), *dbp = want_b ? db_all.data_ptr<float>() : nullptr;
      parallel_for(n, 4 * rows, [&](int64_t c0, int64_t c1) {  // threads split columns; rows in order
        for (int64_t r = 0; r < rows; ++r)
          k.norm_param_grads(xp + r * n + c0, gp + r * n + c0, mp[r], rp[r], dwp + c0, dbp ? dbp + c0 : nullptr,
                             c1 - c0);
      });
      if (want_w) dw = dw_all.view(weight.sizes());
      if (want_b) db = db_all.view(bias.sizes());
    }
    return Grads{dx, dw, db};
  });
  return y;
}

}  // namespace

Tensor layer_norm(const Tensor& x, Shape normalized_shape, const Tensor& weight, const Tensor& bias, double eps) {
  return norm_impl("layer_norm", x, normalized_shape, weight, bias, eps, false);
}

Tensor rms_norm(const Tensor& x, Shape normalized_shape, const Tensor& weight, std::optional<double> eps) {
  return norm_impl("rms_norm", x, normalized_shape, weight, Tensor(), eps.value_or(FLT_EPSILON), true);
}

}  // namespace loom
