// PNG output, so loom can draw its own pictures (attention patterns in the
// docs, loss curves in training) without Python. core/png.cpp.
#pragma once

#include <string>

#include <loom/core/tensor.h>

namespace loom {

// Writes a float32 image with values in [0, 1] (clamped; NaN is black) as
// an 8-bit PNG: (H, W) grey or (H, W, 3) RGB. Throws loom::Error naming the
// path when the file cannot be written.
void write_png(const std::string& path, const Tensor& image);

// Maps a (H, W) float tensor to (H, W, 3) RGB colours on a dark-blue ->
// teal -> yellow ramp (like matplotlib's viridis), lo -> first colour, hi ->
// last. Masked-out cells are usually drawn by passing -inf: they come out
// black.
Tensor colormap(const Tensor& values, double lo, double hi);

}  // namespace loom
