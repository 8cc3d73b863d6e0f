// A seedable random number generator that gives the same numbers on every
// machine and every thread count.
//
// It is counter based (Philox4x32-10, the generator PyTorch uses on GPUs):
// the k-th block of four 32-bit numbers is a pure function of (seed, k).
// A Generator is just (seed, offset); drawing n numbers uses blocks
// offset .. offset + ceil(n/4) and advances offset. Because any block can be
// computed on its own, a parallel kernel can fill its slice of a tensor
// without touching the others and still produce the same numbers.
#pragma once

#include <array>
#include <cstdint>

namespace loom {

// One Philox4x32-10 block: 4 counter words and 2 key words in, 4 words out.
std::array<uint32_t, 4> philox4x32_10(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key);

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : seed_(seed) {}

  void manual_seed(uint64_t seed) { seed_ = seed; offset_ = 0; }
  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }      // next unused block
  void set_offset(uint64_t offset) { offset_ = offset; }

  // Reserves `blocks` blocks and returns the first one's index.
  uint64_t advance(uint64_t blocks) { uint64_t first = offset_; offset_ += blocks; return first; }

  // The four 32-bit numbers of block `counter` for this seed:
  // Philox with counter (counter, 0) and key = seed.
  std::array<uint32_t, 4> block(uint64_t counter) const {
    return philox4x32_10({uint32_t(counter), uint32_t(counter >> 32), 0, 0}, {uint32_t(seed_), uint32_t(seed_ >> 32)});
  }

 private:
  uint64_t seed_ = 0;
  uint64_t offset_ = 0;
};

// The generator used when none is passed (like torch's default generator).
Generator& default_generator();
// Seeds the default generator (torch::manual_seed).
void manual_seed(uint64_t seed);

// Uniform float in [0, 1) from 24 random bits (exactly representable).
inline float uniform_from_bits(uint32_t bits) { return float(bits >> 8) * (1.0f / 16777216.0f); }

}  // namespace loom
