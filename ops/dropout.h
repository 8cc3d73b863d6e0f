// dropout (ops/dropout.cpp).
#pragma once

#include <loom/core/generator.h>
#include <loom/core/tensor.h>

namespace loom {

// Zeroes each element with probability p and scales the rest by 1/(1-p),
// when training; the identity otherwise (torch.nn.functional.dropout).
// The mask comes from `gen` (the global generator when null): element i uses
// Philox block offset + i/4, so the mask is the same for any thread count.
Tensor dropout(const Tensor& x, double p = 0.5, bool training = true, Generator* gen = nullptr);

}  // namespace loom
