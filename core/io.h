// Whole-file reads and crash-safe writes (core/io.cpp). Every failure
// throws loom::Error naming the caller, the file and the reason (errno's
// text), e.g.
//   save_safetensors: writing 'runs/x/checkpoint.safetensors.tmp' failed: No space left on device
//
// For tests, the environment variable LOOM_TEST_DISK_BYTES=N makes the
// writers below behave as if the disk had only N bytes free: once N bytes
// have been written in the process, write(2) fails with ENOSPC.
#pragma once

#include <cstddef>
#include <string>

namespace loom {

// The bytes of a regular file. A missing file, a directory or anything that
// is not a regular file (a FIFO, /dev/zero) is an error, not a hang.
std::string read_file(const std::string& path, const std::string& who);

// A file written in full or not at all: the bytes go to path + ".tmp",
// which commit() flushes to the disk (fsync) and renames over path. Until
// then the previous file at path is untouched; a failure, or destruction
// without commit(), removes the .tmp.
class AtomicFile {
 public:
  AtomicFile(std::string path, std::string who);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  void write(const void* data, size_t n);
  void write(const std::string& s) { write(s.data(), s.size()); }
  void commit();

 private:
  [[noreturn]] void fail(const std::string& what);
  std::string path_, tmp_, who_;
  int fd_ = -1;
};

// AtomicFile in one call.
void write_file_atomic(const std::string& path, const std::string& bytes, const std::string& who);

// A log that grows by whole lines (metrics.jsonl). Each append is in the
// file when it returns (one write(2), no user-space buffer), so a kill -9
// loses nothing already logged; a failed append is cut off again, so the
// file never ends in half a line.
class AppendFile {
 public:
  AppendFile(std::string path, std::string who);
  ~AppendFile();
  AppendFile(const AppendFile&) = delete;
  AppendFile& operator=(const AppendFile&) = delete;
  void append(const std::string& s);

 private:
  std::string path_, who_;
  int fd_ = -1;
};

}  // namespace loom
