// The attention tile product with bfloat16 inputs (built with AVX-512 F, BW,
// VL and BF16 flags; dispatch.cpp installs it only on CPUs with AVX512-BF16).
//
//   C[m, n] = alpha · A[m, k] · B[k, n]  (+ C when accumulate)
//
// with the same operand layout as Table::gemm. A and B are rounded to
// bfloat16 (to nearest even, as core/dtype.h's BFloat16) while they are
// packed, then vdpbf16ps multiplies pairs of them and adds both products to
// a float32 accumulator: 32 products per instruction where the float32
// kernel does 16. (vdpbf16ps treats subnormal inputs as zero and flushes
// subnormal results: below 1e-38, far under bfloat16's own precision.)
//
// Packing: B as pairs of rows, Bp[p][j] = (B[2p][j], B[2p+1][j]) in one
// 32-bit lane, columns padded to a multiple of 16 with zeros; A as pairs
// along k, Ap(r, p) = (A[r][2p], A[r][2p+1]), read by broadcast. An odd k
// gets a zero partner.
//
// ops/attention.cpp packs every operand once (Q, K, V, dO and their
// transposes once per call; P and dS once per tile, by the softmax kernels
// below that compute them) and multiplies with gemm_bf16_pp. The softmax
// part of a tile (online-softmax step, the backward's exp and dS) is here
// too, a whole tile per call with an exp of its own (exp16): at d = 64 it was
// about a third of the float32 forward's time, so with xsimd's exp and
// per-row calls the forward could not pass ~1.5× whatever the products did.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <loom/ops/kernels/avx512_tiles.h>
#include <loom/ops/kernels/kernels.h>

namespace loom::kernels {

namespace {

using avx512::exp16;
using avx512::first;

// One step of the online softmax, bfloat16 weights (or float32 into y) (kernels.h).
void softmax_tile_bf16(const float* x, int64_t nr, int64_t nc, float* m, float* l, float* alpha, float* y,
                       uint32_t* yb, int64_t ldb, float* o, int64_t dv) {
  avx512::softmax_tile_rows<true>(x, nr, nc, m, l, alpha, y, yb, ldb);
  if (o) avx512::scale_rows(o, dv, alpha, nr);
}

inline uint32_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return (u >> 16) | 0x40;
  return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

// 32 values rounded to bfloat16 in order: lo's 16, then hi's (vcvtne2ps2bf16
// rounds to nearest even like BFloat16(float); it flushes subnormals, which
// vdpbf16ps would treat as zero anyway).
inline __m512i in_order(__m512 lo, __m512 hi) { return (__m512i)_mm512_cvtne2ps_pbh(hi, lo); }

// Pairs (lo[i], hi[i]) in 32-bit lane i.
inline __m512i interleaved(__m512 lo, __m512 hi) {
  const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                       21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(idx, in_order(lo, hi));
}

// Rows [r, r + R) of C, columns [col, col + 16 · NB): Ap(r, p) = ap[r · sr + p · sp].
// R · NB accumulators stay in registers over all kp pairs; each step loads NB
// vectors of B and broadcasts R pairs of A, so a load feeds R (or NB) products.
template <int R, int NB>
inline void block(const uint32_t* ap, int64_t sr, int64_t sp, const uint32_t* bp, int64_t ldp, int64_t kp, float* c,
                  int64_t ldc, int64_t r, int64_t col, int64_t n, float alpha, bool accumulate) {
  __m512 acc[R][NB];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_ps();
  const uint32_t* a0 = ap + r * sr;
  // C is read at the end (accumulate) and often lives in L2 (dQ of a whole
  // head): fetched now, it is in L1 by then.
  if (accumulate)
    for (int i = 0; i < R; ++i)
      for (int j = 0; j < NB; ++j) _mm_prefetch(reinterpret_cast<const char*>(c + (r + i) * ldc + col + 16 * j), _MM_HINT_T0);
  for (int64_t p = 0; p < kp; ++p) {
    __m512bh b[NB];
    for (int j = 0; j < NB; ++j) b[j] = (__m512bh)_mm512_loadu_si512(bp + p * ldp + col + 16 * j);
    for (int i = 0; i < R; ++i) {
      const __m512bh x = (__m512bh)_mm512_set1_epi32(int(a0[i * sr + p * sp]));
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], x, b[j]);
    }
  }
  const __m512 al = _mm512_set1_ps(alpha);
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < NB; ++j) {
      float* dst = c + (r + i) * ldc + col + 16 * j;
      const __mmask16 mask = first(n - col - 16 * j);
      __m512 v = _mm512_mul_ps(acc[i][j], al);
      if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, dst));
      _mm512_mask_storeu_ps(dst, mask, v);
    }
}

// Rows [r, r + R): 64 columns at a time (4 × 16, the width of an attention
// tile), then 32, then 16.
template <int R>
inline void row_block(const uint32_t* ap, int64_t sr, int64_t sp, const uint32_t* bp, int64_t ldp, int64_t kp,
                      float* c, int64_t ldc, int64_t r, int64_t n, float alpha, bool accumulate) {
  int64_t col = 0;
  for (; col + 48 < n; col += 64) block<R, 4>(ap, sr, sp, bp, ldp, kp, c, ldc, r, col, n, alpha, accumulate);
  for (; col + 16 < n; col += 32) block<R, 2>(ap, sr, sp, bp, ldp, kp, c, ldc, r, col, n, alpha, accumulate);
  if (col < n) block<R, 1>(ap, sr, sp, bp, ldp, kp, c, ldc, r, col, n, alpha, accumulate);
}

// Both operands packed: C[m, n] = alpha · Σ_p Ap(r, p) · Bp[p][·] (+ C).
// Four rows by 64 columns: 16 accumulators and 4 vectors of B in registers,
// the pairs of A broadcast from memory; on Zen 5 this runs vdpbf16ps at
// about 2 per cycle (a 64×64×64 tile in ~1.05 µs, against ~2.2 µs for the
// float32 FMA kernel). 8 rows × 32 columns (10 loads per 16 products
// instead of 8) and 6 or 7 rows × 64 were slower there. A product at most 32
// wide (d = 32: P V, dS K, dSᵀ Q, Pᵀ dO) runs 8 rows at a time instead:
// 4 rows × 32 columns load 6 vectors per 8 products, and took ~1.2× as long.
void gemm_bf16_pp(const uint32_t* ap, int64_t sr, int64_t sp, const uint32_t* bp, int64_t ldp, float* c, int64_t ldc,
                  int64_t m, int64_t n, int64_t kp, float alpha, bool accumulate) {
  if (m <= 0 || n <= 0) return;
  int64_t r = 0;
  if (n <= 32)
    for (; r + 8 <= m; r += 8) row_block<8>(ap, sr, sp, bp, ldp, kp, c, ldc, r, n, alpha, accumulate);
  for (; r + 4 <= m; r += 4) row_block<4>(ap, sr, sp, bp, ldp, kp, c, ldc, r, n, alpha, accumulate);
  for (; r < m; ++r) row_block<1>(ap, sr, sp, bp, ldp, kp, c, ldc, r, n, alpha, accumulate);
}

// A as pairs along its rows: Ap[r][p] = (A[r][2p], A[r][2p+1]) for p < ⌈cols/2⌉
// (0 partner for an odd cols), row stride ldp: the row-major A operand of gemm_bf16_pp.
void pack_bf16_rows(const float* a, int64_t lda, int64_t rows, int64_t cols, uint32_t* ap, int64_t ldp) {
  const int64_t kp = (cols + 1) / 2;
  for (int64_t r = 0; r < rows; ++r) {
    const float* ar = a + r * lda;
    for (int64_t t = 0; t < 2 * kp; t += 32) {  // 32 values (16 pairs) at a time
      const __m512 x0 = _mm512_maskz_loadu_ps(first(cols - t), ar + t);
      const __m512 x1 = _mm512_maskz_loadu_ps(first(cols - t - 16), ar + t + 16);
      _mm512_mask_storeu_epi32(ap + r * ldp + t / 2, first(kp - t / 2), in_order(x0, x1));
    }
  }
}

// The common case of an attention tile's softmax backward, with the
// bfloat16 copies its products read, in one pass over pairs of rows:
//   dS = P ∘ (dP − δ_r), exactly 0 where P is 0 (in place of dP, float32)
//   dSr: dS by rows (pack_bf16_rows, row stride ldr pairs)
//   Pt, dSt: P and dS as pairs of rows (pack_bf16_pairs, row stride ldt)
template <bool kStore>
void softmax_grad_tile(const float* P, float* dS, const float* delta, int64_t nr, int64_t nc, uint32_t* dSr,
                       int64_t ldr, uint32_t* Pt, uint32_t* dSt, int64_t ldt) {
  const int64_t even = (nc + 1) / 2 * 2, width = (nc + 15) / 16 * 16;
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t r = 0; r < nr; r += 2) {
    const bool pair = r + 1 < nr;  // an odd last row gets a zero partner
    const __m512 d0 = _mm512_set1_ps(delta[r]), d1 = _mm512_set1_ps(pair ? delta[r + 1] : 0.0f);
    for (int64_t i = 0; i < width; i += 16) {
      const __mmask16 mask = first(nc - i), m1 = pair ? mask : __mmask16(0);
      const __m512 p0 = _mm512_maskz_loadu_ps(mask, P + r * nc + i), p1 = _mm512_maskz_loadu_ps(m1, P + (r + 1) * nc + i);
      const __m512 g0 = _mm512_maskz_mul_ps(_mm512_cmp_ps_mask(p0, zero, _CMP_NEQ_UQ), p0,
                                            _mm512_sub_ps(_mm512_maskz_loadu_ps(mask, dS + r * nc + i), d0));
      const __m512 g1 = _mm512_maskz_mul_ps(_mm512_cmp_ps_mask(p1, zero, _CMP_NEQ_UQ), p1,
                                            _mm512_sub_ps(_mm512_maskz_loadu_ps(m1, dS + (r + 1) * nc + i), d1));
      if constexpr (kStore) {
        _mm512_mask_storeu_ps(dS + r * nc + i, mask, g0);
        _mm512_mask_storeu_ps(dS + (r + 1) * nc + i, m1, g1);
      }
      if (i < even) {
        const __mmask16 half = first(even - i);
        _mm256_mask_storeu_epi16(reinterpret_cast<uint16_t*>(dSr + r * ldr) + i, half, (__m256i)_mm512_cvtneps_pbh(g0));
        if (pair)
          _mm256_mask_storeu_epi16(reinterpret_cast<uint16_t*>(dSr + (r + 1) * ldr) + i, half,
                                   (__m256i)_mm512_cvtneps_pbh(g1));
      }
      _mm512_storeu_si512(Pt + r / 2 * ldt + i, interleaved(p0, p1));
      _mm512_storeu_si512(dSt + r / 2 * ldt + i, interleaved(g0, g1));
    }
  }
}

void softmax_grad_tile_bf16(const float* P, float* dS, const float* delta, int64_t nr, int64_t nc, uint32_t* dSr,
                            int64_t ldr, uint32_t* Pt, uint32_t* dSt, int64_t ldt, bool store_dS) {
  (store_dS ? softmax_grad_tile<true> : softmax_grad_tile<false>)(P, dS, delta, nr, nc, dSr, ldr, Pt, dSt, ldt);
}

// Bp[p][j] = (B[2p][j], B[2p+1][j]) for p < ⌈k/2⌉, j < ⌈n/16⌉·16 (zeros past n and past k).
void pack_bf16_pairs(const float* b, int64_t ldb, int64_t k, int64_t n, uint32_t* bp, int64_t ldp) {
  const int64_t kp = (k + 1) / 2, width = (n + 15) / 16 * 16;
  for (int64_t p = 0; p < kp; ++p) {
    const float* b0 = b + 2 * p * ldb;
    const bool pair = 2 * p + 1 < k;
    for (int64_t j = 0; j < width; j += 16) {  // masked tail loads give zeros
      const __mmask16 mask = first(n - j);
      const __m512 lo = _mm512_maskz_loadu_ps(mask, b0 + j);
      const __m512 hi = pair ? _mm512_maskz_loadu_ps(mask, b0 + ldb + j) : _mm512_setzero_ps();
      _mm512_storeu_si512(bp + p * ldp + j, interleaved(lo, hi));
    }
  }
}

// Bp[p][j] = (X[j][2p], X[j][2p+1]) for j < rows, p < ⌈cols/2⌉, and 0 for
// rows <= j < ⌈rows/16⌉·16: pack_bf16_pairs of Xᵀ, read from X itself (so
// Kᵀ and Vᵀ need no float32 transposed copy). A pair is adjacent in X: 16
// of them come from two 64-bit gathers down column pair p, rounded in order.
void pack_bf16_pairs_t(const float* x, int64_t ldx, int64_t rows, int64_t cols, uint32_t* bp, int64_t ldp) {
  const int64_t kp = (cols + 1) / 2, width = (rows + 15) / 16 * 16;
  const __m512i i0 = _mm512_mullo_epi64(_mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi64(ldx));
  const __m512i i1 = _mm512_add_epi64(i0, _mm512_set1_epi64(8 * ldx));
  for (int64_t j = 0; j < width; j += 16) {  // 16 rows of X at a time: they stay in L1 over all p
    // The next 16 rows, fetched ahead: gathers from memory (X is read once,
    // cold) would wait for each line in turn, at about twice the time.
    for (int64_t t = j + 16; t < std::min(rows, j + 32); ++t)
      for (int64_t c = 0; c < cols; c += 16) _mm_prefetch(reinterpret_cast<const char*>(x + t * ldx + c), _MM_HINT_T0);
    const __mmask8 m0 = __mmask8(first(rows - j)), m1 = __mmask8(first(rows - j - 8));
    for (int64_t p = 0; p < kp; ++p) {
      uint32_t* dst = bp + p * ldp + j;
      if (2 * p + 1 == cols) {  // an odd last column: a zero partner
        for (int64_t t = 0; t < 16; ++t) dst[t] = j + t < rows ? bf16_bits(x[(j + t) * ldx + 2 * p]) : 0u;
        continue;
      }
      const float* base = x + j * ldx + 2 * p;
      const __m512 lo = (__m512)_mm512_mask_i64gather_epi64(_mm512_setzero_si512(), m0, i0, base, 4);
      const __m512 hi = (__m512)_mm512_mask_i64gather_epi64(_mm512_setzero_si512(), m1, i1, base, 4);
      _mm512_storeu_si512(dst, in_order(lo, hi));
    }
  }
}

void gemm_bf16_packed(const float* a, int64_t a_rs, int64_t a_cs, const uint32_t* bp, int64_t ldp, float* c,
                      int64_t ldc, int64_t m, int64_t n, int64_t k, float alpha, bool accumulate) {
  if (m <= 0 || n <= 0) return;
  const int64_t kp = (k + 1) / 2;
  thread_local std::vector<uint32_t> A;  // the packed A, reused across calls
  A.resize(size_t(m * kp + 16));
  // A: Ap(r, p) at A[r · sr + p · sp], in whichever order lets the loads be contiguous.
  int64_t sr = kp, sp = 1;
  if (a_cs == 1) {  // rows contiguous: 16 pairs (32 values) of a row at a time
    for (int64_t r = 0; r < m; ++r) {
      const float* ar = a + r * a_rs;
      for (int64_t t = 0; t < 2 * kp; t += 32) {
        const __m512 x0 = _mm512_maskz_loadu_ps(first(k - t), ar + t);
        const __m512 x1 = _mm512_maskz_loadu_ps(first(k - t - 16), ar + t + 16);
        _mm512_mask_storeu_epi32(A.data() + r * kp + t / 2, first(kp - t / 2), in_order(x0, x1));
      }
    }
  } else if (a_rs == 1) {  // columns contiguous (a transposed tile): 16 rows of a pair at a time
    sr = 1, sp = m;
    for (int64_t p = 0; p < kp; ++p) {
      const float* a0 = a + 2 * p * a_cs;
      const bool pair = 2 * p + 1 < k;
      for (int64_t r = 0; r < m; r += 16) {
        const __mmask16 mask = first(m - r);
        const __m512 lo = _mm512_maskz_loadu_ps(mask, a0 + r);
        const __m512 hi = pair ? _mm512_maskz_loadu_ps(mask, a0 + a_cs + r) : _mm512_setzero_ps();
        _mm512_mask_storeu_epi32(A.data() + p * m + r, mask, interleaved(lo, hi));
      }
    }
  } else {
    for (int64_t r = 0; r < m; ++r)
      for (int64_t p = 0; p < kp; ++p) {
        const uint32_t lo = bf16_bits(a[r * a_rs + 2 * p * a_cs]);
        const uint32_t hi = 2 * p + 1 < k ? bf16_bits(a[r * a_rs + (2 * p + 1) * a_cs]) : 0u;
        A[size_t(r * kp + p)] = lo | hi << 16;
      }
  }
  gemm_bf16_pp(A.data(), sr, sp, bp, ldp, c, ldc, m, n, kp, alpha, accumulate);
}

void gemm_bf16(const float* a, int64_t a_rs, int64_t a_cs, const float* b, int64_t ldb, float* c, int64_t ldc,
               int64_t m, int64_t n, int64_t k, float alpha, bool accumulate) {
  if (m <= 0 || n <= 0) return;
  const int64_t ldp = (n + 15) / 16 * 16;
  thread_local std::vector<uint32_t> B;
  B.resize(size_t((k + 1) / 2 * ldp + 16));
  pack_bf16_pairs(b, ldb, k, n, B.data(), ldp);
  gemm_bf16_packed(a, a_rs, a_cs, B.data(), ldp, c, ldc, m, n, k, alpha, accumulate);
}

// to_bf16_dot: vcvtneps2bf16 rounds to nearest even and quiets NaNs like
// BFloat16(float), and flushes subnormals to zero.
void to_bf16_dot(const float* x, uint16_t* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + i)));
  if (i < n) {
    const __mmask16 tail = first(n - i);
    _mm256_mask_storeu_epi16(y + i, tail, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(tail, x + i)));
  }
}

}  // namespace

const Table& table_avx512();

const Table& table_avx512bf16() {
  static const Table t = [] {
    Table x = table_avx512();
    x.name = "avx512bf16";
    x.gemm_bf16 = &gemm_bf16;
    x.pack_bf16_pairs = &pack_bf16_pairs;
    x.gemm_bf16_packed = &gemm_bf16_packed;
    x.pack_bf16_rows = &pack_bf16_rows;
    x.pack_bf16_pairs_t = &pack_bf16_pairs_t;
    x.gemm_bf16_pp = &gemm_bf16_pp;
    x.softmax_tile_bf16 = &softmax_tile_bf16;
    x.exp_tile_bf16 = &avx512::exp_tile<true>;
    x.to_bf16_dot = &to_bf16_dot;
    x.softmax_grad_tile_bf16 = &softmax_grad_tile_bf16;
    return x;
  }();
  return t;
}

}  // namespace loom::kernels
