// safetensors files, the format of the PyTorch ecosystem's checkpoints
// (core/safetensors.cpp): an 8-byte little-endian header length, a JSON
// header {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
// "__metadata__": {..}}, then the raw little-endian data.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include <loom/core/tensor.h>

namespace loom {

using NamedTensorList = std::vector<std::pair<std::string, Tensor>>;

// Writes the tensors (float32 "F32", int64 "I64", bool "BOOL", bfloat16
// "BF16") in the given order, atomically: a temporary file, then a rename.
void save_safetensors(const std::string& path, const NamedTensorList& tensors,
                      const std::map<std::string, std::string>& metadata = {});

struct SafetensorsFile {
  NamedTensorList tensors;  // in file order
  std::map<std::string, std::string> metadata;
};

// Reads a whole file. A truncated, corrupt or inconsistent file throws
// loom::Error naming the path and what is wrong; it never reads out of
// bounds. F16 and F64 tensors are converted to float32.
SafetensorsFile load_safetensors(const std::string& path);
// The same from a file's bytes already in memory; `path` names them in errors.
SafetensorsFile parse_safetensors(const std::string& bytes, const std::string& path);

}  // namespace loom
