// Where the time of a training step goes, op by op (loom-bench train,
// docs/performance.md), in the spirit of torch.profiler but far smaller.
//
// While profiling is on:
//  - every op recorded in grad mode (every op of a training forward) is
//    charged the wall time since the previous such op, or since mark(), on
//    its thread: its own work plus any unrecorded glue just before it;
//  - the autograd engine charges each node's backward rule to the op's name.
// Off (the default) it costs one branch per op.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace loom::profile {

struct Entry {
  std::string op;
  double forward_seconds = 0, backward_seconds = 0;
  int64_t forward_calls = 0, backward_calls = 0;
  // The least memory traffic: every input and output (forward), every
  // incoming and outgoing gradient (backward) read or written once.
  double forward_bytes = 0, backward_bytes = 0;
};

void enable(bool on);
bool enabled();
// Forward timing on this thread restarts now (call it where a forward begins).
void mark();
void reset();
// Every op charged so far, the most expensive first.
std::vector<Entry> entries();

// Called by autograd (core/autograd.cpp).
void charge_forward(const char* op, double bytes);
void charge_backward(const char* op, double seconds, double bytes);

}  // namespace loom::profile
