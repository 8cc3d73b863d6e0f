#include <loom/core/storage.h>

#include <sys/mman.h>
#include <sys/sysinfo.h>

#include <atomic>
#include <cstdlib>
#include <iterator>
#include <map>
#include <mutex>
#include <new>

#include <loom/core/error.h>

namespace loom {

namespace {

constexpr size_t kCacheMinBlock = size_t(64) << 10;
constexpr size_t kCacheLimit = size_t(2) << 30;

// Freed large blocks by capacity.
struct BlockCache {
  std::mutex mutex;
  std::multimap<size_t, void*> blocks;
  size_t bytes = 0;
};
BlockCache& block_cache() {
  static BlockCache* cache = new BlockCache;  // never destroyed: storages may outlive static destruction
  return *cache;
}

// A cached block of at least `size` bytes and at most 1.5x that, or null:
// the smallest such, and of those the one freed last, the likeliest to be
// still in cache (a bf16 char-LM step ran ~5 % faster than with the one
// freed first).
void* take_cached(size_t size, size_t& capacity) {
  BlockCache& c = block_cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  auto it = c.blocks.lower_bound(size);
  if (it == c.blocks.end() || it->first > size + size / 2) return nullptr;
  it = std::prev(c.blocks.upper_bound(it->first));  // equal keys stay in insertion order
  void* p = it->second;
  capacity = it->first;
  c.bytes -= it->first;
  c.blocks.erase(it);
  return p;
}

// Keeps the block for reuse; false when the cache is full.
bool give_back(void* p, size_t capacity) {
  BlockCache& c = block_cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  if (c.bytes + capacity > kCacheLimit) return false;
  c.blocks.emplace(capacity, p);
  c.bytes += capacity;
  return true;
}

std::atomic<int64_t> live_bytes{0}, peak_bytes{0}, limit_bytes{0};

// Total RAM plus swap.
size_t machine_bytes() {
  static const size_t bytes = [] {
    struct sysinfo info;
    if (sysinfo(&info) != 0) return SIZE_MAX;
    return size_t(info.totalram + info.totalswap) * info.mem_unit;
  }();
  return bytes;
}

void count_allocation(int64_t bytes) {
  int64_t now = live_bytes += bytes;
  int64_t peak = peak_bytes.load();
  while (now > peak && !peak_bytes.compare_exchange_weak(peak, now)) {
  }
}

}  // namespace

int64_t memory_allocated() { return live_bytes.load(); }
int64_t max_memory_allocated() { return peak_bytes.load(); }
void reset_peak_memory_stats() { peak_bytes.store(live_bytes.load()); }
void set_memory_limit(int64_t bytes) { limit_bytes.store(bytes); }

namespace {
constexpr size_t kHugePage = size_t(2) << 20, kHugeMinBlock = size_t(4) << 20;

void* allocate(size_t align, size_t bytes) {
  void* p = std::aligned_alloc(align, bytes);
#ifdef MADV_HUGEPAGE
  if (p && align == kHugePage) madvise(p, bytes, MADV_HUGEPAGE);  // a hint: refused or not, p works
#endif
  return p;
}
}  // namespace

Storage::Storage(size_t nbytes) : nbytes_(nbytes) {
  const int64_t limit = limit_bytes.load();
  // More than the machine's RAM and swap can never succeed: refused before
  // asking malloc (which may say yes and leave the OOM killer to answer).
  LOOM_CHECK(nbytes <= machine_bytes(), "out of memory: a tensor of ", nbytes,
             " bytes is more than this machine's memory (", machine_bytes(), " bytes of RAM and swap)");
  LOOM_CHECK(limit <= 0 || live_bytes.load() + int64_t(nbytes) <= limit, "out of memory: a tensor of ", nbytes,
             " bytes would exceed the memory limit of ", limit, " bytes (", live_bytes.load(), " in use)");
  // aligned_alloc wants a size that is a multiple of the alignment; never 0.
  size_t rounded = (nbytes + kAlignment - 1) / kAlignment * kAlignment;
  if (rounded == 0) rounded = kAlignment;
  capacity_ = rounded;
  // Large blocks in 2 MiB pages where the kernel offers them (transparent
  // huge pages, "madvise" or "always"): a kernel reading a tile's rows a
  // row-length apart touches a page per row, and with 4 KiB pages each is a
  // TLB miss (a costly page walk, more so in a VM). At seq 1024 an
  // attention bias [h, i, j] cost the forward ~6 ms over none in 4 KiB
  // pages, ~1 ms in 2 MiB ones.
  const bool huge = rounded >= kHugeMinBlock;
  if (huge) rounded = capacity_ = (rounded + kHugePage - 1) / kHugePage * kHugePage;
  const size_t align = huge ? kHugePage : kAlignment;
  if (rounded >= kCacheMinBlock) data_ = take_cached(rounded, capacity_);
  if (!data_) data_ = allocate(align, rounded);
  if (!data_) {  // the cached blocks may be what is missing
    empty_cache();
    data_ = allocate(align, rounded);
  }
  LOOM_CHECK(data_ != nullptr, "out of memory: cannot allocate a tensor of ", nbytes, " bytes (",
             double(nbytes) / 1e9, " GB)");
  count_allocation(int64_t(nbytes_));
}

Storage::~Storage() {
  live_bytes -= int64_t(nbytes_);
  if (capacity_ >= kCacheMinBlock && give_back(data_, capacity_)) return;
  std::free(data_);
}

size_t cached_bytes() {
  BlockCache& c = block_cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return c.bytes;
}

void empty_cache() {
  BlockCache& c = block_cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  for (auto& [size, p] : c.blocks) std::free(p);
  c.blocks.clear();
  c.bytes = 0;
}

}  // namespace loom
