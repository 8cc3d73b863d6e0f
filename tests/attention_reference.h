// The attention oracle: everything materialised (scores, masked softmax,
// weights · v) with loom's own differentiable ops. The fused op
// (ops/attention.cpp) is tested against it, and loom-bench's attention suite
// measures against it.
#pragma once

#include <cmath>
#include <vector>

#include <loom/loom.h>

namespace loom::reference {

// [0 % G, 1 % G, ..., (H-1) % G] as int64.
inline Tensor remainder_heads(int64_t H, int64_t G) {
  std::vector<int64_t> idx;
  for (int64_t h = 0; h < H; ++h) idx.push_back(h % G);
  return tensor(idx);
}

// The oracle: everything materialised, differentiated by autograd.
inline Tensor naive_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& o) {
  const int64_t B = q.size(0), H = q.size(1), I = q.size(2), J = k.size(2), G = k.size(1);
  const double scale = o.scale.value_or(1.0 / std::sqrt(double(q.size(3))));
  Tensor heads = remainder_heads(H, G);
  Tensor kx = index_select(k, 1, heads), vx = index_select(v, 1, heads);  // query head h uses kv head h mod G
  Tensor s = matmul(q, kx.transpose(-1, -2)) * float(scale);
  if (o.bias.defined()) s = s + o.bias;
  Tensor m = ones({1, 1, I, J}, kBool);
  if (o.key_padding_mask.defined()) m = logical_and(m, o.key_padding_mask.view({B, 1, 1, J}));
  if (o.attn_mask.defined()) m = logical_and(m, o.attn_mask);
  if (o.causal) m = logical_and(m, tril(ones({I, J}, kBool), J - I));
  m = m.expand({B, H, I, J});
  if (o.selective) {
    const int64_t offset = J - I;
    Tensor col = arange(J).view({1, J}), row = arange(I).view({I, 1});
    Tensor excluded = logical_or(le(col, scalar_tensor(double(offset), kInt64)), eq(col, row + offset));
    Tensor gate = where(logical_and(m.select(1, 0), logical_not(excluded)), relu(s.select(1, 0)), scalar_tensor(0.0));
    Tensor f = cumsum(gate, 1) - gate;  // Σ over earlier query rows
    s = s - f.unsqueeze(1);
  }
  Tensor p = softmax(where(m, s, scalar_tensor(-1e30)), -1);
  p = where(m, p, scalar_tensor(0.0));  // exact zeros, and zero rows where nothing is visible
  return matmul(p, vx);
}

}  // namespace loom::reference
