// Shape ops and embedding against explicit index loops; gradients; errors.
#include "helpers.h"

using namespace loom;

namespace {
using Inputs = std::vector<Tensor>;
Tensor rg(Shape s, uint64_t seed) {
  Generator g(seed);
  return randn(s, g).requires_grad_();
}
}  // namespace

TEST_CASE("cat and stack") {
  Tensor a = arange(0, 6, kFloat32).reshape({2, 3}), b = arange(6, 9, kFloat32).reshape({1, 3});
  CHECK(cat({a, b}).to_vector<float>() == std::vector<float>{0, 1, 2, 3, 4, 5, 6, 7, 8});
  Tensor c = arange(0, 4, kFloat32).reshape({2, 2});
  CHECK(cat({a, c}, 1).to_vector<float>() == std::vector<float>{0, 1, 2, 0, 1, 3, 4, 5, 2, 3});
  CHECK(cat({a.t(), a.t()}, -1).sizes() == Shape{3, 4});  // non-contiguous inputs
  CHECK(cat({a, zeros({0, 3})}).sizes() == Shape{2, 3});
  Tensor s = stack({a, a * 2.0f}, 1);
  CHECK(s.sizes() == Shape{2, 2, 3});
  CHECK(s[1][1][2].item<float>() == 10.0f);
  CHECK(stack({tensor({1.0f}), tensor({2.0f})}).sizes() == Shape{2, 1});
  CHECK(cat({arange(2), arange(3)}).to_vector<int64_t>() == std::vector<int64_t>{0, 1, 0, 1, 2});
  CHECK_GRADCHECK([](const Inputs& x) { return cat({x[0], x[1], x[0]}, 1); }, {rg({2, 3}, 1), rg({2, 1}, 2)});
  CHECK_GRADCHECK([](const Inputs& x) { return stack({x[0], x[1]}, -1); }, {rg({2, 3}, 3), rg({2, 3}, 4)});
}

TEST_CASE("split and chunk are views that tile the tensor") {
  Tensor a = arange(0, 7, kFloat32);
  auto parts = split(a, 3);
  REQUIRE(parts.size() == 3);
  CHECK(parts[2].to_vector<float>() == std::vector<float>{6});
  CHECK(parts[1].is_same_storage(a));
  auto sized = split(a, std::vector<int64_t>{2, 5});
  CHECK(sized[1].to_vector<float>() == std::vector<float>{2, 3, 4, 5, 6});
  auto chunks = chunk(arange(0, 12, kFloat32).reshape({3, 4}), 3, 1);
  REQUIRE(chunks.size() == 2);  // ceil(4 / 3) = 2 columns each, as PyTorch
  CHECK(chunks[1].sizes() == Shape{3, 2});
  CHECK_GRADCHECK([](const Inputs& x) { return split(x[0], 2, 1)[1] * 3.0f; }, {rg({2, 5}, 5)});
}

TEST_CASE("pad: constant padding, last dim first, negative pads crop") {
  Tensor a = arange(1, 5, kFloat32).reshape({2, 2});
  Tensor p = pad(a, {1, 0, 0, 1}, -1.0);  // left 1 on the last dim, bottom 1 on the first
  CHECK(p.sizes() == Shape{3, 3});
  CHECK(p.to_vector<float>() == std::vector<float>{-1, 1, 2, -1, 3, 4, -1, -1, -1});
  Tensor crop = pad(arange(0, 5, kFloat32), {-1, -2});
  CHECK(crop.to_vector<float>() == std::vector<float>{1, 2});
  CHECK_GRADCHECK([](const Inputs& x) { return pad(x[0], {2, -1, 1, 1}); }, {rg({2, 4}, 6)});
}

TEST_CASE("gather and index_select against index loops") {
  Generator g(7);
  Tensor x = randn({3, 5}, g);
  Tensor idx = tensor(std::vector<int64_t>{4, 0, 1, 1, 2, 3}).reshape({3, 2});
  Tensor out = gather(x, 1, idx);
  auto xv = x.to_vector<float>();
  std::vector<float> expected = {xv[4], xv[0], xv[5 + 1], xv[5 + 1], xv[10 + 2], xv[10 + 3]};
  CHECK(out.to_vector<float>() == expected);
  Tensor idx0 = tensor(std::vector<int64_t>{2, 0}).reshape({1, 2});
  CHECK(gather(x, 0, idx0).to_vector<float>() == std::vector<float>{xv[10], xv[1]});
  CHECK(gather(x.t(), 0, idx0).to_vector<float>() == std::vector<float>{xv[2], xv[5]});  // x.t()[2][0], x.t()[0][1]
  Tensor sel = index_select(x, 0, tensor(std::vector<int64_t>{2, 2, 0}));
  CHECK(sel.sizes() == Shape{3, 5});
  CHECK(sel[1].to_vector<float>() == x[2].to_vector<float>());
  CHECK(index_select(x, 1, tensor(std::vector<int64_t>{-1})).to_vector<float>() == std::vector<float>{xv[4], xv[9], xv[14]});
  // Repeated indices accumulate their gradients.
  CHECK_GRADCHECK([&](const Inputs& in) { return gather(in[0], 1, idx); }, {rg({3, 5}, 8)});
  CHECK_GRADCHECK([](const Inputs& in) { return index_select(in[0], 1, tensor(std::vector<int64_t>{1, 1, 3})); },
                  {rg({2, 4}, 9)});
}

TEST_CASE("repeat tiles like torch.Tensor.repeat") {
  Tensor a = tensor({1.0f, 2.0f});
  CHECK(repeat(a, {2, 2}).to_vector<float>() == std::vector<float>{1, 2, 1, 2, 1, 2, 1, 2});
  CHECK(repeat(a, {2, 2}).sizes() == Shape{2, 4});
  CHECK(repeat(arange(0, 4, kFloat32).reshape({2, 2}), {1, 2}).to_vector<float>() ==
        std::vector<float>{0, 1, 0, 1, 2, 3, 2, 3});
  CHECK_GRADCHECK([](const Inputs& x) { return repeat(x[0], {3, 1, 2}); }, {rg({2, 3}, 10)});
}

TEST_CASE("triu and tril, on floats and bool masks") {
  Tensor a = arange(1, 10, kFloat32).reshape({3, 3});
  CHECK(triu(a).to_vector<float>() == std::vector<float>{1, 2, 3, 0, 5, 6, 0, 0, 9});
  CHECK(tril(a, -1).to_vector<float>() == std::vector<float>{0, 0, 0, 4, 0, 0, 7, 8, 0});
  CHECK(triu(a, 1).to_vector<float>() == std::vector<float>{0, 2, 3, 0, 0, 6, 0, 0, 0});
  // A causal mask (True = attend) for 2 queries aligned to the end of 4 keys.
  Tensor causal = tril(ones({2, 4}, kBool), 2);
  CHECK(causal.to_vector<bool>() == std::vector<bool>{true, true, true, false, true, true, true, true});
  CHECK(tril(ones({2, 3, 3})).sum().item<float>() == 12.0f);  // batched
  CHECK_GRADCHECK([](const Inputs& x) { return triu(x[0]); }, {rg({3, 4}, 11)});
}

TEST_CASE("embedding picks rows and scatter-adds gradients, skipping padding_idx") {
  Tensor w = arange(0, 12, kFloat32).reshape({4, 3}).requires_grad_();
  Tensor ids = tensor(std::vector<int64_t>{3, 0, 3, 1}).reshape({2, 2});
  Tensor out = embedding(ids, w, 1);
  CHECK(out.sizes() == Shape{2, 2, 3});
  CHECK(out[0][0].to_vector<float>() == std::vector<float>{9, 10, 11});
  CHECK(out[1][1].to_vector<float>() == std::vector<float>{3, 4, 5});
  (out * 2.0f).sum().backward();
  // Row 3 twice, row 0 once, row 1 is padding (no gradient), row 2 unused.
  CHECK(w.grad().to_vector<float>() == std::vector<float>{2, 2, 2, 0, 0, 0, 0, 0, 0, 4, 4, 4});
  CHECK_GRADCHECK([&](const Inputs& x) { return embedding(ids, x[0]); }, {rg({4, 3}, 12)});
}

TEST_CASE("one_hot") {
  Tensor ids = tensor(std::vector<int64_t>{0, 2, 1});
  CHECK(one_hot(ids).sizes() == Shape{3, 3});
  CHECK(one_hot(ids, 4).to_vector<int64_t>() == std::vector<int64_t>{1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0});
  CHECK(one_hot(ids).dtype() == kInt64);
}

TEST_CASE("shape and index errors name the op and the values") {
  CHECK_THROWS_WITH_AS(cat({ones({2, 3}), ones({2, 4})}),
                       "cat: sizes must match except in dimension 0: tensor 0 has shape [2, 3], tensor 1 has shape [2, 4]",
                       Error);
  CHECK_THROWS_WITH_AS(cat({ones({2}), arange(2)}), "cat: expected all tensors to have dtype float32, but tensor 1 has int64",
                       Error);
  CHECK_THROWS_WITH_AS(stack({ones({2}), ones({3})}), doctest::Contains("stack: expects each tensor to be equal size"), Error);
  CHECK_THROWS_WITH_AS(split(ones({5}), std::vector<int64_t>{2, 2}), doctest::Contains("must sum to the size of dimension 0"),
                       Error);
  CHECK_THROWS_WITH_AS(gather(ones({2, 3}), 1, tensor(std::vector<int64_t>{0, 3}).reshape({1, 2})),
                       "gather: index 3 is out of bounds for dimension 1 with size 3", Error);
  CHECK_THROWS_WITH_AS(gather(ones({2, 3}), 1, ones({1, 2})), "gather: index must be int64, got float32", Error);
  CHECK_THROWS_WITH_AS(index_select(ones({2, 3}), 0, tensor(std::vector<int64_t>{2})),
                       "index_select: index 2 is out of bounds for dimension 0 with size 2", Error);
  CHECK_THROWS_WITH_AS(embedding(tensor(std::vector<int64_t>{0, 5}), ones({4, 2})),
                       "embedding: id 5 at flat position 1 is out of range for 4 embeddings", Error);
  CHECK_THROWS_WITH_AS(one_hot(tensor(std::vector<int64_t>{-1})), doctest::Contains("one_hot: id -1"), Error);
  CHECK_THROWS_WITH_AS(pad(ones({2}), {1}), doctest::Contains("must come in (left, right) pairs"), Error);
  CHECK_THROWS_WITH_AS(triu(ones({3})), "triu: input tensor must have at least 2 dimensions, got shape [3]", Error);
  CHECK_THROWS_WITH_AS(repeat(ones({2, 2}), {2}), doctest::Contains("repeat: number of repeats [2] can not be smaller"), Error);
}
