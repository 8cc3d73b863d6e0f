#include <loom/nn/attention.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include <loom/core/autocast.h>
#include <loom/core/autograd.h>
#include <loom/core/error.h>
#include <loom/ops/ops.h>

namespace loom::nn {

namespace {
// x-transformers masks with the most negative finite float, not -inf.
constexpr double kMaxNeg = -3.4028234663852886e38;

// F.normalize along the last dim: x / max(‖x‖, 1e-12).
Tensor l2norm(const Tensor& x) { return x / clamp(sqrt(sum(x * x, {-1}, true)), 1e-12); }

// (b, n, h·d) -> (b, h, n, d)
Tensor split_heads(const Tensor& t, int64_t heads) {
  return t.reshape({t.size(0), t.size(1), heads, t.size(2) / heads}).transpose(1, 2);
}

// nn.Conv2d(heads, heads, 1, bias = False) on (b, h, i, j): out[:, g] = Σ_h W[g, h] t[:, h].
Tensor mix_heads(const Tensor& w, const Tensor& t) {
  const int64_t b = t.size(0), h = t.size(1), i = t.size(2), j = t.size(3);
  return matmul(w.view({h, h}), t.reshape({b, h, i * j})).view({b, h, i, j});
}

// Selective attention's gate from head 0's masked logits s0 (b, i, j): its
// positive logits, except on keys that are not gated (the first key and
// memory keys, or as `gated` says) and on each query's own key.
Tensor selective_gate(const Tensor& s0, const Tensor& gated) {
  const int64_t b = s0.size(0), i = s0.size(1), j = s0.size(2), offset = j - i;
  Tensor col = arange(j).view({1, j}), row = arange(i).view({i, 1});
  Tensor ungated = gated.defined() ? logical_not(gated).view({b, 1, j}) : le(col, scalar_tensor(double(offset), kInt64));
  Tensor excluded = logical_or(ungated, eq(col, row + offset));
  return masked_fill(relu(s0), excluded, 0.0);  // (b, i, j)
}

// Selective attention on materialised logits s (b, h, i, j), already masked:
// head 0's gate, summed over the earlier queries (plus carry.F from earlier
// calls), is subtracted from every head, as loom::attention does.
Tensor selective_logits(const Tensor& s, const Tensor& carry_F, const Tensor& gated, Tensor* carry_out, Tensor* gate_out) {
  const int64_t b = s.size(0), j = s.size(3);
  Tensor gate = selective_gate(s.select(1, 0), gated);
  if (gate_out) *gate_out = gate;
  Tensor earlier = cumsum(gate, 1) - gate;  // Σ over rows before each row
  if (carry_F.defined()) earlier = earlier + carry_F.detach().unsqueeze(1);
  if (carry_out) *carry_out = (carry_F.defined() ? carry_F.detach() : zeros({b, j})) + sum(gate, {1}).detach();
  return s - earlier.unsqueeze(1);
}

// Head 0 of a tensor that broadcasts to (b, h, i, j): its head dim narrowed to 1.
Tensor head0(const Tensor& t) {
  const int64_t hd = t.dim() - 3;
  return hd >= 0 && t.size(hd) > 1 ? t.narrow(hd, 0, 1) : t;
}

// Which logits are visible, broadcastable to (b, h, i, j).
Tensor allowed_logits(int64_t b, int64_t i, int64_t j, const Tensor& key_mask, const Tensor& attn_mask, bool causal) {
  Tensor allowed = ones({1, 1, i, j}, kBool);
  if (key_mask.defined()) allowed = logical_and(allowed, key_mask.view({b, 1, 1, j}));
  if (attn_mask.defined()) allowed = logical_and(allowed, attn_mask);
  if (causal) allowed = logical_and(allowed, tril(ones({i, j}, kBool), j - i));
  return allowed;
}

// The k-th largest value of each row of t (..., j), as (..., 1); no gradient
// (it only decides which logits are kept).
Tensor kth_largest(const Tensor& t, int64_t k) {
  NoGradGuard no_grad;
  const int64_t j = t.size(-1), rows = t.numel() / j;
  std::vector<float> v = t.contiguous().to_vector<float>();
  std::vector<float> out(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    auto first = v.begin() + r * j;
    std::nth_element(first, first + (k - 1), first + j, std::greater<float>());
    out[size_t(r)] = first[k - 1];
  }
  Shape shape = t.sizes();
  shape.back() = 1;
  return from_vector(out, shape);
}

// x-transformers' sparse_topk_attn: a softmax over the logits >= the row's
// k-th largest (masked ones never count); with straight_through the forward
// is those weights and the gradient is the full softmax's.
Tensor topk_softmax(const Tensor& s, int64_t k, bool straight_through) {
  k = std::min(k, s.size(-1));  // x-transformers' topk would fail on a row shorter than k
  Tensor keep = logical_and(ge(s, kth_largest(s, k)), gt(s, scalar_tensor(kMaxNeg)));
  Tensor a = softmax(masked_fill(s, logical_not(keep), kMaxNeg), -1);
  if (!straight_through) return a;
  Tensor soft = softmax(s, -1);
  return a.detach() + (soft - soft.detach());
}

// A 1×1 convolution across heads, nn.Conv2d's weight (heads, heads, 1, 1),
// dirac-initialised (the identity), as x-transformers' talking heads.
struct HeadConv : Module {
  explicit HeadConv(int64_t heads) {
    std::vector<float> eye(size_t(heads * heads), 0.0f);
    for (int64_t h = 0; h < heads; ++h) eye[size_t(h * heads + h)] = 1.0f;
    weight = register_parameter("weight", from_vector(eye, {heads, heads, 1, 1}));
  }
  Tensor weight;
};

// x-transformers' Attend: here only the home of the talking-heads weights.
struct Attend : Module {
  Tensor add(const char* name, int64_t heads) { return register_module(name, std::make_shared<HeadConv>(heads))->weight; }
};

// A holder that gives a Linear the name x-transformers' nn.Sequential gives
// it (`to_out.0`, `to_value_residual_mix.0`).
std::shared_ptr<ModuleList> sequential(std::shared_ptr<Linear> first) {
  auto seq = std::make_shared<ModuleList>();
  seq->append(std::move(first));
  return seq;
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
  LOOM_CHECK(o.selective_memory_loss >= 0 && o.selective_memory_loss_tau > 0,
             "Attention: selective_memory_loss must be >= 0 and selective_memory_loss_tau > 0, got ",
             o.selective_memory_loss, " and ", o.selective_memory_loss_tau);
  LOOM_CHECK(o.selective_memory_loss == 0 || o.selective, "Attention: selective_memory_loss needs selective attention");
  LOOM_CHECK(o.dropout >= 0 && o.dropout < 1, "Attention: dropout must be in [0, 1), got ", o.dropout);
  LOOM_CHECK(o.num_mem_kv >= 0, "Attention: num_mem_kv must be >= 0, got ", o.num_mem_kv);
  LOOM_CHECK(o.sparse_topk >= 0, "Attention: sparse_topk must be >= 0, got ", o.sparse_topk);
  LOOM_CHECK(!o.softclamp_logits || o.logit_softclamp_value > 0, "Attention: logit_softclamp_value must be positive, got ",
             o.logit_softclamp_value);
  // The learned mix is per query head; x-transformers' lerp needs the values
  // to have as many heads.
  LOOM_CHECK(!o.learned_value_residual_mix || o.kv_heads == o.heads,
             "Attention: a learned value residual mix needs kv_heads == heads, got ", o.kv_heads, " and ", o.heads);

  const int64_t out_dim = o.value_dim_head * o.heads;
  to_q = register_module("to_q", std::make_shared<Linear>(o.dim, o.dim_head * o.heads, false));
  to_k = register_module("to_k", std::make_shared<Linear>(o.dim_context, o.dim_head * o.kv_heads, false));
  to_v = register_module("to_v", std::make_shared<Linear>(o.dim_context, o.value_dim_head * o.kv_heads, false));
  if (o.gate_values) {  // starts fully open: σ(10) ≈ 1
    to_v_gate = register_module("to_v_gate", std::make_shared<Linear>(o.dim, out_dim, true));
    to_v_gate->weight.detach().fill_(0.0);
    to_v_gate->bias.detach().fill_(10.0);
  }
  if (o.gate_value_heads) {  // the same, one gate per head
    to_v_head_gate = register_module("to_v_head_gate", std::make_shared<Linear>(o.dim, o.heads, true));
    to_v_head_gate->weight.detach().fill_(0.0);
    to_v_head_gate->bias.detach().fill_(10.0);
  }
  if (o.qk_norm && o.qk_norm_dim_scale) {
    qk_norm_q_scale = register_parameter("qk_norm_q_scale", ones({o.heads, 1, o.dim_head}));
    qk_norm_k_scale = register_parameter("qk_norm_k_scale", ones({o.kv_heads, 1, o.dim_head}));
  }
  if (o.pre_talking_heads || o.post_talking_heads || o.pre_scale_post_talking_heads) {
    auto attend = register_module("attend", std::make_shared<Attend>());
    if (o.pre_talking_heads) pre_softmax_talking_heads = attend->add("pre_softmax_talking_heads", o.heads);
    if (o.post_talking_heads) post_softmax_talking_heads = attend->add("post_softmax_talking_heads", o.heads);
    if (o.pre_scale_post_talking_heads) pre_scale_post_talking_heads = attend->add("pre_scale_post_talking_heads", o.heads);
  }
  if (o.head_scale) head_scale_params = register_parameter("head_scale_params", ones({1, o.heads, 1, 1}));
  if (o.num_mem_kv > 0) {
    mem_k = register_parameter("mem_k", randn({o.kv_heads, o.num_mem_kv, o.dim_head}));
    mem_v = register_parameter("mem_v", randn({o.kv_heads, o.num_mem_kv, o.value_dim_head}));
  }
  if (o.learned_value_residual_mix) {
    to_value_residual_mix = std::make_shared<Linear>(o.dim, o.heads, true);
    register_module("to_value_residual_mix", sequential(to_value_residual_mix));
  }
  if (o.on_attn) {  // Sequential(Linear(out_dim, 2 dim_out), GLU)
    to_out = std::make_shared<Linear>(out_dim, 2 * o.dim_out, false);
    register_module("to_out", sequential(to_out));
  } else {
    to_out = register_module("to_out", std::make_shared<Linear>(out_dim, o.dim_out, false));
  }
  if (o.zero_init_output) to_out->weight.detach().fill_(0.0);
}

bool Attention::materialises() const {
  const AttentionConfig& o = config;
  return o.pre_talking_heads || o.post_talking_heads || o.pre_scale_post_talking_heads || o.softclamp_logits ||
         o.sparse_topk > 0;
}

Tensor Attention::attend(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask, const Tensor& bias,
                         const AttentionInputs& in, const Carry& carry) const {
  const AttentionConfig& o = config;
  const double scale = o.qk_norm ? o.qk_norm_scale : 1.0 / std::sqrt(double(o.dim_head));
  const double p = is_training() ? o.dropout : 0.0;
  if (!materialises() && !in.prev_attn.defined() && !in.pre_softmax_out) {  // the fused kernel
    loom::AttentionOptions a;
    a.key_padding_mask = key_mask;
    a.attn_mask = in.attn_mask;
    a.bias = bias;
    a.scale = scale;
    a.causal = o.causal;
    a.selective = o.selective;
    a.selective_carry = carry.F, a.selective_gated = carry.gated, a.selective_carry_out = carry.out;
    a.dropout = p;
    a.generator = generator;
    if (carry.gate) {
      // The memory loss needs F with autograd, which the kernel's has not:
      // head 0's logits again, as the kernel computes its gate (float32, bias,
      // masks), in plain ops; b·i·j floats, only when the loss is on.
      AutocastGuard fp32(false);
      const int64_t b = q.size(0), i = q.size(2), j = k.size(2);
      Tensor s0 = matmul(q.narrow(1, 0, 1), k.narrow(1, 0, 1).transpose(-1, -2)) * float(scale);  // (b, 1, i, j)
      if (bias.defined()) s0 = s0 + head0(bias);
      Tensor allowed = allowed_logits(b, i, j, key_mask, in.attn_mask.defined() ? head0(in.attn_mask) : Tensor(), o.causal);
      *carry.gate = selective_gate(masked_fill(s0, logical_not(allowed), kMaxNeg).select(1, 0), carry.gated);
    }
    return attention(q, k, v, a);
  }
  // x-transformers' Attend, step by step on the (b, h, i, j) logits.
  const int64_t b = q.size(0), i = q.size(2), j = k.size(2);
  std::vector<int64_t> heads;  // query head h uses kv head h mod kv_heads
  for (int64_t h = 0; h < o.heads; ++h) heads.push_back(h % o.kv_heads);
  Tensor kv_heads = tensor(heads);
  Tensor s = matmul(q, index_select(k, 1, kv_heads).transpose(-1, -2)) * float(scale);
  if (in.prev_attn.defined()) s = s + in.prev_attn;
  Tensor post_scale = pre_scale_post_talking_heads.defined() ? mix_heads(pre_scale_post_talking_heads, s) : Tensor();
  if (pre_softmax_talking_heads.defined()) s = s + mix_heads(pre_softmax_talking_heads, s);
  if (bias.defined()) s = s + bias;
  if (o.softclamp_logits) s = tanh(s / float(o.logit_softclamp_value)) * float(o.logit_softclamp_value);
  Tensor allowed = allowed_logits(b, i, j, key_mask, in.attn_mask, o.causal);
  s = masked_fill(s, logical_not(allowed), kMaxNeg);
  if (o.selective) s = selective_logits(s, carry.F, carry.gated, carry.out, carry.gate);
  if (in.pre_softmax_out) *in.pre_softmax_out = s;
  Tensor a = o.sparse_topk > 0 ? topk_softmax(s, o.sparse_topk, o.sparse_topk_straight_through) : softmax(s, -1);
  a = dropout(a, p, p > 0, generator);
  if (post_softmax_talking_heads.defined()) a = mix_heads(post_softmax_talking_heads, a);
  if (post_scale.defined()) a = a * post_scale;
  Tensor out = matmul(a, index_select(v, 1, kv_heads));
  // A query with no key to attend to gets zeros, as from the fused kernel.
  Tensor empty = eq(sum(allowed.to(kFloat32), {-1}, true), scalar_tensor(0.0));
  return masked_fill(out, empty, 0.0);
}

Tensor Attention::forward(const Tensor& x, const AttentionInputs& in) const {
  const AttentionConfig& o = config;
  LOOM_CHECK(x.dim() == 3 && x.size(2) == o.dim, "Attention: expects x (b, n, ", o.dim, "), got ", x.sizes());
  const bool cross = in.context.defined();
  Tensor kv_input = cross ? in.context : x;
  LOOM_CHECK(kv_input.dim() == 3 && kv_input.size(0) == x.size(0) && kv_input.size(2) == o.dim_context,
             "Attention: expects context (", x.size(0), ", j, ", o.dim_context, "), got ", kv_input.sizes());
  LOOM_CHECK(!(in.attn_bias.defined() && in.rel_pos_bias.defined()),
             "Attention: an external attn_bias cannot be combined with a relative position bias");
  LOOM_CHECK(!(cross && in.rotary), "Attention: rotary embeddings apply to self-attention only");
  const int64_t b = x.size(0), n = x.size(1);

  // With a cache, a mask (b, n) covers the new positions; the cache keeps the earlier ones'.
  LOOM_CHECK(!(in.cache && !cross && (in.attn_mask.defined() || in.context_mask.defined())),
             "Attention: attn_mask and context_mask cannot be combined with a KV cache in self-attention");
  LOOM_CHECK(!in.mask.defined() || (in.mask.dtype() == kBool && in.mask.sizes() == Shape({b, n})),
             "Attention: mask must be bool (", b, ", ", n, "), got ", in.mask.sizes());
  LOOM_CHECK(!(in.cache && (in.prev_attn.defined() || in.pre_softmax_out)),
             "Attention: residual attention cannot be combined with a KV cache");
  const bool has_mem = in.mem.defined();
  LOOM_CHECK(!has_mem || (!cross && !in.cache && in.mem.dim() == 3 && in.mem.size(0) == b && in.mem.size(2) == o.dim),
             "Attention: memories (Transformer-XL) must be (", b, ", m, ", o.dim,
             ") and go with self-attention without a KV cache, got ", in.mem.sizes());
  if (has_mem) kv_input = cat({in.mem, kv_input}, 1);  // earlier hidden states in front, as keys and values

  Tensor q = split_heads(to_q->forward(x), o.heads);
  Tensor k, v;
  if (cross && in.cache && in.cache->k.defined()) {  // the context's keys and values, from the first call
    k = in.cache->k, v = in.cache->v;
    if (in.values_out) *in.values_out = in.cache->values;
  } else {
    k = split_heads(to_k->forward(kv_input), o.kv_heads);
    v = split_heads(to_v->forward(kv_input), o.kv_heads);
    if (in.values_out) *in.values_out = v;  // this layer's own values, for the next layers' value residual
    if (in.value_residual.defined()) {
      // ResFormer: v ← v₁ + λ (v − v₁), v₁ the first layer's values; λ per
      // head and token when learned, else 0.5.
      LOOM_CHECK(in.value_residual.sizes() == v.sizes(), "Attention: the value residual ", in.value_residual.sizes(),
                 " must match this layer's values ", v.sizes());
      Tensor mix = to_value_residual_mix ? sigmoid(to_value_residual_mix->forward(x)).transpose(1, 2).unsqueeze(-1)
                                         : scalar_tensor(0.5);
      v = in.value_residual + mix * (v - in.value_residual);
    }
    if (o.qk_norm) {
      k = l2norm(k);
      if (qk_norm_k_scale.defined()) k = k * qk_norm_k_scale;
    }
    if (in.cache && !cross && in.cache->k.defined()) {  // earlier positions first
      k = cat({in.cache->k, k}, 2);
      v = cat({in.cache->v, v}, 2);
    }
    if (in.cache) {
      in.cache->k = k, in.cache->v = v;
      if (cross && in.values_out) in.cache->values = *in.values_out;
    }
  }
  // Self-attention with a cache: the keys' absolute positions and mask, the
  // earlier ones from the cache (which pruning may have thinned).
  KVCache* self_cache = in.cache && !cross ? in.cache : nullptr;
  Tensor cached_mask;  // (b, j) without the memory key/values
  if (self_cache) {
    KVCache& c = *self_cache;
    Tensor fresh = arange(c.seen, c.seen + n).unsqueeze(0).expand({b, n});
    c.pos = c.pos.defined() ? cat({c.pos, fresh}, 1) : fresh.contiguous();
    if (in.mask.defined() || c.mask.defined()) {
      const int64_t earlier = k.size(2) - n;
      c.mask = cat({c.mask.defined() ? c.mask : ones({b, earlier}, kBool), in.mask.defined() ? in.mask : ones({b, n}, kBool)}, 1);
    }
    c.seen += n;
    cached_mask = c.mask;
  }
  if (o.qk_norm) {
    q = l2norm(q);
    if (qk_norm_q_scale.defined()) q = q * qk_norm_q_scale;
  }
  if (in.rotary) {
    const Tensor& s = in.rotary->scale;
    q = apply_rotary_pos_emb(q, in.rotary->freqs, s);
    k = apply_rotary_pos_emb(k, in.rotary->freqs, s.defined() ? pow(s, -1.0) : Tensor());
  }

  // Keys: the context mask, else (self-attention) the sequence mask, with
  // the memories in front visible (or as mem_mask says).
  Tensor key_mask = in.context_mask.defined() ? in.context_mask : (cross ? Tensor() : self_cache ? cached_mask : in.mask);
  if (has_mem && !in.context_mask.defined() && (key_mask.defined() || in.mem_mask.defined())) {
    const int64_t m = in.mem.size(1);
    key_mask = cat({in.mem_mask.defined() ? in.mem_mask : ones({b, m}, kBool),
                    key_mask.defined() ? key_mask : ones({b, n}, kBool)},
                   1);
  }
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

  // Selective attention with a cache: each cached key's F goes in, the F
  // after these queries comes out, for the memory key/values too (never gated).
  Carry carry;
  Tensor carry_out;
  if (self_cache && o.selective) {
    KVCache& c = *self_cache;
    const int64_t m = o.num_mem_kv, earlier = k.size(2) - m - n;
    carry.F = cat({zeros({b, m}), c.F.defined() ? c.F : zeros({b, earlier}), zeros({b, n})}, 1);
    carry.gated = cat({zeros({b, m}, kBool), ne(c.pos, scalar_tensor(0.0, kInt64))}, 1);  // position 0 is never gated
    carry.out = &carry_out;
  }
  Tensor gate;
  if (in.selective_memory_out) {
    LOOM_CHECK(o.selective && !in.cache && !cross,
               "Attention: the selective memory loss needs selective self-attention without a KV cache");
    carry.gate = &gate;
  }
  Tensor out = attend(q, k, v, key_mask, in.attn_bias.defined() ? in.attn_bias : rel_bias, in, carry);  // (b, h, n, dv)
  if (in.selective_memory_out) {
    // N_i = Σ_j max(0, 1 − F_ij/τ) over the keys query i sees, except the
    // learned memory key/values (no cache holds them); the term is
    // (1/n)·max_i N_i, the share of the context a budget would have to keep.
    const int64_t j = k.size(2);
    Tensor F = cumsum(gate, 1) - gate;  // as the kernel's, the sum over earlier queries
    Tensor kept = relu(1.0f - F / float(o.selective_memory_loss_tau));
    Tensor visible = logical_and(head0(allowed_logits(b, n, j, key_mask, in.attn_mask, true)).select(1, 0),
                                 ge(arange(j), scalar_tensor(double(o.num_mem_kv), kInt64)));
    Tensor N = sum(masked_fill(kept, logical_not(visible), 0.0), {2});  // (b, n)
    *in.selective_memory_out = mean(std::get<0>(max(N, 1))) / float(n);
  }
  if (carry.out) self_cache->F = carry_out.narrow(1, o.num_mem_kv, carry_out.size(1) - o.num_mem_kv).contiguous();
  if (head_scale_params.defined()) out = out * head_scale_params;
  if (to_v_head_gate) out = out * sigmoid(to_v_head_gate->forward(x)).transpose(1, 2).unsqueeze(-1);
  out = out.transpose(1, 2).reshape({b, n, o.heads * o.value_dim_head});  // merge heads
  if (to_v_gate) {
    Tensor gates = to_v_gate->forward(x);
    out = out * (o.swiglu_values ? silu(gates) : sigmoid(gates));
  }
  out = to_out->forward(out);
  if (o.on_attn) {  // GLU: the first half gated by σ of the second
    std::vector<Tensor> parts = chunk(out, 2, -1);
    out = parts[0] * sigmoid(parts[1]);
  }
  if (in.mask.defined()) out = masked_fill(out, logical_not(in.mask).unsqueeze(-1), 0.0);
  return out;
}

int64_t KVCache::bytes() const {
  int64_t total = 0;
  for (const Tensor* t : {&k, &v, &values, &pos, &mask, &F})
    if (t->defined()) total += t->numel() * int64_t(element_size(t->dtype()));
  return total;
}

void prune(KVCache& c, int64_t budget) {
  LOOM_CHECK(budget >= 1, "prune: the budget must be >= 1, got ", budget);
  LOOM_CHECK(c.k.defined() && c.F.defined() && c.pos.defined(),
             "prune: needs a self-attention cache with selective attention (its F)");
  const int64_t b = c.k.size(0), n = c.k.size(2);
  if (n <= budget) return;
  const std::vector<float> F = c.F.contiguous().to_vector<float>();
  const std::vector<int64_t> pos = c.pos.contiguous().to_vector<int64_t>();
  const std::vector<bool> hidden = c.mask.defined() ? logical_not(c.mask).to_vector<bool>() : std::vector<bool>(size_t(b * n), false);
  std::vector<int64_t> keep;  // (b, budget): the kept columns of each row, ascending
  for (int64_t r = 0; r < b; ++r) {
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    auto score = [&](int64_t col) {  // hidden keys first; a NaN F counts as the most masked
      const size_t e = size_t(r * n + col);
      return hidden[e] || std::isnan(F[e]) ? INFINITY : F[e];
    };
    // Evict the first n - budget of this order: most masked first, then the oldest.
    std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
      const float sx = score(x), sy = score(y);
      return sx != sy ? sx > sy : pos[size_t(r * n + x)] < pos[size_t(r * n + y)];
    });
    std::vector<int64_t> kept(order.begin() + (n - budget), order.end());
    std::sort(kept.begin(), kept.end());
    keep.insert(keep.end(), kept.begin(), kept.end());
  }
  // The kept columns of (b, cached) or (b, heads, cached, d), copied row by
  // row into tensors of the budget's size (a plain copy: this runs every step).
  auto take = [&](const Tensor& t) {
    Tensor src = t.contiguous();
    const bool rows4 = t.dim() == 4;
    const int64_t heads = rows4 ? t.size(1) : 1, d = rows4 ? t.size(3) : 1;
    Shape shape = t.sizes();
    shape[rows4 ? 2 : 1] = budget;
    Tensor out = empty(shape, t.dtype());
    const size_t row = size_t(d) * element_size(t.dtype());
    const char* from = static_cast<const char*>(src.raw_data());
    char* to = static_cast<char*>(out.raw_data());
    for (int64_t r = 0; r < b; ++r)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t j = 0; j < budget; ++j)
          std::memcpy(to + size_t((r * heads + h) * budget + j) * row,
                      from + size_t((r * heads + h) * n + keep[size_t(r * budget + j)]) * row, row);
    return out;
  };
  c.k = take(c.k), c.v = take(c.v), c.F = take(c.F), c.pos = take(c.pos);
  if (c.mask.defined()) c.mask = take(c.mask);
}

}  // namespace loom::nn
