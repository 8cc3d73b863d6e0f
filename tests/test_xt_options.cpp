// x-transformers' options beyond the core ones, each checked three ways:
// the parameter names (x-transformers' checkpoint layout), the forward
// against a definition written here in plain ops from x-transformers' source
// (with the parameters looked up by their x-transformers names), and the
// gradients (every parameter's against the definition's, the inputs' by
// finite differences with loom::gradcheck).
#include "helpers.h"

#include <loom/loom.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

using namespace loom;
using namespace loom::nn;

namespace {
using Inputs = std::vector<Tensor>;
constexpr double kMaxNeg = -3.4028234663852886e38;

std::vector<std::string> names_of(const Module& m) {
  std::vector<std::string> out;
  for (auto& [name, t] : m.state_dict()) out.push_back(name);
  return out;
}

bool has(const Module& m, const std::string& name) {
  auto n = names_of(m);
  return std::find(n.begin(), n.end(), name) != n.end();
}

// A parameter or buffer by its x-transformers name.
Tensor P(const Module& m, const std::string& name) {
  for (auto& [n, t] : m.state_dict())
    if (n == name) return t;
  FAIL("no parameter named " << name);
  return Tensor();
}

std::vector<double> as_double(const Tensor& t) {
  std::vector<float> v = t.contiguous().to_vector<float>();
  return std::vector<double>(v.begin(), v.end());
}

// Moves every parameter off its initial value (zero-initialised gates,
// identity talking heads, unit gains), as the x-transformers fixtures do.
void perturb(Module& m, Generator& g, float scale = 0.3f) {
  NoGradGuard no_grad;
  for (auto& [name, t] : m.named_parameters()) t.add_(randn(t.sizes(), g) * scale);
}

void zero_grads(const Module& m, const std::vector<Tensor>& inputs = {}) {
  for (auto& [name, t] : m.named_parameters()) t.mutable_grad() = Tensor();
  for (const Tensor& t : inputs) t.mutable_grad() = Tensor();
}

// The three checks: forward equal to the definition, every parameter's and
// input's gradient of L = sum(out · R) equal to the definition's, and
// gradcheck of the module over its inputs.
// (definition_params: where the definition's parameters live, when it is
// another module with the same names.)
void check_against_definition(const Module& m, const std::function<Tensor(const Inputs&)>& module_fn,
                              const std::function<Tensor(const Inputs&)>& definition, const Inputs& inputs,
                              bool finite_differences = true, double rtol = 1e-4,
                              const Module* definition_params = nullptr) {
  const Module& dm = definition_params ? *definition_params : m;
  Generator g(77);
  Tensor got = module_fn(inputs), want = definition(inputs);
  REQUIRE(got.sizes() == want.sizes());
  CHECK(close_or_same(got.to_vector<float>(), as_double(want), 1e-5, rtol));
  Tensor r = randn(got.sizes(), g);
  zero_grads(m, inputs);
  (got * r).sum().backward();
  std::map<std::string, Tensor> grads;
  for (auto& [name, t] : m.named_parameters()) grads[name] = t.grad();
  std::vector<Tensor> input_grads;
  for (const Tensor& t : inputs) input_grads.push_back(t.requires_grad() ? t.grad() : Tensor());
  zero_grads(m, inputs);
  zero_grads(dm);
  (definition(inputs) * r).sum().backward();
  for (auto& entry : dm.named_parameters()) {  // (no structured binding: clang 14 cannot capture one)
    const std::string name = entry.first;
    const Tensor& t = entry.second;
    CAPTURE(name);
    REQUIRE(grads[name].defined() == t.grad().defined());
    if (!t.grad().defined()) continue;
    double largest = 0;
    for (double v : as_double(t.grad())) largest = std::max(largest, std::abs(v));
    CHECK(close_or_same(grads[name].to_vector<float>(), as_double(t.grad()), 1e-5 * std::max(largest, 1.0), 1e-3));
  }
  for (size_t i = 0; i < inputs.size(); ++i)
    if (inputs[i].requires_grad()) {
      CAPTURE(i);
      REQUIRE(input_grads[i].defined());
      CHECK(close_or_same(input_grads[i].to_vector<float>(), as_double(inputs[i].grad()), 1e-5, 1e-3));
    }
  zero_grads(m, inputs);
  if (finite_differences) {
    // A step of 1e-2: at 1e-3 float32 rounding of L through a stack of
    // layers is as large as the difference quotient (the autograd above
    // already equals the plain-ops definition's).
    GradcheckResult gc = gradcheck(module_fn, inputs, {.eps = 1e-2});
    CHECK_MESSAGE(gc.passed, gc.report);
  }
}

// ---- x-transformers' Attention + Attend, written out --------------------------

// nn.Conv2d(h, h, 1) over heads, one head at a time: out_g = Σ_h W[g, h] t_h.
Tensor conv_heads(const Tensor& w, const Tensor& t) {
  const int64_t h = t.size(1);
  std::vector<Tensor> out;
  for (int64_t gi = 0; gi < h; ++gi) {
    Tensor acc;
    for (int64_t hi = 0; hi < h; ++hi) {
      Tensor term = t.select(1, hi) * w.select(0, gi).select(0, hi).reshape({});
      acc = acc.defined() ? acc + term : term;
    }
    out.push_back(acc);
  }
  return stack(out, 1);
}

// The k-th largest of each row, by sorting a copy.
Tensor kth_by_sort(const Tensor& t, int64_t k) {
  const int64_t j = t.size(-1);
  std::vector<float> v = t.detach().contiguous().to_vector<float>(), out;
  for (size_t r = 0; r * size_t(j) < v.size(); ++r) {
    std::vector<float> row(v.begin() + r * j, v.begin() + (r + 1) * j);
    std::sort(row.begin(), row.end(), std::greater<float>());
    out.push_back(row[size_t(std::min(k, j) - 1)]);
  }
  Shape s = t.sizes();
  s.back() = 1;
  return from_vector(out, s);
}

struct RefInputs {
  Tensor mask, attn_mask, value_residual, bias;
  Tensor* values = nullptr;
};

// x-transformers 2.3.12 Attention.forward and Attend.forward for
// self-attention, parameters by name; a row with nothing visible gives
// zeros (loom's rule, docs/attention.md).
Tensor xt_attention(const nn::Attention& a, const Tensor& x, const RefInputs& in) {
  const AttentionConfig& c = a.config;
  const int64_t b = x.size(0), n = x.size(1), h = c.heads, g = c.kv_heads, d = c.dim_head, dv = c.value_dim_head;
  auto W = [&](const std::string& name) { return P(a, name); };
  Tensor q = linear(x, W("to_q.weight")).reshape({b, n, h, d}).permute({0, 2, 1, 3});
  Tensor k = linear(x, W("to_k.weight")).reshape({b, n, g, d}).permute({0, 2, 1, 3});
  Tensor v = linear(x, W("to_v.weight")).reshape({b, n, g, dv}).permute({0, 2, 1, 3});
  if (in.values) *in.values = v;
  if (in.value_residual.defined()) {  // value_residual.lerp(v, mix)
    Tensor mix = c.learned_value_residual_mix
                     ? sigmoid(linear(x, W("to_value_residual_mix.0.weight"), W("to_value_residual_mix.0.bias")))
                           .permute({0, 2, 1})
                           .unsqueeze(-1)
                     : full({1}, 0.5);
    v = in.value_residual * (1.0f - mix) + v * mix;
  }
  std::vector<Tensor> kr, vr;  // 'b kvh n d -> b (r kvh) n d'
  for (int64_t r = 0; r < h / g; ++r) kr.push_back(k), vr.push_back(v);
  k = cat(kr, 1), v = cat(vr, 1);
  Tensor sim = matmul(q, k.transpose(-1, -2)) * float(1.0 / std::sqrt(double(d)));
  Tensor pre_to_post;
  if (c.pre_scale_post_talking_heads) pre_to_post = conv_heads(W("attend.pre_scale_post_talking_heads.weight"), sim);
  if (c.pre_talking_heads) sim = sim + conv_heads(W("attend.pre_softmax_talking_heads.weight"), sim);
  if (in.bias.defined()) sim = sim + in.bias;
  if (c.softclamp_logits) sim = tanh(sim / float(c.logit_softclamp_value)) * float(c.logit_softclamp_value);
  Tensor allowed = ones({b, 1, n, n}, kBool);
  if (in.mask.defined()) allowed = logical_and(allowed, in.mask.view({b, 1, 1, n}));
  if (in.attn_mask.defined()) allowed = logical_and(allowed, in.attn_mask);
  sim = where(allowed, sim, full({1}, kMaxNeg));
  if (c.causal) sim = where(tril(ones({n, n}, kBool)), sim, full({1}, kMaxNeg));
  Tensor attn;
  if (c.sparse_topk > 0) {
    Tensor keep = logical_and(ge(sim, kth_by_sort(sim, c.sparse_topk)), gt(sim, full({1}, kMaxNeg)));
    attn = softmax(where(keep, sim, full({1}, kMaxNeg)), -1);
    if (c.sparse_topk_straight_through) {
      Tensor soft = softmax(sim, -1);
      attn = attn.detach() + soft - soft.detach();
    }
  } else {
    attn = softmax(sim, -1);
  }
  if (c.post_talking_heads) attn = conv_heads(W("attend.post_softmax_talking_heads.weight"), attn);
  if (c.pre_scale_post_talking_heads) attn = attn * pre_to_post;
  Tensor out = matmul(attn, v);
  Tensor visible = allowed.to(kFloat32);
  if (c.causal) visible = visible * tril(ones({n, n}));
  out = out * gt(sum(visible, {-1}, true), full({1}, 0.0)).to(kFloat32);
  if (c.head_scale) out = out * W("head_scale_params");
  if (c.gate_value_heads)
    out = out * sigmoid(linear(x, W("to_v_head_gate.weight"), W("to_v_head_gate.bias"))).permute({0, 2, 1}).unsqueeze(-1);
  out = out.permute({0, 2, 1, 3}).reshape({b, n, h * dv});
  if (c.gate_values) out = out * sigmoid(linear(x, W("to_v_gate.weight"), W("to_v_gate.bias")));
  if (c.on_attn) {
    Tensor y = linear(out, W("to_out.0.weight"));
    out = y.narrow(-1, 0, c.dim_out) * sigmoid(y.narrow(-1, c.dim_out, c.dim_out));
  } else {
    out = linear(out, W("to_out.weight"));
  }
  if (in.mask.defined()) out = out * in.mask.to(kFloat32).unsqueeze(-1);
  return out;
}
}  // namespace

TEST_CASE("Attention options on the logits and heads equal x-transformers' definition, gradients checked") {
  Generator g(101);
  const int64_t b = 2, n = 6, dim = 12;
  Tensor mask = ones({b, n}, kBool);
  mask.select(0, 1).narrow(0, 4, 2).fill_(0.0);
  Tensor attn_mask = rand({n, n}, g) > 0.25;  // a few holes
  struct Case {
    const char* name;
    AttentionConfig config;
    std::vector<std::string> extra_names;  // beyond to_q, to_k, to_v
  };
  const std::vector<Case> cases = {
      {"attn_pre_talking_heads", {.pre_talking_heads = true}, {"attend.pre_softmax_talking_heads.weight", "to_out.weight"}},
      {"attn_post_talking_heads", {.causal = true, .post_talking_heads = true},
       {"attend.post_softmax_talking_heads.weight", "to_out.weight"}},
      {"attn_pre_scale_post_talking_heads", {.pre_scale_post_talking_heads = true},
       {"attend.pre_scale_post_talking_heads.weight", "to_out.weight"}},
      {"all three talking heads, grouped kv heads", {.kv_heads = 1, .causal = true, .pre_talking_heads = true,
                                                     .post_talking_heads = true, .pre_scale_post_talking_heads = true},
       {"attend.pre_softmax_talking_heads.weight", "attend.post_softmax_talking_heads.weight",
        "attend.pre_scale_post_talking_heads.weight", "to_out.weight"}},
      {"attn_head_scale", {.head_scale = true}, {"head_scale_params", "to_out.weight"}},
      {"attn_gate_value_heads", {.gate_value_heads = true}, {"to_v_head_gate.weight", "to_v_head_gate.bias", "to_out.weight"}},
      {"attn_on_attn", {.on_attn = true}, {"to_out.0.weight"}},
      {"attn_softclamp_logits (value 1.5)", {.causal = true, .softclamp_logits = true, .logit_softclamp_value = 1.5},
       {"to_out.weight"}},
      {"attn_sparse_topk 3", {.causal = true, .sparse_topk = 3}, {"to_out.weight"}},
      {"attn_sparse_topk 2, straight through", {.sparse_topk = 2, .sparse_topk_straight_through = true}, {"to_out.weight"}},
      {"head scale, head gates, value gates, on_attn together",
       {.gate_values = true, .gate_value_heads = true, .head_scale = true, .on_attn = true},
       {"to_v_gate.weight", "to_v_gate.bias", "to_v_head_gate.weight", "to_v_head_gate.bias", "head_scale_params",
        "to_out.0.weight"}},
  };
  for (const Case& c : cases) {
    const std::string name = c.name;
    CAPTURE(name);
    AttentionConfig cfg = c.config;
    cfg.dim = dim, cfg.dim_head = 4, cfg.heads = 3;
    manual_seed(102);
    nn::Attention attn(cfg);
    std::set<std::string> want = {"to_q.weight", "to_k.weight", "to_v.weight"};
    want.insert(c.extra_names.begin(), c.extra_names.end());
    auto names = names_of(attn);
    CHECK(std::set<std::string>(names.begin(), names.end()) == want);
    CHECK(names.size() == want.size());
    if (cfg.pre_talking_heads)  // dirac init: the identity across heads
      CHECK(P(attn, "attend.pre_softmax_talking_heads.weight").reshape({3, 3}).to_vector<float>() ==
            std::vector<float>{1, 0, 0, 0, 1, 0, 0, 0, 1});
    if (cfg.gate_value_heads) CHECK(P(attn, "to_v_head_gate.bias").to_vector<float>() == std::vector<float>(3, 10.0f));
    if (cfg.head_scale) CHECK(P(attn, "head_scale_params").sizes() == Shape{1, 3, 1, 1});
    CHECK(attn.materialises() == (cfg.pre_talking_heads || cfg.post_talking_heads || cfg.pre_scale_post_talking_heads ||
                                  cfg.softclamp_logits || cfg.sparse_topk > 0));
    perturb(attn, g);
    Tensor x = randn({b, n, dim}, g).requires_grad_();
    // Masks only without top-k, whose kept set a finite step could change.
    const bool masked = cfg.sparse_topk == 0;
    check_against_definition(
        attn,
        [&](const Inputs& in) {
          return attn.forward(in[0], {.mask = masked ? mask : Tensor(), .attn_mask = masked ? attn_mask : Tensor()});
        },
        [&](const Inputs& in) {
          return xt_attention(attn, in[0], {.mask = masked ? mask : Tensor(), .attn_mask = masked ? attn_mask : Tensor()});
        },
        {x}, /*finite_differences=*/!cfg.sparse_topk_straight_through);
  }
  // Straight through: the forward is the top-k softmax's, the gradient the full softmax's.
  manual_seed(103);
  nn::Attention st({.dim = dim, .dim_head = 4, .heads = 3, .sparse_topk = 2, .sparse_topk_straight_through = true});
  nn::Attention full_softmax({.dim = dim, .dim_head = 4, .heads = 3});
  full_softmax.load_state_dict(st.state_dict());
  nn::Attention topk({.dim = dim, .dim_head = 4, .heads = 3, .sparse_topk = 2});
  topk.load_state_dict(st.state_dict());
  Tensor x = randn({b, n, dim}, g).requires_grad_();
  CHECK(st.forward(x).to_vector<float>() == topk.forward(x).to_vector<float>());
  Tensor r = randn({b, n, dim}, g);
  // The loss reaches q only through the weights, and dL/dweights does not
  // depend on them: so to_q's gradient is the full softmax model's.
  (st.forward(x) * r).sum().backward();
  Tensor st_grad = st.to_q->weight.grad();
  (full_softmax.forward(x) * r).sum().backward();
  CHECK(close_or_same(st_grad.to_vector<float>(), as_double(full_softmax.to_q->weight.grad()), 1e-5, 1e-4));
}

TEST_CASE("Value residual (add_value_residual): the first attention's values mixed into the later ones") {
  Generator g(111);
  SUBCASE("learned mix, per head and token, in every self-attention but the first") {
    manual_seed(112);
    auto dec = Decoder({.dim = 8, .depth = 3, .heads = 2, .add_value_residual = true, .attn = {.dim_head = 4}, .ff = {.mult = 1}});
    CHECK(!has(*dec, "layers.0.1.to_value_residual_mix.0.weight"));  // the first layer makes the values
    CHECK(P(*dec, "layers.2.1.to_value_residual_mix.0.weight").sizes() == Shape{2, 8});
    CHECK(P(*dec, "layers.4.1.to_value_residual_mix.0.bias").sizes() == Shape{2});
    perturb(*dec, g);
    Tensor x = randn({2, 5, 8}, g).requires_grad_();
    check_against_definition(
        *dec, [&](const Inputs& in) { return dec->forward(in[0]); },
        [&](const Inputs& in) {
          Tensor h = in[0], first;
          for (size_t i = 0; i < dec->stack().size(); ++i) {
            const auto& l = dec->stack()[i];
            Tensor normed = std::static_pointer_cast<LayerNorm>(l.pre_norm)->forward(h);
            if (l.type == "a") {
              Tensor values;
              h = h + xt_attention(*l.attention, normed, {.value_residual = first, .values = &values});
              if (!first.defined()) first = values;
            } else {
              h = h + l.ff->forward(normed);
            }
          }
          return std::static_pointer_cast<LayerNorm>(dec->final_norm)->forward(h);
        },
        {x});
  }
  SUBCASE("0.5 mix without learned_value_residual_mix, and for cross-attention") {
    manual_seed(113);
    auto dec = Decoder({.dim = 8, .depth = 2, .heads = 2, .cross_attend = true, .add_value_residual = true,
                        .learned_value_residual_mix = false, .attn = {.dim_head = 4}, .ff = {.mult = 1}});
    for (const std::string& n : names_of(*dec)) CHECK(n.find("value_residual_mix") == std::string::npos);
    perturb(*dec, g);
    Tensor x = randn({1, 4, 8}, g), ctx = randn({1, 3, 8}, g);
    // By hand: layers a c f a c f; values of the first a and the first c.
    Tensor h = x, first_self, first_cross;
    for (const auto& l : dec->stack()) {
      Tensor normed = std::static_pointer_cast<LayerNorm>(l.pre_norm)->forward(h);
      if (l.type == "f") {
        h = h + l.ff->forward(normed);
        continue;
      }
      Tensor& first = l.type == "a" ? first_self : first_cross;
      Tensor values;
      AttentionInputs ai{.context = l.type == "c" ? ctx : Tensor()};
      ai.value_residual = first, ai.values_out = first.defined() ? nullptr : &values;
      h = h + l.attention->forward(normed, ai);
      if (!first.defined()) first = values;
    }
    Tensor want = std::static_pointer_cast<LayerNorm>(dec->final_norm)->forward(h);
    CHECK(close_or_same(dec->forward(x, {.context = ctx}).to_vector<float>(), as_double(want), 1e-6, 1e-5));
    // and the cross layer's 0.5 mix itself, against the definition
    const auto& c1 = dec->stack()[4];
    Tensor v1 = randn({1, 2, 3, 4}, g);
    Tensor v = linear(ctx, P(*c1.attention, "to_v.weight")).reshape({1, 3, 2, 4}).permute({0, 2, 1, 3});
    Tensor hq = randn({1, 4, 8}, g);
    AttentionInputs ai{.context = ctx};
    ai.value_residual = v1;
    Tensor got = c1.attention->forward(hq, ai);
    nn::Attention plain({.dim = 8, .dim_head = 4, .heads = 2});
    plain.load_state_dict(c1.attention->state_dict());
    // the same attention with its values replaced by 0.5 (v1 + v): scale to_v? not linear in v1; compare by hand
    Tensor q = linear(hq, P(plain, "to_q.weight")).reshape({1, 4, 2, 4}).permute({0, 2, 1, 3});
    Tensor k = linear(ctx, P(plain, "to_k.weight")).reshape({1, 3, 2, 4}).permute({0, 2, 1, 3});
    Tensor a = softmax(matmul(q, k.transpose(-1, -2)) * 0.5f, -1);
    Tensor o = matmul(a, (v1 + v) * 0.5f).permute({0, 2, 1, 3}).reshape({1, 4, 8});
    CHECK(close_or_same(got.to_vector<float>(), as_double(linear(o, P(plain, "to_out.weight"))), 1e-6, 1e-5));
  }
  CHECK_THROWS_WITH_AS(Decoder({.dim = 8, .depth = 2, .heads = 2, .add_value_residual = true, .attn = {.dim_head = 4, .kv_heads = 1}}),
                       "Attention: a learned value residual mix needs kv_heads == heads, got 1 and 2", Error);
}

namespace {
// ---- x-transformers' AttentionLayers, written out -----------------------------

// The norms of x-transformers: LayerNorm (bias-less), RMSNorm, SimpleRMSNorm,
// AdaptiveLayerNorm, AdaptiveRMSNorm, by the parameters under `prefix`.
Tensor xt_norm(const AttentionLayers& L, const std::string& prefix, const Tensor& x, const Tensor& cond) {
  const AttentionLayersConfig& o = L.config;
  const int64_t d = o.dim;
  auto ln = [&](const Tensor& t) {
    Tensor mu = mean(t, {-1}, true);
    return (t - mu) / sqrt(var(t, {-1}, 0, true) + 1e-5f);
  };
  auto rms = [&](const Tensor& t) { return t / clamp(sqrt(sum(t * t, {-1}, true)), 1e-12) * std::sqrt(float(d)); };
  const float offset = o.norm_add_unit_offset ? 1.0f : 0.0f;
  if (o.use_adaptive_layernorm) return ln(x) * (linear(cond, P(L, prefix + ".to_gamma.weight")) + 1.0f);
  if (o.use_adaptive_rmsnorm) return rms(x) * (linear(cond, P(L, prefix + ".to_gamma.weight")) + 1.0f);
  if (o.use_simple_rmsnorm) return rms(x);
  if (o.use_rmsnorm) return rms(x) * (P(L, prefix + ".g") + offset);
  return ln(x) * (P(L, prefix + ".gamma") + offset);
}

// ShiftTokens: chunk c of the features comes from position t - shifts[c].
Tensor xt_shift(const Tensor& x, const std::vector<int64_t>& shifts, const Tensor& mask) {
  const int64_t n = x.size(1), d = x.size(2), per = d / int64_t(shifts.size());
  Tensor xm = mask.defined() ? x * mask.to(kFloat32).unsqueeze(-1) : x;
  std::vector<Tensor> chunks;
  for (size_t c = 0; c < shifts.size(); ++c) {
    const int64_t s = shifts[c];
    std::vector<Tensor> rows;
    for (int64_t t = 0; t < n; ++t) {
      const int64_t from = t - s;
      Tensor src = s == 0 ? x : xm;
      rows.push_back(from >= 0 && from < n ? src.select(1, from).narrow(-1, int64_t(c) * per, per)
                                           : zeros({x.size(0), per}));
    }
    chunks.push_back(stack(rows, 1));
  }
  if (per * int64_t(shifts.size()) < d) chunks.push_back(x.narrow(-1, per * int64_t(shifts.size()), d - per * int64_t(shifts.size())));
  return cat(chunks, -1);
}

// torch.nn.GRUCell(input = x, hidden = h), gates r, z, n.
Tensor xt_gru(const AttentionLayers& L, const std::string& p, const Tensor& x, const Tensor& h) {
  const int64_t d = x.size(-1);
  Tensor wi = P(L, p + "gru.weight_ih"), wh = P(L, p + "gru.weight_hh"), bi = P(L, p + "gru.bias_ih"), bh = P(L, p + "gru.bias_hh");
  auto gate = [&](int64_t k, const Tensor& w, const Tensor& bias, const Tensor& t) {
    return linear(t, w.narrow(0, k * d, d), bias.narrow(0, k * d, d));
  };
  Tensor r = sigmoid(gate(0, wi, bi, x) + gate(0, wh, bh, h));
  Tensor z = sigmoid(gate(1, wi, bi, x) + gate(1, wh, bh, h));
  Tensor cand = tanh(gate(2, wi, bi, x) + r * gate(2, wh, bh, h));
  return (1.0f - z) * cand + z * h;
}

struct XtLayersInputs {
  Tensor mask, condition;
  Tensor bias;  // the self-attention position bias, if any
};

// x-transformers' AttentionLayers.forward for 'a' and 'f' layers.
Tensor xt_layers(const AttentionLayers& L, const Tensor& x_in, const XtLayersInputs& in) {
  const AttentionLayersConfig& o = L.config;
  const int64_t b = x_in.size(0), n = x_in.size(1), d = o.dim, s = o.num_residual_streams;
  Tensor cond = in.condition;
  if (cond.defined() && cond.dim() == 2) cond = cond.unsqueeze(1);
  if (o.adaptive_condition_mlp) cond = silu(linear(cond, P(L, "adaptive_mlp.0.weight")));
  Tensor x = x_in;
  if (s > 1) {  // einx.add('b n d, s d -> (b s) n d')
    std::vector<Tensor> copies;
    for (int64_t r = 0; r < b; ++r)
      for (int64_t k = 0; k < s; ++k) copies.push_back(x_in.select(0, r) + P(L, "stream_emb").select(0, k));
    x = stack(copies, 0);
  }
  for (size_t i = 0; i < L.stack().size(); ++i) {
    const auto& l = L.stack()[i];
    const std::string p = "layers." + std::to_string(i) + ".";
    Tensor residual = x, branch = x, beta;
    if (s > 1) {  // HyperConnection.prepare
      Tensor res = x.reshape({b, s, n, d}).permute({0, 2, 1, 3});
      Tensor mu = mean(res, {-1}, true);
      Tensor normed = (res - mu) / sqrt(var(res, {-1}, 0, true) + 1e-5f) * P(L, p + "2.norm.weight");
      Tensor alpha = tanh(matmul(normed, P(L, p + "2.dynamic_alpha_fn"))) * P(L, p + "2.dynamic_alpha_scale") +
                     P(L, p + "2.static_alpha");
      beta = tanh(sum(normed * P(L, p + "2.dynamic_beta_fn"), {-1})) * P(L, p + "2.dynamic_beta_scale") +
             P(L, p + "2.static_beta");
      // mix_h[t] = Σ_s alpha[s, t] res[s]
      std::vector<Tensor> views;
      for (int64_t t = 0; t <= s; ++t) views.push_back(sum(res * alpha.select(-1, t).unsqueeze(-1), {2}));
      branch = views[0];
      residual = stack(std::vector<Tensor>(views.begin() + 1, views.end()), 2);
    }
    Tensor h = l.pre_norm ? xt_norm(L, p + "0.0", branch, cond) : branch;
    std::string block = p + "1.";
    const bool scaled = o.use_layerscale || o.use_adaptive_layerscale;
    if (scaled) block += "fn.";
    if (!l.shifts.empty()) h = xt_shift(h, l.shifts, l.type == "f" ? Tensor() : in.mask), block += "fn.";
    Tensor out;
    if (l.type == "a") out = xt_attention(*l.attention, h, {.mask = in.mask, .bias = in.bias});
    else out = l.ff->forward(h);
    if (l.type == "a") CHECK(has(L, block + "to_q.weight"));  // the block sits under its wrappers' fn
    else CHECK(has(L, block + "ff.0.0.weight"));
    if (o.use_layerscale) out = out * (P(L, p + "1.gamma") + (o.norm_add_unit_offset ? 1.0f : 0.0f));
    if (o.use_adaptive_layerscale) out = out * sigmoid(linear(cond, P(L, p + "1.to_gamma.weight"), P(L, p + "1.to_gamma.bias")));
    if (l.post_branch_norm) out = xt_norm(L, p + "0.1", out, cond);
    if (s > 1) {  // HyperConnection.forward
      Tensor r = out.unsqueeze(2) * beta.unsqueeze(-1) + residual;  // (b, n, s, d)
      x = r.permute({0, 2, 1, 3}).reshape({b * s, n, d});
    } else if (o.gate_residual) {
      Tensor r = o.scale_residual ? residual * P(L, p + "2.residual_scale") : residual;
      x = xt_gru(L, p + "2.", out.reshape({b * n, d}), r.reshape({b * n, d})).reshape({b, n, d});
    } else {
      if (o.scale_residual) residual = residual * P(L, p + "2.residual_scale");
      x = out + residual * float(o.scale_residual_constant);
    }
    if (l.post_main_norm) x = xt_norm(L, p + "0.2", x, cond);
  }
  if (s > 1) x = sum(x.reshape({b, s, n, d}), {1});
  return L.final_norm ? xt_norm(L, "final_norm", x, cond) : x;
}
}  // namespace

TEST_CASE("AttentionLayers residual, norm and branch options equal x-transformers' definition, gradients checked") {
  Generator g(121);
  struct Case {
    const char* name;
    AttentionLayersConfig config;
    std::vector<std::string> names;  // some of x-transformers' parameter names this layout must have
    bool condition = false;
  };
  const std::vector<Case> cases = {
      {"use_simple_rmsnorm", {.use_simple_rmsnorm = true}, {"layers.0.1.to_q.weight", "layers.1.1.ff.0.0.weight"}},
      {"use_layerscale (init 0.3)", {.use_layerscale = true, .layerscale_init_value = 0.3},
       {"layers.0.1.gamma", "layers.0.1.fn.to_q.weight", "layers.1.1.gamma", "layers.1.1.fn.ff.2.weight"}},
      {"use_layerscale without unit offset", {.norm_add_unit_offset = false, .use_layerscale = true},
       {"layers.0.1.gamma", "layers.0.0.0.gamma"}},
      {"scale_residual, scale_residual_constant 0.7", {.scale_residual = true, .scale_residual_constant = 0.7},
       {"layers.0.2.residual_scale", "layers.1.2.residual_scale"}},
      {"gate_residual (GRU)", {.gate_residual = true},
       {"layers.0.2.gru.weight_ih", "layers.0.2.gru.weight_hh", "layers.0.2.gru.bias_ih", "layers.1.2.gru.bias_hh"}},
      {"gate_residual + scale_residual", {.gate_residual = true, .scale_residual = true},
       {"layers.0.2.gru.weight_ih", "layers.0.2.residual_scale"}},
      {"shift_tokens 1 (causal: shifts 0, 1)", {.causal = true, .shift_tokens = {1}},
       {"layers.0.1.fn.to_q.weight", "layers.1.1.fn.ff.0.0.weight"}},
      {"shift_tokens per layer (2, 0), bidirectional, with layerscale", {.use_layerscale = true, .shift_tokens = {2, 0}},
       {"layers.0.1.gamma", "layers.0.1.fn.fn.to_q.weight", "layers.1.1.fn.ff.0.0.weight"}},
      {"num_residual_streams 3 (hyper-connections)", {.num_residual_streams = 3},
       {"stream_emb", "layers.0.2.static_beta", "layers.0.2.static_alpha", "layers.0.2.dynamic_alpha_fn",
        "layers.0.2.dynamic_alpha_scale", "layers.0.2.dynamic_beta_fn", "layers.0.2.dynamic_beta_scale",
        "layers.1.2.norm.weight"}},
      {"use_adaptive_layernorm, dim_condition 5", {.use_adaptive_layernorm = true, .dim_condition = 5},
       {"layers.0.0.0.to_gamma.weight", "final_norm.to_gamma.weight"}, true},
      {"use_adaptive_rmsnorm + use_adaptive_layerscale + adaptive_condition_mlp",
       {.use_adaptive_rmsnorm = true, .dim_condition = 5, .adaptive_condition_mlp = true,
        .adaptive_condition_mlp_expansion = 2, .use_adaptive_layerscale = true},
       {"adaptive_mlp.0.weight", "layers.0.0.0.to_gamma.weight", "layers.0.1.to_gamma.weight", "layers.0.1.to_gamma.bias",
        "layers.0.1.fn.to_q.weight"},
       true},
      {"post-norm (pre_norm false) with scale_residual", {.pre_norm = false, .scale_residual = true},
       {"layers.0.0.2.gamma", "layers.0.2.residual_scale"}},
  };
  for (const Case& c : cases) {
    const std::string name = c.name;
    CAPTURE(name);
    AttentionLayersConfig cfg = c.config;
    cfg.dim = 8, cfg.depth = 1, cfg.heads = 2, cfg.attn.dim_head = 4, cfg.ff.mult = 1;
    manual_seed(122);
    AttentionLayers layers(cfg);
    for (const std::string& n : c.names) {
      CAPTURE(n);
      CHECK(has(layers, n));
    }
    if (cfg.use_layerscale)  // stored as init - 1 with the unit offset
      CHECK(P(layers, "layers.0.1.gamma").to_vector<float>()[0] ==
            doctest::Approx(cfg.layerscale_init_value - (cfg.norm_add_unit_offset ? 1 : 0)));
    if (cfg.num_residual_streams == 3)
      CHECK(P(layers, "layers.1.2.static_alpha").to_vector<float>() ==
            std::vector<float>{0, 1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 1});  // [one-hot(layer 1 % 3) | identity]
    perturb(layers, g, 0.2f);
    Tensor x = randn({2, 5, 8}, g).requires_grad_();
    Tensor mask = ones({2, 5}, kBool);
    mask.select(0, 0).narrow(0, 3, 2).fill_(0.0);
    Tensor cond = c.condition ? randn({2, 5}, g).requires_grad_() : Tensor();
    Inputs inputs = {x};
    if (cond.defined()) inputs.push_back(cond);
    check_against_definition(
        layers,
        [&](const Inputs& in) {
          return layers.forward(in[0], {.mask = mask, .condition = in.size() > 1 ? in[1] : Tensor()});
        },
        [&](const Inputs& in) {
          return xt_layers(layers, in[0], {.mask = mask, .condition = in.size() > 1 ? in[1] : Tensor()});
        },
        inputs);
  }
  // zero_init_branch_output: every branch's output projection starts at 0, so the stack is its norms.
  manual_seed(123);
  auto zero = Encoder({.dim = 8, .depth = 2, .heads = 2, .zero_init_branch_output = true, .attn = {.dim_head = 4}});
  for (auto& entry : zero->named_parameters()) {
    const std::string name = entry.first;
    if (name.find("to_out.weight") != std::string::npos || name.find("ff.2.") != std::string::npos) {
      CAPTURE(name);
      CHECK(abs(entry.second).sum().item<float>() == 0.0f);
    }
  }
  Tensor x = randn({1, 4, 8}, g);
  CHECK(close_or_same(zero->forward(x).to_vector<float>(),
                      as_double(std::static_pointer_cast<LayerNorm>(zero->final_norm)->forward(x)), 1e-6, 1e-5));
  CHECK_THROWS_WITH_AS(Encoder({.dim = 8, .depth = 1, .gate_residual = true, .num_residual_streams = 2}),
                       "AttentionLayers: gate_residual cannot be combined with hyper-connections (num_residual_streams > 1)",
                       Error);
  // A cached step has no earlier positions to shift in: generation recomputes instead.
  CHECK(!Decoder({.dim = 8, .depth = 1, .shift_tokens = {1}})->can_cache_kv());
  CHECK(Decoder({.dim = 8, .depth = 1, .shift_tokens = {0}})->can_cache_kv());
  CHECK_THROWS_WITH_AS(Encoder({.dim = 8, .depth = 1, .shift_tokens = {1, 1, 1}}),
                       "AttentionLayers: shift_tokens has 3 entries for 2 layers", Error);
}

TEST_CASE("dynamic_pos_bias: an MLP of the distance, as x-transformers' DynamicPositionBias") {
  Generator g(131);
  for (bool log_distance : {false, true})
    for (bool norm : {false, true}) {
      CAPTURE(log_distance);
      CAPTURE(norm);
      manual_seed(132);
      auto dec = Decoder({.dim = 16, .depth = 1, .heads = 2, .dynamic_pos_bias = true,
                          .dynamic_pos_bias_log_distance = log_distance, .dynamic_pos_bias_mlp_depth = 2,
                          .dynamic_pos_bias_norm = norm, .attn = {.dim_head = 4}, .ff = {.mult = 1}});
      CHECK(!dec->disable_abs_pos_emb());  // like ALiBi, it keeps the absolute embedding
      // Sequential(Linear, [LayerNorm], SiLU), Sequential(Linear, [nn.LayerNorm], SiLU), Linear: dim // 4 = 4 wide
      std::vector<std::string> want = {"rel_pos.mlp.0.0.weight", "rel_pos.mlp.0.0.bias", "rel_pos.mlp.1.0.weight",
                                       "rel_pos.mlp.1.0.bias", "rel_pos.mlp.2.weight", "rel_pos.mlp.2.bias"};
      if (norm) want.insert(want.end(), {"rel_pos.mlp.0.1.gamma", "rel_pos.mlp.1.1.weight", "rel_pos.mlp.1.1.bias"});
      for (const std::string& n : want) {
        CAPTURE(n);
        CHECK(has(*dec, n));
      }
      CHECK(P(*dec, "rel_pos.mlp.0.0.weight").sizes() == Shape{4, 1});
      CHECK(P(*dec, "rel_pos.mlp.2.weight").sizes() == Shape{2, 4});
      perturb(*dec, g);
      // The bias by hand: MLP(q - k) for each pair, queries right-aligned.
      auto bias_of = [&](int64_t i, int64_t j) {
        std::vector<float> dist;
        for (int64_t q = 0; q < i; ++q)
          for (int64_t k = 0; k < j; ++k) {
            float v = float(j - i + q - k);
            if (log_distance) v = (v > 0 ? 1.0f : v < 0 ? -1.0f : 0.0f) * std::log(std::abs(v) + 1.0f);
            dist.push_back(v);
          }
        Tensor hdn = from_vector(dist, {i * j, 1});
        for (int l = 0; l < 2; ++l) {
          const std::string p = "rel_pos.mlp." + std::to_string(l) + ".";
          hdn = linear(hdn, P(*dec, p + "0.weight"), P(*dec, p + "0.bias"));
          if (norm) {
            Tensor mu = mean(hdn, {-1}, true), sd = sqrt(var(hdn, {-1}, 0, true) + 1e-5f);
            hdn = l == 0 ? (hdn - mu) / sd * P(*dec, p + "1.gamma")
                         : (hdn - mu) / sd * P(*dec, p + "1.weight") + P(*dec, p + "1.bias");
          }
          hdn = hdn * sigmoid(hdn);
        }
        hdn = linear(hdn, P(*dec, "rel_pos.mlp.2.weight"), P(*dec, "rel_pos.mlp.2.bias"));
        return hdn.reshape({i, j, 2}).permute({2, 0, 1});
      };
      CHECK(close_or_same(dec->dynamic_pos->forward(3, 7).to_vector<float>(), as_double(bias_of(3, 7)), 1e-5, 1e-4));
      Tensor x = randn({2, 6, 16}, g).requires_grad_();
      check_against_definition(
          *dec, [&](const Inputs& in) { return dec->forward(in[0]); },
          [&](const Inputs& in) { return xt_layers(*dec, in[0], {.bias = bias_of(6, 6)}); }, {x});
    }
}

TEST_CASE("layer_dropout and cross_attn_tokens_dropout: the training draws, and the identity in eval") {
  Generator g(141);
  manual_seed(142);
  auto dec = Decoder({.dim = 8, .depth = 3, .heads = 2, .layer_dropout = 0.5, .attn = {.dim_head = 4}, .ff = {.mult = 1}});
  perturb(*dec, g);
  Tensor x = randn({2, 4, 8}, g);
  dec->eval();
  auto plain = Decoder({.dim = 8, .depth = 3, .heads = 2, .attn = {.dim_head = 4}, .ff = {.mult = 1}});
  plain->load_state_dict(dec->state_dict());
  plain->eval();
  CHECK(dec->forward(x).to_vector<float>() == plain->forward(x).to_vector<float>());
  // Training: each layer is skipped when its draw from the generator is below p.
  dec->train();
  Generator draws(7);
  dec->generator = &draws;
  Tensor got = dec->forward(x);
  Generator again(7);
  Tensor h = x;
  int skipped = 0;
  for (const auto& l : dec->stack()) {
    if (rand({1}, again).item<float>() < 0.5f) {
      ++skipped;
      continue;
    }
    Tensor normed = std::static_pointer_cast<LayerNorm>(l.pre_norm)->forward(h);
    h = h + (l.type == "a" ? xt_attention(*l.attention, normed, {}) : l.ff->forward(normed));
  }
  CHECK(skipped > 0);  // this seed skips some of the 6 layers and keeps others
  CHECK(skipped < 6);
  CHECK(close_or_same(got.to_vector<float>(), as_double(std::static_pointer_cast<LayerNorm>(dec->final_norm)->forward(h)),
                      1e-6, 1e-5));

  // x-transformers' dropout_seq: keep max(1, int(0.6 · 7)) = 4 of 7 tokens, by the largest N(0, 1) draws
  // (masked tokens never before real ones), in the order of the draws; the mask keeps ceil(real · 0.6).
  Tensor ctx = randn({2, 7, 3}, g), ctx_mask = ones({2, 7}, kBool);
  ctx_mask.select(0, 1).narrow(0, 2, 5).fill_(0.0);  // sample 1: 2 real tokens
  Tensor kept = ctx, kept_mask = ctx_mask;
  Generator d1(9), d2(9);
  dropout_seq(kept, kept_mask, 0.4, &d1);
  REQUIRE(kept.sizes() == Shape{2, 4, 3});
  std::vector<float> z = randn({2, 7}, d2).to_vector<float>(), c = ctx.to_vector<float>(), k = kept.to_vector<float>();
  std::vector<float> m = ctx_mask.to(kFloat32).to_vector<float>(), km = kept_mask.to(kFloat32).to_vector<float>();
  for (int64_t s = 0; s < 2; ++s) {
    std::vector<std::pair<float, int64_t>> order;
    for (int64_t t = 0; t < 7; ++t) order.push_back({m[size_t(s * 7 + t)] ? z[size_t(s * 7 + t)] : -INFINITY, t});
    std::stable_sort(order.begin(), order.end(), [](auto a, auto b) { return a.first > b.first; });
    const int real = s == 0 ? 7 : 2, keep_real = int(std::ceil(float(real) * 0.6f));
    for (int64_t r = 0; r < 4; ++r) {
      const int64_t t = order[size_t(r)].second;
      for (int64_t e = 0; e < 3; ++e) CHECK(k[size_t((s * 4 + r) * 3 + e)] == c[size_t((s * 7 + t) * 3 + e)]);
      CHECK(km[size_t(s * 4 + r)] == ((m[size_t(s * 7 + t)] != 0 && r < keep_real) ? 1.0f : 0.0f));
    }
  }
  // In a cross-attending stack each 'c' layer sees a fresh subset in training, the whole context in eval.
  manual_seed(143);
  auto cross = Decoder({.dim = 8, .depth = 1, .heads = 2, .cross_attend = true, .cross_attn_tokens_dropout = 0.4,
                        .attn = {.dim_head = 4}, .ff = {.mult = 1}});
  Tensor ctx8 = randn({2, 7, 8}, g);
  cross->eval();
  Tensor eval_out = cross->forward(x, {.context = ctx8, .context_mask = ctx_mask});
  cross->train();
  Generator d3(11), d4(11);
  cross->generator = &d3;
  Tensor train_out = cross->forward(x, {.context = ctx8, .context_mask = ctx_mask});
  Tensor sub = ctx8, sub_mask = ctx_mask;
  dropout_seq(sub, sub_mask, 0.4, &d4);
  cross->generator = nullptr;
  cross->eval();
  auto by_hand = Decoder({.dim = 8, .depth = 1, .heads = 2, .cross_attend = true, .attn = {.dim_head = 4}, .ff = {.mult = 1}});
  by_hand->load_state_dict(cross->state_dict());
  by_hand->eval();
  CHECK(close_or_same(train_out.to_vector<float>(),
                      as_double(by_hand->forward(x, {.context = sub, .context_mask = sub_mask})), 1e-6, 1e-5));
  CHECK(eval_out.to_vector<float>() == by_hand->forward(x, {.context = ctx8, .context_mask = ctx_mask}).to_vector<float>());
}

TEST_CASE("cross_attn_dim_head, cross_attn_kv_heads, cross_attn_num_mem_kv: the cross layers' own attention options") {
  const std::string config = R"({"wrapper": "TransformerWrapper", "num_tokens": 11, "max_seq_len": 8,
    "attn_layers": {"type": "Decoder", "dim": 8, "depth": 1, "heads": 4, "attn_dim_head": 2, "cross_attend": true,
                    "cross_attn_dim_context": 6, "cross_attn_dim_head": 3, "cross_attn_kv_heads": 2,
                    "cross_attn_num_mem_kv": 2, "attn_gate_values": true}})";
  LoadedModel m = model_from_json(config);
  const auto& L = *m.transformer->attn_layers;
  // self-attention (layer 0): attn_* only
  CHECK(P(L, "layers.0.1.to_q.weight").sizes() == Shape{8, 8});
  CHECK(P(L, "layers.0.1.to_k.weight").sizes() == Shape{8, 8});
  CHECK(!has(L, "layers.0.1.mem_k"));
  // cross-attention (layer 1): attn_* with cross_attn_* on top (gate_values reaches it too)
  CHECK(P(L, "layers.1.1.to_q.weight").sizes() == Shape{12, 8});
  CHECK(P(L, "layers.1.1.to_k.weight").sizes() == Shape{6, 6});
  CHECK(P(L, "layers.1.1.to_v.weight").sizes() == Shape{6, 6});
  CHECK(P(L, "layers.1.1.mem_k").sizes() == Shape{2, 2, 3});
  CHECK(P(L, "layers.1.1.to_v_gate.weight").sizes() == Shape{12, 8});
  CHECK(P(L, "layers.1.1.to_out.weight").sizes() == Shape{8, 12});
  Generator g(151);
  perturb(*m.transformer, g);
  Tensor tokens = randint(0, 11, {2, 5}, g), ctx = randn({2, 4, 6}, g).requires_grad_();
  Tensor ctx_mask = ones({2, 4}, kBool);
  ctx_mask.select(0, 1).select(0, 3).fill_(0.0);
  // The stack by hand: each layer's module on its own (nn::Attention is tested against its definition).
  check_against_definition(
      *m.transformer, [&](const Inputs& in) { return m.transformer->forward(tokens, {.context = in[0], .context_mask = ctx_mask}); },
      [&](const Inputs& in) {
        const auto& T = *m.transformer;
        Tensor h = T.token_emb->forward(tokens) + T.abs_pos_emb->forward(tokens);
        for (const auto& l : L.stack()) {
          Tensor normed = std::static_pointer_cast<LayerNorm>(l.pre_norm)->forward(h);
          if (l.type == "f") h = h + l.ff->forward(normed);
          else if (l.type == "a") h = h + l.attention->forward(normed);
          else h = h + l.attention->forward(normed, {.context = in[0], .context_mask = ctx_mask});
        }
        return linear(std::static_pointer_cast<LayerNorm>(L.final_norm)->forward(h), P(T, "to_logits.weight"));
      },
      {ctx});
  CHECK_THROWS_WITH_AS(model_from_json(R"({"wrapper": "TransformerWrapper", "num_tokens": 4,
      "attn_layers": {"dim": 8, "depth": 1, "cross_attend": true, "cross_attn_dim_heads": 3}})"),
                       "config: unknown key 'attn_layers.cross_attn_dim_heads' (did you mean 'attn_layers.cross_attn_dim_head'?)",
                       Error);
}

TEST_CASE("max_mem_len: Transformer-XL memories equal attending over the earlier segment") {
  Generator g(161);
  for (const char* pos : {"rotary", "alibi"}) {
    CAPTURE(pos);
    manual_seed(162);
    AttentionLayersConfig lc{.dim = 8, .depth = 2, .heads = 2, .attn = {.dim_head = 4}, .ff = {.mult = 1}};
    if (std::string(pos) == "rotary") lc.rotary_pos_emb = true;
    else lc.alibi_pos_bias = true;
    for (int64_t max_mem : {0, 6, 3}) {  // 0: keep every position (x-transformers' t[..., -0:, :])
      CAPTURE(max_mem);
      auto model = std::make_shared<TransformerWrapper>(TransformerWrapperConfig{
          .num_tokens = 13, .max_seq_len = 0, .attn_layers = Decoder(lc), .max_mem_len = max_mem});
      perturb(*model, g, 0.1f);
      Tensor seg1 = randint(0, 13, {2, 6}, g), seg2 = randint(0, 13, {2, 4}, g);
      std::vector<Tensor> mems, mems2;
      model->forward(seg1, {.mems_out = &mems});
      REQUIRE(mems.size() == 2);  // one per self-attention layer
      const int64_t kept = max_mem == 0 ? 6 : max_mem;
      CHECK(mems[0].sizes() == Shape{2, kept, 8});
      CHECK(!mems[0].requires_grad());  // detached, as x-transformers
      Tensor got = model->forward(seg2, {.mems = mems, .mems_out = &mems2});
      CHECK(mems2[1].sizes() == Shape{2, max_mem == 0 ? 10 : max_mem, 8});
      // The same as the whole sequence at once, each segment-2 query seeing only the kept memory.
      Tensor whole = cat({seg1, seg2}, 1);
      Tensor allowed = ones({10, 10}, kBool);
      for (int64_t q = 6; q < 10; ++q)
        for (int64_t k = 0; k < 6 - kept; ++k) allowed.select(0, q).select(0, k).fill_(0.0);
      Tensor want = model->forward(whole, {.attn_mask = allowed}).narrow(1, 6, 4);
      CHECK(close_or_same(got.to_vector<float>(), as_double(want), 1e-5, 1e-4));
      // gradients into the memories (inputs here), by finite differences
      GradcheckResult gc = gradcheck(
          [&](const Inputs& in) { return model->forward(seg2, {.mems = {in[0], in[1]}}); },
          {mems[0].clone().requires_grad_(), mems[1].clone().requires_grad_()}, {.eps = 1e-2});
      CHECK_MESSAGE(gc.passed, gc.report);
    }
  }
  // shift_mem_down rotates which layer gets which memory.
  manual_seed(163);
  auto model = std::make_shared<TransformerWrapper>(TransformerWrapperConfig{
      .num_tokens = 13, .max_seq_len = 0,
      .attn_layers = Decoder({.dim = 8, .depth = 2, .heads = 2, .rotary_pos_emb = true, .attn = {.dim_head = 4}}),
      .max_mem_len = 4, .shift_mem_down = 1});
  auto plain = std::make_shared<TransformerWrapper>(TransformerWrapperConfig{
      .num_tokens = 13, .max_seq_len = 0,
      .attn_layers = Decoder({.dim = 8, .depth = 2, .heads = 2, .rotary_pos_emb = true, .attn = {.dim_head = 4}}),
      .max_mem_len = 4});
  plain->load_state_dict(model->state_dict());
  std::vector<Tensor> mems = {randn({1, 4, 8}, g), randn({1, 4, 8}, g)};
  Tensor tokens = randint(0, 13, {1, 3}, g);
  CHECK(model->forward(tokens, {.mems = mems}).to_vector<float>() ==
        plain->forward(tokens, {.mems = {mems[1], mems[0]}}).to_vector<float>());
}

TEST_CASE("use_cls_token and average_pool_embed: one output per sequence") {
  Generator g(171);
  Tensor tokens = randint(0, 9, {2, 5}, g), mask = ones({2, 5}, kBool);
  mask.select(0, 1).narrow(0, 3, 2).fill_(0.0);
  auto layers = [] { return Encoder({.dim = 8, .depth = 1, .heads = 2, .attn = {.dim_head = 4}, .ff = {.mult = 1}}); };
  manual_seed(172);
  TransformerWrapper pooled({.num_tokens = 9, .max_seq_len = 8, .attn_layers = layers(), .num_memory_tokens = 2,
                             .average_pool_embed = true});
  TransformerWrapper plain({.num_tokens = 9, .max_seq_len = 8, .attn_layers = layers(), .num_memory_tokens = 2});
  plain.load_state_dict(pooled.state_dict());
  perturb(pooled, g);
  plain.load_state_dict(pooled.state_dict());
  Tensor out = pooled.forward(tokens, {.mask = mask});
  CHECK(out.sizes() == Shape{2, 9});
  // masked mean over the real tokens of the embeddings, then to_logits
  Tensor e = plain.forward(tokens, {.mask = mask, .return_embeddings = true});
  Tensor w = mask.to(kFloat32).unsqueeze(-1);
  Tensor want = linear(sum(e * w, {1}) / sum(w, {1}), P(plain, "to_logits.weight"));
  CHECK(close_or_same(out.to_vector<float>(), as_double(want), 1e-6, 1e-5));
  // gradients through the pooling, by finite differences on an external position embedding
  Tensor emb = (randn({2, 5, 8}, g) * 0.5f).requires_grad_();
  GradcheckResult gp = gradcheck([&](const Inputs& in) { return pooled.forward(tokens, {.mask = mask, .pos = in[0]}); },
                                 {emb}, {.eps = 1e-2});
  CHECK_MESSAGE(gp.passed, gp.report);

  for (int64_t num_cls : {1, 2}) {
    CAPTURE(num_cls);
    manual_seed(173);
    TransformerWrapper cls({.num_tokens = 9, .max_seq_len = 8, .attn_layers = layers(), .num_memory_tokens = 1,
                            .use_cls_token = true, .num_cls_tokens = num_cls});
    CHECK(P(cls, "cls_token").sizes() == Shape{num_cls, 8});
    perturb(cls, g);
    Tensor x = cls.forward(tokens, {.mask = mask});
    CHECK(x.sizes() == (num_cls == 1 ? Shape{2, 9} : Shape{2, 2, 9}));
    // By hand: [memory, cls, tokens] through the layers; the cls positions' outputs to logits.
    Tensor h = cls.token_emb->forward(tokens) + cls.abs_pos_emb->forward(tokens);
    h = cat({P(cls, "memory_tokens").unsqueeze(0).expand({2, -1, -1}), P(cls, "cls_token").unsqueeze(0).expand({2, -1, -1}), h}, 1);
    Tensor full_mask = cat({ones({2, 1 + num_cls}, kBool), mask}, 1);
    h = cls.attn_layers->forward(h, {.mask = full_mask}).narrow(1, 1, num_cls);
    Tensor want_cls = linear(num_cls == 1 ? h.select(1, 0) : h, P(cls, "to_logits.weight"));
    CHECK(close_or_same(x.to_vector<float>(), as_double(want_cls), 1e-6, 1e-5));
    GradcheckResult gc = gradcheck([&](const Inputs& in) { return cls.forward(tokens, {.mask = mask, .pos = in[0]}); },
                                   {(randn({2, 5, 8}, g) * 0.5f).requires_grad_()}, {.eps = 1e-2});
    CHECK_MESSAGE(gc.passed, gc.report);
  }
  CHECK_THROWS_WITH_AS(TransformerWrapper({.num_tokens = 9, .max_seq_len = 8, .attn_layers = layers(), .use_cls_token = true,
                                           .average_pool_embed = true}),
                       "TransformerWrapper: use at most one of use_cls_token, average_pool_embed", Error);
}

TEST_CASE("PrefixDecoder: causal by its mask, with every query seeing the prefix") {
  Generator g(181);
  manual_seed(182);
  AttentionLayersConfig lc{.dim = 8, .depth = 1, .heads = 2, .rel_pos_bias = true, .attn = {.dim_head = 4}, .ff = {.mult = 1}};
  auto prefix = PrefixDecoder(lc);
  CHECK(!prefix->config.causal);  // its T5 bias is the bidirectional one
  auto enc = Encoder(lc);
  perturb(*prefix, g);
  enc->load_state_dict(prefix->state_dict());
  Tensor x = randn({2, 5, 8}, g).requires_grad_();
  Tensor len = tensor(std::vector<int64_t>{2, 0});
  Tensor extra = rand({5, 5}, g) > 0.2;
  // x-transformers: forwarded_mask = ~triu(1) | (k < prefix_attn_len[b]), AND attn_mask
  std::vector<bool> allowed;
  std::vector<float> e = extra.to(kFloat32).to_vector<float>();
  for (int64_t s = 0; s < 2; ++s)
    for (int64_t q = 0; q < 5; ++q)
      for (int64_t k = 0; k < 5; ++k) allowed.push_back((k <= q || k < (s == 0 ? 2 : 0)) && e[size_t(q * 5 + k)] != 0);
  Tensor want_mask = tensor(allowed).reshape({2, 1, 5, 5});
  check_against_definition(
      *prefix, [&](const Inputs& in) { return prefix->forward(in[0], {.attn_mask = extra, .prefix_attn_len = len}); },
      [&](const Inputs& in) { return enc->forward(in[0], {.attn_mask = want_mask}); }, {x}, true, 1e-4, enc.get());
  LoadedModel m = model_from_json(R"({"wrapper": "TransformerWrapper", "num_tokens": 5, "max_seq_len": 6,
      "attn_layers": {"type": "PrefixDecoder", "dim": 8, "depth": 1}})");
  CHECK(m.transformer->attn_layers->config.prefix_decoder);
  CHECK_THROWS_WITH_AS(enc->forward(x, {.prefix_attn_len = len}), "AttentionLayers: prefix_attn_len needs a PrefixDecoder",
                       Error);
}

TEST_CASE("XTransformer: tie_token_emb, enc_/dec_ wrapper keys, cross_attn_tokens_dropout") {
  const std::string config = R"({"wrapper": "XTransformer", "dim": 8, "tie_token_emb": true,
    "enc_num_tokens": 12, "enc_max_seq_len": 10, "enc_depth": 1, "enc_heads": 2, "enc_attn_dim_head": 4,
    "enc_emb_dropout": 0.1, "enc_num_memory_tokens": 2, "enc_scaled_sinu_pos_emb": true,
    "dec_num_tokens": 12, "dec_max_seq_len": 10, "dec_depth": 1, "dec_heads": 2, "dec_attn_dim_head": 4,
    "dec_emb_dropout": 0.2, "dec_use_abs_pos_emb": false, "cross_attn_tokens_dropout": 0.25})";
  manual_seed(191);
  LoadedModel m = model_from_json(config);
  XTransformer& xt = *m.xtransformer;
  CHECK(xt.encoder->config.emb_dropout == 0.1);
  CHECK(xt.decoder_net->config.emb_dropout == 0.2);
  CHECK(P(xt, "encoder.memory_tokens").sizes() == Shape{2, 8});
  CHECK(P(xt, "encoder.pos_emb.scale").sizes() == Shape{1});  // scaled sinusoid
  CHECK(!has(xt, "decoder.net.pos_emb.emb.weight"));
  // Tied: both names in the state_dict, one tensor, listed once as a parameter.
  CHECK(P(xt, "encoder.token_emb.emb.weight").impl() == P(xt, "decoder.net.token_emb.emb.weight").impl());
  int listed = 0;
  for (auto& [name, t] : xt.named_parameters()) listed += name.find("token_emb") != std::string::npos;
  CHECK(listed == 1);
  // x-transformers' XTransformer takes no dec_num_memory_tokens (it reaches the Decoder, which refuses it)
  try {
    model_from_json(R"({"wrapper": "XTransformer", "dim": 8, "enc_num_tokens": 3, "dec_num_tokens": 3,
        "enc_depth": 1, "dec_depth": 1, "dec_num_memory_tokens": 2})");
    FAIL("dec_num_memory_tokens was accepted");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).rfind("config: unknown key 'dec_num_memory_tokens' (did you mean", 0) == 0);
  }

  // The tied gradient is the sum of the encoder's and the decoder's uses.
  Generator g(192);
  Tensor src = randint(0, 12, {2, 5}, g), tgt = randint(0, 12, {2, 4}, g);
  xt.eval();
  (xt.forward(src, tgt) * randn({2, 4, 12}, g)).sum().backward();
  Tensor tied = P(xt, "encoder.token_emb.emb.weight").grad();
  const std::string untied_config = std::string(config).replace(config.find("\"tie_token_emb\": true"), 21, "\"tie_token_emb\": false");
  LoadedModel u = model_from_json(untied_config);
  u.module().load_state_dict(xt.state_dict());
  u.module().eval();
  Generator g2(192);
  randint(0, 12, {2, 5}, g2), randint(0, 12, {2, 4}, g2);
  (u.xtransformer->forward(src, tgt) * randn({2, 4, 12}, g2)).sum().backward();
  Tensor both = P(*u.xtransformer, "encoder.token_emb.emb.weight").grad() + P(*u.xtransformer, "decoder.net.token_emb.emb.weight").grad();
  CHECK(close_or_same(tied.to_vector<float>(), as_double(both), 1e-6, 1e-5));

  // cross_attn_tokens_dropout: in training the loss sees dropout_seq of the encoding.
  xt.train();
  LoadedModel plain = model_from_json(untied_config.substr(0, untied_config.find(", \"cross_attn_tokens_dropout\"")) + "}");
  plain.module().load_state_dict(xt.state_dict());
  Tensor src_mask = ones({2, 5}, kBool);
  src_mask.select(0, 1).select(0, 4).fill_(0.0);
  for (auto* model : {&xt, plain.xtransformer.get()}) {  // no dropout anywhere else
    model->encoder->config.emb_dropout = 0, model->decoder_net->config.emb_dropout = 0;
  }
  Generator d1(5), d2(5);
  xt.generator = &d1;
  Tensor loss = xt.loss(src, tgt, src_mask);
  Tensor enc = plain.xtransformer->encode(src, src_mask), enc_mask = src_mask;
  dropout_seq(enc, enc_mask, 0.25, &d2);
  Tensor want = plain.xtransformer->decoder.loss(tgt, {.context = enc, .context_mask = enc_mask});
  CHECK(loss.item<float>() == doctest::Approx(want.item<float>()).epsilon(1e-5));
}
