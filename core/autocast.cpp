#include <loom/core/autocast.h>

#include <oneapi/dnnl/dnnl.h>

#include <loom/core/error.h>

namespace loom {

namespace {
thread_local bool enabled_now = false;
thread_local int depth = 0;
thread_local uint64_t region = 0;
}  // namespace

AutocastGuard::AutocastGuard(bool enabled) : previous_(enabled_now) {
  enabled_now = enabled;
  ++depth;
}

AutocastGuard::~AutocastGuard() {
  enabled_now = previous_;
  if (--depth == 0) ++region;
}

bool autocast_enabled() { return enabled_now; }
uint64_t autocast_region() { return region; }

Precision parse_precision(const std::string& text, const std::string& option) {
  if (text == "fp32" || text == "float32") return Precision::Float32;
  if (text == "bf16" || text == "bfloat16") return Precision::BFloat16;
  fail(option, " must be fp32 or bf16, got '", text, "'");
}

const char* precision_name(Precision p) { return p == Precision::BFloat16 ? "bf16" : "fp32"; }

bool native_bf16() {
  const unsigned isa = unsigned(dnnl_get_effective_cpu_isa());
  const unsigned bf16 = unsigned(dnnl_cpu_isa_avx512_core_bf16);
  return (isa & bf16) == bf16;
}

}  // namespace loom
