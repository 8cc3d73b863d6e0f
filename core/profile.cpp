#include <loom/core/profile.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>

namespace loom::profile {

namespace {
using Clock = std::chrono::steady_clock;
std::atomic<bool> on{false};
std::mutex mutex;
std::map<std::string, Entry> table;  // by op name
thread_local Clock::time_point last = Clock::now();

Entry& entry(const char* op) {
  Entry& e = table[op];
  if (e.op.empty()) e.op = op;
  return e;
}
}  // namespace

void enable(bool enable_it) {
  on = enable_it;
  mark();
}
bool enabled() { return on.load(std::memory_order_relaxed); }
void mark() { last = Clock::now(); }

void reset() {
  std::lock_guard<std::mutex> lock(mutex);
  table.clear();
}

std::vector<Entry> entries() {
  std::lock_guard<std::mutex> lock(mutex);
  std::vector<Entry> out;
  for (const auto& [name, e] : table) out.push_back(e);
  std::sort(out.begin(), out.end(), [](const Entry& a, const Entry& b) {
    return a.forward_seconds + a.backward_seconds > b.forward_seconds + b.backward_seconds;
  });
  return out;
}

void charge_forward(const char* op, double bytes) {
  const Clock::time_point now = Clock::now();
  const double seconds = std::chrono::duration<double>(now - last).count();
  last = now;
  std::lock_guard<std::mutex> lock(mutex);
  Entry& e = entry(op);
  e.forward_seconds += seconds;
  e.forward_bytes += bytes;
  ++e.forward_calls;
}

void charge_backward(const char* op, double seconds, double bytes) {
  std::lock_guard<std::mutex> lock(mutex);
  Entry& e = entry(op);
  e.backward_seconds += seconds;
  e.backward_bytes += bytes;
  ++e.backward_calls;
}

}  // namespace loom::profile
