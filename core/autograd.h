// Tape-based reverse-mode automatic differentiation.
//
// Every differentiable op, after computing its output, calls record() with
// its inputs and its backward rule. record() appends a Node to the tape: the
// node gets the next sequence number (its position on the tape), remembers
// where each input's gradient must go (an Edge), and keeps the backward rule,
// a closure holding whatever the op saved. The output tensor points at its
// node through grad_fn.
//
// loss.backward() plays the part of the tape that loss depends on in reverse
// order (highest sequence number first). Each node turns the gradient of its
// output into gradients of its inputs; those are summed per destination, so
// a tensor used twice gets the sum of both paths, and reduced to the input's
// shape, so broadcast inputs get gradients of their own shape. Leaves (tensors
// made by the user with requires_grad) accumulate into .grad().
//
// docs/autograd.md walks through an example.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <vector>

#include <loom/core/tensor.h>

namespace loom {

// Gradients of the inputs, in the order the inputs were given to record().
// An undefined Tensor means "zero" (nothing flows to that input).
using Grads = std::vector<Tensor>;
// grad_output -> gradients of the inputs.
using BackwardFn = std::function<Grads(const Tensor& grad_output)>;

// Where the gradient of one input goes: the node that produced it, or the
// leaf tensor that accumulates it; both empty when the input needs no grad.
struct Edge {
  std::shared_ptr<Node> node;
  std::shared_ptr<TensorImpl> leaf;
  Shape shape;  // the input's shape: gradients are summed down to it
  bool needs_grad() const { return node || leaf; }
};

struct Node {
  const char* name = "";     // the op, for error messages and printing
  uint64_t sequence_nr = 0;  // position on the tape
  std::vector<Edge> inputs;
  BackwardFn backward;       // released (empty) after a backward without retain_graph
  bool released = false;
};

// Grad mode: when off, ops record nothing (like torch.no_grad()).
bool is_grad_enabled();
void set_grad_enabled(bool enabled);

// RAII: no recording while it lives (torch::NoGradGuard).
class NoGradGuard {
 public:
  NoGradGuard() : previous_(is_grad_enabled()) { set_grad_enabled(false); }
  ~NoGradGuard() { set_grad_enabled(previous_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

// Called during backward() once for every leaf the backward reaches, as soon
// as that leaf's gradient is complete (no node still to run adds to it), with
// the leaf; the rest of the backward goes on after it returns. Data-parallel
// training (train/dist.h) starts reducing gradients here while the backward
// is still running. One hook per thread; an empty function removes it.
using GradReadyHook = std::function<void(const Tensor& leaf)>;
void set_grad_ready_hook(GradReadyHook hook);

// True when an op on these inputs must be recorded.
bool any_requires_grad(std::initializer_list<Tensor> inputs);
bool any_requires_grad(const std::vector<Tensor>& inputs);

// Records `output = op(inputs)` on the tape with its backward rule, if grad
// mode is on and some input requires grad; otherwise does nothing (and the
// closure, with anything it captured, is dropped at once).
// A rule that needs the op's output must capture output.detach(): a node
// holding its own output would keep itself alive forever.
void record(const char* name, std::initializer_list<Tensor> inputs, Tensor& output, BackwardFn backward);
// The same for ops with a variable number of inputs (cat, stack).
void record(const char* name, const std::vector<Tensor>& inputs, Tensor& output, BackwardFn backward);

// The engine behind Tensor::backward().
void run_backward(const Tensor& root, const Tensor& gradient, bool retain_graph);

// In-place writes are not recorded, so they are refused on tensors that
// require grad while grad mode is on (update parameters under NoGradGuard).
// Every in-place op calls it before writing; it also drops the storage's
// bfloat16 twin (core/autocast.h), which the write would leave stale.
void check_inplace(const char* op, const Tensor& t);

}  // namespace loom
