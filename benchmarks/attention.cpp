// The `attention` suite: the fused op against the naive materialised one
// (tests/attention_reference.h) at b = 1, h = 8, d = 64, sequence 256 to 4096,
// four variants: plain, key-padding mask, (h, i, j) bias, selective (causal).
//   fwd_ms, fwdbwd_ms          time, against the naive op
//   fwd_gflops                 4·b·h·i·j·d / forward time (the two products)
//   fwdbwd_gflops              the seven products of forward + backward (forward 2, backward 5
//                              with the recompute of the weights), 14·b·h·i·j·d (half of the
//                              j for causal), per second; against the FMA peak measured in the
//                              same run (benchmarks/peak.cpp): ratio = fraction of peak
//   fwd_peak_extra_bytes       peak tensor memory during the forward above
//                              what existed before, against the naive op
// seqN_{plain,causal}_bf16: the fused op under bfloat16 autocast against the
// same op in float32, timed in alternation (fwd_ms, fwdbwd_ms). With bfloat16
// tiles only on CPUs with AVX512-BF16 (loom-bench says whether); elsewhere
// both run the float32 op and the ratio is 1.
#include <cstdio>
#include <string>

#include <omp.h>

#include <loom/loom.h>
#include <loom/ops/kernels/kernels.h>

#include "../tests/attention_reference.h"
#include "bench.h"

namespace loom::bench {

double peak_gflops(int threads);
std::string peak_isa();

namespace {

struct Variant {
  const char* name;
  bool mask, bias, selective;
};

// Peak extra tensor bytes while f runs.
int64_t peak_extra(const std::function<void()>& f) {
  const int64_t before = memory_allocated();
  reset_peak_memory_stats();
  f();
  return max_memory_allocated() - before;
}

}  // namespace

void attention_suite(Reporter& rep) {
  manual_seed(0);
  const int64_t B = 1, H = 8, D = 64;
  double peak = 0;  // probed on first use, at the thread count in use
  for (int64_t n : {256, 512, 1024, 2048, 4096}) {
    for (const Variant& var : {Variant{"plain", false, false, false}, Variant{"mask", true, false, false},
                               Variant{"bias", false, true, false}, Variant{"selective", false, false, true}}) {
      const std::string name = "seq" + std::to_string(n) + "_" + var.name;
      if (!rep.wants(name)) continue;
      Tensor q = randn({B, H, n, D}).requires_grad_(), k = randn({B, H, n, D}).requires_grad_(),
             v = randn({B, H, n, D}).requires_grad_();
      AttentionOptions o;
      if (var.mask) o.key_padding_mask = lt(arange(n), scalar_tensor(double(n - n / 8), kInt64)).view({1, n});
      if (var.bias) o.bias = (randn({H, n, n}) * 0.1f).requires_grad_();
      o.causal = o.selective = var.selective;
      const int repeat = n >= 2048 ? 2 : rep.repeat();
      const Tensor dout = randn({B, H, n, D});
      auto fused_fwd = [&] { NoGradGuard g; attention(q, k, v, o); };
      auto naive_fwd = [&] { NoGradGuard g; reference::naive_attention(q, k, v, o); };
      // Each step starts with no gradients, as after a training loop's zero_grad() (set to none):
      // the first gradient is taken, not added to an old one.
      auto no_grads = [&] {
        for (const Tensor& t : {q, k, v, o.bias})
          if (t.defined()) t.mutable_grad() = Tensor();
      };
      auto fused_fwdbwd = [&] { no_grads(), attention(q, k, v, o).backward(dout); };
      auto naive_fwdbwd = [&] { no_grads(), reference::naive_attention(q, k, v, o).backward(dout); };
      const double fwd = time_ms(fused_fwd, repeat), naive_f = time_ms(naive_fwd, repeat);
      rep.add({"", name, "fwd_ms", "ms", "naive", fwd, naive_f, false});
      rep.add({"", name, "fwd_gflops", "GFLOP/s", "naive", 4.0 * B * H * n * n * D / (fwd * 1e6),
               4.0 * B * H * n * n * D / (naive_f * 1e6), true});
      rep.add({"", name, "fwd_peak_extra_bytes", "bytes", "naive", double(peak_extra(fused_fwd)),
               double(peak_extra(naive_fwd)), false});
      const double both = time_ms(fused_fwdbwd, repeat);
      const double naive_both = n >= 4096 ? time_ms(naive_fwdbwd, 1) : time_ms(naive_fwdbwd, repeat);
      rep.add({"", name, "fwdbwd_ms", "ms", "naive", both, naive_both, false});
      if (peak == 0) peak = peak_gflops(omp_get_max_threads());
      const double keys = o.causal ? (double(n) + 1) / 2 : double(n);  // keys a query sees, on average
      rep.add({"", name, "fwdbwd_gflops", "GFLOP/s", "fma_peak_" + peak_isa(), 14.0 * B * H * n * keys * D / (both * 1e6),
               peak, true});
    }
  }
  bool said = false;
  for (int64_t n : {256, 1024, 2048})
    for (const bool causal : {false, true}) {
      const std::string name = "seq" + std::to_string(n) + (causal ? "_causal" : "_plain") + "_bf16";
      if (!rep.wants(name)) continue;
      if (!said)
        std::fprintf(stderr, "attention bf16 cases: bfloat16 tiles %s\n",
                     kernels::table().gemm_bf16 ? "yes (AVX512-BF16, vdpbf16ps)" : "no: the float32 op runs (ratio 1)");
      said = true;
      Tensor q = randn({B, H, n, D}).requires_grad_(), k = randn({B, H, n, D}).requires_grad_(),
             v = randn({B, H, n, D}).requires_grad_();
      const Tensor dout = randn({B, H, n, D});
      AttentionOptions o;
      o.causal = causal;
      const int repeat = n >= 2048 ? 2 : rep.repeat();
      auto fwd = [&](bool bf16) {
        return [&, bf16] {
          NoGradGuard g;
          AutocastGuard autocast(bf16);
          attention(q, k, v, o);
        };
      };
      auto fwdbwd = [&](bool bf16) {
        return [&, bf16] {
          Tensor out;
          {
            AutocastGuard autocast(bf16);
            out = attention(q, k, v, o);
          }
          out.backward(dout);
        };
      };
      double f32 = 1e300, f16 = 1e300, b32 = 1e300, b16 = 1e300;
      for (int round = 0; round < 2; ++round) {  // alternated: a busy moment hits both
        f32 = std::min(f32, time_ms(fwd(false), repeat)), f16 = std::min(f16, time_ms(fwd(true), repeat));
        b32 = std::min(b32, time_ms(fwdbwd(false), repeat)), b16 = std::min(b16, time_ms(fwdbwd(true), repeat));
      }
      rep.add({"", name, "fwd_ms", "ms", "fp32", f16, f32, false});
      rep.add({"", name, "fwdbwd_ms", "ms", "fp32", b16, b32, false});
    }
}

}  // namespace loom::bench
