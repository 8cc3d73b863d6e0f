// matmul and linear, through oneDNN's matmul primitive.
//
//   matmul  C = A · B             dA = dC · Bᵀ         dB = Aᵀ · dC
//   linear  y = x · Wᵀ + b        dx = dy · W          dW = dyᵀ · x     db = Σ_rows dy
//
// matmul follows torch.matmul: 1-D operands are views around the 2-D case,
// N-D operands are batches of matrices with broadcast batch dims. The
// autograd engine sums gradients over broadcast batch dims.
//
// oneDNN is handed each operand as a 3-D [batch, rows, cols] block with the
// tensor's own strides, so a transposed view (strides (1, rows)) costs no
// copy, and a matrix shared by the whole batch is passed once with batch 1
// (oneDNN broadcasts it). Only layouts oneDNN cannot express are copied:
// batch dims that do not collapse into one stride, or matrices with no unit
// stride in either of their two dims.
//
// Creating a oneDNN primitive costs far more than running a small one, so
// primitives are cached by shape and strides: a training loop creates each
// one once.
#include <mutex>
#include <sstream>
#include <unordered_map>

#include <oneapi/dnnl/dnnl.hpp>

#include <loom/core/autograd.h>
#include <loom/ops/ops.h>

namespace loom {

namespace {

using dnnl::memory;

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// A float matrix batch as oneDNN sees it: dims {batch, rows, cols} and strides.
struct Block {
  memory::dims dims, strides;
  const float* data = nullptr;
};

std::mutex cache_mutex;
std::unordered_map<std::string, dnnl::matmul> cache;

dnnl::matmul primitive_for(const Block& a, const Block& b, const Block& c, bool with_bias) {
  std::ostringstream key;
  for (const Block* blk : {&a, &b, &c}) {
    for (auto v : blk->dims) key << v << ',';
    key << '/';
    for (auto v : blk->strides) key << v << ',';
    key << '|';
  }
  key << with_bias;
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto it = cache.find(key.str());
  if (it != cache.end()) return it->second;
  memory::desc amd(a.dims, memory::data_type::f32, a.strides), bmd(b.dims, memory::data_type::f32, b.strides),
      cmd(c.dims, memory::data_type::f32, c.strides);
  memory::desc bias_md({1, 1, c.dims[2]}, memory::data_type::f32, memory::dims{c.dims[2], c.dims[2], 1});
  dnnl::matmul::desc desc = with_bias ? dnnl::matmul::desc(amd, bmd, bias_md, cmd) : dnnl::matmul::desc(amd, bmd, cmd);
  dnnl::matmul prim(dnnl::matmul::primitive_desc(desc, cpu_engine()));
  cache.emplace(key.str(), prim);
  return prim;
}

// C = A · B (+ bias), all blocks 3-D.
void run_matmul(const Block& a, const Block& b, const Block& c, const float* bias) {
  dnnl::matmul prim = primitive_for(a, b, c, bias != nullptr);
  dnnl::engine& eng = cpu_engine();
  auto mem = [&](const Block& blk) {
    return memory(memory::desc(blk.dims, memory::data_type::f32, blk.strides), eng, const_cast<float*>(blk.data));
  };
  std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, mem(a)}, {DNNL_ARG_WEIGHTS, mem(b)}, {DNNL_ARG_DST, mem(c)}};
  if (bias)
    args.emplace(DNNL_ARG_BIAS, memory(memory::desc({1, 1, c.dims[2]}, memory::data_type::f32,
                                                    memory::dims{c.dims[2], c.dims[2], 1}),
                                       eng, const_cast<float*>(bias)));
  dnnl::stream stream(eng);
  prim.execute(stream, args);
  stream.wait();
}

// t ([batch..., rows, cols]) as a 3-D block against the broadcast batch
// shape `batch`; `keep` holds a copy when one was needed.
Block as_block(const Tensor& t, const Shape& batch, Tensor& keep) {
  const int64_t rows = t.size(-2), cols = t.size(-1);
  Shape own(t.sizes().begin(), t.sizes().end() - 2);
  Shape own_strides(t.strides().begin(), t.strides().end() - 2);
  const int64_t rs = t.stride(-2), cs = t.stride(-1);
  const bool unit = rs == 1 || cs == 1 || rows == 1 || cols == 1;
  // The batch dims collapse to one stride when each steps over the next.
  bool shared = numel_of(own) == 1, collapses = true;
  int64_t batch_stride = rows * cols, expected = -1;
  for (int64_t d = int64_t(own.size()) - 1; d >= 0; --d) {
    if (own[size_t(d)] == 1) continue;
    if (expected < 0) batch_stride = own_strides[size_t(d)];
    else collapses &= own_strides[size_t(d)] == expected;
    expected = own_strides[size_t(d)] * own[size_t(d)];
  }
  Shape padded(batch.size() - own.size(), 1);
  padded.insert(padded.end(), own.begin(), own.end());
  const bool full = padded == batch;
  Tensor src = t;
  if (!unit || !(shared || (full && collapses)) || batch_stride == 0) {
    Shape target = batch;
    target.push_back(rows);
    target.push_back(cols);
    keep = t.expand(target).contiguous();  // the layouts oneDNN cannot take
    src = keep;
    shared = numel_of(batch) == 1;
    batch_stride = rows * cols;
  }
  Block blk;
  blk.dims = {shared ? 1 : numel_of(batch), rows, cols};
  blk.strides = {shared ? rows * cols : batch_stride, src.stride(-2), src.stride(-1)};
  if (rows == 1) blk.strides[1] = cols;  // a size-1 dim's stride is free: make it plain
  if (cols == 1) blk.strides[2] = 1;
  blk.data = src.data_ptr<float>();
  return blk;
}

Tensor matmul_nd(const Tensor& a, const Tensor& b) {
  const int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
  LOOM_CHECK(b.size(-2) == k, "matmul: cannot multiply ", a.sizes(), " by ", b.sizes(), " (", k, " != ", b.size(-2),
             ")");
  Shape batch = broadcast_shapes("matmul", Shape(a.sizes().begin(), a.sizes().end() - 2),
                                 Shape(b.sizes().begin(), b.sizes().end() - 2));
  Shape out_shape = batch;
  out_shape.push_back(m);
  out_shape.push_back(n);
  Tensor out;
  if (numel_of(out_shape) == 0 || k == 0) {
    out = zeros(out_shape);  // an empty sum is 0; oneDNN does not take zero dims
  } else {
    out = empty(out_shape);
    Tensor keep_a, keep_b;
    Block A = as_block(a, batch, keep_a), B = as_block(b, batch, keep_b);
    // A whole batch times one shared matrix is one tall matrix product.
    if (B.dims[0] == 1 && A.dims[0] > 1 && A.strides[0] == m * A.strides[1] && A.strides[2] == 1) {
      A.dims = {1, A.dims[0] * m, k};
      A.strides = {A.dims[1] * k, A.strides[1], 1};
    }
    Block C{{A.dims[0] == 1 && B.dims[0] == 1 ? 1 : numel_of(batch), A.dims[1], n}, {}, out.data_ptr<float>()};
    C.strides = {C.dims[1] * n, n, 1};
    run_matmul(A, B, C, nullptr);
  }
  record("matmul", {a, b}, out, [a, b](const Tensor& g) {
    return Grads{a.requires_grad() ? matmul(g, b.transpose(-2, -1)) : Tensor(),
                 b.requires_grad() ? matmul(a.transpose(-2, -1), g) : Tensor()};
  });
  return out;
}

void check_matmul_inputs(const char* op, const Tensor& a, const Tensor& b) {
  LOOM_CHECK(a.defined() && b.defined(), op, ": tensor is undefined");
  LOOM_CHECK(a.dtype() == kFloat32 && b.dtype() == kFloat32, op, ": expects float32 tensors, got ",
             dtype_name(a.dtype()), " ", a.sizes(), " and ", dtype_name(b.dtype()), " ", b.sizes());
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  check_matmul_inputs("matmul", a, b);
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

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  check_matmul_inputs("linear", x, weight);
  LOOM_CHECK(weight.dim() == 2, "linear: weight must be 2-D [out_features, in_features], got ", weight.sizes());
  LOOM_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1), "linear: input of shape ", x.sizes(),
             " does not match weight of shape ", weight.sizes(), " (", x.dim() ? x.size(-1) : 0, " != ",
             weight.size(1), ")");
  const int64_t in = weight.size(1), out_features = weight.size(0);
  if (bias.defined()) {
    LOOM_CHECK(bias.dtype() == kFloat32 && bias.dim() == 1 && bias.size(0) == out_features,
               "linear: bias must be float32 of shape [", out_features, "], got ", dtype_name(bias.dtype()), " ",
               bias.sizes());
  }
  Shape out_shape = x.sizes();
  out_shape.back() = out_features;
  Tensor out;
  const int64_t rows = in == 0 ? 0 : x.numel() / in;
  if (rows == 0 || out_features == 0 || in == 0) {
    NoGradGuard no_grad;
    out = bias.defined() && in == 0 ? bias.expand(out_shape).contiguous() : zeros(out_shape);
  } else {
    Tensor x2 = x.reshape({rows, in}).contiguous(), w = weight.contiguous(), b = bias.defined() ? bias.contiguous() : bias;
    out = empty(out_shape);
    Block X{{1, rows, in}, {rows * in, in, 1}, x2.data_ptr<float>()};
    Block Wt{{1, in, out_features}, {in * out_features, 1, in}, w.data_ptr<float>()};  // Wᵀ as a strided view
    Block Y{{1, rows, out_features}, {rows * out_features, out_features, 1}, out.data_ptr<float>()};
    run_matmul(X, Wt, Y, b.defined() ? b.data_ptr<float>() : nullptr);
  }
  record("linear", {x, weight, bias}, out, [x, weight, bias, rows, in, out_features](const Tensor& g) {
    Tensor g2 = g.reshape({rows, out_features});
    Tensor dx = x.requires_grad() ? matmul(g, weight) : Tensor();
    Tensor dw = weight.requires_grad() ? matmul(g2.t(), x.reshape({rows, in})) : Tensor();
    Tensor db = bias.defined() && bias.requires_grad() ? g2.sum({0}) : Tensor();
    return Grads{dx, dw, db};
  });
  return out;
}

size_t matmul_cache_size() {
  std::lock_guard<std::mutex> lock(cache_mutex);
  return cache.size();
}

Tensor Tensor::matmul(const Tensor& other) const { return loom::matmul(*this, other); }

}  // namespace loom
