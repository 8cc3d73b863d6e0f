// nn::Module basics and the position encodings of nn/positional.h, each
// against a plain double-precision reference written from the formula.
#include "attention_reference.h"
#include "helpers.h"

#include <loom/nn/positional.h>

#include <cmath>

using namespace loom;
using namespace loom::nn;

namespace {
using Inputs = std::vector<Tensor>;

// T5's bucket, written out again in double (the float32 log of the library
// agrees at every integer distance below, including the exact boundaries).
int64_t t5_bucket(int64_t rel, bool causal, int64_t nb, int64_t md) {
  int64_t n = -rel, ret = 0;
  if (causal) {
    n = std::max<int64_t>(n, 0);
  } else {
    nb /= 2;
    if (n < 0) ret = nb;
    n = std::abs(n);
  }
  const int64_t me = nb / 2;
  if (n < me) return ret + n;
  const double large = std::log(double(n) / me) / std::log(double(md) / me) * double(nb - me);
  return ret + std::min<int64_t>(me + int64_t(large), nb - 1);
}

struct Toy : Module {
  Tensor w, b;
  std::shared_ptr<Embedding> emb;
  Toy() {
    w = register_parameter("weight", randn({3, 2}));
    b = register_buffer("steps", zeros({1}));
    register_buffer("cache", zeros({4}), false);
    emb = register_module("emb", std::make_shared<Embedding>(5, 2));
  }
  void twice() { register_parameter("weight", zeros({1})); }
};
}  // namespace

TEST_CASE("Module: dotted names, buffers, parameter count, train/eval, duplicate names") {
  Toy toy;
  NamedTensors params = toy.named_parameters();
  REQUIRE(params.size() == 2);
  CHECK(params[0].first == "weight");
  CHECK(params[1].first == "emb.weight");
  CHECK(params[0].second.requires_grad());
  // The registered handle is the member: an in-place update shows in both.
  params[0].second.detach().fill_(2.0);
  CHECK(toy.w.to_vector<float>() == std::vector<float>(6, 2.0f));
  CHECK(toy.num_parameters() == 6 + 10);
  NamedTensors buffers = toy.named_buffers();  // non-persistent "cache" is not state
  REQUIRE(buffers.size() == 1);
  CHECK(buffers[0].first == "steps");
  CHECK(toy.state_dict().size() == 3);
  CHECK(toy.is_training());
  CHECK(toy.emb->is_training());
  toy.eval();
  CHECK(!toy.is_training());
  CHECK(!toy.emb->is_training());
  CHECK_THROWS_WITH_AS(toy.twice(), "Module: 'weight' is registered twice", Error);
}

TEST_CASE("Embedding module: N(0,1) init, padding_idx row zero and without gradient") {
  manual_seed(3);
  Embedding emb(50, 40, 7);
  std::vector<float> w = emb.weight.to_vector<float>();
  double mean = 0, sq = 0;
  for (float x : w) mean += x / double(w.size()), sq += double(x) * x / double(w.size());
  CHECK(std::abs(mean) < 0.05);
  CHECK(std::abs(sq - 1.0) < 0.1);
  CHECK(abs(emb.weight.select(0, 7)).sum().item<float>() == 0.0f);
  Tensor ids = tensor(std::vector<int64_t>{7, 1, 7});
  emb.forward(ids).sum().backward();
  CHECK(abs(emb.weight.grad().select(0, 7)).sum().item<float>() == 0.0f);
  CHECK(emb.weight.grad().select(0, 1).sum().item<float>() == 40.0f);
  CHECK_THROWS_WITH_AS(Embedding(4, 2, 4), "Embedding: padding_idx 4 out of range for 4 embeddings", Error);
}

TEST_CASE("T5 buckets match the formula for every distance, causal and bidirectional") {
  for (bool causal : {true, false}) {
    for (auto sizes : std::vector<std::pair<int64_t, int64_t>>{{32, 128}, {16, 64}, {8, 20}}) {
      const int64_t nb = sizes.first, md = sizes.second;
      CAPTURE(causal);
      CAPTURE(nb);
      Tensor rel = arange(-300, 301);
      std::vector<int64_t> got = RelativePositionBias::bucket(rel, causal, nb, md).to_vector<int64_t>();
      std::vector<int64_t> want;
      for (int64_t r = -300; r <= 300; ++r) want.push_back(t5_bucket(r, causal, nb, md));
      CHECK(got == want);
      // Sanity of the scheme itself: buckets stay in range and grow with distance into the past.
      for (size_t k = 0; k < got.size(); ++k) CHECK((got[k] >= 0 && got[k] < nb));
      for (int64_t r = -1; r >= -300; --r) CHECK(got[size_t(r + 300)] >= got[size_t(r + 301)]);
    }
  }
  // Causal: every future key shares bucket 0 with distance 0; bidirectional
  // gives the future its own half.
  Tensor future = tensor(std::vector<int64_t>{0, 1, 5, 100});
  CHECK(RelativePositionBias::bucket(future, true, 32, 128).to_vector<int64_t>() == std::vector<int64_t>{0, 0, 0, 0});
  for (int64_t b : RelativePositionBias::bucket(future.narrow(0, 1, 3), false, 32, 128).to_vector<int64_t>())
    CHECK(b >= 16);
}

TEST_CASE("RelativePositionBias: (h, i, j) = scale * E[bucket, h], right-aligned, explicit positions, gradient") {
  manual_seed(5);
  for (bool causal : {true, false}) {
    CAPTURE(causal);
    RelativePositionBias rpb({.scale = 8.0, .causal = causal, .num_buckets = 16, .max_distance = 40, .heads = 3});
    CHECK(rpb.named_parameters()[0].first == "relative_attention_bias.weight");
    const int64_t i = 5, j = 70;
    Tensor bias = rpb.forward(i, j);
    REQUIRE(bias.sizes() == Shape{3, i, j});
    std::vector<float> E = rpb.relative_attention_bias->weight.to_vector<float>(), got = bias.to_vector<float>();
    std::vector<double> want;
    for (int64_t h = 0; h < 3; ++h)
      for (int64_t q = 0; q < i; ++q)
        for (int64_t k = 0; k < j; ++k) want.push_back(8.0 * E[size_t(t5_bucket(k - (j - i + q), causal, 16, 40) * 3 + h)]);
    CHECK(close_or_same(got, want, 1e-6, 1e-6));
    // The last i rows of the square bias; explicit positions give the same.
    CHECK(bias.to_vector<float>() == rpb.forward(j, j).narrow(1, j - i, i).contiguous().to_vector<float>());
    CHECK(bias.to_vector<float>() == rpb.forward(arange(j - i, j), arange(j)).to_vector<float>());
    // dE[b, h] = scale * sum of the upstream gradient over the (q, k) in bucket b.
    Generator g(6);
    Tensor gy = randn({3, i, j}, g);
    rpb.forward(i, j).backward(gy);
    std::vector<double> dE(16 * 3, 0.0);
    std::vector<float> G = gy.to_vector<float>();
    for (int64_t h = 0; h < 3; ++h)
      for (int64_t q = 0; q < i; ++q)
        for (int64_t k = 0; k < j; ++k)
          dE[size_t(t5_bucket(k - (j - i + q), causal, 16, 40) * 3 + h)] += 8.0 * G[size_t((h * i + q) * j + k)];
    CHECK(close_or_same(rpb.relative_attention_bias->weight.grad().to_vector<float>(), dE, 1e-4, 1e-5));
  }
}

TEST_CASE("RelativePositionBias: a separate bidirectional instance for cross-attention") {
  manual_seed(7);
  RelativePositionBias self_bias({.scale = 1.0, .causal = true, .num_buckets = 32, .max_distance = 128, .heads = 2});
  RelativePositionBias cross_bias({.scale = 1.0, .causal = false, .num_buckets = 32, .max_distance = 128, .heads = 2});
  // Separate tables: training one leaves the other alone.
  CHECK(self_bias.relative_attention_bias->weight.data_ptr<float>() !=
        cross_bias.relative_attention_bias->weight.data_ptr<float>());
  // Decoder step 3 (one query, KV cache) cross-attending to a 6-token
  // source: explicit positions keep the query at 3, not at 5 as
  // right-alignment would.
  Tensor step = cross_bias.forward(tensor(std::vector<int64_t>{3}), arange(6));
  Tensor full = cross_bias.forward(6, 6);
  CHECK(step.to_vector<float>() == full.narrow(1, 3, 1).contiguous().to_vector<float>());
  // The bidirectional instance tells the keys ahead of the query apart; the causal one cannot.
  // (head 0, the one query, keys 3 and 4)
  Tensor causal_row = self_bias.forward(tensor(std::vector<int64_t>{3}), arange(6)).select(0, 0).select(0, 0);
  Tensor cross_row = step.select(0, 0).select(0, 0);
  CHECK(causal_row.select(0, 4).item<float>() == causal_row.select(0, 3).item<float>());
  CHECK(cross_row.select(0, 4).item<float>() != cross_row.select(0, 3).item<float>());
}

TEST_CASE("ALiBi slopes: powers of two and not, as in the paper") {
  for (int64_t H : {1, 2, 4, 8, 16, 3, 5, 6, 12, 20}) {
    CAPTURE(H);
    std::vector<double> s = AlibiPositionalBias::get_slopes(H);
    REQUIRE(int64_t(s.size()) == H);
    // P = largest power of two <= H: slopes 2^(-8(k+1)/P), then 2^(-4(2m+1)/P) for m < H - P.
    int64_t P = 1;
    while (P * 2 <= H) P *= 2;
    for (int64_t k = 0; k < H; ++k) {
      const double want = k < P ? std::pow(2.0, -8.0 * double(k + 1) / double(P))
                                : std::pow(2.0, -4.0 * double(2 * (k - P) + 1) / double(P));
      CHECK(s[size_t(k)] == doctest::Approx(want).epsilon(1e-12));
    }
  }
}

TEST_CASE("ALiBi bias: default positions, a subset of heads, explicit float positions per batch and per head") {
  AlibiPositionalBias alibi({.heads = 6, .total_heads = 8});
  std::vector<double> s = AlibiPositionalBias::get_slopes(6);
  auto ref = [&](const std::vector<double>& pi, const std::vector<double>& pj) {  // (8, i, j)
    std::vector<double> out;
    for (int64_t h = 0; h < 8; ++h)
      for (double a : pi)
        for (double b : pj) out.push_back(h < 6 ? -float(s[size_t(h)]) * std::abs(b - a) : 0.0);
    return out;
  };
  // Right-aligned default: 3 queries at 4, 5, 6 of 7 keys.
  Tensor bias = alibi.forward(3, 7);
  REQUIRE(bias.sizes() == Shape{8, 3, 7});
  CHECK(close_or_same(bias.to_vector<float>(), ref({4, 5, 6}, {0, 1, 2, 3, 4, 5, 6}), 1e-6, 1e-6));
  // Irregular float positions, one set per sample: (b, n) -> (b, h, n, n).
  std::vector<double> p0 = {0.0, 0.5, 3.25, 10.0}, p1 = {-2.0, 7.5, 7.75, 100.0};
  Tensor pos = tensor(std::vector<float>{0.0f, 0.5f, 3.25f, 10.0f, -2.0f, 7.5f, 7.75f, 100.0f}).reshape({2, 4});
  Tensor per_batch = alibi.forward(pos);
  REQUIRE(per_batch.sizes() == Shape{2, 8, 4, 4});
  CHECK(close_or_same(per_batch.select(0, 0).contiguous().to_vector<float>(), ref(p0, p0), 1e-5, 1e-6));
  CHECK(close_or_same(per_batch.select(0, 1).contiguous().to_vector<float>(), ref(p1, p1), 1e-5, 1e-6));
  // (n) positions -> (h, n, n); integer positions work as well.
  CHECK(alibi.forward(tensor(std::vector<int64_t>{0, 1, 2})).to_vector<float>() ==
        alibi.forward(3, 3).to_vector<float>());
  // Per-head positions (b, heads, n).
  AlibiPositionalBias two({.heads = 2});
  Tensor ph = tensor(std::vector<float>{0, 1, 2, 0, 2, 4}).reshape({1, 2, 3});
  Tensor b2 = two.forward(ph);
  REQUIRE(b2.sizes() == Shape{1, 2, 3, 3});
  const double s1 = AlibiPositionalBias::get_slopes(2)[1];
  CHECK(b2.select(1, 1).select(1, 0).select(1, 2).item<float>() == doctest::Approx(-float(s1) * 4.0));
  // Custom slopes, and errors.
  AlibiPositionalBias custom({.heads = 2, .slopes = {0.5, 0.25}});
  CHECK(custom.forward(1, 3).to_vector<float>() == std::vector<float>{-1.0f, -0.5f, 0.0f, -0.5f, -0.25f, 0.0f});
  CHECK_THROWS_WITH_AS(AlibiPositionalBias({.heads = 2, .slopes = {0.5}}),
                       "AlibiPositionalBias: 1 slopes given for 2 heads", Error);
  CHECK_THROWS_WITH_AS(alibi.forward(4, 3), "AlibiPositionalBias: needs 0 <= i <= j for right-aligned queries, got i = 4, j = 3",
                       Error);
}

TEST_CASE("ALiBi at irregular per-batch positions through the fused attention equals the naive oracle") {
  Generator g(8);
  const int64_t b = 2, h = 4, n = 9, d = 8;
  Tensor q = randn({b, h, n, d}, g), k = randn({b, h, n, d}, g), v = randn({b, h, n, d}, g);
  Tensor pos = cumsum(rand({b, n}, g) * 20.0f, 1);  // increasing, irregular gaps
  AlibiPositionalBias alibi({.heads = 3, .total_heads = h});
  AttentionOptions o;
  o.bias = alibi.forward(pos);
  o.causal = true;
  CHECK(all_close(attention(q, k, v, o).to_vector<float>(), reference::naive_attention(q, k, v, o).to_vector<float>(),
                  1e-5f, 1e-4f));
}

namespace {
// Interleaved-pair rotation of the first r features of rows of d, in double.
std::vector<double> rotary_ref(const std::vector<float>& x, int64_t rows, int64_t d, int64_t r,
                               const std::vector<double>& pos_of_row, const std::vector<double>& inv_freq,
                               const std::vector<double>* xpos_scale, double half_max, double scale_base, bool inverse) {
  std::vector<double> out(x.begin(), x.end());
  for (int64_t row = 0; row < rows; ++row) {
    const double t = pos_of_row[size_t(row)];
    for (int64_t p = 0; p < r / 2; ++p) {
      const double th = t * inv_freq[size_t(p)];
      double sc = 1;
      if (xpos_scale) sc = std::pow((*xpos_scale)[size_t(p)], (t - half_max) / scale_base * (inverse ? -1 : 1));
      const double a = x[size_t(row * d + 2 * p)], b = x[size_t(row * d + 2 * p + 1)];
      out[size_t(row * d + 2 * p)] = (a * std::cos(th) - b * std::sin(th)) * sc;
      out[size_t(row * d + 2 * p + 1)] = (b * std::cos(th) + a * std::sin(th)) * sc;
    }
  }
  return out;
}
}  // namespace

TEST_CASE("RotaryEmbedding: interleaved pairs, partial dim, explicit positions, xpos") {
  Generator g(9);
  const int64_t b = 2, h = 3, n = 5, d = 12;
  for (int64_t r : {4, 12}) {
    for (bool xpos : {false, true}) {
      CAPTURE(r);
      CAPTURE(xpos);
      RotaryEmbedding rot({.dim = r, .use_xpos = xpos, .scale_base = 16});
      std::vector<double> inv, xs;
      for (int64_t k = 0; k < r; k += 2) {
        inv.push_back(std::pow(10000.0, -double(k) / double(r)));
        xs.push_back((k + 0.4 * r) / (1.4 * r));
      }
      CHECK(close_or_same(rot.inv_freq.to_vector<float>(), inv, 1e-7, 1e-6));
      // Per-sample explicit positions (b, n), irregular.
      std::vector<float> pv = {0, 1, 2, 3, 4, 3, 7, 8, 20, 21};
      Tensor pos = tensor(pv).reshape({b, n});
      RotaryEmbedding::Output f = rot.forward(pos);
      REQUIRE(f.freqs.sizes() == Shape{b, n, r});
      Tensor x = randn({b, h, n, d}, g);
      Tensor qr = apply_rotary_pos_emb(x, f.freqs, f.scale);
      Tensor kr = apply_rotary_pos_emb(x, f.freqs, xpos ? pow(f.scale, -1.0) : Tensor());
      std::vector<double> pos_of_row;
      for (int64_t bb = 0; bb < b; ++bb)
        for (int64_t hh = 0; hh < h; ++hh)
          for (int64_t i = 0; i < n; ++i) pos_of_row.push_back(pv[size_t(bb * n + i)]);
      const double half_max = std::floor((21.0 + 1) / 2);  // max over all positions (21), as x-transformers
      std::vector<float> xv = x.to_vector<float>();
      CHECK(close_or_same(qr.to_vector<float>(),
                          rotary_ref(xv, b * h * n, d, r, pos_of_row, inv, xpos ? &xs : nullptr, half_max, 16, false),
                          1e-5, 1e-4));
      CHECK(close_or_same(kr.to_vector<float>(),
                          rotary_ref(xv, b * h * n, d, r, pos_of_row, inv, xpos ? &xs : nullptr, half_max, 16, true),
                          1e-5, 1e-4));
    }
  }
}

TEST_CASE("Rotary makes q.k depend only on the relative position (xpos included)") {
  Generator g(10);
  for (bool xpos : {false, true}) {
    RotaryEmbedding rot({.dim = 8, .use_xpos = xpos});
    Tensor q = randn({1, 8}, g), k = randn({1, 8}, g);
    auto dot = [&](double tq, double tk) {
      // Both positions in one call so xpos uses one reference point.
      RotaryEmbedding::Output f = rot.forward(tensor(std::vector<float>{float(tq), float(tk), 40.0f}));
      Tensor fq = f.freqs.narrow(1, 0, 1), fk = f.freqs.narrow(1, 1, 1);
      Tensor sq = xpos ? f.scale.narrow(1, 0, 1) : Tensor(), sk = xpos ? pow(f.scale.narrow(1, 1, 1), -1.0) : Tensor();
      return (apply_rotary_pos_emb(q, fq, sq) * apply_rotary_pos_emb(k, fk, sk)).sum().item<float>();
    };
    CAPTURE(xpos);
    CHECK(dot(10, 7) == doctest::Approx(dot(25, 22)).epsilon(1e-4));
    CHECK(dot(10, 7) != doctest::Approx(dot(10, 8)).epsilon(1e-4));
  }
}

TEST_CASE("apply_rotary_pos_emb: right-aligned angles, gradient, errors") {
  Generator g(11);
  RotaryEmbedding rot({.dim = 6});
  Tensor freqs = rot.forward_from_seq_len(9).freqs;
  Tensor x = randn({2, 3, 8}, g);
  // Three positions against nine angles: the last three (positions 6..8) are used.
  CHECK(apply_rotary_pos_emb(x, freqs).to_vector<float>() ==
        apply_rotary_pos_emb(x, rot.forward(arange(6, 9)).freqs).to_vector<float>());
  CHECK_GRADCHECK([&](const Inputs& in) { return apply_rotary_pos_emb(in[0], freqs); },
                  {randn({2, 3, 8}, g).requires_grad_()});
  // Per-sample angles shared over heads, xpos scales, 6 of 8 features rotated (the fused op's layouts).
  RotaryEmbedding xrot({.dim = 6, .use_xpos = true, .scale_base = 8});
  RotaryEmbedding::Output per = xrot.forward(tensor(std::vector<float>{0, 2, 5, 1, 3, 4}).reshape({2, 3}));
  CHECK_GRADCHECK([&](const Inputs& in) { return apply_rotary_pos_emb(in[0], per.freqs, per.scale); },
                  {randn({2, 2, 3, 8}, g).requires_grad_()});
  // Heads split off a linear's output (a transposed view, read through its
  // strides) and a slice whose last dim is strided (copied first): the same
  // bits as for their contiguous copies, forward and backward.
  for (bool last_strided : {false, true}) {
    CAPTURE(last_strided);
    Tensor base = randn({2, 3, 2, last_strided ? 16 : 8}, g);                        // (b, n, h, d)
    Tensor view = last_strided ? base.transpose(1, 2).slice(3, 0, 16, 2) : base.transpose(1, 2);  // (b, h, n, 8)
    Tensor a = view.detach().requires_grad_(), c = view.contiguous().detach().requires_grad_();
    REQUIRE(!a.is_contiguous());
    Tensor ya = apply_rotary_pos_emb(a, per.freqs, per.scale), yc = apply_rotary_pos_emb(c, per.freqs, per.scale);
    CHECK(ya.to_vector<float>() == yc.to_vector<float>());
    Tensor gout = randn(ya.sizes(), g);
    ya.backward(gout.transpose(2, 3).contiguous().transpose(2, 3));  // a strided gradient too
    yc.backward(gout);
    CHECK(a.grad().to_vector<float>() == c.grad().to_vector<float>());
  }
  CHECK_THROWS_WITH_AS(rotary(randn({3, 2, 3, 8}, g), per.freqs, per.freqs),
                       "rotary: cos [2, 3, 6] cannot rotate x [3, 2, 3, 8] (needs an even rot <= d, n positions and a "
                       "batch of 1 or x's)",
                       Error);
  CHECK_THROWS_WITH_AS(apply_rotary_pos_emb(randn({2, 3, 4}, g), freqs),
                       "apply_rotary_pos_emb: freqs [1, 9, 6] cannot rotate t [2, 3, 4] (needs an even rotary dim <= 4 "
                       "and at least 3 positions)",
                       Error);
  CHECK_THROWS_WITH_AS(RotaryEmbedding({.dim = 5}), "RotaryEmbedding: dim must be even and at least 2, got 5", Error);
}

TEST_CASE("Absolute and scaled sinusoidal position embeddings") {
  manual_seed(12);
  AbsolutePositionalEmbedding abs_emb({.dim = 16, .max_seq_len = 10});
  CHECK(abs_emb.named_parameters()[0].first == "emb.weight");
  Tensor x = zeros({2, 7, 16});
  Tensor out = abs_emb.forward(x);
  REQUIRE(out.sizes() == Shape{7, 16});
  std::vector<float> W = abs_emb.emb->weight.to_vector<float>();
  std::vector<double> want;
  for (size_t e = 0; e < 7 * 16; ++e) want.push_back(W[e] / 4.0);  // dim^-0.5 = 1/4
  CHECK(close_or_same(out.to_vector<float>(), want, 1e-7, 1e-6));
  Tensor picked = abs_emb.forward(x, tensor(std::vector<int64_t>{9, 0}));
  std::vector<double> row9;
  for (int64_t c = 0; c < 16; ++c) row9.push_back(W[size_t(9 * 16 + c)] / 4.0);
  REQUIRE(picked.sizes() == Shape{2, 16});
  CHECK(close_or_same(picked.select(0, 0).contiguous().to_vector<float>(), row9, 1e-7, 1e-6));
  CHECK(picked.select(0, 1).to_vector<float>() == out.select(0, 0).to_vector<float>());
  CHECK_THROWS_WITH_AS(abs_emb.forward(zeros({1, 11, 16})),
                       "AbsolutePositionalEmbedding: sequence length 11 exceeds max_seq_len 10", Error);
  AbsolutePositionalEmbedding l2({.dim = 16, .max_seq_len = 10, .l2norm_embed = true});
  Tensor unit = l2.forward(x);
  for (float nrm : sqrt((unit * unit).sum({-1})).to_vector<float>()) CHECK(nrm == doctest::Approx(1.0).epsilon(1e-5));

  ScaledSinusoidalEmbedding sinu(8);
  CHECK(sinu.named_parameters()[0].first == "scale");
  CHECK(sinu.named_buffers().empty());  // inv_freq is not persistent
  Tensor pos = tensor(std::vector<float>{0.0f, 1.5f, 30.0f});
  Tensor e = sinu.forward(zeros({1, 3, 8}), pos);
  std::vector<double> ref;
  for (double t : {0.0, 1.5, 30.0}) {
    for (int k = 0; k < 4; ++k) ref.push_back(std::sin(t * std::pow(10000.0, -k / 4.0)) / std::sqrt(8.0));
    for (int k = 0; k < 4; ++k) ref.push_back(std::cos(t * std::pow(10000.0, -k / 4.0)) / std::sqrt(8.0));
  }
  CHECK(close_or_same(e.to_vector<float>(), ref, 1e-5, 1e-4));
  // The learned scale gets d/ds sum(e) = sum(e) / s.
  e.sum().backward();
  double total = 0;
  for (double v : ref) total += v;
  CHECK(sinu.scale.grad().item<float>() == doctest::Approx(total * std::sqrt(8.0)).epsilon(1e-4));
}
