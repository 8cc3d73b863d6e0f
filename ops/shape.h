// Shape ops with gradients (ops/shape.cpp). Views (reshape, permute, slice,
// ...) are Tensor methods, in core/tensor.h and ops/view.cpp.
#pragma once

#include <vector>

#include <loom/core/tensor.h>

namespace loom {

// Joins tensors along an existing dim (cat) or a new one (stack).
Tensor cat(const std::vector<Tensor>& tensors, int64_t dim = 0);
Tensor stack(const std::vector<Tensor>& tensors, int64_t dim = 0);
// Views of consecutive pieces: of split_size each (the last may be
// smaller), of the given sizes, or `chunks` nearly equal pieces.
std::vector<Tensor> split(const Tensor& t, int64_t split_size, int64_t dim = 0);
std::vector<Tensor> split(const Tensor& t, const std::vector<int64_t>& sizes, int64_t dim = 0);
std::vector<Tensor> chunk(const Tensor& t, int64_t chunks, int64_t dim = 0);
// torch.nn.functional.pad, constant mode: pads = (left, right) for the last
// dim, then (top, bottom) for the one before, ...; negative pads crop.
Tensor pad(const Tensor& t, const std::vector<int64_t>& pads, double value = 0.0);
// out[..., i, ...] = input[..., index[..., i, ...], ...] along dim (torch.gather).
Tensor gather(const Tensor& input, int64_t dim, const Tensor& index);
// The slices of input along dim listed by the 1-D int64 index.
Tensor index_select(const Tensor& input, int64_t dim, const Tensor& index);
// torch.Tensor.repeat: tiles the tensor repeats[d] times along each dim.
Tensor repeat(const Tensor& t, const std::vector<int64_t>& repeats);
// The upper / lower triangle of the last two dims (others zeroed or false);
// diagonal > 0 moves the boundary up-right. Any dtype: used to build masks.
Tensor triu(const Tensor& t, int64_t diagonal = 0);
Tensor tril(const Tensor& t, int64_t diagonal = 0);

}  // namespace loom
