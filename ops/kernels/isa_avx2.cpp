// The kernels compiled for AVX2 with FMA (built with -mavx2 -mfma).
#include "kernels_impl.h"

namespace loom::kernels {
const Table& table_avx2() {
  static const Table t = make_table<xsimd::fma3<xsimd::avx2>>("avx2");
  return t;
}
}  // namespace loom::kernels
