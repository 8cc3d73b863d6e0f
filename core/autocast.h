// Mixed precision the PyTorch way (torch.autocast on CPU, bfloat16).
//
//   loom::AutocastGuard autocast;      // this thread, until the guard goes
//   Tensor loss = model.forward(x);    // matmul, linear, attention: bfloat16 inputs
//   loss.backward();                   // their backward too
//
// While a guard lives, matmul, linear and attention round their inputs to
// bfloat16 and accumulate in float32; their outputs, everything else (norms,
// softmax statistics, losses, reductions) and all parameters, gradients and
// optimizer state stay float32. A product of two bfloat16 numbers is exact in
// float32, so "bfloat16 inputs, float32 accumulation" is a float32 product
// of the rounded inputs: on CPUs with bfloat16 dot products (AVX512-BF16,
// AMX) oneDNN runs it at twice the float32 rate; elsewhere loom rounds the
// inputs and runs the float32 kernels, the same numbers up to summation order.
// An op's backward runs in the precision its forward ran in. docs/training.md,
// "Mixed precision", says what runs in which precision and why.
#pragma once

#include <cstdint>
#include <string>

namespace loom {

// The precision a run computes in: Float32, or BFloat16 (autocast on).
// Spelled "fp32" / "bf16" on the command line and in checkpoints.
enum class Precision : uint8_t { Float32, BFloat16 };

// "fp32" or "float32", "bf16" or "bfloat16"; anything else throws
// loom::Error naming `option` (e.g. "loom train: --precision") and the value.
Precision parse_precision(const std::string& text, const std::string& option);
const char* precision_name(Precision p);  // "fp32" or "bf16"

class AutocastGuard {
 public:
  explicit AutocastGuard(bool enabled = true);
  explicit AutocastGuard(Precision p) : AutocastGuard(p == Precision::BFloat16) {}
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  bool previous_;
};

// Whether bfloat16 autocast is on for this thread.
bool autocast_enabled();

// Counts the times this thread left its outermost guard: bfloat16 copies of
// parameters cached inside one autocast region are stale after it.
uint64_t autocast_region();

// Whether this CPU (as oneDNN sees it, after ONEDNN_MAX_CPU_ISA) multiplies
// bfloat16 natively.
bool native_bf16();

class Tensor;

// For an op whose float32 output mostly feeds autocast products (layer_norm,
// rms_norm, gelu, relu): under autocast, on a CPU that multiplies bfloat16
// natively, a bfloat16 tensor of out's shape (out fresh and contiguous), made
// out's twin: the op writes it block by block while the block is in cache,
// and matmul and linear read it instead of converting out again (three
// times for q, k and v). The same bits as converting out: both round to
// nearest even. An in-place op on out drops the twin (check_inplace); a
// write through data_ptr does not. Undefined when autocast is off.
Tensor make_bf16_twin(const Tensor& out);
// t's twin as a bfloat16 tensor of t's shape and strides, or undefined.
Tensor bf16_twin_of(const Tensor& t);

}  // namespace loom
