// The `ops` suite: loom's kernels against the baselines issue #3 names.
//
//   elementwise and reductions   GB/s, against a plain memcpy (the machine's copy bandwidth)
//   matmul                       GFLOP/s at 256³ .. 2048³, 1 and 2 threads, against dnnl_sgemm
//   linear                       fused bias, against dnnl_sgemm followed by a bias loop
//   softmax, layer_norm,         time, against a plain single-threaded scalar loop
//   cross_entropy
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include <omp.h>
#include <oneapi/dnnl/dnnl.h>

#include <loom/loom.h>

#include "bench.h"

namespace loom::bench {

namespace {

// ---- scalar references (what the op would be without SIMD or threads) -------------------
void softmax_ref(const float* x, float* y, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    float* yr = y + r * n;
    float m = -INFINITY, s = 0;
    for (int64_t i = 0; i < n; ++i) m = std::max(m, xr[i]);
    for (int64_t i = 0; i < n; ++i) s += (yr[i] = std::exp(xr[i] - m));
    for (int64_t i = 0; i < n; ++i) yr[i] /= s;
  }
}

void layer_norm_ref(const float* x, const float* w, const float* b, float* y, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    float mean = 0, var = 0;
    for (int64_t i = 0; i < n; ++i) mean += xr[i];
    mean /= float(n);
    for (int64_t i = 0; i < n; ++i) var += (xr[i] - mean) * (xr[i] - mean);
    const float rstd = 1.0f / std::sqrt(var / float(n) + 1e-5f);
    for (int64_t i = 0; i < n; ++i) y[r * n + i] = (xr[i] - mean) * rstd * w[i] + b[i];
  }
}

float cross_entropy_ref(const float* x, const int64_t* t, int64_t rows, int64_t n) {
  double total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    float m = -INFINITY, s = 0;
    for (int64_t i = 0; i < n; ++i) m = std::max(m, xr[i]);
    for (int64_t i = 0; i < n; ++i) s += std::exp(xr[i] - m);
    total += m + std::log(s) - xr[t[r]];
  }
  return float(total / double(rows));
}

double gb_per_s(double bytes, double ms) { return bytes / (ms * 1e6); }

void elementwise_cases(Reporter& rep) {
  const int64_t n = int64_t(1) << 24;  // 16M floats = 64 MiB per tensor
  const double mb = double(n) * 4;
  Tensor a = randn({n}), b = randn({n}), out = empty({n});
  const double copy_gbs =
      gb_per_s(2 * mb, time_ms([&] { std::memcpy(out.data_ptr<float>(), a.data_ptr<float>(), size_t(n) * 4); },
                               rep.repeat()));
  auto add_case = [&](const std::string& name, double bytes, const std::function<void()>& f) {
    if (!rep.wants(name)) return;
    rep.add({"", name, "bandwidth", "GB/s", "memcpy", gb_per_s(bytes, time_ms(f, rep.repeat())), copy_gbs, true});
  };
  add_case("copy_16M", 2 * mb, [&] { out.copy_(a); });
  add_case("add_16M", 3 * mb, [&] { add(a, b); });
  add_case("mul_16M", 3 * mb, [&] { mul(a, b); });
  add_case("add_inplace_16M", 3 * mb, [&] { out.add_(b); });
  add_case("relu_16M", 2 * mb, [&] { relu(a); });
  add_case("exp_16M", 2 * mb, [&] { exp(a); });
  add_case("gelu_16M", 2 * mb, [&] { gelu(a); });
  add_case("sum_16M", mb, [&] { sum(a); });
  Tensor m = a.view({4096, 4096});
  add_case("sum_rows_4096x4096", mb, [&] { m.sum({1}); });
  add_case("sum_cols_4096x4096", mb, [&] { m.sum({0}); });
}

void matmul_cases(Reporter& rep) {
  const int max_threads = omp_get_max_threads();
  for (int64_t s : {256, 512, 1024, 2048}) {
    Tensor a = randn({s, s}), b = randn({s, s}), c = empty({s, s});
    const double flops = 2.0 * double(s) * double(s) * double(s);
    for (int threads : {1, 2}) {
      const std::string name = "matmul_" + std::to_string(s) + "_t" + std::to_string(threads);
      if (!rep.wants(name) || threads > max_threads) continue;
      omp_set_num_threads(threads);
      const int repeat = s >= 2048 ? 3 : rep.repeat();
      double loom_ms = time_ms([&] { matmul(a, b); }, repeat);
      double raw_ms = time_ms(
          [&] {
            dnnl_sgemm('N', 'N', s, s, s, 1.0f, a.data_ptr<float>(), s, b.data_ptr<float>(), s, 0.0f,
                       c.data_ptr<float>(), s);
          },
          repeat);
      rep.add({"", name, "throughput", "GFLOP/s", "dnnl_sgemm", flops / (loom_ms * 1e6), flops / (raw_ms * 1e6), true});
    }
  }
  omp_set_num_threads(max_threads);
  const std::string name = "linear_4096x1024x1024";
  if (rep.wants(name)) {
    const int64_t rows = 4096, in = 1024, outf = 1024;
    Tensor x = randn({rows, in}), w = randn({outf, in}), bias = randn({outf}), y = empty({rows, outf});
    const double flops = 2.0 * double(rows) * double(in) * double(outf);
    double loom_ms = time_ms([&] { linear(x, w, bias); }, rep.repeat());
    double raw_ms = time_ms(
        [&] {  // y = x · wᵀ, then the bias in a second pass
          dnnl_sgemm('N', 'T', rows, outf, in, 1.0f, x.data_ptr<float>(), in, w.data_ptr<float>(), in, 0.0f,
                     y.data_ptr<float>(), outf);
          float* yp = y.data_ptr<float>();
          const float* bp = bias.data_ptr<float>();
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = 0; c < outf; ++c) yp[r * outf + c] += bp[c];
        },
        rep.repeat());
    rep.add({"", name, "throughput", "GFLOP/s", "dnnl_sgemm+bias", flops / (loom_ms * 1e6), flops / (raw_ms * 1e6), true});
  }
}

void row_op_cases(Reporter& rep) {
  const int64_t rows = 4096, n = 1024;
  Tensor x = randn({rows, n}), w = randn({n}), b = randn({n}), y = empty({rows, n});
  if (rep.wants("softmax_4096x1024")) {
    double loom_ms = time_ms([&] { softmax(x, -1); }, rep.repeat());
    double ref_ms = time_ms([&] { softmax_ref(x.data_ptr<float>(), y.data_ptr<float>(), rows, n); }, rep.repeat());
    rep.add({"", "softmax_4096x1024", "time", "ms", "scalar_loop", loom_ms, ref_ms, false});
  }
  if (rep.wants("layer_norm_4096x1024")) {
    double loom_ms = time_ms([&] { layer_norm(x, {n}, w, b); }, rep.repeat());
    double ref_ms = time_ms(
        [&] { layer_norm_ref(x.data_ptr<float>(), w.data_ptr<float>(), b.data_ptr<float>(), y.data_ptr<float>(), rows, n); },
        rep.repeat());
    rep.add({"", "layer_norm_4096x1024", "time", "ms", "scalar_loop", loom_ms, ref_ms, false});
  }
  if (rep.wants("cross_entropy_4096x1000")) {
    Tensor logits = randn({rows, 1000}), target = randint(0, 1000, {rows});
    double loom_ms = time_ms([&] { cross_entropy(logits, target); }, rep.repeat());
    double ref_ms = time_ms(
        [&] { cross_entropy_ref(logits.data_ptr<float>(), target.data_ptr<int64_t>(), rows, 1000); }, rep.repeat());
    rep.add({"", "cross_entropy_4096x1000", "time", "ms", "scalar_loop", loom_ms, ref_ms, false});
  }
}

// One AdamW step on a 16M-element parameter (64 MiB each for weight, grad,
// m and v): the fused SIMD kernel against the same rule as a plain loop.
void optimizer_cases(Reporter& rep) {
  if (!rep.wants("adamw_step_16M")) return;
  const int64_t n = int64_t(1) << 24;
  Tensor w = randn({n}).requires_grad_();
  w.mutable_grad() = randn({n});
  AdamW opt({{"w", w}}, {.lr = 1e-3, .weight_decay = 0.01});
  const double loom_ms = time_ms([&] { opt.step(); }, rep.repeat());
  std::vector<float> pw = w.to_vector<float>(), pg = w.grad().to_vector<float>(), m(static_cast<size_t>(n), 0.0f), v(static_cast<size_t>(n), 0.0f);
  const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, step = 1e-3f / (1 - 0.9f), ibc2 = 1 / std::sqrt(1 - 0.999f),
              shrink = 1 - 1e-3f * 0.01f;
  const double ref_ms = time_ms(
      [&] {
        for (int64_t k = 0; k < n; ++k) {
          m[k] = b1 * m[k] + (1 - b1) * pg[k];
          v[k] = b2 * v[k] + (1 - b2) * pg[k] * pg[k];
          pw[k] = pw[k] * shrink - step * m[k] / (std::sqrt(v[k]) * ibc2 + eps);
        }
      },
      rep.repeat());
  rep.add({"", "adamw_step_16M", "time", "ms", "scalar_loop", loom_ms, ref_ms, false});
}

}  // namespace

void ops_suite(Reporter& rep) {
  manual_seed(0);
  NoGradGuard no_grad;
  elementwise_cases(rep);
  row_op_cases(rep);
  matmul_cases(rep);
  optimizer_cases(rep);
}

}  // namespace loom::bench
