// The kernels compiled for SSE2, the x86-64 baseline (no extra flags).
#include "kernels_impl.h"

namespace loom::kernels {
const Table& table_sse2() {
  static const Table t = make_table<xsimd::sse2>("sse2");
  return t;
}
}  // namespace loom::kernels
