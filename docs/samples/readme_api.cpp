// README.md, "The API reads like libtorch".
// doc: readme_api
#include <loom/loom.h>

// doc: pause
#include <iostream>

int main() {
  // doc: resume
  loom::Tensor x = loom::arange(0, 8, loom::kFloat32).reshape({2, 4}).requires_grad_();
  loom::Tensor w = loom::randn({4, 3}).requires_grad_();
  loom::Tensor loss = loom::relu(x.matmul(w)).mean();
  loss.backward();                       // x.grad() and w.grad() are now filled
  {
    loom::NoGradGuard no_grad;           // parameter updates are not recorded
    w -= 0.1f * w.grad();
  }
  std::cout << w.grad() << "\n";         // tensor([[...]], shape=[4, 3], dtype=float32)
  // doc: end
  return x.grad().sizes() == loom::Shape{2, 4} ? 0 : 1;
}
