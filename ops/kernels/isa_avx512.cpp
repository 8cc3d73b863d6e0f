// The kernels compiled for AVX-512 F, CD, DQ and BW (built with -mavx512f -mavx512cd -mavx512dq -mavx512bw -mfma), the set every AVX-512 CPU since Skylake-SP has.
#include "kernels_impl.h"

namespace loom::kernels {
const Table& table_avx512() {
  static const Table t = make_table<xsimd::avx512bw>("avx512");
  return t;
}
}  // namespace loom::kernels
