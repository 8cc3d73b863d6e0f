// The `ops` suite: loom's kernels against the baselines issue #3 names.
//
//   elementwise and reductions   GB/s, against a plain memcpy (the machine's copy bandwidth)
//   matmul                       GFLOP/s at 256³ .. 2048³, 1 and 2 threads, against dnnl_sgemm
//   linear                       fused bias, against dnnl_sgemm followed by a bias loop; the
//                                demos' linears forward and backward (dx, dW), against dnnl_sgemm
//   softmax, layer_norm,         time, against a plain single-threaded scalar loop
//   cross_entropy
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <omp.h>
#include <oneapi/dnnl/dnnl.h>

#include <loom/loom.h>
#include <loom/ops/kernels/kernels.h>

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
  // The gelu gradient kernel as autograd runs it (ops/elementwise.cpp): reads x and g, writes dx.
  add_case("gelu_backward_16M", 3 * mb, [&] {
    Tensor dx = empty({n});
    const float *xp = a.data_ptr<float>(), *gp = b.data_ptr<float>();
    float* dp = dx.data_ptr<float>();
    parallel_for(n, 8, [&](int64_t begin, int64_t end) {
      kernels::table().unary_backward(kernels::UnaryOp::GeluErf, xp + begin, xp + begin, gp + begin, dp + begin,
                                      end - begin);
    });
  });
  add_case("sum_16M", mb, [&] { sum(a); });
  Tensor m = a.view({4096, 4096});
  add_case("sum_rows_4096x4096", mb, [&] { m.sum({1}); });
  add_case("sum_cols_4096x4096", mb, [&] { m.sum({0}); });
}

// One product, loom against dnnl_sgemm on the same operands, at 1 and 2
// threads. Kinds: "nn" matmul(A[m,k], B[k,n]); "linear" linear(x[m,k],
// W[n,k], bias) against sgemm('N','T') and a bias loop; "tn" matmul(Aᵀ, B)
// with A stored [k,m] (the weight gradient dW = dyᵀ · x of a linear).
struct GemmCase {
  std::string name, kind;
  int64_t m, k, n;
};

void gemm_case(Reporter& rep, const GemmCase& gc) {
  const int max_threads = omp_get_max_threads();
  const int64_t m = gc.m, k = gc.k, n = gc.n;
  Tensor a = gc.kind == "tn" ? randn({k, m}) : randn({m, k});
  Tensor b = gc.kind == "linear" ? randn({n, k}) : randn({k, n});
  Tensor bias = randn({n}), c = empty({m, n});
  const double flops = 2.0 * double(m) * double(k) * double(n);
  for (int threads : {1, 2}) {
    const std::string name = gc.name + "_t" + std::to_string(threads);
    if (!rep.wants(name) || threads > max_threads) continue;
    omp_set_num_threads(threads);
    const int repeat = flops > 1e10 ? 3 : std::max(rep.repeat(), flops < 1e9 ? 50 : 0);
    std::function<void()> loom_run, raw_run;
    float* cp = c.data_ptr<float>();
    const float *ap = a.data_ptr<float>(), *bp = b.data_ptr<float>(), *biasp = bias.data_ptr<float>();
    if (gc.kind == "nn") {
      loom_run = [&] { matmul(a, b); };
      raw_run = [&] { dnnl_sgemm('N', 'N', m, n, k, 1.0f, ap, k, bp, n, 0.0f, cp, n); };
    } else if (gc.kind == "tn") {
      loom_run = [&] { matmul(a.t(), b); };
      raw_run = [&] { dnnl_sgemm('T', 'N', m, n, k, 1.0f, ap, m, bp, n, 0.0f, cp, n); };
    } else {
      loom_run = [&] { linear(a, b, bias); };
      raw_run = [&] {  // y = x · wᵀ, then the bias in a second pass
        dnnl_sgemm('N', 'T', m, n, k, 1.0f, ap, k, bp, k, 0.0f, cp, n);
        for (int64_t r = 0; r < m; ++r)
          for (int64_t j = 0; j < n; ++j) cp[r * n + j] += biasp[j];
      };
    }
    // Interleaved, so a slow spell of the machine hits both alike.
    double loom_ms = 0, raw_ms = 0;
    for (int round = 0; round < 3; ++round) {
      const double l = time_ms(loom_run, repeat), r = time_ms(raw_run, repeat);
      loom_ms = round ? std::min(loom_ms, l) : l;
      raw_ms = round ? std::min(raw_ms, r) : r;
    }
    rep.add({"", name, "throughput", "GFLOP/s", gc.kind == "linear" ? "dnnl_sgemm+bias" : "dnnl_sgemm",
             flops / (loom_ms * 1e6), flops / (raw_ms * 1e6), true});
  }
  omp_set_num_threads(max_threads);
}

void matmul_cases(Reporter& rep) {
  std::vector<GemmCase> cases;
  for (int64_t s : {256, 512, 1024, 2048}) cases.push_back({"matmul_" + std::to_string(s), "nn", s, s, s});
  cases.push_back({"linear_4096x1024x1024", "linear", 4096, 1024, 1024});
  // The linears of the demos, forward and both backward products:
  // char-LM (configs/charlm.json: batch 16 x seq 128 = 2048 rows, dim 128,
  // ff 512, 256 logits) and the ViT (batch 128 x 50 tokens, dim 64, ff 128).
  struct Layer {
    const char* demo;
    int64_t rows, in, out;
  };
  for (const Layer& l : {Layer{"charlm", 2048, 128, 128}, Layer{"charlm", 2048, 128, 512},
                         Layer{"charlm", 2048, 512, 128}, Layer{"charlm", 2048, 128, 256},
                         Layer{"vit", 6400, 64, 128}, Layer{"vit", 6400, 128, 64}}) {
    const std::string shape = std::to_string(l.rows) + "x" + std::to_string(l.in) + "x" + std::to_string(l.out);
    cases.push_back({std::string(l.demo) + "_linear_" + shape, "linear", l.rows, l.in, l.out});
    cases.push_back({std::string(l.demo) + "_dx_" + shape, "nn", l.rows, l.out, l.in});       // dx = dy · W
    cases.push_back({std::string(l.demo) + "_dw_" + shape, "tn", l.out, l.rows, l.in});       // dW = dyᵀ · x
  }
  for (const GemmCase& gc : cases) gemm_case(rep, gc);
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
