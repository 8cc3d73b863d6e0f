// NumPy's .npy files (core/npy.cpp), the format `loom forward` reads and
// writes so any implementation can be checked against loom.
#pragma once

#include <string>

#include <loom/core/tensor.h>

namespace loom {

// Reads a C-ordered little-endian array: float32 and float64 (-> float32),
// int64 and int32 (-> int64), bool. Anything else, or a truncated or
// malformed file, throws loom::Error naming the path.
Tensor read_npy(const std::string& path);

// Writes float32, int64 or bool as format version 1.0.
void write_npy(const std::string& path, const Tensor& t);

}  // namespace loom
