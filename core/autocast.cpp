#include <loom/core/autocast.h>

#include <oneapi/dnnl/dnnl.h>

#include <loom/core/error.h>
#include <loom/core/tensor.h>

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

Tensor make_bf16_twin(const Tensor& out) {
  if (!enabled_now || !out.defined() || out.dtype() != kFloat32 || !out.is_contiguous() || !native_bf16()) return {};
  Tensor twin = empty(out.sizes(), kBFloat16);
  out.impl()->storage->set_bf16_twin(twin.impl()->storage);
  return twin;
}

Tensor bf16_twin_of(const Tensor& t) {
  if (!t.defined() || t.dtype() != kFloat32 || !t.impl()->storage) return {};
  const std::shared_ptr<Storage>& twin = t.impl()->storage->bf16_twin();
  if (!twin) return {};
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = twin, impl->shape = t.sizes(), impl->strides = t.strides(), impl->offset = t.storage_offset();
  impl->dtype = kBFloat16;
  return Tensor(std::move(impl));
}

}  // namespace loom
