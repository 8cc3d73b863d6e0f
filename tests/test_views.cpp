// Views share storage: no data is copied, and writes through a view are seen
// by the base and by every other view.
#include "helpers.h"

using namespace loom;

TEST_CASE("a view shares storage and writes through it are seen") {
  Tensor base = arange(0, 12, kFloat32).reshape({3, 4});
  Tensor row = base[1];
  CHECK(row.is_same_storage(base));
  row.fill_(-1);
  CHECK(base.to_vector<float>() == std::vector<float>{0, 1, 2, 3, -1, -1, -1, -1, 8, 9, 10, 11});

  Tensor col = base.select(1, 2);  // a strided view: stride 4
  CHECK(col.strides() == Shape{4});
  col.copy_(tensor({100.0f, 200.0f, 300.0f}));
  CHECK(base[0][2].item<float>() == 100.0f);
  CHECK(base[2][2].item<float>() == 300.0f);

  Tensor tr = base.t();
  CHECK(tr.is_same_storage(base));
  tr[3][0].fill_(42);  // element (0, 3) of base
  CHECK(base[0][3].item<float>() == 42.0f);
}

TEST_CASE("view, reshape, flatten") {
  Tensor a = arange(0, 24, kFloat32);
  Tensor v = a.view({2, 3, 4});
  CHECK(v.strides() == Shape{12, 4, 1});
  CHECK(v.is_same_storage(a));
  CHECK(a.view({4, -1}).sizes() == Shape{4, 6});
  CHECK(v.flatten().sizes() == Shape{24});
  CHECK(v.flatten(1).sizes() == Shape{2, 12});

  // A transposed tensor cannot be viewed flat; reshape copies instead.
  Tensor t = v.transpose(0, 2);  // [4, 3, 2]
  CHECK_FALSE(t.is_contiguous());
  CHECK_THROWS_AS(t.view({24}), Error);
  Tensor r = t.reshape({24});
  CHECK_FALSE(r.is_same_storage(a));
  CHECK(r.to_vector<float>() == t.to_vector<float>());
  // ...but dims that stay together can still be viewed: [4, 3, 2] -> [4, 6] is not, [4, 3, 2] -> [2, 2, 3, 2] is.
  CHECK(t.view({2, 2, 3, 2}).is_same_storage(a));
}

TEST_CASE("permute and transpose reorder strides, not data") {
  Tensor a = arange(0, 24, kFloat32).reshape({2, 3, 4});
  Tensor p = a.permute({2, 0, 1});
  CHECK(p.sizes() == Shape{4, 2, 3});
  CHECK(p.strides() == Shape{1, 12, 4});
  CHECK(p.is_same_storage(a));
  // p[i][j][k] == a[j][k][i]
  CHECK(p[3][1][2].item<float>() == a[1][2][3].item<float>());
  CHECK(a.transpose(-1, 0).sizes() == Shape{4, 3, 2});
}

TEST_CASE("slice and narrow follow Python slicing") {
  Tensor a = arange(0, 10, kFloat32);
  CHECK(a.slice(0, 2, 8, 3).to_vector<float>() == std::vector<float>{2, 5});
  CHECK(a.slice(0, -3, 10).to_vector<float>() == std::vector<float>{7, 8, 9});
  CHECK(a.slice(0, 8, 100).to_vector<float>() == std::vector<float>{8, 9});
  CHECK(a.narrow(0, 1, 2).to_vector<float>() == std::vector<float>{1, 2});
  CHECK(a.narrow(0, 1, 2).storage_offset() == 1);
  Tensor m = arange(0, 12, kFloat32).reshape({3, 4});
  CHECK(m.slice(1, 1, 3).to_vector<float>() == std::vector<float>{1, 2, 5, 6, 9, 10});
}

TEST_CASE("expand broadcasts with stride 0") {
  Tensor a = tensor({1.0f, 2.0f, 3.0f}).reshape({3, 1});
  Tensor e = a.expand({2, 3, 4});
  CHECK(e.strides() == Shape{0, 1, 0});
  CHECK(e.is_same_storage(a));
  CHECK(e[1][2][3].item<float>() == 3.0f);
  CHECK(a.expand({-1, 2}).sizes() == Shape{3, 2});
  CHECK(e.contiguous().to_vector<float>() == e.to_vector<float>());
}

TEST_CASE("squeeze and unsqueeze") {
  Tensor a = zeros({1, 3, 1, 2});
  CHECK(a.squeeze().sizes() == Shape{3, 2});
  CHECK(a.squeeze(0).sizes() == Shape{3, 1, 2});
  CHECK(a.squeeze(1).sizes() == Shape{1, 3, 1, 2});  // size 3: no-op, as in PyTorch
  CHECK(a.unsqueeze(-1).sizes() == Shape{1, 3, 1, 2, 1});
  CHECK(zeros({2, 3}).t().unsqueeze(0).sizes() == Shape{1, 3, 2});
  CHECK(scalar_tensor(1).unsqueeze(0).sizes() == Shape{1});
}

TEST_CASE("contiguous is free when already contiguous, a copy otherwise") {
  Tensor a = arange(0, 6, kFloat32).reshape({2, 3});
  CHECK(a.contiguous().data_ptr<float>() == a.data_ptr<float>());
  Tensor c = a.t().contiguous();
  CHECK(c.is_contiguous());
  CHECK_FALSE(c.is_same_storage(a));
  CHECK(c.to_vector<float>() == std::vector<float>{0, 3, 1, 4, 2, 5});
}

TEST_CASE("detach shares storage but leaves the graph") {
  Tensor x = ones({3}, TensorOptions().requires_grad());
  Tensor y = x * 2.0f;
  Tensor d = y.detach();
  CHECK(d.is_same_storage(y));
  CHECK_FALSE(d.requires_grad());
  CHECK(d.is_leaf());
}

TEST_CASE("clone copies") {
  Tensor a = arange(0, 4, kFloat32);
  Tensor c = a.clone();
  CHECK_FALSE(c.is_same_storage(a));
  c.fill_(0);
  CHECK(a.to_vector<float>() == std::vector<float>{0, 1, 2, 3});
}
