// Storage: one 64-byte aligned block of memory, shared by a tensor and all
// of its views (through std::shared_ptr). Aligned so SIMD kernels can use
// aligned loads on contiguous tensors and rows never straddle cache lines.
#pragma once

#include <cstddef>
#include <cstdint>

namespace loom {

inline constexpr size_t kAlignment = 64;

class Storage {
 public:
  explicit Storage(size_t nbytes);  // uninitialised memory
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
};

}  // namespace loom
