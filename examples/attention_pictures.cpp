// loom-attention-pictures OUT_DIR: renders the attention pictures of
// docs/attention.md with loom itself (attention_with_weights + write_png).
// Every picture is a row of panels; each panel is an (i, j) matrix, query i
// down, key j across, one square per entry. Weights are coloured dark blue
// (0) to yellow (the row's largest weight: each row is one softmax, scaled
// so its shape shows); masked-out entries are black.
//
// With --checkpoint DIR (a `loom train` run of configs/charlm_selective.json)
// it also renders pruning.png: a held-out fortune decoded a byte a step with
// at most --budget positions per layer in the KV cache (selective attention's
// context pruning), showing which positions survive.
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

// The first fortune of the held-out split that fits in `most` bytes (and has
// at least half of them), separators dropped.
std::string held_out_fortune(const std::vector<uint8_t>& val, size_t most) {
  std::string text(val.begin(), val.end()), best;
  for (size_t at = text.find("\n%\n"); at != std::string::npos;) {
    const size_t next = text.find("\n%\n", at + 3);
    if (next == std::string::npos) break;
    std::string f = text.substr(at + 3, next - at - 3 + 1);  // with its final newline
    if (f.size() <= most && f.size() >= most / 2) return f;
    at = next;
  }
  LOOM_CHECK(false, "no held-out fortune of ", most / 2, " to ", most, " bytes");
  return best;
}

// Decodes `text` a byte a step with at most `budget` cached positions per
// layer. One panel per layer: row t is the cache after step t, column c
// position c; a kept position is coloured by its F (log scale, dark blue = 0),
// an evicted one black, a future one white.
void pruning_picture(const std::string& path, const std::string& checkpoint, int64_t budget, const std::string& data) {
  Checkpoint ck = load_checkpoint(checkpoint);
  LOOM_CHECK(ck.model.transformer && ck.model.transformer->attn_layers->config.attn.selective,
             "--checkpoint: needs a run of a selective-attention TransformerWrapper (configs/charlm_selective.json)");
  const std::string text = held_out_fortune(load_text_corpus(data).val, 128);
  const int64_t n = int64_t(text.size());
  std::vector<int64_t> ids;
  for (char c : text) ids.push_back(int64_t(uint8_t(c)));
  Tensor tokens = from_vector(ids, {1, n});
  NoGradGuard no_grad;
  ck.model.module().eval();
  nn::LayersCache cache;
  cache.budgets = {budget};
  std::vector<std::vector<float>> layers;  // per layer, (n, n): log(1 + F), -inf evicted, NaN future
  for (int64_t t = 0; t < n; ++t) {
    ck.model.transformer->forward(tokens.narrow(1, t, 1), {}, &cache);
    layers.resize(cache.layers.size(), std::vector<float>(size_t(n * n), -INFINITY));
    for (size_t l = 0; l < cache.layers.size(); ++l) {
      const std::vector<int64_t> pos = cache.layers[l].pos.to_vector<int64_t>();
      const std::vector<float> F = cache.layers[l].F.to_vector<float>();
      for (size_t j = 0; j < pos.size(); ++j) layers[l][size_t(t * n + pos[j])] = std::log1p(F[j]);
      for (int64_t c = t + 1; c < n; ++c) layers[l][size_t(t * n + c)] = NAN;
    }
  }
  float hi = 1e-3f;
  for (const auto& v : layers)
    for (float x : v)
      if (std::isfinite(x)) hi = std::max(hi, x);
  constexpr int64_t cell = 4;
  std::vector<Tensor> panels;
  for (const auto& v : layers) {
    std::vector<float> rgb = colormap(from_vector(v, {n, n}), 0, hi).to_vector<float>(), out(size_t(n * cell * n * cell * 3));
    for (int64_t y = 0; y < n * cell; ++y)
      for (int64_t x = 0; x < n * cell; ++x)
        for (int64_t c = 0; c < 3; ++c) {
          const size_t e = size_t((y / cell) * n + x / cell);
          out[size_t((y * n * cell + x) * 3 + c)] = std::isnan(v[e]) ? 1.0f : rgb[e * 3 + size_t(c)];
        }
    panels.push_back(from_vector(out, {n * cell, n * cell, 3}));
  }
  save_row(path, panels);
  std::printf("budget %lld of %lld positions per layer, over the held-out fortune:\n%s", static_cast<long long>(budget),
              static_cast<long long>(n), text.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  loom_example::Flags flags(argc, argv,
                            "usage: loom-attention-pictures OUT_DIR\n\n"
                            "Renders the attention pictures of docs/attention.md (PNG files) into OUT_DIR,\n"
                            "which it creates if needed.\n\n"
                            "  --checkpoint DIR  also pruning.png: a `loom train` run of configs/charlm_selective.json\n"
                            "                    decodes a held-out fortune under a KV-cache budget\n"
                            "  --budget K        positions kept per layer for pruning.png (16)\n"
                            "  --data PATH       the text the run was trained on (/usr/share/games/fortunes)\n");
  const std::string checkpoint = flags.text("checkpoint", "");
  const int64_t budget = flags.integer("budget", 16, 1);
  const std::string data = flags.text("data", "/usr/share/games/fortunes");
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

    // 5. Context pruning over a fortune, with a trained model.
    if (!checkpoint.empty()) pruning_picture(dir + "/pruning.png", checkpoint, budget, data);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loom-attention-pictures: %s\n", e.what());
    return 1;
  }
  return 0;
}
