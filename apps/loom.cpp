// The loom command line:
//
//   loom train     --config C.json --data PATH --out DIR [--steps --batch-size --seq-len --lr ...]
//   loom generate  --checkpoint DIR --prompt TEXT [--max-tokens --temperature --top-k --top-p --min-p --selective-budget]
//   loom eval      --checkpoint DIR --data PATH
//   loom budgets   --checkpoint DIR --data PATH (--tolerance BITS | --max-bits BITS) [--seq-len --windows]
//   loom forward   --config C.json --weights W.safetensors --input in.npy --output out.npy [...]
//   loom forward   --config C.json --weights W.safetensors --src S.npy --tgt T.npy --output out.npy
//
// `loom COMMAND --help` explains each. Errors are one line on stderr and a
// non-zero exit code (2 for bad usage, 1 for everything else).
//
// Under mpirun, `loom train` trains data-parallel over the ranks
// (train/dist.h): rank 0 prints and writes the files; an error on any rank
// ends them all (dist::abort_all), so none is left waiting.
#include <loom/loom.h>
#include <loom/core/io.h>
#include <loom/core/parallel.h>
#include <loom/train/dist.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <vector>
#include <map>
#include <new>
#include <string>

namespace {

const char* kMainUsage =
    "usage: loom COMMAND [flags]\n"
    "\n"
    "  train     train a language model on text (byte tokens) from a JSON config\n"
    "  generate  continue a prompt with a trained checkpoint\n"
    "  eval      held-out loss and bits per character of a checkpoint\n"
    "  budgets   per-layer KV-cache budgets for selective attention's context pruning\n"
    "  forward   one forward pass from .npy inputs, for checking loom against other code\n"
    "\n"
    "Run `loom COMMAND --help` for a command's flags.\n";

const char* kTrainUsage =
    "usage: loom train --config C.json --data PATH --out DIR [flags]\n"
    "\n"
    "Trains the causal TransformerWrapper the config describes (num_tokens >= 256: bytes) on the\n"
    "text in PATH (a file, or every text file in a folder; the last 10% is held out). Writes\n"
    "DIR/checkpoint.safetensors (every --checkpoint-every steps, at the end, and on Ctrl-C or\n"
    "SIGTERM: exit code 130 or 143), DIR/metrics.jsonl and DIR/loss.svg. A step whose loss or\n"
    "gradient norm is inf or NaN stops the run (exit code 1) before it reaches the weights; a\n"
    "failed write stops it too. Either way the files written before are kept as they were.\n"
    "\n"
    "  --steps N             optimizer steps (default 1000)\n"
    "  --batch-size N        sequences per step (16)\n"
    "  --seq-len N           tokens per sequence (128)\n"
    "  --grad-accum N        micro-batches per step and rank, their gradients summed (1)\n"
    "  --lr X                peak learning rate, AdamW (1e-3)\n"
    "  --min-lr X            learning rate at the end of the cosine decay (1e-4)\n"
    "  --warmup N            linear warm-up steps (100)\n"
    "  --weight-decay X      AdamW decoupled weight decay, not on 1-D parameters (0.1)\n"
    "  --grad-clip X         clip the global gradient norm; 0 = off (1.0)\n"
    "  --eval-every N        held-out evaluation period (100)\n"
    "  --eval-batches N      held-out batches (of a step's sequences) per evaluation (16)\n"
    "  --checkpoint-every N  checkpoint period (200)\n"
    "  --log-every N         metrics period (10)\n"
    "  --seed N              seed for data order, dropout and the initial weights (0)\n"
    "  --resume              continue from DIR/checkpoint.safetensors (same config only)\n"
    "  --skip-nonfinite      skip a step with an inf or NaN loss or gradient norm (no update,\n"
    "                        logged) instead of stopping; 10 such steps in a row still stop\n"
    "  --precision P         fp32, or bf16: bfloat16 autocast (matmuls, linears and attention\n"
    "                        from bfloat16 inputs, float32 sums; weights, gradients, AdamW,\n"
    "                        norms and the loss in float32). Kept in the checkpoint: --resume\n"
    "                        without it continues in the run's precision (fp32)\n"
    "\n"
    "Under mpirun (`mpirun -np N loom train ...`) the N ranks train one model data-parallel:\n"
    "a step takes N x grad-accum x batch-size sequences, the same ones as one process with\n"
    "that batch; only rank 0 writes DIR. A checkpoint resumes with any N that keeps\n"
    "N x grad-accum x batch-size (and seq-len) as they were.\n";

const char* kGenerateUsage =
    "usage: loom generate --checkpoint DIR --prompt TEXT [flags]\n"
    "\n"
    "Prints the prompt and its continuation, sampled from the trained model.\n"
    "\n"
    "  --max-tokens N    bytes to generate (200)\n"
    "  --temperature X   0 = greedy (1.0)\n"
    "  --top-k N         keep the k most likely tokens; 0 = off (0)\n"
    "  --top-p X         nucleus sampling; 0 = off (0)\n"
    "  --min-p X         keep tokens with p >= X * max p; 0 = off (0)\n"
    "  --selective-budget K  selective attention's context pruning: keep at most K\n"
    "                    positions per layer in the KV cache, evicting the most\n"
    "                    masked; K1,K2,...,KL gives each self-attention layer its own\n"
    "                    (`loom budgets` chooses them); needs a model trained with\n"
    "                    selective attention; 0 = the whole context (0)\n"
    "  --seed N          sampling seed (0)\n"
    "  --precision P     fp32, or bf16: the forward under bfloat16 autocast (fp32)\n";

const char* kEvalUsage =
    "usage: loom eval --checkpoint DIR --data PATH [--seq-len N] [--windows N] [--precision P]\n"
    "\n"
    "Prints the mean next-byte loss and bits per character on the held-out 10% of PATH\n"
    "(the same split `loom train` uses), in fp32 or under bfloat16 autocast (bf16); fp32\n"
    "by default.\n";

const char* kBudgetsUsage =
    "usage: loom budgets --checkpoint DIR --data PATH (--tolerance BITS | --max-bits BITS) [flags]\n"
    "\n"
    "Chooses a KV-cache budget per self-attention layer for selective attention's context\n"
    "pruning, on windows of the held-out 10% of PATH decoded a byte a step as `loom generate`\n"
    "does: every layer starts at the whole window; then, layer by layer from the first, a\n"
    "binary search finds the smallest budget that keeps the bits per character within the\n"
    "target, the other layers at their budgets. Prints them as --selective-budget takes them,\n"
    "and the smallest single budget for all layers that meets the same target.\n"
    "\n"
    "  --tolerance BITS  bits per character allowed above the unpruned model\n"
    "  --max-bits BITS   an absolute target instead (e.g. a plain model's bits per character)\n"
    "  --seq-len N       window length (128)\n"
    "  --windows N       held-out windows searched (32)\n";

const char* kUsage =
    "usage: loom forward --config C.json --weights W.safetensors --input in.npy --output out.npy [inputs]\n"
    "       loom forward --config C.json --weights W.safetensors --src S.npy --tgt T.npy --output out.npy\n"
    "                    [--mask M.npy] [--attn-mask A.npy]                          (an XTransformer)\n"
    "\n"
    "Runs one forward pass of the model the config describes, in eval mode, with the weights\n"
    "loaded by name, and writes the output (logits, embeddings or class logits) as .npy.\n"
    "--weights is a safetensors file with x-transformers' parameter names, or a checkpoint of\n"
    "`loom train` (its file or its run folder; then --config may be left out).\n"
    "\n"
    "--input: int64 token ids (b, n) for a TransformerWrapper, float32 (b, n, dim_in) for a\n"
    "ContinuousTransformerWrapper, float32 images (b, c, h, w) for a ViTransformerWrapper. Optional\n"
    "inputs, all .npy, as x-transformers names them (bool masks: True = attend):\n"
    "  --mask M.npy          bool (b, n): real tokens (padding mask)\n"
    "  --context C.npy       float32 (b, j, dim_context) for cross-attention, --context-mask bool (b, j)\n"
    "  --attn-mask A.npy     bool (i, j), (h, i, j) or (b, h, i, j) for self-attention\n"
    "  --attn-bias B.npy     float32, added to the self-attention logits, broadcast to (b, h, i, j)\n"
    "  --pos P.npy           the wrapper's pos: int64 (n) or (b, n) positions of the absolute\n"
    "                        embedding, or (TransformerWrapper) a float32 (b, n, emb_dim) position\n"
    "                        embedding added in its place; never given to the layers\n"
    "  --layer-pos P.npy     positions for the layers' ALiBi / rotary (x-transformers'\n"
    "                        AttentionLayers.forward(pos=)): (n) or (b, n), per head (b, h, n) for ALiBi\n"
    "XTransformer: --src int64 (b, n), --tgt int64 (b, m), --mask bool (b, n) for src, --attn-mask for\n"
    "the encoder; the output is the decoder's logits (b, m, dec_num_tokens) for tgt given src.\n"
    "--precision fp32 (default) or bf16 runs the pass under bfloat16 autocast.\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// --key value pairs; `switches` take no value.
std::map<std::string, std::string> parse_flags(int argc, char** argv, int first, const std::vector<std::string>& known,
                                               const std::vector<std::string>& switches = {}) {
  std::map<std::string, std::string> flags;
  for (int i = first; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") throw UsageError("");
    if (a.rfind("--", 0) != 0) throw UsageError("unexpected argument '" + a + "'");
    const std::string key = a.substr(2);
    if (std::find(switches.begin(), switches.end(), key) != switches.end()) {
      flags[key] = "1";
      continue;
    }
    if (std::find(known.begin(), known.end(), key) == known.end()) throw UsageError("unknown flag '" + a + "'");
    if (i + 1 >= argc) throw UsageError("flag '" + a + "' needs a value");
    flags[key] = argv[++i];
  }
  return flags;
}

// Numeric flags with a clear message for a bad value.
int64_t int_flag(const std::map<std::string, std::string>& f, const std::string& key, int64_t def, int64_t min) {
  auto it = f.find(key);
  if (it == f.end()) return def;
  size_t used = 0;
  int64_t v = 0;
  try {
    v = std::stoll(it->second, &used);
  } catch (...) {
    used = 0;
  }
  if (used != it->second.size() || v < min)
    throw UsageError("--" + key + " must be an integer >= " + std::to_string(min) + ", got '" + it->second + "'");
  return v;
}

double num_flag(const std::map<std::string, std::string>& f, const std::string& key, double def, double min) {
  auto it = f.find(key);
  if (it == f.end()) return def;
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(it->second, &used);
  } catch (...) {
    used = 0;
  }
  if (used != it->second.size() || !std::isfinite(v) || !(v >= min))
    throw UsageError("--" + key + " must be a finite number >= " + (std::ostringstream() << min).str() + ", got '" +
                     it->second + "'");
  return v;
}

// --precision: fp32 (the default) or bf16.
loom::Precision precision_flag(const std::map<std::string, std::string>& f) {
  auto it = f.find("precision");
  if (it == f.end()) return loom::Precision::Float32;
  try {
    return loom::parse_precision(it->second, "--precision");
  } catch (const loom::Error& e) {
    throw UsageError(e.what());
  }
}

// `loom train` picks its thread count by timing steps unless OMP_NUM_THREADS
// fixes it (core/parallel.h, StepThreads); it then keeps spinning OpenMP waits.
bool train_adapts_threads() { return std::getenv("OMP_NUM_THREADS") == nullptr; }

int train(int argc, char** argv) {
  auto f = parse_flags(argc, argv, 2,
                       {"config", "data", "out", "steps", "batch-size", "seq-len", "grad-accum", "lr", "min-lr", "warmup",
                        "weight-decay", "grad-clip", "eval-every", "eval-batches", "checkpoint-every", "log-every", "seed",
                        "precision"},
                       {"resume", "skip-nonfinite"});
  for (const char* required : {"config", "data", "out"})
    if (!f.count(required)) throw UsageError(std::string("--") + required + " is required");
  loom::TrainConfig tc;
  tc.steps = int_flag(f, "steps", tc.steps, 1);
  tc.batch_size = int_flag(f, "batch-size", tc.batch_size, 1);
  tc.seq_len = int_flag(f, "seq-len", tc.seq_len, 1);
  tc.grad_accum = int_flag(f, "grad-accum", tc.grad_accum, 1);
  tc.lr = num_flag(f, "lr", tc.lr, 0);
  tc.min_lr = num_flag(f, "min-lr", tc.min_lr, 0);
  tc.warmup_steps = int_flag(f, "warmup", tc.warmup_steps, 0);
  tc.weight_decay = num_flag(f, "weight-decay", tc.weight_decay, 0);
  tc.grad_clip = num_flag(f, "grad-clip", tc.grad_clip, 0);
  tc.eval_every = int_flag(f, "eval-every", tc.eval_every, 1);
  tc.eval_batches = int_flag(f, "eval-batches", tc.eval_batches, 1);
  tc.checkpoint_every = int_flag(f, "checkpoint-every", tc.checkpoint_every, 1);
  tc.log_every = int_flag(f, "log-every", tc.log_every, 1);
  tc.seed = uint64_t(int_flag(f, "seed", 0, 0));
  tc.out_dir = f["out"];
  tc.skip_nonfinite = f.count("skip-nonfinite") > 0;
  if (f.count("precision")) tc.precision = precision_flag(f);
  const std::string config_text = loom::read_file(f["config"], "config");
  loom::manual_seed(tc.seed);  // the initial weights
  loom::LoadedModel model = loom::model_from_json(config_text, f["config"]);
  loom::TextCorpus corpus = loom::load_text_corpus(f["data"]);
  const bool main_rank = loom::dist::is_main();  // the one that prints
  if (main_rank)
    std::printf("model: %lld parameters; data: %zu files, %zu bytes train, %zu held out\n",
                static_cast<long long>(model.module().num_parameters()), corpus.files.size(), corpus.train.size(),
                corpus.val.size());
  tc.adapt_threads = train_adapts_threads();
  loom::TrainResult r = loom::train_language_model(model, config_text, corpus, tc, f.count("resume") > 0);
  if (main_rank)
    std::printf("done: step %lld, held-out loss %.4f (%.3f bits per character); %.1f ms per step (%s), %.0f tokens/s "
                "(%d threads%s), peak tensor memory %.1f MB; checkpoint in %s\n",
                static_cast<long long>(r.step), r.val_loss, r.val_loss / std::log(2.0), 1000 * r.seconds_per_step,
                loom::precision_name(r.precision),
                r.seconds_per_step > 0
                    ? double(loom::dist::world_size() * tc.grad_accum * tc.batch_size * tc.seq_len) / r.seconds_per_step
                    : 0.0,
                r.threads, r.thread_switches > 0 ? ", chosen by timing steps" : "",
                double(r.peak_memory_bytes) / 1e6, tc.out_dir.c_str());
  return r.interrupted ? 128 + r.signal : 0;  // 130 for SIGINT, 143 for SIGTERM, as the shell reports
}

// --selective-budget: K for every self-attention layer, or K1,K2,...,KL one
// per layer (integers >= 0, 0 = the whole context); absent: no pruning.
std::vector<int64_t> budgets_flag(const std::map<std::string, std::string>& f, const loom::TransformerWrapper& net) {
  auto it = f.find("selective-budget");
  if (it == f.end()) return {};
  std::vector<int64_t> budgets;
  std::stringstream items(it->second);
  for (std::string item; std::getline(items, item, ',');)
    budgets.push_back(int_flag({{"selective-budget", item}}, "selective-budget", 0, 0));
  if (it->second.empty() || it->second.back() == ',')
    throw UsageError("--selective-budget must be an integer >= 0 or a list K1,...,KL of them, got '" + it->second + "'");
  const int64_t depth = net.attn_layers->self_attention_layers();
  if (budgets.size() != 1 && int64_t(budgets.size()) != depth)
    throw UsageError("--selective-budget needs 1 value or " + std::to_string(depth) + " (one per self-attention layer), got " +
                     std::to_string(budgets.size()) + ": '" + it->second + "'");
  if (std::any_of(budgets.begin(), budgets.end(), [](int64_t k) { return k > 0; }) &&
      !net.attn_layers->config.attn.selective)
    throw UsageError("--selective-budget needs a checkpoint trained with selective attention");
  return budgets;
}

int generate(int argc, char** argv) {
  auto f = parse_flags(argc, argv, 2, {"checkpoint", "prompt", "max-tokens", "temperature", "top-k", "top-p", "min-p",
                                      "seed", "precision", "selective-budget"});
  for (const char* required : {"checkpoint", "prompt"})
    if (!f.count(required)) throw UsageError(std::string("--") + required + " is required");
  if (f["prompt"].empty()) throw UsageError("--prompt must not be empty");
  const loom::Precision precision = precision_flag(f);
  loom::Checkpoint ck = loom::load_checkpoint(f["checkpoint"]);
  if (!ck.model.transformer) throw std::runtime_error("the checkpoint's model is not a TransformerWrapper");
  loom::GenerateOptions o;
  o.temperature = num_flag(f, "temperature", 1.0, 0);
  o.top_k = int_flag(f, "top-k", 0, 0);
  o.top_p = num_flag(f, "top-p", 0, 0);
  o.min_p = num_flag(f, "min-p", 0, 0);
  if (o.top_p > 1 || o.min_p > 1) throw UsageError("--top-p and --min-p must be at most 1");
  o.selective_budgets = budgets_flag(f, *ck.model.transformer);
  const int64_t n = int_flag(f, "max-tokens", 200, 0);
  std::vector<int64_t> ids(f["prompt"].begin(), f["prompt"].end());
  for (int64_t& id : ids) id = int64_t(uint8_t(id));
  loom::Generator gen(uint64_t(int_flag(f, "seed", 0, 0)));
  loom::AutoregressiveWrapper ar(ck.model.transformer);
  loom::AutocastGuard autocast(precision);  // one region: the weights are rounded to bfloat16 once
  loom::Tensor out = ar.generate(loom::from_vector(ids, {1, int64_t(ids.size())}), n, o, gen);
  std::string text = f["prompt"];
  for (int64_t id : out.to_vector<int64_t>()) text += char(uint8_t(id));
  std::printf("%s\n", text.c_str());
  return 0;
}

int evaluate(int argc, char** argv) {
  auto f = parse_flags(argc, argv, 2, {"checkpoint", "data", "seq-len", "windows", "precision"});
  for (const char* required : {"checkpoint", "data"})
    if (!f.count(required)) throw UsageError(std::string("--") + required + " is required");
  loom::Checkpoint ck = loom::load_checkpoint(f["checkpoint"]);
  const loom::Precision precision = precision_flag(f);
  loom::TextCorpus corpus = loom::load_text_corpus(f["data"]);
  const int64_t seq_len = int_flag(f, "seq-len", 128, 1), windows = int_flag(f, "windows", 256, 1);
  double loss = 0;
  {
    loom::AutocastGuard autocast(precision);
    loss = loom::evaluate_language_model(ck.model, corpus.val, seq_len, windows);
  }
  std::printf("held-out loss %.4f nats, %.4f bits per character (step %lld, %s)\n", loss, loss / std::log(2.0),
              static_cast<long long>(ck.step), loom::precision_name(precision));
  return 0;
}

int budgets(int argc, char** argv) {
  auto f = parse_flags(argc, argv, 2, {"checkpoint", "data", "tolerance", "max-bits", "seq-len", "windows"});
  for (const char* required : {"checkpoint", "data"})
    if (!f.count(required)) throw UsageError(std::string("--") + required + " is required");
  if (f.count("tolerance") == f.count("max-bits")) throw UsageError("give one of --tolerance and --max-bits");
  loom::Checkpoint ck = loom::load_checkpoint(f["checkpoint"]);
  if (!ck.model.transformer || !ck.model.transformer->attn_layers->config.attn.selective)
    throw UsageError("--checkpoint needs a TransformerWrapper trained with selective attention");
  loom::TransformerWrapper& net = *ck.model.transformer;
  const int64_t seq_len = int_flag(f, "seq-len", 128, 1), windows = int_flag(f, "windows", 32, 1);
  loom::Tensor held_out = loom::contiguous_windows(loom::load_text_corpus(f["data"]).val, seq_len + 1, windows);
  const double ln2 = std::log(2.0);
  const auto start = std::chrono::steady_clock::now();
  const loom::PrunedEvaluation whole = loom::evaluate_pruned(net, held_out, {});
  const double max_bits = f.count("max-bits") ? num_flag(f, "max-bits", 0, 0) : whole.loss / ln2 + num_flag(f, "tolerance", 0, 0);
  if (max_bits < whole.loss / ln2)
    throw std::runtime_error("the unpruned model's " + std::to_string(whole.loss / ln2) + " bits per character are above --max-bits");
  std::printf("unpruned: %.4f bits per character, peak KV cache %.1f KiB per sequence (%lld windows of %lld bytes)\n",
              whole.loss / ln2, whole.peak_bytes / 1024, static_cast<long long>(held_out.size(0)),
              static_cast<long long>(seq_len));
  for (bool per_layer : {true, false}) {
    const loom::BudgetChoice c = loom::choose_selective_budgets(net, held_out, max_bits * ln2, per_layer);
    std::string list;
    for (int64_t k : c.budgets) list += (list.empty() ? "" : ",") + std::to_string(k);
    if (!per_layer) list = std::to_string(c.budgets[0]);
    std::printf("%s --selective-budget %s: %.4f bits per character, peak KV cache %.1f KiB (%.3fx), %lld evaluations\n",
                per_layer ? "per layer:  " : "one for all:", list.c_str(), c.evaluation.loss / ln2,
                c.evaluation.peak_bytes / 1024, c.evaluation.peak_bytes / whole.peak_bytes,
                static_cast<long long>(c.evaluations));
    std::fflush(stdout);
  }
  std::printf("target %.4f bits per character; search %.1f s\n", max_bits,
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return 0;
}

// The weights for `loom forward`: a safetensors file of the model's
// state_dict (x-transformers' names), or a checkpoint written by `loom train`
// (a file or its run folder), whose model.* tensors are the model's and whose
// metadata holds the config.
struct Weights {
  loom::NamedTensorList tensors;
  std::string config_text;  // from a training checkpoint; empty otherwise
};

Weights read_weights(const std::string& path_in) {
  const bool folder = std::filesystem::is_directory(path_in);
  const std::string path = folder ? path_in + "/checkpoint.safetensors" : path_in;
  loom::SafetensorsFile f = loom::load_safetensors(path);
  Weights w;
  if (!(f.metadata.count("config") && f.metadata.count("step"))) {  // not a training checkpoint
    if (folder) throw std::runtime_error("'" + path_in + "' is a folder but not a loom train run");
    w.tensors = std::move(f.tensors);
    return w;
  }
  w.config_text = f.metadata.at("config");
  for (auto& [name, t] : f.tensors)  // model.* are the weights, optim.* the optimizer state
    if (name.rfind("model.", 0) == 0) w.tensors.emplace_back(name.substr(6), t);
  return w;
}

int forward(int argc, char** argv) {
  auto flags = parse_flags(argc, argv, 2,
                           {"config", "weights", "input", "output", "mask", "context", "context-mask", "attn-mask",
                            "attn-bias", "pos", "layer-pos", "src", "tgt", "precision"});
  for (const char* required : {"weights", "output"})
    if (!flags.count(required)) throw UsageError(std::string("--") + required + " is required");
  const loom::Precision precision = precision_flag(flags);
  Weights weights = read_weights(flags["weights"]);
  if (!flags.count("config") && weights.config_text.empty())
    throw UsageError("--config is required (only a loom train checkpoint carries its own)");
  loom::LoadedModel model = flags.count("config") ? loom::model_from_config_file(flags["config"])
                                                  : loom::model_from_json(weights.config_text, flags["weights"] + " (config)");
  model.module().load_state_dict(weights.tensors);
  model.module().eval();
  auto optional = [&](const char* key) { return flags.count(key) ? loom::read_npy(flags[key]) : loom::Tensor(); };
  // The flags a model does not take are usage errors, not silently dropped.
  auto only = [&](const std::vector<std::string>& allowed, const std::string& what) {
    for (const auto& [key, value] : flags)
      if (key != "config" && key != "weights" && key != "output" && key != "precision" &&
          std::find(allowed.begin(), allowed.end(), key) == allowed.end())
        throw UsageError(what + " does not take --" + key);
  };
  loom::NoGradGuard no_grad;
  loom::AutocastGuard autocast(precision);
  loom::Tensor out;
  if (model.xtransformer) {
    // x-transformers' XTransformer(src, tgt, mask, attn_mask), as logits:
    // decoder.net(tgt, context = encoder(src, mask, attn_mask), context_mask = mask).
    only({"src", "tgt", "mask", "attn-mask"}, "an XTransformer (--src, --tgt)");
    if (!flags.count("src") || !flags.count("tgt")) throw UsageError("an XTransformer needs --src and --tgt");
    out = model.xtransformer->forward(loom::read_npy(flags["src"]), loom::read_npy(flags["tgt"]), optional("mask"),
                                      optional("attn-mask"));
  } else {
    if (!flags.count("input")) throw UsageError("--input is required");
    const loom::Tensor input = loom::read_npy(flags["input"]);
    if (model.transformer) {
      only({"input", "mask", "context", "context-mask", "attn-mask", "attn-bias", "pos", "layer-pos"},
           "a TransformerWrapper");
      loom::WrapperInputs in;
      in.mask = optional("mask"), in.context = optional("context"), in.context_mask = optional("context-mask");
      in.attn_mask = optional("attn-mask"), in.attn_bias = optional("attn-bias");
      in.pos = optional("pos"), in.layer_pos = optional("layer-pos");
      out = model.transformer->forward(input, in);
    } else if (model.continuous) {
      only({"input", "mask", "context", "context-mask", "attn-mask", "attn-bias", "pos", "layer-pos"},
           "a ContinuousTransformerWrapper");
      loom::ContinuousInputs in;
      in.mask = optional("mask"), in.context = optional("context"), in.context_mask = optional("context-mask");
      in.attn_mask = optional("attn-mask"), in.attn_bias = optional("attn-bias");
      in.pos = optional("pos"), in.layer_pos = optional("layer-pos");
      out = model.continuous->forward(input, in);
    } else {
      only({"input"}, "a ViTransformerWrapper (images only)");
      out = model.vit->forward(input);
    }
  }
  loom::write_npy(flags["output"], out);
  return 0;
}

// An error: one line on stderr, exit code 1. With several ranks the line
// names the rank, and the whole job ends: the other ranks may be waiting for
// this one in a collective.
int failed(const std::string& command, const char* what) {
  if (loom::dist::world_size() == 1) {
    std::fprintf(stderr, "loom %s: %s\n", command.c_str(), what);
    return 1;
  }
  std::fprintf(stderr, "loom %s (rank %d of %d): %s\n", command.c_str(), loom::dist::rank(), loom::dist::world_size(),
               what);
  std::fflush(stderr);
  loom::dist::abort_all(1);
}

}  // namespace

int main(int argc, char** argv) {
  // Robust on a busy machine (core/parallel.h): passive OpenMP waits, except
  // for a `loom train` that picks its thread count by timing its steps.
  if (!(argc > 1 && std::string(argv[1]) == "train" && train_adapts_threads())) loom::openmp_wait_defaults(argv);
  loom::dist::init(argc, argv);  // MPI when started by mpirun; else a world of one
  const std::string command = argc > 1 ? argv[1] : "";
  const char* usage = command == "train"      ? kTrainUsage
                      : command == "generate" ? kGenerateUsage
                      : command == "eval"     ? kEvalUsage
                      : command == "budgets"  ? kBudgetsUsage
                      : command == "forward"  ? kUsage
                                              : kMainUsage;
  try {
    if (command == "train") return train(argc, argv);
    if (command == "generate") return generate(argc, argv);
    if (command == "eval") return evaluate(argc, argv);
    if (command == "budgets") return budgets(argc, argv);
    if (command == "forward") return forward(argc, argv);
    if (command == "--help" || command == "-h" || command == "help") {
      std::fputs(kMainUsage, stdout);
      return 0;
    }
    std::fprintf(stderr, "loom: %s (try 'loom --help')\n",
                 command.empty() ? "missing command" : ("unknown command '" + command + "'").c_str());
    return 2;
  } catch (const UsageError& e) {  // the same on every rank (the same flags): rank 0 says it
    if (!loom::dist::is_main()) return std::string(e.what()).empty() ? 0 : 2;
    if (std::string(e.what()).empty()) {
      std::fputs(usage, stdout);
      return 0;
    }
    std::fprintf(stderr, "loom %s: %s (try 'loom %s --help')\n", command.c_str(), e.what(), command.c_str());
    return 2;
  } catch (const std::bad_alloc&) {  // loom's tensors say how much they wanted; this is anything else
    return failed(command, "out of memory");
  } catch (const std::exception& e) {
    return failed(command, e.what());
  }
}
