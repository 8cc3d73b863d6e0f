// softmax and log_softmax (ops/softmax.cpp).
#pragma once

#include <loom/core/tensor.h>

namespace loom {

// exp(x) / sum(exp(x)) along dim, computed as exp(x - max) / sum(exp(x - max)).
Tensor softmax(const Tensor& x, int64_t dim);
// log(softmax(x)) along dim, computed as x - max - log(sum(exp(x - max))).
Tensor log_softmax(const Tensor& x, int64_t dim);

}  // namespace loom
