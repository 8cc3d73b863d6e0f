// loom-attention-pictures OUT_DIR: renders the attention pictures of
// docs/attention.md with loom itself (attention_with_weights + write_png).
// Every picture is a row of panels; each panel is an (i, j) matrix, query i
// down, key j across, one square per entry. Weights are coloured dark blue
// (0) to yellow (the row's largest weight: each row is one softmax, scaled
// so its shape shows); masked-out entries are black.
#include <loom/loom.h>

#include "flags.h"

#include <cmath>
#include <cstdio>
#include <filesystem>

using namespace loom;

namespace {

constexpr int64_t kCell = 14;  // pixels per matrix entry
constexpr int64_t kGap = 14;   // white pixels between panels

// (i, j) values -> an RGB picture, each entry a kCell square with a 1-pixel
// dark grid line.
Tensor panel(const Tensor& values, double lo, double hi) {
  Tensor rgb = colormap(values.contiguous(), lo, hi);
  const int64_t rows = values.size(0), cols = values.size(1);
  std::vector<float> src = rgb.to_vector<float>(), out(size_t(rows * kCell * cols * kCell * 3));
  for (int64_t y = 0; y < rows * kCell; ++y)
    for (int64_t x = 0; x < cols * kCell; ++x)
      for (int64_t c = 0; c < 3; ++c) {
        const bool grid = y % kCell == 0 || x % kCell == 0;
        out[size_t((y * cols * kCell + x) * 3 + c)] =
            grid ? 0.15f : src[size_t(((y / kCell) * cols + x / kCell) * 3 + c)];
      }
  return from_vector(out, {rows * kCell, cols * kCell, 3});
}

// Panels side by side on white.
void save_row(const std::string& path, const std::vector<Tensor>& panels) {
  int64_t height = 0, width = kGap;
  for (const Tensor& p : panels) height = std::max(height, p.size(0)), width += p.size(1) + kGap;
  Tensor canvas = ones({height + 2 * kGap, width, 3});
  int64_t x = kGap;
  for (const Tensor& p : panels) {
    canvas.narrow(0, kGap, p.size(0)).narrow(1, x, p.size(1)).copy_(p);
    x += p.size(1) + kGap;
  }
  write_png(path, canvas);
  std::printf("wrote %s\n", path.c_str());
}

// Weights of one (batch, head) as a panel, each row divided by its largest
// weight; entries where `allowed` is false are drawn black.
Tensor weights_panel(const Tensor& weights, const Tensor& allowed) {
  Tensor row_max = std::get<0>(max(weights, 1, true));
  Tensor w = weights / clamp(row_max, 1e-30);
  return panel(masked_fill(w, logical_not(allowed), -INFINITY), 0.0, 1.0);
}

Tensor mask_panel(const Tensor& mask) { return panel(where(mask, ones(mask.sizes()), full(mask.sizes(), -INFINITY)), 0, 1); }

}  // namespace

int main(int argc, char** argv) {
  loom_example::Flags flags(argc, argv,
                            "usage: loom-attention-pictures OUT_DIR\n\n"
                            "Renders the attention pictures of docs/attention.md (PNG files) into OUT_DIR,\n"
                            "which it creates if needed.\n");
  flags.done(1);
  if (flags.positional().size() != 1) flags.fail("OUT_DIR is required");
  const std::string dir = flags.positional()[0];
  try {
    std::filesystem::create_directories(dir);
    Generator g(2024);
    const int64_t n = 16, d = 16;

    // 1. Causal mask: query r sees keys 0..r. Left the mask, right the weights.
    {
      Tensor q = randn({1, 1, n, d}, g), k = randn({1, 1, n, d}, g), v = randn({1, 1, n, d}, g);
      AttentionOptions o;
      o.causal = true;
      Tensor w = attention_with_weights(q, k, v, o).weights.select(0, 0).select(0, 0);
      Tensor allowed = tril(ones({n, n}, kBool));
      save_row(dir + "/causal_mask.png", {mask_panel(allowed), weights_panel(w, allowed)});
    }

    // 2. Key-padding mask: sample 1 has 11 real tokens, then 5 of padding.
    //    Left the (b, j) mask as two rows, right sample 1's weights.
    {
      Tensor q = randn({2, 1, n, d}, g), k = randn({2, 1, n, d}, g), v = randn({2, 1, n, d}, g);
      Tensor pad = ones({2, n}, kBool);
      pad.select(0, 1).narrow(0, 11, 5).fill_(0.0);
      AttentionOptions o;
      o.key_padding_mask = pad;
      Tensor w = attention_with_weights(q, k, v, o).weights.select(0, 1).select(0, 0);
      save_row(dir + "/padding_mask.png", {mask_panel(pad), weights_panel(w, pad.select(0, 1).unsqueeze(0).expand({n, n}))});
    }

    // 3. ALiBi at irregular positions. With q = 0 the logits are the bias
    //    alone, so the weights show the distance decay. Left: the bias of
    //    head 0 at positions 0..15; middle: at irregular positions (a burst
    //    of close samples, then a long gap); right: the causal weights there.
    {
      std::vector<float> p = {0, 1, 2, 3, 3.5f, 4, 4.5f, 5, 12, 13, 14, 20, 20.5f, 21, 21.5f, 22};
      Tensor pos = tensor(p).reshape({1, n});
      nn::AlibiPositionalBias alibi({.heads = 4});
      Tensor regular = alibi.forward(n, n).select(0, 1);
      Tensor bias = alibi.forward(pos);  // (1, 4, n, n)
      Tensor irregular = bias.select(0, 0).select(0, 1);
      Tensor zero = zeros({1, 4, n, d}), v = randn({1, 4, n, d}, g);
      AttentionOptions o;
      o.bias = bias;
      o.causal = true;
      Tensor w = attention_with_weights(zero, zero, v, o).weights.select(0, 0).select(0, 1);
      const double lo = min(irregular).item<float>();
      save_row(dir + "/alibi_irregular.png",
               {panel(regular, lo, 0), panel(irregular, lo, 0), weights_panel(w, tril(ones({n, n}, kBool)))});
    }

    // 4. Selective attention. Head 0 decides what later tokens may forget:
    //    here tokens 5 and 11 strongly select (mask) the tokens before them,
    //    so every later query sees those keys faded. Left: head 1's weights
    //    without selection; right: with it.
    {
      Tensor q = randn({1, 2, n, d}, g) * 0.5f, k = randn({1, 2, n, d}, g), v = randn({1, 2, n, d}, g);
      // Head 0: query r's logit for key c is 4 when r is 5 or 11, else 0.
      Tensor q0 = zeros({n, d}), k0 = ones({n, d}) * 0.5f;
      q0.select(0, 5).fill_(2.0);
      q0.select(0, 11).fill_(2.0);
      q.select(0, 0).select(0, 0).copy_(q0);
      k.select(0, 0).select(0, 0).copy_(k0);
      AttentionOptions o;
      o.causal = true;
      Tensor off = attention_with_weights(q, k, v, o).weights.select(0, 0).select(0, 1);
      o.selective = true;
      Tensor on = attention_with_weights(q, k, v, o).weights.select(0, 0).select(0, 1);
      Tensor allowed = tril(ones({n, n}, kBool));
      save_row(dir + "/selective.png", {weights_panel(off, allowed), weights_panel(on, allowed)});
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loom-attention-pictures: %s\n", e.what());
    return 1;
  }
  return 0;
}
