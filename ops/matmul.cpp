// matmul and linear, through oneDNN's matmul primitive.
//
//   matmul  C = A · B             dA = dC · Bᵀ         dB = Aᵀ · dC
//   linear  y = x · Wᵀ + b        dx = dy · W          dW = dyᵀ · x     db = Σ_rows dy
//
// matmul follows torch.matmul: 1-D operands are views around the 2-D case,
// N-D operands are batches of matrices with broadcast batch dims. The
// autograd engine sums gradients over broadcast batch dims.
//
// Layout. oneDNN is handed every matrix with the tensor's own strides, so a
// transposed or sliced view costs no copy. Batch dims never reach oneDNN:
// loom walks them itself, and a broadcast batch dim is simply a stride of 0
// in that walk. A whole batch times one shared matrix ([B, m, k] x [k, n])
// is one tall [B·m, k] x [k, n] product. Only matrices oneDNN has no fast
// kernel for are copied first: those with no unit stride in either dim, or
// a stride of 0 in one (an expanded matrix). oneDNN 2.6 accepts them but
// runs its reference loop, about 100x slower than the copy.
//
// Threads. Left alone, oneDNN threads each product itself and picks its
// algorithm by the thread count: with 2 threads it may split the k sum in
// two and add the halves, so the result changes with the thread count. loom
// instead cuts the output into strips of at most kStrip rows (or columns,
// whichever side is longer), a cut that depends on the shape only, and runs
// each strip of each batch matrix on one thread. Every output element is
// then summed in the same order for any thread count.
//
// Caching. Creating a oneDNN primitive costs far more than running a small
// one, so primitives are cached by shape and strides: a training loop
// creates each one once (two per product at most: full strips and the last).
#include <algorithm>
#include <mutex>
#include <unordered_map>

#include <omp.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <loom/core/autograd.h>
#include <loom/core/parallel.h>
#include <loom/ops/ops.h>

namespace loom {

namespace {

using dnnl::memory;

// The longest side of one task's output strip. oneDNN's single-thread
// kernel is markedly slower on strips of 256 rows of a large product than on
// 512 (measured: 40 vs 76 GFLOP/s at 1024^3), so strips are up to 512 long,
// but a side of 512 to 1023 is still cut in two so two threads share it.
constexpr int64_t kStrip = 512;

// One matrix: its sizes and strides (in elements), as oneDNN sees it.
struct Mat {
  int64_t rows, cols, rs, cs;
};

// A size-1 dim's stride is arbitrary in a tensor; make it the plain one.
Mat plain(Mat m) {
  if (m.rows == 1) m.rs = m.cols;
  if (m.cols == 1) m.cs = 1;
  return m;
}

// Whether oneDNN has a gemm kernel for this layout (see the top comment).
bool gemm_layout(const Mat& m) { return (m.rs == 1 || m.cs == 1) && m.rs != 0 && m.cs != 0; }

// One 2-D product C = A · B (+ bias), C row-major with row stride ldc.
struct Key {
  int64_t m, k, n, a_rs, a_cs, b_rs, b_cs, ldc;
  bool bias;
  bool operator==(const Key&) const = default;
};

struct KeyHash {
  size_t operator()(const Key& key) const {
    size_t h = key.bias;
    for (int64_t v : {key.m, key.k, key.n, key.a_rs, key.a_cs, key.b_rs, key.b_cs, key.ldc})
      h = h * 1000003u ^ std::hash<int64_t>()(v);
    return h;
  }
};

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

memory::desc desc_of(int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
  return memory::desc({rows, cols}, memory::data_type::f32, {rs, cs});
}
memory::desc a_desc(const Key& key) { return desc_of(key.m, key.k, key.a_rs, key.a_cs); }
memory::desc b_desc(const Key& key) { return desc_of(key.k, key.n, key.b_rs, key.b_cs); }
memory::desc c_desc(const Key& key) { return desc_of(key.m, key.n, key.ldc, 1); }
memory::desc bias_desc(const Key& key) { return desc_of(1, key.n, key.n, 1); }

// While alive, oneDNN calls on this thread use one thread. (oneDNN sizes its
// work by omp_get_max_threads(), which belongs to the calling thread, or to
// its task inside a parallel region.)
struct OneThread {
  int saved = omp_get_max_threads();
  OneThread() { omp_set_num_threads(1); }
  ~OneThread() { omp_set_num_threads(saved); }
};

std::mutex cache_mutex;
std::unordered_map<Key, dnnl::matmul, KeyHash> cache;

dnnl::matmul primitive_for(const Key& key) {
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  OneThread one;  // oneDNN may size the primitive for the threads it sees now
  dnnl::matmul::desc desc = key.bias ? dnnl::matmul::desc(a_desc(key), b_desc(key), bias_desc(key), c_desc(key))
                                     : dnnl::matmul::desc(a_desc(key), b_desc(key), c_desc(key));
  dnnl::matmul prim(dnnl::matmul::primitive_desc(desc, cpu_engine()));
  cache.emplace(key, prim);
  return prim;
}

// Runs one cached product on the calling thread.
void execute(const dnnl::matmul& prim, const Key& key, const float* a, const float* b, const float* bias, float* c) {
  thread_local dnnl::stream stream(cpu_engine());
  dnnl::engine& eng = cpu_engine();
  std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, memory(a_desc(key), eng, const_cast<float*>(a))},
                                          {DNNL_ARG_WEIGHTS, memory(b_desc(key), eng, const_cast<float*>(b))},
                                          {DNNL_ARG_DST, memory(c_desc(key), eng, c)}};
  if (bias) args.emplace(DNNL_ARG_BIAS, memory(bias_desc(key), eng, const_cast<float*>(bias)));
  prim.execute(stream, args);
  stream.wait();
}

// An operand of a batched product: where each batch matrix starts (a stride
// per output batch dim, 0 where broadcast) and the matrix layout.
struct Operand {
  const float* data;
  Shape batch_strides;
  Mat mat;
};

// C[p] = A[p] · B[p] (+ bias) for every index p of the batch shape; C is
// contiguous [batch..., m, n]. Each task is one strip of one C[p].
void batched_product(const Operand& a, const Operand& b, const float* bias, float* c, const Shape& batch) {
  const int64_t m = a.mat.rows, k = a.mat.cols, n = b.mat.cols;
  const bool by_rows = m >= n;
  const int64_t side = by_rows ? m : n;
  const int64_t strips = std::max((side + kStrip - 1) / kStrip, std::min<int64_t>(2, side / (kStrip / 2)));
  const int64_t strip = (side + strips - 1) / strips, last = side - (strips - 1) * strip;
  auto key_for = [&](int64_t len) {
    Mat sa = plain({by_rows ? len : m, k, a.mat.rs, a.mat.cs}), sb = plain({k, by_rows ? n : len, b.mat.rs, b.mat.cs});
    return Key{sa.rows, k, sb.cols, sa.rs, sa.cs, sb.rs, sb.cs, n, bias != nullptr};
  };
  const Key full = key_for(strip), tail = key_for(last);
  const dnnl::matmul full_prim = primitive_for(full), tail_prim = primitive_for(tail);
  parallel_for(numel_of(batch) * strips, 2 * strip * k * (by_rows ? n : m), [&](int64_t first, int64_t end) {
    OneThread one;
    for (int64_t t = first; t < end; ++t) {
      int64_t p = t / strips, s = t % strips, a_off = 0, b_off = 0;
      for (int64_t d = int64_t(batch.size()) - 1, rest = p; d >= 0; --d) {  // batch index -> offsets
        const int64_t i = rest % batch[size_t(d)];
        rest /= batch[size_t(d)];
        a_off += i * a.batch_strides[size_t(d)];
        b_off += i * b.batch_strides[size_t(d)];
      }
      const int64_t o = s * strip;  // first row (or column) of the strip
      const bool is_last = s == strips - 1;
      if (by_rows) {
        execute(is_last ? tail_prim : full_prim, is_last ? tail : full, a.data + a_off + o * a.mat.rs, b.data + b_off,
                bias, c + p * m * n + o * n);
      } else {
        execute(is_last ? tail_prim : full_prim, is_last ? tail : full, a.data + a_off, b.data + b_off + o * b.mat.cs,
                bias ? bias + o : nullptr, c + p * m * n + o);
      }
    }
  });
}

// t ([batch..., rows, cols]) as an operand of a product over `batch`; `keep`
// holds the copy when t's matrices need one.
Operand as_operand(const Tensor& t, const Shape& batch, Tensor& keep) {
  Tensor src = t;
  Mat mat = plain({t.size(-2), t.size(-1), t.stride(-2), t.stride(-1)});
  if (!gemm_layout(mat)) {
    keep = t.contiguous();
    src = keep;
    mat = plain({t.size(-2), t.size(-1), src.stride(-2), src.stride(-1)});
  }
  Operand op{src.data_ptr<float>(), Shape(batch.size(), 0), mat};
  const size_t lead = batch.size() - size_t(t.dim() - 2);
  for (size_t d = lead; d < batch.size(); ++d)
    if (src.size(int64_t(d - lead)) != 1) op.batch_strides[d] = src.stride(int64_t(d - lead));
  return op;
}

// Whether a's batch dims continue its rows: batch matrix p starts right
// after matrix p - 1's last row, so the batch is one tall matrix.
bool batch_extends_rows(const Operand& a, const Shape& batch) {
  int64_t expected = a.mat.rows * a.mat.rs;
  for (int64_t d = int64_t(batch.size()) - 1; d >= 0; --d) {
    if (batch[size_t(d)] == 1) continue;
    if (a.batch_strides[size_t(d)] != expected) return false;
    expected *= batch[size_t(d)];
  }
  return true;
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
    Operand A = as_operand(a, batch, keep_a), B = as_operand(b, batch, keep_b);
    const bool b_shared = std::all_of(B.batch_strides.begin(), B.batch_strides.end(), [](int64_t s) { return s == 0; });
    if (b_shared && A.mat.cs == 1 && batch_extends_rows(A, batch)) {
      A.mat.rows = numel_of(batch) * m;  // one tall product
      batch = {};
    }
    batched_product(A, B, nullptr, out.data_ptr<float>(), batch);
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
  const int64_t rows = numel_of(Shape(x.sizes().begin(), x.sizes().end() - 1));
  Tensor out;
  if (rows == 0 || out_features == 0 || in == 0) {
    NoGradGuard no_grad;
    out = bias.defined() ? bias.expand(out_shape).contiguous() : zeros(out_shape);  // an empty product is 0
  } else {
    Tensor x2 = x.detach().reshape({rows, in}), b = bias.defined() ? bias.contiguous() : bias;
    Tensor keep_x, keep_w;
    Operand X = as_operand(x2, {}, keep_x);
    Operand Wt = as_operand(weight.detach().t(), {}, keep_w);  // Wᵀ [in, out] as a strided view
    out = empty(out_shape);
    batched_product(X, Wt, b.defined() ? b.data_ptr<float>() : nullptr, out.data_ptr<float>(), {});
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
