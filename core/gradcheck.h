// The gradient checker (like torch.autograd.gradcheck), used by every op test.
//
// It projects f's output onto a fixed random tensor v, so the check is on one
// scalar L = sum(f(x) * v), and compares dL/dx from autograd with central
// finite differences (L(x + eps) - L(x - eps)) / (2 eps) for every element
// of every input that requires grad. L is accumulated in double, and the
// step is measured as the difference of the float32 values actually stored,
// so float32 rounding of the step does not bias the quotient.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <loom/core/tensor.h>

namespace loom {

struct GradcheckOptions {
  double eps = 1e-3;   // finite-difference step (relative to max(1, |x|))
  double atol = 1e-3;  // pass when |autograd - numeric| <= atol + rtol * |numeric|
  double rtol = 1e-2;
  uint64_t seed = 0;   // for the projection v
};

struct GradcheckResult {
  bool passed = true;
  std::string report;  // the worst element: which input, index, both values
  double worst_excess = 0;  // largest |diff| - tolerance seen (> 0 means failed)
};

// Checks every floating point input with requires_grad(). The inputs are
// cloned first; the caller's tensors are not changed.
GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f,
                          const std::vector<Tensor>& inputs, const GradcheckOptions& options = {});

}  // namespace loom
