#include <loom/core/parallel.h>

#include <unistd.h>

#include <algorithm>
#include <cstdlib>

namespace loom {

// OpenMP runtimes read their wait policy once, when they are loaded, so the
// only way to change it for this process is to start it again with it set.
void openmp_wait_defaults(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") || std::getenv("GOMP_SPINCOUNT") || std::getenv("KMP_BLOCKTIME") ||
      std::getenv("LOOM_KEEP_OPENMP_WAIT"))
    return;
  setenv("OMP_WAIT_POLICY", "passive", 1);  // libgomp (g++, and oneDNN's) and LLVM's libomp (clang++)
  setenv("LOOM_KEEP_OPENMP_WAIT", "1", 1);   // once: the new process keeps what it got
  execv("/proc/self/exe", argv);             // returns only on failure: then run as we are
}

namespace {
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
}  // namespace

StepThreads::StepThreads(int max_threads) {
  for (int t = std::max(1, max_threads);; t /= 2) {
    candidates_.push_back(t);
    if (t == 1) break;
  }
}

int StepThreads::next() const { return candidates_[probe_ >= 0 ? size_t(probe_) : current_]; }

void StepThreads::record(double seconds) {
  constexpr size_t kRecent = 5;
  constexpr int64_t kAfterSwitch = 16, kLongest = 512;
  constexpr double kBetter = 0.85;  // a probe must be this much faster to switch
  if (probe_ >= 0) {
    // Three steps, judged by their median: the first step at a new count may
    // pay one-time costs, and beside a busy process one step may be lucky.
    probe_times_.push_back(seconds);
    if (probe_times_.size() < 3) return;
    if (median(probe_times_) < kBetter * median(recent_)) {
      current_ = size_t(probe_);
      recent_ = probe_times_;
      probe_every_ = kAfterSwitch;
      ++switches_;
    } else {
      probe_every_ = std::min(2 * probe_every_, kLongest);
    }
    probe_ = -1;
    probe_times_.clear();
    since_probe_ = 0;
    return;
  }
  recent_.push_back(seconds);
  if (recent_.size() > kRecent) recent_.erase(recent_.begin());
  if (candidates_.size() < 2 || ++since_probe_ < probe_every_ || recent_.size() < 3) return;
  // Down from the top, up from the bottom, alternating in between.
  const bool can_down = current_ + 1 < candidates_.size(), can_up = current_ > 0;
  const bool down = can_down && (probe_down_ || !can_up);
  probe_ = int(down ? current_ + 1 : current_ - 1);
  probe_down_ = !down;
}

}  // namespace loom
