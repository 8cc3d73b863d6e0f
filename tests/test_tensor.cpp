// Factories, dtypes, storage, random numbers, element access, printing.
#include <fstream>
#include <sstream>
#include <string>

#include "helpers.h"

using namespace loom;

TEST_CASE("factories fill, shape and dtype like libtorch") {
  Tensor z = zeros({2, 3});
  CHECK(z.sizes() == Shape{2, 3});
  CHECK(z.dtype() == kFloat32);
  CHECK(z.to_vector<float>() == std::vector<float>(6, 0.0f));
  CHECK(ones({4}, kInt64).to_vector<int64_t>() == std::vector<int64_t>(4, 1));
  CHECK(full({2}, 2.5).to_vector<float>() == std::vector<float>{2.5f, 2.5f});
  CHECK(full({3}, 1.0, kBool).to_vector<bool>() == std::vector<bool>{true, true, true});
  CHECK(empty({0, 5}).numel() == 0);
  CHECK(scalar_tensor(3.0).dim() == 0);
  CHECK(zeros_like(z).sizes() == z.sizes());
}

TEST_CASE("arange picks int64 for integers and float32 otherwise") {
  CHECK(arange(4).dtype() == kInt64);
  CHECK(arange(4).to_vector<int64_t>() == std::vector<int64_t>{0, 1, 2, 3});
  CHECK(arange(1, 7, 2).to_vector<int64_t>() == std::vector<int64_t>{1, 3, 5});
  Tensor f = arange(0, 8, kFloat32);
  CHECK(f.dtype() == kFloat32);
  CHECK(f.numel() == 8);
  CHECK(f.to_vector<float>()[7] == 7.0f);
  CHECK(arange(0.0, 1.0, 0.25).to_vector<float>() == std::vector<float>{0, 0.25f, 0.5f, 0.75f});
  CHECK(arange(5, 0, -2).to_vector<int64_t>() == std::vector<int64_t>{5, 3, 1});
}

TEST_CASE("tensor() and from_vector() copy the given values") {
  CHECK(tensor({1.0f, 2.0f}).to_vector<float>() == std::vector<float>{1, 2});
  CHECK(tensor(std::vector<int64_t>{7, 8}).dtype() == kInt64);
  CHECK(tensor(std::vector<bool>{true, false}).to_vector<bool>() == std::vector<bool>{true, false});
  Tensor m = from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(m.sizes() == Shape{2, 3});
  CHECK(m[1][2].item<float>() == 6.0f);
  Tensor b = from_vector(std::vector<int64_t>{1, 0}, {2}, kBool);
  CHECK(b.dtype() == kBool);
  CHECK(b.to_vector<bool>() == std::vector<bool>{true, false});
}

TEST_CASE("storage is 64-byte aligned") {
  for (int64_t n : {1, 3, 17, 1000}) {
    Tensor t = empty({n});
    CHECK(reinterpret_cast<uintptr_t>(t.data_ptr<float>()) % 64 == 0);
  }
}

TEST_CASE("dtype conversion: int64, bool, bfloat16") {
  Tensor f = tensor({1.5f, -2.0f, 0.0f});
  CHECK(f.to(kInt64).to_vector<int64_t>() == std::vector<int64_t>{1, -2, 0});
  CHECK(f.to(kBool).to_vector<bool>() == std::vector<bool>{true, true, false});
  // bfloat16 keeps 8 significant bits: 1.5 and -2 are exact, 1/3 is rounded.
  Tensor bf = tensor({1.5f, -2.0f, 1.0f / 3.0f}).to(kBFloat16);
  CHECK(bf.dtype() == kBFloat16);
  std::vector<float> back = bf.to(kFloat32).to_vector<float>();
  CHECK(back[0] == 1.5f);
  CHECK(back[1] == -2.0f);
  CHECK(back[2] != 1.0f / 3.0f);
  CHECK(std::abs(back[2] - 1.0f / 3.0f) < 1.0f / 256);
  CHECK(promote_types(kInt64, kFloat32) == kFloat32);
  CHECK(promote_types(kBool, kInt64) == kInt64);
}

TEST_CASE("Philox4x32-10 matches the Random123 known-answer vectors") {
  std::ifstream in(std::string(LOOM_TEST_FIXTURES) + "/philox4x32_10_kat.txt");
  REQUIRE(in.good());
  std::string line;
  int checked = 0;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ls(line);
    std::string name;
    int rounds;
    ls >> name >> rounds;
    uint32_t w[10];
    for (uint32_t& x : w) ls >> std::hex >> x;
    auto out = philox4x32_10({w[0], w[1], w[2], w[3]}, {w[4], w[5]});
    CHECK(out == std::array<uint32_t, 4>{w[6], w[7], w[8], w[9]});
    ++checked;
  }
  CHECK(checked == 3);
}

TEST_CASE("random factories: same seed, same numbers, sensible distributions") {
  Generator g1(42), g2(42), g3(43);
  std::vector<float> a = randn({1000}, g1).to_vector<float>();
  CHECK(a == randn({1000}, g2).to_vector<float>());
  CHECK(a != randn({1000}, g3).to_vector<float>());
  // The generator advances: a second draw differs from the first.
  CHECK(randn({1000}, g1).to_vector<float>() != a);

  double mean = 0, sq = 0;
  for (float v : a) { mean += v; sq += double(v) * v; }
  mean /= 1000;
  double sd = std::sqrt(sq / 1000 - mean * mean);
  CHECK(std::abs(mean) < 0.1);  // 3 standard errors
  CHECK(std::abs(sd - 1.0) < 0.07);

  Generator g(7);
  std::vector<float> u = rand({4000}, g).to_vector<float>();
  int below_half = 0;
  for (float v : u) {
    CHECK(v >= 0.0f);
    CHECK(v < 1.0f);
    below_half += v < 0.5f;
  }
  CHECK(std::abs(below_half - 2000) < 120);

  std::vector<int64_t> r = randint(-3, 4, {2000}, g).to_vector<int64_t>();
  std::vector<int> counts(7, 0);
  for (int64_t v : r) {
    REQUIRE(v >= -3);
    REQUIRE(v < 4);
    counts[size_t(v + 3)]++;
  }
  for (int c : counts) CHECK(c > 200);  // each of 7 values ~286 times

  // The global generator is reseedable like torch::manual_seed.
  manual_seed(5);
  std::vector<float> x = rand({10}).to_vector<float>();
  manual_seed(5);
  CHECK(rand({10}).to_vector<float>() == x);
}

TEST_CASE("a random tensor's values do not depend on how it is drawn in pieces") {
  // Element i uses Philox block (offset + i/4): drawing 8 then 8 equals
  // drawing 16 at once.
  Generator whole(3), parts(3);
  std::vector<float> all = rand({16}, whole).to_vector<float>();
  std::vector<float> first = rand({8}, parts).to_vector<float>();
  std::vector<float> second = rand({8}, parts).to_vector<float>();
  first.insert(first.end(), second.begin(), second.end());
  CHECK(first == all);
}

TEST_CASE("item and to_vector read any layout") {
  Tensor t = arange(0, 6, kFloat32).reshape({2, 3});
  CHECK(t[1][0].item<float>() == 3.0f);
  CHECK(t.t().to_vector<float>() == std::vector<float>{0, 3, 1, 4, 2, 5});
  CHECK_THROWS_AS(t.item<float>(), Error);
}

TEST_CASE("printing follows PyTorch") {
  CHECK(to_string(arange(0, 6, kFloat32).reshape({2, 3})) ==
        "tensor([[0., 1., 2.],\n        [3., 4., 5.]], shape=[2, 3], dtype=float32)");
  CHECK(to_string(tensor({0.5f, -1.25f})) == "tensor([ 0.5000, -1.2500], shape=[2], dtype=float32)");
  CHECK(to_string(arange(3)) == "tensor([0, 1, 2], shape=[3], dtype=int64)");
  CHECK(to_string(tensor(std::vector<bool>{true, false})) == "tensor([ True, False], shape=[2], dtype=bool)");
  CHECK(to_string(ones({2}).requires_grad_()) ==
        "tensor([1., 1.], shape=[2], dtype=float32, requires_grad=True)");
  // Large tensors are summarised: first and last three of each dim.
  std::string big = to_string(arange(0, 2000, kFloat32));
  CHECK(big.find("[   0.,    1.,    2., ..., 1997., 1998., 1999.]") != std::string::npos);
  CHECK(to_string(Tensor()) == "tensor(undefined)");
}

TEST_CASE("large freed blocks are reused, empty_cache releases them") {
  empty_cache();
  const void* first;
  {
    Tensor a = empty({1 << 20});  // 4 MiB
    first = a.data_ptr<float>();
  }
  CHECK(cached_bytes() >= size_t(4) << 20);
  Tensor b = empty({1 << 20});
  CHECK(b.data_ptr<float>() == first);  // the same block again, no page faults
  CHECK(cached_bytes() == 0);
  Tensor small = empty({10});  // small blocks are not cached
  small = Tensor();
  CHECK(cached_bytes() == 0);
  const void* medium_block;
  {
    Tensor medium = empty({2048, 128}, kBFloat16);  // 512 KiB: cached too
    medium_block = medium.raw_data();
  }
  CHECK(cached_bytes() >= size_t(512) << 10);
  Tensor again = empty({2048, 128}, kBFloat16);
  CHECK(again.raw_data() == medium_block);
  {  // of two blocks of one size, the one freed last comes back first (it is likelier in cache)
    Tensor other = empty({2048, 128}, kBFloat16);
    const void* other_block = other.raw_data();
    again = Tensor();
    other = Tensor();
    CHECK(empty({2048, 128}, kBFloat16).raw_data() == other_block);
  }
  b = Tensor();
  empty_cache();
  CHECK(cached_bytes() == 0);
}
