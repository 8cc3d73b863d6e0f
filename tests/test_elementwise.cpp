// The elementwise ops against scalar references (std:: math in double), on
// every instruction set, awkward lengths, views and broadcasts; and their
// gradients.
#include <cmath>
#include <limits>

#include <omp.h>

#include "helpers.h"

using namespace loom;

namespace {
using Inputs = std::vector<Tensor>;

double gelu_ref(double x) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); }
double gelu_tanh_ref(double x) {
  return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
}

struct UnaryCase {
  const char* name;
  std::function<Tensor(const Tensor&)> op;
  std::function<double(double)> ref;
  float lo, hi;  // input range
};

std::vector<UnaryCase> unary_cases() {
  return {
      {"neg", [](const Tensor& x) { return neg(x); }, [](double x) { return -x; }, -5, 5},
      {"abs", [](const Tensor& x) { return abs(x); }, [](double x) { return std::abs(x); }, -5, 5},
      {"exp", [](const Tensor& x) { return exp(x); }, [](double x) { return std::exp(x); }, -20, 20},
      {"log", [](const Tensor& x) { return log(x); }, [](double x) { return std::log(x); }, 1e-3f, 100},
      {"sqrt", [](const Tensor& x) { return sqrt(x); }, [](double x) { return std::sqrt(x); }, 0, 100},
      {"rsqrt", [](const Tensor& x) { return rsqrt(x); }, [](double x) { return 1 / std::sqrt(x); }, 1e-2f, 100},
      {"tanh", [](const Tensor& x) { return tanh(x); }, [](double x) { return std::tanh(x); }, -10, 10},
      {"sigmoid", [](const Tensor& x) { return sigmoid(x); }, [](double x) { return 1 / (1 + std::exp(-x)); }, -30, 30},
      {"relu", [](const Tensor& x) { return relu(x); }, [](double x) { return x > 0 ? x : 0; }, -5, 5},
      {"gelu", [](const Tensor& x) { return gelu(x); }, gelu_ref, -8, 8},
      {"gelu_tanh", [](const Tensor& x) { return gelu(x, "tanh"); }, gelu_tanh_ref, -8, 8},
      {"silu", [](const Tensor& x) { return silu(x); }, [](double x) { return x / (1 + std::exp(-x)); }, -20, 20},
      {"softplus", [](const Tensor& x) { return softplus(x); },
       [](double x) { return x > 20 ? x : std::log1p(std::exp(x)); }, -30, 30},
  };
}
}  // namespace

TEST_CASE("unary ops match std:: math on every ISA, awkward lengths and views") {
  Generator g(11);
  for (const UnaryCase& c : unary_cases()) {
    for (int64_t n : {0, 1, 3, 7, 15, 17, 33, 100, 1031}) {
      Tensor x = rand({n}, g) * (c.hi - c.lo) + c.lo;
      std::vector<double> expected;
      for (float v : x.to_vector<float>()) expected.push_back(c.ref(v));
      for_each_isa([&](const std::string& isa) {
        CAPTURE(c.name);
        CAPTURE(isa);
        CAPTURE(n);
        CHECK(close_or_same(c.op(x).to_vector<float>(), expected, 1e-6, 2e-6));
      });
    }
    // A transposed view goes through the gather path.
    Tensor m = rand({13, 9}, g) * (c.hi - c.lo) + c.lo;
    std::vector<double> expected;
    for (float v : m.t().to_vector<float>()) expected.push_back(c.ref(v));
    CAPTURE(c.name);
    CHECK(close_or_same(c.op(m.t()).to_vector<float>(), expected, 1e-6, 2e-6));
  }
}

TEST_CASE("unary ops: special values as in PyTorch") {
  Tensor x = tensor({0.0f, -0.0f, INFINITY, -INFINITY, NAN});
  CHECK(close_or_same(exp(x).to_vector<float>(), {1, 1, INFINITY, 0, NAN}, 0, 0));
  CHECK(close_or_same(relu(x).to_vector<float>(), {0, 0, INFINITY, 0, NAN}, 0, 0));
  CHECK(close_or_same(sigmoid(x).to_vector<float>(), {0.5, 0.5, 1, 0, NAN}, 0, 0));
  CHECK(close_or_same(tanh(x).to_vector<float>(), {0, 0, 1, -1, NAN}, 0, 0));
  CHECK(close_or_same(log(tensor({0.0f, -1.0f})).to_vector<float>(), {-INFINITY, NAN}, 0, 0));
}

// gelu (erf form) and its derivative Phi(x) + x phi(x) on a grid of step
// 2^-12 over [-10, 10] and at large and tiny inputs, against double with Phi
// written through erfc so the negative tail is exact in relative terms too.
// Measured at every ISA (avx2 and avx512 agree; sse2, without FMA, differs a
// little): gelu to 3.9e-7 abs (the rounding of outputs near 10) and
// 5.2e-7 relative, tails included; the derivative to 1.8e-7 abs and 3.2e-7
// relative to |Phi| + |x phi| (the derivative itself crosses 0 at
// x = -0.7518, where only that scale means anything). The bounds are 2x that.
TEST_CASE("gelu and its gradient on a fine grid, the tails relative, special values kept") {
  std::vector<float> xs;
  for (int i = -40960; i <= 40960; ++i) xs.push_back(float(i) / 4096);
  for (float v : {1e-30f, -1e-30f, 1e-45f, -1e-45f, 1e30f, -1e30f, 3.4e38f, -3.4e38f}) xs.push_back(v);
  for_each_isa([&](const std::string& isa) {
    CAPTURE(isa);
    Tensor x = tensor(xs).requires_grad_();
    Tensor y = gelu(x);
    y.sum().backward();
    const std::vector<float> yv = y.to_vector<float>(), dv = x.grad().to_vector<float>();
    double worst_g = 0, worst_d = 0, max_abs_g = 0, max_abs_d = 0;
    float at_g = 0, at_d = 0;
    for (size_t i = 0; i < xs.size(); ++i) {
      const double v = xs[i], cdf = 0.5 * std::erfc(-v / std::sqrt(2.0));
      const double xpdf = v * std::exp(-0.5 * v * v) / std::sqrt(2 * M_PI);
      const double g = v * cdf, d = cdf + xpdf, tiny = std::numeric_limits<float>::min();
      const double eg = std::abs(yv[i] - g), ed = std::abs(dv[i] - d);
      max_abs_g = std::max(max_abs_g, eg);
      max_abs_d = std::max(max_abs_d, ed);
      if (eg / std::max(std::abs(g), tiny) > worst_g) worst_g = eg / std::max(std::abs(g), tiny), at_g = xs[i];
      if (ed / (cdf + std::abs(xpdf)) > worst_d) worst_d = ed / (cdf + std::abs(xpdf)), at_d = xs[i];
    }
    CAPTURE(at_g);
    CAPTURE(at_d);
    CHECK(max_abs_g < 8e-7);
    CHECK(max_abs_d < 4e-7);
    CHECK(worst_g < 1e-6);
    CHECK(worst_d < 7e-7);
  });
  // As x Phi(x) and Phi(x) + x phi(x) give them in IEEE arithmetic, and as
  // the erf form always did: gelu(-inf) = -inf * 0 is NaN, both infinities
  // have a NaN gradient, NaN stays NaN and -0 stays -0.
  Tensor s = tensor({0.0f, -0.0f, INFINITY, -INFINITY, NAN}).requires_grad_();
  Tensor ys = gelu(s);
  ys.sum().backward();
  CHECK(close_or_same(ys.to_vector<float>(), {0, 0, INFINITY, NAN, NAN}, 0, 0));
  CHECK(std::signbit(ys.to_vector<float>()[1]));
  CHECK(close_or_same(s.grad().to_vector<float>(), {0.5, 0.5, NAN, NAN, NAN}, 0, 0));
}

TEST_CASE("unary gradients") {
  for (const UnaryCase& c : unary_cases()) {
    CAPTURE(c.name);
    // Inputs away from kinks (relu, abs at 0) and in the op's domain.
    Tensor x = tensor({0.3f, 1.7f, -0.6f, 2.2f, -1.4f, 0.9f});
    if (c.lo >= 0) x = abs(x) + 0.5f;
    x = x.reshape({2, 3}).requires_grad_();
    for_each_isa([&](const std::string& isa) {
      CAPTURE(isa);
      CHECK_GRADCHECK([&](const Inputs& in) { return c.op(in[0]); }, {x});
    });
  }
}

TEST_CASE("binary ops match a scalar reference with broadcasting and strided views") {
  Generator g(12);
  struct Case { Shape a, b; };
  for (const Case& s : {Case{{37}, {37}}, Case{{5, 17}, {17}}, Case{{5, 1}, {1, 19}}, Case{{}, {33}}, Case{{3, 0}, {0}}}) {
    Tensor a = rand(s.a, g) * 4.0f + 0.25f, b = rand(s.b, g) * 4.0f - 2.0f;
    Shape out = broadcast_shapes("test", s.a, s.b);
    auto av = a.to_vector<float>(), bv = b.to_vector<float>();
    auto ref = [&](const std::function<double(double, double)>& f) {
      std::vector<double> r;
      for (int64_t i = 0; i < numel_of(out); ++i) {
        auto idx = unravel(i, out);
        r.push_back(f(av[size_t(ravel_broadcast(idx, s.a))], bv[size_t(ravel_broadcast(idx, s.b))]));
      }
      return r;
    };
    for_each_isa([&](const std::string& isa) {
      CAPTURE(isa);
      CAPTURE(shape_str(s.a));
      CAPTURE(shape_str(s.b));
      CHECK(close_or_same(maximum(a, b).to_vector<float>(), ref([](double x, double y) { return std::max(x, y); }), 0, 0));
      CHECK(close_or_same(minimum(a, b).to_vector<float>(), ref([](double x, double y) { return std::min(x, y); }), 0, 0));
      CHECK(close_or_same(pow(a, b).to_vector<float>(), ref([](double x, double y) { return std::pow(x, y); }), 1e-6, 1e-5));
      CHECK(close_or_same(div(a, b).to_vector<float>(), ref([](double x, double y) { return x / y; }), 1e-6, 1e-6));
    });
  }
  // Strided (every other column) and transposed operands.
  Tensor big = rand({8, 34}, g), other = rand({17, 8}, g);
  Tensor strided = big.slice(1, 0, 34, 2);  // [8, 17], stride 2
  CHECK((strided * other.t()).to_vector<float>() == (strided.contiguous() * other.t().contiguous()).to_vector<float>());
}

TEST_CASE("maximum and minimum propagate NaN and split ties in the gradient") {
  Tensor a = tensor({1.0f, NAN, 2.0f}), b = tensor({NAN, 1.0f, 2.0f});
  CHECK(close_or_same(maximum(a, b).to_vector<float>(), {NAN, NAN, 2}, 0, 0));
  CHECK(close_or_same(minimum(a, b).to_vector<float>(), {NAN, NAN, 2}, 0, 0));
  Tensor x = tensor({1.0f, 3.0f, 2.0f}).requires_grad_(), y = tensor({2.0f, 1.0f, 2.0f}).requires_grad_();
  maximum(x, y).sum().backward();
  CHECK(x.grad().to_vector<float>() == std::vector<float>{0, 1, 0.5f});
  CHECK(y.grad().to_vector<float>() == std::vector<float>{1, 0, 0.5f});
}

TEST_CASE("binary gradients") {
  Generator g(13);
  auto rg = [&](Shape s, float lo, float hi) { return (rand(s, g) * (hi - lo) + lo).requires_grad_(); };
  CHECK_GRADCHECK([](const Inputs& x) { return maximum(x[0], x[1]); }, {rg({2, 3}, 0, 1), rg({3}, 2, 3)});
  CHECK_GRADCHECK([](const Inputs& x) { return minimum(x[0], x[1]); }, {rg({2, 3}, 0, 1), rg({2, 1}, 2, 3)});
  CHECK_GRADCHECK([](const Inputs& x) { return pow(x[0], x[1]); }, {rg({2, 3}, 0.5f, 2), rg({3}, -1, 2)});
  CHECK_GRADCHECK([](const Inputs& x) { return pow(x[0], 3.0); }, {rg({4}, -2, 2)});
  CHECK_GRADCHECK([](const Inputs& x) { return pow(x[0], -0.5); }, {rg({4}, 0.5f, 2)});
  CHECK_GRADCHECK([](const Inputs& x) { return clamp(x[0], -0.5, 0.5); },
                  {tensor({-0.9f, -0.2f, 0.1f, 0.7f, 0.3f}).requires_grad_()});
}

TEST_CASE("clamp") {
  Tensor x = tensor({-2.0f, -0.5f, 0.0f, 0.5f, 2.0f});
  CHECK(clamp(x, -1.0, 1.0).to_vector<float>() == std::vector<float>{-1, -0.5f, 0, 0.5f, 1});
  CHECK(clamp(x, 0.0).to_vector<float>() == std::vector<float>{0, 0, 0, 0.5f, 2});
  CHECK(clamp(x, std::nullopt, 0.0).to_vector<float>() == std::vector<float>{-2, -0.5f, 0, 0, 0});
  // The gradient passes at the bounds too (as PyTorch).
  Tensor y = tensor({-1.0f, 0.0f, 1.0f, 3.0f}).requires_grad_();
  clamp(y, -1.0, 1.0).sum().backward();
  CHECK(y.grad().to_vector<float>() == std::vector<float>{1, 1, 1, 0});
}

TEST_CASE("int64 arithmetic uses exact integer math") {
  Tensor a = tensor(std::vector<int64_t>{int64_t(1) << 40, -3, 7});
  Tensor b = tensor(std::vector<int64_t>{1, 2, -7});
  CHECK((a + b).to_vector<int64_t>() == std::vector<int64_t>{(int64_t(1) << 40) + 1, -1, 0});
  CHECK((a * b).to_vector<int64_t>() == std::vector<int64_t>{int64_t(1) << 40, -6, -49});
  CHECK(maximum(a, b).to_vector<int64_t>() == std::vector<int64_t>{int64_t(1) << 40, 2, 7});
  CHECK(abs(b).to_vector<int64_t>() == std::vector<int64_t>{1, 2, 7});
  CHECK((-b).to_vector<int64_t>() == std::vector<int64_t>{-1, -2, 7});
}

TEST_CASE("comparisons give bool, logic ops combine masks") {
  Tensor a = tensor({1.0f, 2.0f, 3.0f}), b = tensor({3.0f, 2.0f, 1.0f});
  CHECK((a < b).dtype() == kBool);
  CHECK((a < b).to_vector<bool>() == std::vector<bool>{true, false, false});
  CHECK((a <= b).to_vector<bool>() == std::vector<bool>{true, true, false});
  CHECK((a > b).to_vector<bool>() == std::vector<bool>{false, false, true});
  CHECK((a >= 2.0f).to_vector<bool>() == std::vector<bool>{false, true, true});
  CHECK((a == b).to_vector<bool>() == std::vector<bool>{false, true, false});
  CHECK((a != b).to_vector<bool>() == std::vector<bool>{true, false, true});
  CHECK((arange(3) == tensor({0.0f, 1.5f, 2.0f})).to_vector<bool>() == std::vector<bool>{true, false, true});
  Tensor m = tensor(std::vector<bool>{true, true, false}), n = tensor(std::vector<bool>{true, false, false});
  CHECK((m && n).to_vector<bool>() == std::vector<bool>{true, false, false});
  CHECK((m || n).to_vector<bool>() == std::vector<bool>{true, true, false});
  CHECK((!m).to_vector<bool>() == std::vector<bool>{false, false, true});
  // Broadcast: a key-padding mask [b, 1, j] against a causal mask [i, j].
  Tensor pad = tensor(std::vector<bool>{true, true, false}).reshape({1, 1, 3});
  Tensor causal = tensor(std::vector<bool>{true, false, false, true, true, false, true, true, true}).reshape({3, 3});
  CHECK((pad && causal).sizes() == Shape{1, 3, 3});
  CHECK((pad && causal).sum().item<int64_t>() == 5);
}

TEST_CASE("where and masked_fill select and route the gradient") {
  Tensor c = tensor(std::vector<bool>{true, false, true});
  Tensor a = tensor({1.0f, 2.0f, 3.0f}).requires_grad_(), b = tensor({-1.0f}).requires_grad_();
  Tensor out = where(c, a, b);
  CHECK(out.to_vector<float>() == std::vector<float>{1, -1, 3});
  (out * tensor({1.0f, 10.0f, 100.0f})).sum().backward();
  CHECK(a.grad().to_vector<float>() == std::vector<float>{1, 0, 100});
  CHECK(b.grad().to_vector<float>() == std::vector<float>{10});  // summed to b's shape

  Tensor scores = arange(0, 6, kFloat32).reshape({2, 3}).requires_grad_();
  Tensor mask = tensor(std::vector<bool>{false, true, true});  // broadcast over rows
  Tensor filled = masked_fill(scores, mask, -INFINITY);
  CHECK(close_or_same(filled.to_vector<float>(), {0, -INFINITY, -INFINITY, 3, -INFINITY, -INFINITY}, 0, 0));
  masked_fill(scores, mask, 0.0).sum().backward();
  CHECK(scores.grad().to_vector<float>() == std::vector<float>{1, 0, 0, 1, 0, 0});
  CHECK_GRADCHECK([&](const Inputs& x) { return where(c, x[0], x[1]); },
                  {tensor({1.0f, 2.0f, 3.0f}).requires_grad_(), tensor({5.0f}).requires_grad_()});
}

TEST_CASE("large elementwise ops are right and give the same bits for 1, 2 and 8 threads" *
          doctest::test_suite("thread-sweep")) {
  Generator g(14);
  Tensor a = randn({1 << 20}, g), b = randn({1 << 20}, g);
  std::vector<double> ref;
  {
    const std::vector<float> av = a.to_vector<float>(), bv = b.to_vector<float>();
    for (size_t i = 0; i < av.size(); ++i) ref.push_back(gelu_ref(double(float(av[i] * bv[i]) + 1.0f)));
  }
  std::vector<std::vector<float>> runs;
  for (int threads : kThreadCounts) {
    WithThreads with(threads);
    CAPTURE(threads);
    runs.push_back(gelu(a * b + 1.0f).to_vector<float>());
    CHECK(close_or_same(runs.back(), ref, 1e-6, 1e-5));
  }
  for (const auto& r : runs) CHECK(r == runs.front());
}

TEST_CASE("elementwise errors name the op") {
  CHECK_THROWS_WITH_AS(exp(arange(3)), "exp: expects a float32 tensor, got int64 (shape [3])", Error);
  CHECK_THROWS_WITH_AS(gelu(ones({2}), "fast"), "gelu: approximate must be 'none' or 'tanh', got 'fast'", Error);
  CHECK_THROWS_WITH_AS(where(ones({2}), ones({2}), ones({2})), "where: condition must be a bool tensor, got float32",
                       Error);
  CHECK_THROWS_WITH_AS(masked_fill(ones({2, 3}), ones({3, 3}, kBool), 0.0), doctest::Contains("masked_fill: shapes [2, 3] and [3, 3]"),
                       Error);
  CHECK_THROWS_WITH_AS(masked_fill(ones({3}), ones({2, 3}, kBool), 0.0),
                       "masked_fill: mask of shape [2, 3] does not broadcast to the tensor's shape [3]", Error);
  CHECK_THROWS_WITH_AS(clamp(ones({2}), std::nullopt), "clamp: at least one of min and max must be given", Error);
}
