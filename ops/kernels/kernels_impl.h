// The SIMD kernels, written once as templates on the xsimd architecture A
// and compiled once per instruction set by the isa_*.cpp files.
//
// Each kernel is a plain loop over batches of W = batch<float, A>::size
// floats (4 for SSE2, 8 for AVX2, 16 for AVX-512). The last n % W elements
// go through the same batch code on a zero-padded copy, so there is one code
// path per kernel, not a vector loop plus a scalar twin.
//
// Everything sits in an anonymous namespace: each isa_*.cpp gets its own
// private copy, so the linker can never hand AVX2 code to the SSE2 path.
// For the same reason the kernels call no inline std:: functions.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <immintrin.h>

#include <xsimd/xsimd.hpp>

#include <loom/ops/kernels/kernels.h>

namespace loom::kernels {
namespace {

template <class A> using Batch = xsimd::batch<float, A>;

// y[0..n) = f(x[0..n)), one batch at a time.
template <class A, class F>
inline void map1(const float* x, float* y, int64_t n, F f) {
  using B = Batch<A>;
  constexpr int64_t W = B::size;
  int64_t i = 0;
  for (; i + W <= n; i += W) f(B::load_unaligned(x + i)).store_unaligned(y + i);
  if (i < n) {  // the tail, padded with zeros
    alignas(64) float buf[W] = {};
    for (int64_t j = 0; i + j < n; ++j) buf[j] = x[i + j];
    f(B::load_aligned(buf)).store_aligned(buf);
    for (int64_t j = 0; i + j < n; ++j) y[i + j] = buf[j];
  }
}

// z[0..n) = f(x[0..n), y[0..n)); a step of 0 repeats x[0] (or y[0]).
template <class A, class F>
inline void map2(const float* x, int64_t x_step, const float* y, int64_t y_step, float* z, int64_t n, F f) {
  using B = Batch<A>;
  constexpr int64_t W = B::size;
  auto load = [](const float* p, int64_t step, int64_t i) { return step ? B::load_unaligned(p + i) : B(*p); };
  int64_t i = 0;
  for (; i + W <= n; i += W) f(load(x, x_step, i), load(y, y_step, i)).store_unaligned(z + i);
  if (i < n) {
    alignas(64) float bx[W] = {}, by[W] = {};
    for (int64_t j = 0; i + j < n; ++j) {
      bx[j] = x[(i + j) * x_step];
      by[j] = y[(i + j) * y_step];
    }
    f(B::load_aligned(bx), B::load_aligned(by)).store_aligned(bx);
    for (int64_t j = 0; i + j < n; ++j) z[i + j] = bx[j];
  }
}

// dx[0..n) = f(x, y, g) elementwise.
template <class A, class F>
inline void map3(const float* x, const float* y, const float* g, float* dx, int64_t n, F f) {
  using B = Batch<A>;
  constexpr int64_t W = B::size;
  int64_t i = 0;
  for (; i + W <= n; i += W)
    f(B::load_unaligned(x + i), B::load_unaligned(y + i), B::load_unaligned(g + i)).store_unaligned(dx + i);
  if (i < n) {
    alignas(64) float bx[W] = {}, by[W] = {}, bg[W] = {};
    for (int64_t j = 0; i + j < n; ++j) {
      bx[j] = x[i + j];
      by[j] = y[i + j];
      bg[j] = g[i + j];
    }
    f(B::load_aligned(bx), B::load_aligned(by), B::load_aligned(bg)).store_aligned(bx);
    for (int64_t j = 0; i + j < n; ++j) dx[i + j] = bx[j];
  }
}

constexpr float kInvSqrt2Pi = 0.39894228040143268f;   // 1/sqrt(2 pi)
constexpr float kSqrt2OverPi = 0.79788456080286536f;  // sqrt(2/pi)
constexpr float kGeluCoeff = 0.044715f;
constexpr float kSoftplusThreshold = 20.0f;           // PyTorch's: above it softplus(x) = x

// a * b + c in one rounding: xsimd 8.1 fuses xsimd::fma for fma3<avx2> but
// not for the AVX-512 archs, where it is a multiply and an add.
template <class A>
inline Batch<A> fmadd(Batch<A> a, Batch<A> b, Batch<A> c) {
  if constexpr (std::is_base_of_v<xsimd::avx512f, A>) return Batch<A>(_mm512_fmadd_ps(a, b, c));
  else return xsimd::fma(a, b, c);
}

// The 16 lanes of acc[0 .. 16 / W) (lane j in acc[j / W]) reduced as a fixed
// tree, lane j with lane j + 8, then + 4, + 2, + 1, in registers: the same
// order, so the same bits, on every ISA, and no scalar reloads of a vector
// just stored (a store-forwarding stall each, which at attention's 64-wide
// rows cost more than the row's arithmetic). `max`: the lanes' max, else their sum.
template <class A>
inline float tree16(const Batch<A>* acc, bool max) {
  constexpr int64_t W = Batch<A>::size;
  auto f128 = [max](__m128 a, __m128 b) { return max ? _mm_max_ps(a, b) : _mm_add_ps(a, b); };
  __m128 s4;
  if constexpr (W == 16) {
    const __m512 v = acc[0];
    const __m256 lo = _mm512_castps512_ps256(v), hi = _mm512_extractf32x8_ps(v, 1);
    const __m256 s8 = max ? _mm256_max_ps(lo, hi) : _mm256_add_ps(lo, hi);
    s4 = f128(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  } else if constexpr (W == 8) {
    const __m256 a = acc[0], b = acc[1];
    const __m256 s8 = max ? _mm256_max_ps(a, b) : _mm256_add_ps(a, b);
    s4 = f128(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  } else {
    static_assert(W == 4, "tree16: 4, 8 or 16 lanes");
    s4 = f128(f128(acc[0], acc[2]), f128(acc[1], acc[3]));
  }
  const __m128 s2 = f128(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(f128(s2, _mm_shuffle_ps(s2, s2, 1)));
}

// e^r for |r| <= ln 2 / 2: Cephes expf's 1 + r + r^2 poly(r), the part of
// exp_fast and of normal_cdf_pdf after the range reduction.
template <class A>
inline Batch<A> exp_reduced(Batch<A> r) {
  using B = Batch<A>;
  B p = fmadd<A>(B(1.9875691500e-4f), r, B(1.3981999507e-3f));
  p = fmadd<A>(p, r, B(8.3334519073e-3f));
  p = fmadd<A>(p, r, B(4.1665795894e-2f));
  p = fmadd<A>(p, r, B(1.6666665459e-1f));
  p = fmadd<A>(p, r, B(5.0000001201e-1f));
  return fmadd<A>(p, r * r, r + B(1.0f));
}

// e^x, Cephes' expf as the bfloat16 table's exp16 but in xsimd, for every
// ISA: x = n ln 2 + r, |r| <= ln 2 / 2 (ln 2 in two parts, so r is exact),
// e^r = 1 + r + r^2 poly(r), times 2^n as two powers of two (each a normal
// float, so results below 2^-126 come out subnormal and e^89 infinite, as
// they should). About 1 ulp, like xsimd::exp, in about half its
// instructions and with fused multiply-adds on AVX-512 (xsimd 8.1's are
// not). x is clamped to [-104, 89] first (e^-104 is 0 in float, e^89 is
// inf); min and max keep a NaN.
template <class A>
inline Batch<A> exp_fast(Batch<A> x) {
  using B = Batch<A>;
  using I = xsimd::batch<int32_t, A>;
  const B magic(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  x = xsimd::min(B(89.0f), xsimd::max(B(-104.0f), x));
  const B y = fmadd<A>(x, B(1.44269504088896341f), magic), n = y - magic;
  B r = fmadd<A>(n, B(-0.693359375f), x);
  r = fmadd<A>(n, B(2.12194440e-4f), r);
  const B p = exp_reduced<A>(r);
  const I k = xsimd::bitwise_cast<I>(y) - xsimd::bitwise_cast<I>(magic);  // n in [-150, 129]
  const I k1 = k >> 1, k2 = k - k1;
  return p * xsimd::bitwise_cast<B>((k1 + I(127)) << 23) * xsimd::bitwise_cast<B>((k2 + I(127)) << 23);
}

// Phi(x), the standard normal CDF, and phi(x), its density, for GELU (erf).
// 0.5 (1 + erf(x / sqrt 2)) with xsimd::erf costs more (most batches run both
// of its branches) and keeps no relative accuracy below x = -3, where 1 + erf
// cancels. Here, with a = min(|x|, 14.5) and t = 1 / (1 + a / (2 sqrt 2)),
//   Q = Phi(-a) = 0.5 t S(t) exp(-a^2/2),  Phi(x) = Q for x < 0, else 1 - Q,
// S a degree-8 Chebyshev fit to erfc(a / sqrt 2) exp(a^2/2) / t on [0, 14.5]
// (relative error 9e-8). exp(-a^2/2) runs beside the division and S; a^2 is
// split as ah^2 + (a - ah)(a + ah), ah = a to 12 bits so ah^2 is exact and
// the tail keeps its relative accuracy, and the 2^64 it carries lets the
// last product underflow gradually. Against double on [-10, 10], every ISA:
// x Phi(x) to 5.2e-7 relative, Phi(x) + x phi(x) to 3.2e-7 of |Phi| + |x phi|
// (tests/test_elementwise.cpp). Past |x| = 14.5, Q and phi are 0 in float.
template <class A>
struct NormalCdfPdf { Batch<A> cdf, pdf; };

template <class A>
inline NormalCdfPdf<A> normal_cdf_pdf(Batch<A> x) {
  using B = Batch<A>;
  using I = xsimd::batch<int32_t, A>;
  const B one(1.0f), magic(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  B a = xsimd::min(xsimd::abs(x), B(14.5f));
  B ah = xsimd::bitwise_cast<B>(xsimd::bitwise_cast<I>(a) & I(int32_t(0xFFFFF000u)));
  B hi = B(-0.5f) * ah * ah, lo = B(-0.5f) * (a - ah) * (a + ah);  // -a^2/2 = hi + lo, hi exact
  // exp(hi + lo) * 2^64: k = round((hi + lo) / ln 2), r = hi + lo - k ln 2 in two parts.
  B y = fmadd<A>(hi + lo, B(1.44269504088896341f), magic), k = y - magic;
  B r = fmadd<A>(k, B(2.12194440e-4f), (hi - k * B(0.693359375f)) + lo);
  const B p = exp_reduced<A>(r);
  B e = p * xsimd::bitwise_cast<B>((xsimd::bitwise_cast<I>(y) - xsimd::bitwise_cast<I>(magic) + I(127 + 64)) << 23);
  B t = one / fmadd<A>(B(0.35355339059327376f), a, one);
  B s = fmadd<A>(B(-0.0598746054f), t, B(0.288519502f));
  s = fmadd<A>(s, t, B(-0.495354444f));
  s = fmadd<A>(s, t, B(0.287320882f));
  s = fmadd<A>(s, t, B(-0.0328972302f));
  s = fmadd<A>(s, t, B(0.205271244f));
  s = fmadd<A>(s, t, B(0.242475212f));
  s = fmadd<A>(s, t, B(0.282457352f));
  s = fmadd<A>(s, t, B(0.282082051f));
  B q = t * s * e * B(0x1p-65f);
  return {xsimd::select(x < B(0.0f), q, one - q), B(kInvSqrt2Pi * 0x1p-64f) * e};
}

template <class A>
void unary(UnaryOp op, const float* x, float* y, int64_t n) {
  using B = Batch<A>;
  const B one(1.0f), half(0.5f), zero(0.0f);
  switch (op) {
    case UnaryOp::Neg: return map1<A>(x, y, n, [](B v) { return -v; });
    case UnaryOp::Abs: return map1<A>(x, y, n, [](B v) { return xsimd::abs(v); });
    case UnaryOp::Exp: return map1<A>(x, y, n, [](B v) { return xsimd::exp(v); });
    case UnaryOp::Log: return map1<A>(x, y, n, [](B v) { return xsimd::log(v); });
    case UnaryOp::Sqrt: return map1<A>(x, y, n, [](B v) { return xsimd::sqrt(v); });
    case UnaryOp::Rsqrt: return map1<A>(x, y, n, [=](B v) { return one / xsimd::sqrt(v); });
    case UnaryOp::Tanh: return map1<A>(x, y, n, [](B v) { return xsimd::tanh(v); });
    case UnaryOp::Sigmoid: return map1<A>(x, y, n, [=](B v) { return one / (one + xsimd::exp(-v)); });
    case UnaryOp::Relu: return map1<A>(x, y, n, [=](B v) { return xsimd::select(v < zero, zero, v); });  // NaN stays NaN
    case UnaryOp::GeluErf:  // x * Phi(x), Phi the standard normal CDF
      return map1<A>(x, y, n, [](B v) { return v * normal_cdf_pdf<A>(v).cdf; });
    case UnaryOp::GeluTanh:  // the tanh approximation of GELU
      return map1<A>(x, y, n, [=](B v) {
        return half * v * (one + xsimd::tanh(B(kSqrt2OverPi) * (v + B(kGeluCoeff) * v * v * v)));
      });
    case UnaryOp::Silu: return map1<A>(x, y, n, [=](B v) { return v / (one + xsimd::exp(-v)); });
    case UnaryOp::Softplus:
      return map1<A>(x, y, n, [=](B v) {
        return xsimd::select(v > B(kSoftplusThreshold), v, xsimd::log1p(xsimd::exp(v)));
      });
  }
}

template <class A>
void unary_backward(UnaryOp op, const float* x, const float* y, const float* g, float* dx, int64_t n) {
  using B = Batch<A>;
  const B one(1.0f), half(0.5f), zero(0.0f);
  switch (op) {
    case UnaryOp::Neg: return map3<A>(x, y, g, dx, n, [](B, B, B gi) { return -gi; });
    case UnaryOp::Abs:  // sign(x), 0 at 0
      return map3<A>(x, y, g, dx, n, [=](B xi, B, B gi) {
        return xsimd::select(xi > zero, gi, xsimd::select(xi < zero, -gi, zero));
      });
    case UnaryOp::Exp: return map3<A>(x, y, g, dx, n, [](B, B yi, B gi) { return gi * yi; });
    case UnaryOp::Log: return map3<A>(x, y, g, dx, n, [](B xi, B, B gi) { return gi / xi; });
    case UnaryOp::Sqrt: return map3<A>(x, y, g, dx, n, [=](B, B yi, B gi) { return gi * half / yi; });
    case UnaryOp::Rsqrt: return map3<A>(x, y, g, dx, n, [=](B, B yi, B gi) { return -half * gi * yi * yi * yi; });
    case UnaryOp::Tanh: return map3<A>(x, y, g, dx, n, [=](B, B yi, B gi) { return gi * (one - yi * yi); });
    case UnaryOp::Sigmoid: return map3<A>(x, y, g, dx, n, [=](B, B yi, B gi) { return gi * yi * (one - yi); });
    case UnaryOp::Relu: return map3<A>(x, y, g, dx, n, [=](B xi, B, B gi) { return xsimd::select(xi > zero, gi, zero); });
    case UnaryOp::GeluErf:  // Phi(x) + x * phi(x)
      return map3<A>(x, y, g, dx, n, [=](B xi, B, B gi) {
        NormalCdfPdf<A> p = normal_cdf_pdf<A>(xi);
        return gi * (p.cdf + xi * p.pdf);
      });
    case UnaryOp::GeluTanh:  // u = k (x + c x^3): 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) k (1 + 3 c x^2)
      return map3<A>(x, y, g, dx, n, [=](B xi, B, B gi) {
        B t = xsimd::tanh(B(kSqrt2OverPi) * (xi + B(kGeluCoeff) * xi * xi * xi));
        B du = B(kSqrt2OverPi) * (one + B(3.0f * kGeluCoeff) * xi * xi);
        return gi * (half * (one + t) + half * xi * (one - t * t) * du);
      });
    case UnaryOp::Silu:  // s (1 + x (1 - s)), s = sigmoid(x)
      return map3<A>(x, y, g, dx, n, [=](B xi, B, B gi) {
        B s = one / (one + xsimd::exp(-xi));
        return gi * s * (one + xi * (one - s));
      });
    case UnaryOp::Softplus:  // sigmoid(x), or 1 above the threshold
      return map3<A>(x, y, g, dx, n, [=](B xi, B, B gi) {
        return xsimd::select(xi > B(kSoftplusThreshold), gi, gi / (one + xsimd::exp(-xi)));
      });
  }
}

template <class A>
void binary(BinaryOp op, const float* a, int64_t as, const float* b, int64_t bs, float* y, int64_t n) {
  using B = Batch<A>;
  switch (op) {
    case BinaryOp::Add: return map2<A>(a, as, b, bs, y, n, [](B u, B v) { return u + v; });
    case BinaryOp::Sub: return map2<A>(a, as, b, bs, y, n, [](B u, B v) { return u - v; });
    case BinaryOp::Mul: return map2<A>(a, as, b, bs, y, n, [](B u, B v) { return u * v; });
    case BinaryOp::Div: return map2<A>(a, as, b, bs, y, n, [](B u, B v) { return u / v; });
    case BinaryOp::Maximum:  // NaN in either propagates, as torch.maximum
      return map2<A>(a, as, b, bs, y, n, [](B u, B v) {
        return xsimd::select(xsimd::isnan(u) | xsimd::isnan(v), u + v, xsimd::max(u, v));
      });
    case BinaryOp::Minimum:
      return map2<A>(a, as, b, bs, y, n, [](B u, B v) {
        return xsimd::select(xsimd::isnan(u) | xsimd::isnan(v), u + v, xsimd::min(u, v));
      });
    case BinaryOp::Pow: return map2<A>(a, as, b, bs, y, n, [](B u, B v) { return xsimd::pow(u, v); });
  }
}

// 16 float lanes whatever the batch width: lane j adds up elements j, j+16,
// j+32, ... of each block of 4096, and the blocks are added in double. The
// additions are the same on SSE2, AVX2 and AVX-512, so the sums are too.
// Square = true sums x² instead of x (a multiply, then an add: no FMA, whose
// rounding SSE2 could not reproduce).
template <class A, bool Square = false>
double sum(const float* x, int64_t n) {
  using B = Batch<A>;
  constexpr int64_t W = B::size, L = 16, K = L / W, Block = 4096;
  double lanes_total[L] = {};
  for (int64_t start = 0; start < n; start += Block) {
    const int64_t end = start + Block < n ? start + Block : n;
    B acc[K];
    for (int64_t k = 0; k < K; ++k) acc[k] = B(0.0f);
    int64_t i = start;
    for (; i + L <= end; i += L)
      for (int64_t k = 0; k < K; ++k) {
        const B v = B::load_unaligned(x + i + k * W);
        if constexpr (Square) {
          const B sq = v * v;
          acc[k] += sq;
        } else {
          acc[k] += v;
        }
      }
    alignas(64) float lanes[L];
    for (int64_t k = 0; k < K; ++k) acc[k].store_aligned(lanes + k * W);
    for (int64_t j = 0; i + j < end; ++j) {
      if constexpr (Square) {
        const float sq = x[i + j] * x[i + j];
        lanes[j] += sq;
      } else {
        lanes[j] += x[i + j];
      }
    }
    for (int64_t j = 0; j < L; ++j) lanes_total[j] += lanes[j];
  }
  double total = 0;
  for (int64_t j = 0; j < L; ++j) total += lanes_total[j];
  return total;
}

template <class A>
double sum_squares(const float* x, int64_t n) {
  return sum<A, true>(x, n);
}

template <class A>
float max(const float* x, int64_t n) {
  using B = Batch<A>;
  constexpr int64_t W = B::size;
  const float neg_inf = -__builtin_inff();
  B m(neg_inf);
  auto nan = B(0.0f) != B(0.0f);  // all false
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    B v = B::load_unaligned(x + i);
    nan = nan | xsimd::isnan(v);
    m = xsimd::max(m, v);
  }
  alignas(64) float buf[W];
  if (i < n) {  // the tail, padded with −∞
    for (int64_t j = 0; j < W; ++j) buf[j] = neg_inf;
    for (int64_t j = 0; i + j < n; ++j) buf[j] = x[i + j];
    B v = B::load_aligned(buf);
    nan = nan | xsimd::isnan(v);
    m = xsimd::max(m, v);
  }
  if (xsimd::any(nan)) return __builtin_nanf("");
  B lanes[16 / W];
  for (int64_t j = 0; j < 16 / W; ++j) lanes[j] = m;
  return tree16<A>(lanes, true);
}

// Table::dot16: 16 lanes whatever the ISA (K batches of W), a tail padded
// with zeros, tree16 at the end.
template <class A>
float dot16(const float* x, const float* y, int64_t n) {
  using B = Batch<A>;
  constexpr int64_t W = B::size, L = 16, K = L / W;
  B acc[K];
  for (int64_t j = 0; j < K; ++j) acc[j] = B(0.0f);
  alignas(64) float bx[L], by[L];
  for (int64_t i = 0; i < n; i += L) {
    const float *px = x + i, *py = y + i;
    if (n - i < L) {
      for (int64_t j = 0; j < L; ++j) bx[j] = i + j < n ? x[i + j] : 0.0f, by[j] = i + j < n ? y[i + j] : 0.0f;
      px = bx, py = by;
    }
    for (int64_t j = 0; j < K; ++j) acc[j] = fmadd<A>(B::load_unaligned(px + j * W), B::load_unaligned(py + j * W), acc[j]);
  }
  return tree16<A>(acc, false);
}

// sum(x[i] * y[i]) in float batches (used inside one row).
template <class A>
float dot(const float* x, const float* y, int64_t n) {
  using B = Batch<A>;
  constexpr int64_t W = B::size;
  B acc(0.0f);
  int64_t i = 0;
  for (; i + W <= n; i += W) acc += B::load_unaligned(x + i) * B::load_unaligned(y + i);
  float total = xsimd::hadd(acc);
  for (; i < n; ++i) total += x[i] * y[i];
  return total;
}

// softmax(x) = exp(x - max) / sum(exp(x - max)); log_softmax = x - max - log(sum).
// Subtracting the max first keeps exp from overflowing.
template <class A>
void softmax(const float* x, float* y, int64_t n, bool log) {
  using B = Batch<A>;
  constexpr int64_t W = B::size;
  const B m(max<A>(x, n));
  map1<A>(x, y, n, [=](B v) { return xsimd::exp(v - m); });
  B acc(0.0f);
  int64_t i = 0;
  for (; i + W <= n; i += W) acc += B::load_unaligned(y + i);
  float total = xsimd::hadd(acc);
  for (; i < n; ++i) total += y[i];
  if (log) {
    const B shift = m + B(__builtin_logf(total));
    map1<A>(x, y, n, [=](B v) { return v - shift; });
  } else {
    const B scale(1.0f / total);
    map1<A>(y, y, n, [=](B v) { return v * scale; });
  }
}

template <class A>
void softmax_backward(const float* y, const float* g, float* dx, int64_t n, bool log) {
  using B = Batch<A>;
  if (log) {  // dx = g - exp(y) * sum(g)
    const B s(float(sum<A>(g, n)));
    map3<A>(y, y, g, dx, n, [=](B yi, B, B gi) { return gi - xsimd::exp(yi) * s; });
  } else {  // dx = y * (g - sum(g * y))
    const B s(dot<A>(g, y, n));
    map3<A>(y, y, g, dx, n, [=](B yi, B, B gi) { return yi * (gi - s); });
  }
}

template <class A>
float logsumexp(const float* x, int64_t n) {
  using B = Batch<A>;
  constexpr int64_t W = B::size;
  const float m = max<A>(x, n);
  if (m == -__builtin_inff() || m == __builtin_inff() || m != m) return m;  // all -inf, or inf / nan inside
  const B mb(m);
  B acc(0.0f);
  int64_t i = 0;
  for (; i + W <= n; i += W) acc += xsimd::exp(B::load_unaligned(x + i) - mb);
  alignas(64) float buf[W];
  for (int64_t j = 0; j < W; ++j) buf[j] = -__builtin_inff();  // exp(-inf) = 0 pads the tail
  for (int64_t j = 0; i + j < n; ++j) buf[j] = x[i + j];
  acc += xsimd::exp(B::load_aligned(buf) - mb);
  return m + __builtin_logf(xsimd::hadd(acc));
}

template <class A>
void softmax_minus(const float* x, float lse, float scale, float offset, float* dx, int64_t n) {
  using B = Batch<A>;
  const B l(lse), s(scale), o(offset);
  map1<A>(x, dx, n, [=](B v) { return s * (exp_fast<A>(v - l) - o); });
}

template <class A>
float exp_sum(const float* x, float shift, float* y, int64_t n) {
  using B = Batch<A>;
  constexpr int64_t W = B::size, L = 16, K = L / W;
  const B sh(shift);
  B acc[K];
  for (int64_t j = 0; j < K; ++j) acc[j] = B(0.0f);
  alignas(64) float buf[L];
  for (int64_t i = 0; i < n; i += L) {
    const int64_t len = n - i < L ? n - i : L;
    const float* src = x + i;
    if (len < L) {  // the tail, padded with −∞ (weight 0)
      for (int64_t j = 0; j < L; ++j) buf[j] = j < len ? x[i + j] : -__builtin_inff();
      src = buf;
    }
    for (int64_t j = 0; j < K; ++j) {
      const B e = exp_fast<A>(B::load_unaligned(src + j * W) - sh);
      acc[j] += e;
      if (len == L) e.store_unaligned(y + i + j * W);
      else e.store_aligned(buf + j * W);
    }
    if (len < L)
      for (int64_t j = 0; j < len; ++j) y[i + j] = buf[j];
  }
  return tree16<A>(acc, false);
}

// One step of an attention tile's online softmax (kernels.h), a whole tile
// per call: per row its max (NaN if any logit is), weights and their sum
// with exp_sum, and at the end the 16 rows' rescaling factors exp(m − mx)
// in vectors, applied to their rows of the output accumulator o. (Per-row
// kernel calls with a scalar exp each and the rescaling compiled for SSE2
// in ops/attention.cpp cost as much as one of the tile's two products.)
template <class A>
void softmax_tile(const float* x, int64_t nr, int64_t nc, float* m, float* l, float* y, float* o, int64_t dv) {
  using B = Batch<A>;
  constexpr int64_t W = B::size;
  constexpr int64_t R = 16;
  alignas(64) float m_old[R], m_new[R], sums[R], alpha[R];
  for (int64_t r0 = 0; r0 < nr; r0 += R) {
    const int64_t rows = nr - r0 < R ? nr - r0 : R;
    for (int64_t i = 0; i < R; ++i) m_old[i] = m_new[i] = -__builtin_inff(), sums[i] = 0.0f;
    for (int64_t r = r0; r < r0 + rows; ++r) {
      const float* xr = x + r * nc;
      float* yr = y + r * nc;
      const float tile_max = max<A>(xr, nc);
      const float mo = m[r];
      const float mx = tile_max != tile_max || mo != mo ? __builtin_nanf("") : (tile_max > mo ? tile_max : mo);
      m_old[r - r0] = mo, m_new[r - r0] = mx;
      if (mx == -__builtin_inff()) {  // nothing visible yet in this row: weights 0
        for (int64_t c = 0; c < nc; ++c) yr[c] = 0.0f;
        continue;
      }
      sums[r - r0] = exp_sum<A>(xr, mx, yr, nc);
    }
    for (int64_t i = 0; i < R; i += W) {
      const B mo = B::load_aligned(m_old + i), mn = B::load_aligned(m_new + i);
      // 1 where nothing is visible yet, and where nothing was seen before
      // (m −∞: the output row is 0 and is left as it is, as avx512_tiles.h does)
      const auto unscaled = mn == B(-__builtin_inff()) || mo == B(-__builtin_inff());
      xsimd::select(unscaled, B(1.0f), exp_fast<A>(mo - mn)).store_aligned(alpha + i);
    }
    for (int64_t r = r0; r < r0 + rows; ++r) {
      const float a = alpha[r - r0];
      if (m_new[r - r0] == -__builtin_inff()) continue;  // m and l stay −∞ and 0
      l[r] = l[r] * a + sums[r - r0];
      m[r] = m_new[r - r0];
      if (a == 1.0f) continue;
      float* orow = o + r * dv;
      const B av(a);
      int64_t d = 0;
      for (; d + W <= dv; d += W) (B::load_unaligned(orow + d) * av).store_unaligned(orow + d);
      for (; d < dv; ++d) orow[d] *= a;
    }
  }
}

template <class A>
void exp_tile(const float* x, int64_t nr, int64_t nc, const float* shift, float* y) {
  using B = Batch<A>;
  for (int64_t r = 0; r < nr; ++r) {
    const B sh(shift[r]);
    map1<A>(x + r * nc, y + r * nc, nc, [=](B v) { return exp_fast<A>(v - sh); });
  }
}

template <class A>
void softmax_grad(const float* P, const float* dP, float delta, float* dS, int64_t n) {
  using B = Batch<A>;
  constexpr int64_t W = B::size;
  const B d(delta);
  int64_t i = 0;
  const B zero(0.0f);
  for (; i + W <= n; i += W) {
    const B p = B::load_unaligned(P + i);
    xsimd::select(p == zero, zero, p * (B::load_unaligned(dP + i) - d)).store_unaligned(dS + i);
  }
  for (; i < n; ++i) dS[i] = P[i] == 0.0f ? 0.0f : P[i] * (dP[i] - delta);
}

// sum((x - c)^2) over a row, in float batches.
template <class A>
float sum_sq_dev(const float* x, float c, int64_t n) {
  using B = Batch<A>;
  constexpr int64_t W = B::size;
  const B cb(c);
  B acc(0.0f);
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    B d = B::load_unaligned(x + i) - cb;
    acc += d * d;
  }
  float total = xsimd::hadd(acc);
  for (; i < n; ++i) total += (x[i] - c) * (x[i] - c);
  return total;
}

template <class A>
void norm(const float* x, const float* w, const float* b, float* y, int64_t n, float eps, bool rms, float* mean_out,
          float* rstd_out) {
  using B = Batch<A>;
  // Two passes: the mean first, then the spread around it (more accurate
  // than E[x²] - E[x]² when the mean is large).
  const float mean = rms ? 0.0f : float(sum<A>(x, n) / double(n));
  const float rstd = 1.0f / __builtin_sqrtf(sum_sq_dev<A>(x, mean, n) / float(n) + eps);
  const B mb(mean), rb(rstd);
  map1<A>(x, y, n, [=](B v) { return (v - mb) * rb; });
  if (w) map2<A>(y, 1, w, 1, y, n, [](B u, B v) { return u * v; });
  if (b) map2<A>(y, 1, b, 1, y, n, [](B u, B v) { return u + v; });
  *mean_out = mean;
  *rstd_out = rstd;
}

template <class A>
void norm_backward(const float* x, const float* w, const float* g, float mean, float rstd, float* dx, int64_t n,
                   bool rms) {
  using B = Batch<A>;
  constexpr int64_t W = B::size;
  // dx holds ĝ = g * w first.
  if (w) map2<A>(g, 1, w, 1, dx, n, [](B u, B v) { return u * v; });
  else map1<A>(g, dx, n, [](B v) { return v; });
  const B mb(mean), rb(rstd);
  B acc_g(0.0f), acc_gx(0.0f);
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    B gh = B::load_unaligned(dx + i);
    acc_g += gh;
    acc_gx += gh * (B::load_unaligned(x + i) - mb) * rb;
  }
  float sum_g = xsimd::hadd(acc_g), sum_gx = xsimd::hadd(acc_gx);
  for (; i < n; ++i) {
    sum_g += dx[i];
    sum_gx += dx[i] * (x[i] - mean) * rstd;
  }
  const B mean_g(rms ? 0.0f : sum_g / float(n)), mean_gx(sum_gx / float(n));
  map2<A>(dx, 1, x, 1, dx, n, [=](B gh, B xv) { return rb * (gh - mean_g - (xv - mb) * rb * mean_gx); });
}

template <class A>
void norm_param_grads(const float* x, const float* g, float mean, float rstd, float* dw, float* db, int64_t n) {
  using B = Batch<A>;
  constexpr int64_t W = B::size;
  const B mb(mean), rb(rstd);
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    B gv = B::load_unaligned(g + i);
    (B::load_unaligned(dw + i) + gv * (B::load_unaligned(x + i) - mb) * rb).store_unaligned(dw + i);
    if (db) (B::load_unaligned(db + i) + gv).store_unaligned(db + i);
  }
  for (; i < n; ++i) {
    dw[i] += g[i] * (x[i] - mean) * rstd;
    if (db) db[i] += g[i];
  }
}

// C = alpha A·B (+ C). R rows of C at a time, two batches wide, are built
// in 2R registers: each step t loads two batches of row t of B and
// broadcasts A(r, t) for the R rows, so every load of B feeds R FMAs. R is 8
// with AVX-512's 32 vector registers and 4 with AVX2's and SSE2's 16 (2R
// accumulators, two of B and a broadcast must fit). Leftover rows and columns
// go through one_row.
template <class A>
void gemm(const float* a, int64_t a_rs, int64_t a_cs, const float* b, int64_t ldb, float* c, int64_t ldc, int64_t m,
          int64_t n, int64_t k, float alpha, bool accumulate) {
  using B = Batch<A>;
  constexpr int64_t W = B::size, R = W == 16 ? 8 : 4;
  const B al(alpha);
  auto finish = [&](B acc, float* dst) {
    acc *= al;
    if (accumulate) acc += B::load_unaligned(dst);
    acc.store_unaligned(dst);
  };
  // Row r of C from column `col` on: batches, then single columns.
  auto one_row = [&](int64_t r, int64_t col) {
    const float* ar = a + r * a_rs;
    float* cr = c + r * ldc;
    for (; col + W <= n; col += W) {
      B acc(0.0f);
      for (int64_t t = 0; t < k; ++t) acc = fmadd<A>(B(ar[t * a_cs]), B::load_unaligned(b + t * ldb + col), acc);
      finish(acc, cr + col);
    }
    for (; col < n; ++col) {
      float acc = 0;
      for (int64_t t = 0; t < k; ++t) acc += ar[t * a_cs] * b[t * ldb + col];
      cr[col] = alpha * acc + (accumulate ? cr[col] : 0.0f);
    }
  };
  int64_t r = 0;
  for (; r + R <= m; r += R) {
    const float* a0 = a + r * a_rs;
    int64_t col = 0;
    for (; col + 2 * W <= n; col += 2 * W) {
      B c0[R], c1[R];
      for (int64_t i = 0; i < R; ++i) c0[i] = B(0.0f), c1[i] = B(0.0f);
      for (int64_t t = 0; t < k; ++t) {
        const float* bt = b + t * ldb + col;
        const B b0 = B::load_unaligned(bt), b1 = B::load_unaligned(bt + W);
        const float* at = a0 + t * a_cs;
        for (int64_t i = 0; i < R; ++i) {
          const B x(at[i * a_rs]);
          c0[i] = fmadd<A>(x, b0, c0[i]), c1[i] = fmadd<A>(x, b1, c1[i]);
        }
      }
      float* cr = c + r * ldc + col;
      for (int64_t i = 0; i < R; ++i) finish(c0[i], cr + i * ldc), finish(c1[i], cr + i * ldc + W);
    }
    for (int64_t rr = r; rr < r + R; ++rr) one_row(rr, col);
  }
  for (; r < m; ++r) one_row(r, 0);
}

// The optimizer updates: full batches, then the tail through the same
// expression on a one-lane-at-a-time copy, so every element follows one rule.
template <class A>
void adam_update(float* w, const float* g, float* m, float* v, int64_t n, const AdamStep& s) {
  using B = Batch<A>;
  constexpr int64_t W = B::size;
  const B b1(s.beta1), c1(1 - s.beta1), b2(s.beta2), c2(1 - s.beta2), eps(s.eps), step(s.step_size),
      ibc2(s.inv_sqrt_bc2), shrink(s.shrink), l2(s.l2);
  auto update = [&](float* wp, const float* gp, float* mp, float* vp) {
    const B wi = B::load_unaligned(wp), gi = B::load_unaligned(gp) + l2 * wi;
    const B mi = b1 * B::load_unaligned(mp) + c1 * gi, vi = b2 * B::load_unaligned(vp) + c2 * gi * gi;
    mi.store_unaligned(mp), vi.store_unaligned(vp);
    (wi * shrink - step * mi / (xsimd::sqrt(vi) * ibc2 + eps)).store_unaligned(wp);
  };
  int64_t i = 0;
  for (; i + W <= n; i += W) update(w + i, g + i, m + i, v + i);
  if (i == n) return;
  alignas(64) float tw[W] = {}, tg[W] = {}, tm[W] = {}, tv[W] = {};
  const int64_t r = n - i;
  std::copy(w + i, w + n, tw), std::copy(g + i, g + n, tg), std::copy(m + i, m + n, tm), std::copy(v + i, v + n, tv);
  update(tw, tg, tm, tv);
  std::copy(tw, tw + r, w + i), std::copy(tm, tm + r, m + i), std::copy(tv, tv + r, v + i);
}

template <class A>
void sgd_update(float* w, const float* g, float* buf, int64_t n, const SGDStep& s) {
  using B = Batch<A>;
  constexpr int64_t W = B::size;
  const B lr(s.lr), mu(s.momentum), keep(1 - s.dampening), wd(s.weight_decay);
  auto update = [&](float* wp, const float* gp, float* bp) {
    const B wi = B::load_unaligned(wp);
    B d = B::load_unaligned(gp) + wd * wi;
    if (bp) {
      const B b = s.first ? d : mu * B::load_unaligned(bp) + keep * d;
      b.store_unaligned(bp);
      d = s.nesterov ? d + mu * b : b;
    }
    (wi - lr * d).store_unaligned(wp);
  };
  int64_t i = 0;
  for (; i + W <= n; i += W) update(w + i, g + i, buf ? buf + i : nullptr);
  if (i == n) return;
  alignas(64) float tw[W] = {}, tg[W] = {}, tb[W] = {};
  const int64_t r = n - i;
  std::copy(w + i, w + n, tw), std::copy(g + i, g + n, tg);
  if (buf) std::copy(buf + i, buf + n, tb);
  update(tw, tg, buf ? tb : nullptr);
  std::copy(tw, tw + r, w + i);
  if (buf) std::copy(tb, tb + r, buf + i);
}

// ---- bfloat16 -------------------------------------------------------------------------------
// The bfloat16 bits of each lane (in the low 16 bits of an int32 lane):
// add 0x7fff plus the lowest kept bit, then drop 16 bits (round to nearest,
// ties to even); a NaN keeps its top bits with the quiet bit set. (NaN is
// found on the bits: a float compare of x with itself is false for NaN only
// in its "unordered" form, which xsimd's != is not.)
template <class A>
inline xsimd::batch<int32_t, A> bf16_bits(Batch<A> x) {
  using I = xsimd::batch<int32_t, A>;
  const I u = xsimd::bitwise_cast<I>(x);
  const I low16(0xffff);
  const I rounded = ((u + I(0x7fff) + ((u >> 16) & I(1))) >> 16) & low16;
  const I quiet_nan = ((u >> 16) | I(0x40)) & low16;
  return xsimd::select((u & I(0x7fffffff)) > I(0x7f800000), quiet_nan, rounded);
}

template <class A>
void to_bf16(const float* x, uint16_t* y, int64_t n) {
  constexpr int64_t W = Batch<A>::size;
  alignas(64) int32_t lanes[W];
  alignas(64) float buf[W] = {};
  for (int64_t i = 0; i < n; i += W) {
    const int64_t len = n - i < W ? n - i : W;
    if (len == W) {
      bf16_bits<A>(Batch<A>::load_unaligned(x + i)).store_aligned(lanes);
    } else {  // the tail, padded with zeros
      for (int64_t j = 0; j < len; ++j) buf[j] = x[i + j];
      bf16_bits<A>(Batch<A>::load_aligned(buf)).store_aligned(lanes);
    }
    for (int64_t j = 0; j < len; ++j) y[i + j] = uint16_t(lanes[j]);
  }
}

template <class A>
void round_bf16(const float* x, float* y, int64_t n) {
  map1<A>(x, y, n, [](Batch<A> v) { return xsimd::bitwise_cast<Batch<A>>(bf16_bits<A>(v) << 16); });
}

template <class A>
Table make_table(const char* name) {
  return Table{name,          &unary<A>,        &unary_backward<A>,   &binary<A>,
               &sum<A>,       &sum_squares<A>,  &max<A>,          &softmax<A>,          &softmax_backward<A>,
               &logsumexp<A>, &softmax_minus<A>, &exp_sum<A>,   &softmax_tile<A>,     &exp_tile<A>,
               &softmax_grad<A>, &dot16<A>,      &norm<A>,       &norm_backward<A>, &norm_param_grads<A>, &gemm<A>,
               &adam_update<A>, &sgd_update<A>,  &to_bf16<A>,     &round_bf16<A>,   &to_bf16<A>,
               nullptr,       nullptr,          nullptr,          nullptr,              nullptr,
               nullptr,       nullptr,          nullptr,          nullptr};
}

}  // namespace
}  // namespace loom::kernels
