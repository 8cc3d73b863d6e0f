// Selective attention's context pruning, measured on held-out data, and the
// per-layer budgets chosen from it (Leviathan, Kalman and Matias 2024, as
// recalled; docs/attention.md, "Context pruning").
#pragma once

#include <vector>

#include <loom/models/transformer_wrapper.h>

namespace loom {

struct PrunedEvaluation {
  double loss = 0;        // mean next-token loss, nats (bits per character = loss / ln 2)
  double peak_bytes = 0;  // the largest nn::LayersCache::bytes() after a step, per sequence
  double seconds = 0;     // decoding time
};

// Decodes each window of `windows` (w, n + 1) a token a step with a KV cache
// pruned to `budgets` (nn::LayersCache::budgets: one for all layers, one per
// self-attention layer, or none), as generation does, and scores every next
// token; `batch` windows at a time. In eval mode and without gradients.
PrunedEvaluation evaluate_pruned(TransformerWrapper& net, const Tensor& windows,
                                 const std::vector<int64_t>& budgets, int64_t batch = 64);

struct BudgetChoice {
  std::vector<int64_t> budgets;  // one per self-attention layer
  PrunedEvaluation evaluation;   // at these budgets, on the windows searched
  int64_t evaluations = 0;       // evaluate_pruned calls the search made
};

// The smallest budgets whose loss on `windows` stays <= max_loss (nats),
// greedily: every layer starts at the whole context (n); then, layer by layer
// from the first, a binary search over 1..its current budget finds the
// smallest that keeps the loss <= max_loss with the other layers at their
// current budgets (the paper's procedure as recalled; it assumes the loss
// does not fall as a budget shrinks). per_layer = false searches one budget
// for all layers instead, for comparison. Throws if the unpruned loss is
// already above max_loss.
BudgetChoice choose_selective_budgets(TransformerWrapper& net, const Tensor& windows, double max_loss,
                                      bool per_layer = true, int64_t batch = 64);

}  // namespace loom
