// Ops against plain scalar references: broadcasting, matmul, reductions.
#include <functional>

#include "helpers.h"

using namespace loom;

namespace {

// out[idx] = f(a[idx broadcast], b[idx broadcast]) with explicit index math.
std::vector<float> reference_binary(const Tensor& a, const Tensor& b, const Shape& out_shape,
                                    const std::function<float(float, float)>& f) {
  std::vector<float> av = a.to_vector<float>(), bv = b.to_vector<float>(), out;
  for (int64_t i = 0; i < numel_of(out_shape); ++i) {
    auto idx = unravel(i, out_shape);
    out.push_back(f(av[size_t(ravel_broadcast(idx, a.sizes()))], bv[size_t(ravel_broadcast(idx, b.sizes()))]));
  }
  return out;
}

// Naive matmul of [.., m, k] x [.., k, n] with batch broadcasting.
std::vector<float> reference_matmul(const Tensor& a, const Tensor& b, const Shape& out_shape) {
  std::vector<float> av = a.to_vector<float>(), bv = b.to_vector<float>(), out;
  int64_t k = a.size(-1);
  Shape a_shape = a.sizes(), b_shape = b.sizes();
  for (int64_t i = 0; i < numel_of(out_shape); ++i) {
    auto idx = unravel(i, out_shape);
    double acc = 0;
    for (int64_t kk = 0; kk < k; ++kk) {
      auto ia = idx, ib = idx;
      ia.back() = kk;                 // a[..., row, kk]
      ib[ib.size() - 2] = kk;         // b[..., kk, col]
      acc += double(av[size_t(ravel_broadcast(ia, a_shape))]) * bv[size_t(ravel_broadcast(ib, b_shape))];
    }
    out.push_back(float(acc));
  }
  return out;
}

}  // namespace

TEST_CASE("elementwise ops broadcast like PyTorch") {
  Generator g(1);
  struct Case { Shape a, b, out; };
  for (const Case& c : {Case{{2, 3}, {2, 3}, {2, 3}}, Case{{2, 3}, {3}, {2, 3}}, Case{{2, 1}, {1, 3}, {2, 3}},
                        Case{{4, 1, 3}, {2, 1}, {4, 2, 3}}, Case{{}, {5}, {5}}, Case{{0, 3}, {3}, {0, 3}}}) {
    Tensor a = randn(c.a, g), b = randn(c.b, g) + 3.0f;  // b away from 0 for div
    CAPTURE(shape_str(c.a));
    CAPTURE(shape_str(c.b));
    CHECK(add(a, b).sizes() == c.out);
    CHECK(all_close(add(a, b).to_vector<float>(), reference_binary(a, b, c.out, std::plus<float>())));
    CHECK(all_close(sub(a, b).to_vector<float>(), reference_binary(a, b, c.out, std::minus<float>())));
    CHECK(all_close(mul(a, b).to_vector<float>(), reference_binary(a, b, c.out, std::multiplies<float>())));
    CHECK(all_close(div(a, b).to_vector<float>(), reference_binary(a, b, c.out, std::divides<float>())));
  }
}

TEST_CASE("elementwise ops read non-contiguous views") {
  Generator g(2);
  Tensor a = randn({3, 4}, g), b = randn({4, 3}, g);
  Tensor at = a.t();  // [4, 3], strides [1, 4]
  Tensor expected = at.contiguous() + b;
  CHECK(all_close((at + b).to_vector<float>(), expected.to_vector<float>(), 0, 0));
  Tensor stepped = randn({4, 6}, g).slice(1, 0, 6, 2);  // [4, 3], stride 2
  CHECK(all_close((stepped * b).to_vector<float>(), (stepped.contiguous() * b).to_vector<float>(), 0, 0));
}

TEST_CASE("scalars and dtypes follow PyTorch's promotion") {
  Tensor i = arange(4);  // int64
  CHECK((i * 2).dtype() == kInt64);
  CHECK((i * 2).to_vector<int64_t>() == std::vector<int64_t>{0, 2, 4, 6});
  CHECK((i * 0.5).dtype() == kFloat32);
  CHECK((i / 2).dtype() == kFloat32);  // true division
  CHECK((i / 2).to_vector<float>() == std::vector<float>{0, 0.5f, 1, 1.5f});
  CHECK((i + arange(0, 4, kFloat32)).dtype() == kFloat32);
  CHECK((1.0f - arange(0, 3, kFloat32)).to_vector<float>() == std::vector<float>{1, 0, -1});
  CHECK((-arange(0, 3, kFloat32)).to_vector<float>() == std::vector<float>{0, -1, -2});
}

TEST_CASE("relu") {
  Tensor x = tensor({-2.0f, -0.0f, 0.5f, 3.0f});
  CHECK(relu(x).to_vector<float>() == std::vector<float>{0, 0, 0.5f, 3});
}

TEST_CASE("matmul matches a naive reference for every torch.matmul case") {
  Generator g(3);
  struct Case { Shape a, b, out; };
  for (const Case& c : {Case{{3}, {3}, {}}, Case{{3}, {3, 5}, {5}}, Case{{4, 3}, {3}, {4}},
                        Case{{4, 3}, {3, 5}, {4, 5}}, Case{{2, 4, 3}, {3, 5}, {2, 4, 5}},
                        Case{{2, 1, 4, 3}, {3, 3, 2}, {2, 3, 4, 2}}, Case{{1, 7}, {7, 1}, {1, 1}},
                        Case{{0, 3}, {3, 2}, {0, 2}}, Case{{2, 0}, {0, 3}, {2, 3}}}) {
    Tensor a = randn(c.a, g), b = randn(c.b, g);
    CAPTURE(shape_str(c.a));
    CAPTURE(shape_str(c.b));
    Tensor out = matmul(a, b);
    REQUIRE(out.sizes() == c.out);
    Tensor a2 = a.dim() == 1 ? a.unsqueeze(0) : a, b2 = b.dim() == 1 ? b.unsqueeze(1) : b;
    Shape full = broadcast_shapes("test", Shape(a2.sizes().begin(), a2.sizes().end() - 2),
                                  Shape(b2.sizes().begin(), b2.sizes().end() - 2));
    full.push_back(a2.size(-2));
    full.push_back(b2.size(-1));
    CHECK(all_close(out.to_vector<float>(), reference_matmul(a2, b2, full), 1e-4f, 1e-4f));
  }
}

TEST_CASE("matmul reads transposed operands without copying them first") {
  Generator g(4);
  Tensor a = randn({5, 3}, g), b = randn({4, 5}, g);
  Tensor out = matmul(a.t(), b.t());  // [3, 5] x [5, 4]
  CHECK(all_close(out.to_vector<float>(), matmul(a.t().contiguous(), b.t().contiguous()).to_vector<float>(), 1e-5f));
}

TEST_CASE("sum and mean over any dims, with keepdim") {
  Tensor a = arange(0, 24, kFloat32).reshape({2, 3, 4});
  CHECK(a.sum().item<float>() == 276.0f);
  CHECK(a.sum().dim() == 0);
  CHECK(a.sum({1}).sizes() == Shape{2, 4});
  CHECK(a.sum({1}, true).sizes() == Shape{2, 1, 4});
  CHECK(a.sum({0, 2}).sizes() == Shape{3});
  CHECK(a.mean({-1}).sizes() == Shape{2, 3});
  // Reference: explicit loops.
  std::vector<float> v = a.to_vector<float>();
  std::vector<float> s02(3, 0), m1(8, 0);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 4; ++k) {
        s02[size_t(j)] += v[size_t(i * 12 + j * 4 + k)];
        m1[size_t(i * 4 + k)] += v[size_t(i * 12 + j * 4 + k)] / 3.0f;
      }
  CHECK(all_close(a.sum({0, 2}).to_vector<float>(), s02));
  CHECK(all_close(a.mean({1}).to_vector<float>(), m1));
  // A permuted input reduces the same way.
  CHECK(all_close(a.permute({2, 1, 0}).sum({2, 0}).to_vector<float>(), s02));
  // Sums of integers and bools are int64; empty sums are 0.
  CHECK(arange(5).sum().item<int64_t>() == 10);
  CHECK(tensor(std::vector<bool>{true, false, true}).sum().dtype() == kInt64);
  CHECK(tensor(std::vector<bool>{true, false, true}).sum().item<int64_t>() == 2);
  CHECK(zeros({0, 3}).sum({0}).to_vector<float>() == std::vector<float>{0, 0, 0});
}

TEST_CASE("in-place ops write into the tensor, broadcasting the other side") {
  Tensor a = zeros({2, 3});
  a += tensor({1.0f, 2.0f, 3.0f});
  a -= ones({2, 1});
  a *= 2.0;
  CHECK(a.to_vector<float>() == std::vector<float>{0, 2, 4, 0, 2, 4});
  a.add_(ones({3}), 0.5);
  CHECK(a.to_vector<float>() == std::vector<float>{0.5f, 2.5f, 4.5f, 0.5f, 2.5f, 4.5f});
  a.div_(full({1}, 0.5));
  CHECK(a[0][0].item<float>() == 1.0f);
  a.zero_();
  CHECK(a.sum().item<float>() == 0.0f);
  // The result must fit the tensor: [3] += [2, 3] does not.
  CHECK_THROWS_AS(zeros({3}).add_(ones({2, 3})), Error);
}
