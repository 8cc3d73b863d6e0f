// Shared by the libFuzzer targets: the readers take a path, so each input is
// written to a scratch file first (the same code path as a real file).
// Every target accepts a loom::Error as a correct answer; anything else that
// escapes (a std exception, a crash, a sanitizer report, a hang, running out
// of memory) is a bug that libFuzzer reports with the input that caused it.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <loom/core/storage.h>

namespace loom_fuzz {

// One scratch file per process (libFuzzer's -jobs run several).
inline const std::string& write_input(const uint8_t* data, size_t size, const char* extension) {
  static const std::string path = [&] {
    const char* dir = std::getenv("TMPDIR");
    return std::string(dir ? dir : "/tmp") + "/loom-fuzz-" + std::to_string(getpid()) + extension;
  }();
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || std::fwrite(data, 1, size, f) != size || std::fclose(f) != 0) std::abort();
  return path;
}

// A file can declare a model or tensor far larger than the machine: the
// readers must refuse it with an error, not allocate it. The limit makes a
// size that got past them fail fast (as a loom::Error) instead of as an OOM.
inline void limit_memory() { loom::set_memory_limit(int64_t(256) << 20); }

}  // namespace loom_fuzz
