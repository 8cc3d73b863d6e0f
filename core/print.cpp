// Printing like PyTorch:
//   tensor([[0., 1., 2.],
//           [3., 4., 5.]], shape=[2, 3], dtype=float32)
// Large tensors show the first and last 3 entries of each dimension with
// "..." between (PyTorch's summarisation, threshold 1000 elements).
#include <cmath>
#include <cstdio>
#include <ostream>
#include <sstream>

#include <loom/core/autograd.h>
#include <loom/core/tensor.h>

namespace loom {

namespace {

constexpr int64_t kThreshold = 1000, kEdgeItems = 3;

struct Format {
  bool integral = true;  // every value a whole number: print "3."
  bool scientific = false;
  int width = 1;
};

std::string format_value(double v, DType dtype, const Format& f) {
  char buf[64];
  if (dtype == kBool) return v != 0 ? "True" : "False";
  if (dtype == kInt64) std::snprintf(buf, sizeof buf, "%lld", (long long)v);
  else if (std::isnan(v)) return "nan";
  else if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  else if (f.scientific) std::snprintf(buf, sizeof buf, "%.4e", v);
  else if (f.integral) std::snprintf(buf, sizeof buf, "%.0f.", v);
  else std::snprintf(buf, sizeof buf, "%.4f", v);
  return buf;
}

void print_dim(std::ostream& os, const Tensor& t, bool summarize, const Format& f, int indent) {
  if (t.dim() == 0) {
    std::string s = format_value(t.item<double>(), t.dtype(), f);
    os << std::string(size_t(std::max<int>(0, f.width - int(s.size()))), ' ') << s;
    return;
  }
  int64_t n = t.size(0);
  os << '[';
  bool skip = summarize && n > 2 * kEdgeItems;
  for (int64_t i = 0; i < n; ++i) {
    if (skip && i == kEdgeItems) {
      os << (t.dim() == 1 ? "..., " : "...,\n" + std::string(size_t(indent + 1), ' '));
      i = n - kEdgeItems;
    }
    print_dim(os, t.select(0, i), summarize, f, indent + 1);
    if (i + 1 < n) {
      if (t.dim() == 1) os << ", ";
      else os << ',' << std::string(size_t(t.dim() - 1), '\n') << std::string(size_t(indent + 1), ' ');
    }
  }
  os << ']';
}

}  // namespace

std::ostream& operator<<(std::ostream& os, const Tensor& t) {
  if (!t.defined()) return os << "tensor(undefined)";
  NoGradGuard no_grad;  // printing must not touch the tape
  bool summarize = t.numel() > kThreshold;
  Format f;
  double max_abs = 0, min_abs = INFINITY;
  std::vector<double> values = t.to_vector<double>();
  for (double v : values) {
    if (!std::isfinite(v)) continue;
    if (v != std::floor(v)) f.integral = false;
    max_abs = std::max(max_abs, std::abs(v));
    if (v != 0) min_abs = std::min(min_abs, std::abs(v));
  }
  if (t.is_floating_point() && !f.integral && (max_abs >= 1e8 || (min_abs < 1e-4) || max_abs / min_abs > 1e3))
    f.scientific = true;
  for (double v : values) f.width = std::max(f.width, int(format_value(v, t.dtype(), f).size()));

  os << "tensor(";
  print_dim(os, t, summarize, f, 7);
  os << ", shape=" << shape_str(t.sizes()) << ", dtype=" << dtype_name(t.dtype());
  if (t.requires_grad()) os << (t.grad_fn() ? std::string(", grad_fn=<") + t.grad_fn()->name + ">" : ", requires_grad=True");
  return os << ')';
}

std::string to_string(const Tensor& t) {
  std::ostringstream os;
  os << t;
  return os.str();
}

}  // namespace loom
