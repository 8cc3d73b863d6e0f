#include <loom/train/pruning.h>

#include <algorithm>
#include <chrono>
#include <numeric>

#include <loom/core/autograd.h>
#include <loom/core/error.h>
#include <loom/ops/ops.h>

namespace loom {

PrunedEvaluation evaluate_pruned(TransformerWrapper& net, const Tensor& windows,
                                 const std::vector<int64_t>& budgets, int64_t batch) {
  LOOM_CHECK(windows.dim() == 2 && windows.dtype() == kInt64 && windows.size(1) >= 2,
             "evaluate_pruned: windows must be int64 (w, n + 1) with n >= 1, got ", windows.sizes());
  LOOM_CHECK(batch >= 1, "evaluate_pruned: batch must be >= 1, got ", batch);
  NoGradGuard no_grad;
  const bool was_training = net.is_training();
  net.eval();
  const int64_t w = windows.size(0), n = windows.size(1) - 1;
  PrunedEvaluation r;
  double nats = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t first = 0; first < w; first += batch) {
    const int64_t b = std::min(batch, w - first);
    Tensor rows = windows.narrow(0, first, b);
    nn::LayersCache cache;
    cache.budgets = budgets;
    for (int64_t t = 0; t < n; ++t) {
      Tensor logits = net.forward(rows.narrow(1, t, 1), {}, &cache).select(1, 0);  // (b, V)
      nats += double(cross_entropy(logits, rows.select(1, t + 1)).item<float>()) * double(b);
      r.peak_bytes = std::max(r.peak_bytes, double(cache.bytes()) / double(b));
    }
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  net.train(was_training);
  r.loss = nats / double(w * n);
  return r;
}

BudgetChoice choose_selective_budgets(TransformerWrapper& net, const Tensor& windows, double max_loss,
                                      bool per_layer, int64_t batch) {
  LOOM_CHECK(net.attn_layers->config.attn.selective,
             "choose_selective_budgets: needs a model with selective attention");
  const int64_t layers = net.attn_layers->self_attention_layers(), n = windows.size(1) - 1;
  BudgetChoice c;
  c.budgets.assign(size_t(layers), n);
  auto run = [&](const std::vector<int64_t>& budgets) {
    ++c.evaluations;
    return evaluate_pruned(net, windows, budgets, batch);
  };
  c.evaluation = run(c.budgets);
  LOOM_CHECK(c.evaluation.loss <= max_loss, "choose_selective_budgets: the unpruned loss ", c.evaluation.loss,
             " is already above max_loss ", max_loss);
  // Binary search over 1..hi for the smallest budget of the layers in `which` that keeps the loss <= max_loss.
  auto search = [&](const std::vector<size_t>& which) {
    int64_t lo = 1, hi = c.budgets[which[0]];
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      std::vector<int64_t> trial = c.budgets;
      for (size_t l : which) trial[l] = mid;
      PrunedEvaluation e = run(trial);
      if (e.loss <= max_loss) hi = mid, c.budgets = trial, c.evaluation = e;
      else lo = mid + 1;
    }
  };
  if (per_layer) {
    for (size_t l = 0; l < size_t(layers); ++l) search({l});
  } else {
    std::vector<size_t> every(static_cast<size_t>(layers));
    std::iota(every.begin(), every.end(), size_t(0));
    search(every);
  }
  return c;
}

}  // namespace loom
