#include <loom/nn/attention.h>

#include <cmath>

#include <loom/core/error.h>
#include <loom/ops/ops.h>

namespace loom::nn {

namespace {
// F.normalize along the last dim: x / max(‖x‖, 1e-12).
Tensor l2norm(const Tensor& x) { return x / clamp(sqrt(sum(x * x, {-1}, true)), 1e-12); }

// (b, n, h·d) -> (b, h, n, d)
Tensor split_heads(const Tensor& t, int64_t heads) {
  return t.reshape({t.size(0), t.size(1), heads, t.size(2) / heads}).transpose(1, 2);
}
}  // namespace

Attention::Attention(const AttentionConfig& c) : config(c) {
  AttentionConfig& o = config;
  LOOM_CHECK(o.dim > 0 && o.dim_head > 0 && o.heads > 0, "Attention: dim, dim_head and heads must be positive, got ",
             o.dim, ", ", o.dim_head, ", ", o.heads);
  LOOM_CHECK(!(o.one_kv_head && o.kv_heads > 0), "Attention: set either one_kv_head or kv_heads, not both");
  if (o.kv_heads == 0) o.kv_heads = o.one_kv_head ? 1 : o.heads;
  LOOM_CHECK(o.heads % o.kv_heads == 0, "Attention: heads (", o.heads, ") must be a multiple of kv_heads (", o.kv_heads,
             ")");
  if (o.dim_context == 0) o.dim_context = o.dim;
  if (o.value_dim_head == 0) o.value_dim_head = o.dim_head;
  if (o.dim_out == 0) o.dim_out = o.dim;
  LOOM_CHECK(!o.selective || o.causal, "Attention: selective attention needs causal = true");
  LOOM_CHECK(o.dropout >= 0 && o.dropout < 1, "Attention: dropout must be in [0, 1), got ", o.dropout);
  LOOM_CHECK(o.num_mem_kv >= 0, "Attention: num_mem_kv must be >= 0, got ", o.num_mem_kv);

  const int64_t out_dim = o.value_dim_head * o.heads;
  to_q = register_module("to_q", std::make_shared<Linear>(o.dim, o.dim_head * o.heads, false));
  to_k = register_module("to_k", std::make_shared<Linear>(o.dim_context, o.dim_head * o.kv_heads, false));
  to_v = register_module("to_v", std::make_shared<Linear>(o.dim_context, o.value_dim_head * o.kv_heads, false));
  if (o.gate_values) {  // starts fully open: σ(10) ≈ 1
    to_v_gate = register_module("to_v_gate", std::make_shared<Linear>(o.dim, out_dim, true));
    to_v_gate->weight.detach().fill_(0.0);
    to_v_gate->bias.detach().fill_(10.0);
  }
  if (o.qk_norm && o.qk_norm_dim_scale) {
    qk_norm_q_scale = register_parameter("qk_norm_q_scale", ones({o.heads, 1, o.dim_head}));
    qk_norm_k_scale = register_parameter("qk_norm_k_scale", ones({o.kv_heads, 1, o.dim_head}));
  }
  if (o.num_mem_kv > 0) {
    mem_k = register_parameter("mem_k", randn({o.kv_heads, o.num_mem_kv, o.dim_head}));
    mem_v = register_parameter("mem_v", randn({o.kv_heads, o.num_mem_kv, o.value_dim_head}));
  }
  to_out = register_module("to_out", std::make_shared<Linear>(out_dim, o.dim_out, false));
  if (o.zero_init_output) to_out->weight.detach().fill_(0.0);
}

Tensor Attention::forward(const Tensor& x, const AttentionInputs& in) const {
  const AttentionConfig& o = config;
  LOOM_CHECK(x.dim() == 3 && x.size(2) == o.dim, "Attention: expects x (b, n, ", o.dim, "), got ", x.sizes());
  const bool cross = in.context.defined();
  const Tensor& kv_input = cross ? in.context : x;
  LOOM_CHECK(kv_input.dim() == 3 && kv_input.size(0) == x.size(0) && kv_input.size(2) == o.dim_context,
             "Attention: expects context (", x.size(0), ", j, ", o.dim_context, "), got ", kv_input.sizes());
  LOOM_CHECK(!(in.attn_bias.defined() && in.rel_pos_bias.defined()),
             "Attention: an external attn_bias cannot be combined with a relative position bias");
  LOOM_CHECK(!(cross && in.rotary), "Attention: rotary embeddings apply to self-attention only");
  const int64_t b = x.size(0), n = x.size(1);

  LOOM_CHECK(!(in.cache && o.selective), "Attention: selective attention cannot use a KV cache (x-transformers' rule: ",
             "a token's selection depends on every earlier query)");
  LOOM_CHECK(!(in.cache && !cross && (in.mask.defined() || in.attn_mask.defined())),
             "Attention: masks cannot be combined with a KV cache in self-attention");
  Tensor q = split_heads(to_q->forward(x), o.heads);
  if (o.qk_norm) {
    q = l2norm(q);
    if (qk_norm_q_scale.defined()) q = q * qk_norm_q_scale;
  }
  Tensor k, v;
  if (cross && in.cache && in.cache->k.defined()) {  // the context's keys and values, from the first call
    k = in.cache->k, v = in.cache->v;
  } else {
    k = split_heads(to_k->forward(kv_input), o.kv_heads);
    v = split_heads(to_v->forward(kv_input), o.kv_heads);
    if (o.qk_norm) {
      k = l2norm(k);
      if (qk_norm_k_scale.defined()) k = k * qk_norm_k_scale;
    }
    if (in.cache && !cross && in.cache->k.defined()) {  // earlier positions first
      k = cat({in.cache->k, k}, 2);
      v = cat({in.cache->v, v}, 2);
    }
    if (in.cache) in.cache->k = k, in.cache->v = v;
  }
  if (in.rotary) {
    const Tensor& s = in.rotary->scale;
    q = apply_rotary_pos_emb(q, in.rotary->freqs, s);
    k = apply_rotary_pos_emb(k, in.rotary->freqs, s.defined() ? pow(s, -1.0) : Tensor());
  }

  // Keys: the context mask, else (self-attention) the sequence mask.
  Tensor key_mask = in.context_mask.defined() ? in.context_mask : (cross ? Tensor() : in.mask);
  Tensor rel_bias = in.rel_pos_bias;
  if (o.num_mem_kv > 0) {  // learned keys/values in front, visible to every query
    Tensor mk = mem_k, mv = mem_v;
    if (o.qk_norm) {
      mk = l2norm(mk);
      if (qk_norm_k_scale.defined()) mk = mk * qk_norm_k_scale;
    }
    k = cat({mk.unsqueeze(0).expand({b, -1, -1, -1}), k}, 2);
    v = cat({mv.unsqueeze(0).expand({b, -1, -1, -1}), v}, 2);
    if (key_mask.defined()) key_mask = cat({ones({b, o.num_mem_kv}, kBool), key_mask}, 1);
    if (rel_bias.defined()) {
      Shape front = rel_bias.sizes();
      front.back() = o.num_mem_kv;
      rel_bias = cat({zeros(front), rel_bias}, -1);
    }
  }

  loom::AttentionOptions a;
  a.key_padding_mask = key_mask;
  a.attn_mask = in.attn_mask;
  a.bias = in.attn_bias.defined() ? in.attn_bias : rel_bias;
  a.scale = o.qk_norm ? o.qk_norm_scale : 1.0 / std::sqrt(double(o.dim_head));
  if (in.prev_attn.defined() || in.pre_softmax_out) {
    // Residual attention, as x-transformers: logits = scale·q·kᵀ + prev + bias,
    // masked with the largest negative float, handed on before the softmax.
    LOOM_CHECK(!o.selective && !in.cache, "Attention: residual attention cannot be combined with selective attention ",
               "or a KV cache");
    const int64_t i = q.size(2), j = k.size(2);
    std::vector<int64_t> heads;
    for (int64_t h = 0; h < o.heads; ++h) heads.push_back(h % o.kv_heads);
    Tensor s = matmul(q, index_select(k, 1, tensor(heads)).transpose(-1, -2)) * float(*a.scale);
    if (in.prev_attn.defined()) s = s + in.prev_attn;
    if (a.bias.defined()) s = s + a.bias;
    Tensor allowed = ones({1, 1, i, j}, kBool);
    if (key_mask.defined()) allowed = logical_and(allowed, key_mask.view({b, 1, 1, j}));
    if (in.attn_mask.defined()) allowed = logical_and(allowed, in.attn_mask);
    if (o.causal) allowed = logical_and(allowed, tril(ones({i, j}, kBool), j - i));
    s = masked_fill(s, logical_not(allowed), -3.4028234663852886e38);
    if (in.pre_softmax_out) *in.pre_softmax_out = s;
    if (in.prev_attn.defined()) a.bias = a.bias.defined() ? in.prev_attn + a.bias : in.prev_attn;
  }
  a.causal = o.causal;
  a.selective = o.selective;
  a.dropout = is_training() ? o.dropout : 0.0;
  a.generator = generator;
  Tensor out = attention(q, k, v, a);                                   // (b, h, n, dv)
  out = out.transpose(1, 2).reshape({b, n, o.heads * o.value_dim_head});  // merge heads
  if (to_v_gate) {
    Tensor gates = to_v_gate->forward(x);
    out = out * (o.swiglu_values ? silu(gates) : sigmoid(gates));
  }
  out = to_out->forward(out);
  if (in.mask.defined()) out = masked_fill(out, logical_not(in.mask).unsqueeze(-1), 0.0);
  return out;
}

}  // namespace loom::nn
