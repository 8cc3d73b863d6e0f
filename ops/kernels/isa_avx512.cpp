// The kernels compiled for AVX-512 F, CD, DQ and BW (built with -mavx512f -mavx512cd -mavx512dq -mavx512bw -mfma), the set every AVX-512 CPU since Skylake-SP has.
#if defined(__GNUC__) && !defined(__clang__)
// g++ 12 warns inside its own avx512fintrin.h (the __Y of _mm512_undefined_*,
// GCC bug 105593) when this file is built with -O1 and ASan.
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include "kernels_impl.h"

namespace loom::kernels {
const Table& table_avx512() {
  static const Table t = make_table<xsimd::avx512bw>("avx512");
  return t;
}
}  // namespace loom::kernels
