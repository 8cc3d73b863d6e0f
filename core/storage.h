// Storage: one 64-byte aligned block of memory, shared by a tensor and all
// of its views (through std::shared_ptr). Aligned so SIMD kernels can use
// aligned loads on contiguous tensors and rows never straddle cache lines.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

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

  // A bfloat16 copy of this float32 block, element for element, written by
  // the op that wrote the block (core/autocast.h, make_bf16_twin); dropped
  // by every in-place op on it.
  const std::shared_ptr<Storage>& bf16_twin() const { return bf16_twin_; }
  void set_bf16_twin(std::shared_ptr<Storage> twin) { bf16_twin_ = std::move(twin); }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  size_t capacity_ = 0;  // the block's real size (a reused block may be larger)
  std::shared_ptr<Storage> bf16_twin_;
};

// Blocks of 64 KiB and up are kept when freed and handed to the next
// allocation of about the same size, as PyTorch's caching allocators do:
// memory fresh from the OS page-faults on first write, which for a large
// tensor costs more than the op that fills it. (glibc maps blocks from
// 128 KiB up afresh and unmaps them when freed: with a 1 MiB threshold a
// bfloat16 char-LM step, full of 512 KiB bfloat16 copies, took ~740 page
// faults and ran ~3 % slower.) At most 2 GiB is kept.
size_t cached_bytes();
// Returns every kept block to the system (like torch.cuda.empty_cache()).
void empty_cache();

// Bytes held by live tensors now, and the most held since the last reset
// (torch.cuda.memory_allocated / max_memory_allocated / reset_peak_memory_stats).
int64_t memory_allocated();
int64_t max_memory_allocated();
void reset_peak_memory_stats();

// A cap on memory_allocated(): an allocation that would go above it throws
// loom::Error instead of running the machine out of memory (0, the
// default: no cap). The fuzz targets (tests/fuzz/) run under one, so a
// config declaring a huge model fails fast.
void set_memory_limit(int64_t bytes);

}  // namespace loom
