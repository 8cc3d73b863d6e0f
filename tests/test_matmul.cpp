// matmul and linear through oneDNN, against a double-precision reference.
#include "helpers.h"

#include <omp.h>

using namespace loom;

namespace {
using Inputs = std::vector<Tensor>;

// C[p, i, j] = Σ_k A[p, i, k] B[p, k, j] for 3-D contiguous inputs, in double.
std::vector<double> bmm_ref(const Tensor& a, const Tensor& b) {
  auto av = a.contiguous().to_vector<float>(), bv = b.contiguous().to_vector<float>();
  int64_t P = a.size(0), m = a.size(1), k = a.size(2), n = b.size(2);
  std::vector<double> c;
  for (int64_t p = 0; p < P; ++p)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0;
        for (int64_t kk = 0; kk < k; ++kk) acc += double(av[size_t((p * m + i) * k + kk)]) * bv[size_t((p * k + kk) * n + j)];
        c.push_back(acc);
      }
  return c;
}
}  // namespace

TEST_CASE("matmul: awkward sizes against a double reference") {
  Generator g(41);
  for (int64_t m : {1, 7, 33})
    for (int64_t k : {1, 17, 65})
      for (int64_t n : {1, 9, 33}) {
        Tensor a = randn({2, m, k}, g), b = randn({2, k, n}, g);
        CAPTURE(m);
        CAPTURE(k);
        CAPTURE(n);
        CHECK(close_or_same(matmul(a, b).to_vector<float>(), bmm_ref(a, b), 1e-4, 1e-4));
      }
}

TEST_CASE("matmul: strided, transposed and broadcast operands") {
  Generator g(42);
  Tensor a = randn({3, 5, 8}, g), b = randn({3, 8, 6}, g);
  auto expected = bmm_ref(a, b);
  // Transposed storage: a stored as [3, 8, 5], b as [3, 6, 8].
  Tensor at = a.transpose(1, 2).contiguous().transpose(1, 2), bt = b.transpose(1, 2).contiguous().transpose(1, 2);
  CHECK_FALSE(at.is_contiguous());
  CHECK(close_or_same(matmul(at, bt).to_vector<float>(), expected, 1e-4, 1e-4));
  // A stepped slice (no unit stride in either dim) is copied first.
  Tensor wide = randn({3, 10, 16}, g);
  Tensor stepped = wide.slice(1, 0, 10, 2).slice(2, 0, 16, 2);  // [3, 5, 8]
  CHECK(close_or_same(matmul(stepped, b).to_vector<float>(), bmm_ref(stepped.contiguous(), b), 1e-4, 1e-4));
  // One matrix shared by the batch, on either side.
  Tensor w = randn({8, 6}, g);
  CHECK(close_or_same(matmul(a, w).to_vector<float>(), bmm_ref(a, w.expand({3, 8, 6}).contiguous()), 1e-4, 1e-4));
  Tensor s = randn({5, 8}, g);
  CHECK(close_or_same(matmul(s, b).to_vector<float>(), bmm_ref(s.expand({3, 5, 8}).contiguous(), b), 1e-4, 1e-4));
  // Batch dims that broadcast against each other: [2, 1] x [3].
  Tensor x = randn({2, 1, 4, 8}, g), y = randn({3, 8, 2}, g);
  Tensor out = matmul(x, y);
  REQUIRE(out.sizes() == Shape{2, 3, 4, 2});
  CHECK(close_or_same(out.reshape({6, 4, 2}).to_vector<float>(),
                      bmm_ref(x.expand({2, 3, 4, 8}).reshape({6, 4, 8}), y.expand({2, 3, 8, 2}).reshape({6, 8, 2})),
                      1e-4, 1e-4));
}

TEST_CASE("matmul: primitives are cached per shape") {
  Tensor a = ones({19, 23}), b = ones({23, 29});
  matmul(a, b);
  size_t after_first = matmul_cache_size();
  for (int i = 0; i < 5; ++i) matmul(ones({19, 23}), ones({23, 29}));
  CHECK(matmul_cache_size() == after_first);
  matmul(ones({19, 23}), ones({23, 31}));  // a new shape: one more
  CHECK(matmul_cache_size() == after_first + 1);
}

TEST_CASE("linear matches x Wᵀ + b and its gradients") {
  Generator g(43);
  Tensor x = randn({2, 3, 17}, g), w = randn({9, 17}, g), b = randn({9}, g);
  Tensor y = linear(x, w, b);
  REQUIRE(y.sizes() == Shape{2, 3, 9});
  std::vector<double> ref = bmm_ref(x.reshape({1, 6, 17}), w.t().unsqueeze(0));
  auto bv = b.to_vector<float>();
  for (size_t i = 0; i < ref.size(); ++i) ref[i] += bv[i % 9];
  CHECK(close_or_same(y.to_vector<float>(), ref, 1e-4, 1e-4));
  CHECK(close_or_same(linear(x, w).to_vector<float>(), bmm_ref(x.reshape({1, 6, 17}), w.t().unsqueeze(0)), 1e-4, 1e-4));
  auto rg = [&](Shape s) { return randn(s, g).requires_grad_(); };
  CHECK_GRADCHECK([](const Inputs& in) { return linear(in[0], in[1], in[2]); }, {rg({2, 3, 4}), rg({5, 4}), rg({5})});
  CHECK_GRADCHECK([](const Inputs& in) { return linear(in[0], in[1]); }, {rg({4}), rg({3, 4})});
  CHECK_GRADCHECK([](const Inputs& in) { return linear(in[0].t(), in[1]); }, {rg({4, 3}), rg({2, 4})});
}

TEST_CASE("matmul gradients through oneDNN, including broadcast batches") {
  Generator g(44);
  auto rg = [&](Shape s) { return randn(s, g).requires_grad_(); };
  CHECK_GRADCHECK([](const Inputs& in) { return matmul(in[0], in[1]); }, {rg({2, 1, 3, 4}), rg({3, 4, 2})});
  CHECK_GRADCHECK([](const Inputs& in) { return matmul(in[0].transpose(-1, -2), in[1]); }, {rg({2, 4, 3}), rg({4, 5})});
}

TEST_CASE("matmul and linear errors") {
  CHECK_THROWS_WITH_AS(linear(ones({2, 3}), ones({4, 5})),
                       "linear: input of shape [2, 3] does not match weight of shape [4, 5] (3 != 5)", Error);
  CHECK_THROWS_WITH_AS(linear(ones({2, 3}), ones({4, 3}), ones({5})),
                       "linear: bias must be float32 of shape [4], got float32 [5]", Error);
  CHECK_THROWS_WITH_AS(linear(ones({2, 3}), ones({3})),
                       "linear: weight must be 2-D [out_features, in_features], got [3]", Error);
  CHECK_THROWS_WITH_AS(matmul(scalar_tensor(1.0), ones({2})), doctest::Contains("at least 1 dimension"), Error);
}

TEST_CASE("matmul and linear give the same bits for 1 and 2 threads") {
  // oneDNN left to itself may split the k sum between threads; loom cuts the
  // output into fixed strips instead, so the sums never depend on threads.
  const int saved_threads = omp_get_max_threads();
  Generator g(44);
  // Tall (cut by rows), wide (cut by columns) and batched, with sizes that
  // are not multiples of the strip; k large enough to tempt a k split.
  Tensor a = randn({600, 1500}, g), b = randn({1500, 70}, g);
  Tensor c = randn({70, 1500}, g), d = randn({1500, 530}, g);
  Tensor e = randn({3, 300, 400}, g), f = randn({3, 400, 90}, g);
  Tensor w = randn({300, 1500}, g), bias = randn({300}, g);
  // Small output, long sum: left alone, oneDNN splits k between 2 threads here.
  Tensor h = randn({16, 50000}, g), l = randn({50000, 16}, g);
  std::vector<std::vector<float>> runs;
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    std::vector<float> all;
    for (const Tensor& t : {matmul(a, b), matmul(c, d), matmul(e, f), linear(a, w, bias), matmul(h, l)}) {
      auto v = t.to_vector<float>();
      all.insert(all.end(), v.begin(), v.end());
    }
    runs.push_back(all);
  }
  omp_set_num_threads(saved_threads);
  CHECK(runs[0] == runs[1]);
  // And the strips agree with the unsplit reference.
  CHECK(close_or_same(matmul(e, f).to_vector<float>(), bmm_ref(e, f), 1e-3, 1e-4));
}
