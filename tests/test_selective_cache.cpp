// Selective attention with a KV cache: cached decoding equals the full
// forward; context pruning (LayersCache::budgets, nn::prune) keeps at most
// the budget and evicts the most masked keys, checked against references
// computed here from the uncached logits.
#include "helpers.h"

#include <loom/loom.h>

#include <algorithm>
#include <set>

using namespace loom;

namespace {
std::vector<float> values(const Tensor& t) { return t.contiguous().to_vector<float>(); }

std::shared_ptr<TransformerWrapper> selective_decoder(nn::AttentionLayersConfig layers, bool abs_pos, int64_t depth = 2) {
  layers.dim = 16, layers.depth = depth, layers.heads = 4, layers.attn.dim_head = 4, layers.attn.selective = true;
  return std::make_shared<TransformerWrapper>(TransformerWrapperConfig{
      .num_tokens = 17, .max_seq_len = 32, .attn_layers = nn::Decoder(layers), .use_abs_pos_emb = abs_pos});
}

struct Case {
  const char* name;
  nn::AttentionLayersConfig layers;
  bool abs_pos;
};

std::vector<Case> encodings() {
  return {
      {"absolute positions", {}, true},
      {"rotary", {.rotary_pos_emb = true}, false},
      {"rotary xpos", {.rotary_xpos = true}, false},
      {"T5 bias", {.rel_pos_bias = true}, false},
      {"ALiBi, grouped heads, memory kv", {.alibi_pos_bias = true, .attn = {.kv_heads = 2, .num_mem_kv = 2}}, false},
      {"materialised logits (talking heads), rotary", {.rotary_pos_emb = true, .attn = {.pre_talking_heads = true}}, false},
  };
}
}  // namespace

TEST_CASE("Selective attention: the op's carry splits one call into two with the same outputs") {
  // Queries 0..3 with their keys, then queries 4..9 with all keys and the
  // first call's F carried: the rows of one call over all ten.
  Generator g(12);
  const int64_t B = 2, H = 2, T = 10, D = 8, cut = 4;
  Tensor q = randn({B, H, T, D}, g), k = randn({B, H, T, D}, g), v = randn({B, H, T, D}, g);
  Tensor pad = ones({B, T}, kBool);
  pad.select(0, 1).narrow(0, 0, 2).fill_(0.0);  // row 1: its first two keys hidden
  for (bool padded : {false, true}) {
    CAPTURE(padded);
    AttentionOptions o;
    o.causal = true, o.selective = true;
    if (padded) o.key_padding_mask = pad;
    Tensor full = attention(q, k, v, o);
    Tensor gated = ones({B, T}, kBool);
    gated.narrow(1, 0, 1).fill_(0.0);  // position 0 is never gated
    AttentionOptions first = o;
    Tensor carry;
    first.selective_carry = zeros({B, cut});
    first.selective_gated = gated.narrow(1, 0, cut).contiguous();
    first.selective_carry_out = &carry;
    if (padded) first.key_padding_mask = pad.narrow(1, 0, cut).contiguous();
    Tensor a = attention(q.narrow(2, 0, cut), k.narrow(2, 0, cut), v.narrow(2, 0, cut), first);
    AttentionOptions second = o;
    second.selective_carry = cat({carry, zeros({B, T - cut})}, 1);
    second.selective_gated = gated;
    Tensor b = attention(q.narrow(2, cut, T - cut), k, v, second);
    CHECK(all_close(values(cat({a, b}, 2)), values(full), 1e-5f, 1e-5f));
    CHECK(max(carry).item<float>() > 0);
  }
  AttentionOptions o;
  o.causal = true;
  o.selective_carry = zeros({B, T});
  CHECK_THROWS_WITH_AS(attention(q, k, v, o),
                       "attention: selective_carry, selective_gated and selective_carry_out need selective = true", Error);
  o.selective = true;
  o.selective_carry = zeros({B, T - 1});
  CHECK_THROWS_WITH_AS(attention(q, k, v, o), "attention: selective_carry must be float32 [b, j] = [2, 10], got float32 [2, 9]",
                       Error);
}

TEST_CASE("Selective attention: KV-cached decoding gives the logits of the full forward, with and without padding") {
  Generator g(1);
  const int64_t T = 9;
  Tensor tokens = randint(0, 17, {2, T}, g);
  // Row 1 is left-padded by 3 (its first three keys hidden from every query).
  std::vector<bool> m(size_t(2 * T), true);
  for (int64_t c = 0; c < 3; ++c) m[size_t(T + c)] = false;
  Tensor mask = from_vector(m, {2, T});
  for (const Case& c : encodings())
    for (bool padded : {false, true}) {
      const std::string name = c.name;
      CAPTURE(name);
      CAPTURE(padded);
      manual_seed(2);
      auto net = selective_decoder(c.layers, c.abs_pos);
      net->eval();
      REQUIRE(net->can_cache_kv());
      NoGradGuard no_grad;
      WrapperInputs in;
      if (padded) in.mask = mask;
      Tensor full = net->forward(tokens, in);
      nn::LayersCache cache;
      auto step = [&](int64_t from, int64_t len) {
        WrapperInputs s;
        if (padded) s.mask = mask.narrow(1, from, len);
        return net->forward(tokens.narrow(1, from, len), s, &cache);
      };
      std::vector<Tensor> steps = {step(0, 4)};  // the prompt at once, then a token a step
      for (int64_t p = 4; p < T; ++p) steps.push_back(step(p, 1));
      CHECK(cache.length == T);
      CHECK(all_close(values(cat(steps, 1)), values(full), 1e-5f, 1e-5f));
      // The uncached model with selective attention off differs: the test can tell.
      CHECK(cache.layers[0].F.defined());
      CHECK(max(cache.layers[0].F).item<float>() > 0);
    }
}

TEST_CASE("Selective attention: a budget >= the context evicts nothing and changes no logit") {
  Generator g(3);
  const int64_t T = 10;
  Tensor tokens = randint(0, 17, {3, T}, g);
  for (const Case& c : encodings()) {
    const std::string name = c.name;
    CAPTURE(name);
    manual_seed(4);
    auto net = selective_decoder(c.layers, c.abs_pos);
    net->eval();
    NoGradGuard no_grad;
    Tensor full = net->forward(tokens);
    nn::LayersCache cache;
    cache.budgets = {T};
    std::vector<Tensor> steps;
    for (int64_t p = 0; p < T; ++p) steps.push_back(net->forward(tokens.narrow(1, p, 1), {}, &cache));
    CHECK(all_close(values(cat(steps, 1)), values(full), 1e-5f, 1e-5f));
    for (const nn::KVCache& l : cache.layers) {
      CHECK(l.k.size(2) == T);
      CHECK(l.pos.to_vector<int64_t>() == arange(T).unsqueeze(0).expand({3, T}).contiguous().to_vector<int64_t>());
    }
  }
  // generate with that budget draws the same tokens as without one.
  manual_seed(5);
  auto net = selective_decoder({.rotary_pos_emb = true}, false);
  AutoregressiveWrapper ar(net);
  Generator g1(7), g2(7);
  Tensor prompts = randint(0, 17, {2, 3}, g);
  Tensor plain = ar.generate(prompts, 12, {.temperature = 1.0}, g1);
  Tensor budgeted = ar.generate(prompts, 12, {.temperature = 1.0, .selective_budgets = {15}}, g2);
  CHECK(plain.to_vector<int64_t>() == budgeted.to_vector<int64_t>());
}

TEST_CASE("Selective attention: with a small budget the cache never exceeds it and evicts the highest F") {
  // One Attention module, so its inputs do not depend on what was evicted:
  // the reference F is computed here from the uncached head-0 logits.
  const int64_t B = 2, T = 14, dim = 16, dh = 4, K = 4;
  manual_seed(6);
  nn::Attention attn({.dim = dim, .dim_head = dh, .heads = 2, .causal = true, .selective = true});
  attn.eval();
  NoGradGuard no_grad;
  Generator g(8);
  Tensor x = randn({B, T, dim}, g);
  // Head 0: the first dh features of q and k. G = relu(scale q·kᵀ), causal,
  // 0 on the first key and on the diagonal; F after query t = Σ_{t' <= t} G.
  Tensor q0 = attn.to_q->forward(x).narrow(2, 0, dh), k0 = attn.to_k->forward(x).narrow(2, 0, dh);
  std::vector<float> s = values(matmul(q0, k0.transpose(1, 2)) * float(1.0 / std::sqrt(double(dh))));  // (B, T, T)
  std::vector<double> F(size_t(B * T * T), 0.0);  // F[b][t][c] after query t
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < T; ++c) {
        const double gate = c == 0 || c >= t ? 0.0 : std::max(0.0, double(s[size_t((b * T + t) * T + c)]));
        F[size_t((b * T + t) * T + c)] = (t > 0 ? F[size_t((b * T + t - 1) * T + c)] : 0.0) + gate;
      }

  nn::KVCache cache;
  std::vector<std::set<int64_t>> kept(static_cast<size_t>(B));
  bool some_not_oldest = false;
  for (int64_t t = 0; t < T; ++t) {
    attn.forward(x.narrow(1, t, 1), {.cache = &cache});
    nn::prune(cache, K);
    CHECK(cache.k.size(2) <= K);
    CHECK(cache.v.size(2) == cache.k.size(2));
    CHECK(cache.F.size(1) == cache.k.size(2));
    const std::vector<int64_t> pos = cache.pos.to_vector<int64_t>();
    const std::vector<float> f = values(cache.F);
    const int64_t n = cache.k.size(2);
    for (int64_t b = 0; b < B; ++b) {
      // The reference: add t, then evict the highest F (ties: the oldest) until K remain.
      std::set<int64_t>& ref = kept[size_t(b)];
      ref.insert(t);
      while (int64_t(ref.size()) > K) {
        int64_t worst = *ref.begin();
        for (int64_t c : ref)
          if (F[size_t((b * T + t) * T + c)] > F[size_t((b * T + t) * T + worst)]) worst = c;
        some_not_oldest = some_not_oldest || worst != *ref.begin();
        ref.erase(worst);
      }
      std::vector<int64_t> got(pos.begin() + b * n, pos.begin() + (b + 1) * n);
      CHECK(got == std::vector<int64_t>(ref.begin(), ref.end()));
      for (int64_t j = 0; j < n; ++j)
        CHECK(std::abs(f[size_t(b * n + j)] - F[size_t((b * T + t) * T + got[size_t(j)])]) < 1e-5);
    }
  }
  CHECK(some_not_oldest);  // the eviction was not simply a sliding window
  CHECK_THROWS_WITH_AS(nn::prune(cache, 0), "prune: the budget must be >= 1, got 0", Error);
}

TEST_CASE("Selective attention: pruned decoding equals the full forward with the evicted keys masked") {
  // With one layer, what is evicted does not change what later tokens
  // compute their gates from; so pruning must act exactly as hiding the
  // evicted keys, at their own absolute positions, from the later queries.
  const int64_t B = 2, T = 12, K = 4;
  Generator g(9);
  Tensor tokens = randint(0, 17, {B, T}, g);
  for (Case c : encodings()) {
    const std::string name = c.name;
    CAPTURE(name);
    c.layers.attn.num_mem_kv = 0;  // an attn_mask does not span memory key/values
    manual_seed(10);
    auto net = selective_decoder(c.layers, c.abs_pos, 1);
    net->eval();
    NoGradGuard no_grad;
    nn::LayersCache cache;
    cache.budgets = {K};
    std::vector<bool> allowed(size_t(B * T * T), false);  // (b, 1, T, T): what query r sees
    std::vector<Tensor> steps;
    for (int64_t r = 0; r < T; ++r) {
      for (int64_t b = 0; b < B; ++b) {
        allowed[size_t((b * T + r) * T + r)] = true;
        if (r == 0) continue;
        const std::vector<int64_t> pos = cache.layers[0].pos.to_vector<int64_t>();
        const int64_t n = cache.layers[0].pos.size(1);
        for (int64_t j = 0; j < n; ++j) allowed[size_t((b * T + r) * T + pos[size_t(b * n + j)])] = true;
      }
      steps.push_back(net->forward(tokens.narrow(1, r, 1), {}, &cache));
      CHECK(cache.layers[0].k.size(2) == std::min(r + 1, K));
    }
    WrapperInputs in;
    in.attn_mask = from_vector(allowed, {B, 1, T, T});
    Tensor masked = net->forward(tokens, in);
    CHECK(all_close(values(cat(steps, 1)), values(masked), 1e-5f, 1e-5f));
    CHECK(!all_close(values(cat(steps, 1)), values(net->forward(tokens)), 1e-3f, 1e-3f));  // pruning did change logits
  }
}

TEST_CASE("Selective attention: bad budgets are errors that name the option") {
  Generator g(11);
  Tensor prompts = randint(0, 17, {1, 3}, g);
  auto sel = selective_decoder({}, true);
  AutoregressiveWrapper ar(sel);
  CHECK_THROWS_WITH_AS(ar.generate(prompts, 2, {.selective_budgets = {-1}}, g), "generate: selective_budgets must be >= 0, got [-1]",
                       Error);
  CHECK_THROWS_WITH_AS(ar.generate(prompts, 2, {.cache_kv = false, .selective_budgets = {4}}, g),
                       "generate: selective_budgets needs a model with selective attention, decoded with a KV cache", Error);
  nn::AttentionLayersConfig plain_layers{.dim = 16, .depth = 1, .heads = 2};
  auto plain = std::make_shared<TransformerWrapper>(
      TransformerWrapperConfig{.num_tokens = 17, .max_seq_len = 32, .attn_layers = nn::Decoder(plain_layers)});
  CHECK_THROWS_WITH_AS(AutoregressiveWrapper(plain).generate(prompts, 2, {.selective_budgets = {4}}, g),
                       "generate: selective_budgets needs a model with selective attention, decoded with a KV cache", Error);
  nn::LayersCache cache;
  cache.budgets = {2};
  CHECK_THROWS_WITH_AS(plain->forward(prompts, {}, &cache),
                       "AttentionLayers: a cache budget (context pruning) needs selective attention", Error);
  // Past max_seq_len a pruned cache cannot fall back to the window.
  CHECK_THROWS_WITH_AS(ar.generate(prompts, 40, {.selective_budgets = {4}}, g),
                       "generate: selective_budgets: the sequence (33) would pass the model's max_seq_len (32)", Error);
}
