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
    std::vector<uint16_t> bits(x.size()), dot(x.size() + 1);
    std::vector<float> round(x.size());
    for (int64_t len : {n, int64_t(1), int64_t(15), int64_t(17)}) {  // full batches and tails
      std::fill(bits.begin(), bits.end(), 0);
      std::fill(dot.begin(), dot.end(), 0xdead);
      kernels::table().to_bf16(x.data(), bits.data(), len);
      kernels::table().round_bf16(x.data(), round.data(), len);
      kernels::table().to_bf16_dot(x.data(), dot.data(), len);
      for (int64_t i = 0; i < len; ++i) {
        CAPTURE(i);
        REQUIRE(bits[size_t(i)] == BFloat16(x[size_t(i)]).bits);
        REQUIRE(bits_of(round[size_t(i)]) == bits_of(round_ref(x[size_t(i)])));
        // the products' conversion: the same bits, or a subnormal's signed zero
        const uint32_t u = bits_of(x[size_t(i)]);
        const bool subnormal = (u & 0x7f800000u) == 0 && (u & 0x007fffffu) != 0;
        const bool same = dot[size_t(i)] == BFloat16(x[size_t(i)]).bits;
        REQUIRE((same || (subnormal && dot[size_t(i)] == uint16_t(u >> 16 & 0x8000u))));
      }
      CHECK(dot[size_t(len)] == 0xdead);  // nothing written past len
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

TEST_CASE("autocast: layer_norm and gelu write their output's bfloat16 twin, linear reads it, an in-place op drops it") {
  INFO("native bfloat16 products: ", native_bf16());
  Generator g(8);
  Tensor x = randn({3, 9, 48}, g), lw = randn({48}, g), lb = randn({48}, g);
  Tensor w = randn({20, 48}, g).requires_grad_(), w2 = randn({5, 48}, g).requires_grad_();
  auto same = [](const Tensor& a, const Tensor& b) { return a.to_vector<float>() == b.to_vector<float>(); };
  AutocastGuard autocast;
  Tensor y = layer_norm(x, {48}, lw, lb), h = gelu(randn({7, 48}, g));
  for (const Tensor& t : {y, h}) {
    const Tensor twin = bf16_twin_of(t);
    REQUIRE(twin.defined() == native_bf16());  // only where the products read bfloat16
    if (!twin.defined()) continue;
    CHECK(twin.dtype() == kBFloat16);
    CHECK(twin.sizes() == t.sizes());
    std::vector<float> v = t.to_vector<float>();
    std::vector<uint16_t> want(v.size());
    kernels::table().to_bf16_dot(v.data(), want.data(), int64_t(v.size()));
    CHECK(std::memcmp(twin.raw_data(), want.data(), 2 * want.size()) == 0);  // the bits linear would convert to
  }
  // Read through the twin (also from a view at an offset): the same bits as
  // converting a copy, forward and the weight's gradient.
  Tensor a = linear(y, w), b = linear(y.clone(), w);
  CHECK(same(a, b));
  Tensor gw_twin, gw_copy;
  a.sum().backward(), gw_twin = w.grad().clone(), w.mutable_grad() = Tensor();
  b.sum().backward(), gw_copy = w.grad().clone(), w.mutable_grad() = Tensor();
  CHECK(same(gw_twin, gw_copy));
  CHECK(same(linear(y.narrow(0, 1, 2), w), linear(y.narrow(0, 1, 2).clone(), w)));
  CHECK(same(linear(h, w2), linear(h.clone(), w2)));
  {
    NoGradGuard no_grad;
    y.add_(ones({48}));  // the twin would be stale
  }
  CHECK_FALSE(bf16_twin_of(y).defined());
  CHECK(same(linear(y, w), linear(y.clone(), w)));
  {
    AutocastGuard off(false);
    CHECK_FALSE(bf16_twin_of(layer_norm(x, {48}, lw, lb)).defined());
  }
}

namespace {
// ‖got − want‖ / ‖want‖ and max |got − want| / max |want| of two tensors.
std::pair<double, double> relative_errors(const Tensor& got, const Tensor& want) {
  const std::vector<float> a = got.contiguous().to_vector<float>(), b = want.contiguous().to_vector<float>();
  double diff2 = 0, ref2 = 0, diff_max = 0, ref_max = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = double(a[i]) - double(b[i]);
    diff2 += d * d, ref2 += double(b[i]) * b[i];
    diff_max = std::max(diff_max, std::abs(d)), ref_max = std::max(ref_max, std::abs(double(b[i])));
  }
  return {std::sqrt(diff2 / std::max(ref2, 1e-300)), diff_max / std::max(ref_max, 1e-300)};
}
// The kernel table with bfloat16 tiles (avx512bf16: gemm_bf16 and the
// attention's packed kernels), or null on a CPU without AVX512-BF16.
const kernels::Table* bf16_table() {
  const kernels::Table* bf = nullptr;
  for_each_isa([&](const std::string&) {
    if (kernels::table().gemm_bf16 && kernels::table().gemm_bf16_pp) bf = &kernels::table();
  });
  return bf;
}
}  // namespace

TEST_CASE("bfloat16 tile product: every operand layout against a double product of the rounded inputs") {
  // Only the avx512bf16 table has it (CPUs with AVX512-BF16).
  const kernels::Table* bf = bf16_table();
  if (!bf) {
    MESSAGE("this CPU has no AVX512-BF16: no bfloat16 tile product to test (autocast attention runs in float32)");
    return;
  }
  Generator g(11);
  struct Shape3 { int64_t m, n, k; };
  for (Shape3 s : {Shape3{64, 64, 64}, {37, 45, 33}, {1, 1, 1}, {8, 16, 2}, {70, 12, 70}, {9, 33, 17}, {16, 64, 31},
                   {64, 32, 64}, {21, 20, 40}})  // (n <= 32: 8-row blocks)
    for (int layout = 0; layout < 3; ++layout)  // A row-major, A transposed, A with both strides > 1
      for (bool accumulate : {false, true}) {
        INFO("m ", s.m, " n ", s.n, " k ", s.k, " layout ", layout, " accumulate ", accumulate);
        const int64_t ldb = s.n + 3, ldc = s.n + 5;
        std::vector<float> A(size_t(2 * s.m * s.k + 2)), B(size_t(s.k * ldb)), C(size_t(s.m * ldc));
        for (auto* v : {&A, &B, &C}) *v = randn({int64_t(v->size())}, g).to_vector<float>();
        const int64_t a_rs = layout == 0 ? s.k : layout == 1 ? 1 : 2 * s.k, a_cs = layout == 0 ? 1 : layout == 1 ? s.m : 2;
        std::vector<float> got = C;
        const float alpha = 0.75f;
        bf->gemm_bf16(A.data(), a_rs, a_cs, B.data(), ldb, got.data(), ldc, s.m, s.n, s.k, alpha, accumulate);
        std::vector<float> plain = C;
        bf->gemm(A.data(), a_rs, a_cs, B.data(), ldb, plain.data(), ldc, s.m, s.n, s.k, alpha, accumulate);
        bool rounded_somewhere = false;
        for (int64_t r = 0; r < s.m; ++r)
          for (int64_t c = 0; c < ldc; ++c) {
            const size_t e = size_t(r * ldc + c);
            if (c >= s.n) {  // outside the product: untouched
              REQUIRE(got[e] == C[e]);
              continue;
            }
            double want = 0, size = 0;
            for (int64_t t = 0; t < s.k; ++t) {
              const double x = round_ref(A[size_t(r * a_rs + t * a_cs)]), y = round_ref(B[size_t(t * ldb + c)]);
              want += x * y, size += std::abs(x * y);
            }
            want = alpha * want + (accumulate ? C[e] : 0.0);
            // Exact products, float32 sums: within a few float32 roundings of Σ|xy|.
            REQUIRE(std::abs(got[e] - want) <= 1e-6 * (alpha * size + std::abs(C[e])) + 1e-30);
            rounded_somewhere = rounded_somewhere || got[e] != plain[e];
          }
        CHECK(rounded_somewhere);
      }
}

TEST_CASE("bfloat16 attention kernels: the packings, the product of two packed operands, the softmax tiles") {
  // Only the avx512bf16 table has them; ops/attention.cpp uses them under autocast.
  const kernels::Table* bf = bf16_table();
  if (!bf) {
    MESSAGE("this CPU has no AVX512-BF16: no bfloat16 attention kernels to test");
    return;
  }
  Generator g(13);
  auto pair_ref = [](float lo, float hi) { return uint32_t(BFloat16(lo).bits) | uint32_t(BFloat16(hi).bits) << 16; };
  struct Shape2 { int64_t rows, cols; };
  for (Shape2 s : {Shape2{64, 64}, {37, 33}, {1, 1}, {17, 2}, {70, 31}, {16, 64}}) {
    INFO("rows ", s.rows, " cols ", s.cols);
    const int64_t rows = s.rows, cols = s.cols, ldx = cols + 3, kp = (cols + 1) / 2;
    const std::vector<float> X = randn({rows * ldx}, g).to_vector<float>();
    // pack_bf16_rows: pairs along each row, a 0 partner past cols, nothing written past kp
    const int64_t ldr = kp + 2;
    std::vector<uint32_t> R(size_t(rows * ldr), 0xdeadbeefu);
    bf->pack_bf16_rows(X.data(), ldx, rows, cols, R.data(), ldr);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t q = 0; q < ldr; ++q) {
        const uint32_t want = q >= kp ? 0xdeadbeefu
                                      : pair_ref(X[size_t(r * ldx + 2 * q)], 2 * q + 1 < cols ? X[size_t(r * ldx + 2 * q + 1)] : 0.0f);
        REQUIRE(R[size_t(r * ldr + q)] == want);
      }
    // pack_bf16_pairs_t(X) is pack_bf16_pairs(Xᵀ), padding included
    std::vector<float> XT(static_cast<size_t>(cols * rows));
    for (int64_t j = 0; j < rows; ++j)
      for (int64_t c = 0; c < cols; ++c) XT[size_t(c * rows + j)] = X[size_t(j * ldx + c)];
    const int64_t width = (rows + 15) / 16 * 16, ldp = width + 16;
    std::vector<uint32_t> T1(size_t(kp * ldp), 7u), T2 = T1;
    bf->pack_bf16_pairs_t(X.data(), ldx, rows, cols, T1.data(), ldp);
    bf->pack_bf16_pairs(XT.data(), rows, cols, rows, T2.data(), ldp);
    REQUIRE(T1 == T2);
  }
  // gemm_bf16_pp with A packed by rows (A) or as pairs of rows of Aᵀ: the
  // same bits as gemm_bf16 (tested above against double), which packs A itself.
  struct Shape3 { int64_t m, n, k; };
  for (Shape3 s : {Shape3{64, 64, 64}, {37, 45, 33}, {1, 1, 1}, {8, 16, 2}, {70, 12, 70}, {5, 80, 17}})
    for (bool transposed : {false, true})
      for (bool accumulate : {false, true}) {
        INFO("m ", s.m, " n ", s.n, " k ", s.k, " transposed ", transposed, " accumulate ", accumulate);
        const int64_t kp = (s.k + 1) / 2, ldb = s.n + 3, ldc = s.n + 5, ldp = (s.n + 15) / 16 * 16;
        const std::vector<float> A = randn({s.m * s.k}, g).to_vector<float>(), B = randn({s.k * ldb}, g).to_vector<float>(),
                                 C = randn({s.m * ldc}, g).to_vector<float>();
        std::vector<uint32_t> Bp(static_cast<size_t>(kp * ldp)), Ap;
        bf->pack_bf16_pairs(B.data(), ldb, s.k, s.n, Bp.data(), ldp);
        int64_t a_rs = s.k, a_cs = 1, sr = kp, sp = 1;
        std::vector<float> At(A.size());  // A stored transposed: A(r, t) = At[t · m + r]
        for (int64_t r = 0; r < s.m; ++r)
          for (int64_t t = 0; t < s.k; ++t) At[size_t(t * s.m + r)] = A[size_t(r * s.k + t)];
        if (transposed) {
          const int64_t lda = (s.m + 15) / 16 * 16;
          Ap.resize(static_cast<size_t>(kp * lda));
          bf->pack_bf16_pairs(At.data(), s.m, s.k, s.m, Ap.data(), lda);
          a_rs = 1, a_cs = s.m, sr = 1, sp = lda;
        } else {
          Ap.resize(static_cast<size_t>(s.m * kp));
          bf->pack_bf16_rows(A.data(), s.k, s.m, s.k, Ap.data(), kp);
        }
        std::vector<float> got = C, want = C;
        bf->gemm_bf16_pp(Ap.data(), sr, sp, Bp.data(), ldp, got.data(), ldc, s.m, s.n, kp, 0.75f, accumulate);
        bf->gemm_bf16(transposed ? At.data() : A.data(), a_rs, a_cs, B.data(), ldb, want.data(), ldc, s.m, s.n, s.k, 0.75f,
                      accumulate);
        REQUIRE(got == want);  // also untouched past column n
      }
  // The softmax tiles against double, with masked logits, a row with nothing
  // visible, a NaN row, and running statistics from an earlier tile.
  for (int64_t nr : {64, 5, 1})
    for (int64_t nc : {64, 33, 1, 17}) {
      INFO("nr ", nr, " nc ", nc);
      const TileLogits tl = tile_logits(nr, nc, g);
      const std::vector<float>&x = tl.x, &m0 = tl.m0, &l0 = tl.l0;
      std::vector<float> m = m0, l = l0, alpha(static_cast<size_t>(nr)), y(static_cast<size_t>(nr * nc));
      bf->softmax_tile_bf16(x.data(), nr, nc, m.data(), l.data(), alpha.data(), y.data(), nullptr, 0, nullptr, 0);
      const int64_t ldb = (nc + 1) / 2 + 1;
      std::vector<uint32_t> yb(size_t(nr * ldb), 0xdeadbeefu);
      std::vector<float> m2 = m0, l2 = l0, alpha2(static_cast<size_t>(nr));
      bf->softmax_tile_bf16(x.data(), nr, nc, m2.data(), l2.data(), alpha2.data(), nullptr, yb.data(), ldb, nullptr, 0);
      std::vector<float> shift(static_cast<size_t>(nr)), e(static_cast<size_t>(nr * nc));
      for (int64_t r = 0; r < nr; ++r) {
        INFO("row ", r);
        double mx = m0[size_t(r)];
        bool nan = false;
        for (int64_t c = 0; c < nc; ++c) mx = std::max(mx, double(x[size_t(r * nc + c)])), nan = nan || std::isnan(x[size_t(r * nc + c)]);
        REQUIRE(bits_of(m[size_t(r)]) == bits_of(m2[size_t(r)]));
        REQUIRE(bits_of(l[size_t(r)]) == bits_of(l2[size_t(r)]));
        if (nan) {
          CHECK(std::isnan(m[size_t(r)]));
          CHECK(std::isnan(l[size_t(r)]));
          continue;
        }
        if (mx == -INFINITY) {  // nothing visible yet: weights 0, statistics unchanged
          CHECK(alpha[size_t(r)] == 1.0f);
          CHECK(m[size_t(r)] == -INFINITY);
          CHECK(l[size_t(r)] == 0.0f);
          for (int64_t c = 0; c < nc; ++c) CHECK(y[size_t(r * nc + c)] == 0.0f);
        } else {
          CHECK(m[size_t(r)] == float(mx));
          // 1 where nothing was seen before (l and the output row are 0 then)
          const double a = m0[size_t(r)] == -INFINITY ? 1.0 : std::exp(double(m0[size_t(r)] - float(mx)));
          CHECK(std::abs(alpha[size_t(r)] - a) <= 3e-7 * a);
          double sum = 0;
          for (int64_t c = 0; c < nc; ++c) {
            // of the float32 difference, as the kernel takes it: within 5e-6 (exp16_weights: the weights
            // are rounded to bfloat16, 2^-9, for P V), exactly 0 when masked
            const double want = std::exp(double(x[size_t(r * nc + c)] - float(mx)));
            sum += want;
            REQUIRE(std::abs(y[size_t(r * nc + c)] - want) <= 5e-6 * want);
          }
          const double lw = double(l0[size_t(r)]) * a + sum;
          CHECK(std::abs(l[size_t(r)] - lw) <= 5e-6 * lw);
        }
        for (int64_t q = 0; q < ldb; ++q) {  // the packed weights: y rounded, a 0 partner, nothing past
          const float lo = 2 * q < nc ? y[size_t(r * nc + 2 * q)] : 0.0f, hi = 2 * q + 1 < nc ? y[size_t(r * nc + 2 * q + 1)] : 0.0f;
          REQUIRE(yb[size_t(r * ldb + q)] == (q >= (nc + 1) / 2 ? 0xdeadbeefu : pair_ref(lo, hi)));
        }
        shift[size_t(r)] = float(mx);
      }
      // exp_tile: the backward's weights exp(x − lse)
      for (int64_t r = 0; r < nr; ++r) shift[size_t(r)] = float(r) * 0.5f;
      bf->exp_tile(x.data(), nr, nc, shift.data(), e.data());
      std::vector<float> eb(e.size());
      bf->exp_tile_bf16(x.data(), nr, nc, shift.data(), eb.data());  // the bfloat16 backward's, softmax_tile_bf16's exp
      for (int64_t i = 0; i < nr * nc; ++i) {
        const double want = std::exp(double(x[size_t(i)] - shift[size_t(i / nc)]));
        if (std::isnan(want)) {
          REQUIRE(std::isnan(e[size_t(i)]));
          REQUIRE(std::isnan(eb[size_t(i)]));
        } else {
          REQUIRE(std::abs(e[size_t(i)] - want) <= 3e-7 * want);
          REQUIRE(std::abs(eb[size_t(i)] - want) <= 5e-6 * want);
        }
      }
      // softmax_grad_tile_bf16: softmax_grad's bits, and the packings' bits of P and dS
      std::vector<float> P = rand({nr * nc}, g).to_vector<float>(), dP = randn({nr * nc}, g).to_vector<float>();
      std::vector<float> delta = randn({nr}, g).to_vector<float>();
      P[0] = 0.0f, dP[0] = NAN;  // a masked key: its gradient is 0 even where dP is NaN
      std::vector<float> dS = dP, want = dP;
      for (int64_t r = 0; r < nr; ++r)
        bf->softmax_grad(P.data() + r * nc, dP.data() + r * nc, delta[size_t(r)], want.data() + r * nc, nc);
      const int64_t ldr = (nc + 1) / 2, ldt = (nc + 15) / 16 * 16, pr = (nr + 1) / 2;
      std::vector<uint32_t> dSr(static_cast<size_t>(nr * ldr)), Pt(static_cast<size_t>(pr * ldt)), dSt(Pt.size());
      bf->softmax_grad_tile_bf16(P.data(), dS.data(), delta.data(), nr, nc, dSr.data(), ldr, Pt.data(), dSt.data(), ldt,
                                 true);
      CHECK(dS[0] == 0.0f);
      for (int64_t i = 0; i < nr * nc; ++i) REQUIRE(bits_of(dS[size_t(i)]) == bits_of(want[size_t(i)]));
      std::vector<uint32_t> dSr2(dSr.size()), Pt2(Pt.size()), dSt2(Pt.size());
      bf->pack_bf16_rows(want.data(), nc, nr, nc, dSr2.data(), ldr);
      bf->pack_bf16_pairs(P.data(), nc, nr, nc, Pt2.data(), ldt);
      bf->pack_bf16_pairs(want.data(), nc, nr, nc, dSt2.data(), ldt);
      CHECK(dSr == dSr2);
      CHECK(Pt == Pt2);
      CHECK(dSt == dSt2);
      // Without store_dS: the same copies, dP left as it was
      std::vector<float> dP2 = dP;
      std::vector<uint32_t> dSr3(dSr.size()), Pt3(Pt.size()), dSt3(Pt.size());
      bf->softmax_grad_tile_bf16(P.data(), dP2.data(), delta.data(), nr, nc, dSr3.data(), ldr, Pt3.data(), dSt3.data(),
                                 ldt, false);
      for (int64_t i = 0; i < nr * nc; ++i) REQUIRE(bits_of(dP2[size_t(i)]) == bits_of(dP[size_t(i)]));
      CHECK(dSr3 == dSr2);
      CHECK(Pt3 == Pt2);
      CHECK(dSt3 == dSt2);
    }
  // The weights' exp at the ends of its range (x <= 0): through the subnormals to exactly 0, NaN kept.
  const std::vector<float> xs = {0.0f, -1e-3f, -0.5f, -87.0f, -90.0f, -100.0f, -103.9f, -110.0f, -200.0f, -INFINITY, NAN};
  std::vector<float> zero(xs.size(), 0.0f), e(xs.size());
  bf->exp_tile_bf16(xs.data(), 1, int64_t(xs.size()), zero.data(), e.data());
  for (size_t i = 0; i < xs.size(); ++i) {
    INFO("x ", xs[i]);
    const double want = std::exp(double(xs[i]));
    if (std::isnan(want)) CHECK(std::isnan(e[i]));
    else CHECK(std::abs(e[i] - want) <= 5e-6 * want + 1.5e-45);  // within a subnormal step
  }
  CHECK(e[9] == 0.0f);
}

TEST_CASE("autocast attention: bfloat16 tiles within 1 % of float32 forward and backward, the float32 op where there are none") {
  struct Variant {
    const char* name;
    bool causal, padding, bias, grouped, selective;
    double dropout;
  };
  for_each_isa([&](const std::string& isa) {
    const bool bf16 = kernels::table().gemm_bf16 != nullptr;
    for (Variant v : {Variant{"plain", false, false, false, false, false, 0.0}, {"causal", true, false, false, false, false, 0.0},
                      {"padding+bias", false, true, true, false, false, 0.0}, {"grouped", true, false, false, true, false, 0.0},
                      {"selective", true, false, false, false, true, 0.0}, {"dropout", false, false, false, false, false, 0.2}}) {
      const std::string name = v.name;
      INFO(isa, " ", name);
      Generator g(21);
      const int64_t B = 2, H = 4, G = v.grouped ? 2 : 4, I = 70, J = 70, D = 32;
      Tensor q = randn({B, H, I, D}, g), k = randn({B, G, J, D}, g), vv = randn({B, G, J, D}, g), go = randn({B, H, I, D}, g);
      AttentionOptions o;
      o.causal = v.causal, o.selective = v.selective, o.dropout = v.dropout;
      if (v.padding) {
        std::vector<bool> keep;
        for (int64_t j = 0; j < B * J; ++j) keep.push_back(j % 5 != 0);
        o.key_padding_mask = tensor(keep).view({B, J});
      }
      if (v.bias) o.bias = randn({H, I, J}, g);
      auto run = [&](bool autocast) {
        std::vector<Tensor> in = {q.detach().requires_grad_(), k.detach().requires_grad_(), vv.detach().requires_grad_()};
        AttentionOptions oo = o;
        if (v.bias) oo.bias = o.bias.detach().requires_grad_(), in.push_back(oo.bias);
        Generator dropout_gen(5);
        oo.generator = &dropout_gen;
        Tensor out;
        {
          AutocastGuard guard(autocast);
          out = attention(in[0], in[1], in[2], oo);
        }
        out.backward(go);  // the backward runs in the forward's precision
        std::vector<Tensor> all = {out};
        for (const Tensor& t : in) all.push_back(t.grad());
        return all;
      };
      const std::vector<Tensor> ref = run(false), got = run(true);
      const char* what[] = {"out", "dq", "dk", "dv", "dbias"};
      for (size_t i = 0; i < ref.size(); ++i) {
        const std::string grad = what[i];
        INFO(grad);
        const std::pair<double, double> e = relative_errors(got[i], ref[i]);
        const double rel = e.first, rel_max = e.second;  // (no structured bindings: clang 14 and doctest's lambdas)
        if (!bf16) {
          CHECK(got[i].to_vector<float>() == ref[i].to_vector<float>());  // the exact float32 op
          continue;
        }
        MESSAGE(isa, " ", name, " ", grad, ": relative error ", rel, ", largest ", rel_max, " of the largest value");
        CHECK(rel <= 1e-2);      // bfloat16 keeps 8 bits: about 0.4 % per rounded input
        CHECK(rel_max <= 3e-2);
        CHECK(rel > 1e-5);       // it did round
      }
    }
  });
}

TEST_CASE("autocast linear against float32: about 0.24 % relative error forward and backward (bound 0.5 %)") {
  // The figure docs/training.md quotes: random normal inputs, 512 x 256 -> 256.
  Generator g(12);
  Tensor x = randn({512, 256}, g).requires_grad_(), w = (randn({256, 256}, g) * 0.05f).requires_grad_();
  Tensor go = randn({512, 256}, g);
  Tensor y32 = linear(x, w);
  y32.backward(go);
  const Tensor dx32 = x.grad().clone(), dw32 = w.grad().clone();
  x.grad().zero_(), w.grad().zero_();
  Tensor y16;
  {
    AutocastGuard autocast;
    y16 = linear(x, w);
    y16.backward(go);
  }
  const Tensor got[] = {y16, x.grad(), w.grad()}, want[] = {y32, dx32, dw32};
  const char* what[] = {"forward", "dx", "dw"};
  for (int i = 0; i < 3; ++i) {
    const std::pair<double, double> e = relative_errors(got[i], want[i]);
    const std::string name = what[i];
    INFO(name);
    MESSAGE("linear ", name, ": relative error ", e.first, ", largest ", e.second, " of the largest value");
    CHECK(e.first <= 5e-3);
    CHECK(e.second <= 1e-2);
    CHECK(e.first > 1e-4);  // it did round
  }
}
