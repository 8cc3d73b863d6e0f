#include <loom/core/parallel.h>

#include <unistd.h>

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

}  // namespace loom
