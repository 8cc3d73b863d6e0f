// Shared test helpers.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include <loom/loom.h>

// Runs loom::gradcheck and, on failure, prints its report (the worst element).
#define CHECK_GRADCHECK(...)                                  \
  do {                                                        \
    loom::GradcheckResult gc_result_ = loom::gradcheck(__VA_ARGS__); \
    INFO(gc_result_.report);                                  \
    CHECK(gc_result_.passed);                                 \
  } while (0)

// Elementwise closeness of two float vectors.
inline bool all_close(const std::vector<float>& a, const std::vector<float>& b, float atol = 1e-5f,
                      float rtol = 1e-5f) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (!(std::abs(a[i] - b[i]) <= atol + rtol * std::abs(b[i]))) return false;
  return true;
}

// Row-major multi-index of flat index i in `shape`.
inline std::vector<int64_t> unravel(int64_t i, const loom::Shape& shape) {
  std::vector<int64_t> idx(shape.size());
  for (int64_t d = int64_t(shape.size()) - 1; d >= 0; --d) {
    idx[size_t(d)] = i % shape[size_t(d)];
    i /= shape[size_t(d)];
  }
  return idx;
}

// Flat index into `shape` of a broadcast multi-index (from a larger shape).
inline int64_t ravel_broadcast(const std::vector<int64_t>& idx, const loom::Shape& shape) {
  int64_t flat = 0;
  size_t lead = idx.size() - shape.size();
  for (size_t d = 0; d < shape.size(); ++d) flat = flat * shape[d] + (shape[d] == 1 ? 0 : idx[d + lead]);
  return flat;
}

#include <functional>
#include <string>

#include <loom/ops/kernels/kernels.h>

// Runs `body` once per instruction set this CPU supports (SSE2, AVX2,
// AVX-512), then restores the one in use before (the best, or LOOM_SIMD's).
// The tests call this so every kernel path is compared with the scalar
// reference, not just the one in use.
inline void for_each_isa(const std::function<void(const std::string&)>& body) {
  const std::string before = loom::kernels::table().name;
  for (const std::string& isa : loom::kernels::available_isas()) {
    loom::kernels::set_isa(isa);
    body(isa);
  }
  loom::kernels::set_isa(before);
}

#include <omp.h>

// The thread counts threaded code is tested at: 1, 2 and more than the
// cores of any machine we run on.
// The message of the loom::Error f throws, or "no error".
template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const loom::Error& e) {
    return e.what();
  }
  return "no error";
}

inline const std::vector<int> kThreadCounts = {1, 2, 8};

// While alive, OpenMP regions started on this thread use `n` threads.
struct WithThreads {
  int saved = omp_get_max_threads();
  explicit WithThreads(int n) { omp_set_num_threads(n); }
  ~WithThreads() { omp_set_num_threads(saved); }
  WithThreads(const WithThreads&) = delete;
  WithThreads& operator=(const WithThreads&) = delete;
};

// Max |a - b| / (atol + rtol |b|) <= 1, elementwise, with NaN == NaN and equal infinities.
inline bool close_or_same(const std::vector<float>& a, const std::vector<double>& b, double atol, double rtol) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(b[i]) || std::isnan(a[i])) { if (std::isnan(b[i]) != std::isnan(a[i])) return false; continue; }
    if (std::isinf(b[i]) || std::isinf(a[i])) { if (double(a[i]) != b[i]) return false; continue; }
    if (std::abs(double(a[i]) - b[i]) > atol + rtol * std::abs(b[i])) return false;
  }
  return true;
}

// The logits of an attention tile [nr, nc] for its softmax kernels' tests,
// and the running statistics (m0, l0) an earlier tile left: a masked key per
// row, rows with no statistics yet, with a max below and above the row's,
// and (nr > 3) a row with nothing visible (row 1, m 2), one that stays −∞
// (row 3) and a NaN (row 2).
struct TileLogits {
  std::vector<float> x, m0, l0;
};
inline TileLogits tile_logits(int64_t nr, int64_t nc, loom::Generator& g) {
  TileLogits t;
  t.x = (loom::randn({nr * nc}, g) * 3.0f).to_vector<float>();
  t.m0.resize(static_cast<size_t>(nr)), t.l0.resize(static_cast<size_t>(nr));
  for (int64_t r = 0; r < nr; ++r) {
    t.x[size_t(r * nc + r % nc)] = -INFINITY;
    t.m0[size_t(r)] = r % 3 == 0 ? -INFINITY : r % 3 == 1 ? 2.0f : 9.0f;
    t.l0[size_t(r)] = r % 3 == 0 ? 0.0f : 1.5f;
  }
  if (nr > 3) {
    for (int64_t c = 0; c < nc; ++c) t.x[size_t(1 * nc + c)] = -INFINITY;
    for (int64_t c = 0; c < nc; ++c) t.x[size_t(3 * nc + c)] = -INFINITY;
    t.x[size_t(2 * nc)] = NAN;
  }
  return t;
}
