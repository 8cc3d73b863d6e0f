// The training loop for language models (train/trainer.cpp): AdamW with
// warm-up and cosine decay, gradient clipping and accumulation, a progress
// bar (plain log lines when stdout is not a terminal), periodic evaluation,
// a metrics log (metrics.jsonl), a loss plot drawn by loom (loss.svg), and
// checkpoints written atomically every N steps, at the end and on Ctrl-C or
// SIGTERM. A resumed run continues with exactly the losses of an
// uninterrupted one. A non-finite loss or gradient norm stops the run
// before it reaches the weights (or, with skip_nonfinite, skips that step);
// a failed write stops it with errno's reason. Either way every file
// written before is left as it was.
//
// Under mpirun (train/dist.h; call dist::init first) every rank calls
// train_language_model with the same arguments and they train one model
// data-parallel: a step's global batch is ranks x grad_accum x batch_size
// sequences, the very ones one process with that batch would draw; each
// rank runs its grad_accum micro-batches of batch_size, the gradients are
// averaged over the ranks (during the last backward) before clipping and
// the step. Rank 0 alone prints and writes out_dir; the ranks agree on
// stopping (a signal to any of them, a non-finite loss, a failed write), so
// none waits for another. Without dropout the losses match one process's
// to rounding (with dropout each rank draws its own masks).
#pragma once

#include <optional>
#include <string>

#include <loom/core/autocast.h>
#include <loom/models/config.h>
#include <loom/train/data.h>

namespace loom {

struct TrainConfig {
  int64_t steps = 1000;
  int64_t batch_size = 16;
  int64_t seq_len = 128;
  int64_t grad_accum = 1;  // micro-batches of batch_size per step (and rank), their gradients summed
  double lr = 1e-3;
  double min_lr = 1e-4;
  int64_t warmup_steps = 100;
  double weight_decay = 0.1;
  double grad_clip = 1.0;  // 0 = off
  int64_t eval_every = 100;
  int64_t eval_batches = 16;  // held-out batches of the global batch's size per evaluation
  int64_t checkpoint_every = 200;
  int64_t log_every = 10;
  uint64_t seed = 0;
  std::string out_dir = "runs/loom";
  int64_t stop_after = 0;  // stop (with a checkpoint) after this many steps of this run; 0 = run to `steps`
  bool quiet = false;      // no progress output (tests)
  // A step whose loss or gradient norm is inf or NaN: false stops the run
  // with an error; true skips the step (no update; logged as
  // {"step": N, "skipped": "..."}), and stops only after 10 in a row.
  bool skip_nonfinite = false;
  // Float32, or BFloat16: forward, backward and evaluations under an
  // AutocastGuard (core/autocast.h); weights, gradients and AdamW stay
  // float32. Stored in the checkpoint: unset, a resumed run keeps the
  // checkpoint's and a new run is Float32; set, a resume must match it.
  std::optional<Precision> precision;
  // Choose the OpenMP thread count by timing steps (core/parallel.h,
  // StepThreads): all threads on an idle machine, fewer when another process
  // holds cores. Off, every step runs at omp_get_max_threads(). Single-rank
  // runs only; `loom train` turns it on when OMP_NUM_THREADS is not set.
  bool adapt_threads = false;
};

struct TrainResult {
  int64_t step = 0;  // steps done in all
  double train_loss = 0, val_loss = 0;
  bool interrupted = false;
  int signal = 0;                    // SIGINT or SIGTERM when interrupted
  int threads = 0;                   // OpenMP threads the steps ran at (at the end, with adapt_threads)
  int64_t thread_switches = 0;       // with adapt_threads: times the count changed
  int64_t skipped_steps = 0;         // with skip_nonfinite: steps not applied
  double seconds_per_step = 0;       // wall time of this run's steps (evaluations excluded)
  int64_t peak_memory_bytes = 0;     // largest tensor memory in use during this run
  Precision precision = Precision::Float32;  // what the run computed in
};

// Trains model (a causal TransformerWrapper over byte tokens) on the corpus.
// config_text is the model's JSON config, stored in the checkpoint. With
// resume, continues from out_dir/checkpoint.safetensors, which must have
// been written with the same config, seq_len and global batch (any number
// of ranks: fewer ranks make it up with a larger grad_accum).
TrainResult train_language_model(const LoadedModel& model, const std::string& config_text, const TextCorpus& corpus,
                                 const TrainConfig& config, bool resume = false);

// Mean next-byte loss (nats) over the first `windows` windows of `data`;
// bits per character = loss / ln 2. In the caller's precision (an
// AutocastGuard around it evaluates in bfloat16).
double evaluate_language_model(const LoadedModel& model, const std::vector<uint8_t>& data, int64_t seq_len,
                               int64_t windows);

// A checkpoint: the model's JSON config and weights, and the training state.
// A file that is not a complete loom checkpoint (missing or malformed
// metadata such as a step "-5") throws loom::Error naming the key.
struct Checkpoint {
  std::string config_text;
  LoadedModel model;
  int64_t step = 0;
  Precision precision = Precision::Float32;  // the run's (metadata "precision"; older checkpoints: fp32)
};
Checkpoint load_checkpoint(const std::string& path);

}  // namespace loom
