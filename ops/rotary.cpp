// rotary: one pass forward and one backward, instead of the slices, stack,
// products and cat of the formula (which allocate five temporaries).
//
//   out_2k   = x_2k cos_2k − x_2k+1 sin_2k        dx_2k   = g_2k cos_2k + g_2k+1 sin_2k+1
//   out_2k+1 = x_2k+1 cos_2k+1 + x_2k sin_2k+1    dx_2k+1 = g_2k+1 cos_2k+1 − g_2k sin_2k
//   out_c    = x_c (c >= rot)                      dx_c    = g_c
#include <loom/core/autograd.h>
#include <loom/core/parallel.h>
#include <loom/ops/rotary.h>

namespace loom {

namespace {
struct Layout {
  int64_t rows = 0, n = 0, d = 0, rot = 0;  // rows = every (..., position) of x
  int64_t rows_per_angle_batch = 0;          // rows sharing one [n, rot] block of cos and sin
};

// Where the rows of the input start: it is read through its strides (the
// last dim contiguous), so heads split off a linear's output, a transposed
// view, need no copy first. Up to 4 leading dims; rows step like an odometer.
struct Rows {
  int64_t dims = 0, size[4] = {1, 1, 1, 1}, stride[4] = {0, 0, 0, 0};
  static bool fits(const Tensor& t) { return t.stride(-1) == 1 && t.dim() <= 5; }
  explicit Rows(const Tensor& t) : dims(t.dim() - 1) {
    for (int64_t k = 0; k < dims; ++k) size[k] = t.size(k), stride[k] = t.stride(k);
  }
};

// The cos/sin row for x's row r: the same position, in its batch's block.
inline int64_t angle_row(const Layout& l, int64_t r) { return r / l.rows_per_angle_batch * l.n + r % l.n; }

// forward (sign = +1) and backward (sign = −1, with cos and sin read at the
// partner's index as the formula above says).
void rotate(const Layout& l, const Rows& rows, const float* x, const float* cs, const float* sn, float* y,
            bool backward) {
  parallel_for(l.rows, l.d, [&](int64_t r0, int64_t r1) {
    int64_t at[4] = {0, 0, 0, 0}, off = 0;  // row r0's index and offset
    for (int64_t k = rows.dims - 1, rest = r0; k >= 0; --k)
      at[k] = rest % rows.size[k], off += at[k] * rows.stride[k], rest /= rows.size[k];
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + off;
      for (int64_t k = rows.dims - 1; k >= 0; --k) {  // the next row
        off += rows.stride[k];
        if (++at[k] < rows.size[k]) break;
        off -= rows.stride[k] * rows.size[k], at[k] = 0;
      }
      const float* c = cs + angle_row(l, r) * l.rot;
      const float* s = sn + angle_row(l, r) * l.rot;
      float* yr = y + r * l.d;
      for (int64_t k = 0; k < l.rot; k += 2) {
        const float a = xr[k], b = xr[k + 1];
        if (!backward) {
          yr[k] = a * c[k] - b * s[k];
          yr[k + 1] = b * c[k + 1] + a * s[k + 1];
        } else {
          yr[k] = a * c[k] + b * s[k + 1];
          yr[k + 1] = b * c[k + 1] - a * s[k];
        }
      }
      for (int64_t k = l.rot; k < l.d; ++k) yr[k] = xr[k];
    }
  });
}
}  // namespace

Tensor rotary(const Tensor& x_in, const Tensor& cos_in, const Tensor& sin_in) {
  LOOM_CHECK(x_in.defined() && cos_in.defined() && sin_in.defined(), "rotary: x, cos and sin must be defined");
  LOOM_CHECK(x_in.dtype() == kFloat32 && cos_in.dtype() == kFloat32 && sin_in.dtype() == kFloat32,
             "rotary: x, cos and sin must be float32");
  LOOM_CHECK(x_in.dim() >= 2 && (cos_in.dim() == 2 || cos_in.dim() == 3) && sin_in.sizes() == cos_in.sizes(),
             "rotary: needs x (..., n, d) and cos, sin (n, rot) or (b, n, rot), got ", x_in.sizes(), ", ",
             cos_in.sizes(), " and ", sin_in.sizes());
  Layout l;
  l.n = x_in.size(-2), l.d = x_in.size(-1), l.rot = cos_in.size(-1);
  l.rows = l.n == 0 || l.d == 0 ? 0 : x_in.numel() / l.d;
  const int64_t angle_batches = cos_in.dim() == 3 ? cos_in.size(0) : 1;
  LOOM_CHECK(l.rot % 2 == 0 && l.rot <= l.d && cos_in.size(-2) == l.n &&
                 (angle_batches == 1 || (x_in.dim() >= 3 && x_in.size(0) == angle_batches)),
             "rotary: cos ", cos_in.sizes(), " cannot rotate x ", x_in.sizes(),
             " (needs an even rot <= d, n positions and a batch of 1 or x's)");
  l.rows_per_angle_batch = std::max<int64_t>(1, l.rows / angle_batches);
  Tensor x = Rows::fits(x_in) ? x_in : x_in.contiguous(), cs = cos_in.detach().contiguous(),
         sn = sin_in.detach().contiguous();
  Tensor out = empty(x.sizes());
  if (l.rows > 0)
    rotate(l, Rows(x), x.data_ptr<float>(), cs.data_ptr<float>(), sn.data_ptr<float>(), out.data_ptr<float>(), false);
  record("rotary", {x_in}, out, [l, cs, sn](const Tensor& g_in) {
    Tensor g = Rows::fits(g_in) ? g_in : g_in.contiguous();
    Tensor dx = empty(g.sizes());
    if (l.rows > 0)
      rotate(l, Rows(g), g.data_ptr<float>(), cs.data_ptr<float>(), sn.data_ptr<float>(), dx.data_ptr<float>(), true);
    return Grads{dx};
  });
  return out;
}

}  // namespace loom
