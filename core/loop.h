// The one loop every elementwise kernel is built on.
//
// N operands share one shape (broadcasting already applied: a stride of 0
// repeats an element). for_each_run() merges dimensions that are laid out
// back to back, drops size-1 dimensions, and calls
//     inner(ptrs, strides, n)
// once per innermost run of n elements, with byte pointers and byte strides.
// A contiguous tensor therefore becomes one run, and the kernel's inner loop
// is a plain `for (i < n)` or a SIMD kernel call on the whole run.
//
// parallel_for_each_run() does the same split across threads (core/parallel.h)
// when the work is large: by runs when there are many, else by cutting the
// one long run into pieces. `inner` must then be safe to call concurrently.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include <loom/core/parallel.h>

namespace loom {

namespace detail {
// The shape after merging and dropping size-1 dims, innermost first.
template <size_t N>
struct Runs {
  std::vector<int64_t> size;
  std::vector<std::array<int64_t, N>> stride;
  bool empty = false;
};

template <size_t N>
Runs<N> coalesce(const std::vector<int64_t>& shape, const std::array<std::vector<int64_t>, N>& byte_strides) {
  Runs<N> r;
  for (int64_t d = int64_t(shape.size()) - 1; d >= 0; --d) {
    if (shape[size_t(d)] == 0) { r.empty = true; return r; }
    if (shape[size_t(d)] == 1) continue;
    std::array<int64_t, N> s;
    for (size_t k = 0; k < N; ++k) s[k] = byte_strides[k][size_t(d)];
    if (!r.size.empty()) {  // merge into the previous dim when every operand steps through both as one
      bool mergeable = true;
      for (size_t k = 0; k < N; ++k) mergeable &= s[k] == r.stride.back()[k] * r.size.back();
      if (mergeable) { r.size.back() *= shape[size_t(d)]; continue; }
    }
    r.size.push_back(shape[size_t(d)]);
    r.stride.push_back(s);
  }
  if (r.size.empty()) {  // a single element
    r.size.push_back(1);
    r.stride.push_back({});
  }
  return r;
}

// Runs number `first` .. `last` - 1 (counting over the outer dims).
template <size_t N, typename F>
void do_runs(const Runs<N>& r, std::array<char*, N> ptr, int64_t first, int64_t last, F& inner) {
  const size_t outer = r.size.size() - 1;
  std::vector<int64_t> counter(outer, 0);
  for (size_t d = 0, rest = size_t(first); d < outer; ++d) {  // start position of run `first`
    counter[d] = int64_t(rest) % r.size[d + 1];
    rest /= size_t(r.size[d + 1]);
    for (size_t k = 0; k < N; ++k) ptr[k] += counter[d] * r.stride[d + 1][k];
  }
  for (int64_t run = first; run < last; ++run) {
    inner(ptr.data(), r.stride[0].data(), r.size[0]);
    for (size_t d = 0; d < outer; ++d) {  // odometer step
      for (size_t k = 0; k < N; ++k) ptr[k] += r.stride[d + 1][k];
      if (++counter[d] < r.size[d + 1]) break;
      for (size_t k = 0; k < N; ++k) ptr[k] -= r.stride[d + 1][k] * r.size[d + 1];
      counter[d] = 0;
    }
  }
}
}  // namespace detail

template <size_t N, typename F>
void for_each_run(const std::vector<int64_t>& shape, std::array<char*, N> data,
                  const std::array<std::vector<int64_t>, N>& byte_strides, F&& inner) {
  detail::Runs<N> r = detail::coalesce<N>(shape, byte_strides);
  if (r.empty) return;
  int64_t runs = 1;
  for (size_t d = 1; d < r.size.size(); ++d) runs *= r.size[d];
  detail::do_runs<N>(r, data, 0, runs, inner);
}

template <size_t N, typename F>
void parallel_for_each_run(const std::vector<int64_t>& shape, std::array<char*, N> data,
                           const std::array<std::vector<int64_t>, N>& byte_strides, int64_t work_per_element,
                           F&& inner) {
  detail::Runs<N> r = detail::coalesce<N>(shape, byte_strides);
  if (r.empty) return;
  int64_t runs = 1;
  for (size_t d = 1; d < r.size.size(); ++d) runs *= r.size[d];
  if (runs > 1) {
    parallel_for(runs, r.size[0] * work_per_element,
                 [&](int64_t first, int64_t last) { detail::do_runs<N>(r, data, first, last, inner); });
  } else {  // one long run: cut it into pieces
    parallel_for(r.size[0], work_per_element, [&](int64_t begin, int64_t end) {
      std::array<char*, N> p = data;
      for (size_t k = 0; k < N; ++k) p[k] += begin * r.stride[0][k];
      inner(p.data(), r.stride[0].data(), end - begin);
    });
  }
}

}  // namespace loom
