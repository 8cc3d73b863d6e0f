// POSIX calls rather than iostreams: they report errno, which is the reason a
// user needs ("No space left on device"), and write(2) puts the bytes in the
// file at once, where an ofstream keeps them in its buffer.
#include <loom/core/io.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <loom/core/error.h>

namespace loom {

namespace {

std::string reason(int err) { return std::strerror(err); }

// LOOM_TEST_DISK_BYTES: the bytes the writers may still write (-1: no limit).
std::atomic<int64_t>& disk_bytes_left() {
  static std::atomic<int64_t> left{[] {
    const char* env = std::getenv("LOOM_TEST_DISK_BYTES");
    return env ? int64_t(std::strtoll(env, nullptr, 10)) : int64_t(-1);
  }()};
  return left;
}

// Writes all n bytes; false with errno set when the disk (or the test's
// budget) is full or another error happens.
bool write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    size_t chunk = n;
    std::atomic<int64_t>& left = disk_bytes_left();
    if (left.load() >= 0) {
      chunk = size_t(std::min<int64_t>(int64_t(n), left.load()));
      if (chunk == 0) {
        errno = ENOSPC;
        return false;
      }
    }
    const ssize_t w = ::write(fd, p, chunk);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (left.load() >= 0) left -= w;
    p += w, n -= size_t(w);
  }
  return true;
}

}  // namespace

std::string read_file(const std::string& path, const std::string& who) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer (regular files ignore it).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) fail(who, ": cannot open '", path, "': ", reason(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail(who, ": cannot read '", path, "': ", reason(err));
  }
  if (!S_ISREG(st.st_mode)) {  // a directory reads as an error, a FIFO or /dev/zero might never end
    ::close(fd);
    fail(who, ": '", path, "' is ", S_ISDIR(st.st_mode) ? "a directory" : "not a regular file",
         ", not a file loom can read");
  }
  std::string bytes(size_t(st.st_size), '\0');
  size_t got = 0;
  while (true) {
    if (got == bytes.size()) bytes.resize(bytes.size() + 4096);  // the file grew while we read it
    const ssize_t r = ::read(fd, bytes.data() + got, bytes.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      const int err = errno;
      ::close(fd);
      fail(who, ": reading '", path, "' failed: ", reason(err));
    }
    if (r == 0) break;
    got += size_t(r);
  }
  ::close(fd);
  bytes.resize(got);
  return bytes;
}

AtomicFile::AtomicFile(std::string path, std::string who)
    : path_(std::move(path)), tmp_(path_ + ".tmp"), who_(std::move(who)) {
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd_ < 0) loom::fail(who_, ": cannot open '", tmp_, "' for writing: ", reason(errno));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

void AtomicFile::fail(const std::string& what) {
  const int err = errno;
  ::close(fd_);
  fd_ = -1;
  ::unlink(tmp_.c_str());
  loom::fail(who_, ": ", what, ": ", reason(err));
}

void AtomicFile::write(const void* data, size_t n) {
  LOOM_CHECK(fd_ >= 0, who_, ": '", tmp_, "' is already closed");
  if (!write_all(fd_, static_cast<const char*>(data), n)) fail("writing '" + tmp_ + "' failed");
}

void AtomicFile::commit() {
  LOOM_CHECK(fd_ >= 0, who_, ": '", tmp_, "' is already closed");
  // fsync first: a rename that reaches the disk before the data would leave
  // an empty file under the old name after a power cut.
  if (::fsync(fd_) != 0) fail("writing '" + tmp_ + "' failed");
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp_.c_str());
    loom::fail(who_, ": writing '", tmp_, "' failed: ", reason(err));
  }
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp_.c_str());
    loom::fail(who_, ": cannot rename '", tmp_, "' to '", path_, "': ", reason(err));
  }
}

void write_file_atomic(const std::string& path, const std::string& bytes, const std::string& who) {
  AtomicFile f(path, who);
  f.write(bytes);
  f.commit();
}

AppendFile::AppendFile(std::string path, std::string who) : path_(std::move(path)), who_(std::move(who)) {
  fd_ = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
  if (fd_ < 0) fail(who_, ": cannot open '", path_, "' for writing: ", reason(errno));
}

AppendFile::~AppendFile() {
  if (fd_ >= 0) ::close(fd_);
}

void AppendFile::append(const std::string& s) {
  struct stat st;
  if (::fstat(fd_, &st) != 0) fail(who_, ": cannot read the size of '", path_, "': ", reason(errno));
  if (!write_all(fd_, s.data(), s.size())) {
    const int err = errno;
    // Cut off the partial line; if even that fails, the write error is still the one to report.
    if (::ftruncate(fd_, st.st_size) != 0) errno = err;
    fail(who_, ": writing '", path_, "' failed: ", reason(err));
  }
}

}  // namespace loom
