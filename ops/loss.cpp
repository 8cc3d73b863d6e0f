// Losses, forward and backward side by side.
//
// cross_entropy, fused with log_softmax, for one row x (C logits, the class
// dim moved last) with target t and label smoothing ε:
//
//   lse  = log Σ_c exp(x_c)                       (saved per row for the backward)
//   loss = (1-ε)(lse - x_t) + ε mean_c (lse - x_c)  =  lse - (1-ε) x_t - ε mean_c x_c
//   dx_c = s * (softmax(x)_c - (1-ε)[c = t] - ε/C),   softmax(x)_c = exp(x_c - lse)
//
// Rows whose target is ignore_index have loss 0 and dx = 0. The incoming
// gradient per row is s = g_row ("none"), g ("sum") or g / counted ("mean",
// counted = rows not ignored; 0 / 0 = nan when every row is ignored, as in
// PyTorch). The backward recomputes the softmax from lse in one pass per row.
//
// mse_loss, with input a and target b broadcast to each other (N elements):
//
//   loss = reduce((a - b)²)     da = 2 (a - b) * g / N  ("mean"; no / N for "sum" and "none")
//                               db = -da   (both summed back to their own shapes by autograd)
#include <utility>

#include <loom/core/autograd.h>
#include <loom/core/parallel.h>
#include <loom/ops/elementwise.h>
#include <loom/ops/kernels/kernels.h>
#include <loom/ops/loss.h>
#include <loom/ops/reduce.h>

namespace loom {

namespace {
void check_reduction(const char* op, const std::string& reduction) {
  LOOM_CHECK(reduction == "mean" || reduction == "sum" || reduction == "none", op,
             ": reduction must be 'mean', 'sum' or 'none', got '", reduction, "'");
}
}  // namespace

Tensor cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index, double label_smoothing,
                     const std::string& reduction) {
  const char* op = "cross_entropy";
  LOOM_CHECK(logits.defined() && target.defined(), op, ": tensor is undefined");
  LOOM_CHECK(logits.dtype() == kFloat32, op, ": logits must be float32, got ", dtype_name(logits.dtype()));
  LOOM_CHECK(target.dtype() == kInt64, op, ": target must be int64 class indices, got ", dtype_name(target.dtype()));
  LOOM_CHECK(label_smoothing >= 0 && label_smoothing <= 1, op, ": label_smoothing must be in [0, 1], got ",
             label_smoothing);
  check_reduction(op, reduction);
  LOOM_CHECK(logits.dim() >= 1, op, ": logits must have a class dimension, got shape ", logits.sizes());
  // The target's shape is the logits' without the class dim (dim 1, or dim 0 for 1-D logits).
  const int64_t class_dim = logits.dim() == 1 ? 0 : 1;
  Shape target_shape = logits.sizes();
  target_shape.erase(target_shape.begin() + class_dim);
  LOOM_CHECK(target.sizes() == target_shape, op, ": target of shape ", target.sizes(), " does not match logits of shape ",
             logits.sizes(), " (expected target shape ", target_shape, ")");

  const int64_t C = logits.size(class_dim), rows = numel_of(target_shape);
  Tensor x, t;
  {
    NoGradGuard no_grad;  // the copies are not part of the graph
    x = logits.movedim(class_dim, -1).contiguous();  // [rows..., C]: one row per target
    t = target.clone();  // our own copy: a later in-place write to target cannot reach the backward
  }
  const float* xp = x.data_ptr<float>();
  const int64_t* tp = t.data_ptr<int64_t>();
  int64_t counted = 0;
  for (int64_t r = 0; r < rows; ++r) {
    LOOM_CHECK(tp[r] == ignore_index || (tp[r] >= 0 && tp[r] < C), op, ": target ", tp[r], " is out of bounds for ",
               C, " classes (at flat index ", r, ")");
    counted += tp[r] != ignore_index;
  }

  const float eps = float(label_smoothing);
  Tensor lse = empty({rows}), losses = empty(target_shape);
  float *lp = lse.data_ptr<float>(), *out = losses.data_ptr<float>();
  const kernels::Table& k = kernels::table();
  parallel_for(rows, 8 * C, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = xp + r * C;
      lp[r] = k.logsumexp(row, C);
      if (tp[r] == ignore_index) { out[r] = 0; continue; }
      const float mean_x = eps > 0 ? float(k.sum(row, C) / double(C)) : 0.0f;
      out[r] = lp[r] - (1 - eps) * row[tp[r]] - eps * mean_x;
    }
  });

  Tensor result;
  if (reduction == "none") {
    result = losses;
  } else {
    double total = 0;
    for (int64_t r = 0; r < rows; ++r) total += out[r];  // in row order: the same for any thread count
    result = scalar_tensor(reduction == "sum" ? total : total / double(counted));
  }

  auto backward = [x, t, lse, C, rows, counted, eps, ignore_index, reduction, class_dim,
                   logits_shape = logits.sizes()](const Tensor& g_in) {
    const kernels::Table& kb = kernels::table();
    Tensor g = g_in.contiguous();
    Tensor dx = empty(x.sizes());
    const float *xp = x.data_ptr<float>(), *lp = lse.data_ptr<float>(), *gp = g.data_ptr<float>();
    const int64_t* tp = t.data_ptr<int64_t>();
    float* dp = dx.data_ptr<float>();
    const float denom = reduction == "mean" ? float(counted) : 1.0f;
    parallel_for(rows, 8 * C, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        float* drow = dp + r * C;
        if (tp[r] == ignore_index) {
          for (int64_t c = 0; c < C; ++c) drow[c] = 0;
          continue;
        }
        const float s = (reduction == "none" ? gp[r] : gp[0]) / denom;
        kb.softmax_minus(xp + r * C, lp[r], s, eps / float(C), drow, C);  // s * (softmax - ε/C)
        drow[tp[r]] -= s * (1 - eps);
      }
    });
    // Back to the logits' layout: the class dim returns to its place.
    Shape moved = logits_shape;
    moved.erase(moved.begin() + class_dim);
    moved.push_back(C);
    return Grads{dx.view(moved).movedim(-1, class_dim)};
  };
  record(op, {logits}, result, std::move(backward));
  return result;
}

Tensor mse_loss(const Tensor& input, const Tensor& target, const std::string& reduction) {
  const char* op = "mse_loss";
  LOOM_CHECK(input.defined() && target.defined(), op, ": tensor is undefined");
  LOOM_CHECK(input.dtype() == kFloat32 && target.dtype() == kFloat32, op, ": expects float32 input and target, got ",
             dtype_name(input.dtype()), " and ", dtype_name(target.dtype()));
  check_reduction(op, reduction);
  broadcast_shapes(op, input.sizes(), target.sizes());  // the error names mse_loss

  Tensor d, out;
  {
    NoGradGuard no_grad;
    d = sub(input, target);  // broadcast as PyTorch does
    Tensor sq = mul(d, d);
    out = reduction == "none" ? sq : reduction == "sum" ? sum(sq) : mean(sq);
  }
  const double scale = reduction == "mean" ? 2.0 / double(d.numel()) : 2.0;
  record(op, {input, target}, out, [d, scale](const Tensor& g) {
    Tensor da = mul(d, mul(g, scalar_tensor(scale)));  // g is 0-d unless reduction is "none"
    return Grads{da, neg(da)};
  });
  return out;
}

}  // namespace loom
