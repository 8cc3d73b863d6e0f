// The test runner: doctest's main, with two things around it.
//  - The run happens in a scratch directory of its own, removed at the end,
//    so test processes that run at once (ctest -j, the matrix below) never
//    share a file.
//  - When ctest asks for an instruction set (LOOM_SIMD, tests/CMakeLists.txt)
//    that this CPU lacks, the run is reported as skipped (exit code 77),
//    not as passed.
//  - A run that was given a test-case filter (ctest runs one case per
//    process) but ran no case fails: a name that the filter cannot match
//    (ctest splits names at ';') would otherwise pass without running.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

#include <omp.h>
#include <oneapi/dnnl/dnnl.h>

#include <loom/ops/kernels/kernels.h>

namespace {
int cases_run = 0;

// Counts the test cases that start (a doctest listener: it reports nothing).
struct CaseCounter : doctest::IReporter {
  explicit CaseCounter(const doctest::ContextOptions&) {}
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats&) override {}
  void test_case_start(const doctest::TestCaseData&) override { ++cases_run; }
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats&) override {}
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};
REGISTER_LISTENER("case-counter", 1, CaseCounter);
}  // namespace

int main(int argc, char** argv) {
  bool listing = false;  // doctest_discover_tests lists the cases; print nothing else then
  for (int i = 1; i < argc; ++i)
    for (const char* flag : {"list-", "-ltc", "-lts", "-lr", "-h", "-?", "-v", "--help", "--version"})
      listing = listing || (flag[0] == 'l' ? std::strstr(argv[i], flag) != nullptr : std::strcmp(argv[i], flag) == 0);
  if (const char* isa = std::getenv("LOOM_SIMD"); isa && !listing) {
    const auto isas = loom::kernels::available_isas();
    if (std::find(isas.begin(), isas.end(), isa) == isas.end()) {
      std::printf("skipped: LOOM_SIMD=%s, but this CPU's best instruction set is %s\n", isa, isas.front().c_str());
      return 77;
    }
  }
  if (!listing)
    std::printf("loom tests: kernels %s, oneDNN ISA 0x%x, %d OpenMP threads\n", loom::kernels::table().name,
                unsigned(dnnl_get_effective_cpu_isa()), omp_get_max_threads());

  namespace fs = std::filesystem;
  std::string dir = (fs::temp_directory_path() / "loom-tests-XXXXXX").string();
  if (!mkdtemp(dir.data()) || chdir(dir.c_str()) != 0) {
    std::perror("loom tests: cannot make a scratch directory");
    return 1;
  }
  bool filtered = false;
  for (int i = 1; i < argc; ++i)
    filtered = filtered || std::strncmp(argv[i], "-tc=", 4) == 0 || std::strncmp(argv[i], "--test-case=", 12) == 0;
  doctest::Context context(argc, argv);
  int rc = context.run();
  if (filtered && cases_run == 0 && !listing && !context.shouldExit()) {
    std::printf("error: the test-case filter matched no test case\n");
    rc = 1;
  }
  std::error_code ignored;
  fs::current_path(fs::temp_directory_path(), ignored);
  fs::remove_all(dir, ignored);
  return rc;
}
