// matmul, following torch.matmul:
//   1-D x 1-D  dot product
//   2-D x 2-D  matrix product             C[m,n] = sum_k A[m,k] B[k,n]
//   N-D        batched, batch dims broadcast
// Backward (for the 2-D core; the 1-D cases are views around it):
//   dA = dC · Bᵀ      dB = Aᵀ · dC
// and the autograd engine sums over broadcast batch dims.
//
// This is the plain loop version: i-k-j order so the inner loop walks a row
// of B and a row of C contiguously. Operands are read through their strides,
// so transposed views need no copy.
#include <loom/core/autograd.h>
#include <loom/ops/ops.h>

namespace loom {

namespace {

// Storage offsets (in elements) of each batch matrix of t broadcast to `batch`.
std::vector<int64_t> batch_offsets(const Tensor& t, const Shape& batch) {
  size_t tb = size_t(t.dim()) - 2;  // t's own batch dims
  size_t lead = batch.size() - tb;
  std::vector<int64_t> offsets;
  int64_t count = numel_of(batch);
  offsets.reserve(size_t(count));
  Shape idx(batch.size(), 0);
  for (int64_t n = 0; n < count; ++n) {
    int64_t off = t.storage_offset();
    for (size_t d = lead; d < batch.size(); ++d)
      if (t.sizes()[d - lead] != 1) off += idx[d] * t.strides()[d - lead];
    offsets.push_back(off);
    for (int64_t d = int64_t(batch.size()) - 1; d >= 0; --d) {
      if (++idx[size_t(d)] < batch[size_t(d)]) break;
      idx[size_t(d)] = 0;
    }
  }
  return offsets;
}

Tensor matmul_nd(const Tensor& a, const Tensor& b) {
  int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
  LOOM_CHECK(b.size(-2) == k, "matmul: cannot multiply ", a.sizes(), " by ", b.sizes(), " (", k, " != ", b.size(-2),
             ")");
  Shape a_batch(a.sizes().begin(), a.sizes().end() - 2), b_batch(b.sizes().begin(), b.sizes().end() - 2);
  Shape batch = broadcast_shapes("matmul", a_batch, b_batch);
  Shape out_shape = batch;
  out_shape.push_back(m);
  out_shape.push_back(n);
  Tensor out = zeros(out_shape);

  const float* A = static_cast<const float*>(a.impl()->storage->data());
  const float* B = static_cast<const float*>(b.impl()->storage->data());
  float* C = out.data_ptr<float>();
  int64_t as0 = a.stride(-2), as1 = a.stride(-1), bs0 = b.stride(-2), bs1 = b.stride(-1);
  std::vector<int64_t> a_off = batch_offsets(a, batch), b_off = batch_offsets(b, batch);
  for (size_t p = 0; p < a_off.size(); ++p) {
    const float* Ap = A + a_off[p];
    const float* Bp = B + b_off[p];
    float* Cp = C + int64_t(p) * m * n;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t kk = 0; kk < k; ++kk) {
        float aik = Ap[i * as0 + kk * as1];
        for (int64_t j = 0; j < n; ++j) Cp[i * n + j] += aik * Bp[kk * bs0 + j * bs1];
      }
  }
  record("matmul", {a, b}, out, [a, b](const Tensor& g) {
    return Grads{matmul(g, b.transpose(-2, -1)), matmul(a.transpose(-2, -1), g)};
  });
  return out;
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  LOOM_CHECK(a.defined() && b.defined(), "matmul: tensor is undefined");
  LOOM_CHECK(a.dtype() == kFloat32 && b.dtype() == kFloat32, "matmul: expects float32 tensors, got ",
             dtype_name(a.dtype()), " ", a.sizes(), " and ", dtype_name(b.dtype()), " ", b.sizes());
  LOOM_CHECK(a.dim() >= 1 && b.dim() >= 1, "matmul: both arguments need at least 1 dimension, got shapes ",
             a.sizes(), " and ", b.sizes());
  if (a.dim() == 1 && b.dim() == 1) {
    LOOM_CHECK(a.size(0) == b.size(0), "matmul: cannot multiply ", a.sizes(), " by ", b.sizes(), " (", a.size(0),
               " != ", b.size(0), ")");
    return matmul_nd(a.unsqueeze(0), b.unsqueeze(1)).reshape({});
  }
  if (a.dim() == 1) {
    LOOM_CHECK(a.size(0) == b.size(-2), "matmul: cannot multiply ", a.sizes(), " by ", b.sizes(), " (", a.size(0),
               " != ", b.size(-2), ")");
    return matmul_nd(a.unsqueeze(0), b).squeeze(-2);
  }
  if (b.dim() == 1) {
    LOOM_CHECK(a.size(-1) == b.size(0), "matmul: cannot multiply ", a.sizes(), " by ", b.sizes(), " (", a.size(-1),
               " != ", b.size(0), ")");
    return matmul_nd(a, b.unsqueeze(1)).squeeze(-1);
  }
  return matmul_nd(a, b);
}

Tensor Tensor::matmul(const Tensor& other) const { return loom::matmul(*this, other); }

}  // namespace loom
