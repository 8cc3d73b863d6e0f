// Losses.
//
// cross_entropy, fused with log_softmax, for one row x (C logits) with
// target t and label smoothing ε:
//   lse  = log Σ_c exp(x_c)
//   loss = (1-ε)(lse - x_t) + ε (lse - mean_c x_c)  =  lse - (1-ε) x_t - ε mean_c x_c
//   dx_c = g_row * (softmax(x)_c - (1-ε)[c = t] - ε/C),  softmax(x)_c = exp(x_c - lse)
// where g_row is the loss gradient divided by the number of counted rows
// for reduction "mean". Only lse is saved per row; the backward recomputes
// the softmax from it in one pass.
//
// mse_loss is composed of sub, mul and mean: autograd differentiates it.
#include <cmath>

#include <loom/core/autograd.h>
#include <loom/core/parallel.h>
#include <loom/ops/kernels/kernels.h>
#include <loom/ops/ops.h>

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
  // Expected target shape: logits without the class dim (dim 1, or dim 0 for 1-D logits).
  const int64_t class_dim = logits.dim() == 1 ? 0 : 1;
  Shape target_shape = logits.sizes();
  target_shape.erase(target_shape.begin() + class_dim);
  LOOM_CHECK(target.sizes() == target_shape, op, ": target of shape ", target.sizes(), " does not match logits of shape ",
             logits.sizes(), " (expected target shape ", target_shape, ")");

  const int64_t C = logits.size(class_dim), rows = numel_of(target_shape);
  Tensor x = logits.movedim(class_dim, -1).contiguous();  // [rows..., C], one row per target
  Tensor t = target.contiguous();
  const float* xp = x.data_ptr<float>();
  const int64_t* tp = t.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r)
    LOOM_CHECK(tp[r] == ignore_index || (tp[r] >= 0 && tp[r] < C), op, ": target ", tp[r],
               " is out of bounds for ", C, " classes (at flat index ", r, ")");

  const float eps = float(label_smoothing);
  Tensor lse = empty({rows}), losses = empty(target_shape);
  float *lp = lse.data_ptr<float>(), *out = losses.data_ptr<float>();
  const kernels::Table& k = kernels::table();
  parallel_for(rows, 8 * C, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = xp + r * C;
      lp[r] = k.logsumexp(row, C);
      if (tp[r] == ignore_index) { out[r] = 0; continue; }
      float mean_x = eps > 0 ? float(k.sum(row, C) / double(C)) : 0.0f;
      out[r] = lp[r] - (1 - eps) * row[tp[r]] - eps * mean_x;
    }
  });
  int64_t counted = 0;
  for (int64_t r = 0; r < rows; ++r) counted += tp[r] != ignore_index;

  Tensor result;
  if (reduction == "none") {
    result = losses;
  } else {
    double total = 0;
    for (int64_t r = 0; r < rows; ++r) total += out[r];  // in row order: deterministic
    // All rows ignored with "mean": 0 / 0 = nan, as in PyTorch.
    result = scalar_tensor(reduction == "sum" ? total : total / double(counted));
  }

  record(op, {logits}, result,
         [x, t, lse, C, rows, counted, eps, ignore_index, reduction, class_dim, logits_shape = logits.sizes()](
             const Tensor& g_in) {
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
               const float scale = (reduction == "none" ? gp[r] : gp[0]) / denom;
               kb.softmax_minus(xp + r * C, lp[r], scale, eps / float(C), drow, C);
               drow[tp[r]] -= scale * (1 - eps);
             }
           });
           // Back to the logits' layout: the class dim returns to its place.
           Shape moved = logits_shape;
           moved.erase(moved.begin() + class_dim);
           moved.push_back(C);
           return Grads{dx.view(moved).movedim(-1, class_dim)};
         });
  return result;
}

Tensor mse_loss(const Tensor& input, const Tensor& target, const std::string& reduction) {
  check_reduction("mse_loss", reduction);
  Tensor d = sub(input, target);
  Tensor sq = mul(d, d);
  if (reduction == "none") return sq;
  return reduction == "sum" ? sum(sq) : mean(sq);
}

}  // namespace loom
