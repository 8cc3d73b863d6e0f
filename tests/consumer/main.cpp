// Built against an installed loom: d/dx sum(x * x) must be 2x.
#include <cstdio>

#include <loom/loom.h>

int main() {
  loom::Tensor x = loom::arange(0, 6, loom::kFloat32).reshape({2, 3}).requires_grad_();
  loom::Tensor loss = (x * x).sum();
  loss.backward();
  std::vector<float> g = x.grad().to_vector<float>(), v = x.to_vector<float>();
  for (size_t i = 0; i < g.size(); ++i) {
    if (g[i] != 2 * v[i]) {
      std::printf("consumer: wrong gradient at %zu: %f\n", i, g[i]);
      return 1;
    }
  }
  std::printf("consumer ok: loss %.1f\n", loss.item<float>());
  return 0;
}
