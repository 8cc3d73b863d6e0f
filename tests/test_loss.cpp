// cross_entropy and mse_loss against double references; gradients.
#include <omp.h>

#include <cmath>

#include "helpers.h"

using namespace loom;

namespace {
using Inputs = std::vector<Tensor>;

// Per-row losses of [rows, C] logits, PyTorch's definition, in double.
std::vector<double> ce_ref(const Tensor& logits, const std::vector<int64_t>& t, int64_t ignore, double eps) {
  auto x = logits.contiguous().to_vector<float>();
  int64_t C = logits.size(1);
  std::vector<double> out;
  for (size_t r = 0; r < t.size(); ++r) {
    if (t[r] == ignore) { out.push_back(0); continue; }
    double m = -INFINITY, s = 0, mean_logp = 0;
    for (int64_t c = 0; c < C; ++c) m = std::max(m, double(x[r * size_t(C) + size_t(c)]));
    for (int64_t c = 0; c < C; ++c) s += std::exp(x[r * size_t(C) + size_t(c)] - m);
    double lse = m + std::log(s);
    for (int64_t c = 0; c < C; ++c) mean_logp += (x[r * size_t(C) + size_t(c)] - lse) / double(C);
    out.push_back((1 - eps) * (lse - x[r * size_t(C) + size_t(t[r])]) - eps * mean_logp);
  }
  return out;
}
}  // namespace

TEST_CASE("cross_entropy matches PyTorch's definition: reductions, ignore_index, label smoothing") {
  Generator g(61);
  for (int64_t C : {1, 3, 17, 100}) {
    Tensor logits = randn({7, C}, g) * 3.0f;
    std::vector<int64_t> t = randint(0, C, {7}, g).to_vector<int64_t>();
    t[2] = -100;  // ignored
    Tensor target = tensor(t);
    for (double eps : {0.0, 0.1}) {
      std::vector<double> per_row = ce_ref(logits, t, -100, eps);
      double total = 0;
      for (double v : per_row) total += v;
      for_each_isa([&](const std::string& isa) {
        CAPTURE(isa);
        CAPTURE(C);
        CAPTURE(eps);
        CHECK(close_or_same(cross_entropy(logits, target, -100, eps, "none").to_vector<float>(), per_row, 1e-5, 1e-5));
        CHECK(close_or_same(cross_entropy(logits, target, -100, eps, "sum").to_vector<float>(), {total}, 1e-4, 1e-5));
        CHECK(close_or_same(cross_entropy(logits, target, -100, eps).to_vector<float>(), {total / 6}, 1e-5, 1e-5));
      });
    }
  }
}

TEST_CASE("cross_entropy: classes on dim 1 with extra dims, and 1-D logits") {
  Generator g(62);
  Tensor logits = randn({2, 5, 3}, g);       // [N, C, d1]
  Tensor target = randint(0, 5, {2, 3}, g);  // [N, d1]
  Tensor flat = logits.permute({0, 2, 1}).reshape({6, 5});
  CHECK(close_or_same(cross_entropy(logits, target, -100, 0, "none").reshape({6}).to_vector<float>(),
                      ce_ref(flat, target.reshape({6}).to_vector<int64_t>(), -100, 0), 1e-5, 1e-5));
  Tensor one = randn({4}, g);
  CHECK(close_or_same(cross_entropy(one, scalar_tensor(2, kInt64)).to_vector<float>(),
                      ce_ref(one.unsqueeze(0), {2}, -100, 0), 1e-5, 1e-5));
  // Every target ignored: the mean is 0/0 = nan, as in PyTorch.
  CHECK(std::isnan(cross_entropy(randn({2, 3}, g), full({2}, -100, kInt64)).item<float>()));
}

TEST_CASE("cross_entropy gradients") {
  Generator g(63);
  Tensor target = tensor(std::vector<int64_t>{1, 0, 3, 2});
  for (const char* reduction : {"mean", "sum", "none"}) {
    for (double eps : {0.0, 0.2}) {
      CAPTURE(reduction);
      CHECK_GRADCHECK([&](const Inputs& in) { return cross_entropy(in[0], target, -100, eps, reduction); },
                      {randn({4, 5}, g).requires_grad_()});
    }
  }
  Tensor with_ignored = tensor(std::vector<int64_t>{1, -1, 3});
  CHECK_GRADCHECK([&](const Inputs& in) { return cross_entropy(in[0], with_ignored, -1); }, {randn({3, 4}, g).requires_grad_()});
  Tensor t2 = randint(0, 4, {2, 3}, g);
  CHECK_GRADCHECK([&](const Inputs& in) { return cross_entropy(in[0], t2); }, {randn({2, 4, 3}, g).requires_grad_()});
}

TEST_CASE("cross_entropy is the same for 1 and 2 threads") {
  Generator g(64);
  Tensor logits = randn({2048, 300}, g);
  Tensor target = randint(0, 300, {2048}, g);
  std::vector<float> r;
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    Tensor x = logits.clone().requires_grad_();
    Tensor loss = cross_entropy(x, target, -100, 0.1);
    loss.backward();
    std::vector<float> v = x.grad().to_vector<float>();
    v.push_back(loss.item<float>());
    if (r.empty()) r = v;
    else CHECK(v == r);
  }
}

TEST_CASE("mse_loss") {
  Tensor a = tensor({1.0f, 2.0f, 3.0f}), b = tensor({1.0f, 0.0f, 6.0f});
  CHECK(mse_loss(a, b).item<float>() == doctest::Approx(13.0 / 3));
  CHECK(mse_loss(a, b, "sum").item<float>() == 13.0f);
  CHECK(mse_loss(a, b, "none").to_vector<float>() == std::vector<float>{0, 4, 9});
  Generator g(65);
  CHECK_GRADCHECK([](const Inputs& in) { return mse_loss(in[0], in[1]); },
                  {randn({3, 4}, g).requires_grad_(), randn({4}, g).requires_grad_()});
}

TEST_CASE("loss errors name the values") {
  CHECK_THROWS_WITH_AS(cross_entropy(ones({2, 3}), tensor(std::vector<int64_t>{0, 3})),
                       "cross_entropy: target 3 is out of bounds for 3 classes (at flat index 1)", Error);
  CHECK_THROWS_WITH_AS(cross_entropy(ones({2, 3}), tensor(std::vector<int64_t>{0})),
                       "cross_entropy: target of shape [1] does not match logits of shape [2, 3] (expected target shape [2])",
                       Error);
  CHECK_THROWS_WITH_AS(cross_entropy(ones({2, 3}), ones({2})), "cross_entropy: target must be int64 class indices, got float32",
                       Error);
  CHECK_THROWS_WITH_AS(mse_loss(ones({2}), ones({2}), "avg"), "mse_loss: reduction must be 'mean', 'sum' or 'none', got 'avg'",
                       Error);
}
