// libFuzzer target for read_npy (core/npy.cpp). Seeds: corpus/npy.
#include <loom/loom.h>

#include "fuzz_input.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  loom_fuzz::limit_memory();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const loom::Tensor t = loom::read_npy(loom_fuzz::write_input(data, size, ".npy"));
    // Touch every element, so a tensor smaller than its shape says shows up under ASan.
    const loom::Tensor c = t.contiguous();
    volatile uint8_t sink = 0;
    const auto* bytes = static_cast<const uint8_t*>(c.raw_data());
    for (size_t i = 0; i < size_t(c.numel()) * loom::element_size(c.dtype()); ++i) sink = sink ^ bytes[i];
    (void)sink;
  } catch (const loom::Error&) {
  }
  return 0;
}
