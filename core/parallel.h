// parallel_for: the one way loom splits work across threads (OpenMP).
//
// Work is split only when it is large enough to pay for waking the threads,
// so small tensors never run slower than on one thread. Chunks are
// contiguous ranges of items; an item's result must not depend on which
// chunk it lands in, which keeps results identical for any thread count.
// (Reductions over many items therefore sum fixed-size blocks, never
// per-thread partials; see ops/reduce.cpp.)
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include <omp.h>

namespace loom {

// Roughly how many elementary operations one thread must get before a
// parallel region pays off (a fork/join costs a few microseconds).
inline constexpr int64_t kParallelGrain = 1 << 15;

// Calls f(begin, end) on chunks of [0, n). `work_per_item` is the rough
// number of elementary operations per item (1 for an elementwise op, the row
// length for a row-wise op).
template <typename F>
void parallel_for(int64_t n, int64_t work_per_item, F&& f) {
  if (n <= 0) return;
  const int64_t work = n * std::max<int64_t>(work_per_item, 1);
  const int64_t want = std::min<int64_t>(n, work / kParallelGrain);
  const int threads = int(std::min<int64_t>(omp_get_max_threads(), want));
  if (threads <= 1 || omp_in_parallel()) {
    f(int64_t(0), n);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t chunk = (n + nt - 1) / nt;
    const int64_t begin = t * chunk, end = std::min(n, begin + chunk);
    if (begin < end) f(begin, end);
  }
}

// How idle OpenMP threads wait. By default they spin for a long while
// (libgomp: ~300 000 rounds), using their core's full fair share: when another
// process holds one of the cores, the thread that shares it with that process
// is the last to reach every fork/join, and all the others wait up to a
// scheduler timeslice for it each time (the char-LM step ran 18x slower).
// Passive threads sleep at once and are woken promptly (the scheduler favours
// sleepers). Measured with `loom-bench train --filter charlm` (docs/performance.md).
//
// Call first thing in main(argv): if neither OMP_WAIT_POLICY nor
// GOMP_SPINCOUNT nor KMP_BLOCKTIME is set, re-executes the program with
// OMP_WAIT_POLICY=passive (runtimes read it once, when loaded);
// LOOM_KEEP_OPENMP_WAIT=1 skips this. The loom CLI, loom-bench and the
// examples do (except `loom train` without OMP_NUM_THREADS, and loom-bench's
// train suite: they keep spinning and use StepThreads below); a program
// linking loom may do the same or set it itself.
void openmp_wait_defaults(char** argv);

// StepThreads: the thread count for a step run many times over (a training
// step), chosen by timing it. Passive waits cost every fork/join a wake-up
// (the char-LM step at 2 threads ran 20 % slower with them on an idle
// machine); spinning waits collapse when another process holds a core. With
// spinning waits and this, an idle machine keeps all its threads, and a busy
// one drops to the count that runs fastest: now and then (after 4 steps,
// then 8, 16, ... up to 512 while nothing changes; 16 after a switch) three
// steps run at the next count down (or up), and the count switches when
// their median beats the median of the last 5 steps by 15 %. Candidates:
// max, max/2, ..., 1.
//
//   StepThreads threads(omp_get_max_threads());
//   for (...) { omp_set_num_threads(threads.next()); <step>; threads.record(seconds); }
//
// The choice depends on timing, so a run that adapts is reproducible only
// as far as its thread counts were the same; loom train adapts only when
// OMP_NUM_THREADS is not set.
class StepThreads {
 public:
  explicit StepThreads(int max_threads);
  int next() const;              // threads for the coming step
  void record(double seconds);   // the time of the step just run at next()
  int current() const { return candidates_[current_]; }  // the count steps run at between probes
  int64_t switches() const { return switches_; }

 private:
  std::vector<int> candidates_;  // max_threads, halving down to 1
  size_t current_ = 0;
  std::vector<double> recent_;  // last step times at current()
  int64_t since_probe_ = 0, probe_every_ = 4, switches_ = 0;
  int probe_ = -1;                    // candidate index being probed, or -1
  std::vector<double> probe_times_;
  bool probe_down_ = true;
};

}  // namespace loom
