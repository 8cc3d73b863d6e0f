// The tape: recording, reverse playback, accumulation, no-grad, detach,
// retained graphs, and freeing the graph.
#include "helpers.h"

using namespace loom;

TEST_CASE("a simple chain: d/dx of sum(relu(x) * w)") {
  Tensor x = tensor({-1.0f, 2.0f, 3.0f}).requires_grad_();
  Tensor w = tensor({4.0f, 5.0f, 6.0f}).requires_grad_();
  Tensor loss = (relu(x) * w).sum();
  CHECK(loss.requires_grad());
  CHECK_FALSE(loss.is_leaf());
  loss.backward();
  CHECK(x.grad().to_vector<float>() == std::vector<float>{0, 5, 6});  // w where x > 0
  CHECK(w.grad().to_vector<float>() == std::vector<float>{0, 2, 3});  // relu(x)
}

TEST_CASE("diamond graph: two paths from x meet again") {
  // y = 2x; a = y + 1; b = 3y; z = a * b = (2x + 1) * 6x
  // dz/dx = 2 * 6x + (2x + 1) * 6 = 24x + 6
  Tensor x = tensor({1.0f, -2.0f, 0.5f}).requires_grad_();
  Tensor y = x * 2.0f;
  Tensor a = y + 1.0f;
  Tensor b = y * 3.0f;
  Tensor z = (a * b).sum();
  z.backward();
  std::vector<float> expected;
  for (float v : x.to_vector<float>()) expected.push_back(24 * v + 6);
  CHECK(all_close(x.grad().to_vector<float>(), expected));
}

TEST_CASE("a tensor used twice gets the sum of both paths") {
  Tensor x = tensor({3.0f}).requires_grad_();
  (x * x).sum().backward();  // d(x^2)/dx = 2x
  CHECK(x.grad().item<float>() == 6.0f);
}

TEST_CASE("gradients accumulate across backward calls until reset") {
  Tensor x = tensor({1.0f, 2.0f}).requires_grad_();
  (x * 3.0f).sum().backward();
  (x * 4.0f).sum().backward();
  CHECK(x.grad().to_vector<float>() == std::vector<float>{7, 7});
  x.grad().zero_();
  (x * 1.0f).sum().backward();
  CHECK(x.grad().to_vector<float>() == std::vector<float>{1, 1});
  x.mutable_grad() = Tensor();  // set to none
  (x * 2.0f).sum().backward();
  CHECK(x.grad().to_vector<float>() == std::vector<float>{2, 2});
}

TEST_CASE("broadcast inputs get gradients of their own shape") {
  Tensor a = ones({2, 3}).requires_grad_();
  Tensor b = tensor({1.0f, 2.0f, 3.0f}).requires_grad_();  // broadcast over rows
  Tensor c = full({2, 1}, 2.0).requires_grad_();           // broadcast over columns
  Tensor s = scalar_tensor(5.0).requires_grad_();          // broadcast everywhere
  ((a * b + c) * s).sum().backward();
  CHECK(b.grad().sizes() == Shape{3});
  CHECK(b.grad().to_vector<float>() == std::vector<float>{10, 10, 10});  // sum over 2 rows of a * s
  CHECK(c.grad().sizes() == Shape{2, 1});
  CHECK(c.grad().to_vector<float>() == std::vector<float>{15, 15});  // 3 columns * s
  CHECK(s.grad().sizes() == Shape{});
  CHECK(s.grad().item<float>() == 2 * (1 + 2 + 3) + 6 * 2.0f);
}

TEST_CASE("NoGradGuard stops recording and restores the mode") {
  Tensor x = ones({2}).requires_grad_();
  {
    NoGradGuard guard;
    CHECK_FALSE(is_grad_enabled());
    Tensor y = x * 2.0f;
    CHECK_FALSE(y.requires_grad());
    CHECK_FALSE(y.grad_fn());
    {
      NoGradGuard nested;
    }
    CHECK_FALSE(is_grad_enabled());  // the nested guard restored "off"
  }
  CHECK(is_grad_enabled());
  CHECK((x * 2.0f).requires_grad());
}

TEST_CASE("detach cuts the graph: no gradient flows through it") {
  Tensor x = tensor({2.0f}).requires_grad_();
  Tensor y = x * x;
  // z = y.detach() * x: only the direct x path counts, dz/dx = y = 4
  (y.detach() * x).sum().backward();
  CHECK(x.grad().item<float>() == 4.0f);
}

TEST_CASE("a second backward through a freed graph is a clear error, retain_graph allows it") {
  Tensor x = tensor({1.0f, 2.0f}).requires_grad_();
  Tensor loss = (x * x).sum();
  loss.backward({}, /*retain_graph=*/true);
  loss.backward();  // allowed: the first one retained the graph
  CHECK(x.grad().to_vector<float>() == std::vector<float>{4, 8});
  CHECK_THROWS_WITH_AS(loss.backward(), doctest::Contains("backward through the graph a second time"), Error);
}

TEST_CASE("backward on a non-scalar needs an explicit gradient") {
  Tensor x = tensor({1.0f, 2.0f}).requires_grad_();
  Tensor y = x * 3.0f;
  CHECK_THROWS_WITH_AS(y.backward(), doctest::Contains("only for scalar outputs"), Error);
  y.backward(tensor({1.0f, 10.0f}));
  CHECK(x.grad().to_vector<float>() == std::vector<float>{3, 30});
  Tensor z = x * 3.0f;
  CHECK_THROWS_WITH_AS(z.backward(ones({3})), doctest::Contains("gradient has shape [3]"), Error);
}

TEST_CASE("the graph's memory is released after backward") {
  Tensor x = randn({100}).requires_grad_();
  std::weak_ptr<TensorImpl> saved;
  Tensor loss;
  {
    Tensor h = x * 2.0f;  // mul saves x and the scalar; the next mul saves h
    saved = h.impl_ptr();
    loss = (h * h).sum();
  }
  CHECK_FALSE(saved.expired());  // held by the graph for backward
  loss.backward();
  CHECK(saved.expired());  // released with the node's saved tensors

  // With retain_graph the saved tensors stay until the graph itself goes.
  Tensor loss2;
  {
    Tensor h = x * 2.0f;
    saved = h.impl_ptr();
    loss2 = (h * h).sum();
  }
  loss2.backward({}, true);
  CHECK_FALSE(saved.expired());
  loss2 = Tensor();
  CHECK(saved.expired());
}

TEST_CASE("backward on a leaf accumulates the seed") {
  Tensor x = scalar_tensor(2.0).requires_grad_();
  x.backward();
  CHECK(x.grad().item<float>() == 1.0f);
}

TEST_CASE("in-place updates of parameters need NoGradGuard") {
  Tensor w = ones({2}).requires_grad_();
  CHECK_THROWS_WITH_AS(w -= ones({2}), doctest::Contains("do it inside a loom::NoGradGuard"), Error);
  {
    NoGradGuard guard;
    w -= ones({2}) * 0.5f;
  }
  CHECK(w.to_vector<float>() == std::vector<float>{0.5f, 0.5f});
  CHECK(w.requires_grad());
}

TEST_CASE("only inputs that require grad get gradients, views are differentiable") {
  Tensor x = arange(0, 6, kFloat32).reshape({2, 3}).requires_grad_();
  Tensor c = ones({3});
  // permute, slice, select, expand, reshape, unsqueeze all on the path.
  Tensor y = x.t().slice(0, 1, 3).select(1, 1).unsqueeze(0).expand({4, 2}).reshape({8});
  (y * 1.0f).sum().backward();
  CHECK_FALSE(c.grad().defined());
  // y takes x[1][1] and x[1][2], each 4 times.
  CHECK(x.grad().to_vector<float>() == std::vector<float>{0, 0, 0, 0, 4, 4});
}

TEST_CASE("a tiny MLP trains: the loss falls") {
  Generator g(0);
  Tensor x = rand({64, 2}, g) * 2.0f - 1.0f;
  Tensor y = (x.select(1, 0) * x.select(1, 1)).unsqueeze(1);
  Tensor w1 = (randn({2, 16}, g) * 0.5f).requires_grad_(), b1 = zeros({16}).requires_grad_();
  Tensor w2 = (randn({16, 1}, g) * 0.25f).requires_grad_(), b2 = zeros({1}).requires_grad_();
  float first = 0, last = 0;
  for (int step = 0; step < 300; ++step) {
    Tensor err = relu(x.matmul(w1) + b1).matmul(w2) + b2 - y;
    Tensor loss = (err * err).mean();
    for (Tensor p : {w1, b1, w2, b2}) p.mutable_grad() = Tensor();
    loss.backward();
    NoGradGuard guard;
    for (Tensor p : {w1, b1, w2, b2}) p -= 0.2f * p.grad();
    last = loss.item<float>();
    if (step == 0) first = last;
  }
  CHECK(last < first * 0.3f);
}

TEST_CASE("the docs/autograd.md example") {
  Tensor x = tensor({2.0f, -1.0f}).requires_grad_();
  Tensor w = tensor({3.0f}).requires_grad_();
  Tensor y = x * w;
  Tensor z = relu(y);
  Tensor loss = (z + y).sum();
  CHECK(loss.item<float>() == 9.0f);
  // The tape: mul, relu, add, sum, in increasing sequence order.
  CHECK(std::string(loss.grad_fn()->name) == "sum");
  CHECK(std::string(z.grad_fn()->name) == "relu");
  CHECK(y.grad_fn()->sequence_nr < z.grad_fn()->sequence_nr);
  CHECK(z.grad_fn()->sequence_nr < loss.grad_fn()->sequence_nr);
  loss.backward();
  CHECK(x.grad().to_vector<float>() == std::vector<float>{6, 3});
  CHECK(w.grad().to_vector<float>() == std::vector<float>{3});
}
