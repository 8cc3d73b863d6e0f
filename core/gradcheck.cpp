#include <loom/core/gradcheck.h>

#include <cmath>
#include <sstream>

#include <loom/core/autograd.h>
#include <loom/core/generator.h>

namespace loom {

namespace {

// L = sum(out * v) in double.
double project(const Tensor& out, const std::vector<double>& v) {
  std::vector<double> o = out.to_vector<double>();
  double acc = 0;
  for (size_t i = 0; i < o.size(); ++i) acc += o[i] * v[i];
  return acc;
}

std::string index_str(const Shape& shape, int64_t flat) {
  Shape idx(shape.size());
  for (int64_t d = int64_t(shape.size()) - 1; d >= 0; --d) {
    idx[size_t(d)] = flat % shape[size_t(d)];
    flat /= shape[size_t(d)];
  }
  return shape_str(idx);
}

}  // namespace

GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f,
                          const std::vector<Tensor>& inputs, const GradcheckOptions& options) {
  // Fresh leaf copies, so the caller's tensors and grads are untouched.
  std::vector<Tensor> xs;
  for (const Tensor& t : inputs) {
    if (t.defined() && t.is_floating_point() && t.requires_grad()) {
      NoGradGuard no_grad;
      xs.push_back(t.contiguous().clone().requires_grad_());
    } else {
      xs.push_back(t);
    }
  }

  // Analytic gradients.
  Tensor out = f(xs);
  LOOM_CHECK(out.defined() && out.is_floating_point(), "gradcheck: f must return a floating point tensor");
  Generator gen(options.seed);
  Tensor v = randn(out.sizes(), gen);
  std::vector<double> vv = v.to_vector<double>();
  if (out.requires_grad()) out.backward(v);

  GradcheckResult result;
  result.worst_excess = -INFINITY;
  NoGradGuard no_grad;
  for (size_t k = 0; k < xs.size(); ++k) {
    const Tensor& x = xs[k];
    if (!x.defined() || !x.is_floating_point() || !x.requires_grad()) continue;
    std::vector<double> analytic =
        x.grad().defined() ? x.grad().to_vector<double>() : std::vector<double>(size_t(x.numel()), 0.0);
    float* p = x.data_ptr<float>();
    for (int64_t i = 0; i < x.numel(); ++i) {
      const float orig = p[i];
      const double step = options.eps * std::max(1.0, std::abs(double(orig)));
      const float hi = float(orig + step), lo = float(orig - step);
      p[i] = hi;
      double l_hi = project(f(xs), vv);
      p[i] = lo;
      double l_lo = project(f(xs), vv);
      p[i] = orig;
      double numeric = (l_hi - l_lo) / (double(hi) - double(lo));
      double diff = std::abs(analytic[size_t(i)] - numeric);
      double tol = options.atol + options.rtol * std::abs(numeric);
      if (diff - tol > result.worst_excess) {
        result.worst_excess = diff - tol;
        std::ostringstream os;
        os << "gradcheck: input " << k << " (shape " << shape_str(x.sizes()) << ") element "
           << index_str(x.sizes(), i) << ": autograd " << analytic[size_t(i)] << " vs finite difference "
           << numeric << " (|diff| " << diff << ", tolerance " << tol << ")";
        result.report = os.str();
      }
    }
  }
  result.passed = result.worst_excess <= 0;
  if (result.report.empty()) result.report = "gradcheck: no input requires grad";
  return result;
}

}  // namespace loom
