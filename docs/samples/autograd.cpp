// docs/autograd.md: the worked example and a parameter update.
#include <loom/loom.h>

using namespace loom;

int main() {
  // doc: autograd_example
  Tensor x = tensor({2.0f, -1.0f}).requires_grad_();
  Tensor w = tensor({3.0f}).requires_grad_();
  Tensor y = x * w;               // [6, -3]
  Tensor z = relu(y);             // [6, 0]
  Tensor loss = (z + y).sum();    // 12 + (-3) = 9
  loss.backward();
  // x.grad() == [6, 3], w.grad() == [3]
  // doc: end
  if (x.grad().to_vector<float>() != std::vector<float>{6, 3} || w.grad().to_vector<float>() != std::vector<float>{3})
    return 1;
  const float lr = 0.1f;
  // doc: no_grad_update
  { loom::NoGradGuard no_grad; w -= lr * w.grad(); }
  // doc: end
  return w.to_vector<float>() == std::vector<float>{3.0f - 0.3f} ? 0 : 1;
}
