// embedding and one_hot.
//
//   embedding  out[p] = W[ids[p]]     dW[r] = Σ_{p : ids[p] = r} g[p]   (none for padding_idx)
//
// The forward copies rows in parallel. The backward adds gradient rows into
// dW in the order of the ids, one SIMD row add each, so dW is the same for
// any thread count.
#include <cstring>

#include <loom/core/autograd.h>
#include <loom/core/parallel.h>
#include <loom/ops/embedding.h>
#include <loom/ops/kernels/kernels.h>

namespace loom {

namespace {
// The ids as a vector, each checked against [0, n).
std::vector<int64_t> checked_ids(const char* op, const Tensor& ids, int64_t n, const char* what) {
  LOOM_CHECK(ids.defined(), op, ": ids are undefined");
  LOOM_CHECK(ids.dtype() == kInt64, op, ": ids must be int64, got ", dtype_name(ids.dtype()));
  std::vector<int64_t> v = ids.to_vector<int64_t>();
  for (size_t p = 0; p < v.size(); ++p)
    LOOM_CHECK(v[p] >= 0 && v[p] < n, op, ": id ", v[p], " at flat position ", p, " is out of range for ", n, " ",
               what);
  return v;
}
}  // namespace

Tensor embedding(const Tensor& ids, const Tensor& weight, std::optional<int64_t> padding_idx) {
  LOOM_CHECK(weight.defined() && weight.dtype() == kFloat32 && weight.dim() == 2,
             "embedding: weight must be a 2-D float32 tensor [num_embeddings, dim], got ",
             weight.defined() ? dtype_name(weight.dtype()) : "undefined", " ",
             weight.defined() ? weight.sizes() : Shape{});
  const int64_t n = weight.size(0), dim = weight.size(1);
  if (padding_idx) {
    LOOM_CHECK(*padding_idx >= -n && *padding_idx < n, "embedding: padding_idx ", *padding_idx,
               " is out of range for ", n, " embeddings");
    if (*padding_idx < 0) *padding_idx += n;
  }
  std::vector<int64_t> v = checked_ids("embedding", ids, n, "embeddings");
  Shape shape = ids.sizes();
  shape.push_back(dim);
  Tensor out = empty(shape);
  Tensor w = weight.contiguous();
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  parallel_for(int64_t(v.size()), dim, [&](int64_t a, int64_t b) {
    for (int64_t p = a; p < b; ++p) std::memcpy(op + p * dim, wp + v[size_t(p)] * dim, size_t(dim) * sizeof(float));
  });
  record("embedding", {weight}, out, [v, n, dim, padding_idx](const Tensor& g) {
    Tensor dw = zeros({n, dim});
    Tensor gc = g.contiguous();
    const float* gp = gc.data_ptr<float>();
    float* dp = dw.data_ptr<float>();
    const kernels::Table& k = kernels::table();
    for (size_t p = 0; p < v.size(); ++p) {  // scatter-add, in order
      if (padding_idx && v[p] == *padding_idx) continue;
      k.binary(kernels::BinaryOp::Add, dp + v[p] * dim, 1, gp + int64_t(p) * dim, 1, dp + v[p] * dim, dim);
    }
    return Grads{dw};
  });
  return out;
}

Tensor one_hot(const Tensor& ids, int64_t num_classes) {
  LOOM_CHECK(ids.defined() && ids.dtype() == kInt64, "one_hot: ids must be int64");
  std::vector<int64_t> v = ids.to_vector<int64_t>();
  if (num_classes == -1) {
    LOOM_CHECK(!v.empty(), "one_hot: cannot infer the number of classes from an empty tensor");
    num_classes = 0;
    for (int64_t x : v) num_classes = std::max(num_classes, x + 1);
  }
  LOOM_CHECK(num_classes >= 0, "one_hot: num_classes must be -1 or non-negative, got ", num_classes);
  checked_ids("one_hot", ids, num_classes, "classes");
  Shape shape = ids.sizes();
  shape.push_back(num_classes);
  Tensor out = zeros(shape, kInt64);
  int64_t* op = out.data_ptr<int64_t>();
  for (size_t p = 0; p < v.size(); ++p) op[int64_t(p) * num_classes + v[p]] = 1;
  return out;
}

}  // namespace loom
