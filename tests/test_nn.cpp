// nn/ layers and TransformerWrapper: parameter names as x-transformers'
// state_dict, forward against references built from plain ops and the naive
// attention oracle, masks, causality, gradients.
#include "attention_reference.h"
#include "helpers.h"

#include <loom/loom.h>

#include <algorithm>
#include <cmath>
#include <set>

using namespace loom;
using namespace loom::nn;

namespace {
using Inputs = std::vector<Tensor>;

std::vector<std::string> names_of(const Module& m) {
  std::vector<std::string> out;
  for (auto& [name, t] : m.state_dict()) out.push_back(name);
  return out;
}

bool has(const std::vector<std::string>& names, const std::string& n) {
  return std::find(names.begin(), names.end(), n) != names.end();
}

std::vector<double> as_double(const Tensor& t) {
  std::vector<float> v = t.contiguous().to_vector<float>();
  return std::vector<double>(v.begin(), v.end());
}

// (b, n, h·d) -> (b, h, n, d), written independently of nn/attention.cpp.
Tensor heads_of(const Tensor& t, int64_t h) {
  return t.reshape({t.size(0), t.size(1), h, t.size(2) / h}).permute({0, 2, 1, 3});
}
}  // namespace

TEST_CASE("nn::Linear: PyTorch's init range, x Wᵀ + b, gradients") {
  manual_seed(1);
  Linear lin(50, 7);
  CHECK(names_of(lin) == std::vector<std::string>{"weight", "bias"});
  const float bound = 1.0f / std::sqrt(50.0f);
  for (float w : lin.weight.to_vector<float>()) CHECK((w >= -bound && w < bound));
  Generator g(2);
  Tensor x = randn({3, 4, 50}, g);
  std::vector<float> W = lin.weight.to_vector<float>(), B = lin.bias.to_vector<float>(), X = x.to_vector<float>();
  std::vector<double> want;
  for (int64_t r = 0; r < 12; ++r)
    for (int64_t o = 0; o < 7; ++o) {
      double s = B[size_t(o)];
      for (int64_t i = 0; i < 50; ++i) s += double(X[size_t(r * 50 + i)]) * W[size_t(o * 50 + i)];
      want.push_back(s);
    }
  CHECK(close_or_same(lin.forward(x).to_vector<float>(), want, 1e-5, 1e-5));
  CHECK(names_of(Linear(3, 2, false)) == std::vector<std::string>{"weight"});
  CHECK_THROWS_WITH_AS(lin.forward(randn({2, 49}, g)), "Linear: expects input (..., 50), got [2, 49]", Error);
}

TEST_CASE("x-transformers norms: LayerNorm and RMSNorm gains with and without unit offset, ScaleNorm") {
  Generator g(3);
  Tensor x = randn({4, 6}, g) * 3.0f;
  std::vector<float> X = x.to_vector<float>();
  // Reference: RMSNorm = x / max(‖x‖, 1e-12) · √D · gain, per row.
  auto rms_ref = [&](const std::vector<float>& gain) {
    std::vector<double> out;
    for (int64_t r = 0; r < 4; ++r) {
      double ss = 0;
      for (int64_t c = 0; c < 6; ++c) ss += double(X[size_t(r * 6 + c)]) * X[size_t(r * 6 + c)];
      const double inv = std::sqrt(6.0) / std::max(std::sqrt(ss), 1e-12);
      for (int64_t c = 0; c < 6; ++c) out.push_back(X[size_t(r * 6 + c)] * inv * gain[gain.size() == 1 ? 0 : size_t(c)]);
    }
    return out;
  };
  for (bool offset : {false, true}) {
    CAPTURE(offset);
    RMSNorm rms(6, offset);
    CHECK(names_of(rms) == std::vector<std::string>{"g"});
    CHECK(rms.g.to_vector<float>() == std::vector<float>(6, offset ? 0.0f : 1.0f));  // either way the gain is 1
    rms.g.detach().copy_(tensor({0.5f, 1.0f, 1.5f, 2.0f, 2.5f, 3.0f}));
    std::vector<float> gain = rms.g.to_vector<float>();
    if (offset)
      for (float& v : gain) v += 1;
    CHECK(close_or_same(rms.forward(x).to_vector<float>(), rms_ref(gain), 1e-5, 1e-5));
    LayerNorm ln(6, offset);
    CHECK(names_of(ln) == std::vector<std::string>{"gamma"});
    CHECK(ln.forward(x).to_vector<float>() == layer_norm(x, {6}).to_vector<float>());
  }
  auto scale = make_scale_norm(6);
  CHECK(scale->g.sizes() == Shape{1});
  scale->g.detach().fill_(2.0);
  CHECK(close_or_same(scale->forward(x).to_vector<float>(), rms_ref({2.0f}), 1e-5, 1e-5));
  // A zero row stays finite (F.normalize clamps the norm).
  RMSNorm rms(6);
  for (float v : rms.forward(zeros({1, 6})).to_vector<float>()) CHECK(v == 0.0f);
}

TEST_CASE("FeedForward: x-transformers' names and the math of each variant") {
  manual_seed(4);
  Generator g(5);
  Tensor x = randn({2, 3, 8}, g);
  SUBCASE("GELU, biases") {
    FeedForward ff({.dim = 8, .mult = 2});
    CHECK(names_of(ff) == std::vector<std::string>{"ff.0.0.weight", "ff.0.0.bias", "ff.2.weight", "ff.2.bias"});
    Tensor want = linear(gelu(linear(x, ff.proj_in->weight, ff.proj_in->bias)), ff.proj_out->weight, ff.proj_out->bias);
    CHECK(ff.forward(x).to_vector<float>() == want.to_vector<float>());
  }
  SUBCASE("SwiGLU without bias on the output, post-activation LayerNorm") {
    FeedForward ff({.dim = 8, .mult = 2, .glu = true, .swish = true, .post_act_ln = true, .no_bias = true});
    CHECK(names_of(ff) == std::vector<std::string>{"ff.0.proj.weight", "ff.0.proj.bias", "ff.1.gamma", "ff.3.weight"});
    Tensor h = linear(x, ff.proj_in->weight, ff.proj_in->bias);
    Tensor value = h.narrow(-1, 0, 16), gate = h.narrow(-1, 16, 16);
    Tensor want = linear(layer_norm(value * silu(gate), {16}), ff.proj_out->weight);
    CHECK(all_close(ff.forward(x).to_vector<float>(), want.to_vector<float>(), 1e-6f, 1e-5f));
  }
  SUBCASE("ReLU squared, zero-initialised output") {
    FeedForward ff({.dim = 8, .relu_squared = true, .zero_init_output = true});
    CHECK(ff.forward(x).to_vector<float>() == std::vector<float>(48, 0.0f));
    ff.proj_out->weight.detach().fill_(1.0);
    Tensor r = relu(linear(x, ff.proj_in->weight, ff.proj_in->bias));
    CHECK(all_close(ff.forward(x).to_vector<float>(), linear(r * r, ff.proj_out->weight, ff.proj_out->bias).to_vector<float>(),
                    1e-5f, 1e-5f));
  }
}

namespace {
// nn::Attention rebuilt from plain ops and the naive oracle.
Tensor attention_reference(const nn::Attention& a, const Tensor& x, const AttentionInputs& in) {
  const AttentionConfig& o = a.config;
  const Tensor& kv = in.context.defined() ? in.context : x;
  Tensor q = heads_of(matmul(x, a.to_q->weight.t()), o.heads);
  Tensor k = heads_of(matmul(kv, a.to_k->weight.t()), o.kv_heads);
  Tensor v = heads_of(matmul(kv, a.to_v->weight.t()), o.kv_heads);
  auto unit = [](const Tensor& t) { return t / sqrt(sum(t * t, {-1}, true)); };
  if (o.qk_norm) q = unit(q), k = unit(k);
  if (in.rotary) q = apply_rotary_pos_emb(q, in.rotary->freqs), k = apply_rotary_pos_emb(k, in.rotary->freqs);
  loom::AttentionOptions ao;
  Tensor key_mask = in.context_mask.defined() ? in.context_mask : (in.context.defined() ? Tensor() : in.mask);
  ao.bias = in.attn_bias.defined() ? in.attn_bias : in.rel_pos_bias;
  if (o.num_mem_kv > 0) {
    const int64_t b = x.size(0), m = o.num_mem_kv;
    k = cat({repeat(a.mem_k.unsqueeze(0), {b, 1, 1, 1}), k}, 2);
    v = cat({repeat(a.mem_v.unsqueeze(0), {b, 1, 1, 1}), v}, 2);
    if (key_mask.defined()) key_mask = cat({ones({b, m}, kBool), key_mask}, 1);
    if (ao.bias.defined()) ao.bias = pad(ao.bias, {m, 0});
  }
  ao.key_padding_mask = key_mask;
  ao.attn_mask = in.attn_mask;
  ao.causal = o.causal;
  ao.selective = o.selective;
  ao.scale = o.qk_norm ? o.qk_norm_scale : 1.0 / std::sqrt(double(o.dim_head));
  Tensor out = reference::naive_attention(q, k, v, ao);
  out = out.permute({0, 2, 1, 3}).reshape({x.size(0), x.size(1), o.heads * o.value_dim_head});
  if (a.to_v_gate) out = out * sigmoid(linear(x, a.to_v_gate->weight, a.to_v_gate->bias));
  out = matmul(out, a.to_out->weight.t());
  if (in.mask.defined()) out = out * in.mask.to(kFloat32).unsqueeze(-1);
  return out;
}
}  // namespace

TEST_CASE("nn::Attention equals its definition in plain ops, for each option") {
  Generator g(6);
  const int64_t b = 2, n = 7, dim = 16;
  Tensor x = randn({b, n, dim}, g);
  Tensor mask = ones({b, n}, kBool);
  mask.select(0, 1).narrow(0, 5, 2).fill_(0.0);  // sample 1: 5 real tokens
  struct Case {
    const char* name;
    AttentionConfig config;
    bool with_mask, with_context, with_rotary, with_bias;
  };
  std::vector<Case> cases = {
      {"plain", {.dim = dim, .dim_head = 8, .heads = 2}, false, false, false, false},
      {"grouped, causal, masked", {.dim = dim, .dim_head = 4, .heads = 4, .kv_heads = 2, .causal = true}, true, false, false, false},
      {"multi-query, memory kv, T5-style bias", {.dim = dim, .dim_head = 4, .heads = 4, .one_kv_head = true, .num_mem_kv = 3}, true, false, false, true},
      {"qk-norm, gated values, selective", {.dim = dim, .dim_head = 8, .heads = 2, .causal = true, .qk_norm = true, .gate_values = true, .selective = true}, true, false, false, false},
      {"rotary", {.dim = dim, .dim_head = 8, .heads = 2, .causal = true}, false, false, true, false},
      {"cross-attention to a wider context", {.dim = dim, .dim_head = 8, .heads = 2, .dim_context = 24}, true, true, false, false},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    manual_seed(7);
    nn::Attention attn(c.config);
    if (attn.to_v_gate) attn.to_v_gate->weight.detach().copy_(randn(attn.to_v_gate->weight.sizes(), g) * 0.3f);
    AttentionInputs in;
    Tensor context = randn({b, 9, 24}, g), context_mask = ones({b, 9}, kBool);
    context_mask.select(0, 0).narrow(0, 0, 4).fill_(0.0);
    if (c.with_mask) in.mask = mask;
    if (c.with_context) in.context = context, in.context_mask = context_mask;
    RotaryEmbedding rot({.dim = 4});
    RotaryEmbedding::Output r = rot.forward_from_seq_len(n);
    if (c.with_rotary) in.rotary = &r;
    if (c.with_bias) in.rel_pos_bias = randn({4, n, n}, g);
    Tensor got = attn.forward(x, in), want = attention_reference(attn, x, in);
    REQUIRE(got.sizes() == Shape{b, n, dim});
    CHECK(close_or_same(got.to_vector<float>(), as_double(want), 1e-5, 1e-4));
  }
  // The names of a full-featured module are x-transformers', in PyTorch's
  // state_dict order: a module's own parameters first, then its children.
  manual_seed(8);
  nn::Attention full({.dim = dim, .dim_head = 8, .heads = 2, .qk_norm = true, .qk_norm_dim_scale = true, .num_mem_kv = 2,
                      .gate_values = true});
  CHECK(names_of(full) == std::vector<std::string>{"qk_norm_q_scale", "qk_norm_k_scale", "mem_k", "mem_v",
                                                   "to_q.weight", "to_k.weight", "to_v.weight", "to_v_gate.weight",
                                                   "to_v_gate.bias", "to_out.weight"});
  CHECK_THROWS_WITH_AS(nn::Attention({.dim = dim, .heads = 6, .kv_heads = 4}),
                       "Attention: heads (6) must be a multiple of kv_heads (4)", Error);
  CHECK_THROWS_WITH_AS(nn::Attention({.dim = dim, .selective = true}), "Attention: selective attention needs causal = true",
                       Error);
}

TEST_CASE("nn::Attention: masked query rows are zero, gradients check") {
  Generator g(9);
  manual_seed(10);
  nn::Attention attn({.dim = 6, .dim_head = 3, .heads = 2, .causal = true});
  Tensor mask = tensor(std::vector<bool>{true, true, false, true}).reshape({1, 4});
  Tensor out = attn.forward(randn({1, 4, 6}, g), {.mask = mask});
  for (float v : out.select(1, 2).to_vector<float>()) CHECK(v == 0.0f);
  CHECK_GRADCHECK([&](const Inputs& in) { return attn.forward(in[0], {.mask = mask}); },
                  {randn({1, 4, 6}, g).requires_grad_()});
}

TEST_CASE("AttentionLayers: x-transformers' parameter names for each layout") {
  manual_seed(11);
  auto dec = Decoder({.dim = 16, .depth = 2, .heads = 2, .rel_pos_bias = true, .attn = {.dim_head = 8}});
  std::vector<std::string> n = names_of(*dec);
  CHECK(dec->layer_types == std::vector<std::string>{"a", "f", "a", "f"});
  for (const char* want : {"layers.0.0.0.gamma", "layers.0.1.to_q.weight", "layers.0.1.to_out.weight",
                           "layers.1.0.0.gamma", "layers.1.1.ff.0.0.weight", "layers.1.1.ff.2.bias",
                           "layers.3.1.ff.2.weight", "final_norm.gamma", "rel_pos.relative_attention_bias.weight"})
    CHECK_MESSAGE(has(n, want), want);
  auto post = Encoder({.dim = 16, .depth = 1, .heads = 2, .use_rmsnorm = true, .pre_norm = false,
                       .rotary_pos_emb = true, .attn = {.dim_head = 8}});
  n = names_of(*post);
  CHECK(has(n, "layers.0.0.2.g"));  // post-main norm, slot 2
  CHECK(!has(n, "final_norm.g"));
  CHECK(has(n, "rotary_pos_emb.inv_freq"));  // a persistent buffer, as in x-transformers
  auto sandwich = Decoder({.dim = 16, .depth = 1, .heads = 2, .sandwich_norm = true, .macaron = true, .attn = {.dim_head = 8}});
  n = names_of(*sandwich);
  CHECK(sandwich->layer_types == std::vector<std::string>{"f", "a", "f"});
  CHECK(has(n, "layers.0.0.1.gamma"));          // post-branch norm, slot 1
  CHECK(has(n, "layers.0.1.fn.ff.0.0.weight"));  // macaron's Scale(0.5, ff)
  auto cross = Decoder({.dim = 16, .depth = 1, .heads = 2, .cross_attend = true, .rel_pos_bias = true,
                        .cross_rel_pos_bias = true, .attn = {.dim_head = 8}, .cross_attn_dim_context = 24});
  n = names_of(*cross);
  CHECK(cross->layer_types == std::vector<std::string>{"a", "c", "f"});
  CHECK(has(n, "layers.1.1.to_k.weight"));
  CHECK(cross->layers->get<ModuleList>(1)->get<nn::Attention>(1)->to_k->weight.sizes() == Shape{16, 24});
  CHECK(has(n, "cross_rel_pos.relative_attention_bias.weight"));
  CHECK_THROWS_WITH_AS(AttentionLayers({.dim = 16, .heads = 2}),
                       "AttentionLayers: depth must be positive (or give custom_layers), got 0", Error);
  CHECK_THROWS_WITH_AS(AttentionLayers({.dim = 16, .heads = 2, .custom_layers = {"a", "x"}}),
                       "AttentionLayers: custom_layers entries must be 'a', 'c' or 'f', got 'x'", Error);
}

TEST_CASE("AttentionLayers: pre-norm residual stack equals its definition") {
  manual_seed(12);
  Generator g(13);
  auto enc = Encoder({.dim = 8, .depth = 2, .heads = 2, .alibi_pos_bias = true, .attn = {.dim_head = 4}, .ff = {.mult = 2}});
  Tensor x = randn({2, 5, 8}, g), mask = ones({2, 5}, kBool);
  mask.select(0, 0).narrow(0, 3, 2).fill_(0.0);
  Tensor pos = tensor(std::vector<float>{0, 1, 4, 4.5f, 9, 0, 2, 3, 3.5f, 8}).reshape({2, 5});
  // By hand: x += block(norm(x)) per layer, then the final norm; ALiBi at the given positions.
  Tensor h = x;
  Tensor bias = enc->alibi->forward(pos);
  for (size_t i = 0; i < enc->layer_types.size(); ++i) {
    auto entry = enc->layers->get<ModuleList>(i);
    auto norm = entry->get<ModuleList>(0)->get<LayerNorm>(0);
    if (enc->layer_types[i] == "a")
      h = h + entry->get<nn::Attention>(1)->forward(norm->forward(h), {.mask = mask, .rel_pos_bias = bias});
    else
      h = h + entry->get<FeedForward>(1)->forward(norm->forward(h));
  }
  h = std::static_pointer_cast<LayerNorm>(enc->final_norm)->forward(h);
  CHECK(enc->forward(x, {.mask = mask, .pos = pos}).to_vector<float>() == h.to_vector<float>());
}

TEST_CASE("Decoder is causal, Encoder ignores padded keys") {
  manual_seed(14);
  Generator g(15);
  auto dec = Decoder({.dim = 8, .depth = 2, .heads = 2, .rotary_pos_emb = true, .attn = {.dim_head = 4}});
  Tensor x = randn({1, 6, 8}, g);
  Tensor y = dec->forward(x);
  Tensor x2 = x.clone();
  x2.select(1, 4).fill_(5.0);  // change token 4
  Tensor y2 = dec->forward(x2);
  CHECK(y.narrow(1, 0, 4).contiguous().to_vector<float>() == y2.narrow(1, 0, 4).contiguous().to_vector<float>());
  CHECK(y.select(1, 4).to_vector<float>() != y2.select(1, 4).to_vector<float>());

  auto enc = Encoder({.dim = 8, .depth = 2, .heads = 2, .attn = {.dim_head = 4}});
  Tensor mask = tensor(std::vector<bool>{true, true, true, true, false, false}).reshape({1, 6});
  CHECK(enc->forward(x, {.mask = mask}).narrow(1, 0, 4).contiguous().to_vector<float>() ==
        enc->forward(x2, {.mask = mask}).narrow(1, 0, 4).contiguous().to_vector<float>());
}

TEST_CASE("Cross-attention: context of another width, context mask, the separate bidirectional bias") {
  manual_seed(16);
  Generator g(17);
  auto dec = Decoder({.dim = 8, .depth = 1, .heads = 2, .cross_attend = true, .rel_pos_bias = true,
                      .cross_rel_pos_bias = true, .attn = {.dim_head = 4}, .cross_attn_dim_context = 12});
  Tensor x = randn({2, 5, 8}, g), ctx = randn({2, 5, 12}, g), cmask = ones({2, 5}, kBool);
  cmask.select(0, 1).narrow(0, 3, 2).fill_(0.0);
  Tensor y = dec->forward(x, {.context = ctx, .context_mask = cmask});
  CHECK(y.sizes() == Shape{2, 5, 8});
  // Masked context positions do not matter.
  Tensor ctx2 = ctx.clone();
  ctx2.select(0, 1).narrow(0, 3, 2).fill_(9.0);
  CHECK(dec->forward(x, {.context = ctx2, .context_mask = cmask}).select(0, 1).to_vector<float>() ==
        y.select(0, 1).to_vector<float>());
  // A decoding step with explicit positions sees the same cross bias as the full pass: query 2 of 5.
  Tensor full = dec->cross_rel_pos->forward(arange(5), arange(5));
  Tensor step = dec->cross_rel_pos->forward(tensor(std::vector<int64_t>{2}), arange(5));
  CHECK(step.to_vector<float>() == full.narrow(1, 2, 1).contiguous().to_vector<float>());
  CHECK_THROWS_WITH_AS(dec->forward(x), "AttentionLayers: cross_attend needs a context", Error);
}

TEST_CASE("TransformerWrapper: names, shapes, tied embedding, memory tokens, and it learns") {
  manual_seed(18);
  TransformerWrapper model({.num_tokens = 11, .max_seq_len = 8,
                            .attn_layers = Decoder({.dim = 16, .depth = 1, .heads = 2, .attn = {.dim_head = 8}})});
  std::vector<std::string> n = names_of(model);
  for (const char* want : {"token_emb.emb.weight", "pos_emb.emb.weight", "attn_layers.layers.0.1.to_q.weight",
                           "attn_layers.final_norm.gamma", "to_logits.weight"})
    CHECK_MESSAGE(has(n, want), want);
  Tensor tokens = tensor(std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8, 2, 4, 6, 8, 10, 1, 3, 5}).reshape({2, 8});
  CHECK(model.forward(tokens).sizes() == Shape{2, 8, 11});
  CHECK(model.forward(tokens, {.return_embeddings = true}).sizes() == Shape{2, 8, 16});
  CHECK_THROWS_WITH_AS(model.forward(zeros({1, 9}, kInt64)), "TransformerWrapper: sequence length 9 exceeds max_seq_len 8",
                       Error);

  // Rotary turns the absolute embedding off (x-transformers' default).
  TransformerWrapper rot({.num_tokens = 11, .max_seq_len = 8,
                          .attn_layers = Decoder({.dim = 16, .depth = 1, .heads = 2, .rotary_pos_emb = true, .attn = {.dim_head = 8}}),
                          .num_memory_tokens = 2, .tie_embedding = true});
  n = names_of(rot);
  CHECK(!has(n, "pos_emb.emb.weight"));
  CHECK(!has(n, "to_logits.weight"));
  CHECK(has(n, "memory_tokens"));
  CHECK(rot.forward(tokens).sizes() == Shape{2, 8, 11});

  // Next-token prediction on two fixed sequences: the loss falls well below its start.
  std::vector<Tensor> params = model.parameters();
  Tensor inp = tokens.narrow(1, 0, 7), target = tokens.narrow(1, 1, 7);
  float first = 0, last = 0;
  for (int step = 0; step < 60; ++step) {
    for (Tensor& p : params) p.mutable_grad() = Tensor();  // zero_grad (set to none)
    Tensor loss = cross_entropy(model.forward(inp).reshape({14, 11}), target.reshape({14}));
    loss.backward();
    NoGradGuard no_grad;
    for (Tensor& p : params) p -= 0.1f * p.grad();
    if (step == 0) first = loss.item<float>();
    last = loss.item<float>();
  }
  CHECK(first > 2.0f);
  CHECK(last < 0.5f * first);
}

TEST_CASE("Gradient checks through the layers: FeedForward (GLU), norms, a small Decoder stack") {
  Generator g(20);
  manual_seed(21);
  FeedForward ff({.dim = 4, .mult = 1.5, .glu = true, .post_act_ln = true});
  CHECK_GRADCHECK([&](const Inputs& in) { return ff.forward(in[0]); }, {randn({2, 3, 4}, g).requires_grad_()});
  RMSNorm rms(5, true);
  rms.g.detach().copy_(randn({5}, g));
  CHECK_GRADCHECK([&](const Inputs& in) { return rms.forward(in[0]); }, {randn({3, 5}, g).requires_grad_()});
  auto dec = Decoder({.dim = 6, .depth = 1, .heads = 2, .rel_pos_bias = true, .attn = {.dim_head = 3, .num_mem_kv = 1},
                      .ff = {.mult = 1}});
  CHECK_GRADCHECK([&](const Inputs& in) { return dec->forward(in[0]); }, {randn({1, 4, 6}, g).requires_grad_()});
}

TEST_CASE("cross_attn_self_rel_pos hands the causal self-attention bias to cross-attention (for comparisons)") {
  manual_seed(22);
  Generator g(23);
  auto reuse = Decoder({.dim = 8, .depth = 1, .heads = 2, .cross_attend = true, .rel_pos_bias = true,
                        .cross_attn_self_rel_pos = true, .attn = {.dim_head = 4}});
  Tensor x = randn({1, 5, 8}, g), ctx = randn({1, 5, 8}, g);
  // By hand: the cross layer gets rel_pos(5, 5), the same bias as self-attention.
  Tensor bias = reuse->rel_pos->forward(5, 5);
  Tensor h = x;
  for (size_t i = 0; i < reuse->layer_types.size(); ++i) {
    auto entry = reuse->layers->get<ModuleList>(i);
    auto norm = entry->get<ModuleList>(0)->get<LayerNorm>(0);
    const std::string& t = reuse->layer_types[i];
    if (t == "f") h = h + entry->get<FeedForward>(1)->forward(norm->forward(h));
    else if (t == "a") h = h + entry->get<nn::Attention>(1)->forward(norm->forward(h), {.rel_pos_bias = bias});
    else h = h + entry->get<nn::Attention>(1)->forward(norm->forward(h), {.context = ctx, .rel_pos_bias = bias});
  }
  h = std::static_pointer_cast<LayerNorm>(reuse->final_norm)->forward(h);
  CHECK(reuse->forward(x, {.context = ctx}).to_vector<float>() == h.to_vector<float>());
  CHECK_THROWS_WITH_AS(Decoder({.dim = 8, .depth = 1, .heads = 2, .cross_attend = true, .cross_attn_self_rel_pos = true}),
                       "AttentionLayers: cross_attn_self_rel_pos needs cross_attend and rel_pos_bias, and excludes "
                       "cross_rel_pos_bias",
                       Error);
}

TEST_CASE("nn::Dropout: drops and rescales in training, identity in eval") {
  manual_seed(30);
  nn::Dropout drop(0.25);
  Tensor x = ones({4000});
  std::vector<float> y = drop.forward(x).to_vector<float>();
  int64_t zeros_seen = 0;
  for (float v : y) {
    CHECK((v == 0.0f || v == doctest::Approx(1.0f / 0.75f)));
    zeros_seen += v == 0.0f;
  }
  CHECK(std::abs(double(zeros_seen) / 4000 - 0.25) < 0.03);
  drop.eval();
  CHECK(drop.forward(x).to_vector<float>() == x.to_vector<float>());
  CHECK_THROWS_WITH_AS(nn::Dropout(1.0), "Dropout: p must be in [0, 1), got 1", Error);
}
