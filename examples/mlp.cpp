// loom's first end-to-end example: a 2-layer MLP learns y = x1 * x2 on
// random points in [-1, 1]^2, with plain SGD, and prints its loss falling.
//
//   build/examples/loom-mlp [steps]
//
// Everything here is the public API: tensors, autograd, NoGradGuard.
#include <cmath>
#include <cstdio>
#include <vector>

#include <loom/loom.h>

#include "flags.h"

int main(int argc, char** argv) {
  loom_example::Flags flags(argc, argv,
                            "usage: loom-mlp [STEPS]\n\n"
                            "A 2-layer MLP learns y = x1 * x2 with plain SGD and prints its loss falling;\n"
                            "exits 1 if it did not fall.\n\n"
                            "  STEPS  SGD steps (2000)\n");
  const int steps = int(flags.integer_at(0, "STEPS", 2000, 1));
  flags.done(1);
  const int64_t n = 256, hidden = 32;
  const float lr = 0.1f;
  loom::manual_seed(0);

  // The task: y = x1 * x2. Not linear, so the hidden layer has to learn it.
  loom::Tensor x = loom::rand({n, 2}) * 2.0f - 1.0f;
  loom::Tensor y = (x.select(1, 0) * x.select(1, 1)).unsqueeze(1);

  // PyTorch's nn.Linear initialisation: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  auto param = [](loom::Shape shape, int64_t fan_in) {
    float bound = 1.0f / std::sqrt(float(fan_in));
    return ((loom::rand(shape) * 2.0f - 1.0f) * bound).requires_grad_();
  };
  loom::Tensor w1 = param({2, hidden}, 2), b1 = param({hidden}, 2);
  loom::Tensor w2 = param({hidden, 1}, hidden), b2 = param({1}, hidden);
  std::vector<loom::Tensor> params = {w1, b1, w2, b2};

  float first = 0, last = 0;
  for (int step = 0; step <= steps; ++step) {
    loom::Tensor h = loom::relu(x.matmul(w1) + b1);  // [n, hidden]
    loom::Tensor pred = h.matmul(w2) + b2;           // [n, 1]
    loom::Tensor err = pred - y;
    loom::Tensor loss = (err * err).mean();          // mean squared error

    for (auto& p : params) p.mutable_grad() = loom::Tensor();  // zero_grad (set to none)
    loss.backward();
    {
      loom::NoGradGuard no_grad;  // the update itself is not part of the graph
      for (auto& p : params) p -= lr * p.grad();
    }

    last = loss.item<float>();
    if (step == 0) first = last;
    if (step % (steps / 10 > 0 ? steps / 10 : 1) == 0) std::printf("step %5d  loss %.6f\n", step, last);
  }
  std::printf("loss fell from %.6f to %.6f (%.1fx lower)\n", first, last, first / last);
  return last < first ? 0 : 1;
}
