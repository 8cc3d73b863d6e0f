// softmax, log_softmax and dropout.
#include <omp.h>

#include <cmath>

#include "helpers.h"

using namespace loom;

namespace {
using Inputs = std::vector<Tensor>;

std::vector<double> softmax_ref(const Tensor& x, bool log) {  // along the last dim of a 2-D tensor
  std::vector<float> v = x.contiguous().to_vector<float>();
  int64_t rows = x.size(0), n = x.size(1);
  std::vector<double> out;
  for (int64_t r = 0; r < rows; ++r) {
    double m = -INFINITY, s = 0;
    for (int64_t i = 0; i < n; ++i) m = std::max(m, double(v[size_t(r * n + i)]));
    for (int64_t i = 0; i < n; ++i) s += std::exp(v[size_t(r * n + i)] - m);
    for (int64_t i = 0; i < n; ++i) {
      double lp = v[size_t(r * n + i)] - m - std::log(s);
      out.push_back(log ? lp : std::exp(lp));
    }
  }
  return out;
}
}  // namespace

TEST_CASE("softmax and log_softmax match a reference on every ISA and row length") {
  Generator g(31);
  for (int64_t n : {1, 3, 7, 16, 17, 33, 100}) {
    Tensor x = randn({5, n}, g) * 4.0f;
    for_each_isa([&](const std::string& isa) {
      CAPTURE(isa);
      CAPTURE(n);
      CHECK(close_or_same(softmax(x, -1).to_vector<float>(), softmax_ref(x, false), 1e-7, 1e-5));
      CHECK(close_or_same(log_softmax(x, 1).to_vector<float>(), softmax_ref(x, true), 1e-5, 1e-5));
    });
  }
  // Along dim 0 (a strided dim): the same as transposing first.
  Tensor y = randn({6, 4}, g);
  CHECK(close_or_same(softmax(y, 0).t().contiguous().to_vector<float>(), softmax_ref(y.t(), false), 1e-7, 1e-5));
}

TEST_CASE("softmax is stable for huge logits and masks with -inf") {
  Tensor x = tensor({1000.0f, 1000.0f, -INFINITY, 0.0f}).reshape({1, 4});
  CHECK(close_or_same(softmax(x, 1).to_vector<float>(), {0.5, 0.5, 0, std::exp(-1000.0) / 2}, 1e-7, 1e-6));
  CHECK(std::isinf(log_softmax(x, 1).to_vector<float>()[2]));
}

TEST_CASE("softmax gradients") {
  Generator g(32);
  for_each_isa([&](const std::string& isa) {
    CAPTURE(isa);
    for (int64_t dim : {0, 1, 2}) {
      Tensor x = randn({3, 5, 4}, g).requires_grad_();
      CHECK_GRADCHECK([dim](const Inputs& in) { return softmax(in[0], dim); }, {x});
      CHECK_GRADCHECK([dim](const Inputs& in) { return log_softmax(in[0], dim); }, {x});
    }
  });
}

TEST_CASE("dropout: keeps about 1-p of the elements, scaled by 1/(1-p)") {
  Generator g(33);
  Tensor x = ones({100000});
  Tensor y = dropout(x, 0.3, true, &g);
  std::vector<float> v = y.to_vector<float>();
  int64_t kept = 0;
  for (float e : v) {
    REQUIRE((e == 0.0f || std::abs(e - 1.0f / 0.7f) < 1e-6f));
    kept += e != 0;
  }
  CHECK(std::abs(double(kept) / 100000 - 0.7) < 0.005);  // ~3.5 standard errors
  CHECK(dropout(x, 0.3, false, &g).is_same_storage(x));  // eval: the identity
  CHECK(dropout(x, 0.0, true, &g).is_same_storage(x));
  CHECK(dropout(x, 1.0, true, &g).sum().item<float>() == 0.0f);
  CHECK_THROWS_WITH_AS(dropout(x, 1.5), "dropout: probability has to be between 0 and 1, but got 1.5", Error);
}

TEST_CASE("dropout: same seed, same mask, for any thread count, gradient is the mask" *
          doctest::test_suite("thread-sweep")) {
  // The reference: element i keeps (x 2) when lane i % 4 of the generator's
  // block first + i / 4 is a uniform >= p, drawn in a plain loop.
  const int64_t n = (1 << 18) + 3;
  std::vector<float> expected(static_cast<size_t>(n));
  {
    Generator ref(34);
    const uint64_t first = ref.advance(uint64_t(n + 3) / 4);
    for (int64_t i = 0; i < n; ++i)
      expected[size_t(i)] = uniform_from_bits(ref.block(first + uint64_t(i / 4))[size_t(i % 4)]) >= 0.5f ? 2.0f : 0.0f;
  }
  for (int threads : kThreadCounts) {
    WithThreads with(threads);
    CAPTURE(threads);
    Generator g(34);
    CHECK(dropout(ones({n}), 0.5, true, &g).to_vector<float>() == expected);
  }
  Generator g(35);
  Tensor x = randn({50}).requires_grad_();
  Tensor y = dropout(x, 0.4, true, &g);
  y.sum().backward();
  std::vector<float> yv = y.to_vector<float>(), xv = x.to_vector<float>(), gv = x.grad().to_vector<float>();
  for (size_t i = 0; i < yv.size(); ++i) CHECK(gv[i] == doctest::Approx(yv[i] / xv[i]).epsilon(1e-5));
}

TEST_CASE("attention's row kernels: exp_sum, softmax_grad and dot16 against double, the same bits on every ISA") {
  Generator g(37);
  for (int64_t n : {1, 5, 16, 17, 64, 100}) {
    CAPTURE(n);
    std::vector<float> x = (randn({n}, g) * 3.0f).to_vector<float>();
    x[size_t(n / 2)] = -INFINITY;  // a masked logit: weight 0
    const float shift = 1.5f;
    std::vector<float> dP = randn({n}, g).to_vector<float>(), P = rand({n}, g).to_vector<float>();
    P[size_t(n / 2)] = 0.0f;  // a masked key's weight: its gradient is 0 even where dP is NaN
    dP[size_t(n / 2)] = NAN;
    double want_sum = 0;
    std::vector<double> want_y, want_ds;
    for (int64_t i = 0; i < n; ++i) {
      want_y.push_back(std::exp(double(x[size_t(i)]) - shift));
      want_sum += want_y.back();
      want_ds.push_back(P[size_t(i)] == 0.0f ? 0.0 : double(P[size_t(i)]) * (double(dP[size_t(i)]) - 0.25));
    }
    std::vector<std::vector<float>> ys;
    std::vector<float> sums, dots;
    double want_dot = 0, dot_scale = 0;  // Δ = Σ dO·O (dP and P stand in, the NaN left out)
    std::vector<float> dO = randn({n}, g).to_vector<float>();
    for (int64_t i = 0; i < n; ++i) want_dot += double(dO[size_t(i)]) * P[size_t(i)], dot_scale += std::abs(double(dO[size_t(i)]) * P[size_t(i)]);
    for_each_isa([&](const std::string& isa) {
      CAPTURE(isa);
      std::vector<float> y(static_cast<size_t>(n)), ds(static_cast<size_t>(n));
      sums.push_back(kernels::table().exp_sum(x.data(), shift, y.data(), n));
      ys.push_back(y);
      CHECK(close_or_same(y, want_y, 1e-7, 1e-6));
      CHECK(y[size_t(n / 2)] == 0.0f);
      CHECK(sums.back() == doctest::Approx(want_sum).epsilon(1e-6));
      kernels::table().softmax_grad(P.data(), dP.data(), 0.25f, ds.data(), n);
      CHECK(close_or_same(ds, want_ds, 1e-7, 1e-6));
      CHECK(ds[size_t(n / 2)] == 0.0f);
      dots.push_back(kernels::table().dot16(dO.data(), P.data(), n));
      CHECK(std::abs(dots.back() - want_dot) <= 1e-6 * dot_scale + 1e-30);
    });
    for (size_t i = 1; i < sums.size(); ++i) CHECK(sums[i] == sums[0]);
    for (size_t i = 1; i < dots.size(); ++i) CHECK(dots[i] == dots[0]);  // (no NaN here)
  }
}
