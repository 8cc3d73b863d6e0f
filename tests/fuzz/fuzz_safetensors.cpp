// libFuzzer target for load_safetensors (core/safetensors.cpp) and, on what
// it accepts, the checkpoint reader of train/trainer.cpp (metadata, config,
// weights). Seeds: corpus/safetensors.
#include <loom/loom.h>

#include "fuzz_input.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  loom_fuzz::limit_memory();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = loom_fuzz::write_input(data, size, ".safetensors");
  try {
    const loom::SafetensorsFile f = loom::load_safetensors(path);
    volatile uint8_t sink = 0;
    for (const auto& [name, t] : f.tensors) {
      const auto* bytes = static_cast<const uint8_t*>(t.raw_data());
      for (size_t i = 0; i < size_t(t.numel()) * loom::element_size(t.dtype()); ++i) sink = sink ^ bytes[i];
    }
    (void)sink;
  } catch (const loom::Error&) {
    return 0;
  }
  try {
    loom::load_checkpoint(path);
  } catch (const loom::Error&) {
  }
  return 0;
}
