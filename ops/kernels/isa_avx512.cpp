// The kernels compiled for AVX-512 F, CD, DQ and BW (built with -mavx512f -mavx512cd -mavx512dq -mavx512bw -mfma), the set every AVX-512 CPU since Skylake-SP has.
#if defined(__GNUC__) && !defined(__clang__)
// g++ 12 warns inside its own avx512fintrin.h (the __Y of _mm512_undefined_*,
// GCC bug 105593) when this file is built with -O1 and ASan.
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include "kernels_impl.h"

#include <loom/ops/kernels/avx512_tiles.h>

namespace loom::kernels {
namespace {
// The attention tile's online-softmax step in float32 (kernels.h), 16 rows
// at a time by avx512_tiles.h's kernel, then those rows of o rescaled.
void softmax_tile_avx512(const float* x, int64_t nr, int64_t nc, float* m, float* l, float* y, float* o, int64_t dv) {
  for (int64_t r0 = 0; r0 < nr; r0 += 16) {
    const int64_t rows = std::min<int64_t>(16, nr - r0);
    alignas(64) float alpha[16];
    avx512::softmax_tile_rows<false>(x + r0 * nc, rows, nc, m + r0, l + r0, alpha, y + r0 * nc, nullptr, 0);
    avx512::scale_rows(o + r0 * dv, dv, alpha, rows);
  }
}

// to_bf16 (kernels_impl.h's bf16_bits, 16 at a time) narrowed by vpmovdw:
// the generic kernel narrows one value at a time through memory, ~2.3× the
// time (2048 × 512 floats: ~150 µs against ~65 µs).
void to_bf16_avx512(const float* x, uint16_t* y, int64_t n) {
  using A = xsimd::avx512bw;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), _mm512_cvtepi32_epi16(bf16_bits<A>(Batch<A>::load_unaligned(x + i))));
  if (i < n) {
    const __mmask16 tail = avx512::first(n - i);
    _mm512_mask_cvtepi32_storeu_epi16(y + i, tail, bf16_bits<A>(Batch<A>(_mm512_maskz_loadu_ps(tail, x + i))));
  }
}
}  // namespace

const Table& table_avx512() {
  static const Table t = [] {
    Table x = make_table<xsimd::avx512bw>("avx512");
    x.softmax_tile = &softmax_tile_avx512;
    x.exp_tile = &avx512::exp_tile<false>;
    x.to_bf16 = &to_bf16_avx512;
    x.to_bf16_dot = &to_bf16_avx512;
    return x;
  }();
  return t;
}
}  // namespace loom::kernels
