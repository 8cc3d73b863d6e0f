// Every op's backward against central finite differences, and the checker
// itself catching a wrong backward rule.
#include "helpers.h"

using namespace loom;

namespace {
using Inputs = std::vector<Tensor>;

Tensor rg(Shape shape, uint64_t seed, float shift = 0.0f) {
  Generator g(seed);
  return (randn(shape, g) + shift).requires_grad_();
}
}  // namespace

TEST_CASE("gradcheck: elementwise ops, with broadcasting") {
  CHECK_GRADCHECK([](const Inputs& x) { return add(x[0], x[1]); }, {rg({2, 3}, 1), rg({3}, 2)});
  CHECK_GRADCHECK([](const Inputs& x) { return sub(x[0], x[1]); }, {rg({2, 1}, 3), rg({1, 4}, 4)});
  CHECK_GRADCHECK([](const Inputs& x) { return mul(x[0], x[1]); }, {rg({3, 1, 2}, 5), rg({4, 1}, 6)});
  CHECK_GRADCHECK([](const Inputs& x) { return div(x[0], x[1]); }, {rg({2, 3}, 7), rg({3}, 8, 4.0f)});
  CHECK_GRADCHECK([](const Inputs& x) { return neg(x[0]); }, {rg({5}, 9)});
  CHECK_GRADCHECK([](const Inputs& x) { return x[0] * 3.0f - 1.0f / (x[0] + 5.0f); }, {rg({4}, 10)});
}

TEST_CASE("gradcheck: relu away from its kink") {
  // Finite differences are wrong within eps of 0, so keep inputs away from it.
  Tensor x = tensor({-2.0f, -0.5f, 0.3f, 1.7f, -1.1f, 0.9f}).reshape({2, 3}).requires_grad_();
  CHECK_GRADCHECK([](const Inputs& in) { return relu(in[0]); }, {x});
}

TEST_CASE("gradcheck: matmul, every torch.matmul case") {
  std::vector<std::pair<Shape, Shape>> cases = {
      {{3}, {3}}, {{3}, {3, 2}}, {{2, 3}, {3}}, {{2, 3}, {3, 4}}, {{2, 2, 3}, {3, 4}}, {{2, 1, 2, 3}, {3, 3, 2}}};
  uint64_t seed = 20;
  for (const auto& shapes : cases) {
    const Shape &a = shapes.first, &b = shapes.second;
    CAPTURE(shape_str(a));
    CAPTURE(shape_str(b));
    CHECK_GRADCHECK([](const Inputs& x) { return matmul(x[0], x[1]); }, {rg(a, seed++), rg(b, seed++)});
  }
  // Transposed (non-contiguous) operands.
  CHECK_GRADCHECK([](const Inputs& x) { return matmul(x[0].t(), x[1].t()); }, {rg({3, 2}, 40), rg({4, 3}, 41)});
}

TEST_CASE("gradcheck: sum and mean over dims") {
  for (bool keepdim : {false, true}) {
    CHECK_GRADCHECK([keepdim](const Inputs& x) { return x[0].sum({1}, keepdim); }, {rg({2, 3, 4}, 50)});
    CHECK_GRADCHECK([keepdim](const Inputs& x) { return x[0].sum({0, -1}, keepdim); }, {rg({2, 3, 4}, 51)});
    CHECK_GRADCHECK([keepdim](const Inputs& x) { return x[0].mean({2}, keepdim); }, {rg({2, 3, 4}, 52)});
  }
  CHECK_GRADCHECK([](const Inputs& x) { return x[0].sum(); }, {rg({3, 2}, 53)});
  CHECK_GRADCHECK([](const Inputs& x) { return x[0].mean(); }, {rg({3, 2}, 54)});
  CHECK_GRADCHECK([](const Inputs& x) { return sum_to(x[0], {3, 1}); }, {rg({2, 3, 4}, 55)});
}

TEST_CASE("gradcheck: views") {
  CHECK_GRADCHECK([](const Inputs& x) { return x[0].permute({2, 0, 1}) * 2.0f; }, {rg({2, 3, 4}, 60)});
  CHECK_GRADCHECK([](const Inputs& x) { return x[0].t().reshape({-1}); }, {rg({2, 3}, 61)});
  CHECK_GRADCHECK([](const Inputs& x) { return x[0].slice(1, 1, 4, 2); }, {rg({2, 5}, 62)});
  CHECK_GRADCHECK([](const Inputs& x) { return x[0].select(0, -1); }, {rg({3, 2}, 63)});
  CHECK_GRADCHECK([](const Inputs& x) { return x[0].narrow(1, 1, 2).expand({3, 2, 2}); }, {rg({2, 3}, 64)});
  CHECK_GRADCHECK([](const Inputs& x) { return x[0].unsqueeze(1).squeeze(); }, {rg({4}, 65)});
  CHECK_GRADCHECK([](const Inputs& x) { return x[0].flatten(); }, {rg({2, 2, 2}, 66)});
  CHECK_GRADCHECK([](const Inputs& x) { return x[0].clone() * x[0].contiguous(); }, {rg({3}, 67)});
}

TEST_CASE("gradcheck: a 2-layer MLP end to end") {
  CHECK_GRADCHECK(
      [](const Inputs& p) {
        Tensor h = relu(p[0].matmul(p[1]) + p[2]);
        return (h.matmul(p[3])).mean({0});
      },
      {rg({5, 3}, 70), rg({3, 4}, 71), rg({4}, 72, 0.5f), rg({4, 2}, 73)});
}

TEST_CASE("gradcheck catches a deliberately wrong backward and names the worst element") {
  // square(x) = x^2 with the backward rule forgetting the factor 2.
  auto wrong_square = [](const Inputs& in) {
    const Tensor& x = in[0];
    Tensor out;
    {
      NoGradGuard guard;
      out = x * x;
    }
    record("wrong_square", {x}, out, [x](const Tensor& g) { return Grads{g * x}; });
    return out;
  };
  Tensor x = tensor({1.0f, -2.0f, 3.0f}).requires_grad_();
  GradcheckResult r = gradcheck(wrong_square, {x});
  CHECK_FALSE(r.passed);
  CHECK(r.worst_excess > 0);
  CHECK(r.report.find("input 0") != std::string::npos);
  CHECK(r.report.find("autograd") != std::string::npos);
  // The same op with the right rule passes.
  auto right_square = [](const Inputs& in) {
    const Tensor& x = in[0];
    Tensor out;
    {
      NoGradGuard guard;
      out = x * x;
    }
    record("square", {x}, out, [x](const Tensor& g) { return Grads{g * x * 2.0f}; });
    return out;
  };
  CHECK(gradcheck(right_square, {x}).passed);
  // And the caller's tensor is untouched.
  CHECK_FALSE(x.grad().defined());
}

TEST_CASE("gradcheck skips inputs that do not require grad") {
  Tensor a = rg({3}, 80), b = ones({3});
  GradcheckResult r = gradcheck([](const Inputs& x) { return x[0] * x[1]; }, {a, b});
  CHECK(r.passed);
  GradcheckResult none = gradcheck([](const Inputs& x) { return x[0] * 2.0f; }, {ones({2})});
  CHECK(none.report.find("no input requires grad") != std::string::npos);
}
