// The softmax parts of an attention tile in AVX-512 intrinsics, a whole
// tile per call with an exp of their own (exp16), for the float32 table
// (isa_avx512.cpp) and the bfloat16 one (isa_avx512bf16.cpp). Included only
// by files built with AVX-512 flags. At d = 64 the softmax part was about a
// third of the float32 forward's time with xsimd's exp and per-row calls; as
// whole tiles it is about half of one of the tile's two products.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace loom::kernels::avx512 {

// The first `count` of 16 lanes (none for count <= 0).
inline __mmask16 first(int64_t count) {
  return count >= 16 ? __mmask16(0xffff) : count <= 0 ? __mmask16(0) : __mmask16((1u << count) - 1);
}

// The first min(count, 16) lanes of v to p: a plain store when all 16 go.
inline void store16(float* p, int64_t count, __m512 v) {
  if (count >= 16) _mm512_storeu_ps(p, v);
  else _mm512_mask_storeu_ps(p, first(count), v);
}

// e^x in 16 lanes, Cephes' expf: x = n·ln 2 + r with |r| <= ln 2 / 2 (ln 2
// in two parts, so r is exact), e^r = 1 + r + r²·poly(r), times 2ⁿ by
// vscalefps (which gives 0 and ∞ past the float range itself). About 1 ulp,
// like xsimd::exp, in a third of its instructions: the special-case blends
// are replaced by clamping x to [−104, 89] (e^−104 is 0 in float32, e^89 is
// ∞); min and max keep a NaN (they return their second operand when one is NaN).
inline __m512 exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_set1_ps(89.0f), _mm512_max_ps(_mm512_set1_ps(-104.0f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(y, n);
}

// e^x in 16 lanes for x <= 0 to about 3e-6 relative, for weights that are
// rounded to bfloat16 (2^-9 relative) before any product reads them:
// 2^t with t = x·log₂e split as n + r, |r| <= 1/2 (r = t − n is exact), and
// 2^r by a degree-4 minimax polynomial (2.6e-6), times 2ⁿ by vscalefps.
// Ten instructions with the caller's subtraction against exp16's fifteen:
// the exps were about half of the bfloat16 tile's softmax part. x = −∞
// gives exactly 0 (t is clamped to −160: 2^−160 is 0 in float32); a NaN
// stays NaN (max returns its second operand when one is NaN).
inline __m512 exp16_weights(__m512 x) {
  const __m512 t = _mm512_max_ps(_mm512_set1_ps(-160.0f), _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_sub_ps(t, n);
  __m512 y = _mm512_set1_ps(9.570071474e-03f);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.591777712e-02f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(2.402474433e-01f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(6.931218505e-01f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(9.999992847e-01f));
  return _mm512_scalef_ps(y, n);
}

// Lane r of the result: the max (kMax) or the sum of v[r]'s 16 lanes, for
// 16 vectors at once. A transposing tree, 15 operations and 30 shuffles, then
// one permute; a reduction per row took about 8 dependent instructions each.
template <bool kMax>
inline __m512 reduce16(const __m512* v) {
  auto op = [](__m512 a, __m512 b) { return kMax ? _mm512_max_ps(a, b) : _mm512_add_ps(a, b); };
  __m512 c[8], e[4], f[2];
  // c[i]: 128-bit lanes 0, 1 hold row 2i, lanes 2, 3 row 2i + 1 (8 partials each)
  for (int i = 0; i < 8; ++i)
    c[i] = op(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44), _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xee));
  // e[j]: lane L holds row 4j + L (4 partials)
  for (int j = 0; j < 4; ++j)
    e[j] = op(_mm512_shuffle_f32x4(c[2 * j], c[2 * j + 1], 0x88), _mm512_shuffle_f32x4(c[2 * j], c[2 * j + 1], 0xdd));
  // f[k], lane L: rows 8k + L and 8k + 4 + L, 2 partials each
  for (int k = 0; k < 2; ++k)
    f[k] = op(_mm512_shuffle_ps(e[2 * k], e[2 * k + 1], 0x44), _mm512_shuffle_ps(e[2 * k], e[2 * k + 1], 0xee));
  // g[4L + t] is row 4t + L
  const __m512 g = op(_mm512_shuffle_ps(f[0], f[1], 0x88), _mm512_shuffle_ps(f[0], f[1], 0xdd));
  const __m512i idx = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
  return _mm512_permutexvar_ps(idx, g);
}

// One tile's step of the online softmax, rows r < nr of x [nr, nc] (see
// kernels.h), 16 rows at a time: their maxima, rescaling factors and sums
// as vectors (reduce16), the exps row by row. A row is only 4 vectors, so
// per-row calls, serial lane sums and a scalar exp per row left it at about
// twice the cost of a whole-tile call with per-row reductions, and those at
// about 1.2× this.
// kMayPackBf16 false (the float32 table, built without AVX512-BF16): y only,
// with exp16. True (the bfloat16 table, whose weights are rounded to
// bfloat16 for P V): the weights' exp is exp16_weights.
template <bool kMayPackBf16>
inline void softmax_tile_rows(const float* x, int64_t nr, int64_t nc, float* m, float* l, float* alpha, float* y,
                              uint32_t* yb, int64_t ldb) {
  const int64_t even = kMayPackBf16 && !y ? (nc + 1) / 2 * 2 : nc;
  const __m512 neg_inf = _mm512_set1_ps(-INFINITY);
  for (int64_t r0 = 0; r0 < nr; r0 += 16) {
    const int64_t rows = std::min<int64_t>(16, nr - r0);
    const __mmask16 mask = first(rows);
    __m512 part[16];
    __mmask16 nan = 0;  // rows with a NaN logit (_mm512_max_ps would drop it)
    for (int64_t i = 0; i < 16; ++i) {
      __m512 mx = neg_inf;
      if (i < rows) {
        const float* xr = x + (r0 + i) * nc;
        __mmask16 row_nan = 0;
        for (int64_t c = 0; c < nc; c += 16) {
          const __m512 v = _mm512_mask_loadu_ps(neg_inf, first(nc - c), xr + c);
          mx = _mm512_max_ps(mx, v);
          row_nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        }
        if (row_nan) nan |= __mmask16(1u << i);
      }
      part[i] = mx;
    }
    // m_new = max(m, the row's max), NaN if either is
    const __m512 mo = _mm512_mask_loadu_ps(neg_inf, mask, m + r0);
    nan |= _mm512_cmp_ps_mask(mo, mo, _CMP_UNORD_Q);
    const __m512 mn = _mm512_mask_mov_ps(_mm512_max_ps(reduce16<true>(part), mo), nan, _mm512_set1_ps(NAN));
    const __mmask16 none = _mm512_cmp_ps_mask(mn, neg_inf, _CMP_EQ_OQ);  // nothing visible yet: weights 0
    alignas(64) float shift[16];
    _mm512_store_ps(shift, mn);
    for (int64_t i = 0; i < 16; ++i) {
      __m512 acc = _mm512_setzero_ps();
      const int64_t r = r0 + i;
      if (i < rows && (none >> i & 1)) {
        if (y || !kMayPackBf16) std::fill(y + r * nc, y + (r + 1) * nc, 0.0f);
        else std::fill(yb + r * ldb, yb + r * ldb + even / 2, 0u);
      } else if (i < rows) {
        const float* xr = x + r * nc;
        const __m512 sh = _mm512_set1_ps(shift[i]);
        auto weights = [&](int64_t c) {  // 16 weights from column c, 0 past nc
          const __mmask16 cm = first(nc - c);
          const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(cm, xr + c), sh);
          const __m512 e = _mm512_maskz_mov_ps(cm, kMayPackBf16 ? exp16_weights(d) : exp16(d));
          acc = _mm512_add_ps(acc, e);
          return e;
        };
        if (y || !kMayPackBf16) {
          for (int64_t c = 0; c < nc; c += 16) store16(y + r * nc + c, nc - c, weights(c));
        } else {
          if constexpr (kMayPackBf16) {
            // 32 at a time, rounded by one vcvtne2ps2bf16 and stored whole
            // (a vcvtneps2bf16 and a masked half-width store per 16 made the
            // tile ~7 % slower)
            for (int64_t c = 0; c < even; c += 32) {
              const __m512 e0 = weights(c), e1 = c + 16 < even ? weights(c + 16) : _mm512_setzero_ps();
              const __m512i h = (__m512i)_mm512_cvtne2ps_pbh(e1, e0);
              uint32_t* dst = yb + r * ldb + c / 2;
              if (even - c >= 32) _mm512_storeu_si512(dst, h);
              else _mm512_mask_storeu_epi32(dst, first((even - c) / 2), h);
            }
          }
        }
      }
      part[i] = acc;
    }
    // alpha = exp(m − m_new), 1 where m_new is −∞ (the row's m and l stay: −∞
    // and 0) and where m is −∞ (nothing seen before: l and o's row are 0, and
    // stay 0 times 1 as times 0; o's rows with alpha 1 are not touched)
    const __mmask16 fresh = _mm512_cmp_ps_mask(mo, neg_inf, _CMP_EQ_OQ);
    const __m512 a = _mm512_mask_mov_ps(exp16(_mm512_sub_ps(mo, mn)), none | fresh, _mm512_set1_ps(1.0f));
    const __m512 lo = _mm512_maskz_loadu_ps(mask, l + r0);
    _mm512_mask_storeu_ps(alpha + r0, mask, a);
    _mm512_mask_storeu_ps(l + r0, mask & ~none, _mm512_add_ps(_mm512_mul_ps(lo, a), reduce16<false>(part)));
    _mm512_mask_storeu_ps(m + r0, mask & ~none, mn);
  }
}

// Rows r < rows of o (dv floats, row stride dv) times alpha[r]: the online
// softmax's rescaling of its output accumulator (rows whose alpha is 1 untouched).
inline void scale_rows(float* o, int64_t dv, const float* alpha, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r) {
    if (alpha[r] == 1.0f) continue;
    float* orow = o + r * dv;
    const __m512 a = _mm512_set1_ps(alpha[r]);
    for (int64_t d = 0; d < dv; d += 16) {
      store16(orow + d, dv - d, _mm512_mul_ps(_mm512_maskz_loadu_ps(first(dv - d), orow + d), a));
    }
  }
}

// y[r][c] = exp(x[r][c] − shift[r]) over a tile [nr, nc], by exp16, or by
// exp16_weights for kWeights (the bfloat16 table: the softmax_tile_rows<true>
// weights' exp, recomputed by the backward).
template <bool kWeights>
inline void exp_tile(const float* x, int64_t nr, int64_t nc, const float* shift, float* y) {
  for (int64_t r = 0; r < nr; ++r) {
    const __m512 sh = _mm512_set1_ps(shift[r]);
    for (int64_t i = 0; i < nc; i += 16) {
      const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(first(nc - i), x + r * nc + i), sh);
      store16(y + r * nc + i, nc - i, kWeights ? exp16_weights(d) : exp16(d));
    }
  }
}

}  // namespace loom::kernels::avx512
