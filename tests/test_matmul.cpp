// matmul and linear through oneDNN, against a double-precision reference.
#include "helpers.h"

#include <omp.h>

#include <functional>
#include <string>
#include <thread>

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

TEST_CASE("linear: primitives are cached per shape") {
  Tensor x = ones({19, 23}), w = ones({29, 23});
  linear(x, w);
  size_t after_first = matmul_cache_size();
  for (int i = 0; i < 5; ++i) linear(ones({19, 23}), ones({29, 23}));
  CHECK(matmul_cache_size() == after_first);
  linear(ones({19, 23}), ones({31, 23}));  // a new shape: one more
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

namespace {
// One product of the stress test: its inputs, what loom computes from them
// and the double-precision reference (computed once, on one thread).
struct StressCase {
  std::string name;
  std::function<Tensor()> run;
  std::vector<double> ref;
  double atol;
};

// C = A · B + bias (bias optional) in double for 2-D views of any strides.
std::vector<double> mm_ref(const Tensor& a, const Tensor& b, const Tensor& bias = Tensor()) {
  Tensor a3 = a.contiguous().unsqueeze(0), b3 = b.contiguous().unsqueeze(0);
  std::vector<double> c = bmm_ref(a3, b3);
  if (bias.defined()) {
    auto bv = bias.to_vector<float>();
    for (size_t i = 0; i < c.size(); ++i) c[i] += bv[i % bv.size()];
  }
  return c;
}

// Every layout matmul handles: tall, wide, square, long k, vectors, strided
// and transposed views, copied (stepped) operands, batches with their own
// matrices, one shared matrix, broadcast batch dims, linear with and
// without bias. Sizes are not multiples of any kernel block.
std::vector<StressCase> stress_cases() {
  Generator g(45);
  std::vector<StressCase> cases;
  auto add = [&](std::string name, std::function<Tensor()> run, std::vector<double> ref, int64_t k) {
    cases.push_back({std::move(name), std::move(run), std::move(ref), 1e-5 * std::sqrt(double(k)) * 4});
  };
  {
    Tensor a = randn({2048, 128}, g), b = randn({128, 128}, g);
    add("2048x128 . 128x128", [=] { return matmul(a, b); }, mm_ref(a, b), 128);
  }
  {
    Tensor x = randn({514, 128}, g), w = randn({512, 128}, g), bias = randn({512}, g);
    add("linear 514x128 -> 512 + bias", [=] { return linear(x, w, bias); }, mm_ref(x, w.t(), bias), 128);
  }
  {
    Tensor x = randn({3, 37, 96}, g), w = randn({200, 96}, g);
    add("linear [3, 37, 96] -> 200", [=] { return linear(x, w); }, mm_ref(x.reshape({111, 96}), w.t()), 96);
  }
  {
    Tensor a = randn({600, 1500}, g), b = randn({1500, 70}, g);
    add("600x1500 . 1500x70", [=] { return matmul(a, b); }, mm_ref(a, b), 1500);
  }
  {
    Tensor a = randn({70, 700}, g), b = randn({700, 530}, g);
    add("70x700 . 700x530 (wide)", [=] { return matmul(a, b); }, mm_ref(a, b), 700);
  }
  {
    Tensor a = randn({16, 20000}, g), b = randn({20000, 16}, g);
    add("16x20000 . 20000x16 (long k)", [=] { return matmul(a, b); }, mm_ref(a, b), 20000);
  }
  {
    Tensor a = randn({256, 300}, g), b = randn({500, 256}, g);  // both used transposed
    add("300x256ᵀ-view . 256x500ᵀ-view", [=] { return matmul(a.t(), b.t()); }, mm_ref(a.t(), b.t()), 256);
  }
  {
    Tensor wide = randn({130, 402}, g), b = randn({201, 64}, g);
    Tensor stepped = wide.slice(0, 0, 130, 2).slice(1, 0, 402, 2);  // [65, 201], no unit stride
    add("stepped 65x201 . 201x64", [=] { return matmul(stepped, b); }, mm_ref(stepped, b), 201);
  }
  {
    Tensor v = randn({512}, g), b = randn({512, 300}, g), c = randn({300, 512}, g);
    add("vector 512 . 512x300", [=] { return matmul(v, b); }, mm_ref(v.unsqueeze(0), b), 512);
    add("300x512 . vector 512", [=] { return matmul(c, v); }, mm_ref(c, v.unsqueeze(1)), 512);
  }
  {
    Tensor a = randn({3, 70, 90}, g), b = randn({3, 90, 50}, g);
    add("batched [3, 70, 90] . [3, 90, 50]", [=] { return matmul(a, b); }, bmm_ref(a, b), 90);
  }
  {
    Tensor a = randn({4, 60, 64}, g), w = randn({64, 96}, g);
    add("batch . shared [4, 60, 64] . [64, 96]", [=] { return matmul(a, w); },
        bmm_ref(a, w.expand({4, 64, 96}).contiguous()), 64);
  }
  {
    Tensor s = randn({33, 40}, g), b = randn({5, 40, 77}, g);
    add("shared . batch [33, 40] . [5, 40, 77]", [=] { return matmul(s, b); },
        bmm_ref(s.expand({5, 33, 40}).contiguous(), b), 40);
  }
  {
    Tensor x = randn({2, 1, 40, 30}, g), y = randn({3, 30, 20}, g);
    add("broadcast batch [2, 1, 40, 30] . [3, 30, 20]", [=] { return matmul(x, y); },
        bmm_ref(x.expand({2, 3, 40, 30}).reshape({6, 40, 30}), y.expand({2, 3, 30, 20}).reshape({6, 30, 20})), 30);
  }
  {
    // Per-head products of attention: [b, h, i, d] views of a [b, i, h, d] tensor.
    Tensor q = randn({2, 100, 4, 32}, g), k = randn({2, 100, 4, 32}, g);
    Tensor qh = q.transpose(1, 2), kh = k.transpose(1, 2);
    add("heads [2, 4, 100, 32] . [2, 4, 32, 100] (strided batches)", [=] { return matmul(qh, kh.transpose(-2, -1)); },
        bmm_ref(qh.contiguous().reshape({8, 100, 32}), kh.transpose(-2, -1).contiguous().reshape({8, 32, 100})), 32);
  }
  return cases;
}

// Whether every element is within atol + 1e-4·|ref| of the reference.
bool matches(const Tensor& got, const StressCase& c) { return close_or_same(got.to_vector<float>(), c.ref, c.atol, 1e-4); }
}  // namespace

TEST_CASE("matmul and linear are right under any concurrency: every layout, from all threads at once, against double" *
          doctest::test_suite("thread-sweep")) {
  // oneDNN primitives are shared (cached) between threads; each execution
  // must have a scratchpad of its own, or concurrent runs corrupt each other.
  std::vector<StressCase> cases = stress_cases();
  // 1. One product at a time, threaded inside (1, 2 and more threads than
  //    cores); run twice, it gives the same bits.
  for (int threads : kThreadCounts) {
    WithThreads with(threads);
    for (const StressCase& c : cases) {
      CAPTURE(threads);
      CAPTURE(c.name);
      Tensor first = c.run();
      CHECK(matches(first, c));
      CHECK(first.to_vector<float>() == c.run().to_vector<float>());
    }
  }
  // 2. Every OpenMP thread runs all the products at once, each in its own
  //    order, several rounds.
  const int teams = 8, rounds = 4;
  std::vector<std::vector<std::string>> wrong(teams);
#pragma omp parallel num_threads(teams)
  {
    const int t = omp_get_thread_num();
    for (int r = 0; r < rounds; ++r)
      for (size_t i = 0; i < cases.size(); ++i) {
        const StressCase& c = cases[(i * 7 + size_t(t) * 3 + size_t(r)) % cases.size()];
        if (!matches(c.run(), c)) wrong[size_t(t)].push_back(c.name);
      }
  }
  // 3. Plain std::threads, each of which lets oneDNN use 2 OpenMP threads.
  std::vector<std::vector<std::string>> wrong_std(4);
  {
    std::vector<std::thread> pool;
    for (size_t t = 0; t < wrong_std.size(); ++t)
      pool.emplace_back([&, t] {
        omp_set_num_threads(2);
        for (int r = 0; r < rounds; ++r)
          for (size_t i = 0; i < cases.size(); ++i) {
            const StressCase& c = cases[(i * 5 + t) % cases.size()];
            if (!matches(c.run(), c)) wrong_std[t].push_back(c.name);
          }
      });
    for (auto& th : pool) th.join();
  }
  for (size_t t = 0; t < wrong.size(); ++t) {
    CAPTURE(t);
    INFO("wrong in OpenMP thread: ", (wrong[t].empty() ? std::string("-") : wrong[t].front()));
    CHECK(wrong[t].empty());
  }
  for (size_t t = 0; t < wrong_std.size(); ++t) {
    CAPTURE(t);
    INFO("wrong in std::thread: ", (wrong_std[t].empty() ? std::string("-") : wrong_std[t].front()));
    CHECK(wrong_std[t].empty());
  }
}
