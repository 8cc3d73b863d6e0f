// loom-bench's small harness: timing, results, suites.
//
// A suite is a function that measures cases and hands each result to a
// Reporter, which prints one JSON line per result (or a table at the end):
//   {"suite": "ops", "case": "add_16M", "metric": "bandwidth", "value": 21.3, "unit": "GB/s",
//    "baseline": "copy", "baseline_value": 24.1, "ratio": 0.88}
// ratio > 1 means loom did better than the baseline.
#pragma once

#include <algorithm>
#include <chrono>
#include <functional>
#include <string>
#include <vector>

namespace loom::bench {

struct Result {
  std::string suite, name, metric, unit, baseline;
  double value = 0, baseline_value = 0;
  bool higher_is_better = true;  // throughput; false for times
  bool has_baseline() const { return baseline_value != 0; }
  double ratio() const { return higher_is_better ? value / baseline_value : baseline_value / value; }
};

class Reporter {
 public:
  Reporter(std::string suite, std::string filter, bool table, int repeat)
      : suite_(std::move(suite)), filter_(std::move(filter)), table_(table), repeat_(repeat) {}
  // Whether a case of this name is to run (--filter).
  bool wants(const std::string& name) const { return filter_.empty() || name.find(filter_) != std::string::npos; }
  int repeat() const { return repeat_; }
  void add(Result r);
  void finish();  // prints the table, with --table

 private:
  std::string suite_, filter_;
  bool table_;
  int repeat_;
  std::vector<Result> results_;
};

// Median wall time of f() in milliseconds over `repeat` runs, after one warm-up run.
inline double time_ms(const std::function<void()>& f, int repeat) {
  f();
  std::vector<double> ms;
  for (int i = 0; i < repeat; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

struct Suite {
  const char* name;
  const char* description;
  void (*run)(Reporter&);
};

// The suites (one file each).
void ops_suite(Reporter& r);
void attention_suite(Reporter& r);
void train_suite(Reporter& r);

}  // namespace loom::bench
