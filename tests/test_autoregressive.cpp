// KV-cached decoding equals the full forward; AutoregressiveWrapper's loss,
// filters and generation.
#include "helpers.h"

#include <loom/loom.h>

#include <cmath>

using namespace loom;

namespace {
std::vector<double> as_double(const Tensor& t) {
  std::vector<float> v = t.contiguous().to_vector<float>();
  return std::vector<double>(v.begin(), v.end());
}

std::shared_ptr<TransformerWrapper> small_decoder(nn::AttentionLayersConfig layers, bool abs_pos = true) {
  layers.dim = 16, layers.depth = 2, layers.heads = 4, layers.attn.dim_head = 4;
  return std::make_shared<TransformerWrapper>(
      TransformerWrapperConfig{.num_tokens = 17, .max_seq_len = 32, .attn_layers = nn::Decoder(layers),
                               .use_abs_pos_emb = abs_pos});
}
}  // namespace

TEST_CASE("KV-cached decoding gives the logits of the full forward, for every position encoding") {
  Generator g(1);
  Tensor tokens = randint(0, 17, {2, 9}, g);
  struct Case {
    const char* name;
    nn::AttentionLayersConfig layers;
    bool abs_pos;
  };
  std::vector<Case> cases = {
      {"absolute positions", {}, true},
      {"rotary", {.rotary_pos_emb = true}, false},
      {"rotary xpos", {.rotary_xpos = true}, false},
      {"T5 bias", {.rel_pos_bias = true}, false},
      {"ALiBi, grouped heads, memory kv", {.alibi_pos_bias = true, .attn = {.kv_heads = 2, .num_mem_kv = 2}}, false},
      {"cross-attention with both T5 biases", {.cross_attend = true, .rel_pos_bias = true, .cross_rel_pos_bias = true}, false},
  };
  for (const Case& c : cases) {
    const std::string name = c.name;
    CAPTURE(name);
    manual_seed(2);
    auto net = small_decoder(c.layers, c.abs_pos);
    net->eval();
    NoGradGuard no_grad;
    WrapperInputs in;
    if (c.layers.cross_attend) in.context = randn({2, 6, 16}, g);
    Tensor full = net->forward(tokens, in);
    nn::LayersCache cache;
    std::vector<Tensor> steps = {net->forward(tokens.narrow(1, 0, 4), in, &cache)};  // the prompt at once
    for (int64_t p = 4; p < 9; ++p) steps.push_back(net->forward(tokens.narrow(1, p, 1), in, &cache));
    CHECK(cache.length == 9);
    CHECK(close_or_same(cat(steps, 1).to_vector<float>(), as_double(full), 1e-5, 1e-4));
  }
  // Residual attention cannot be cached (each layer adds the previous one's whole logits).
  auto res = small_decoder({.residual_attn = true});
  CHECK(!res->can_cache_kv());
  nn::LayersCache cache;
  CHECK_THROWS_WITH_AS(res->forward(tokens, {}, &cache),
                       "TransformerWrapper: this model cannot use a KV cache (it needs a causal decoder without memory "
                       "or cls tokens, pooling or residual attention)",
                       Error);
}

TEST_CASE("Sampling filters: top-k, top-p (keeps the token that crosses p), min-p") {
  Tensor logits = tensor(std::vector<float>{std::log(0.5f), std::log(0.05f), std::log(0.3f), std::log(0.15f)}).reshape({1, 4});
  auto kept = [](const Tensor& t) {
    std::vector<int> k;
    for (float v : t.to_vector<float>()) k.push_back(std::isinf(v) ? 0 : 1);
    return k;
  };
  CHECK(kept(AutoregressiveWrapper::filter_top_k(logits, 2)) == std::vector<int>{1, 0, 1, 0});
  CHECK(kept(AutoregressiveWrapper::filter_top_k(logits, 9)) == std::vector<int>{1, 1, 1, 1});
  // Sorted: 0.5, 0.3, 0.15, 0.05. p = 0.7: 0.5 + 0.3 crosses it, so the first two stay.
  CHECK(kept(AutoregressiveWrapper::filter_top_p(logits, 0.7)) == std::vector<int>{1, 0, 1, 0});
  CHECK(kept(AutoregressiveWrapper::filter_top_p(logits, 0.85)) == std::vector<int>{1, 0, 1, 1});
  // min_p 0.25: keep p >= 0.125.
  CHECK(kept(AutoregressiveWrapper::filter_min_p(logits, 0.25)) == std::vector<int>{1, 0, 1, 1});
  CHECK(kept(AutoregressiveWrapper::filter_min_p(logits, 0.7)) == std::vector<int>{1, 0, 0, 0});
  CHECK_THROWS_WITH_AS(AutoregressiveWrapper::filter_top_p(logits, 1.5), "filter_top_p: p must be in (0, 1], got 1.5",
                       Error);
}

TEST_CASE("generate: cached and uncached give the same tokens, eos stops and pads, the draws follow the filters") {
  Generator g(3);
  manual_seed(4);
  auto net = small_decoder({.rotary_pos_emb = true}, false);
  AutoregressiveWrapper ar(net);
  Tensor prompts = randint(1, 17, {3, 4}, g);
  for (double temperature : {0.0, 1.0}) {
    CAPTURE(temperature);
    Generator g1(7), g2(7);
    Tensor cached = ar.generate(prompts, 12, {.temperature = temperature, .top_k = 5}, g1);
    Tensor uncached = ar.generate(prompts, 12, {.temperature = temperature, .top_k = 5, .cache_kv = false}, g2);
    CHECK(cached.sizes() == Shape{3, 12});
    CHECK(cached.to_vector<int64_t>() == uncached.to_vector<int64_t>());
  }
  // Greedy equals the argmax of the full forward at each step.
  Generator g3(8);
  Tensor greedy = ar.generate(prompts, 3, {.temperature = 0}, g3);
  Tensor first = argmax(net->forward(prompts).select(1, 3), 1);
  CHECK(greedy.select(1, 0).to_vector<int64_t>() == first.to_vector<int64_t>());
  // eos: with top_k = 1 the sequence is deterministic; choose its 3rd token as eos.
  Generator g4(9), g5(9);
  Tensor seq = ar.generate(prompts.narrow(0, 0, 1), 6, {.top_k = 1}, g4);
  const int64_t eos = seq.to_vector<int64_t>()[2];
  Tensor stopped = ar.generate(prompts.narrow(0, 0, 1), 6, {.top_k = 1, .eos_token = eos}, g5);
  std::vector<int64_t> s = seq.to_vector<int64_t>(), t = stopped.to_vector<int64_t>();
  size_t first_eos = size_t(std::find(s.begin(), s.end(), eos) - s.begin());
  for (size_t i = 0; i < 6; ++i) CHECK(t[i] == (i <= first_eos ? s[i] : 0));
  // With top_k = 2 every drawn token is one of the two most likely.
  Generator g6(10);
  Tensor two = ar.generate(prompts, 1, {.top_k = 2}, g6);
  Tensor last = net->forward(prompts).select(1, 3);
  for (int64_t r = 0; r < 3; ++r) {
    std::vector<float> row = last.select(0, r).to_vector<float>();
    const float picked = row[size_t(two.to_vector<int64_t>()[size_t(r)])];
    int higher = 0;
    for (float v : row) higher += v > picked;
    CHECK(higher <= 1);
  }
}

TEST_CASE("AutoregressiveWrapper::loss is next-token cross-entropy with ignore_index") {
  Generator g(11);
  manual_seed(12);
  auto net = small_decoder({});
  AutoregressiveWrapper ar(net);
  Tensor x = randint(0, 17, {2, 7}, g);
  std::vector<int64_t> xv = x.to_vector<int64_t>();
  Tensor logits = net->forward(x.narrow(1, 0, 6)).reshape({12, 17});
  Tensor target = x.narrow(1, 1, 6).reshape({12});
  CHECK(ar.loss(x).item<float>() == doctest::Approx(cross_entropy(logits, target).item<float>()).epsilon(1e-6));
  AutoregressiveWrapper ignoring(net, xv[1]);  // the first target's token value is ignored wherever it occurs
  CHECK(ignoring.loss(x).item<float>() ==
        doctest::Approx(cross_entropy(logits, target, xv[1]).item<float>()).epsilon(1e-6));
}
