// layer_norm and rms_norm against double references, every ISA; gradients.
#include <omp.h>

#include <cfloat>
#include <cmath>

#include "helpers.h"

using namespace loom;

namespace {
using Inputs = std::vector<Tensor>;

// Rows of n: y = (x - mean) / sqrt(var + eps) * w + b, or the rms form.
std::vector<double> norm_ref(const Tensor& x, int64_t n, const Tensor& w, const Tensor& b, double eps, bool rms) {
  auto xv = x.contiguous().to_vector<float>();
  std::vector<float> wv = w.defined() ? w.to_vector<float>() : std::vector<float>(size_t(n), 1.0f);
  std::vector<float> bv = b.defined() ? b.to_vector<float>() : std::vector<float>(size_t(n), 0.0f);
  std::vector<double> out;
  for (size_t r = 0; r * size_t(n) < xv.size(); ++r) {
    double mean = 0, var = 0;
    for (int64_t i = 0; i < n; ++i) mean += xv[r * size_t(n) + size_t(i)];
    mean = rms ? 0 : mean / double(n);
    for (int64_t i = 0; i < n; ++i) var += std::pow(xv[r * size_t(n) + size_t(i)] - mean, 2);
    var /= double(n);
    for (int64_t i = 0; i < n; ++i)
      out.push_back((xv[r * size_t(n) + size_t(i)] - mean) / std::sqrt(var + eps) * wv[size_t(i)] + bv[size_t(i)]);
  }
  return out;
}
}  // namespace

TEST_CASE("layer_norm and rms_norm match a double reference on every ISA") {
  Generator g(51);
  for (int64_t n : {1, 3, 7, 17, 33, 100}) {
    Tensor x = randn({6, n}, g) * 3.0f + 5.0f;  // a large mean tests the two-pass variance
    Tensor w = randn({n}, g), b = randn({n}, g);
    for_each_isa([&](const std::string& isa) {
      CAPTURE(isa);
      CAPTURE(n);
      CHECK(close_or_same(layer_norm(x, {n}, w, b).to_vector<float>(), norm_ref(x, n, w, b, 1e-5, false), 1e-4, 1e-4));
      CHECK(close_or_same(layer_norm(x, {n}).to_vector<float>(), norm_ref(x, n, {}, {}, 1e-5, false), 1e-4, 1e-4));
      CHECK(close_or_same(rms_norm(x, {n}, w).to_vector<float>(), norm_ref(x, n, w, {}, FLT_EPSILON, true), 1e-4, 1e-4));
      CHECK(close_or_same(rms_norm(x, {n}, {}, 0.1).to_vector<float>(), norm_ref(x, n, {}, {}, 0.1, true), 1e-4, 1e-4));
    });
  }
  // Over two trailing dims, and a transposed input.
  Tensor x = randn({4, 3, 5}, g);
  CHECK(close_or_same(layer_norm(x, {3, 5}).to_vector<float>(), norm_ref(x, 15, {}, {}, 1e-5, false), 1e-4, 1e-4));
  Tensor xt = randn({9, 4}, g).t();
  CHECK(close_or_same(layer_norm(xt, {9}).to_vector<float>(), norm_ref(xt.contiguous(), 9, {}, {}, 1e-5, false), 1e-4, 1e-4));
}

TEST_CASE("norm gradients: x, weight, bias") {
  Generator g(52);
  auto rg = [&](Shape s) { return randn(s, g).requires_grad_(); };
  for_each_isa([&](const std::string& isa) {
    CAPTURE(isa);
    CHECK_GRADCHECK([](const Inputs& in) { return layer_norm(in[0], {5}, in[1], in[2]); }, {rg({3, 5}), rg({5}), rg({5})});
    CHECK_GRADCHECK([](const Inputs& in) { return layer_norm(in[0], {2, 3}); }, {rg({2, 2, 3})});
    CHECK_GRADCHECK([](const Inputs& in) { return rms_norm(in[0], {17}, in[1]); }, {rg({4, 17}), rg({17})});
    CHECK_GRADCHECK([](const Inputs& in) { return rms_norm(in[0].t(), {3}); }, {rg({3, 4})});
  });
}

TEST_CASE("norms give the same bits for 1 and 2 threads, gradients included") {
  Generator g(53);
  Tensor x0 = randn({512, 256}, g), w0 = randn({256}, g), b0 = randn({256}, g), gy = randn({512, 256}, g);
  std::vector<std::vector<float>> runs;
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    Tensor x = x0.clone().requires_grad_(), w = w0.clone().requires_grad_(), b = b0.clone().requires_grad_();
    Tensor y = layer_norm(x, {256}, w, b);
    y.backward(gy);
    std::vector<float> all = y.to_vector<float>();
    for (const Tensor& t : {x.grad(), w.grad(), b.grad()}) {
      auto v = t.to_vector<float>();
      all.insert(all.end(), v.begin(), v.end());
    }
    runs.push_back(all);
  }
  CHECK(runs[0] == runs[1]);
}

TEST_CASE("norm errors name the shapes") {
  CHECK_THROWS_WITH_AS(layer_norm(ones({2, 3}), {4}),
                       "layer_norm: normalized_shape [4] does not match the trailing dims of input shape [2, 3]", Error);
  CHECK_THROWS_WITH_AS(layer_norm(ones({2, 3}), {3}, ones({4})),
                       "layer_norm: weight must be float32 of shape [3], got float32 [4]", Error);
  CHECK_THROWS_WITH_AS(rms_norm(arange(3), {3}), "rms_norm: expects a float32 tensor, got int64", Error);
}
