// bfloat16 autocast: the rounding kernels against the reference conversion,
// and matmul/linear under an AutocastGuard against a double-precision product
// of the rounded inputs, forward and backward.
#include "helpers.h"

#include <cstring>

using namespace loom;

namespace {
uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// The reference: core/dtype.h's scalar BFloat16(float), then back.
float round_ref(float x) { return float(BFloat16(x)); }

std::vector<double> rounded(const Tensor& t) {
  std::vector<double> out;
  for (float x : t.contiguous().to_vector<float>()) out.push_back(double(round_ref(x)));
  return out;
}

// C = A · B in double, A [m, k], B [k, n], row-major values.
std::vector<double> mm(const std::vector<double>& a, const std::vector<double>& b, int64_t m, int64_t k, int64_t n) {
  std::vector<double> c(size_t(m * n), 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t t = 0; t < k; ++t)
      for (int64_t j = 0; j < n; ++j) c[size_t(i * n + j)] += a[size_t(i * k + t)] * b[size_t(t * n + j)];
  return c;
}
std::vector<double> transposed(const std::vector<double>& a, int64_t rows, int64_t cols) {
  std::vector<double> t(a.size());
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) t[size_t(j * rows + i)] = a[size_t(i * cols + j)];
  return t;
}
double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(double(a[i]) - double(b[i])));
  return d;
}
}  // namespace

TEST_CASE("bfloat16 rounding kernels give the reference conversion's bits on every ISA") {
  std::vector<float> x = {0.0f, -0.0f, 1.0f, -1.5f, 3.14159265f, 1e-40f, -1e-42f, 65504.0f, 3.4e38f, -3.4e38f,
                          INFINITY, -INFINITY, NAN, -NAN, from_bits(0x3f808000u) /* a tie: to even (down) */,
                          from_bits(0x3f818000u) /* a tie: to even (up) */, from_bits(0x3f80ffffu),
                          from_bits(0x7f7fffffu) /* rounds to inf */, from_bits(0x7f800001u) /* signalling NaN */};
  Generator g(3);
  for (float v : randn({1000}, g).to_vector<float>()) x.push_back(v * 1000.0f);
  for (int i = 0; i < 1000; ++i) x.push_back(from_bits(uint32_t(i) * 4294967u + 12345u));  // all over the bit space
  const int64_t n = int64_t(x.size());
  for_each_isa([&](const std::string& isa) {
    CAPTURE(isa);
    std::vector<uint16_t> bits(x.size());
    std::vector<float> round(x.size());
    for (int64_t len : {n, int64_t(1), int64_t(15), int64_t(17)}) {  // full batches and tails
      std::fill(bits.begin(), bits.end(), 0);
      kernels::table().to_bf16(x.data(), bits.data(), len);
      kernels::table().round_bf16(x.data(), round.data(), len);
      for (int64_t i = 0; i < len; ++i) {
        CAPTURE(i);
        REQUIRE(bits[size_t(i)] == BFloat16(x[size_t(i)]).bits);
        REQUIRE(bits_of(round[size_t(i)]) == bits_of(round_ref(x[size_t(i)])));
      }
    }
  });
  CHECK(BFloat16(from_bits(0x3f808000u)).bits == 0x3f80);  // ties to even, both ways
  CHECK(BFloat16(from_bits(0x3f818000u)).bits == 0x3f82);
}

TEST_CASE("autocast matmul: bfloat16 inputs, float32 accumulation, forward and backward") {
  INFO("native bfloat16 products: ", native_bf16());
  Generator g(5);
  const int64_t m = 67, k = 130, n = 45;
  Tensor a = randn({m, k}, g).requires_grad_(), b = randn({k, n}, g).requires_grad_();
  Tensor go = randn({m, n}, g);
  Tensor plain = matmul(a, b);
  Tensor c;
  {
    AutocastGuard autocast;
    CHECK(autocast_enabled());
    c = matmul(a, b);
    c.backward(go);
  }
  CHECK_FALSE(autocast_enabled());
  REQUIRE(c.dtype() == kFloat32);
  const std::vector<double> ra = rounded(a), rb = rounded(b), rg = rounded(go);
  // Products of bfloat16 values are exact in double and in float32: only the float32 sums differ.
  CHECK(close_or_same(c.to_vector<float>(), mm(ra, rb, m, k, n), 1e-4, 1e-5));
  CHECK(max_abs_diff(c.to_vector<float>(), plain.to_vector<float>()) > 1e-3);  // it did round
  CHECK(close_or_same(a.grad().to_vector<float>(), mm(rg, transposed(rb, k, n), m, n, k), 1e-4, 1e-5));
  CHECK(close_or_same(b.grad().to_vector<float>(), mm(transposed(ra, m, k), rg, k, m, n), 1e-4, 1e-5));
  // Batched, with a transposed operand.
  Tensor x = randn({3, 20, 33}, g), y = randn({3, 41, 33}, g);
  Tensor got;
  {
    AutocastGuard autocast;
    got = matmul(x, y.transpose(1, 2));
  }
  for (int64_t p = 0; p < 3; ++p) {
    CAPTURE(p);
    const std::vector<double> rx = rounded(x.select(0, p)), ry = rounded(y.select(0, p));
    CHECK(close_or_same(got.select(0, p).contiguous().to_vector<float>(), mm(rx, transposed(ry, 41, 33), 20, 33, 41),
                        1e-4, 1e-5));
  }
}

TEST_CASE("autocast linear: forward and every gradient against the rounded inputs, bias in float32") {
  Generator g(6);
  const int64_t rows = 70, in = 96, out = 40;
  Tensor x = randn({2, rows / 2, in}, g).requires_grad_(), w = randn({out, in}, g).requires_grad_(),
         bias = randn({out}, g).requires_grad_();
  Tensor go = randn({2, rows / 2, out}, g);
  Tensor y;
  {
    AutocastGuard autocast;
    y = linear(x, w, bias);
    y.backward(go);
  }
  const std::vector<double> rx = rounded(x), rw = rounded(w), rg = rounded(go);
  std::vector<double> want = mm(rx, transposed(rw, out, in), rows, in, out);
  const std::vector<float> bv = bias.to_vector<float>();
  for (size_t i = 0; i < want.size(); ++i) want[i] += bv[i % size_t(out)];
  CHECK(close_or_same(y.to_vector<float>(), want, 1e-4, 1e-5));
  CHECK(close_or_same(x.grad().to_vector<float>(), mm(rg, rw, rows, out, in), 1e-4, 1e-5));
  CHECK(close_or_same(w.grad().to_vector<float>(), mm(transposed(rg, rows, out), rx, out, rows, in), 1e-4, 1e-5));
  std::vector<double> db(size_t(out), 0.0);  // the bias gradient sums the float32 gradient, unrounded
  const std::vector<float> gv = go.to_vector<float>();
  for (size_t i = 0; i < gv.size(); ++i) db[i % size_t(out)] += gv[i];
  CHECK(close_or_same(bias.grad().to_vector<float>(), db, 1e-5, 1e-5));
}

TEST_CASE("autocast: a parameter's bfloat16 copy lasts one autocast region") {
  Generator g(7);
  Tensor x = randn({8, 16}, g), w = randn({4, 16}, g).requires_grad_();
  Tensor first, second, again;
  {
    AutocastGuard autocast;
    first = linear(x, w);
    second = linear(x, w);  // the cached copy
  }
  CHECK(first.to_vector<float>() == second.to_vector<float>());
  {
    NoGradGuard no_grad;
    w.mul_(2.0);  // an optimizer step, between regions
  }
  {
    AutocastGuard autocast;
    again = linear(x, w);
  }
  const std::vector<float> f = first.to_vector<float>(), a = again.to_vector<float>();
  for (size_t i = 0; i < f.size(); ++i) CHECK(a[i] == doctest::Approx(2 * f[i]).epsilon(1e-5));
}
