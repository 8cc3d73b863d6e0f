// The one loop every elementwise kernel is built on.
//
// N operands share one shape (broadcasting already applied: a stride of 0
// repeats an element). for_each_run() merges dimensions that are laid out
// back to back, drops size-1 dimensions, and calls
//     inner(ptrs, strides, n)
// once per innermost run of n elements, with byte pointers and byte strides.
// A contiguous tensor therefore becomes one run, and the kernel's inner loop
// is a plain `for (i < n)` the compiler (or xsimd) can vectorise.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace loom {

template <size_t N, typename F>
void for_each_run(const std::vector<int64_t>& shape, std::array<char*, N> data,
                  const std::array<std::vector<int64_t>, N>& byte_strides, F&& inner) {
  // Collect dims innermost first, skipping size-1 dims and merging a dim into
  // the previous one when every operand steps through both as one.
  std::vector<int64_t> size;
  std::vector<std::array<int64_t, N>> stride;
  for (int64_t d = int64_t(shape.size()) - 1; d >= 0; --d) {
    if (shape[d] == 0) return;  // nothing to do for empty tensors
    if (shape[d] == 1) continue;
    std::array<int64_t, N> s;
    for (size_t k = 0; k < N; ++k) s[k] = byte_strides[k][d];
    if (!size.empty()) {
      bool mergeable = true;
      for (size_t k = 0; k < N; ++k) mergeable &= s[k] == stride.back()[k] * size.back();
      if (mergeable) { size.back() *= shape[d]; continue; }
    }
    size.push_back(shape[d]);
    stride.push_back(s);
  }
  if (size.empty()) {  // a single element
    std::array<int64_t, N> zero{};
    inner(data.data(), zero.data(), int64_t(1));
    return;
  }
  // Odometer over the outer dims (1 .. end); the run is dim 0.
  const size_t outer = size.size() - 1;
  std::vector<int64_t> counter(outer, 0);
  std::array<char*, N> ptr = data;
  while (true) {
    inner(ptr.data(), stride[0].data(), size[0]);
    size_t d = 0;
    for (; d < outer; ++d) {
      for (size_t k = 0; k < N; ++k) ptr[k] += stride[d + 1][k];
      if (++counter[d] < size[d + 1]) break;
      for (size_t k = 0; k < N; ++k) ptr[k] -= stride[d + 1][k] * size[d + 1];
      counter[d] = 0;
    }
    if (d == outer) return;
  }
}

}  // namespace loom
