// dropout: out = x * mask, mask_i = [u_i >= p] / (1 - p) with u_i uniform.
// The backward rule is mul's: dx = g * mask.
#include <loom/core/autograd.h>
#include <loom/core/parallel.h>
#include <loom/ops/ops.h>

namespace loom {

Tensor dropout(const Tensor& x, double p, bool training, Generator* gen) {
  LOOM_CHECK(x.defined(), "dropout: tensor is undefined");
  LOOM_CHECK(p >= 0 && p <= 1, "dropout: probability has to be between 0 and 1, but got ", p);
  LOOM_CHECK(x.dtype() == kFloat32, "dropout: expects a float32 tensor, got ", dtype_name(x.dtype()));
  if (!training || p == 0) return x;
  Generator& g = gen ? *gen : default_generator();
  const int64_t n = x.numel();
  const uint64_t first = g.advance(uint64_t(n + 3) / 4);
  const float keep_scale = p == 1 ? 0.0f : float(1.0 / (1.0 - p));
  Tensor mask = empty(x.sizes(), kFloat32);
  float* m = mask.data_ptr<float>();
  // Element i uses lane i % 4 of block first + i / 4, whichever thread draws it.
  parallel_for((n + 3) / 4, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      auto r = g.block(first + uint64_t(b));
      for (int64_t k = 0; k < 4 && b * 4 + k < n; ++k)
        m[b * 4 + k] = uniform_from_bits(r[size_t(k)]) >= float(p) ? keep_scale : 0.0f;
    }
  });
  return mul(x, mask);
}

}  // namespace loom
