// The SIMD kernels, behind one table of function pointers per instruction
// set (like ggml's per-type function tables).
//
// The kernels themselves are templates on an xsimd architecture
// (ops/kernels/*_impl.h). Each isa_*.cpp file compiles all of them for one
// instruction set, with that set's compiler flags, and fills a Table. At
// first use, table() picks the best set this CPU supports, so one binary
// runs on any x86-64 machine: AVX-512 where there is AVX-512, AVX2+FMA where
// there is AVX2, and SSE2 (the x86-64 baseline) everywhere else.
//
// Ops (ops/*.cpp) call kernels once per contiguous run of elements, never
// per element: `kernels::table().unary(UnaryOp::Exp, x, y, n)`.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace loom::kernels {

enum class UnaryOp : uint8_t {
  Neg, Abs, Exp, Log, Sqrt, Rsqrt, Tanh, Sigmoid, Relu, GeluErf, GeluTanh, Silu, Softplus,
};
enum class BinaryOp : uint8_t { Add, Sub, Mul, Div, Maximum, Minimum, Pow };

// The per-step constants of one optimizer update (train/optim.cpp states the rules).
struct AdamStep {
  float beta1, beta2, eps;
  float step_size;     // lr / (1 − β₁ᵗ)
  float inv_sqrt_bc2;  // 1 / √(1 − β₂ᵗ)
  float shrink;        // AdamW's decoupled decay: 1 − lr·wd (1 for Adam)
  float l2;            // Adam's L2 term added to the gradient (0 for AdamW)
};
struct SGDStep {
  float lr, momentum, dampening, weight_decay;
  bool first, nesterov;  // first: the momentum buffer starts as the gradient
};

struct Table {
  const char* name;  // "avx512", "avx2", "sse2"

  // y[i] = f(x[i]) for i < n.
  void (*unary)(UnaryOp op, const float* x, float* y, int64_t n);
  // dx[i] = g[i] * f'(x[i]); y is f(x) where the rule is cheaper from it.
  void (*unary_backward)(UnaryOp op, const float* x, const float* y, const float* g, float* dx, int64_t n);
  // y[i] = a[i * a_step] op b[i * b_step]; a step of 0 repeats one value.
  void (*binary)(BinaryOp op, const float* a, int64_t a_step, const float* b, int64_t b_step, float* y, int64_t n);
  // Sum of x[0..n). The order of additions is the same on every instruction
  // set (16 lanes, then blocks in double), so the result is bit-identical.
  double (*sum)(const float* x, int64_t n);
  // Σ x[i]² over x[0..n), in the same fixed order as sum (no FMA), so it is
  // bit-identical on every instruction set too (gradient norms).
  double (*sum_squares)(const float* x, int64_t n);
  // Largest element of x[0..n) (n > 0); NaN if any element is NaN.
  float (*max)(const float* x, int64_t n);
  // One row of softmax (log = false) or log_softmax (log = true).
  void (*softmax)(const float* x, float* y, int64_t n, bool log);
  // Its backward for one row, from the output y:
  //   softmax:     dx = y * (g - sum(g * y))
  //   log_softmax: dx = g - exp(y) * sum(g)
  void (*softmax_backward)(const float* y, const float* g, float* dx, int64_t n, bool log);
  // log(sum(exp(x[0..n)))), computed as max + log(sum(exp(x - max))).
  float (*logsumexp)(const float* x, int64_t n);
  // dx = scale * (exp(x - lse) - offset): the softmax part of cross_entropy's gradient.
  void (*softmax_minus)(const float* x, float lse, float scale, float offset, float* dx, int64_t n);
  // y = exp(x - shift), returning Σ y (summed in 16 lanes, then the lanes
  // as a fixed tree: the same on every ISA): an online-softmax row's weights
  // and their sum in one pass (ops/attention.cpp).
  float (*exp_sum)(const float* x, float shift, float* y, int64_t n);
  // One step of an attention tile's online softmax over the rows r < nr of
  // x [nr, nc], float32, with exp_sum's exp and sums:
  //   mx = max(m[r], max_c x[r][c]), NaN if any of them is NaN
  //   mx = −∞ (nothing visible yet): weights 0, m[r], l[r] and o's row unchanged
  //   else: y[r] = exp(x[r] − mx), a = exp(m[r] − mx), l[r] = l[r]·a + Σ_c y[r][c],
  //         m[r] = mx, and o's row r (dv floats, row stride dv) times a (a
  //         row with m[r] = −∞ on entry is 0 and is left as it is: a = 1)
  void (*softmax_tile)(const float* x, int64_t nr, int64_t nc, float* m, float* l, float* y, float* o, int64_t dv);
  // y[r][c] = exp(x[r][c] − shift[r]) over [nr, nc], with the exp of
  // softmax_tile (and of softmax_tile_bf16): an attention backward's weights.
  // On AVX-512 both are ops/kernels/avx512_tiles.h's (exp16), elsewhere
  // kernels_impl.h's exp_fast.
  void (*exp_tile)(const float* x, int64_t nr, int64_t nc, const float* shift, float* y);
  // dS = P * (dP - delta), exactly 0 where P is 0 (a masked key's gradient
  // stays 0 even when dP is NaN): softmax's backward inside an attention tile.
  // dS may be dP (in place).
  void (*softmax_grad)(const float* P, const float* dP, float delta, float* dS, int64_t n);
  // Σ_i x[i]·y[i] in 16 float lanes (fused multiply-adds), reduced in a fixed
  // tree: the same bits on every ISA. An attention backward's Δ = Σ_d dO·O.
  float (*dot16)(const float* x, const float* y, int64_t n);

  // One row of layer_norm (rms = false) or rms_norm (rms = true):
  //   y = (x - mean) * rstd * w + b,  rstd = 1 / sqrt(var + eps)   (rms: mean = 0, var = mean(x²))
  // w and b may be null. Writes the row's mean and rstd for the backward.
  void (*norm)(const float* x, const float* w, const float* b, float* y, int64_t n, float eps, bool rms,
               float* mean, float* rstd);
  // Its backward for one row, with ĝ = g * w and x̂ = (x - mean) * rstd:
  //   dx = rstd * (ĝ - mean(ĝ) - x̂ * mean(ĝ x̂))      (rms: without the mean(ĝ) term)
  void (*norm_backward)(const float* x, const float* w, const float* g, float mean, float rstd, float* dx,
                        int64_t n, bool rms);
  // dw += g * x̂ and db += g (db may be null) for one row segment.
  void (*norm_param_grads)(const float* x, const float* g, float mean, float rstd, float* dw, float* db, int64_t n);

  // A small matrix product inside an attention tile:
  //   C[m, n] = alpha * A[m, k] · B[k, n]   (+ C when accumulate)
  // A(r, t) is A[r * a_rs + t * a_cs], so a transposed A costs nothing; B and
  // C are row-major with row strides ldb and ldc.
  void (*gemm)(const float* A, int64_t a_rs, int64_t a_cs, const float* B, int64_t ldb, float* C, int64_t ldc,
               int64_t m, int64_t n, int64_t k, float alpha, bool accumulate);

  // One fused optimizer update over n elements of a parameter w with gradient g:
  //   Adam/AdamW: g ← g + l2·w;  m ← β₁m + (1 − β₁)g;  v ← β₂v + (1 − β₂)g²;
  //               w ← w·shrink − step_size · m / (√v · inv_sqrt_bc2 + ε)
  //   SGD:        d ← g + wd·w;  buf ← first ? d : μ·buf + (1 − dampening)·d  (buf null: no momentum);
  //               d ← nesterov ? d + μ·buf : buf;  w ← w − lr·d
  void (*adam_update)(float* w, const float* g, float* m, float* v, int64_t n, const AdamStep& s);
  void (*sgd_update)(float* w, const float* g, float* buf, int64_t n, const SGDStep& s);

  // bfloat16: y[i] = the top 16 bits of x[i] rounded to nearest even (NaN
  // stays a quiet NaN), the same bits as core/dtype.h's BFloat16(float).
  void (*to_bf16)(const float* x, uint16_t* y, int64_t n);
  // y[i] = float(bfloat16(x[i])): x rounded to bfloat16 precision, as float.
  void (*round_bf16)(const float* x, float* y, int64_t n);
  // to_bf16 for the operands of bfloat16 dot products (autocast's products):
  // the same bits, except that a subnormal may become a zero of its sign, as
  // vdpbf16ps and AMX read subnormals anyway. The "avx512bf16" table's is one
  // vcvtneps2bf16 per 16 values, about twice as fast as to_bf16's integer
  // rounding; elsewhere it is to_bf16.
  void (*to_bf16_dot)(const float* x, uint16_t* y, int64_t n);

  // gemm with A and B rounded to bfloat16 and the products summed in float32
  // (vdpbf16ps): the attention tiles under autocast. Only the "avx512bf16"
  // table has it (CPUs with AVX512-BF16); null elsewhere, where autocast
  // attention runs the float32 gemm.
  void (*gemm_bf16)(const float* A, int64_t a_rs, int64_t a_cs, const float* B, int64_t ldb, float* C, int64_t ldc,
                    int64_t m, int64_t n, int64_t k, float alpha, bool accumulate);
  // The same in two steps, so a B read by many tiles is rounded once:
  // pack_bf16_pairs writes B [k, n] as pairs of rows, bfloat16 bits
  //   Bp[p][j] = B[2p][j] | B[2p+1][j] << 16   (p < ⌈k/2⌉, j < ⌈n/16⌉·16; 0 past k and n)
  // with row stride ldp >= ⌈n/16⌉·16; gemm_bf16_packed multiplies by it
  // (ldp as given, and columns up to ⌈n/16⌉·16 must be readable). An odd
  // row of B starts no pair: tiles begin at even rows.
  void (*pack_bf16_pairs)(const float* B, int64_t ldb, int64_t k, int64_t n, uint32_t* Bp, int64_t ldp);
  void (*gemm_bf16_packed)(const float* A, int64_t a_rs, int64_t a_cs, const uint32_t* Bp, int64_t ldp, float* C,
                           int64_t ldc, int64_t m, int64_t n, int64_t k, float alpha, bool accumulate);
  // A packed too, so an A read by many tiles (Q, dO) is rounded once and a
  // tile's own P and dS are written straight in this layout:
  //   C[m, n] = alpha · Σ_{p < kp} Ap(r, p) · Bp[p][·]  (+ C when accumulate)
  // with Ap(r, p) = Ap[r · sr + p · sp] the pair (A[r][2p], A[r][2p+1]). A
  // row-major A is pack_bf16_rows's layout (sr = its ldp, sp = 1); a
  // transposed A, Aᵀ = X [k, m], is pack_bf16_pairs of X (sr = 1, sp = its ldp).
  void (*gemm_bf16_pp)(const uint32_t* Ap, int64_t sr, int64_t sp, const uint32_t* Bp, int64_t ldp, float* C,
                       int64_t ldc, int64_t m, int64_t n, int64_t kp, float alpha, bool accumulate);
  // Ap[r][p] = A[r][2p] | A[r][2p+1] << 16, bfloat16 bits, p < ⌈cols/2⌉ (0
  // partner for an odd cols), row stride ldp >= ⌈cols/2⌉.
  void (*pack_bf16_rows)(const float* A, int64_t lda, int64_t rows, int64_t cols, uint32_t* Ap, int64_t ldp);
  // pack_bf16_pairs of Xᵀ, read from X [rows, cols] (row stride ldx):
  //   Bp[p][j] = X[j][2p] | X[j][2p+1] << 16   (p < ⌈cols/2⌉, j < ⌈rows/16⌉·16; 0 past rows and cols)
  void (*pack_bf16_pairs_t)(const float* X, int64_t ldx, int64_t rows, int64_t cols, uint32_t* Bp, int64_t ldp);
  // The softmax part of an attention tile with AVX-512's vscalefps, a whole
  // tile per call, its weights' exp to about 3e-6 relative (avx512_tiles.h's
  // exp16_weights: they are rounded to bfloat16, 2^-9, for P V; alpha's exp
  // is exp16's, about 1 ulp). One step
  // of the online softmax over the rows r < nr of x [nr, nc]:
  //   mx = max(m[r], max_c x[r][c]), NaN if any of them is NaN
  //   mx = −∞ (nothing visible yet): weights 0, alpha[r] = 1, m[r] and l[r] unchanged
  //   else: e = exp(x[r] − mx), alpha[r] = exp(m[r] − mx) (1 where m[r] = −∞: l[r] and o's row are 0),
  //         l[r] = l[r]·alpha[r] + Σ_c e, m[r] = mx
  // The weights e go to y [nr, nc] as float32 if y is set, else to yb as
  // bfloat16 in pack_bf16_rows's layout (row stride ldb pairs, 0 partner for
  // an odd nc): the A operand of P V.
  // With o set, o's rows r (dv floats, row stride dv) are multiplied by alpha[r] too.
  void (*softmax_tile_bf16)(const float* x, int64_t nr, int64_t nc, float* m, float* l, float* alpha, float* y,
                            uint32_t* yb, int64_t ldb, float* o, int64_t dv);
  // softmax_grad over a tile [nr, nc] (dS holds dP on entry, and dS after
  // when store_dS), and the bfloat16 copies the tile's products read, in the
  // same pass: dS by rows into dSr (pack_bf16_rows's layout, row stride ldr)
  // and P and dS as pairs of rows into Pt and dSt (pack_bf16_pairs's, row
  // stride ldt >= ⌈nc/16⌉·16).
  void (*softmax_grad_tile_bf16)(const float* P, float* dS, const float* delta, int64_t nr, int64_t nc, uint32_t* dSr,
                                 int64_t ldr, uint32_t* Pt, uint32_t* dSt, int64_t ldt, bool store_dS);
  // exp_tile with softmax_tile_bf16's exp for the weights: the bfloat16
  // backward's weights, as its forward had them.
  void (*exp_tile_bf16)(const float* x, int64_t nr, int64_t nc, const float* shift, float* y);
};

// The table in use: the best instruction set of this CPU, unless lowered by
// the environment variable LOOM_SIMD=sse2|avx2|avx512|avx512bf16 or set_isa().
const Table& table();
// The instruction sets this CPU can run, best first ("avx512bf16", "avx512",
// "avx2", "sse2"); avx512bf16 is avx512 plus the bfloat16 tile product.
std::vector<std::string> available_isas();
// Switches every later kernel call to the named set (tests use this to
// check each path); throws loom::Error for a set this CPU cannot run.
void set_isa(const std::string& name);

}  // namespace loom::kernels
