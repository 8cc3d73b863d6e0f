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
}  // namespace

const Table& table_avx512() {
  static const Table t = [] {
    Table x = make_table<xsimd::avx512bw>("avx512");
    x.softmax_tile = &softmax_tile_avx512;
    x.exp_tile = &avx512::exp_tile;
    return x;
  }();
  return t;
}
}  // namespace loom::kernels
