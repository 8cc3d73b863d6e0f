// matmul and linear, through oneDNN.
//
//   matmul  C = A · B             dA = dC · Bᵀ         dB = Aᵀ · dC
//   linear  y = x · Wᵀ + b        dx = dy · W          dW = dyᵀ · x     db = Σ_rows dy
//
// matmul follows torch.matmul: 1-D operands are views around the 2-D case,
// N-D operands are batches of matrices with broadcast batch dims. The
// autograd engine sums gradients over broadcast batch dims.
//
// Two oneDNN entry points, each where it is fastest (loom-bench ops, on
// AVX-512 and AVX2): linear's forward is one matmul primitive with the bias
// fused (oneDNN's brgemm kernels are at their best on x · Wᵀ, the weight in
// PyTorch's [out, in] layout); every other product, linear's backward
// included, is dnnl_sgemm (faster on large squares and on the long-k
// products Aᵀ · B of weight gradients).
//
// Layout. oneDNN is handed every matrix with the tensor's own strides, so a
// transposed or sliced view costs no copy. Batch dims that continue each
// other are merged; a whole batch times one shared matrix ([B, m, k] x
// [k, n]) is one tall [B·m, k] x [k, n] product. Only matrices with no unit
// stride, or a stride of 0 (an expanded matrix), are copied first.
//
// Threads. oneDNN threads each product itself over OpenMP, as PyTorch lets
// its BLAS do; inside a parallel region it runs single-threaded. A batch of
// at least as many matrices as threads is shared out one matrix per task
// instead. Same thread count, same bits, run after run; another thread
// count may change the last bits (as in PyTorch).
//
// bfloat16. Under an AutocastGuard (core/autocast.h) both operands are
// rounded to bfloat16 and the product accumulates in float32. Where the CPU
// multiplies bfloat16 natively, every such product is a matmul primitive on
// bfloat16 copies; elsewhere the operands are rounded in float32 and go the
// float32 way (the same numbers: a product of two bfloat16 values is exact
// in float32). Parameters' bfloat16 copies are made once per autocast region.
//
// Concurrency. Any thread may call matmul at any time, also many at once.
// dnnl_sgemm keeps no state between calls. A primitive does: it is made
// for the thread count it sees when created (it may split the k sum and
// sizes its buffers for that), and by default it shares one scratchpad
// between all its runs, so two threads running it at once corrupt each
// other's results (seen on AVX-512 CPUs, whose brgemm kernels use a
// scratchpad). So primitives are cached per thread count and made with a
// user-managed scratchpad, and each run gets its own thread's buffer, the
// design oneDNN documents as thread-safe.
#include <algorithm>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>

#include <omp.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <loom/core/autocast.h>
#include <loom/core/autograd.h>
#include <loom/core/parallel.h>
#include <loom/ops/kernels/kernels.h>
#include <loom/ops/ops.h>

namespace loom {

namespace {

using dnnl::memory;

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

// Whether oneDNN takes this layout as it is: rows or columns contiguous,
// and not overlapping.
bool gemm_layout(const Mat& m) { return (m.cs == 1 && m.rs >= m.cols) || (m.rs == 1 && m.cs >= m.rows); }

// An operand of a batched product: float32 or bfloat16 data, the matrix
// layout and where each batch matrix starts (a stride per batch dim of the
// product, 0 where broadcast), all in elements.
struct Operand {
  const void* data;
  bool bf16;
  Shape batch_strides;
  Mat mat;
  const void* at(int64_t offset) const {
    return static_cast<const char*>(data) + offset * (bf16 ? 2 : 4);
  }
};

// How many threads a oneDNN call made here would use.
int threads_here() { return omp_in_parallel() ? 1 : omp_get_max_threads(); }

// ---- dnnl_sgemm: C[m, n] (row stride n) = A · B -------------------------------------------
void sgemm(const Mat& a, const float* ap, const Mat& b, const float* bp, float* c) {
  // Row-major BLAS: 'N' with the row stride as leading dim, or 'T' for a
  // matrix whose columns are contiguous (stored transposed).
  const bool ta = a.cs != 1, tb = b.cs != 1;
  const dnnl_status_t status = dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', a.rows, b.cols, a.cols, 1.0f, ap,
                                          ta ? a.cs : a.rs, bp, tb ? b.cs : b.rs, 0.0f, c, b.cols);
  LOOM_CHECK(status == dnnl_success, "matmul: dnnl_sgemm failed (status ", int(status), ") for [", a.rows, ", ",
             a.cols, "] x [", b.rows, ", ", b.cols, "]");
}

void primitive_product(const Mat& x, const void* xp, const Mat& wt, const void* wp, bool bf16, const float* bias,
                       float* y);

// C[p] = A[p] · B[p] for every index p of the batch shape; C is contiguous
// [batch..., m, n]. float32 operands go to dnnl_sgemm, bfloat16 ones (both)
// to the matmul primitive.
void batched_product(Operand a, Operand b, float* c, const Shape& batch_shape) {
  // Drop size-1 batch dims, then merge each dim into the one before it
  // where both operands' strides continue (C, contiguous, always does).
  Shape batch, a_bs, b_bs;
  for (size_t d = 0; d < batch_shape.size(); ++d) {
    if (batch_shape[d] == 1) continue;
    const int64_t n = batch_shape[d], as = a.batch_strides[d], bs = b.batch_strides[d];
    if (!batch.empty() && a_bs.back() == as * n && b_bs.back() == bs * n) {
      batch.back() *= n, a_bs.back() = as, b_bs.back() = bs;
    } else {
      batch.push_back(n), a_bs.push_back(as), b_bs.push_back(bs);
    }
  }
  // A batch times one shared matrix, rows after rows: one tall product.
  if (batch.size() == 1 && b_bs[0] == 0 && a.mat.cs == 1 && a_bs[0] == a.mat.rows * a.mat.rs) {
    a.mat.rows *= batch[0];
    batch.clear(), a_bs.clear(), b_bs.clear();
  }
  const int64_t count = numel_of(batch), per_matrix = a.mat.rows * b.mat.cols;
  auto one = [&](int64_t p) {
    int64_t a_off = 0, b_off = 0;
    for (int64_t d = int64_t(batch.size()) - 1, rest = p; d >= 0; --d) {  // batch index -> offsets
      const int64_t i = rest % batch[size_t(d)];
      rest /= batch[size_t(d)];
      a_off += i * a_bs[size_t(d)];
      b_off += i * b_bs[size_t(d)];
    }
    if (a.bf16) {
      primitive_product(a.mat, a.at(a_off), b.mat, b.at(b_off), true, nullptr, c + p * per_matrix);
    } else {
      sgemm(a.mat, static_cast<const float*>(a.at(a_off)), b.mat, static_cast<const float*>(b.at(b_off)),
            c + p * per_matrix);
    }
  };
  if (count >= threads_here()) {  // one matrix per task (oneDNN single-threaded inside)
    parallel_for(count, 2 * per_matrix * a.mat.cols, [&](int64_t first, int64_t end) {
      for (int64_t p = first; p < end; ++p) one(p);
    });
  } else {
    for (int64_t p = 0; p < count; ++p) one(p);  // oneDNN threads each
  }
}

// ---- the matmul primitive: linear's forward, and bfloat16 products ------------------------
// y[rows, out] = X · Wᵀ (+ bias) on `threads` threads, X and Wᵀ float32 or
// bfloat16, y float32.
struct Key {
  Mat x, wt;
  bool bias;
  int threads;
  bool bf16;
  bool operator==(const Key& o) const {
    return bias == o.bias && threads == o.threads && bf16 == o.bf16 &&
           std::tie(x.rows, x.cols, x.rs, x.cs, wt.rows, wt.cols, wt.rs, wt.cs) ==
               std::tie(o.x.rows, o.x.cols, o.x.rs, o.x.cs, o.wt.rows, o.wt.cols, o.wt.rs, o.wt.cs);
  }
};

struct KeyHash {
  size_t operator()(const Key& k) const {
    size_t h = size_t(k.bias) * 31 + size_t(k.threads) * 2 + size_t(k.bf16);
    for (int64_t v : {k.x.rows, k.x.cols, k.x.rs, k.x.cs, k.wt.rows, k.wt.cols, k.wt.rs, k.wt.cs})
      h = h * 1000003u ^ std::hash<int64_t>()(v);
    return h;
  }
};

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

memory::desc desc_of(const Mat& m, bool bf16 = false) {
  return memory::desc({m.rows, m.cols}, bf16 ? memory::data_type::bf16 : memory::data_type::f32, {m.rs, m.cs});
}

// A cached primitive with the descs it runs on.
struct Prepared {
  dnnl::matmul prim;
  memory::desc x, wt, y, bias, scratch;
};

// While alive, oneDNN calls on this thread see `threads` threads.
struct ThreadCount {
  int saved = omp_get_max_threads();
  explicit ThreadCount(int threads) { omp_set_num_threads(threads); }
  ~ThreadCount() { omp_set_num_threads(saved); }
};

std::mutex cache_mutex;
std::unordered_map<Key, Prepared, KeyHash> cache;

Prepared prepared_for(const Key& key) {
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  ThreadCount count(key.threads);  // oneDNN sizes the primitive for the threads it sees now
  Prepared p{{}, desc_of(key.x, key.bf16), desc_of(key.wt, key.bf16), desc_of({key.x.rows, key.wt.cols, key.wt.cols, 1}),
             desc_of({1, key.wt.cols, key.wt.cols, 1}), {}};
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::matmul::desc desc = key.bias ? dnnl::matmul::desc(p.x, p.wt, p.bias, p.y) : dnnl::matmul::desc(p.x, p.wt, p.y);
  dnnl::matmul::primitive_desc pd(desc, attr, cpu_engine());
  p.scratch = pd.scratchpad_desc();
  p.prim = dnnl::matmul(pd);
  cache.emplace(key, p);
  return p;
}

// This thread's scratchpad, at least `bytes` long. Never shared: a thread's
// runs follow one another.
void* scratch_buffer(size_t bytes) {
  struct Buffer {
    std::unique_ptr<void, decltype(&std::free)> data{nullptr, &std::free};
    size_t size = 0;
  };
  thread_local Buffer buffer;
  if (bytes > buffer.size) {
    const size_t size = (bytes + 4095) / 4096 * 4096;
    buffer.data.reset(std::aligned_alloc(4096, size));
    LOOM_CHECK(buffer.data != nullptr, "linear: cannot allocate a ", size, "-byte oneDNN scratchpad");
    buffer.size = size;
  }
  return buffer.data.get();
}

// y = X · Wᵀ (+ bias), y contiguous [rows, out]; X and Wᵀ both float32 or both bfloat16.
void primitive_product(const Mat& x, const void* xp, const Mat& wt, const void* wp, bool bf16, const float* bias,
                       float* y) {
  const Prepared p = prepared_for({x, wt, bias != nullptr, threads_here(), bf16});
  thread_local dnnl::stream stream(cpu_engine());
  dnnl::engine& eng = cpu_engine();
  std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, memory(p.x, eng, const_cast<void*>(xp))},
                                          {DNNL_ARG_WEIGHTS, memory(p.wt, eng, const_cast<void*>(wp))},
                                          {DNNL_ARG_DST, memory(p.y, eng, y)}};
  if (bias) args.emplace(DNNL_ARG_BIAS, memory(p.bias, eng, const_cast<float*>(bias)));
  if (size_t bytes = p.scratch.get_size()) args.emplace(DNNL_ARG_SCRATCHPAD, memory(p.scratch, eng, scratch_buffer(bytes)));
  p.prim.execute(stream, args);
  stream.wait();
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
  Operand op{src.raw_data(), src.dtype() == kBFloat16, Shape(batch.size(), 0), mat};
  const size_t lead = batch.size() - size_t(t.dim() - 2);
  for (size_t d = lead; d < batch.size(); ++d)
    if (src.size(int64_t(d - lead)) != 1) op.batch_strides[d] = src.stride(int64_t(d - lead));
  return op;
}

// ---- autocast: the bfloat16 operands -------------------------------------------------------
// t elementwise as bfloat16 (native) or rounded to bfloat16 in float32, in
// t's own memory order when t is a transposed matrix (no transpose copied).
Tensor convert_bf16(const Tensor& t, bool native) {
  NoGradGuard no_grad;
  const bool transposed = t.dim() >= 2 && !t.is_contiguous() && t.transpose(-2, -1).is_contiguous();
  const Tensor src = transposed ? t.transpose(-2, -1) : t.contiguous();
  Tensor out = empty(src.sizes(), native ? kBFloat16 : kFloat32);
  const float* x = src.data_ptr<float>();
  const int64_t n = src.numel();
  constexpr int64_t kChunk = 1 << 14;
  parallel_for((n + kChunk - 1) / kChunk, kChunk, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t first = c * kChunk, len = std::min(kChunk, n - first);
      if (native) kernels::table().to_bf16_dot(x + first, static_cast<uint16_t*>(out.raw_data()) + first, len);
      else kernels::table().round_bf16(x + first, out.data_ptr<float>() + first, len);
    }
  });
  return transposed ? out.transpose(-2, -1) : out;
}

// t as an operand of an autocast product. A parameter (a leaf that requires
// grad) is converted once per autocast region, like PyTorch's cast cache:
// the forward and the backward of a step share the copy. An activation that
// its op wrote with a bfloat16 twin (core/autocast.h) is read from the twin.
Tensor bf16_operand(const Tensor& t) {
  const bool native = native_bf16();
  if (!(t.is_leaf() && t.requires_grad())) {
    if (native)
      if (Tensor twin = bf16_twin_of(t); twin.defined()) return twin;
    return convert_bf16(t, native);
  }
  struct Cached {
    std::shared_ptr<TensorImpl> owner;  // keeps the key's address from being reused
    Tensor copy;
  };
  thread_local std::unordered_map<const TensorImpl*, Cached> cast_cache;
  thread_local uint64_t cache_region = ~uint64_t(0);
  if (cache_region != autocast_region()) cast_cache.clear(), cache_region = autocast_region();
  auto it = cast_cache.find(t.impl_ptr().get());
  if (it != cast_cache.end() && it->second.copy.dtype() == (native ? kBFloat16 : kFloat32)) return it->second.copy;
  Tensor copy = convert_bf16(t, native);
  cast_cache[t.impl_ptr().get()] = {t.impl_ptr(), copy};
  return copy;
}

Tensor matmul_nd(const Tensor& a, const Tensor& b) {
  const int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
  LOOM_CHECK(b.size(-2) == k, "matmul: cannot multiply ", a.sizes(), " by ", b.sizes(), " (", k, " != ", b.size(-2),
             ")");
  const bool autocast = autocast_enabled();
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
    const Tensor a_in = autocast ? bf16_operand(a) : a, b_in = autocast ? bf16_operand(b) : b;
    batched_product(as_operand(a_in, batch, keep_a), as_operand(b_in, batch, keep_b), out.data_ptr<float>(), batch);
  }
  record("matmul", {a, b}, out, [a, b, autocast](const Tensor& g) {
    AutocastGuard precision(autocast);  // the backward's products in the forward's precision
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
  const bool autocast = autocast_enabled();
  Shape out_shape = x.sizes();
  out_shape.back() = out_features;
  const int64_t rows = numel_of(Shape(x.sizes().begin(), x.sizes().end() - 1));
  Tensor out, x_rounded;
  if (rows == 0 || out_features == 0 || in == 0) {
    NoGradGuard no_grad;
    out = bias.defined() ? bias.expand(out_shape).contiguous() : zeros(out_shape);  // an empty product is 0
  } else {
    Tensor x2 = x.detach().reshape({rows, in}), b = bias.defined() ? bias.contiguous() : bias;
    const Tensor x_in = autocast ? bf16_operand(x2) : x2, w_in = autocast ? bf16_operand(weight) : weight.detach();
    if (autocast && weight.requires_grad()) x_rounded = x_in;  // dW's operand, rounded once
    Tensor keep_x, keep_w;
    Operand X = as_operand(x_in, {}, keep_x);
    Operand Wt = as_operand(w_in.t(), {}, keep_w);  // Wᵀ [in, out] as a strided view
    out = empty(out_shape);
    primitive_product(X.mat, X.data, Wt.mat, Wt.data, X.bf16, b.defined() ? b.data_ptr<float>() : nullptr,
                      out.data_ptr<float>());
  }
  record("linear", {x, weight, bias}, out, [x, weight, bias, rows, in, out_features, autocast, x_rounded](const Tensor& g) {
    AutocastGuard precision(autocast);  // the backward's products in the forward's precision
    Tensor g2 = g.reshape({rows, out_features});
    if (autocast && rows > 0 && out_features > 0 && in > 0) {
      // g rounded once for both products, x's copy from the forward: the
      // same operands matmul() would round again, without the conversions.
      const Tensor g_in = bf16_operand(g2);
      Tensor keep_g, keep_w, keep_gt, keep_x, dx, dw;
      const Operand G = as_operand(g_in, {}, keep_g);
      if (x.requires_grad()) {
        const Tensor w_in = bf16_operand(weight);  // [out, in]; alive until the product is done
        const Operand W = as_operand(w_in, {}, keep_w);
        dx = empty(x.sizes());
        primitive_product(G.mat, G.data, W.mat, W.data, G.bf16, nullptr, dx.data_ptr<float>());
      }
      if (weight.requires_grad()) {
        const Operand Gt = as_operand(g_in.t(), {}, keep_gt), X = as_operand(x_rounded, {}, keep_x);
        dw = empty({out_features, in});
        primitive_product(Gt.mat, Gt.data, X.mat, X.data, Gt.bf16, nullptr, dw.data_ptr<float>());
      }
      Tensor db = bias.defined() && bias.requires_grad() ? g2.sum({0}) : Tensor();
      return Grads{dx, dw, db};
    }
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
