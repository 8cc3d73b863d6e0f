// Fused attention, flash-attention style, on the CPU.
//
// For one (batch, head), with S the logits and P the weights:
//   S = scale · Q Kᵀ + bias − F          (−∞ where masked)
//   P = softmax(S) row by row            O = P V   (P with dropout applied)
// Backward, from the saved row statistic lse = log Σ_c exp(S_rc):
//   P   = exp(S − lse)                   (recomputed, never stored)
//   dV  = Pᵀ dO                          dP = dO Vᵀ
//   dS  = P ∘ (dP − Δ),  Δ_r = Σ_d dO_rd O_rd
//   dQ  = scale · dS K                   dK = scale · dSᵀ Q
//   dbias = dS                           dF = −Σ_heads dS
//
// Forward: the queries are cut into blocks of 64 rows and the keys into
// blocks of 64. For each query block the key blocks stream past; a running
// max m, sum l and output accumulator per row are rescaled as the max
// grows (online softmax), so no more than one 64×64 tile of S exists per
// thread. Work is split over (batch, head, query block).
//
// Backward: two passes, each recomputing the tiles it needs. Pass A owns
// query blocks and writes dQ (and dbias); pass B owns key blocks and writes
// dK and dV. Each output element is written by one thread in a fixed order,
// so gradients are the same for any thread count.
//
// Selective attention: the gate G = relu(S of head 0, before the subtraction),
// zero on the first own key column and on the diagonal, and
// F_rc = Σ_{r' < r} G_r'c. G and F are materialised for the selection head
// only: 2 · b · i · j floats (at b = 1, i = j = 2048: 32 MiB). Its backward
// adds one more pass over all heads to collect dF, then
// dG_rc = Σ_{r' > r} dF_r'c, and head 0's logits receive dG where G > 0.
#include <omp.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include <loom/core/autocast.h>
#include <loom/core/autograd.h>
#include <loom/core/parallel.h>
#include <loom/ops/attention.h>
#include <loom/ops/kernels/kernels.h>
#include <loom/ops/ops.h>

namespace loom {

namespace {

constexpr int64_t kBlock = 64;  // rows of a query block and of a key block
constexpr float kInf = INFINITY;

// A tensor broadcast to [b, h, i, j], read through strides (0 where it repeats).
struct View4 {
  const char* data = nullptr;
  int64_t stride[4] = {0, 0, 0, 0};  // in elements
  int64_t index(int64_t b, int64_t h, int64_t r, int64_t c) const {
    return b * stride[0] + h * stride[1] + r * stride[2] + c * stride[3];
  }
};

View4 view4(const Tensor& t) {
  View4 v;
  if (!t.defined()) return v;
  v.data = static_cast<const char*>(t.raw_data());
  const int64_t lead = 4 - t.dim();
  for (int64_t d = 0; d < t.dim(); ++d) v.stride[lead + d] = t.size(d) == 1 ? 0 : t.stride(d);
  return v;
}

// count matrices [rows, cols] (a contiguous source) rounded to bfloat16 and
// packed for the tile products (kernels.h), once per call instead of once
// per tile, in one of three layouts: pairs of rows (pack_bf16_pairs: K, V,
// Q, dO as B operands), pairs of columns (pack_bf16_pairs_t: Kᵀ, Vᵀ as B
// operands, from K and V themselves) or pairs along rows (pack_bf16_rows:
// Q, dO as A operands).
//
// A matrix is packed when a tile first needs it (ensure), by the first
// thread to get there, inside the passes' own parallel loops: its source is
// read just before that head's tiles run, and they find the packed copy in
// cache; the backward's layouts are packed in the backward. Packing is
// memory-bound either way (~20 % of the bfloat16 forward at seq 1024 when
// it all ran up front, in parallel loops of its own); packed on first use,
// the char-LM's attention forward + backward took ~4 % less.
enum class Layout { Pairs, PairsT, Rows };
struct Packed {
  Tensor storage;  // 4-byte elements from loom's allocator: reused blocks, no page faults, counted in memory stats
  int64_t ld = 0, per = 0;  // row stride and size of one matrix, in pairs
  Layout layout = Layout::Pairs;
  const float* src = nullptr;  // the float32 matrices
  int64_t rows = 0, cols = 0;
  std::unique_ptr<std::atomic<uint8_t>[]> state;  // per matrix: 0 to pack, 1 being packed, 2 packed

  void prepare(const float* x, int64_t count, int64_t rows_, int64_t cols_, Layout l) {
    src = x, rows = rows_, cols = cols_, layout = l;
    if (layout == Layout::Rows) {
      ld = (cols + 1) / 2, per = rows * ld;
    } else {
      // Padded past a multiple of 1 KiB, for the same reason as Problem::JT:
      // the 32 pair rows of a Kᵀ or Vᵀ tile would otherwise share a few L1 sets.
      const int64_t width = layout == Layout::Pairs ? cols : rows, height = layout == Layout::Pairs ? rows : cols;
      ld = (width + 15) / 16 * 16, ld += ld % 256 == 0 ? 16 : 0, per = (height + 1) / 2 * ld;
    }
    storage = empty({count * per});  // every element is written by the kernels
    state = std::make_unique<std::atomic<uint8_t>[]>(size_t(count));  // all 0
  }
  // Matrix m packed, by this thread or (waited for) another.
  void ensure(int64_t m) const {
    std::atomic<uint8_t>& s = state[size_t(m)];
    if (s.load(std::memory_order_acquire) == 2) return;
    uint8_t expected = 0;
    if (s.compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) {
      const kernels::Table& k = kernels::table();
      const float* x = src + m * rows * cols;
      uint32_t* dst = data() + m * per;
      if (layout == Layout::Pairs) k.pack_bf16_pairs(x, cols, rows, cols, dst, ld);
      else if (layout == Layout::PairsT) k.pack_bf16_pairs_t(x, cols, rows, cols, dst, ld);
      else k.pack_bf16_rows(x, cols, rows, cols, dst, ld);
      s.store(2, std::memory_order_release);
    } else {
      while (s.load(std::memory_order_acquire) != 2) std::this_thread::yield();  // (threads may outnumber cores)
    }
  }
  uint32_t* data() const { return static_cast<uint32_t*>(storage.raw_data()); }
  // Pair row row / 2 (row even) of matrix m (Pairs, PairsT), or row `row` of all (Rows).
  const uint32_t* at(int64_t m, int64_t row) const {
    return layout == Layout::Rows ? data() + row * ld : data() + m * per + row / 2 * ld;
  }
};

// Everything one call needs, shared by the forward and backward passes.
struct Problem {
  int64_t B = 0, H = 0, G = 0, I = 0, J = 0, D = 0, Dv = 0;
  float scale = 1;
  const float *q = nullptr, *k = nullptr, *v = nullptr;  // contiguous
  // k and v transposed once per call, [B, G, D, JT] and [B, G, Dv, JT]. The
  // row stride JT is J padded past a multiple of 16 floats: with J a power of
  // two the 64 rows of a tile's Kᵀ would all map to the same few L1 sets.
  // (The bfloat16 products read packed copies instead: kT is there only for
  // selective attention's float32 gate, vT not at all.)
  const float *kT = nullptr, *vT = nullptr;
  int64_t JT = 0;
  Tensor mask_t, bias_t;                                 // kept alive for the views
  View4 mask, bias;
  bool has_mask = false, has_bias = false, causal = false;
  int64_t offset = 0;        // J − I: query r sees keys c <= r + offset when causal
  const float* F = nullptr;  // selective: [B, I, J], subtracted from every head
  const float* carry = nullptr;  // selective: [B, J], F from earlier calls (cached decoding)
  const bool* gated = nullptr;   // selective: [B, J], keys that may be gated; null = c > offset
  float dropout = 0;
  Generator gen;  // seed and first block of this call's dropout numbers
  uint64_t first_block = 0;
  // The tile products: float32 (gemm), or under autocast on a CPU with
  // AVX512-BF16 bfloat16 inputs with float32 sums (bf16: gemm_bf16_pp with
  // Q, K, V, Kᵀ and Vᵀ packed once per call, each matrix when first read,
  // and each tile's P and dS written packed by the tile itself).
  decltype(kernels::Table::gemm) gemm = nullptr;
  decltype(kernels::Table::gemm_bf16_pp) gemm_bf16 = nullptr;
  bool bf16 = false;
  Packed kTp, vTp, kp, vp;  // B operands (pairs of rows)
  Packed qa;                // Q as A operand (pairs along rows), [B·H·I, ⌈D/2⌉]
  Packed qp;                // Q as B operand of dK (when a backward will follow, as kp and vTp)

  int64_t kv_head(int64_t h) const { return h % G; }
  // The dropout keep factor for weight (b, h, r, c): 0 or 1 / (1 − p).
  float keep(int64_t b, int64_t h, int64_t r, int64_t c) const {
    const uint64_t e = uint64_t(((b * H + h) * I + r) * J + c);
    const float u = uniform_from_bits(gen.block(first_block + e / 4)[e % 4]);
    return u >= dropout ? 1.0f / (1.0f - dropout) : 0.0f;
  }
};

// [B, G, J, D] -> [B, G, D, JT], the columns past J unused (zero). In
// blocks of 16 keys, so each row of the result is written 64 bytes at a time
// (one key at a time, every store went to another line: at the char-LM's
// sizes the two transposes took a fifth of the forward's time).
Tensor transpose_padded(const Tensor& x, int64_t JT) {
  const int64_t B = x.size(0), G = x.size(1), J = x.size(2), D = x.size(3);
  Tensor t = empty({B, G, D, JT});
  const float* src = x.data_ptr<float>();
  float* dst = t.data_ptr<float>();
  constexpr int64_t kKeys = 16;
  parallel_for(B * G, J * D, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const float* s = src + u * J * D;
      float* d = dst + u * D * JT;
      for (int64_t j0 = 0; j0 < J; j0 += kKeys) {
        const int64_t j1 = std::min(J, j0 + kKeys);
        for (int64_t e = 0; e < D; ++e)
          for (int64_t j = j0; j < j1; ++j) d[e * JT + j] = s[j * D + e];
      }
      for (int64_t e = 0; e < D; ++e) std::fill(d + e * JT + J, d + (e + 1) * JT, 0.0f);
    }
  });
  return t;
}

// C = alpha · A · B (+ C when accumulate) for one tile: float32 from A
// (A(r, t) = A[r · a_rs + t · a_cs]) and B (row stride ldb), or bfloat16
// from their packed copies: Ap(r, pair) = Ap[r · sr + pair · sp] and Bp's
// matrix m from row `row` (even) and column `col`. (A causal tile with an odd
// number of keys pairs its last key row of K or V with the next, invisible
// one, times A's zero padding: only an inf or NaN in that invisible row
// would show, as NaN.)
void product(const Problem& p, const float* A, int64_t a_rs, int64_t a_cs, const uint32_t* Ap, int64_t sr, int64_t sp,
             const float* B, int64_t ldb, const Packed& Bp, int64_t m, int64_t row, int64_t col, float* C, int64_t ldc,
             int64_t rows, int64_t cols, int64_t k, float alpha, bool accumulate) {
  if (p.bf16) {
    Bp.ensure(m);
    p.gemm_bf16(Ap, sr, sp, Bp.at(m, row) + col, Bp.ld, C, ldc, rows, cols, (k + 1) / 2, alpha, accumulate);
  } else {
    p.gemm(A, a_rs, a_cs, B, ldb, C, ldc, rows, cols, k, alpha, accumulate);
  }
}

// Per-thread scratch for one tile: logits (later dS) and weights, and for
// the bfloat16 products their packed copies: P and dS by rows (ld kHalf:
// P V, dS K) and Pᵀ and dSᵀ as pairs of rows (ld kBlock: Pᵀ dO, dSᵀ Q).
constexpr int64_t kHalf = kBlock / 2;
struct Tile {
  std::vector<float> S, P;
  std::vector<uint32_t> Pr, dSr, Pt, dSt;
  bool packed = false;  // dSr, Pt and dSt hold this tile's (grad_tile's common case writes them)
  explicit Tile(bool bf16)
      : S(size_t(kBlock * kBlock)), P(size_t(kBlock * kBlock)), Pr(bf16 ? size_t(kBlock * kHalf) : 0),
        dSr(Pr.size()), Pt(Pr.size()), dSt(Pr.size()) {}
};

// The bias rows of a tile are J floats apart: 64 short streams the hardware
// prefetcher does not follow. Asked for before the tile's product (into L2),
// they arrive while it runs (at seq 1024, with 2 MiB pages: the bias costs
// the forward ~2.2 ms over none, ~4.4 ms without this).
void prefetch_bias(const Problem& p, int64_t b, int64_t h, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  if (!p.has_bias || p.bias.stride[3] != 1) return;
  for (int64_t r = r0; r < r1; ++r) {
    const char* z = p.bias.data + 4 * p.bias.index(b, h, r, c0);
    for (int64_t c = 0; c < (c1 - c0) * 4; c += 64) __builtin_prefetch(z + c, 0, 2);
    __builtin_prefetch(z + (c1 - c0) * 4 - 1, 0, 2);
  }
}

// S[r - r0][c - c0] = scale q_r·k_c + bias − F (−∞ where not visible), rows
// [r0, r1), keys [c0, c1). `with_F` = false gives the logits selective
// attention computes its gate from.
void logits_tile(const Problem& p, Tile& t, int64_t b, int64_t h, int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                 bool with_F) {
  const int64_t nr = r1 - r0, nc = c1 - c0;
  const float* Q = p.q + ((b * p.H + h) * p.I + r0) * p.D;
  const float* KT = p.kT ? p.kT + (b * p.G + p.kv_head(h)) * p.D * p.JT + c0 : nullptr;  // columns c0.. of Kᵀ
  // The selective gate's logits (with_F false) stay float32 under autocast:
  // its running sum F grows over the rows and would carry their rounding
  // into every later weight.
  if (p.bf16 && with_F) p.qa.ensure(b * p.H + h);
  const uint32_t* Qa = p.bf16 ? p.qa.at(0, (b * p.H + h) * p.I + r0) : nullptr;
  prefetch_bias(p, b, h, r0, r1, c0, c1);
  if (with_F)
    product(p, Q, p.D, 1, Qa, p.qa.ld, 1, KT, p.JT, p.kTp, b * p.G + p.kv_head(h), 0, c0, t.S.data(), nc, nr, nc, p.D,
            p.scale, false);
  else
    p.gemm(Q, p.D, 1, KT, p.JT, t.S.data(), nc, nr, nc, p.D, p.scale, false);
  for (int64_t r = 0; r < nr; ++r) {
    float* row = t.S.data() + r * nc;
    const int64_t R = r0 + r;
    // Bias and F are added before the masks, which then overwrite with −∞:
    // a NaN or +∞ bias where nothing is visible must not reach the softmax
    // (−∞ + NaN would be NaN), as in the naive where(mask, s, −∞).
    // Masks and biases are read through strides; the unit-stride loops are
    // separate so the compiler vectorises them (branch-free selects).
    if (p.has_bias) {
      const float* z = reinterpret_cast<const float*>(p.bias.data) + p.bias.index(b, h, R, c0);
      const int64_t zs = p.bias.stride[3];
      if (zs == 1)
        for (int64_t c = 0; c < nc; ++c) row[c] += z[c];
      else
        for (int64_t c = 0; c < nc; ++c) row[c] += z[c * zs];
    }
    if (with_F && p.F) {
      const float* f = p.F + (b * p.I + R) * p.J + c0;
      for (int64_t c = 0; c < nc; ++c) row[c] -= f[c];
    }
    if (p.causal)  // keys after R + offset are in the future
      for (int64_t c = std::max<int64_t>(0, R + p.offset + 1 - c0); c < nc; ++c) row[c] = -kInf;
    if (p.has_mask) {
      const bool* m = reinterpret_cast<const bool*>(p.mask.data) + p.mask.index(b, h, R, c0);
      const int64_t ms = p.mask.stride[3];
      if (ms == 1)
        for (int64_t c = 0; c < nc; ++c) row[c] = m[c] ? row[c] : -kInf;
      else
        for (int64_t c = 0; c < nc; ++c) row[c] = m[c * ms] ? row[c] : -kInf;
    }
  }
}

// In a row whose lse is NaN, exp(S − lse) is NaN everywhere, also where S is
// −∞ (masked): those weights are 0, as the naive where(mask, p, 0) has them.
void masked_to_zero(const float* S, float* P, int64_t n) {
  for (int64_t c = 0; c < n; ++c)
    if (S[c] == -kInf) P[c] = 0.0f;
}

// The last key block a query block can see (causal skips the rest).
int64_t key_end(const Problem& p, int64_t r1) {
  return p.causal ? std::max<int64_t>(0, std::min(p.J, r1 - 1 + p.offset + 1)) : p.J;
}

// Whether the masks leave any key of the tile visible (causal aside). A tile
// they hide entirely adds nothing to any output or gradient (its weights are
// exactly 0), so it is skipped, as causal attention skips the future: a NaN in
// its keys or values does not reach the output. Cheap next to the tile's
// products: one row of bytes for a key-padding mask, the tile's for a full one.
bool tile_visible(const Problem& p, int64_t b, int64_t h, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  if (!p.has_mask) return true;
  const bool* m = reinterpret_cast<const bool*>(p.mask.data) + p.mask.index(b, h, r0, c0);
  const int64_t rs = p.mask.stride[2], cs = p.mask.stride[3], rows = rs == 0 ? 1 : r1 - r0, cols = cs == 0 ? 1 : c1 - c0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      if (m[r * rs + c * cs]) return true;
  return false;
}

// dbias of one tile, rows [r0, r0 + nr) and keys [c0, c0 + nc) of the
// [Bb, Hb, I, J] matrix at `db`: dS (t.S) stored by its first writer and
// added by the others (bias shared over batch or heads), or zeros for a tile
// no query sees (dS null). dbias is not zeroed first: each tile is written
// exactly once by its first writer.
void dbias_tile(const Problem& p, float* db, int64_t r0, int64_t nr, int64_t c0, int64_t nc, const float* dS,
                bool first) {
  for (int64_t r = 0; r < nr; ++r) {
    float* d = db + (r0 + r) * p.J + c0;
    const float* s = dS ? dS + r * nc : nullptr;
    if (!s) {
      if (first) std::fill(d, d + nc, 0.0f);
    } else if (first) {
      std::copy(s, s + nc, d);
    } else {
      for (int64_t c = 0; c < nc; ++c) d[c] += s[c];
    }
  }
}

// ---- forward ------------------------------------------------------------------------------
// Writes out [B, H, I, Dv] and lse [B, H, I] (+∞ for rows with no visible key).
void forward(const Problem& p, float* out, float* lse) {
  const int64_t qblocks = (p.I + kBlock - 1) / kBlock;
  parallel_for(p.B * p.H * qblocks, kBlock * p.J * (p.D + p.Dv), [&](int64_t u0, int64_t u1) {
    const kernels::Table& k = kernels::table();
    Tile t(p.bf16);
    std::vector<float> m(kBlock), l(kBlock), scale(kBlock);  // scale: the bfloat16 path's rescaling factors
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b = u / (p.H * qblocks), h = u / qblocks % p.H, r0 = u % qblocks * kBlock;
      const int64_t r1 = std::min(p.I, r0 + kBlock), nr = r1 - r0;
      float* O = out + ((b * p.H + h) * p.I + r0) * p.Dv;
      std::fill(O, O + nr * p.Dv, 0.0f);
      std::fill(m.begin(), m.end(), -kInf);
      std::fill(l.begin(), l.end(), 0.0f);
      const int64_t cend = key_end(p, r1);
      for (int64_t c0 = 0; c0 < cend; c0 += kBlock) {
        const int64_t c1 = std::min(cend, c0 + kBlock), nc = c1 - c0;
        if (!tile_visible(p, b, h, r0, r1, c0, c1)) continue;
        logits_tile(p, t, b, h, r0, r1, c0, c1, true);
        if (p.bf16) {
          // The whole tile's softmax step in one kernel call, its weights
          // written packed for P V (float32 first with dropout, which packs
          // them after dropping), O's rows rescaled.
          k.softmax_tile_bf16(t.S.data(), nr, nc, m.data(), l.data(), scale.data(),
                              p.dropout > 0 ? t.P.data() : nullptr, t.Pr.data(), kHalf, O, p.Dv);
          if (p.dropout > 0)
            for (int64_t r = 0; r < nr; ++r) {
              float* pr = t.P.data() + r * nc;
              for (int64_t c = 0; c < nc; ++c) pr[c] *= p.keep(b, h, r0 + r, c0 + c);
              k.pack_bf16_rows(pr, nc, 1, nc, t.Pr.data() + r * kHalf, kHalf);
            }
        } else {
          // The tile's softmax step in one kernel call: weights into t.P,
          // O's rows rescaled. A NaN logit makes its row's m, l and O NaN,
          // as softmax of a row with a NaN is NaN.
          k.softmax_tile(t.S.data(), nr, nc, m.data(), l.data(), t.P.data(), O, p.Dv);
          if (p.dropout > 0)
            for (int64_t r = 0; r < nr; ++r)
              for (int64_t c = 0; c < nc; ++c) t.P[size_t(r * nc + c)] *= p.keep(b, h, r0 + r, c0 + c);
        }
        const float* V = p.v + ((b * p.G + p.kv_head(h)) * p.J + c0) * p.Dv;
        product(p, t.P.data(), nc, 1, t.Pr.data(), kHalf, 1, V, p.Dv, p.vp, b * p.G + p.kv_head(h), c0, 0, O, p.Dv, nr,
                p.Dv, nc, 1.0f, true);  // O += P V
      }
      for (int64_t r = 0; r < nr; ++r) {
        // A row that saw no key (m still −∞) is exact zeros, with lse +∞ so
        // its weights recompute as 0; a NaN row stays NaN.
        const float lr = l[size_t(r)];
        const bool none = m[size_t(r)] == -kInf;
        for (int64_t d = 0; d < p.Dv; ++d) O[r * p.Dv + d] = none ? 0.0f : O[r * p.Dv + d] / lr;
        lse[(b * p.H + h) * p.I + r0 + r] = none ? kInf : m[size_t(r)] + std::log(lr);
      }
    }
  });
}

// ---- selective attention: the gate and its running sum ----------------------------------------
// G_rc = relu(S⁰_rc), 0 for keys that are not gated (c <= offset, or as
// p.gated says) and for c = r + offset; F_rc = carry_c + Σ_{r' < r} G_r'c.
// carry_out (optional, [B, J]) = carry + Σ_r G_rc, what a later call's queries start from.
void selective_gate(const Problem& p, float* G, float* F, float* carry_out) {
  const int64_t qblocks = (p.I + kBlock - 1) / kBlock;
  parallel_for(p.B * qblocks, kBlock * p.J * p.D, [&](int64_t u0, int64_t u1) {
    Tile t(false);  // the gate's logits are float32 products
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b = u / qblocks, r0 = u % qblocks * kBlock, r1 = std::min(p.I, r0 + kBlock);
      for (int64_t c0 = 0; c0 < p.J; c0 += kBlock) {
        const int64_t c1 = std::min(p.J, c0 + kBlock), nc = c1 - c0;
        logits_tile(p, t, b, 0, r0, r1, c0, c1, false);
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = c0; c < c1; ++c) {
            const float s = t.S[size_t((r - r0) * nc + c - c0)];
            const bool ungated = p.gated ? !p.gated[b * p.J + c] : c <= p.offset;
            const bool excluded = ungated || c == r + p.offset;
            G[(b * p.I + r) * p.J + c] = excluded || s <= 0 ? 0.0f : s;  // relu, NaN stays NaN
          }
      }
    }
  });
  parallel_for(p.B, p.I * p.J, [&](int64_t b0, int64_t b1) {  // exclusive running sum down the rows
    for (int64_t b = b0; b < b1; ++b) {
      float* Fb = F + b * p.I * p.J;
      const float* Gb = G + b * p.I * p.J;
      if (p.I == 0) continue;  // nothing to sum; the carry passes through (below)
      for (int64_t c = 0; c < p.J; ++c) Fb[c] = p.carry ? p.carry[b * p.J + c] : 0.0f;
      for (int64_t r = 1; r < p.I; ++r)
        for (int64_t c = 0; c < p.J; ++c) Fb[r * p.J + c] = Fb[(r - 1) * p.J + c] + Gb[(r - 1) * p.J + c];
      if (carry_out)
        for (int64_t c = 0; c < p.J; ++c) carry_out[b * p.J + c] = Fb[(p.I - 1) * p.J + c] + Gb[(p.I - 1) * p.J + c];
    }
  });
}

// ---- backward ------------------------------------------------------------------------------
struct Grad {
  const float *out, *lse, *dout;  // saved O and lse, incoming dO (contiguous)
  std::vector<float> delta;       // Δ_r = Σ_d dO_rd O_rd, [B, H, I]
  const float* dS0 = nullptr;     // selective: extra gradient of head 0's logits, [B, I, J]
  Packed dOp, dOa;                // bfloat16 tiles: dO as B operand of dV and as A operand of dP = dO Vᵀ
};

// For one tile: P in t.P, and dS = P ∘ (dP − Δ) in t.S, where dP is taken
// through the dropout mask. Returns the weights dV needs: t.P, or with
// dropout the dropped weights, written to Pd. With the tile's bfloat16
// copies written here (t.packed), float32 dS is stored only for `dS_read`
// (dbias, selective attention's dF): the products read the copies.
const float* grad_tile(const Problem& p, const Grad& g, Tile& t, int64_t b, int64_t h, int64_t r0, int64_t r1,
                       int64_t c0, int64_t c1, std::vector<float>& Pd, bool dS_read) {
  const kernels::Table& k = kernels::table();
  const int64_t nr = r1 - r0, nc = c1 - c0;
  logits_tile(p, t, b, h, r0, r1, c0, c1, true);
  const float* L = g.lse + (b * p.H + h) * p.I + r0;
  // P = exp(S − lse), with the forward's exp (softmax_tile's or softmax_tile_bf16's)
  (p.bf16 ? k.exp_tile_bf16 : k.exp_tile)(t.S.data(), nr, nc, L, t.P.data());
  for (int64_t r = 0; r < nr; ++r)
    if (std::isnan(L[r])) masked_to_zero(t.S.data() + r * nc, t.P.data() + r * nc, nc);
  // dP = dO Vᵀ
  const float* VT = p.vT ? p.vT + (b * p.G + p.kv_head(h)) * p.Dv * p.JT + c0 : nullptr;
  const float* dO = g.dout + ((b * p.H + h) * p.I + r0) * p.Dv;
  if (p.bf16) g.dOa.ensure(b * p.H + h);
  const uint32_t* dOa = p.bf16 ? g.dOa.at(0, (b * p.H + h) * p.I + r0) : nullptr;
  product(p, dO, p.Dv, 1, dOa, g.dOa.ld, 1, VT, p.JT, p.vTp, b * p.G + p.kv_head(h), 0, c0, t.S.data(), nc, nr, nc,
          p.Dv, 1.0f, false);  // t.S now holds dP
  const float* delta = g.delta.data() + (b * p.H + h) * p.I + r0;
  const bool extra = g.dS0 && h == 0;
  t.packed = p.bf16 && p.dropout == 0 && !extra;
  if (t.packed) {  // the same with the tile's bfloat16 copies written in the same pass
    k.softmax_grad_tile_bf16(t.P.data(), t.S.data(), delta, nr, nc, t.dSr.data(), kHalf, t.Pt.data(), t.dSt.data(),
                             kBlock, dS_read);
    return t.P.data();
  }
  if (p.dropout == 0 && !extra) {  // the common case: one vector pass per row, in place
    for (int64_t r = 0; r < nr; ++r)
      k.softmax_grad(t.P.data() + r * nc, t.S.data() + r * nc, delta[r], t.S.data() + r * nc, nc);
    return t.P.data();
  }
  for (int64_t r = 0; r < nr; ++r)
    for (int64_t c = 0; c < nc; ++c) {
      const size_t e = size_t(r * nc + c);
      const float keep = p.dropout > 0 ? p.keep(b, h, r0 + r, c0 + c) : 1.0f;
      Pd[e] = t.P[e] * keep;
      // Where the weight is 0 (masked, or a row that sees nothing) the
      // gradient is exactly 0, also when dP is NaN from a NaN in v.
      float ds = t.P[e] == 0.0f ? 0.0f : t.P[e] * (t.S[e] * keep - delta[r]);
      if (extra) ds += g.dS0[(b * p.I + r0 + r) * p.J + c0 + c];
      t.S[e] = ds;
    }
  return Pd.data();
}

// The bfloat16 copies of a tile's dS (t.S) and weights W that its products
// read: dS by rows (for dS K), and Wᵀ and dSᵀ as pairs of rows (for Wᵀ dO and
// dSᵀ Q), each as needed, unless grad_tile has written them already.
void pack_tile(const Problem& p, Tile& t, const float* W, int64_t nr, int64_t nc, bool rows, bool transposed) {
  if (!p.bf16 || t.packed) return;
  const kernels::Table& k = kernels::table();
  if (rows) k.pack_bf16_rows(t.S.data(), nc, nr, nc, t.dSr.data(), kHalf);
  if (transposed) {
    k.pack_bf16_pairs(W, nc, nr, nc, t.Pt.data(), kBlock);
    k.pack_bf16_pairs(t.S.data(), nc, nr, nc, t.dSt.data(), kBlock);
  }
}

// Pass A: dQ (and dbias), one unit per query block of the dims dbias does not repeat over.
void backward_queries(const Problem& p, const Grad& g, float* dq, float* dbias, const Shape& dbias_shape) {
  const int64_t qblocks = (p.I + kBlock - 1) / kBlock;
  // dbias [Bb, Hb, I, J]: when bias is shared over batch (or heads), one unit
  // loops over all of them so each dbias element has one writer.
  const int64_t Bb = dbias ? dbias_shape[0] : p.B, Hb = dbias ? dbias_shape[1] : p.H;
  parallel_for(Bb * Hb * qblocks, kBlock * p.J * (p.D + p.Dv) * (p.B / Bb) * (p.H / Hb), [&](int64_t u0, int64_t u1) {
    Tile t(p.bf16);
    std::vector<float> Pd(size_t(kBlock * kBlock));
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t bb = u / (Hb * qblocks), hh = u / qblocks % Hb, r0 = u % qblocks * kBlock;
      const int64_t r1 = std::min(p.I, r0 + kBlock), nr = r1 - r0, cend = key_end(p, r1);
      const int64_t b_first = Bb == 1 ? 0 : bb, h_first = Hb == 1 ? 0 : hh;
      float* db = dbias ? dbias + (bb * Hb + hh) * p.I * p.J : nullptr;
      for (int64_t b = b_first; b < (Bb == 1 ? p.B : bb + 1); ++b)
        for (int64_t h = h_first; h < (Hb == 1 ? p.H : hh + 1); ++h) {
          float* dQ = dq + ((b * p.H + h) * p.I + r0) * p.D;
          std::fill(dQ, dQ + nr * p.D, 0.0f);
          const bool first = b == b_first && h == h_first;
          for (int64_t c0 = 0; c0 < (db ? p.J : cend); c0 += kBlock) {
            const int64_t c1 = std::min(p.J, c0 + kBlock), nc = c1 - c0;
            if (c0 >= cend || !tile_visible(p, b, h, r0, r1, c0, c1)) {  // nothing to add (dbias: zeros)
              if (db) dbias_tile(p, db, r0, nr, c0, nc, nullptr, first);
              continue;
            }
            const int64_t ce = std::min(cend, c1), ne = ce - c0;  // causal: the visible keys of the last block
            pack_tile(p, t, grad_tile(p, g, t, b, h, r0, r1, c0, ce, Pd, db != nullptr), nr, ne, true, false);
            const float* K = p.k + ((b * p.G + p.kv_head(h)) * p.J + c0) * p.D;
            product(p, t.S.data(), ne, 1, t.dSr.data(), kHalf, 1, K, p.D, p.kp, b * p.G + p.kv_head(h), c0, 0, dQ, p.D,
                    nr, p.D, ne, p.scale, true);  // dQ += scale dS K
            if (db) {
              dbias_tile(p, db, r0, nr, c0, ne, t.S.data(), first);
              if (ce < c1) dbias_tile(p, db, r0, nr, ce, c1 - ce, nullptr, first);
            }
          }
        }
    }
  });
}

// Pass B: dK and dV, one unit per (batch, kv head, key block); it loops over
// the query heads that share the kv head and over all query blocks.
void backward_keys(const Problem& p, const Grad& g, float* dk, float* dv) {
  const int64_t kblocks = (p.J + kBlock - 1) / kBlock, qblocks = (p.I + kBlock - 1) / kBlock;
  parallel_for(p.B * p.G * kblocks, kBlock * p.I * (p.D + p.Dv) * (p.H / p.G), [&](int64_t u0, int64_t u1) {
    Tile t(p.bf16);
    std::vector<float> Pd(size_t(kBlock * kBlock));
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b = u / (p.G * kblocks), gk = u / kblocks % p.G, c0 = u % kblocks * kBlock;
      const int64_t c1 = std::min(p.J, c0 + kBlock), nc = c1 - c0;
      float* dK = dk + ((b * p.G + gk) * p.J + c0) * p.D;
      float* dV = dv + ((b * p.G + gk) * p.J + c0) * p.Dv;
      std::fill(dK, dK + nc * p.D, 0.0f);
      std::fill(dV, dV + nc * p.Dv, 0.0f);
      for (int64_t h = gk; h < p.H; h += p.G)
        for (int64_t qb = 0; qb < qblocks; ++qb) {
          const int64_t r0 = qb * kBlock, r1 = std::min(p.I, r0 + kBlock), nr = r1 - r0;
          if (key_end(p, r1) <= c0) continue;  // causal: this key block is invisible to these queries
          if (!tile_visible(p, b, h, r0, r1, c0, c1)) continue;
          const float* W = grad_tile(p, g, t, b, h, r0, r1, c0, c1, Pd, false);
          pack_tile(p, t, W, nr, nc, false, true);
          const float* dO = g.dout + ((b * p.H + h) * p.I + r0) * p.Dv;
          const float* Q = p.q + ((b * p.H + h) * p.I + r0) * p.D;
          // The transposed tiles are read through strides (row step 1, column step nc).
          product(p, W, 1, nc, t.Pt.data(), 1, kBlock, dO, p.Dv, g.dOp, b * p.H + h, r0, 0, dV, p.Dv, nc, p.Dv, nr,
                  1.0f, true);  // dV += Pdᵀ dO
          product(p, t.S.data(), 1, nc, t.dSt.data(), 1, kBlock, Q, p.D, p.qp, b * p.H + h, r0, 0, dK, p.D, nc, p.D,
                  nr, p.scale, true);  // dK += scale dSᵀ Q
        }
    }
  });
}

// One pass for everything: one unit per (batch, kv head) owns dK and dV of
// that kv head and dQ (and dbias) of the query heads that use it, so each
// tile is recomputed once instead of twice. Every output element receives
// its terms in the same order as in passes A and B (dQ by ascending key
// block; dK and dV by head, then query block), so both paths give the same
// bits. Used when there are enough units to keep the threads busy and no
// dbias element is shared between units.
void backward_fused(const Problem& p, const Grad& g, float* dq, float* dk, float* dv, float* dbias) {
  const int64_t kblocks = (p.J + kBlock - 1) / kBlock, qblocks = (p.I + kBlock - 1) / kBlock;
  parallel_for(p.B * p.G, p.I * p.J * (p.D + p.Dv) * (p.H / p.G), [&](int64_t u0, int64_t u1) {
    Tile t(p.bf16);
    std::vector<float> Pd(size_t(kBlock * kBlock));
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b = u / p.G, gk = u % p.G;
      std::fill(dk + (b * p.G + gk) * p.J * p.D, dk + (b * p.G + gk + 1) * p.J * p.D, 0.0f);
      std::fill(dv + (b * p.G + gk) * p.J * p.Dv, dv + (b * p.G + gk + 1) * p.J * p.Dv, 0.0f);
      for (int64_t h = gk; h < p.H; h += p.G)
        std::fill(dq + (b * p.H + h) * p.I * p.D, dq + (b * p.H + h + 1) * p.I * p.D, 0.0f);
      for (int64_t kb = 0; kb < kblocks; ++kb) {
        const int64_t c0 = kb * kBlock, c1 = std::min(p.J, c0 + kBlock), nc = c1 - c0;
        float* dK = dk + ((b * p.G + gk) * p.J + c0) * p.D;
        float* dV = dv + ((b * p.G + gk) * p.J + c0) * p.Dv;
        const float* K = p.k + ((b * p.G + gk) * p.J + c0) * p.D;
        for (int64_t h = gk; h < p.H; h += p.G)
          for (int64_t qb = 0; qb < qblocks; ++qb) {
            const int64_t r0 = qb * kBlock, r1 = std::min(p.I, r0 + kBlock), nr = r1 - r0;
            float* db = dbias ? dbias + (b * p.H + h) * p.I * p.J : nullptr;
            if (key_end(p, r1) <= c0 || !tile_visible(p, b, h, r0, r1, c0, c1)) {  // (causal: in the future)
              if (db) dbias_tile(p, db, r0, nr, c0, nc, nullptr, true);
              continue;
            }
            const float* W = grad_tile(p, g, t, b, h, r0, r1, c0, c1, Pd, db != nullptr);
            pack_tile(p, t, W, nr, nc, true, true);
            const float* dO = g.dout + ((b * p.H + h) * p.I + r0) * p.Dv;
            const float* Q = p.q + ((b * p.H + h) * p.I + r0) * p.D;
            product(p, W, 1, nc, t.Pt.data(), 1, kBlock, dO, p.Dv, g.dOp, b * p.H + h, r0, 0, dV, p.Dv, nc, p.Dv, nr,
                    1.0f, true);  // dV += Pdᵀ dO
            product(p, t.S.data(), 1, nc, t.dSt.data(), 1, kBlock, Q, p.D, p.qp, b * p.H + h, r0, 0, dK, p.D, nc, p.D,
                    nr, p.scale, true);  // dK += scale dSᵀ Q
            float* dQ = dq + ((b * p.H + h) * p.I + r0) * p.D;
            product(p, t.S.data(), nc, 1, t.dSr.data(), kHalf, 1, K, p.D, p.kp, b * p.G + p.kv_head(h), c0, 0, dQ, p.D,
                    nr, p.D, nc, p.scale, true);  // dQ += scale dS K
            if (db) dbias_tile(p, db, r0, nr, c0, nc, t.S.data(), true);
          }
      }
    }
  });
}

// Selective: dF = −Σ_h dS, then head 0's extra logit gradient
// dS0_rc = [G_rc > 0] Σ_{r' > r} dF_r'c.
std::vector<float> selective_backward(const Problem& p, const Grad& g, const float* G) {
  const int64_t qblocks = (p.I + kBlock - 1) / kBlock;
  std::vector<float> dF(size_t(p.B * p.I * p.J), 0.0f);
  parallel_for(p.B * qblocks, kBlock * p.J * p.H * (p.D + p.Dv), [&](int64_t u0, int64_t u1) {
    Tile t(p.bf16);
    std::vector<float> Pd(size_t(kBlock * kBlock));
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b = u / qblocks, r0 = u % qblocks * kBlock, r1 = std::min(p.I, r0 + kBlock);
      const int64_t cend = key_end(p, r1);
      for (int64_t h = 0; h < p.H; ++h)
        for (int64_t c0 = 0; c0 < cend; c0 += kBlock) {
          const int64_t c1 = std::min(cend, c0 + kBlock), nc = c1 - c0;
          if (!tile_visible(p, b, h, r0, r1, c0, c1)) continue;
          grad_tile(p, g, t, b, h, r0, r1, c0, c1, Pd, true);  // g.dS0 is still null here
          for (int64_t r = r0; r < r1; ++r)
            for (int64_t c = c0; c < c1; ++c) dF[size_t((b * p.I + r) * p.J + c)] -= t.S[size_t((r - r0) * nc + c - c0)];
        }
    }
  });
  std::vector<float> dS0(dF.size(), 0.0f);
  parallel_for(p.B, p.I * p.J, [&](int64_t b0, int64_t b1) {
    std::vector<float> suffix(size_t(p.J));
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(suffix.begin(), suffix.end(), 0.0f);  // Σ_{r' > r} dF_r'c, built from the last row up
      for (int64_t r = p.I - 1; r >= 0; --r) {
        const size_t row = size_t((b * p.I + r) * p.J);
        for (int64_t c = 0; c < p.J; ++c) {
          if (G[row + size_t(c)] > 0) dS0[row + size_t(c)] = suffix[size_t(c)];
          suffix[size_t(c)] += dF[row + size_t(c)];
        }
      }
    }
  });
  return dS0;
}

void check_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& o) {
  const char* op = "attention";
  LOOM_CHECK(q.defined() && k.defined() && v.defined(), op, ": q, k and v must be defined");
  LOOM_CHECK(q.dtype() == kFloat32 && k.dtype() == kFloat32 && v.dtype() == kFloat32, op,
             ": q, k and v must be float32");
  LOOM_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, op, ": q, k, v must be 4-D [b, h, n, d], got ", q.sizes(),
             ", ", k.sizes(), ", ", v.sizes());
  LOOM_CHECK(k.size(0) == q.size(0) && v.size(0) == q.size(0), op, ": batch sizes differ: q ", q.sizes(), ", k ",
             k.sizes(), ", v ", v.sizes());
  LOOM_CHECK(k.size(1) == v.size(1) && k.size(2) == v.size(2), op, ": k ", k.sizes(), " and v ", v.sizes(),
             " must have the same heads and length");
  LOOM_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, op, ": query heads (", q.size(1),
             ") must be a multiple of key/value heads (", k.size(1), ")");
  LOOM_CHECK(k.size(3) == q.size(3), op, ": q and k head dims differ: ", q.sizes(), " vs ", k.sizes());
  const Shape full = {q.size(0), q.size(1), q.size(2), k.size(2)};
  if (o.key_padding_mask.defined())
    LOOM_CHECK(o.key_padding_mask.dtype() == kBool && o.key_padding_mask.sizes() == Shape({q.size(0), k.size(2)}), op,
               ": key_padding_mask must be bool [b, j] = ", Shape({q.size(0), k.size(2)}), ", got ",
               dtype_name(o.key_padding_mask.dtype()), " ", o.key_padding_mask.sizes());
  if (o.attn_mask.defined()) {
    LOOM_CHECK(o.attn_mask.dtype() == kBool, op, ": attn_mask must be bool (True = attend), got ",
               dtype_name(o.attn_mask.dtype()));
    LOOM_CHECK(o.attn_mask.dim() <= 4 && broadcast_shapes(op, o.attn_mask.sizes(), full) == full, op, ": attn_mask of shape ",
               o.attn_mask.sizes(), " does not broadcast to [b, h, i, j] = ", full);
  }
  if (o.bias.defined()) {
    LOOM_CHECK(o.bias.dtype() == kFloat32, op, ": bias must be float32, got ", dtype_name(o.bias.dtype()));
    LOOM_CHECK(o.bias.dim() <= 4 && broadcast_shapes(op, o.bias.sizes(), full) == full, op, ": bias of shape ",
               o.bias.sizes(), " does not broadcast to [b, h, i, j] = ", full);
  }
  LOOM_CHECK(!o.selective || o.causal, op, ": selective attention needs causal = true (as in x-transformers)");
  const Shape keys = {q.size(0), k.size(2)};
  LOOM_CHECK(o.selective || !(o.selective_carry.defined() || o.selective_gated.defined() || o.selective_carry_out), op,
             ": selective_carry, selective_gated and selective_carry_out need selective = true");
  if (o.selective_carry.defined())
    LOOM_CHECK(o.selective_carry.dtype() == kFloat32 && o.selective_carry.sizes() == keys, op,
               ": selective_carry must be float32 [b, j] = ", keys, ", got ", dtype_name(o.selective_carry.dtype()), " ",
               o.selective_carry.sizes());
  if (o.selective_gated.defined())
    LOOM_CHECK(o.selective_gated.dtype() == kBool && o.selective_gated.sizes() == keys, op,
               ": selective_gated must be bool [b, j] = ", keys, ", got ", dtype_name(o.selective_gated.dtype()), " ",
               o.selective_gated.sizes());
  LOOM_CHECK(o.dropout >= 0 && o.dropout < 1, op, ": dropout must be in [0, 1), got ", o.dropout);
}

// The weights exp(S − lse), [B, H, I, J] (only when asked for: b·h·i·j floats).
void weights(const Problem& p, const float* lse, float* w) {
  const int64_t qblocks = (p.I + kBlock - 1) / kBlock;
  parallel_for(p.B * p.H * qblocks, kBlock * p.J * p.D, [&](int64_t u0, int64_t u1) {
    const kernels::Table& k = kernels::table();
    Tile t(p.bf16);
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b = u / (p.H * qblocks), h = u / qblocks % p.H, r0 = u % qblocks * kBlock;
      const int64_t r1 = std::min(p.I, r0 + kBlock);
      for (int64_t c0 = 0; c0 < p.J; c0 += kBlock) {
        const int64_t c1 = std::min(p.J, c0 + kBlock), nc = c1 - c0;
        logits_tile(p, t, b, h, r0, r1, c0, c1, true);
        for (int64_t r = r0; r < r1; ++r) {
          const float L = lse[(b * p.H + h) * p.I + r];
          float* wr = w + ((b * p.H + h) * p.I + r) * p.J + c0;
          k.softmax_minus(t.S.data() + (r - r0) * nc, L, 1.0f, 0.0f, wr, nc);
          if (std::isnan(L)) masked_to_zero(t.S.data() + (r - r0) * nc, wr, nc);
        }
      }
    }
  });
}

AttentionResult run_attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const AttentionOptions& o,
                              bool want_weights) {
  check_inputs(q_in, k_in, v_in, o);
  auto p = std::make_shared<Problem>();
  Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  p->B = q.size(0), p->H = q.size(1), p->I = q.size(2), p->D = q.size(3);
  p->G = k.size(1), p->J = k.size(2), p->Dv = v.size(3);
  p->scale = float(o.scale.value_or(1.0 / std::sqrt(double(p->D))));
  p->q = q.data_ptr<float>(), p->k = k.data_ptr<float>(), p->v = v.data_ptr<float>();
  p->JT = (p->J + 15) / 16 * 16 + 16;
  p->causal = o.causal;
  p->offset = p->J - p->I;
  const kernels::Table& kt = kernels::table();
  p->gemm = kt.gemm;
  Tensor kT, vT;  // tiles read Kᵀ, Vᵀ rows directly
  const bool backward_follows = any_requires_grad({q_in, k_in, v_in, o.bias});  // as record() decides
  if (autocast_enabled() && kt.gemm_bf16_pp && p->D > 0 && p->Dv > 0) {  // (empty heads: nothing to multiply)
    p->bf16 = true, p->gemm_bf16 = kt.gemm_bf16_pp;
    // The forward's operands, and when a backward will follow the
    // backward's too; each matrix is packed when a tile first reads it.
    p->kTp.prepare(p->k, p->B * p->G, p->J, p->D, Layout::PairsT);
    p->vp.prepare(p->v, p->B * p->G, p->J, p->Dv, Layout::Pairs);
    p->qa.prepare(p->q, p->B * p->H, p->I, p->D, Layout::Rows);
    if (backward_follows) {
      p->kp.prepare(p->k, p->B * p->G, p->J, p->D, Layout::Pairs);
      p->vTp.prepare(p->v, p->B * p->G, p->J, p->Dv, Layout::PairsT);
      p->qp.prepare(p->q, p->B * p->H, p->I, p->D, Layout::Pairs);
    }
    if (o.selective) kT = transpose_padded(k, p->JT);
  } else {
    kT = transpose_padded(k, p->JT);
    if (backward_follows) vT = transpose_padded(v, p->JT);  // only dP = dO Vᵀ reads it
  }
  if (kT.defined()) p->kT = kT.data_ptr<float>();
  if (vT.defined()) p->vT = vT.data_ptr<float>();
  {
    NoGradGuard no_grad;
    Tensor mask;  // the two boolean masks combined, at their broadcast shape (not [b, h, i, j])
    if (o.key_padding_mask.defined()) mask = o.key_padding_mask.view({p->B, 1, 1, p->J});
    if (o.attn_mask.defined()) mask = mask.defined() ? logical_and(mask, o.attn_mask) : o.attn_mask;
    if (mask.defined()) {
      p->mask_t = mask, p->mask = view4(mask), p->has_mask = true;
    }
    if (o.bias.defined()) p->bias_t = o.bias.detach(), p->bias = view4(p->bias_t), p->has_bias = true;
  }
  if (o.dropout > 0) {
    Generator& gen = o.generator ? *o.generator : default_generator();
    p->dropout = float(o.dropout);
    p->gen = Generator(gen.seed());
    p->first_block = gen.advance(uint64_t(p->B * p->H * p->I * p->J + 3) / 4);
  }
  Tensor gate, F, carry, gated;
  if (o.selective) {
    gate = empty({p->B, p->I, p->J}), F = empty({p->B, p->I, p->J});
    if (o.selective_carry.defined()) carry = o.selective_carry.detach().contiguous(), p->carry = carry.data_ptr<float>();
    if (o.selective_gated.defined()) gated = o.selective_gated.contiguous(), p->gated = gated.data_ptr<bool>();
    // With no query the carry passes through unchanged.
    Tensor carry_out = !o.selective_carry_out ? Tensor() : p->I == 0 && carry.defined() ? carry.clone() : zeros({p->B, p->J});
    selective_gate(*p, gate.data_ptr<float>(), F.data_ptr<float>(),
                   carry_out.defined() ? carry_out.data_ptr<float>() : nullptr);
    p->carry = nullptr, p->gated = nullptr;  // only the gate reads them; the backward needs F and G only
    if (o.selective_carry_out) *o.selective_carry_out = carry_out;
    p->F = F.data_ptr<float>();
  }
  Tensor out = empty({p->B, p->H, p->I, p->Dv}), lse = empty({p->B, p->H, p->I});
  forward(*p, out.data_ptr<float>(), lse.data_ptr<float>());

  AttentionResult result;
  result.out = out;
  if (want_weights) {
    result.weights = empty({p->B, p->H, p->I, p->J});
    weights(*p, lse.data_ptr<float>(), result.weights.data_ptr<float>());
  }
  Tensor bias_in = o.bias;
  Tensor saved_out = out.detach();
  record("attention", {q_in, k_in, v_in, bias_in}, result.out,
         [p, q, k, v, kT, vT, gate, F, lse, saved_out, bias_in](const Tensor& g_in) {
           Tensor dout = g_in.contiguous();
           Grad g;
           g.out = saved_out.data_ptr<float>(), g.lse = lse.data_ptr<float>(), g.dout = dout.data_ptr<float>();
           g.delta.resize(size_t(p->B * p->H * p->I));
           if (p->bf16) {
             g.dOp.prepare(g.dout, p->B * p->H, p->I, p->Dv, Layout::Pairs);
             g.dOa.prepare(g.dout, p->B * p->H, p->I, p->Dv, Layout::Rows);
           }
           const kernels::Table& kt = kernels::table();
           parallel_for(int64_t(g.delta.size()), 2 * p->Dv, [&](int64_t r0, int64_t r1) {
             for (int64_t r = r0; r < r1; ++r) g.delta[size_t(r)] = kt.dot16(g.dout + r * p->Dv, g.out + r * p->Dv, p->Dv);
           });
           std::vector<float> dS0;
           if (gate.defined()) {
             dS0 = selective_backward(*p, g, gate.data_ptr<float>());
             g.dS0 = dS0.data();
           }
           Tensor dq = empty({p->B, p->H, p->I, p->D}), dk = empty({p->B, p->G, p->J, p->D}),
                  dv = empty({p->B, p->G, p->J, p->Dv}), dbias;
           Shape dbias_shape;
           if (bias_in.defined() && bias_in.requires_grad()) {
             // [Bb, Hb, I, J]; the autograd engine sums it down to the bias's own shape.
             const int64_t lead = 4 - bias_in.dim();
             auto dim_of = [&](int64_t d) { return d < lead ? int64_t(1) : bias_in.size(d - lead); };
             dbias_shape = {dim_of(0) == 1 ? 1 : p->B, dim_of(1) == 1 ? 1 : p->H, p->I, p->J};
             dbias = empty(dbias_shape);  // every element is written once (dbias_tile)
           }
           float* db = dbias.defined() ? dbias.data_ptr<float>() : nullptr;
           const bool unshared_dbias = !db || (dbias_shape[0] == p->B && dbias_shape[1] == p->H);
           if (unshared_dbias && p->B * p->G >= 2 * int64_t(omp_get_max_threads())) {
             backward_fused(*p, g, dq.data_ptr<float>(), dk.data_ptr<float>(), dv.data_ptr<float>(), db);
           } else {
             backward_queries(*p, g, dq.data_ptr<float>(), db, dbias_shape);
             backward_keys(*p, g, dk.data_ptr<float>(), dv.data_ptr<float>());
           }
           return Grads{dq, dk, dv, dbias};
         });
  return result;
}

}  // namespace

AttentionResult attention_with_weights(const Tensor& q, const Tensor& k, const Tensor& v,
                                       const AttentionOptions& options) {
  return run_attention(q, k, v, options, true);
}

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& options) {
  return run_attention(q, k, v, options, false).out;
}

}  // namespace loom
