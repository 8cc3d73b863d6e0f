// docs/attention.md: the op, ALiBi, the T5 bias in self- and cross-attention, rotary, per-layer
// pruning budgets.
// doc: attention_op
#include <loom/loom.h>
// doc: pause

int main() {
  loom::Generator g(0);
  const int64_t b = 2, h = 8, i = 5, j = 5, d = 32;
  {
    loom::Tensor q = loom::randn({b, h, i, d}, g), k = loom::randn({b, h, j, d}, g), v = loom::randn({b, h, j, d}, g);
    loom::Tensor pad = loom::ones({b, j}, loom::kBool);
    loom::Tensor alibi = loom::nn::AlibiPositionalBias({.heads = h}).forward(i, j);
    // doc: resume
    loom::Tensor out = loom::attention(q, k, v, {.key_padding_mask = pad, .bias = alibi, .causal = true});
    // doc: end
    if (out.sizes() != loom::Shape{b, h, i, d}) return 1;
  }
  {
    loom::Tensor pos = loom::rand({b, 6}, g) * 10.0f;
    // doc: alibi
    loom::nn::AlibiPositionalBias alibi({.heads = 6, .total_heads = 8});
    loom::Tensor b1 = alibi.forward(i, j);   // (8, i, j), positions 0..j-1, queries right-aligned
    loom::Tensor b2 = alibi.forward(pos);    // pos (b, n) floats -> (b, 8, n, n)
    // doc: end
    if (b1.sizes() != loom::Shape{8, i, j} || b2.sizes() != loom::Shape{b, 8, 6, 6}) return 1;
  }
  {
    const int64_t t = 3, source_len = 7;
    // doc: t5
    loom::nn::RelativePositionBias self_bias({.scale = 8, .causal = true, .heads = 8});
    loom::nn::RelativePositionBias cross_bias({.scale = 8, .causal = false, .heads = 8});
    loom::Tensor self = self_bias.forward(i, i);                         // (8, i, i)
    loom::Tensor cross = cross_bias.forward(loom::arange(t, t + 1),     // the query at step t
                                            loom::arange(source_len));  // (8, 1, source_len)
    // doc: end
    if (self.sizes() != loom::Shape{8, i, i} || cross.sizes() != loom::Shape{8, 1, source_len}) return 1;
  }
  {
    loom::Tensor q = loom::randn({b, h, i, 64}, g), k = loom::randn({b, h, i, 64}, g);
    loom::Tensor positions = loom::arange(i);
    // doc: rotary
    loom::nn::RotaryEmbedding rotary({.dim = 32});
    auto [freqs, xpos_scale] = rotary.forward(positions);   // (n) or (b, n)
    q = loom::nn::apply_rotary_pos_emb(q, freqs);
    k = loom::nn::apply_rotary_pos_emb(k, freqs);
    // doc: end
    if (q.sizes() != loom::Shape{b, h, i, 64} || xpos_scale.defined()) return 1;
  }
  {
    loom::nn::AttentionLayersConfig layers{.dim = 16, .depth = 2, .heads = 2, .rotary_pos_emb = true};
    layers.attn.selective = true;
    auto net = std::make_shared<loom::TransformerWrapper>(
        loom::TransformerWrapperConfig{.num_tokens = 17, .max_seq_len = 32, .attn_layers = loom::nn::Decoder(layers)});
    loom::Tensor held_out = loom::randint(0, 17, {4, 17}, g), prompt = loom::randint(0, 17, {1, 3}, g);
    // doc: budgets
    // Per-layer budgets within 0.01 nats of the unpruned loss on held-out windows (w, n + 1) ...
    const double unpruned = loom::evaluate_pruned(*net, held_out, {}).loss;
    loom::BudgetChoice chosen = loom::choose_selective_budgets(*net, held_out, unpruned + 0.01);
    // ... then decoding with them: at most chosen.budgets[l] cached positions in layer l.
    loom::Tensor out = loom::AutoregressiveWrapper(net).generate(prompt, 8, {.selective_budgets = chosen.budgets}, g);
    // doc: end
    if (chosen.budgets.size() != 2 || chosen.evaluation.loss > unpruned + 0.01 || out.sizes() != loom::Shape{1, 8}) return 1;
  }
  return 0;
}
