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

// One tile's step of the online softmax, rows r < nr of x [nr, nc] (see
// kernels.h). Whole tiles per call, the sums and maxima reduced as trees
// rather than lane by lane, and the rescaling factors of 16 rows in one
// vector at the end: a row is only 4 vectors, so per-row calls, serial lane
// sums and a scalar exp per row left it at about twice this cost.
// kMayPackBf16 false (the float32 table, built without AVX512-BF16): y only.
template <bool kMayPackBf16>
inline void softmax_tile_rows(const float* x, int64_t nr, int64_t nc, float* m, float* l, float* alpha, float* y,
                              uint32_t* yb, int64_t ldb) {
  const int64_t even = kMayPackBf16 && !y ? (nc + 1) / 2 * 2 : nc;
  const __m512 neg_inf = _mm512_set1_ps(-INFINITY);
  for (int64_t r0 = 0; r0 < nr; r0 += 16) {
    const int64_t rows = std::min<int64_t>(16, nr - r0);
    alignas(64) float m_new[16], sums[16];
    for (int64_t i = 0; i < 16; ++i) m_new[i] = -INFINITY, sums[i] = 0.0f;
    for (int64_t r = r0; r < r0 + rows; ++r) {
      const float* xr = x + r * nc;
      __m512 mx = neg_inf;
      __mmask16 nan = 0;  // _mm512_max_ps would drop a NaN
      for (int64_t i = 0; i < nc; i += 16) {
        const __m512 v = _mm512_mask_loadu_ps(neg_inf, first(nc - i), xr + i);
        mx = _mm512_max_ps(mx, v);
        nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
      }
      const float mr = nan || std::isnan(m[r]) ? NAN : std::max(m[r], _mm512_reduce_max_ps(mx));
      m_new[r - r0] = mr;
      if (mr == -INFINITY) {  // nothing visible yet in this row: weights 0
        if (y || !kMayPackBf16) std::fill(y + r * nc, y + (r + 1) * nc, 0.0f);
        else std::fill(yb + r * ldb, yb + r * ldb + even / 2, 0u);
        continue;
      }
      const __m512 sh = _mm512_set1_ps(mr);
      __m512 acc = _mm512_setzero_ps();
      for (int64_t i = 0; i < even; i += 16) {
        const __mmask16 mask = first(nc - i);
        const __m512 e = _mm512_maskz_mov_ps(mask, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, xr + i), sh)));
        acc = _mm512_add_ps(acc, e);
        if (y || !kMayPackBf16) {
          _mm512_mask_storeu_ps(y + r * nc + i, mask, e);
        } else {
          if constexpr (kMayPackBf16)
            _mm256_mask_storeu_epi16(reinterpret_cast<uint16_t*>(yb + r * ldb) + i, first(even - i),
                                     (__m256i)_mm512_cvtneps_pbh(e));
        }
      }
      sums[r - r0] = _mm512_reduce_add_ps(acc);
    }
    // alpha = exp(m − m_new), 1 where m_new is −∞ (the row's m and l stay: −∞ and 0)
    const __mmask16 mask = first(rows);
    const __m512 mo = _mm512_maskz_loadu_ps(mask, m + r0), mn = _mm512_load_ps(m_new);
    const __mmask16 none = _mm512_cmp_ps_mask(mn, neg_inf, _CMP_EQ_OQ);
    const __m512 a = _mm512_mask_mov_ps(exp16(_mm512_sub_ps(mo, mn)), none, _mm512_set1_ps(1.0f));
    const __m512 lo = _mm512_maskz_loadu_ps(mask, l + r0);
    _mm512_mask_storeu_ps(alpha + r0, mask, a);
    _mm512_mask_storeu_ps(l + r0, mask & ~none, _mm512_add_ps(_mm512_mul_ps(lo, a), _mm512_load_ps(sums)));
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
      const __mmask16 mask = first(dv - d);
      _mm512_mask_storeu_ps(orow + d, mask, _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, orow + d), a));
    }
  }
}

// y[r][c] = exp(x[r][c] − shift[r]) over a tile [nr, nc].
inline void exp_tile(const float* x, int64_t nr, int64_t nc, const float* shift, float* y) {
  for (int64_t r = 0; r < nr; ++r) {
    const __m512 sh = _mm512_set1_ps(shift[r]);
    for (int64_t i = 0; i < nc; i += 16) {
      const __mmask16 mask = first(nc - i);
      _mm512_mask_storeu_ps(y + r * nc + i, mask, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, x + r * nc + i), sh)));
    }
  }
}

}  // namespace loom::kernels::avx512
