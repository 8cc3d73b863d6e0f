// The fused attention op against a naive one built from materialised ops
// (scores, masked softmax, weights · v), forward and every gradient, for
// every combination of mask, bias, selective, grouped heads and i < j.
#include <omp.h>

#include <cmath>
#include <string>

#include <loom/ops/kernels/kernels.h>

#include "attention_reference.h"
#include "helpers.h"

using namespace loom;
using loom::reference::naive_attention;

namespace {
using Inputs = std::vector<Tensor>;
}  // namespace

namespace {
struct Case {
  std::string mask, bias;
  bool selective, grouped, shorter;
};

struct Made {
  Tensor q, k, v;
  AttentionOptions o;
};

Made make_case(const Case& c, uint64_t seed) {
  Generator g(seed);
  const int64_t B = 2, H = 4, G = c.grouped ? 2 : 4, I = c.shorter ? 37 : 70, J = 70, D = 16, Dv = 12;
  Made m;
  m.q = randn({B, H, I, D}, g).requires_grad_();
  m.k = randn({B, G, J, D}, g).requires_grad_();
  m.v = randn({B, G, J, Dv}, g).requires_grad_();
  if (c.mask == "key_padding") {
    // Sample 0 loses every third key and the whole second key block (a tile
    // the kernel skips); sample 1 loses all: its outputs must be 0.
    std::vector<bool> keep;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < J; ++j) keep.push_back(b == 0 && j % 3 != 0 && j < 64);
    m.o.key_padding_mask = tensor(keep).view({B, J});
  } else if (c.mask == "full") {
    Tensor full = lt(rand({B, H, I, J}, g), scalar_tensor(0.7));
    full.select(0, 1).select(0, 2).select(0, 5).fill_(0);  // one row with nothing to attend to
    // A hidden 64 × 64 tile (skipped) before visible keys, in the sample that
    // writes a shared bias's gradient first.
    full.select(0, 0).select(0, 1).narrow(0, 0, std::min<int64_t>(I, 64)).narrow(1, 0, 64).fill_(0);
    m.o.attn_mask = full;
  } else if (c.mask == "causal") {
    m.o.causal = true;
  }
  if (c.bias == "shared") m.o.bias = randn({H, I, J}, g).requires_grad_();
  if (c.bias == "per_batch") m.o.bias = randn({B, H, I, J}, g).requires_grad_();
  m.o.selective = c.selective;
  return m;
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (const char* mask : {"none", "key_padding", "full", "causal"})
    for (const char* bias : {"none", "shared", "per_batch"})
      for (bool selective : {false, true})
        for (bool grouped : {false, true})
          for (bool shorter : {false, true}) {
            if (selective && std::string(mask) != "causal") continue;  // selective needs causal
            cases.push_back({mask, bias, selective, grouped, shorter});
          }
  return cases;
}

std::vector<Tensor> grads_of(const Made& m, const Tensor& out, const Tensor& dout) {
  for (const Tensor& t : {m.q, m.k, m.v, m.o.bias})
    if (t.defined()) t.mutable_grad() = Tensor();
  out.backward(dout);
  std::vector<Tensor> g = {m.q.grad(), m.k.grad(), m.v.grad()};
  if (m.o.bias.defined()) g.push_back(m.o.bias.grad());
  return g;
}

std::vector<double> as_double(const Tensor& t) {
  std::vector<double> v;
  for (float x : t.to_vector<float>()) v.push_back(x);
  return v;
}
}  // namespace

TEST_CASE("fused attention equals the naive one, forward and every gradient, in every combination" *
          doctest::test_suite("thread-sweep")) {
  std::vector<Case> cases = all_cases();
  CHECK(cases.size() == 60);
  // 1 thread takes the one-pass backward wherever it can, 8 threads (more
  // than (batch, kv head) units to share) the two-pass one: both are checked.
  for (int threads : kThreadCounts) {
  WithThreads with(threads);
  CAPTURE(threads);
  uint64_t seed = 100;
  for (const Case& c : cases) {
    CAPTURE(c.mask);
    CAPTURE(c.bias);
    CAPTURE(c.selective);
    CAPTURE(c.grouped);
    CAPTURE(c.shorter);
    Made m = make_case(c, seed++);
    Tensor fused = attention(m.q, m.k, m.v, m.o);
    Tensor naive = naive_attention(m.q, m.k, m.v, m.o);
    REQUIRE(fused.sizes() == naive.sizes());
    CHECK(close_or_same(fused.to_vector<float>(), as_double(naive), 1e-5, 1e-4));
    Generator g(seed);
    Tensor dout = randn(fused.sizes(), g);
    std::vector<Tensor> gf = grads_of(m, fused, dout), gn = grads_of(m, naive, dout);
    for (size_t i = 0; i < gf.size(); ++i) {
      CAPTURE(i);  // 0 q, 1 k, 2 v, 3 bias
      REQUIRE(gf[i].defined());
      CHECK(gf[i].sizes() == gn[i].sizes());
      CHECK(close_or_same(gf[i].to_vector<float>(), as_double(gn[i]), 1e-4, 1e-3));
    }
  }
  }
}

TEST_CASE("a query with nothing to attend to gives zeros, never NaN") {
  Made m = make_case({"key_padding", "shared", false, false, false}, 7);
  Tensor out = attention(m.q, m.k, m.v, m.o);
  std::vector<float> sample1 = out.select(0, 1).contiguous().to_vector<float>();
  for (float x : sample1) REQUIRE(x == 0.0f);
  out.sum().backward();
  for (const Tensor& g : {m.q.grad(), m.k.grad(), m.v.grad(), m.o.bias.grad()})
    for (float x : g.to_vector<float>()) REQUIRE(std::isfinite(x));
  for (float x : m.q.grad().select(0, 1).contiguous().to_vector<float>()) REQUIRE(x == 0.0f);
  // Causal with more queries than keys: the first queries see nothing.
  Generator g(8);
  Tensor q = randn({1, 1, 5, 4}, g), k = randn({1, 1, 3, 4}, g), v = randn({1, 1, 3, 4}, g);
  AttentionOptions o;
  o.causal = true;
  Tensor early = attention(q, k, v, o).select(2, 0);  // query 0 sees keys c <= 0 + (3 - 5): none
  CHECK(early.sum().item<float>() == 0.0f);
}

TEST_CASE("attention gradcheck on small shapes") {
  for (const Case& c : {Case{"none", "shared", false, false, false}, Case{"causal", "per_batch", true, true, true},
                        Case{"full", "per_batch", false, true, false}, Case{"key_padding", "none", false, false, true}}) {
    CAPTURE(c.mask);
    CAPTURE(c.selective);
    Generator g(9);
    AttentionOptions o;
    o.causal = c.mask == "causal";
    o.selective = c.selective;
    const int64_t B = 1, H = 2, G = c.grouped ? 1 : 2, I = c.shorter ? 3 : 5, J = 5, D = 3;
    if (c.mask == "key_padding") o.key_padding_mask = tensor(std::vector<bool>{true, false, true, true, false}).view({1, 5});
    if (c.mask == "full") o.attn_mask = lt(rand({B, H, I, J}, g), scalar_tensor(0.7));
    Inputs in = {randn({B, H, I, D}, g).requires_grad_(), randn({B, G, J, D}, g).requires_grad_(),
                 randn({B, G, J, D}, g).requires_grad_()};
    if (c.bias != "none") in.push_back(randn(c.bias == "shared" ? Shape{H, I, J} : Shape{B, H, I, J}, g).requires_grad_());
    CHECK_GRADCHECK(
        [o](const Inputs& x) {
          AttentionOptions oo = o;
          if (x.size() > 3) oo.bias = x[3];
          return attention(x[0], x[1], x[2], oo);
        },
        in);
  }
}

TEST_CASE("attention weights, dropout from the generator, strided inputs, scale") {
  Generator g(10);
  Tensor q = randn({2, 2, 9, 8}, g), k = randn({2, 2, 11, 8}, g), v = randn({2, 2, 11, 8}, g);
  AttentionOptions o;
  o.causal = true;
  AttentionResult r = attention_with_weights(q, k, v, o);
  REQUIRE(r.weights.sizes() == Shape{2, 2, 9, 11});
  // Rows sum to 1 and matmul(weights, v) is the output.
  for (float s : r.weights.sum({-1}).to_vector<float>()) CHECK(s == doctest::Approx(1.0).epsilon(1e-5));
  CHECK(close_or_same(r.out.to_vector<float>(), as_double(matmul(r.weights, v)), 1e-5, 1e-4));
  // A custom scale, and q from a [b, i, h, d] layout (a transposed view).
  o.scale = 0.5;
  Tensor q_bihd = randn({2, 9, 2, 8}, g);
  CHECK(close_or_same(attention(q_bihd.transpose(1, 2), k, v, o).to_vector<float>(),
                      as_double(naive_attention(q_bihd.transpose(1, 2), k, v, o)), 1e-5, 1e-4));
  // Dropout: weight (b, h, r, c) is kept by the same Philox numbers dropout() uses for that element.
  AttentionOptions d;
  d.dropout = 0.25;
  Generator g1(77), g2(77);
  d.generator = &g1;
  Tensor dropped = attention(q, k, v, d);
  Tensor keep = dropout(ones({2, 2, 9, 11}), 0.25, true, &g2);
  Tensor expected = matmul(attention_with_weights(q, k, v, {}).weights * keep, v);
  CHECK(close_or_same(dropped.to_vector<float>(), as_double(expected), 1e-5, 1e-4));
  // ...and its gradient is right (a fresh generator per call gives the same mask).
  CHECK_GRADCHECK(
      [](const Inputs& x) {
        Generator gen(5);
        AttentionOptions od;
        od.dropout = 0.3;
        od.generator = &gen;
        return attention(x[0], x[1], x[2], od);
      },
      {randn({1, 2, 4, 3}, g).requires_grad_(), randn({1, 2, 5, 3}, g).requires_grad_(), randn({1, 2, 5, 3}, g).requires_grad_()});
}

TEST_CASE("attention gives the same bits for 1, 2 and 8 threads, one-pass and two-pass backward alike" *
          doctest::test_suite("thread-sweep")) {
  // Shared bias: always two passes. Per-batch bias: one pass for 1 and 2
  // threads (B * G = 4 units), two passes for 8.
  for (const Case& c : {Case{"causal", "shared", true, true, false}, Case{"key_padding", "per_batch", false, true, true}}) {
  CAPTURE(c.bias);
  Made m = make_case(c, 11);
  std::vector<std::vector<float>> runs;
  for (int threads : kThreadCounts) {
    WithThreads with(threads);
    CAPTURE(threads);
    Tensor out = attention(m.q, m.k, m.v, m.o), naive = naive_attention(m.q, m.k, m.v, m.o);
    CHECK(close_or_same(out.to_vector<float>(), as_double(naive), 1e-5, 1e-4));
    std::vector<Tensor> gf = grads_of(m, out, ones_like(out)), gn = grads_of(m, naive, ones_like(naive));
    std::vector<float> all = out.to_vector<float>();
    for (size_t i = 0; i < gf.size(); ++i) {
      CHECK(close_or_same(gf[i].to_vector<float>(), as_double(gn[i]), 1e-4, 1e-3));
      auto x = gf[i].to_vector<float>();
      all.insert(all.end(), x.begin(), x.end());
    }
    runs.push_back(all);
  }
  CHECK(runs[0] == runs[1]);
  CHECK(runs[0] == runs[2]);
  }
}

TEST_CASE("attention errors name the shapes") {
  Tensor q = ones({1, 4, 3, 8}), k = ones({1, 3, 5, 8}), v = ones({1, 2, 5, 8});
  CHECK_THROWS_WITH_AS(attention(q, k, k), "attention: query heads (4) must be a multiple of key/value heads (3)", Error);
  CHECK_THROWS_WITH_AS(attention(q, v, ones({1, 2, 4, 8})), doctest::Contains("must have the same heads and length"), Error);
  AttentionOptions o;
  o.selective = true;
  CHECK_THROWS_WITH_AS(attention(q, v, v, o), "attention: selective attention needs causal = true (as in x-transformers)",
                       Error);
  AttentionOptions m;
  m.key_padding_mask = ones({1, 4}, kBool);
  CHECK_THROWS_WITH_AS(attention(q, v, v, m), "attention: key_padding_mask must be bool [b, j] = [1, 5], got bool [1, 4]",
                       Error);
  AttentionOptions b;
  b.bias = ones({2, 3, 5});
  CHECK_THROWS_WITH_AS(attention(q, v, v, b), doctest::Contains("attention: shapes [2, 3, 5] and [1, 4, 3, 5]"), Error);
  AttentionOptions f;
  f.attn_mask = ones({3, 5});
  CHECK_THROWS_WITH_AS(attention(q, v, v, f), "attention: attn_mask must be bool (True = attend), got float32", Error);
}

namespace {
// Sets one element of a leaf tensor (no grad recorded).
void poke(const Tensor& t, const Shape& at, float value) {
  NoGradGuard no_grad;
  Tensor e = t;
  for (int64_t d : at) e = e.select(0, d);
  e.fill_(value);
}

bool any_nan(const std::vector<float>& x) {
  for (float v : x)
    if (std::isnan(v)) return true;
  return false;
}
}  // namespace

TEST_CASE("attention propagates NaN in q, k, v, bias and positions as the naive computation does, "
          "fully masked rows stay exact zeros") {
  // i = j = 70: two key blocks. Row (h 1, r 5) sees no key at all.
  const int64_t B = 1, H = 2, I = 70, J = 70, D = 8;
  auto make = [&](uint64_t seed) {
    Generator g(seed);
    Made m;
    m.q = randn({B, H, I, D}, g).requires_grad_();
    m.k = randn({B, H, J, D}, g).requires_grad_();
    m.v = randn({B, H, J, D}, g).requires_grad_();
    m.o.bias = randn({H, I, J}, g).requires_grad_();
    Tensor mask = lt(rand({B, H, I, J}, g), scalar_tensor(0.8));
    mask.select(0, 0).select(0, 1).select(0, 5).fill_(0);
    mask.select(0, 0).select(0, 0).select(0, 9).select(0, 20).fill_(0);  // (h 0, r 9) does not see key 20
    mask.select(0, 0).select(0, 0).select(0, 7).select(0, 20).fill_(1);  // (h 0, r 7) does
    m.o.attn_mask = mask;
    return m;
  };
  // Fused and naive agree, NaN for NaN; the fully masked row is exact zeros
  // in the output and in dq (the naive one turns it NaN when v holds a NaN:
  // 0 · NaN in the weights · v product).
  auto compare = [&](Made& m, bool grads) {
    Tensor fused = attention(m.q, m.k, m.v, m.o), naive = naive_attention(m.q, m.k, m.v, m.o);
    Tensor dout = ones_like(fused);
    std::vector<float> f = fused.to_vector<float>();
    std::vector<double> n = as_double(naive);
    for (int64_t d = 0; d < D; ++d) {
      const size_t e = size_t(((0 * H + 1) * I + 5) * D + d);
      CHECK(f[e] == 0.0f);
      n[e] = 0.0;
    }
    CHECK(close_or_same(f, n, 1e-5, 1e-4));
    std::vector<Tensor> gf = grads_of(m, fused, dout);
    for (float x : gf[0].select(0, 0).select(0, 1).select(0, 5).contiguous().to_vector<float>()) CHECK(x == 0.0f);
    if (grads) {
      std::vector<Tensor> gn = grads_of(m, naive, dout);
      for (size_t i = 0; i < gf.size(); ++i) {
        CAPTURE(i);  // 0 q, 1 k, 2 v, 3 bias
        CHECK(close_or_same(gf[i].to_vector<float>(), as_double(gn[i]), 1e-4, 1e-3));
      }
    }
    return f;
  };
  auto row = [&](const std::vector<float>& out, int64_t h, int64_t r) {
    return std::vector<float>(out.begin() + (h * I + r) * D, out.begin() + (h * I + r + 1) * D);
  };

  SUBCASE("NaN in one query: that row is NaN, the others are not") {
    Made m = make(1);
    poke(m.q, {0, 0, 3, 2}, NAN);
    std::vector<float> out = compare(m, true);
    CHECK(any_nan(row(out, 0, 3)));
    CHECK(!any_nan(row(out, 0, 4)));
    CHECK(!any_nan(row(out, 1, 3)));
  }
  SUBCASE("NaN in a key of the second block: every row that sees it") {
    Made m = make(2);
    poke(m.k, {0, 0, 66, 0}, NAN);
    std::vector<float> out = compare(m, true);
    const std::vector<bool> sees = m.o.attn_mask.select(0, 0).select(0, 0).select(1, 66).to_vector<bool>();
    for (int64_t r = 0; r < I; ++r) CHECK(any_nan(row(out, 0, r)) == bool(sees[size_t(r)]));
  }
  SUBCASE("NaN in a value: the rows that see it, and where the weight is 0, as 0 · NaN is NaN") {
    Made m = make(3);
    poke(m.v, {0, 1, 10, 2}, NAN);
    std::vector<float> out = compare(m, false);
    CHECK(std::isnan(row(out, 1, 0)[2]));
    CHECK(!std::isnan(row(out, 1, 0)[1]));
  }
  SUBCASE("NaN in a visible bias entry: that row; NaN or +inf where masked: nothing") {
    Made m = make(4);
    poke(m.o.bias, {0, 7, 20}, NAN);       // visible
    poke(m.o.bias, {0, 9, 20}, NAN);       // masked
    poke(m.o.bias, {1, 5, 3}, INFINITY);  // in the fully masked row
    std::vector<float> out = compare(m, true);
    CHECK(any_nan(row(out, 0, 7)));
    CHECK(!any_nan(row(out, 0, 9)));
    CHECK(!any_nan(row(out, 0, 8)));
  }
  SUBCASE("NaN in a position: the ALiBi bias it makes spreads it like the naive computation") {
    Made m = make(5);
    nn::AlibiPositionalBias alibi({.heads = H});
    std::vector<float> pos(static_cast<size_t>(J));
    for (int64_t j = 0; j < J; ++j) pos[size_t(j)] = float(j) * 0.5f;
    pos[30] = NAN;
    m.o.bias = alibi.forward(from_vector(pos, {B, J})).detach().requires_grad_();  // (b, h, n, n)
    std::vector<float> out = compare(m, true);
    CHECK(any_nan(row(out, 0, 30)));  // position 30's own row sees only NaN distances
  }
}

TEST_CASE("softmax_tile and exp_tile, the attention tile's softmax kernels, against double at this ISA") {
  // With masked logits, a row with nothing visible, a NaN row and running
  // statistics from an earlier tile; the output rows rescaled (or not).
  const kernels::Table& k = kernels::table();
  CAPTURE(k.name);
  Generator g(5);
  for (int64_t nr : {64, 17, 1})
    for (int64_t nc : {64, 33, 1, 17})
      for (int64_t dv : {64, 12}) {
        INFO("nr ", nr, " nc ", nc, " dv ", dv);
        const TileLogits tl = tile_logits(nr, nc, g);
        const std::vector<float>&x = tl.x, &m0 = tl.m0, &l0 = tl.l0;
        std::vector<float> o0 = randn({nr * dv}, g).to_vector<float>();
        for (int64_t r = 0; r < nr; ++r)  // a row nothing was seen in yet is 0 (kernels.h: it may be left as it is)
          if (m0[size_t(r)] == -INFINITY) std::fill(o0.begin() + r * dv, o0.begin() + (r + 1) * dv, 0.0f);
        std::vector<float> m = m0, l = l0, y(static_cast<size_t>(nr * nc), 7.0f), o = o0;
        k.softmax_tile(x.data(), nr, nc, m.data(), l.data(), y.data(), o.data(), dv);
        for (int64_t r = 0; r < nr; ++r) {
          INFO("row ", r);
          double mx = m0[size_t(r)];
          bool nan = false;
          for (int64_t c = 0; c < nc; ++c)
            mx = std::max(mx, double(x[size_t(r * nc + c)])), nan = nan || std::isnan(x[size_t(r * nc + c)]);
          if (nan) {
            CHECK(std::isnan(m[size_t(r)]));
            CHECK(std::isnan(l[size_t(r)]));
            CHECK(std::isnan(o[size_t(r * dv)]));
            continue;
          }
          if (mx == -INFINITY) {  // nothing visible yet: weights 0, statistics and output unchanged
            CHECK(m[size_t(r)] == -INFINITY);
            CHECK(l[size_t(r)] == 0.0f);
            for (int64_t c = 0; c < nc; ++c) CHECK(y[size_t(r * nc + c)] == 0.0f);
            for (int64_t d = 0; d < dv; ++d) CHECK(o[size_t(r * dv + d)] == o0[size_t(r * dv + d)]);
            continue;
          }
          CHECK(m[size_t(r)] == float(mx));
          const double a = std::exp(double(m0[size_t(r)] - float(mx)));
          double sum = 0;
          for (int64_t c = 0; c < nc; ++c) {
            const double want = std::exp(double(x[size_t(r * nc + c)] - float(mx)));  // exactly 0 when masked
            sum += want;
            REQUIRE(std::abs(y[size_t(r * nc + c)] - want) <= 3e-7 * want);
          }
          const double lw = double(l0[size_t(r)]) * a + sum;
          CHECK(std::abs(l[size_t(r)] - lw) <= 1e-6 * lw);
          for (int64_t d = 0; d < dv; ++d) {
            const double want = double(o0[size_t(r * dv + d)]) * a;
            REQUIRE(std::abs(o[size_t(r * dv + d)] - want) <= 4e-7 * std::abs(want) + 1e-37);
          }
        }
        // exp_tile: the backward's weights exp(x − lse)
        std::vector<float> shift(static_cast<size_t>(nr)), e(static_cast<size_t>(nr * nc));
        for (int64_t r = 0; r < nr; ++r) shift[size_t(r)] = float(r) * 0.5f - 3.0f;
        k.exp_tile(x.data(), nr, nc, shift.data(), e.data());
        for (int64_t i = 0; i < nr * nc; ++i) {
          const double want = std::exp(double(x[size_t(i)] - shift[size_t(i / nc)]));
          if (std::isnan(want)) REQUIRE(std::isnan(e[size_t(i)]));
          else REQUIRE(std::abs(e[size_t(i)] - want) <= 3e-7 * want);
        }
      }
  // Past the float range: e^x underflows through the subnormals to 0 and overflows to inf.
  std::vector<float> xs = {-87.0f, -90.0f, -100.0f, -103.9f, -104.0f, -200.0f, -INFINITY, 88.0f, 88.7f, 89.0f, 100.0f, INFINITY};
  std::vector<float> zero(xs.size(), 0.0f), e(xs.size());
  k.exp_tile(xs.data(), 1, int64_t(xs.size()), zero.data(), e.data());
  for (size_t i = 0; i < xs.size(); ++i) {
    INFO("x ", xs[i]);
    const double want = std::exp(double(xs[i]));
    if (want > 3.4028234663852886e38) CHECK(std::isinf(e[i]));
    else CHECK(std::abs(e[i] - want) <= 3e-7 * want + 1.5e-45);  // within a subnormal step
  }
}
