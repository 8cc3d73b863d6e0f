// Picks the kernel table for this CPU. Compiled without any ISA flags, so it
// runs everywhere.
#include <cpuid.h>

#include <atomic>
#include <cstdlib>

#include <xsimd/xsimd.hpp>

#include <loom/core/error.h>
#include <loom/ops/kernels/kernels.h>

namespace loom::kernels {

const Table& table_sse2();
const Table& table_avx2();
const Table& table_avx512();
const Table& table_avx512bf16();

namespace {
// AVX512-BF16 (vdpbf16ps): CPUID leaf 7, sub-leaf 1, EAX bit 5 (xsimd does not report it).
bool cpu_has_avx512_bf16() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a >> 5 & 1u);
}

const Table* for_name(const std::string& name) {
  auto cpu = xsimd::available_architectures();
  const bool avx512 = cpu.avx512f && cpu.avx512cd && cpu.avx512dq && cpu.avx512bw && cpu.fma3_avx2;
  if (name == "avx512bf16" && avx512 && cpu_has_avx512_bf16()) return &table_avx512bf16();
  if (name == "avx512" && avx512) return &table_avx512();
  if (name == "avx2" && cpu.avx2 && cpu.fma3_avx2) return &table_avx2();
  if (name == "sse2" && cpu.sse2) return &table_sse2();
  return nullptr;
}

const Table* choose() {
  std::vector<std::string> isas = available_isas();
  LOOM_CHECK(!isas.empty(), "kernels: this CPU does not support SSE2");
  if (const char* env = std::getenv("LOOM_SIMD")) {
    const Table* t = for_name(env);
    LOOM_CHECK(t != nullptr, "LOOM_SIMD=", env, ": not an instruction set this CPU supports (", isas[0],
               " is the best it has; choose from avx512bf16, avx512, avx2, sse2)");
    return t;
  }
  return for_name(isas[0]);
}

std::atomic<const Table*> current{nullptr};
}  // namespace

std::vector<std::string> available_isas() {
  std::vector<std::string> out;
  for (const char* name : {"avx512bf16", "avx512", "avx2", "sse2"})
    if (for_name(name)) out.push_back(name);
  return out;
}

const Table& table() {
  const Table* t = current.load(std::memory_order_acquire);
  if (!t) {
    t = choose();
    current.store(t, std::memory_order_release);
  }
  return *t;
}

void set_isa(const std::string& name) {
  const Table* t = for_name(name);
  LOOM_CHECK(t != nullptr, "set_isa: '", name, "' is not an instruction set this CPU supports");
  current.store(t, std::memory_order_release);
}

}  // namespace loom::kernels
