#include <loom/core/autocast.h>

#include <oneapi/dnnl/dnnl.h>

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

bool native_bf16() {
  const unsigned isa = unsigned(dnnl_get_effective_cpu_isa());
  const unsigned bf16 = unsigned(dnnl_cpu_isa_avx512_core_bf16);
  return (isa & bf16) == bf16;
}

}  // namespace loom
