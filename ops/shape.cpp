// Shape ops, forward and backward side by side.
//
//   cat           out = [a; b; ...] along dim     d(each) = its slice of g
//   stack         cat of unsqueezed inputs        (composed)
//   split, chunk  views (narrow)                  (views are differentiable)
//   pad           out = value around t            dt = g's inner region (0 where cropped)
//   gather        out_p = in[index_p along dim]   din = g scattered and added at index
//   index_select  out = in[index] along dim       din = g rows added at index (index_add)
//   repeat        expand + reshape                (composed: expand's backward sums)
//   triu / tril   where(mask, t, 0)               (composed)
//
// Index ops check every index (an out-of-range one throws, never reads out
// of bounds) and scatter their gradients in a fixed order.
#include <loom/core/autograd.h>
#include <loom/core/parallel.h>
#include <loom/ops/ops.h>
#include <loom/ops/shape.h>

namespace loom {

Tensor cat(const std::vector<Tensor>& tensors, int64_t dim) {
  LOOM_CHECK(!tensors.empty(), "cat: expected a non-empty list of tensors");
  for (const Tensor& t : tensors) LOOM_CHECK(t.defined(), "cat: tensor is undefined");
  const Tensor& first = tensors[0];
  LOOM_CHECK(first.dim() > 0, "cat: zero-dimensional tensors cannot be concatenated");
  const int64_t d = wrap_dim("cat", dim, first.dim());
  Shape shape = first.sizes();
  shape[size_t(d)] = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    LOOM_CHECK(t.dtype() == first.dtype(), "cat: expected all tensors to have dtype ", dtype_name(first.dtype()),
               ", but tensor ", i, " has ", dtype_name(t.dtype()));
    Shape a = t.sizes(), b = first.sizes();
    LOOM_CHECK(t.dim() == first.dim(), "cat: tensor ", i, " has shape ", a, ", tensor 0 has shape ", b,
               " (different number of dims)");
    a[size_t(d)] = b[size_t(d)] = 0;
    LOOM_CHECK(a == b, "cat: sizes must match except in dimension ", d, ": tensor 0 has shape ", first.sizes(),
               ", tensor ", i, " has shape ", t.sizes());
    shape[size_t(d)] += t.size(d);
  }
  Tensor out = empty(shape, first.dtype());
  std::vector<int64_t> offsets;
  {
    NoGradGuard no_grad;
    int64_t offset = 0;
    for (const Tensor& t : tensors) {
      offsets.push_back(offset);
      out.narrow(d, offset, t.size(d)).copy_(t);
      offset += t.size(d);
    }
  }
  std::vector<int64_t> lengths;
  for (const Tensor& t : tensors) lengths.push_back(t.size(d));
  record("cat", tensors, out, [d, offsets, lengths](const Tensor& g) {
    Grads grads;
    for (size_t i = 0; i < lengths.size(); ++i) grads.push_back(g.narrow(d, offsets[i], lengths[i]));
    return grads;
  });
  return out;
}

Tensor stack(const std::vector<Tensor>& tensors, int64_t dim) {
  LOOM_CHECK(!tensors.empty(), "stack: expected a non-empty list of tensors");
  const int64_t d = wrap_dim("stack", dim, tensors[0].dim() + 1);
  for (size_t i = 1; i < tensors.size(); ++i)
    LOOM_CHECK(tensors[i].sizes() == tensors[0].sizes(), "stack: expects each tensor to be equal size, but got ",
               tensors[0].sizes(), " at entry 0 and ", tensors[i].sizes(), " at entry ", i);
  std::vector<Tensor> parts;
  for (const Tensor& t : tensors) parts.push_back(t.unsqueeze(d));
  return cat(parts, d);
}

std::vector<Tensor> split(const Tensor& t, const std::vector<int64_t>& sizes, int64_t dim) {
  const int64_t d = wrap_dim("split", dim, t.dim());
  int64_t total = 0;
  for (int64_t s : sizes) {
    LOOM_CHECK(s >= 0, "split: sizes must be non-negative, got ", Shape(sizes));
    total += s;
  }
  LOOM_CHECK(total == t.size(d), "split: sizes ", Shape(sizes), " must sum to the size of dimension ", d, " (",
             t.size(d), ", shape ", t.sizes(), ")");
  std::vector<Tensor> out;
  int64_t offset = 0;
  for (int64_t s : sizes) {
    out.push_back(t.narrow(d, offset, s));
    offset += s;
  }
  return out;
}

std::vector<Tensor> split(const Tensor& t, int64_t split_size, int64_t dim) {
  const int64_t d = wrap_dim("split", dim, t.dim());
  LOOM_CHECK(split_size > 0 || (split_size == 0 && t.size(d) == 0), "split: split_size must be positive, got ",
             split_size);
  std::vector<int64_t> sizes;
  for (int64_t left = t.size(d); left > 0; left -= split_size) sizes.push_back(std::min(split_size, left));
  if (sizes.empty()) sizes.push_back(0);
  return split(t, sizes, d);
}

std::vector<Tensor> chunk(const Tensor& t, int64_t chunks, int64_t dim) {
  LOOM_CHECK(chunks > 0, "chunk: chunks must be positive, got ", chunks);
  const int64_t d = wrap_dim("chunk", dim, t.dim());
  const int64_t n = t.size(d);
  return split(t, std::max<int64_t>((n + chunks - 1) / chunks, n == 0 ? 0 : 1), d);
}

Tensor pad(const Tensor& t, const std::vector<int64_t>& pads, double value) {
  LOOM_CHECK(t.defined(), "pad: tensor is undefined");
  LOOM_CHECK(pads.size() % 2 == 0 && int64_t(pads.size()) <= 2 * t.dim(), "pad: pads ", Shape(pads),
             " must come in (left, right) pairs, at most one pair per dimension of shape ", t.sizes());
  Shape shape = t.sizes();
  // For each padded dim: where the kept input lies in the input and in the output.
  struct Range { int64_t dim, in_start, out_start, len; };
  std::vector<Range> ranges;
  for (size_t p = 0; p < pads.size() / 2; ++p) {
    const int64_t d = t.dim() - 1 - int64_t(p), left = pads[2 * p], right = pads[2 * p + 1];
    const int64_t n = shape[size_t(d)], out_n = n + left + right;
    LOOM_CHECK(out_n >= 0, "pad: padding ", left, ", ", right, " of dimension ", d, " (size ", n,
               ") gives a negative size");
    const int64_t in_start = std::max<int64_t>(0, -left), in_end = n - std::max<int64_t>(0, -right);
    ranges.push_back({d, in_start, std::max<int64_t>(0, left), std::max<int64_t>(0, in_end - in_start)});
    shape[size_t(d)] = out_n;
  }
  auto inner = [ranges](const Tensor& x, bool output_side) {  // by value: the backward keeps it
    Tensor v = x;
    for (const Range& r : ranges) v = v.narrow(r.dim, output_side ? r.out_start : r.in_start, r.len);
    return v;
  };
  Tensor out = full(shape, value, t.dtype());
  {
    NoGradGuard no_grad;
    inner(out, true).copy_(inner(t, false));
  }
  Shape in_shape = t.sizes();
  record("pad", {t}, out, [in_shape, inner](const Tensor& g) {
    Tensor dt = zeros(in_shape);
    inner(dt, false).copy_(inner(g, true));
    return Grads{dt};
  });
  return out;
}

namespace {
void check_index(const char* op, const Tensor& index) {
  LOOM_CHECK(index.defined(), op, ": index is undefined");
  LOOM_CHECK(index.dtype() == kInt64, op, ": index must be int64, got ", dtype_name(index.dtype()));
}

// For every element p of `index` (row-major): the storage offset in a tensor
// with shape `shape`/`strides` of the element index[p] along dim d and p's
// own position along the other dims. Checks every index.
std::vector<int64_t> gather_offsets(const char* op, const Tensor& index, int64_t d, const Shape& shape,
                                    const Shape& strides, int64_t base) {
  Tensor idx = index.contiguous();
  const int64_t* ip = idx.data_ptr<int64_t>();
  std::vector<int64_t> offsets(size_t(idx.numel()));
  Shape pos(index.sizes().size(), 0);
  for (int64_t p = 0; p < idx.numel(); ++p) {
    const int64_t i = ip[p];
    LOOM_CHECK(i >= -shape[size_t(d)] && i < shape[size_t(d)], op, ": index ", i, " is out of bounds for dimension ",
               d, " with size ", shape[size_t(d)]);
    int64_t off = base;
    for (size_t k = 0; k < pos.size(); ++k)
      off += (int64_t(k) == d ? (i < 0 ? i + shape[k] : i) : pos[k]) * strides[k];
    offsets[size_t(p)] = off;
    for (int64_t k = int64_t(pos.size()) - 1; k >= 0; --k) {
      if (++pos[size_t(k)] < index.sizes()[size_t(k)]) break;
      pos[size_t(k)] = 0;
    }
  }
  return offsets;
}
}  // namespace

Tensor gather(const Tensor& input, int64_t dim, const Tensor& index) {
  LOOM_CHECK(input.defined(), "gather: input is undefined");
  check_index("gather", index);
  LOOM_CHECK(input.dtype() == kFloat32 || input.dtype() == kInt64, "gather: not implemented for dtype ",
             dtype_name(input.dtype()));
  const int64_t d = wrap_dim("gather", dim, input.dim());
  LOOM_CHECK(index.dim() == input.dim(), "gather: index of shape ", index.sizes(), " must have as many dims as input ",
             input.sizes());
  for (int64_t k = 0; k < input.dim(); ++k)
    LOOM_CHECK(k == d || index.size(k) <= input.size(k), "gather: index of shape ", index.sizes(),
               " is larger than input ", input.sizes(), " at dimension ", k);
  std::vector<int64_t> offsets =
      gather_offsets("gather", index, d, input.sizes(), input.strides(), input.storage_offset());
  Tensor out = empty(index.sizes(), input.dtype());
  visit_dtype(input.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* src = static_cast<const T*>(input.impl()->storage->data());
    T* dst = static_cast<T*>(out.raw_data());
    parallel_for(int64_t(offsets.size()), 1, [&](int64_t a, int64_t b) {
      for (int64_t p = a; p < b; ++p) dst[p] = src[offsets[size_t(p)]];
    });
  });
  Shape in_shape = input.sizes();
  record("gather", {input}, out, [in_shape, d, index](const Tensor& g) {
    Tensor din = zeros(in_shape);
    std::vector<int64_t> off = gather_offsets("gather", index, d, in_shape, contiguous_strides(in_shape), 0);
    Tensor gc = g.contiguous();
    const float* gp = gc.data_ptr<float>();
    float* dp = din.data_ptr<float>();
    for (size_t p = 0; p < off.size(); ++p) dp[off[p]] += gp[p];  // in order: deterministic
    return Grads{din};
  });
  return out;
}

Tensor index_select(const Tensor& input, int64_t dim, const Tensor& index) {
  LOOM_CHECK(input.defined(), "index_select: input is undefined");
  check_index("index_select", index);
  LOOM_CHECK(index.dim() <= 1, "index_select: index must be 1-D, got shape ", index.sizes());
  const int64_t d = wrap_dim("index_select", dim, input.dim());
  const int64_t n = input.dim() == 0 ? 1 : input.size(d);
  std::vector<int64_t> idx = index.to_vector<int64_t>();
  for (int64_t& i : idx) {
    LOOM_CHECK(i >= -n && i < n, "index_select: index ", i, " is out of bounds for dimension ", d, " with size ", n);
    if (i < 0) i += n;
  }
  Shape shape = input.sizes();
  if (!shape.empty()) shape[size_t(d)] = int64_t(idx.size());
  Tensor out = empty(shape, input.dtype());
  {
    NoGradGuard no_grad;
    for (size_t k = 0; k < idx.size(); ++k) out.select(d, int64_t(k)).copy_(input.select(d, idx[k]));
  }
  Shape in_shape = input.sizes();
  record("index_select", {input}, out, [in_shape, d, idx](const Tensor& g) {
    Tensor din = zeros(in_shape);
    for (size_t k = 0; k < idx.size(); ++k) din.select(d, idx[k]).add_(g.select(d, int64_t(k)));  // index_add
    return Grads{din};
  });
  return out;
}

Tensor repeat(const Tensor& t, const std::vector<int64_t>& repeats) {
  LOOM_CHECK(t.defined(), "repeat: tensor is undefined");
  LOOM_CHECK(int64_t(repeats.size()) >= t.dim(), "repeat: number of repeats ", Shape(repeats),
             " can not be smaller than the number of dimensions of the tensor ", t.sizes());
  for (int64_t r : repeats) LOOM_CHECK(r >= 0, "repeat: repeats must be non-negative, got ", Shape(repeats));
  // [s0, s1] with repeats [r0, r1] -> view [1, s0, 1, s1] -> expand [r0, s0, r1, s1] -> reshape [r0 s0, r1 s1].
  Shape padded(repeats.size() - size_t(t.dim()), 1);
  padded.insert(padded.end(), t.sizes().begin(), t.sizes().end());
  Shape split_shape, expanded, result;
  for (size_t k = 0; k < repeats.size(); ++k) {
    split_shape.insert(split_shape.end(), {1, padded[k]});
    expanded.insert(expanded.end(), {repeats[k], padded[k]});
    result.push_back(repeats[k] * padded[k]);
  }
  return t.reshape(split_shape).expand(expanded).reshape(result);
}

namespace {
Tensor triangle(const char* op, const Tensor& t, int64_t diagonal, bool upper) {
  LOOM_CHECK(t.defined(), op, ": tensor is undefined");
  LOOM_CHECK(t.dim() >= 2, op, ": input tensor must have at least 2 dimensions, got shape ", t.sizes());
  const int64_t rows = t.size(-2), cols = t.size(-1);
  Tensor col = arange(cols).reshape({1, cols}), row = arange(rows).reshape({rows, 1});
  Tensor offset = sub(col, row);  // j - i
  Tensor keep = upper ? ge(offset, scalar_tensor(double(diagonal), kInt64)) : le(offset, scalar_tensor(double(diagonal), kInt64));
  if (t.dtype() == kBool) return logical_and(t, keep);
  return where(keep, t, scalar_tensor(0, t.dtype()));
}
}  // namespace

Tensor triu(const Tensor& t, int64_t diagonal) { return triangle("triu", t, diagonal, true); }
Tensor tril(const Tensor& t, int64_t diagonal) { return triangle("tril", t, diagonal, false); }

}  // namespace loom
