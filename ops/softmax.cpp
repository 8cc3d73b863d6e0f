// softmax and log_softmax along one dim.
//
//   softmax      y = exp(x - m) / Σ exp(x - m)     dx = y * (g - Σ g y)
//   log_softmax  y = x - m - log Σ exp(x - m)      dx = g - exp(y) * Σ g
//
// (m is the row's max: subtracting it changes nothing mathematically and
// keeps exp from overflowing.) The dim is moved last so every row is
// contiguous; when it already is last (the usual case) nothing is copied.
// Rows run in parallel, each through one SIMD kernel call.
#include <loom/core/autograd.h>
#include <loom/core/parallel.h>
#include <loom/ops/kernels/kernels.h>
#include <loom/ops/softmax.h>

namespace loom {

namespace {

// Applies f(row_in..., row_out, n) to every row along dim d; returns the
// output in x's layout (dim d back in place).
template <typename F>
Tensor rowwise(const Tensor& x, const Tensor& other, int64_t d, F f) {
  Tensor xr = x.movedim(d, -1).contiguous();
  Tensor orow = other.defined() ? other.movedim(d, -1).contiguous() : Tensor();
  Tensor y = empty(xr.sizes(), kFloat32);
  const int64_t n = x.dim() == 0 ? 1 : x.size(d), rows = n == 0 ? 0 : xr.numel() / n;
  const float* xp = xr.data_ptr<float>();
  const float* op = orow.defined() ? orow.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  parallel_for(rows, 8 * n, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) f(xp + r * n, op ? op + r * n : nullptr, yp + r * n, n);
  });
  return x.dim() == 0 ? y : y.movedim(-1, d);
}

Tensor softmax_impl(const char* name, const Tensor& x, int64_t dim, bool log) {
  LOOM_CHECK(x.defined(), name, ": tensor is undefined");
  LOOM_CHECK(x.dtype() == kFloat32, name, ": expects a float32 tensor, got ", dtype_name(x.dtype()), " (shape ",
             x.sizes(), ")");
  const int64_t d = wrap_dim(name, dim, x.dim());
  const kernels::Table& k = kernels::table();
  Tensor y;
  {
    NoGradGuard no_grad;  // the views inside rowwise are not part of the graph
    y = rowwise(x, Tensor(), d, [&](const float* xi, const float*, float* yi, int64_t n) { k.softmax(xi, yi, n, log); });
  }
  Tensor saved_y = y.detach();
  record(name, {x}, y, [saved_y, d, log](const Tensor& g) {
    const kernels::Table& kb = kernels::table();
    return Grads{rowwise(saved_y, g, d, [&](const float* yi, const float* gi, float* dx, int64_t n) {
      kb.softmax_backward(yi, gi, dx, n, log);
    })};
  });
  return y;
}

}  // namespace

Tensor softmax(const Tensor& x, int64_t dim) { return softmax_impl("softmax", x, dim, false); }
Tensor log_softmax(const Tensor& x, int64_t dim) { return softmax_impl("log_softmax", x, dim, true); }

}  // namespace loom
