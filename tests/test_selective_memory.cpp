// Selective attention's training-time memory loss (AttentionConfig::
// selective_memory_loss) against a double reference computed here, its
// gradient by finite differences, and per-layer context-pruning budgets
// (LayersCache::budgets) with their greedy search (choose_selective_budgets).
#include "helpers.h"

#include <loom/core/gradcheck.h>
#include <loom/loom.h>

#include <algorithm>
#include <cmath>

using namespace loom;

namespace {
std::vector<float> values(const Tensor& t) { return t.contiguous().to_vector<float>(); }

// The memory term of one self-attention call, in double from the module's
// weights: head 0's logits scale·q·k + bias, its gate G = relu on the keys
// that may be gated (not the memory key/values, not position 0, not the
// query's own), F = Σ over earlier queries, N_i = Σ_j max(0, 1 − F_ij/τ)
// over the visible sequence keys, then mean over rows of max_i N_i / n.
double memory_reference(const nn::Attention& att, const Tensor& x, const Tensor& bias, const Tensor& key_mask) {
  const nn::AttentionConfig& o = att.config;
  const int64_t b = x.size(0), n = x.size(1), dim = o.dim, d = o.dim_head, m = o.num_mem_kv, J = m + n;
  const std::vector<float> X = values(x), Wq = values(att.to_q->weight), Wk = values(att.to_k->weight);
  const std::vector<float> Mk = values(att.mem_k), Z = values(bias);  // mem_k (kv_heads, m, d); bias (h, n, J)
  const std::vector<bool> visible_key = key_mask.to_vector<bool>();  // (b, n)
  const double scale = 1 / std::sqrt(double(d)), tau = o.selective_memory_loss_tau;
  double total = 0;
  for (int64_t r = 0; r < b; ++r) {
    // Head 0: output features 0..d-1 of to_q and to_k.
    auto project = [&](const std::vector<float>& W, int64_t t, int64_t f) {
      double s = 0;
      for (int64_t e = 0; e < dim; ++e) s += double(W[size_t(f * dim + e)]) * X[size_t((r * n + t) * dim + e)];
      return s;
    };
    auto key = [&](int64_t c, int64_t f) { return c < m ? double(Mk[size_t(c * d + f)]) : project(Wk, c - m, f); };
    auto seen = [&](int64_t i, int64_t c) { return c <= i + m && (c < m || visible_key[size_t(r * n + c - m)]); };
    std::vector<double> G(size_t(n * J), 0.0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < J; ++c) {
        if (!seen(i, c) || c <= m || c == i + m) continue;
        double s = Z[size_t(i * J + c)];
        for (int64_t f = 0; f < d; ++f) s += scale * project(Wq, i, f) * key(c, f);
        G[size_t(i * J + c)] = std::max(0.0, s);
      }
    double most = 0;
    for (int64_t i = 0; i < n; ++i) {
      double N = 0;
      for (int64_t c = m; c < J; ++c) {
        if (!seen(i, c)) continue;
        double F = 0;
        for (int64_t e = 0; e < i; ++e) F += G[size_t(e * J + c)];
        N += std::max(0.0, 1 - F / tau);
      }
      most = std::max(most, N);
    }
    total += most / double(n);
  }
  return total / double(b);
}

nn::AttentionConfig memory_attention(int64_t sparse_topk = 0, double tau = 0.7) {
  return {.dim = 8, .dim_head = 4, .heads = 2, .causal = true, .num_mem_kv = 2, .selective = true,
          .selective_memory_loss = 0.1, .selective_memory_loss_tau = tau, .sparse_topk = sparse_topk};
}

std::shared_ptr<TransformerWrapper> selective_net(double memory_loss, int64_t depth = 2) {
  nn::AttentionLayersConfig layers{.dim = 16, .depth = depth, .heads = 2, .rotary_pos_emb = true};
  layers.attn = {.dim_head = 8, .selective = true, .selective_memory_loss = memory_loss};
  return std::make_shared<TransformerWrapper>(
      TransformerWrapperConfig{.num_tokens = 17, .max_seq_len = 32, .attn_layers = nn::Decoder(layers)});
}
}  // namespace

TEST_CASE("Selective memory loss: a layer's term equals the double reference, on both attention paths") {
  Generator g(3);
  const int64_t b = 2, n = 7;
  Tensor x = randn({b, n, 8}, g) * 2.0f, bias = randn({2, n, n + 2}, g);
  Tensor key_mask = ones({b, n}, kBool);
  key_mask.select(0, 1).narrow(0, 1, 2).fill_(0.0);  // row 1: keys 1 and 2 hidden
  manual_seed(4);
  nn::Attention fused(memory_attention());
  manual_seed(4);
  nn::Attention materialised(memory_attention(100));  // top-100 of at most 9 keys: the same logits, written out
  REQUIRE(!fused.materialises());
  REQUIRE(materialised.materialises());
  const double ref = memory_reference(fused, x, bias, key_mask);
  const double keys_seen = (double(n) / n + double(n - 2) / n) / 2;  // max_i of the visible keys, without any gate
  CHECK(ref < keys_seen - 0.05);  // the gates do fade keys: the reference is not just a count
  for (nn::Attention* att : {&fused, &materialised}) {
    CAPTURE(att->materialises());
    Tensor term;
    att->forward(x, {.mask = key_mask, .attn_bias = bias, .selective_memory_out = &term});
    REQUIRE(term.defined());
    CHECK(term.dim() == 0);
    CHECK(std::abs(term.item<float>() - ref) < 1e-5);
  }
}

TEST_CASE("Selective memory loss: its gradient passes gradcheck") {
  Generator g(5);
  // Small gates and a large τ: the most-seeing query is the last one, whose
  // count has a gradient (an early query sees a constant count, F = 0).
  Tensor x0 = randn({2, 6, 8}, g) * 0.5f, bias0 = randn({2, 6, 8}, g) * 0.3f;
  manual_seed(6);
  nn::Attention att(memory_attention(0, 4.0));
  auto term = [&](const std::vector<Tensor>& in) {
    Tensor t;
    att.forward(in[0], {.attn_bias = in[1], .selective_memory_out = &t});
    return t;
  };
  GradcheckResult r = gradcheck(term, {x0.requires_grad_(true), bias0.requires_grad_(true)});
  CHECK_MESSAGE(r.passed, r.report);
  // The term does depend on both (a gradient of zero would pass trivially).
  Tensor x = x0.detach().requires_grad_(true), bias = bias0.detach().requires_grad_(true);
  term({x, bias}).backward();
  CHECK(max(abs(x.grad())).item<float>() > 1e-3f);
  CHECK(max(abs(bias.grad())).item<float>() > 1e-3f);
}

TEST_CASE("Selective memory loss: the training loss adds ε times the layers' mean, and nothing at ε = 0") {
  Generator g(7);
  Tensor tokens = randint(0, 17, {3, 13}, g);
  auto loss_and_grads = [&](double eps, bool training) {
    manual_seed(8);
    auto net = selective_net(eps);
    net->train(training);
    Tensor loss = AutoregressiveWrapper(net).loss(tokens);
    loss.backward();
    std::vector<float> grads;
    for (const Tensor& p : net->parameters()) {
      std::vector<float> v = values(p.grad());
      grads.insert(grads.end(), v.begin(), v.end());
    }
    // The plain cross-entropy of the same weights, for comparison.
    NoGradGuard no_grad;
    Tensor logits = net->forward(tokens.narrow(1, 0, 12));
    const float ce = cross_entropy(logits.reshape({36, 17}), tokens.narrow(1, 1, 12).reshape({36})).item<float>();
    return std::tuple{loss.item<float>(), ce, grads};
  };
  // ε = 0: the loss and every gradient are those of the cross-entropy alone, bit for bit.
  auto [off, off_ce, off_grads] = loss_and_grads(0, true);
  CHECK(off == off_ce);
  auto [eval_loss, eval_ce, eval_grads] = loss_and_grads(0.5, false);
  CHECK(eval_loss == eval_ce);  // evaluation: no memory term
  CHECK(eval_loss == off);
  CHECK(eval_grads == off_grads);
  // ε > 0: the term is ε · (a mean of shares in [0, 1]), linear in ε, and changes the gradients.
  auto [half, half_ce, half_grads] = loss_and_grads(0.5, true);
  auto [quarter, quarter_ce, quarter_grads] = loss_and_grads(0.25, true);
  CHECK(half_ce == off_ce);
  CHECK(half - half_ce > 0.01f);
  CHECK(half - half_ce <= 0.5f);
  CHECK(std::abs((half - half_ce) - 2 * (quarter - quarter_ce)) < 1e-5f);
  CHECK(half_grads != off_grads);
}

TEST_CASE("Selective memory loss: bad settings are errors that name the key") {
  const std::string head = R"({"wrapper": "TransformerWrapper", "num_tokens": 17, "max_seq_len": 8,
    "attn_layers": {"type": "Decoder", "dim": 8, "depth": 1, "heads": 2, )";
  CHECK_THROWS_WITH_AS(model_from_json(head + R"("attn_selective": true, "attn_selective_memory_loss": -1}})"),
                       "config: 'attn_layers.attn_selective_memory_loss' must be a number >= 0, got -1", Error);
  CHECK_THROWS_WITH_AS(model_from_json(head + R"("attn_selective": true, "attn_selective_memory_loss_tau": 0}})"),
                       "config: 'attn_layers.attn_selective_memory_loss_tau' must be a number >= 1e-30, got 0", Error);
  CHECK_THROWS_WITH_AS(model_from_json(head + R"("attn_selective_memory_loss": 0.1}})"),
                       "config: Attention: selective_memory_loss needs selective attention", Error);
  LoadedModel m = model_from_json(head + R"("attn_selective": true, "attn_selective_memory_loss": 0.1}})");
  CHECK(m.transformer->attn_layers->config.attn.selective_memory_loss == 0.1);
  CHECK(m.transformer->attn_layers->config.attn.selective_memory_loss_tau == 1.0);
}

TEST_CASE("Per-layer budgets: each self-attention layer keeps at most its own budget") {
  Generator g(9);
  Tensor tokens = randint(0, 17, {2, 20}, g);
  manual_seed(10);
  auto net = selective_net(0, 3);
  net->eval();
  NoGradGuard no_grad;
  auto decode = [&](const std::vector<int64_t>& budgets, std::vector<int64_t>* most = nullptr) {
    nn::LayersCache cache;
    cache.budgets = budgets;
    std::vector<Tensor> steps;
    for (int64_t t = 0; t < 20; ++t) {
      steps.push_back(net->forward(tokens.narrow(1, t, 1), {}, &cache));
      if (most) {
        most->resize(cache.layers.size());
        for (size_t l = 0; l < cache.layers.size(); ++l)
          (*most)[l] = std::max((*most)[l], cache.layers[l].k.size(2));
      }
    }
    return values(cat(steps, 1));
  };
  std::vector<int64_t> most;
  const std::vector<float> mixed = decode({0, 3, 7}, &most);
  CHECK(most == std::vector<int64_t>{20, 3, 7});  // 0: the whole context
  CHECK(decode({5, 5, 5}) == decode({5}));         // one value holds for every layer
  CHECK(decode({0, 0, 0}) == decode({}));
  CHECK(mixed != decode({}));
  CHECK(mixed != decode({0, 3, 3}));
  nn::LayersCache cache;
  cache.budgets = {4, 4};
  CHECK_THROWS_WITH_AS(net->forward(tokens, {}, &cache),
                       "AttentionLayers: 2 cache budgets for 3 self-attention layers (give one for all, or one per layer)",
                       Error);
  cache.budgets = {4, -1, 4};
  CHECK_THROWS_WITH_AS(net->forward(tokens, {}, &cache), "AttentionLayers: cache budgets must be >= 0, got [4, -1, 4]",
                       Error);
  Generator gen(1);
  CHECK_THROWS_WITH_AS(AutoregressiveWrapper(net).generate(tokens.narrow(1, 0, 2), 2, {.selective_budgets = {4, 4}}, gen),
                       "generate: selective_budgets: 2 values [4, 4] for 3 self-attention layers (give one for all, or "
                       "one per layer)",
                       Error);
}

TEST_CASE("Per-layer budgets: the greedy search keeps the target and cannot shrink its last layer") {
  // Sequences that repeat every 4 tokens, learnt for a few steps: the model
  // needs the keys 4 back, so small budgets cost it loss.
  Generator g(11);
  auto periodic = [&](int64_t rows) {
    Tensor start = randint(0, 17, {rows, 4}, g);
    return cat({start, start, start, start, start.narrow(1, 0, 1)}, 1);  // (rows, 17)
  };
  manual_seed(12);
  auto net = selective_net(0, 3);
  AdamW opt(net->named_parameters(), {.lr = 1e-2});
  for (int step = 0; step < 60; ++step) {
    AutoregressiveWrapper(net).loss(periodic(16)).backward();
    opt.step();
    opt.zero_grad();
  }
  Tensor windows = periodic(6);
  // Unpruned decoding scores as the uncached loss.
  const PrunedEvaluation whole = evaluate_pruned(*net, windows, {}, 4);
  double uncached = 0;
  {
    NoGradGuard no_grad;
    net->eval();
    uncached = AutoregressiveWrapper(net).loss(windows).item<float>();
  }
  CHECK(std::abs(whole.loss - uncached) < 1e-5);
  // A target between the unpruned loss and that of one position per layer: the search has work to do.
  const double worst = evaluate_pruned(*net, windows, {1}, 4).loss;
  REQUIRE(worst > whole.loss + 1e-3);
  const double target = whole.loss + (worst - whole.loss) / 4;
  const BudgetChoice c = choose_selective_budgets(*net, windows, target, true, 4);
  REQUIRE(c.budgets.size() == 3);
  CHECK(c.evaluation.loss <= target);
  CHECK(c.evaluation.loss == evaluate_pruned(*net, windows, c.budgets, 4).loss);
  CHECK(c.evaluations >= 1 + 3 * 4);  // a binary search over 1..16 per layer
  auto above = [&](std::vector<int64_t> budgets, size_t l) {
    --budgets[l];
    return evaluate_pruned(*net, windows, budgets, 4).loss > target;
  };
  // The last layer was searched with the others at their final budgets: one less misses the target.
  if (c.budgets[2] > 1) CHECK(above(c.budgets, 2));
  // The first, with the others at the whole context.
  if (c.budgets[0] > 1) CHECK(above({c.budgets[0], 16, 16}, 0));
  CHECK(std::any_of(c.budgets.begin(), c.budgets.end(), [](int64_t k) { return k < 16; }));  // it did prune
  CHECK(c.budgets != std::vector<int64_t>{1, 1, 1});
  // One budget for all layers: the same for each, one less misses the target.
  const BudgetChoice u = choose_selective_budgets(*net, windows, target, false, 4);
  CHECK(u.evaluation.loss <= target);
  CHECK(std::all_of(u.budgets.begin(), u.budgets.end(), [&](int64_t k) { return k == u.budgets[0]; }));
  if (u.budgets[0] > 1)
    CHECK(evaluate_pruned(*net, windows, {u.budgets[0] - 1}, 4).loss > target);
  CHECK_THROWS_WITH_AS(choose_selective_budgets(*net, windows, whole.loss - 0.1, true, 4),
                       doctest::Contains("choose_selective_budgets: the unpruned loss "), Error);
}
