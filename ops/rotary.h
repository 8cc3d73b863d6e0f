// rotary: rotary position embedding applied to queries or keys (ops/rotary.cpp).
#pragma once

#include <loom/core/tensor.h>

namespace loom {

// x [..., n, d] rotated in pairs of features by position angles, the first
// rot features (rot = cos.size(-1), even, <= d); the rest pass through:
//   out_2k   = x_2k cos_2k − x_2k+1 sin_2k
//   out_2k+1 = x_2k+1 cos_2k+1 + x_2k sin_2k+1
// (x·cos + rotate_half(x)·sin of RoFormer and x-transformers). cos and sin
// are [n, rot] or [b, n, rot] with b = x.size(0), shared by the dims between;
// they get no gradient (functions of the positions only).
Tensor rotary(const Tensor& x, const Tensor& cos, const Tensor& sin);

}  // namespace loom
