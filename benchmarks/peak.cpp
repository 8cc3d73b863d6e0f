// The machine's fp32 FMA peak, measured: the ceiling "% of peak" in the
// train suite is quoted against. Each thread runs 16 independent chains of
// vector FMAs (enough to hide the FMA latency on two FMA ports), at the
// vector width of the instruction set oneDNN uses on this CPU.
#include <immintrin.h>

#include <time.h>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include <omp.h>
#include <oneapi/dnnl/dnnl.h>

#include "bench.h"

namespace loom::bench {

namespace {

constexpr int kChains = 16;

// Each returns the floating-point operations it did (2 per lane per FMA).
__attribute__((target("avx512f"))) double fma_avx512(int64_t iters) {
  __m512 acc[kChains];
  for (int j = 0; j < kChains; ++j) acc[j] = _mm512_set1_ps(float(j));
  const __m512 m = _mm512_set1_ps(0.999999f), a = _mm512_set1_ps(1e-6f);
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < kChains; ++j) acc[j] = _mm512_fmadd_ps(acc[j], m, a);
  __m512 s = acc[0];
  for (int j = 1; j < kChains; ++j) s = _mm512_add_ps(s, acc[j]);
  volatile float sink = _mm512_reduce_add_ps(s);
  (void)sink;
  return double(iters) * kChains * 16 * 2;
}

__attribute__((target("avx2,fma"))) double fma_avx2(int64_t iters) {
  __m256 acc[kChains];
  for (int j = 0; j < kChains; ++j) acc[j] = _mm256_set1_ps(float(j));
  const __m256 m = _mm256_set1_ps(0.999999f), a = _mm256_set1_ps(1e-6f);
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < kChains; ++j) acc[j] = _mm256_fmadd_ps(acc[j], m, a);
  __m256 s = acc[0];
  for (int j = 1; j < kChains; ++j) s = _mm256_add_ps(s, acc[j]);
  alignas(32) float out[8];
  _mm256_store_ps(out, s);
  volatile float sink = out[0];
  (void)sink;
  return double(iters) * kChains * 8 * 2;
}

// SSE2 has no FMA: a multiply and an add per lane.
double mul_add_sse2(int64_t iters) {
  __m128 acc[kChains];
  for (int j = 0; j < kChains; ++j) acc[j] = _mm_set1_ps(float(j));
  const __m128 m = _mm_set1_ps(0.999999f), a = _mm_set1_ps(1e-6f);
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < kChains; ++j) acc[j] = _mm_add_ps(_mm_mul_ps(acc[j], m), a);
  alignas(16) float out[4];
  __m128 s = acc[0];
  for (int j = 1; j < kChains; ++j) s = _mm_add_ps(s, acc[j]);
  _mm_store_ps(out, s);
  volatile float sink = out[0];
  (void)sink;
  return double(iters) * kChains * 4 * 2;
}

}  // namespace

std::string peak_isa() {
  const unsigned isa = unsigned(dnnl_get_effective_cpu_isa());
  if ((isa & unsigned(dnnl_cpu_isa_avx512_core)) == unsigned(dnnl_cpu_isa_avx512_core)) return "avx512";
  if ((isa & unsigned(dnnl_cpu_isa_avx2)) == unsigned(dnnl_cpu_isa_avx2)) return "avx2";
  return "sse2";
}

double peak_gflops(int threads) {
  const std::string isa = peak_isa();
  auto run = [&](int64_t iters) {
    return isa == "avx512" ? fma_avx512(iters) : isa == "avx2" ? fma_avx2(iters) : mul_add_sse2(iters);
  };
  // Each thread's rate per second of its own CPU time, summed: the cores'
  // peak even when the machine (or, in a VM, the host) takes a core away for
  // part of the probe, which wall time would count against the cores (a
  // 2-thread probe once came out at one core's peak).
  auto cpu_seconds = [] {
    timespec t{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
  };
  double best = 0;
  for (int round = 0; round < 3; ++round) {
    double rate = 0;
#pragma omp parallel num_threads(threads) reduction(+ : rate)
    {
      const double t0 = cpu_seconds();
      const double flops = run(20'000'000);
      rate += flops / (cpu_seconds() - t0) / 1e9;
    }
    best = std::max(best, rate);
  }
  return best;
}

// Copy bandwidth (bytes read + written per second, GB/s) with `threads`
// threads, each copying its share of 64 MiB: the roofline of memory-bound ops.
double copy_gbps(int threads) {
  const size_t n = size_t(64) << 20;
  std::vector<char> src(n, 1), dst(n, 0);
  double best = 0;
  for (int round = 0; round < 5; ++round) {
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads)
    {
      const size_t t = size_t(omp_get_thread_num()), nt = size_t(omp_get_num_threads());
      const size_t begin = n * t / nt, end = n * (t + 1) / nt;
      std::memcpy(dst.data() + begin, src.data() + begin, end - begin);
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 2.0 * double(n) / s / 1e9);
  }
  return best;
}

}  // namespace loom::bench
