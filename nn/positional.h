// Position encodings, as x-transformers defines them (nn/positional.cpp):
//
//   RelativePositionBias         T5 bucketed relative bias -> (h, i, j), learned
//   DynamicPositionBias          an MLP of q_pos - k_pos -> (h, i, j), learned
//   AlibiPositionalBias          -slope_h * |pos_k - pos_q|  -> (h, i, j) or (b, h, i, j)
//   RotaryEmbedding              rotates feature pairs of q and k by t * inv_freq
//   AbsolutePositionalEmbedding  a learned row per position, times dim^-0.5
//   ScaledSinusoidalEmbedding    [sin(t w), cos(t w)] times a learned scalar
//
// The biases are additive attention biases: pass them as
// AttentionOptions::bias. Default positions are right-aligned: for i queries
// and j keys the queries sit at positions j-i .. j-1 (the last i of the
// keys), which is what keeps KV-cached decoding consistent.
#pragma once

#include <optional>
#include <vector>

#include <loom/nn/embedding.h>
#include <loom/nn/layers.h>
#include <loom/nn/module.h>

namespace loom::nn {

// ---- T5 relative position bias ---------------------------------------------

struct RelativePositionBiasOptions {
  double scale = 1.0;  // x-transformers passes sqrt(dim_head)
  bool causal = false;
  int64_t num_buckets = 32;
  int64_t max_distance = 128;
  int64_t heads = 8;
};

// bias[h, q, k] = scale * E[bucket(k_pos - q_pos), h] with E a learned
// (num_buckets, heads) table. A causal instance puts every future key in
// bucket 0; a bidirectional one (causal = false) gives past and future
// their own halves of the buckets. Self- and cross-attention each want
// their own instance: the cross one bidirectional, with explicit positions.
class RelativePositionBias : public Module {
 public:
  explicit RelativePositionBias(const RelativePositionBiasOptions& options = {});

  // (heads, i, j) for i queries right-aligned to j keys.
  Tensor forward(int64_t i, int64_t j) const;
  // (heads, i, j) for explicit int64 positions: q_pos (i), k_pos (j); or
  // (b, heads, i, j) for positions per sample, q_pos (b, i), k_pos (b, j).
  Tensor forward(const Tensor& q_pos, const Tensor& k_pos) const;

  // T5's bucket of each relative position (k_pos - q_pos), int64 -> int64.
  static Tensor bucket(const Tensor& relative_position, bool causal, int64_t num_buckets, int64_t max_distance);

  RelativePositionBiasOptions options;
  std::shared_ptr<Embedding> relative_attention_bias;  // weight (num_buckets, heads)
};

// ---- Dynamic position bias --------------------------------------------------

struct DynamicPositionBiasOptions {
  int64_t dim = 128;  // the MLP's width (x-transformers: the layers' dim / 4)
  int64_t heads = 8;
  int64_t depth = 2;  // Linear(1, dim) + SiLU, depth - 1 × (Linear(dim, dim) + SiLU), Linear(dim, heads)
  bool log_distance = false;  // feed sign(d) · log(|d| + 1) instead of the distance d
  bool norm = false;          // a LayerNorm before each SiLU
};

// x-transformers' DynamicPositionBias: bias[h, q, k] = MLP(q_pos - k_pos)[h]
// with the queries right-aligned; not scaled. Parameters rel_pos.mlp.0.0.weight, ...
class DynamicPositionBias : public Module {
 public:
  explicit DynamicPositionBias(const DynamicPositionBiasOptions& options = {});
  Tensor forward(int64_t i, int64_t j) const;  // (heads, i, j)

  DynamicPositionBiasOptions options;
  std::vector<std::shared_ptr<Module>> norms;  // LayerNorm (first) and torch.nn.LayerNorm (the others), if norm
  std::vector<std::shared_ptr<Linear>> linears;
};

// ---- ALiBi ---------------------------------------------------------------

struct AlibiOptions {
  int64_t heads = 8;        // heads that get a slope (the first ones)
  int64_t total_heads = 0;  // all heads; those past `heads` get zero bias. 0 = heads
  std::vector<double> slopes = {};  // custom slopes, one per ALiBi head; empty = the paper's
};

// bias[.., h, q, k] = -slope_h * |pos_k - pos_q|, zero for heads >= `heads`.
class AlibiPositionalBias : public Module {
 public:
  explicit AlibiPositionalBias(const AlibiOptions& options = {});

  // (total_heads, i, j), positions 0..j-1 with the queries right-aligned.
  Tensor forward(int64_t i, int64_t j) const;
  // Explicit positions of any float or int dtype, the same for queries and
  // keys: pos (n) -> (total_heads, n, n); pos (b, n) -> (b, total_heads, n, n),
  // one set of positions per sample (e.g. irregularly sampled time series);
  // pos (b, heads, n) -> (b, total_heads, n, n), positions per head.
  Tensor forward(const Tensor& pos) const;
  // Separate query and key positions (..., i) and (..., j) -> (..., total_heads, i, j).
  Tensor forward(const Tensor& pos_i, const Tensor& pos_j) const;

  // The ALiBi paper's slopes: geometric 2^(-8/n), 2^(-16/n), ... for a power
  // of two n; otherwise those of the nearest lower power of two followed by
  // every other slope of the next power of two.
  static std::vector<double> get_slopes(int64_t heads);

  AlibiOptions options;
  Tensor slopes;  // (heads, 1, 1), a non-persistent buffer as in x-transformers
};

// ---- Rotary --------------------------------------------------------------

struct RotaryOptions {
  int64_t dim = 32;  // rotated features per head (x-transformers: rotary_emb_dim, default dim_head / 2)
  bool use_xpos = false;
  double scale_base = 512;
  double interpolation_factor = 1.0;
  double base = 10000;
  double base_rescale_factor = 1.0;  // NTK-aware rescaling of base
};

// Angles for positions t: theta[.., n, 2k] = theta[.., n, 2k+1] = t_n * inv_freq_k
// (each pair's angle twice, the interleaved GPT-J layout).
class RotaryEmbedding : public Module {
 public:
  explicit RotaryEmbedding(const RotaryOptions& options = {});

  struct Output {
    Tensor freqs;  // (1 or b, n, dim) angles
    Tensor scale;  // xPos: (1 or b, n, dim) factors for q (use 1 / scale for k); undefined without xPos
  };
  // t: positions (n) or (b, n), any numeric dtype.
  Output forward(const Tensor& t) const;
  Output forward_from_seq_len(int64_t seq_len) const;

  RotaryOptions options;
  Tensor inv_freq;  // (dim / 2), persistent buffer `inv_freq`
  Tensor xpos_scale;  // (dim / 2), persistent buffer `scale` when use_xpos
};

// Rotates the first freqs.size(-1) features of t (.., n, d) in interleaved
// pairs: (x_2k, x_2k+1) -> (x_2k cos - x_2k+1 sin, x_2k+1 cos + x_2k sin),
// times scale if given; the remaining features pass through. freqs (b, n', r)
// with n' >= n is right-aligned (its last n rows are used); for t (b, h, n, d)
// it is broadcast over heads.
Tensor apply_rotary_pos_emb(const Tensor& t, const Tensor& freqs, const Tensor& scale = Tensor());

// ---- Absolute positions ----------------------------------------------------

struct AbsolutePositionalEmbeddingOptions {
  int64_t dim = 512;
  int64_t max_seq_len = 1024;
  bool l2norm_embed = false;
};

// A learned row per position (N(0, 1) init) times dim^-0.5, or l2-normalised
// with l2norm_embed.
class AbsolutePositionalEmbedding : public Module {
 public:
  explicit AbsolutePositionalEmbedding(const AbsolutePositionalEmbeddingOptions& options = {});
  // x (b, n, ...) gives the length n; pos (n) or (b, n) int64 overrides 0..n-1.
  // Returns (n, dim), or pos.shape + [dim].
  Tensor forward(const Tensor& x, const Tensor& pos = Tensor()) const;

  AbsolutePositionalEmbeddingOptions options;
  double scale;
  std::shared_ptr<Embedding> emb;
};

// [sin(t w_k), cos(t w_k)] * s with w_k = theta^(-k / (dim/2)), s learned
// (init dim^-0.5).
class ScaledSinusoidalEmbedding : public Module {
 public:
  explicit ScaledSinusoidalEmbedding(int64_t dim, double theta = 10000);
  // x (b, n, ...) gives the length n; pos (any shape, any numeric dtype)
  // overrides 0..n-1. Returns (n, dim), or pos.shape + [dim].
  Tensor forward(const Tensor& x, const Tensor& pos = Tensor()) const;

  Tensor scale;     // parameter `scale`, (1)
  Tensor inv_freq;  // (dim / 2), non-persistent buffer
};

}  // namespace loom::nn
