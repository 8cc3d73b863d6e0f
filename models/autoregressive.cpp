#include <loom/models/autoregressive.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include <loom/core/autograd.h>
#include <loom/core/error.h>
#include <loom/ops/ops.h>

namespace loom {

AutoregressiveWrapper::AutoregressiveWrapper(std::shared_ptr<TransformerWrapper> n, int64_t ignore, int64_t pad)
    : net(std::move(n)), ignore_index(ignore), pad_value(pad) {
  LOOM_CHECK(net != nullptr, "AutoregressiveWrapper: net is null");
}

Tensor AutoregressiveWrapper::loss(const Tensor& x, const WrapperInputs& in) const {
  LOOM_CHECK(x.dim() == 2 && x.dtype() == kInt64 && x.size(1) >= 2,
             "AutoregressiveWrapper: loss expects int64 tokens (b, n + 1) with n >= 1, got ", dtype_name(x.dtype()), " ",
             x.sizes());
  const int64_t b = x.size(0), n = x.size(1) - 1;
  Tensor inp = x.narrow(1, 0, n), target = x.narrow(1, 1, n);
  WrapperInputs inputs = in;
  if (in.mask.defined()) inputs.mask = in.mask.narrow(1, 0, n);
  // Selective attention's memory loss, in training only (evaluations report the plain loss).
  Tensor memory;
  if (net->is_training() && net->attn_layers->config.attn.selective_memory_loss > 0) inputs.selective_memory_loss = &memory;
  Tensor logits = net->forward(inp, inputs);
  Tensor ce = cross_entropy(logits.reshape({b * n, logits.size(-1)}), target.reshape({b * n}), ignore_index);
  return memory.defined() ? ce + memory : ce;
}

// ---- filters (x-transformers: they act on the raw logits) -----------------------------------

namespace {
// Applies f to each row of a contiguous (b, V) copy of the logits.
template <class F>
Tensor per_row(const Tensor& logits, F f) {
  LOOM_CHECK(logits.dim() == 2 && logits.dtype() == kFloat32, "filter: expects float32 logits (b, V), got ",
             logits.sizes());
  std::vector<float> v = logits.contiguous().to_vector<float>();
  const int64_t V = logits.size(1);
  for (int64_t r = 0; r < logits.size(0); ++r) f(v.data() + r * V, V);
  return from_vector(v, logits.sizes());
}

// Indices of a row sorted by descending logit (ties: lower index first, for determinism).
std::vector<int64_t> order_desc(const float* row, int64_t V) {
  std::vector<int64_t> idx(static_cast<size_t>(V));
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return row[a] > row[b]; });
  return idx;
}
}  // namespace

Tensor AutoregressiveWrapper::filter_top_k(const Tensor& logits, int64_t k) {
  LOOM_CHECK(k >= 1, "filter_top_k: k must be >= 1, got ", k);
  return per_row(logits, [k](float* row, int64_t V) {
    std::vector<int64_t> idx = order_desc(row, V);
    for (int64_t r = std::min(k, V); r < V; ++r) row[idx[size_t(r)]] = -INFINITY;
  });
}

Tensor AutoregressiveWrapper::filter_top_p(const Tensor& logits, double p) {
  LOOM_CHECK(p > 0 && p <= 1, "filter_top_p: p must be in (0, 1], got ", p);
  return per_row(logits, [p](float* row, int64_t V) {
    std::vector<int64_t> idx = order_desc(row, V);
    double mx = row[idx[0]], z = 0;
    for (int64_t c = 0; c < V; ++c) z += std::exp(double(row[c]) - mx);
    // Drop a token when the probability mass ranked before it already exceeds p
    // (so the token that crosses p is kept).
    double before = 0;
    for (int64_t r = 0; r < V; ++r) {
      const double prob = std::exp(double(row[idx[size_t(r)]]) - mx) / z;
      if (before > p) row[idx[size_t(r)]] = -INFINITY;
      before += prob;
    }
  });
}

Tensor AutoregressiveWrapper::filter_min_p(const Tensor& logits, double min_p) {
  LOOM_CHECK(min_p >= 0 && min_p <= 1, "filter_min_p: min_p must be in [0, 1], got ", min_p);
  return per_row(logits, [min_p](float* row, int64_t V) {
    const float mx = *std::max_element(row, row + V);
    // p_c < min_p · p_max  <=>  logit_c < logit_max + ln(min_p)
    const double cut = double(mx) + std::log(min_p);
    for (int64_t c = 0; c < V; ++c)
      if (double(row[c]) < cut) row[c] = -INFINITY;
  });
}

// ---- generation ---------------------------------------------------------------------------

Tensor AutoregressiveWrapper::generate(const Tensor& prompts, int64_t seq_len, const GenerateOptions& o,
                                       Generator& gen, const WrapperInputs& extra) const {
  LOOM_CHECK(prompts.dim() == 2 && prompts.dtype() == kInt64 && prompts.size(1) >= 1,
             "generate: expects int64 prompts (b, t) with t >= 1, got ", dtype_name(prompts.dtype()), " ", prompts.sizes());
  LOOM_CHECK(seq_len >= 0, "generate: seq_len must be >= 0, got ", seq_len);
  LOOM_CHECK(o.temperature >= 0, "generate: temperature must be >= 0, got ", o.temperature);
  NoGradGuard no_grad;
  const bool was_training = net->is_training();
  net->eval();
  const int64_t b = prompts.size(0), t = prompts.size(1);
  const int64_t max_len = net->abs_pos_emb ? net->config.max_seq_len : INT64_MAX;
  std::vector<int64_t> seq = prompts.contiguous().to_vector<int64_t>();  // (b, t + generated), row-major
  int64_t len = t;
  bool use_cache = o.cache_kv && net->can_cache_kv();
  const std::vector<int64_t>& budgets = o.selective_budgets;
  const bool pruned = std::any_of(budgets.begin(), budgets.end(), [](int64_t k) { return k != 0; });
  LOOM_CHECK(std::all_of(budgets.begin(), budgets.end(), [](int64_t k) { return k >= 0; }),
             "generate: selective_budgets must be >= 0, got ", budgets);
  const int64_t depth = net->attn_layers->self_attention_layers();
  LOOM_CHECK(budgets.size() <= 1 || int64_t(budgets.size()) == depth, "generate: selective_budgets: ", budgets.size(),
             " values ", budgets, " for ", depth, " self-attention layers (give one for all, or one per layer)");
  LOOM_CHECK(!pruned || (use_cache && net->attn_layers->config.attn.selective),
             "generate: selective_budgets needs a model with selective attention, decoded with a KV cache");
  nn::LayersCache cache;
  cache.budgets = budgets;
  std::vector<bool> done(size_t(b), false);
  std::vector<int64_t> out(size_t(b * seq_len), pad_value);

  auto tokens_of = [&](int64_t from, int64_t to) {  // columns [from, to) of every row
    std::vector<int64_t> v;
    for (int64_t r = 0; r < b; ++r)
      for (int64_t c = from; c < to; ++c) v.push_back(seq[size_t(r * (t + seq_len) + c)]);
    return from_vector(v, {b, to - from});
  };
  // Keep the prompt in a buffer wide enough for all new tokens.
  {
    std::vector<int64_t> wide(size_t(b * (t + seq_len)), pad_value);
    for (int64_t r = 0; r < b; ++r)
      for (int64_t c = 0; c < t; ++c) wide[size_t(r * (t + seq_len) + c)] = seq[size_t(r * t + c)];
    seq.swap(wide);
  }

  WrapperInputs ctx;
  ctx.context = extra.context, ctx.context_mask = extra.context_mask;
  for (int64_t step = 0; step < seq_len; ++step) {
    Tensor logits;
    // Past the absolute positions: a window instead (a pruned cache cannot
    // fall back to it: its model would see other keys than it did).
    LOOM_CHECK(!(pruned && len > max_len), "generate: selective_budgets: the sequence (", len,
               ") would pass the model's max_seq_len (", max_len, ")");
    if (use_cache && len > max_len) use_cache = false;
    if (use_cache) {
      logits = net->forward(tokens_of(cache.length, len), ctx, &cache);
    } else {
      const int64_t from = std::max<int64_t>(0, len - max_len);  // the last max_seq_len tokens
      logits = net->forward(tokens_of(from, len), ctx);
    }
    logits = logits.select(1, logits.size(1) - 1).contiguous();  // (b, V): the last position
    std::vector<int64_t> next(static_cast<size_t>(b));
    if (o.temperature == 0) {
      next = argmax(logits, 1).to_vector<int64_t>();
    } else {
      if (o.top_k > 0) logits = filter_top_k(logits, o.top_k);
      if (o.top_p > 0) logits = filter_top_p(logits, o.top_p);
      if (o.min_p > 0) logits = filter_min_p(logits, o.min_p);
      std::vector<float> probs = softmax(logits / float(o.temperature), 1).to_vector<float>();
      Tensor u = rand({b}, gen);
      std::vector<float> uv = u.to_vector<float>();
      const int64_t V = logits.size(1);
      for (int64_t r = 0; r < b; ++r) {  // inverse-CDF draw
        double acc = 0;
        int64_t pick = V - 1;
        for (int64_t c = 0; c < V; ++c) {
          acc += probs[size_t(r * V + c)];
          if (uv[size_t(r)] < acc) {
            pick = c;
            break;
          }
        }
        while (pick > 0 && probs[size_t(r * V + pick)] == 0) --pick;  // rounding at the tail
        next[size_t(r)] = pick;
      }
    }
    for (int64_t r = 0; r < b; ++r) {
      const int64_t tok = done[size_t(r)] ? pad_value : next[size_t(r)];
      seq[size_t(r * (t + seq_len) + len)] = tok;
      out[size_t(r * seq_len + step)] = tok;
      if (o.eos_token && tok == *o.eos_token) done[size_t(r)] = true;
    }
    ++len;
    if (o.eos_token && std::all_of(done.begin(), done.end(), [](bool d) { return d; })) break;
  }
  net->train(was_training);
  return from_vector(out, {b, seq_len});
}

}  // namespace loom
