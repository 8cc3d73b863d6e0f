// Training data: text as bytes, with a held-out split (train/data.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <loom/core/generator.h>
#include <loom/core/tensor.h>

namespace loom {

// Bytes of a text file, or of every regular text file directly in a folder
// (sorted by name; fortune's .dat index files and .u8 copies are skipped).
// The last `val_fraction` of the bytes is held out for evaluation.
struct TextCorpus {
  std::vector<uint8_t> train, val;
  std::vector<std::string> files;
};
TextCorpus load_text_corpus(const std::string& path, double val_fraction = 0.1);

// `batch` random windows of `length` bytes, as int64 token ids (batch, length).
// The draws come from gen, so (seed, offset) fixes the data position.
Tensor sample_windows(const std::vector<uint8_t>& data, int64_t batch, int64_t length, Generator& gen);

// The windows starting at 0, length, 2·length, ... (up to max_windows), for
// an evaluation that is the same every time.
Tensor contiguous_windows(const std::vector<uint8_t>& data, int64_t length, int64_t max_windows);

}  // namespace loom
