// layer_norm and rms_norm against a double-precision reference on every ISA
// (forward and backward: dx, dweight, dbias), gradcheck of every input,
// thread counts, errors.
#include "helpers.h"

#include <loom/ops/norm.h>

#include <omp.h>

#include <cfloat>
#include <cmath>
#include <functional>

using namespace loom;

namespace {
using Inputs = std::vector<Tensor>;

// y, and the gradients of Σ y * gy, for rows of n elements, in double:
//   x̂ = (x - mean) / sqrt(var + eps)   (rms: mean = 0, var = mean(x²)),  y = x̂ w + b
//   dx = rstd (ĝ - mean(ĝ) - x̂ mean(ĝ x̂)), ĝ = gy w   (rms: no mean(ĝ) term)
// x and gy are read in row-major order whatever their layout; an undefined
// w is all ones, an undefined b all zeros.
struct NormRef {
  std::vector<double> y, dx, dw, db;
};
NormRef norm_ref(const Tensor& x, int64_t n, const Tensor& w, const Tensor& b, const Tensor& gy, double eps,
                 bool rms) {
  const std::vector<float> X = x.to_vector<float>(), G = gy.to_vector<float>();
  const std::vector<float> W = w.defined() ? w.to_vector<float>() : std::vector<float>(size_t(n), 1.0f);
  const std::vector<float> B = b.defined() ? b.to_vector<float>() : std::vector<float>(size_t(n), 0.0f);
  NormRef ref{std::vector<double>(X.size()), std::vector<double>(X.size()), std::vector<double>(size_t(n)),
              std::vector<double>(size_t(n))};
  std::vector<double> xh(static_cast<size_t>(n));
  for (size_t s = 0; s < X.size(); s += size_t(n)) {  // s: the row's first element
    double mean = 0, var = 0;
    if (!rms) {
      for (int64_t i = 0; i < n; ++i) mean += X[s + size_t(i)];
      mean /= double(n);
    }
    for (int64_t i = 0; i < n; ++i) var += (X[s + size_t(i)] - mean) * (X[s + size_t(i)] - mean);
    var /= double(n);
    const double rstd = 1 / std::sqrt(var + eps);
    double mean_g = 0, mean_gx = 0;
    for (size_t i = 0; i < size_t(n); ++i) {
      xh[i] = (X[s + i] - mean) * rstd;
      ref.y[s + i] = xh[i] * W[i] + B[i];
      ref.dw[i] += G[s + i] * xh[i];
      ref.db[i] += G[s + i];
      mean_g += G[s + i] * W[i] / double(n);
      mean_gx += G[s + i] * W[i] * xh[i] / double(n);
    }
    for (size_t i = 0; i < size_t(n); ++i)
      ref.dx[s + i] = rstd * (G[s + i] * W[i] - (rms ? 0 : mean_g) - xh[i] * mean_gx);
  }
  return ref;
}

using NormFn = std::function<Tensor(const Tensor& x, const Tensor& w, const Tensor& b)>;

// Runs f forward and backward (upstream gradient gy) on fresh leaves of x,
// w, b (w and b may be undefined) and compares y, dx, dw, db with ref.
void check_against(const NormFn& f, const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& gy,
                   const NormRef& ref, double tol) {
  Tensor xl = x.detach().requires_grad_();
  Tensor wl = w.defined() ? w.detach().requires_grad_() : Tensor();
  Tensor bl = b.defined() ? b.detach().requires_grad_() : Tensor();
  Tensor y = f(xl, wl, bl);
  CHECK(y.sizes() == x.sizes());
  CHECK(close_or_same(y.to_vector<float>(), ref.y, tol, tol));
  y.backward(gy);
  CHECK(close_or_same(xl.grad().to_vector<float>(), ref.dx, tol, tol));
  if (wl.defined()) CHECK(close_or_same(wl.grad().to_vector<float>(), ref.dw, tol, tol));
  if (bl.defined()) CHECK(close_or_same(bl.grad().to_vector<float>(), ref.db, tol, tol));
}
}  // namespace

TEST_CASE("layer_norm and rms_norm: forward and backward match a double reference on every ISA") {
  Generator g(51);
  for (int64_t n : {1, 3, 7, 17, 33, 100}) {
    for (bool strided : {false, true}) {
      // strided: x and gy are transposed views and w, b take every other element.
      // A mean well away from 0 (5) checks that it is subtracted.
      Tensor x = strided ? (randn({n, 5}, g) * 3.0f + 5.0f).t() : randn({5, n}, g) * 3.0f + 5.0f;
      Tensor gy = strided ? randn({n, 5}, g).t() : randn({5, n}, g);
      Tensor w = strided ? randn({2 * n}, g).slice(0, 0, 2 * n, 2) : randn({n}, g);
      Tensor b = strided ? randn({2 * n}, g).slice(0, 0, 2 * n, 2) : randn({n}, g);
      REQUIRE(x.is_contiguous() == (!strided || n == 1));  // [1, 5] transposed is still contiguous
      for_each_isa([&](const std::string& isa) {
        CAPTURE(isa);
        CAPTURE(n);
        CAPTURE(strided);
        NormFn ln = [&](const Tensor& xi, const Tensor& wi, const Tensor& bi) { return layer_norm(xi, {n}, wi, bi); };
        NormFn rms = [&](const Tensor& xi, const Tensor& wi, const Tensor&) { return rms_norm(xi, {n}, wi); };
        NormFn rms_eps = [&](const Tensor& xi, const Tensor& wi, const Tensor&) { return rms_norm(xi, {n}, wi, 0.1); };
        for (const Tensor& wi : {Tensor(), w}) {
          for (const Tensor& bi : {Tensor(), b})
            check_against(ln, x, wi, bi, gy, norm_ref(x, n, wi, bi, gy, 1e-5, false), 1e-4);
          check_against(rms, x, wi, Tensor(), gy, norm_ref(x, n, wi, Tensor(), gy, FLT_EPSILON, true), 1e-4);
          check_against(rms_eps, x, wi, Tensor(), gy, norm_ref(x, n, wi, Tensor(), gy, 0.1, true), 1e-4);
        }
      });
    }
  }
}

TEST_CASE("layer_norm and rms_norm over two trailing dims, on a permuted input") {
  Generator g(54);
  Tensor x = randn({2, 5, 4, 3}, g).permute({0, 3, 2, 1});  // [2, 3, 4, 5], not contiguous
  Tensor w = randn({4, 5}, g), b = randn({4, 5}, g), gy = randn({2, 3, 4, 5}, g);
  for_each_isa([&](const std::string& isa) {
    CAPTURE(isa);
    check_against([](const Tensor& xi, const Tensor& wi, const Tensor& bi) { return layer_norm(xi, {4, 5}, wi, bi); },
                  x, w, b, gy, norm_ref(x, 20, w, b, gy, 1e-5, false), 1e-4);
    check_against([](const Tensor& xi, const Tensor& wi, const Tensor&) { return rms_norm(xi, {4, 5}, wi); }, x, w,
                  Tensor(), gy, norm_ref(x, 20, w, Tensor(), gy, FLT_EPSILON, true), 1e-4);
    // All of x as one row.
    check_against([](const Tensor& xi, const Tensor&, const Tensor&) { return layer_norm(xi, {2, 3, 4, 5}); }, x,
                  Tensor(), Tensor(), gy, norm_ref(x, 120, Tensor(), Tensor(), gy, 1e-5, false), 1e-4);
  });
}

TEST_CASE("norm defaults: eps 1e-5 for layer_norm, FLT_EPSILON for rms_norm") {
  // Rows this small have a variance (~1e-8) below eps, so eps shows in the result.
  Generator g(55);
  Tensor x = randn({4, 19}, g) * 1e-4f, gy = ones({4, 19});
  CHECK(close_or_same(layer_norm(x, {19}).to_vector<float>(), norm_ref(x, 19, {}, {}, gy, 1e-5, false).y, 1e-5, 1e-4));
  CHECK(close_or_same(rms_norm(x, {19}).to_vector<float>(), norm_ref(x, 19, {}, {}, gy, FLT_EPSILON, true).y, 1e-5,
                      1e-4));
  CHECK(!close_or_same(rms_norm(x, {19}).to_vector<float>(), norm_ref(x, 19, {}, {}, gy, 1e-5, true).y, 1e-5, 1e-4));
}

TEST_CASE("layer_norm statistics stay accurate when the mean dwarfs the spread") {
  // Rows around 1000 with std 0.1: E[x²] - E[x]² in float would lose the
  // variance entirely; the two-pass statistics keep y within 2e-3.
  Generator g(56);
  Tensor x = randn({4, 100}, g) * 0.1f + 1000.0f, gy = ones({4, 100});
  for_each_isa([&](const std::string& isa) {
    CAPTURE(isa);
    CHECK(close_or_same(layer_norm(x, {100}).to_vector<float>(), norm_ref(x, 100, {}, {}, gy, 1e-5, false).y, 2e-3,
                        0));
  });
}

TEST_CASE("norm gradients only for the inputs that ask") {
  Generator g(57);
  Tensor x = randn({3, 7}, g), w = randn({7}, g).requires_grad_(), b = randn({7}, g), gy = randn({3, 7}, g);
  layer_norm(x, {7}, w, b).backward(gy);
  CHECK(!x.grad().defined());
  CHECK(!b.grad().defined());
  CHECK(close_or_same(w.grad().to_vector<float>(), norm_ref(x, 7, w, b, gy, 1e-5, false).dw, 1e-4, 1e-4));
}

TEST_CASE("norm gradcheck: x, weight and bias on every ISA") {
  Generator g(52);
  auto rg = [&](Shape s) { return randn(s, g).requires_grad_(); };
  for_each_isa([&](const std::string& isa) {
    CAPTURE(isa);
    for (int64_t n : {3, 17}) {
      CAPTURE(n);
      CHECK_GRADCHECK([n](const Inputs& in) { return layer_norm(in[0], {n}, in[1], in[2]); },
                      {rg({3, n}), rg({n}), rg({n})});
      CHECK_GRADCHECK([n](const Inputs& in) { return rms_norm(in[0], {n}, in[1]); }, {rg({4, n}), rg({n})});
    }
    CHECK_GRADCHECK([](const Inputs& in) { return layer_norm(in[0], {5}, in[1]); }, {rg({2, 5}), rg({5})});
    CHECK_GRADCHECK([](const Inputs& in) { return layer_norm(in[0], {5}, Tensor(), in[1]); }, {rg({2, 5}), rg({5})});
    CHECK_GRADCHECK([](const Inputs& in) { return layer_norm(in[0], {2, 3}); }, {rg({2, 2, 3})});
    CHECK_GRADCHECK([](const Inputs& in) { return layer_norm(in[0].t(), {4}, in[1], in[2]); },
                    {rg({4, 3}), rg({4}), rg({4})});
    CHECK_GRADCHECK([](const Inputs& in) { return rms_norm(in[0].t(), {3}); }, {rg({3, 4})});
    CHECK_GRADCHECK([](const Inputs& in) { return rms_norm(in[0], {6}, in[1], 0.5); }, {rg({3, 6}), rg({6})});
  });
}

TEST_CASE("norms: right, and the same bits for 1, 2 and 8 threads, gradients included" *
          doctest::test_suite("thread-sweep")) {
  Generator g(53);
  // 1000 columns: an even split of the columns between 2 threads (500) is
  // not a multiple of the SIMD width.
  const int64_t rows = 200, n = 1000;
  Tensor x0 = randn({rows, n}, g), w0 = randn({n}, g), b0 = randn({n}, g), gy = randn({rows, n}, g);
  for (bool rms : {false, true}) {
    CAPTURE(rms);
    const NormRef ref = norm_ref(x0, n, w0, rms ? Tensor() : b0, gy, rms ? FLT_EPSILON : 1e-5, rms);
    std::vector<std::vector<float>> runs;
    for (int threads : kThreadCounts) {
      WithThreads with(threads);
      CAPTURE(threads);
      Tensor x = x0.clone().requires_grad_(), w = w0.clone().requires_grad_(), b = b0.clone().requires_grad_();
      Tensor y = rms ? rms_norm(x, {n}, w) : layer_norm(x, {n}, w, b);
      y.backward(gy);
      CHECK(close_or_same(y.to_vector<float>(), ref.y, 1e-5, 1e-5));
      CHECK(close_or_same(x.grad().to_vector<float>(), ref.dx, 1e-5, 1e-4));
      CHECK(close_or_same(w.grad().to_vector<float>(), ref.dw, 1e-3, 1e-4));
      std::vector<float> all = y.to_vector<float>();
      for (const Tensor& t : {x.grad(), w.grad(), rms ? Tensor() : b.grad()}) {
        if (!t.defined()) continue;
        auto v = t.to_vector<float>();
        all.insert(all.end(), v.begin(), v.end());
      }
      runs.push_back(all);
    }
    CHECK(runs[0].size() == size_t(2 * rows * n + (rms ? 1 : 2) * n));
    for (const auto& r : runs) CHECK(r == runs.front());
  }
}

TEST_CASE("norm errors name the shapes") {
  CHECK_THROWS_WITH_AS(layer_norm(ones({2, 3}), {4}),
                       "layer_norm: normalized_shape [4] does not match the trailing dims of input shape [2, 3]", Error);
  CHECK_THROWS_WITH_AS(layer_norm(ones({3}), {2, 3}),
                       "layer_norm: normalized_shape [2, 3] does not match the trailing dims of input shape [3]", Error);
  CHECK_THROWS_WITH_AS(layer_norm(ones({2, 3}), {}), "layer_norm: normalized_shape must name at least one dim, got []",
                       Error);
  CHECK_THROWS_WITH_AS(layer_norm(ones({2, 3}), {3}, ones({4})),
                       "layer_norm: weight must be float32 of shape [3], got float32 [4]", Error);
  CHECK_THROWS_WITH_AS(layer_norm(ones({2, 3}), {3}, ones({3}), ones({1, 3})),
                       "layer_norm: bias must be float32 of shape [3], got float32 [1, 3]", Error);
  CHECK_THROWS_WITH_AS(layer_norm(ones({2, 3}), {3}, ones({3}, kInt64)),
                       "layer_norm: weight must be float32 of shape [3], got int64 [3]", Error);
  CHECK_THROWS_WITH_AS(layer_norm(Tensor(), {3}), "layer_norm: tensor is undefined", Error);
  CHECK_THROWS_WITH_AS(rms_norm(arange(3), {3}), "rms_norm: expects a float32 tensor, got int64 (shape [3])", Error);
  CHECK_THROWS_WITH_AS(rms_norm(ones({2, 3}), {3}, ones({2, 3})),
                       "rms_norm: weight must be float32 of shape [3], got float32 [2, 3]", Error);
}
