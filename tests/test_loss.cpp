// cross_entropy and mse_loss against double-precision references on every
// ISA (forward and backward), gradcheck, thread counts, errors.
#include "helpers.h"

#include <loom/ops/loss.h>

#include <omp.h>

#include <cmath>
#include <string>

using namespace loom;

namespace {
using Inputs = std::vector<Tensor>;

// PyTorch's cross_entropy in double, for logits with the class dim at `cd`
// (read with that dim moved last: rows of C) and one target per row.
// Returns the reduced loss (or per-row losses) and the gradient of
// Σ loss * gy in the moved layout; gy has one value per row for "none",
// else one value.
struct CeRef {
  std::vector<double> loss, dx;
};
CeRef ce_ref(const Tensor& logits, int64_t cd, const Tensor& target, int64_t ignore, double eps,
             const std::string& reduction, const std::vector<float>& gy) {
  const std::vector<float> x = logits.movedim(cd, -1).to_vector<float>();
  const std::vector<int64_t> t = target.to_vector<int64_t>();
  const size_t C = size_t(logits.size(cd));
  CeRef ref{{}, std::vector<double>(x.size(), 0.0)};
  double total = 0, counted = 0;
  for (size_t r = 0; r < t.size(); ++r) counted += t[r] != ignore;
  for (size_t r = 0; r < t.size(); ++r) {
    const float* row = &x[r * C];
    if (t[r] == ignore) {
      ref.loss.push_back(0);
      continue;
    }
    double m = -INFINITY, s = 0, mean_logp = 0;
    for (size_t c = 0; c < C; ++c) m = std::max(m, double(row[c]));
    for (size_t c = 0; c < C; ++c) s += std::exp(row[c] - m);
    const double lse = m + std::log(s);
    for (size_t c = 0; c < C; ++c) mean_logp += (row[c] - lse) / double(C);
    const double loss = -(1 - eps) * (row[t[r]] - lse) - eps * mean_logp;
    ref.loss.push_back(loss);
    total += loss;
    // d loss / d x_c = softmax_c - (1-ε)[c = t] - ε/C, times the gradient reaching this row.
    const double g = reduction == "none" ? gy[r] : reduction == "sum" ? gy[0] : gy[0] / counted;
    for (size_t c = 0; c < C; ++c)
      ref.dx[r * C + c] = g * (std::exp(row[c] - lse) - (1 - eps) * (c == size_t(t[r])) - eps / double(C));
  }
  if (reduction == "sum") ref.loss = {total};
  if (reduction == "mean") ref.loss = {total / counted};
  return ref;
}

// Runs cross_entropy forward and backward on a fresh leaf of `logits` and
// compares loss and gradient with ce_ref.
void check_ce(const Tensor& logits, const Tensor& target, int64_t ignore, double eps, const std::string& reduction,
              Generator& g) {
  CAPTURE(reduction);
  CAPTURE(eps);
  CAPTURE(ignore);
  const int64_t cd = logits.dim() == 1 ? 0 : 1;
  Tensor gy = reduction == "none" ? randn(target.sizes(), g) : scalar_tensor(0.7);
  Tensor x = logits.detach().requires_grad_();
  Tensor loss = cross_entropy(x, target, ignore, eps, reduction);
  CHECK(loss.sizes() == (reduction == "none" ? target.sizes() : Shape{}));
  CeRef ref = ce_ref(logits, cd, target, ignore, eps, reduction, gy.to_vector<float>());
  CHECK(close_or_same(loss.to_vector<float>(), ref.loss, 1e-5, 1e-5));
  loss.backward(gy);
  CHECK(x.grad().sizes() == logits.sizes());
  CHECK(close_or_same(x.grad().movedim(cd, -1).to_vector<float>(), ref.dx, 1e-5, 1e-5));
}

const char* const kReductions[] = {"mean", "sum", "none"};
}  // namespace

TEST_CASE("cross_entropy matches a double reference on every ISA: reductions, ignore_index, label smoothing") {
  Generator g(61);
  for (int64_t C : {1, 3, 7, 17, 33, 100}) {
    for (bool strided : {false, true}) {
      // strided: the logits are a transposed view (classes not contiguous).
      Tensor logits = strided ? (randn({C, 6}, g) * 3.0f).t() : randn({6, C}, g) * 3.0f;
      REQUIRE(logits.is_contiguous() == (!strided || C == 1));  // [1, 6] transposed is still contiguous
      // ignore_index -100 (the default), and 2, which for C > 2 is also a class.
      for (int64_t ignore : {int64_t(-100), int64_t(2)}) {
        std::vector<int64_t> t = randint(0, C, {6}, g).to_vector<int64_t>();
        t[1] = ignore;
        Tensor target = tensor(t);
        for_each_isa([&](const std::string& isa) {
          CAPTURE(isa);
          CAPTURE(C);
          CAPTURE(strided);
          for (double eps : {0.0, 0.1, 1.0})
            for (const char* reduction : kReductions) check_ce(logits, target, ignore, eps, reduction, g);
        });
      }
    }
  }
}

TEST_CASE("cross_entropy: classes on dim 1 with extra dims, and 1-D logits with a 0-d target") {
  Generator g(62);
  Tensor logits = randn({2, 3, 4, 5}, g).permute({0, 3, 1, 2});  // [N=2, C=5, 3, 4], not contiguous
  Tensor target = randint(0, 5, {2, 3, 4}, g);
  target.select(1, 1).select(1, 2).fill_(-100);  // two ignored positions
  Tensor one = randn({7}, g);
  for_each_isa([&](const std::string& isa) {
    CAPTURE(isa);
    for (const char* reduction : kReductions) {
      check_ce(logits, target, -100, 0.0, reduction, g);
      check_ce(logits, target, -100, 0.25, reduction, g);
      check_ce(one, scalar_tensor(4, kInt64), -100, 0.1, reduction, g);
    }
  });
}

TEST_CASE("cross_entropy with every target ignored: mean is nan, sum is 0, the gradient is 0") {
  Generator g(66);
  Tensor logits = randn({2, 3}, g).requires_grad_(), target = full({2}, -100, kInt64);
  CHECK(std::isnan(cross_entropy(logits, target).item<float>()));
  CHECK(std::isnan(cross_entropy(logits, target, -100, 0.1).item<float>()));
  CHECK(cross_entropy(logits, target, -100, 0.1, "sum").item<float>() == 0.0f);
  CHECK(cross_entropy(logits, target, -100, 0.0, "none").to_vector<float>() == std::vector<float>{0, 0});
  cross_entropy(logits, target).backward();
  CHECK(logits.grad().to_vector<float>() == std::vector<float>(6, 0.0f));
}

TEST_CASE("cross_entropy gradcheck on every ISA") {
  Generator g(63);
  Tensor target = tensor(std::vector<int64_t>{1, 0, 3, 2});
  Tensor with_ignored = tensor(std::vector<int64_t>{1, -1, 3});
  Tensor t3 = randint(0, 4, {2, 3}, g);
  for_each_isa([&](const std::string& isa) {
    CAPTURE(isa);
    for (const char* reduction : kReductions) {
      for (double eps : {0.0, 0.2}) {
        CAPTURE(reduction);
        CAPTURE(eps);
        CHECK_GRADCHECK([&](const Inputs& in) { return cross_entropy(in[0], target, -100, eps, reduction); },
                        {randn({4, 5}, g).requires_grad_()});
        CHECK_GRADCHECK([&](const Inputs& in) { return cross_entropy(in[0], with_ignored, -1, eps, reduction); },
                        {randn({3, 17}, g).requires_grad_()});
        CHECK_GRADCHECK([&](const Inputs& in) { return cross_entropy(in[0], t3, -100, eps, reduction); },
                        {randn({2, 4, 3}, g).requires_grad_()});
        CHECK_GRADCHECK([&](const Inputs& in) { return cross_entropy(in[0].t(), target, -100, eps, reduction); },
                        {randn({7, 4}, g).requires_grad_()});
      }
    }
  });
}

TEST_CASE("cross_entropy: right, and the same bits for 1, 2 and 8 threads" * doctest::test_suite("thread-sweep")) {
  Generator g(64);
  Tensor logits = randn({2048, 301}, g) * 2.0f;
  std::vector<int64_t> t = randint(0, 301, {2048}, g).to_vector<int64_t>();
  for (size_t r = 0; r < t.size(); r += 7) t[r] = -100;
  Tensor target = tensor(t);
  for (const char* reduction : kReductions) {
    CAPTURE(reduction);
    Tensor gy = std::string(reduction) == "none" ? randn({2048}, g) : scalar_tensor(1.0);
    const CeRef ref = ce_ref(logits, 1, target, -100, 0.1, reduction, gy.to_vector<float>());
    std::vector<std::vector<float>> runs;
    for (int threads : kThreadCounts) {
      WithThreads with(threads);
      CAPTURE(threads);
      Tensor x = logits.clone().requires_grad_();
      Tensor loss = cross_entropy(x, target, -100, 0.1, reduction);
      loss.backward(gy);
      CHECK(close_or_same(loss.to_vector<float>(), ref.loss, 1e-5, 1e-5));
      CHECK(close_or_same(x.grad().to_vector<float>(), ref.dx, 1e-6, 1e-4));
      std::vector<float> v = x.grad().to_vector<float>(), l = loss.to_vector<float>();
      v.insert(v.end(), l.begin(), l.end());
      runs.push_back(v);
    }
    for (const auto& r : runs) CHECK(r == runs.front());
  }
}

TEST_CASE("cross_entropy keeps its own copy of the target for the backward") {
  Generator g(67);
  Tensor logits = randn({3, 4}, g);
  Tensor target = tensor(std::vector<int64_t>{0, 3, 1});
  Tensor x = logits.detach().requires_grad_();
  Tensor loss = cross_entropy(x, target);
  target.fill_(1000000);  // out of range now; the backward must not read it
  loss.backward();
  CeRef ref = ce_ref(logits, 1, tensor(std::vector<int64_t>{0, 3, 1}), -100, 0.0, "mean", {1.0f});
  CHECK(close_or_same(x.grad().to_vector<float>(), ref.dx, 1e-5, 1e-5));
}

namespace {
// (a - b)² over the broadcast shape, reduced, and the gradients of
// Σ loss * gy for a and b (gy: one value per element for "none", else one).
struct MseRef {
  std::vector<double> loss, da, db;
};
MseRef mse_ref(const Tensor& a, const Tensor& b, const Shape& shape, const std::string& reduction,
               const std::vector<float>& gy) {
  const std::vector<float> A = a.to_vector<float>(), B = b.to_vector<float>();
  const int64_t N = numel_of(shape);
  MseRef ref{{}, std::vector<double>(A.size()), std::vector<double>(B.size())};
  double total = 0;
  for (int64_t i = 0; i < N; ++i) {
    std::vector<int64_t> idx = unravel(i, shape);
    const int64_t ia = ravel_broadcast(idx, a.sizes()), ib = ravel_broadcast(idx, b.sizes());
    const double d = double(A[size_t(ia)]) - B[size_t(ib)];
    ref.loss.push_back(d * d);
    total += d * d;
    const double g = reduction == "none" ? gy[size_t(i)] : reduction == "sum" ? gy[0] : gy[0] / double(N);
    ref.da[size_t(ia)] += 2 * d * g;
    ref.db[size_t(ib)] -= 2 * d * g;
  }
  if (reduction == "sum") ref.loss = {total};
  if (reduction == "mean") ref.loss = {total / double(N)};
  return ref;
}
}  // namespace

TEST_CASE("mse_loss matches a double reference on every ISA, broadcasting as PyTorch") {
  Generator g(65);
  struct Case {
    Tensor a, b;
    Shape shape;  // what they broadcast to
  };
  std::vector<Case> cases = {
      {randn({7, 17}, g), randn({7, 17}, g), {7, 17}},
      {randn({17, 7}, g).t(), randn({33}, g).slice(0, 0, 33, 2).unsqueeze(0), {7, 17}},  // strided views
      {randn({3, 1, 5}, g), randn({4, 5}, g), {3, 4, 5}},
      {randn({1}, g), randn({2, 3}, g), {2, 3}},
  };
  for (const Case& c : cases) {
    CAPTURE(c.shape);
    for_each_isa([&](const std::string& isa) {
      CAPTURE(isa);
      for (const char* reduction : kReductions) {
        CAPTURE(reduction);
        Tensor gy = std::string(reduction) == "none" ? randn(c.shape, g) : scalar_tensor(0.7);
        MseRef ref = mse_ref(c.a, c.b, c.shape, reduction, gy.to_vector<float>());
        Tensor a = c.a.detach().requires_grad_(), b = c.b.detach().requires_grad_();
        Tensor loss = mse_loss(a, b, reduction);
        CHECK(loss.sizes() == (std::string(reduction) == "none" ? c.shape : Shape{}));
        CHECK(close_or_same(loss.to_vector<float>(), ref.loss, 1e-5, 1e-5));
        loss.backward(gy);
        CHECK(a.grad().sizes() == c.a.sizes());
        CHECK(b.grad().sizes() == c.b.sizes());
        CHECK(close_or_same(a.grad().to_vector<float>(), ref.da, 1e-5, 1e-5));
        CHECK(close_or_same(b.grad().to_vector<float>(), ref.db, 1e-5, 1e-5));
      }
    });
  }
  // The numbers of torch.nn.functional.mse_loss([1, 2, 3], [1, 0, 6]).
  Tensor a = tensor({1.0f, 2.0f, 3.0f}), b = tensor({1.0f, 0.0f, 6.0f});
  CHECK(mse_loss(a, b).item<float>() == doctest::Approx(13.0 / 3));
  CHECK(mse_loss(a, b, "sum").item<float>() == 13.0f);
  CHECK(mse_loss(a, b, "none").to_vector<float>() == std::vector<float>{0, 4, 9});
}

TEST_CASE("mse_loss gradcheck, both inputs, broadcast") {
  Generator g(68);
  for (const char* reduction : kReductions) {
    CAPTURE(reduction);
    CHECK_GRADCHECK([&](const Inputs& in) { return mse_loss(in[0], in[1], reduction); },
                    {randn({3, 4}, g).requires_grad_(), randn({4}, g).requires_grad_()});
    CHECK_GRADCHECK([&](const Inputs& in) { return mse_loss(in[0].t(), in[1], reduction); },
                    {randn({5, 2}, g).requires_grad_(), randn({2, 1}, g).requires_grad_()});
  }
}

TEST_CASE("loss errors name the values and shapes") {
  CHECK_THROWS_WITH_AS(cross_entropy(ones({2, 3}), tensor(std::vector<int64_t>{0, 3})),
                       "cross_entropy: target 3 is out of bounds for 3 classes (at flat index 1)", Error);
  CHECK_THROWS_WITH_AS(cross_entropy(ones({2, 3}), tensor(std::vector<int64_t>{-1, 0})),
                       "cross_entropy: target -1 is out of bounds for 3 classes (at flat index 0)", Error);
  // -100 is only ignored when it is the ignore_index.
  CHECK_THROWS_WITH_AS(cross_entropy(ones({2, 3}), tensor(std::vector<int64_t>{-100, 0}), -1),
                       "cross_entropy: target -100 is out of bounds for 3 classes (at flat index 0)", Error);
  CHECK_THROWS_WITH_AS(cross_entropy(ones({2, 3, 2}), tensor(std::vector<int64_t>{0, 1, 3, 0}).view({2, 2})),
                       "cross_entropy: target 3 is out of bounds for 3 classes (at flat index 2)", Error);
  CHECK_THROWS_WITH_AS(cross_entropy(ones({2, 3}), tensor(std::vector<int64_t>{0})),
                       "cross_entropy: target of shape [1] does not match logits of shape [2, 3] (expected target shape [2])",
                       Error);
  CHECK_THROWS_WITH_AS(cross_entropy(ones({2, 3, 4}), zeros({2, 3}, kInt64)),
                       "cross_entropy: target of shape [2, 3] does not match logits of shape [2, 3, 4] (expected target "
                       "shape [2, 4])",
                       Error);
  CHECK_THROWS_WITH_AS(cross_entropy(ones({2, 3}), ones({2})),
                       "cross_entropy: target must be int64 class indices, got float32", Error);
  CHECK_THROWS_WITH_AS(cross_entropy(arange(6).view({2, 3}), zeros({2}, kInt64)),
                       "cross_entropy: logits must be float32, got int64", Error);
  CHECK_THROWS_WITH_AS(cross_entropy(scalar_tensor(1.0), zeros({}, kInt64)),
                       "cross_entropy: logits must have a class dimension, got shape []", Error);
  CHECK_THROWS_WITH_AS(cross_entropy(ones({2, 3}), zeros({2}, kInt64), -100, 1.5),
                       "cross_entropy: label_smoothing must be in [0, 1], got 1.5", Error);
  CHECK_THROWS_WITH_AS(cross_entropy(ones({2, 3}), zeros({2}, kInt64), -100, 0.0, "avg"),
                       "cross_entropy: reduction must be 'mean', 'sum' or 'none', got 'avg'", Error);
  CHECK_THROWS_WITH_AS(mse_loss(ones({2}), ones({2}), "avg"),
                       "mse_loss: reduction must be 'mean', 'sum' or 'none', got 'avg'", Error);
  CHECK_THROWS_WITH_AS(mse_loss(ones({2, 3}), ones({4})),
                       "mse_loss: shapes [2, 3] and [4] cannot be broadcast together (3 vs 4 at dimension -1)", Error);
  CHECK_THROWS_WITH_AS(mse_loss(ones({2}), arange(2)), "mse_loss: expects float32 input and target, got float32 and int64",
                       Error);
}
