// loom-bench: loom-bench --list | loom-bench SUITE [--table] [--filter SUBSTR] [--repeat N]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <omp.h>

#include <loom/core/parallel.h>

#include "bench.h"

namespace loom::bench {

void Reporter::add(Result r) {
  r.suite = suite_;
  if (!table_) {
    char ratio[32] = "null";
    if (r.has_baseline()) std::snprintf(ratio, sizeof ratio, "%.3f", r.ratio());
    std::printf(
        "{\"suite\": \"%s\", \"case\": \"%s\", \"metric\": \"%s\", \"value\": %.4g, \"unit\": \"%s\", "
        "\"baseline\": \"%s\", \"baseline_value\": %.4g, \"ratio\": %s}\n",
        r.suite.c_str(), r.name.c_str(), r.metric.c_str(), r.value, r.unit.c_str(), r.baseline.c_str(),
        r.baseline_value, ratio);
    std::fflush(stdout);
  } else {
    std::fprintf(stderr, "  %s %s...\n", r.name.c_str(), r.metric.c_str());  // progress while the table waits
  }
  results_.push_back(std::move(r));
}

void Reporter::finish() {
  if (!table_) return;
  std::printf("%-28s %-22s %12s %-7s %-20s %12s %7s\n", "case", "metric", "value", "unit", "baseline", "baseline",
              "ratio");
  for (const Result& r : results_) {
    if (r.has_baseline())
      std::printf("%-28s %-22s %12.4g %-7s %-20s %12.4g %7.3f\n", r.name.c_str(), r.metric.c_str(), r.value,
                  r.unit.c_str(), r.baseline.c_str(), r.baseline_value, r.ratio());
    else
      std::printf("%-28s %-22s %12.4g %-7s %-20s %12s %7s\n", r.name.c_str(), r.metric.c_str(), r.value,
                  r.unit.c_str(), "-", "-", "-");
  }
}

}  // namespace loom::bench

int main(int argc, char** argv) {
  // Measure with what the loom CLI runs with (core/parallel.h): `loom train`
  // keeps spinning OpenMP waits and picks its thread count by timing steps
  // (the train suite's charlm_adaptive/charlm_busy cases); the other commands
  // wait passively. OMP_WAIT_POLICY set by hand is kept either way.
  if (!(argc > 1 && std::string(argv[1]) == "train")) loom::openmp_wait_defaults(argv);
  using namespace loom::bench;
  const Suite suites[] = {
      {"ops", "elementwise, reductions, matmul, linear, softmax, layer_norm, cross_entropy", ops_suite},
      {"attention", "fused attention against the naive one: time, GFLOP/s, peak memory, seq 256..4096", attention_suite},
      {"train", "a training step of three decoders, 1 and 2 threads: tokens/s, % of FMA peak, phases, op kinds",
       train_suite},
  };
  std::string suite, filter;
  bool table = false;
  int repeat = 5;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--list") {
      for (const Suite& s : suites) std::printf("%-10s %s\n", s.name, s.description);
      return 0;
    } else if (a == "--table") {
      table = true;
    } else if (a == "--filter" && i + 1 < argc) {
      filter = argv[++i];
    } else if (a == "--repeat" && i + 1 < argc) {
      repeat = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--help" || a == "-h") {
      std::printf("usage: loom-bench --list | loom-bench SUITE [--table] [--filter SUBSTR] [--repeat N]\n");
      return 0;
    } else if (!a.empty() && a[0] != '-' && suite.empty()) {
      suite = a;
    } else {
      std::fprintf(stderr, "loom-bench: unknown argument '%s' (try --help)\n", a.c_str());
      return 2;
    }
  }
  for (const Suite& s : suites) {
    if (suite != s.name) continue;
    Reporter r(s.name, filter, table, repeat);
    s.run(r);
    r.finish();
    return 0;
  }
  std::fprintf(stderr, "loom-bench: %s (loom-bench --list names the suites)\n",
               suite.empty() ? "no suite given" : ("unknown suite '" + suite + "'").c_str());
  return 2;
}
