// Misuse throws loom::Error with a message naming the op and the offending
// shapes or dtypes, never a crash.
#include "helpers.h"

using namespace loom;

TEST_CASE("loom::Error is a std::exception") {
  try {
    matmul(zeros({2, 3}), zeros({4, 5}));
    FAIL("no exception");
  } catch (const std::exception& e) {
    CHECK(std::string(e.what()) == "matmul: cannot multiply [2, 3] by [4, 5] (3 != 4)");
  }
}

TEST_CASE("shape errors name the op and the shapes") {
  CHECK_THROWS_WITH_AS(matmul(zeros({3}), zeros({4})), "matmul: cannot multiply [3] by [4] (3 != 4)", Error);
  CHECK_THROWS_WITH_AS(matmul(zeros({2, 2, 3}), zeros({3, 3, 2})),
                       "matmul: shapes [2] and [3] cannot be broadcast together (2 vs 3 at dimension -1)", Error);
  CHECK_THROWS_WITH_AS(add(zeros({2, 3}), zeros({4})),
                       "add: shapes [2, 3] and [4] cannot be broadcast together (3 vs 4 at dimension -1)", Error);
  CHECK_THROWS_WITH_AS(zeros({2, 3}).view({4}), doctest::Contains("view: shape [4] is invalid for input of shape [2, 3]"),
                       Error);
  CHECK_THROWS_WITH_AS(zeros({2, 3}).t().view({6}), doctest::Contains("use reshape() instead"), Error);
  CHECK_THROWS_WITH_AS(zeros({2, 3}).reshape({-1, -1}), doctest::Contains("only one dimension can be -1"), Error);
  CHECK_THROWS_WITH_AS(zeros({2, 3}).permute({0, 0}), doctest::Contains("permute: dimension 0 repeats"), Error);
  CHECK_THROWS_WITH_AS(zeros({2, 3}).expand({4, 3, 3}), doctest::Contains("expand: the expanded size 3"), Error);
  CHECK_THROWS_WITH_AS(zeros({2, 3}).sum({2}),
                       "sum: dimension 2 out of range for a 2-d tensor (expected -2 to 1)", Error);
  CHECK_THROWS_WITH_AS(zeros({2, 3}).select(1, 3), doctest::Contains("select: index 3 is out of range"), Error);
  CHECK_THROWS_WITH_AS(zeros({2, 3}).narrow(0, 1, 5), doctest::Contains("narrow: start 1 and length 5"), Error);
  CHECK_THROWS_WITH_AS(from_vector(std::vector<float>{1, 2, 3}, {2, 2}),
                       "from_vector: 3 values do not fill shape [2, 2] (4 elements)", Error);
  CHECK_THROWS_WITH_AS(empty({2, -1}), "empty: negative dimension in shape [2, -1]", Error);
}

TEST_CASE("dtype errors name the dtypes") {
  CHECK_THROWS_WITH_AS(arange(4).requires_grad_(),
                       "requires_grad_: only floating point tensors can require gradients, this one is int64", Error);
  CHECK_THROWS_WITH_AS(arange(4).data_ptr<float>(), "data_ptr: tensor has dtype int64 but float32 was asked for",
                       Error);
  CHECK_THROWS_WITH_AS(matmul(arange(4), arange(4)), doctest::Contains("matmul: expects float32 tensors, got int64"),
                       Error);
  CHECK_THROWS_WITH_AS(add(ones({2}, kBool), ones({2})), "add: not implemented for dtype bool (shape [2])", Error);
  CHECK_THROWS_WITH_AS(arange(4).mean(), doctest::Contains("mean: needs a floating point tensor, got int64"), Error);
  CHECK_THROWS_WITH_AS(arange(4).div_(arange(4)), doctest::Contains("div_: true division of a int64 tensor"), Error);
}

TEST_CASE("other misuse") {
  CHECK_THROWS_WITH_AS(Tensor().sizes(), "sizes: tensor is undefined", Error);
  CHECK_THROWS_WITH_AS(zeros({2}).item<float>(),
                       "item: a tensor with 2 elements (shape [2]) cannot be converted to a scalar", Error);
  CHECK_THROWS_WITH_AS(zeros({2}).backward(), "backward: tensor of shape [2] does not require grad and has no grad_fn",
                       Error);
  CHECK_THROWS_WITH_AS(arange(0, 1, 0), "arange: step must be nonzero", Error);
  CHECK_THROWS_WITH_AS(randint(5, 5, {2}), "randint: low (5) must be less than high (5)", Error);
  CHECK_THROWS_WITH_AS(rand({2}, kInt64), "rand: dtype must be floating point, got int64", Error);
}
