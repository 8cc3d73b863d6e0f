// Reductions against scalar references, and their gradients.
#include <omp.h>

#include <cmath>

#include "helpers.h"

using namespace loom;

namespace {
using Inputs = std::vector<Tensor>;

// Reference reduction of a [d0, d1, d2] tensor over one dim, in double.
std::vector<double> reduce_ref(const Tensor& x, int64_t dim, const std::function<double(const std::vector<double>&)>& f) {
  Shape s = x.sizes();
  std::vector<float> v = x.to_vector<float>();
  std::vector<double> out;
  Shape o = s;
  o.erase(o.begin() + dim);
  for (int64_t i = 0; i < numel_of(o); ++i) {
    auto idx = unravel(i, o);
    std::vector<double> row;
    for (int64_t k = 0; k < s[size_t(dim)]; ++k) {
      auto full = idx;
      full.insert(full.begin() + dim, k);
      int64_t flat = 0;
      for (size_t d = 0; d < s.size(); ++d) flat = flat * s[d] + full[d];
      row.push_back(v[size_t(flat)]);
    }
    out.push_back(f(row));
  }
  return out;
}
double ref_sum(const std::vector<double>& r) { double s = 0; for (double v : r) s += v; return s; }
double ref_var(const std::vector<double>& r) {
  double m = ref_sum(r) / double(r.size()), s = 0;
  for (double v : r) s += (v - m) * (v - m);
  return s / double(r.size() - 1);
}
double ref_lse(const std::vector<double>& r) {
  double m = -INFINITY, s = 0;
  for (double v : r) m = std::max(m, v);
  for (double v : r) s += std::exp(v - m);
  return m + std::log(s);
}
}  // namespace

TEST_CASE("sum, var, logsumexp, max over each dim match references on every ISA") {
  Generator g(21);
  Tensor x = randn({5, 17, 33}, g) * 3.0f;
  for_each_isa([&](const std::string& isa) {
    for (int64_t d = 0; d < 3; ++d) {
      CAPTURE(isa);
      CAPTURE(d);
      CHECK(close_or_same(x.sum({d}).to_vector<float>(), reduce_ref(x, d, ref_sum), 1e-4, 1e-5));
      CHECK(close_or_same(var(x, {d}).to_vector<float>(), reduce_ref(x, d, ref_var), 1e-4, 1e-4));
      CHECK(close_or_same(logsumexp(x, {d}).to_vector<float>(), reduce_ref(x, d, ref_lse), 1e-5, 1e-5));
      auto [values, indices] = max(x, d);
      CHECK(close_or_same(values.to_vector<float>(),
                          reduce_ref(x, d, [](const std::vector<double>& r) { double m = -INFINITY; for (double v : r) m = std::max(m, v); return m; }),
                          0, 0));
      CHECK(indices.dtype() == kInt64);
      CHECK(indices.to_vector<int64_t>() == argmax(x, d).to_vector<int64_t>());
    }
  });
  // On a transposed view too.
  Tensor t = x.transpose(0, 2);  // [33, 17, 5]
  CHECK(close_or_same(t.sum({1}).to_vector<float>(), reduce_ref(t.contiguous(), 1, ref_sum), 1e-4, 1e-5));
}

TEST_CASE("max, min, argmax: first occurrence, NaN propagates, keepdim, overall") {
  Tensor x = tensor({1.0f, 5.0f, 5.0f, -2.0f}).reshape({2, 2});
  auto [v, i] = max(x, 1);
  CHECK(v.to_vector<float>() == std::vector<float>{5, 5});
  CHECK(i.to_vector<int64_t>() == std::vector<int64_t>{1, 0});
  auto [vk, ik] = min(x, 0, true);
  CHECK(vk.sizes() == Shape{1, 2});
  CHECK(vk.to_vector<float>() == std::vector<float>{1, -2});
  CHECK(argmin(x, 0).to_vector<int64_t>() == std::vector<int64_t>{0, 1});
  CHECK(max(x).item<float>() == 5.0f);
  CHECK(min(x).item<float>() == -2.0f);
  Tensor n = tensor({1.0f, NAN, 3.0f});
  CHECK(std::isnan(max(n).item<float>()));
  CHECK(argmax(n, 0).item<int64_t>() == 1);
  CHECK_THROWS_WITH_AS(max(zeros({2, 0}), 1), doctest::Contains("max: cannot reduce over dimension 1 of size 0"), Error);
}

TEST_CASE("sum is exact in order: the same bits for 1, 2 and 8 threads and every ISA, and accurate" *
          doctest::test_suite("thread-sweep")) {
  Generator g(22);
  Tensor x = rand({3000017}, g);  // one long row: fixed blocks in parallel
  Tensor rows = rand({64, 40001}, g);
  std::vector<std::vector<float>> results;
  for (int threads : kThreadCounts) {
    WithThreads with(threads);
    for_each_isa([&](const std::string&) {
      std::vector<float> r = {x.sum().item<float>()};
      std::vector<float> rs = rows.sum({1}).to_vector<float>();
      std::vector<float> cs = rows.sum({0}).to_vector<float>();
      r.insert(r.end(), rs.begin(), rs.end());
      r.insert(r.end(), cs.begin(), cs.end());
      results.push_back(r);
    });
  }
  for (const auto& r : results) CHECK(r == results.front());
  // Accuracy against a double sum.
  double ref = 0;
  for (float v : x.to_vector<float>()) ref += v;
  CHECK(std::abs(x.sum().item<float>() - ref) / ref < 1e-6);
}

TEST_CASE("cumsum") {
  Tensor x = arange(1, 7, kFloat32).reshape({2, 3});
  CHECK(cumsum(x, 1).to_vector<float>() == std::vector<float>{1, 3, 6, 4, 9, 15});
  CHECK(cumsum(x, 0).to_vector<float>() == std::vector<float>{1, 2, 3, 5, 7, 9});
  CHECK(cumsum(x.t(), -1).to_vector<float>() == std::vector<float>{1, 5, 2, 7, 3, 9});
}

TEST_CASE("reduction gradients") {
  Generator g(23);
  auto rg = [&](Shape s) { return randn(s, g).requires_grad_(); };
  for (bool keepdim : {false, true}) {
    CHECK_GRADCHECK([keepdim](const Inputs& x) { return var(x[0], {1}, 1, keepdim); }, {rg({3, 4, 2})});
    CHECK_GRADCHECK([keepdim](const Inputs& x) { return logsumexp(x[0], {0, 2}, keepdim); }, {rg({3, 4, 2})});
    CHECK_GRADCHECK([keepdim](const Inputs& x) { return std::get<0>(max(x[0], 1, keepdim)); }, {rg({3, 5})});
    CHECK_GRADCHECK([keepdim](const Inputs& x) { return std::get<0>(min(x[0], 0, keepdim)); }, {rg({3, 5})});
  }
  CHECK_GRADCHECK([](const Inputs& x) { return var(x[0], {}, 0); }, {rg({7})});
  CHECK_GRADCHECK([](const Inputs& x) { return max(x[0]); }, {rg({2, 3})});
  CHECK_GRADCHECK([](const Inputs& x) { return cumsum(x[0], 1); }, {rg({2, 5})});
  CHECK_GRADCHECK([](const Inputs& x) { return cumsum(x[0].t(), 0); }, {rg({3, 4})});
  CHECK_GRADCHECK([](const Inputs& x) { return x[0].sum({0, 1}); }, {rg({4, 3, 5})});  // leading-dims fast path
}

TEST_CASE("logsumexp of a row of -inf is -inf, not nan") {
  Tensor x = tensor({-INFINITY, -INFINITY, 0.0f, 1.0f}).reshape({2, 2});
  std::vector<float> r = logsumexp(x, {1}).to_vector<float>();
  CHECK(r[0] == -INFINITY);
  CHECK(std::abs(r[1] - float(std::log(1 + std::exp(1.0)))) < 1e-6);
}
