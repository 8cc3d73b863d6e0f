// ctest runs the whole suite again at each SIMD level, with oneDNN capped
// at AVX2, and at 1, 2 and 8 OpenMP threads (tests/CMakeLists.txt). This
// checks that each such run really is in the configuration it asked for.
#include "helpers.h"

#include <cstdlib>
#include <string>

#include <omp.h>
#include <oneapi/dnnl/dnnl.h>

TEST_CASE("the run uses the SIMD level, oneDNN ISA and thread count it was started with") {
  if (const char* isa = std::getenv("LOOM_SIMD")) CHECK(std::string(loom::kernels::table().name) == isa);
  if (const char* cap = std::getenv("ONEDNN_MAX_CPU_ISA"); cap && std::string(cap) == "AVX2")
    CHECK((dnnl_get_effective_cpu_isa() & ~dnnl_cpu_isa_avx2) == 0);  // avx2 or less, no AVX-512 bits
  if (const char* threads = std::getenv("OMP_NUM_THREADS")) CHECK(omp_get_max_threads() == std::atoi(threads));
  // Without any of them: the best the CPU has.
  if (!std::getenv("LOOM_SIMD")) CHECK(std::string(loom::kernels::table().name) == loom::kernels::available_isas().front());
}
