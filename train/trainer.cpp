#include <loom/train/trainer.h>

#include <dlfcn.h>
#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <omp.h>
#include <optional>
#include <sstream>
#include <thread>
#include <tuple>

#include <loom/core/autograd.h>
#include <loom/core/error.h>
#include <loom/core/io.h>
#include <loom/core/parallel.h>
#include <loom/core/json.h>
#include <loom/core/safetensors.h>
#include <loom/core/storage.h>
#include <loom/models/autoregressive.h>
#include <loom/ops/ops.h>
#include <loom/train/dist.h>
#include <loom/train/optim.h>

namespace loom {

namespace {

// The signal that asked the run to stop (SIGINT: Ctrl-C; SIGTERM: kill,
// systemd, batch schedulers), 0 while none has.
std::atomic<int> interrupted{0};
void on_signal(int signum) { interrupted = signum; }

// Calls f(arg) on each thread of the OpenMP pool, and of oneDNN's libgomp
// pool when that is another runtime (a clang++ build links LLVM's libomp).
void on_every_openmp_thread(void (*f)(void*), void* arg) {
#pragma omp parallel num_threads(omp_get_max_threads())
  f(arg);
  if (void* gomp = dlopen("libgomp.so.1", RTLD_NOW | RTLD_NOLOAD)) {
    using GompParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
    auto parallel = reinterpret_cast<GompParallel>(dlsym(gomp, "GOMP_parallel"));
    auto max_threads = reinterpret_cast<int (*)()>(dlsym(gomp, "omp_get_max_threads"));
    if (parallel && max_threads && max_threads != &omp_get_max_threads) parallel(f, arg, 0, 0);
    dlclose(gomp);
  }
}

// While alive, SIGINT and SIGTERM stop the run at the end of the current
// step; the previous handlers come back however the run ends.
//
// The signals are blocked in this thread and in every OpenMP thread, and a
// thread of our own takes them with sigtimedwait: none is ever delivered to
// a thread inside a oneDNN kernel. oneDNN's JIT sgemm kernels (up to 3.11,
// uxlfoundation/oneDNN#4845) point rsp into a heap workspace while they run,
// and a signal delivered then writes its frame (~3 KB with AVX-512 state)
// below it, over other heap blocks: with a handler on every thread, 1-3 % of
// Ctrl-Cs corrupted the heap. The handler stays as a fallback for threads
// that are none of these.
struct StopSignals {
  using Handler = void (*)(int);
  Handler previous_int, previous_term;
  sigset_t set, previous_mask;
  std::atomic<bool> done{false};
  std::thread waiter;
  static void block(void* set) { pthread_sigmask(SIG_BLOCK, static_cast<sigset_t*>(set), nullptr); }
  static void unblock(void* set) { pthread_sigmask(SIG_UNBLOCK, static_cast<sigset_t*>(set), nullptr); }
  StopSignals() {
    interrupted = 0;
    previous_int = std::signal(SIGINT, on_signal);
    previous_term = std::signal(SIGTERM, on_signal);
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, &previous_mask);
    on_every_openmp_thread(block, &set);
    waiter = std::thread([this] {  // inherits the blocked signals, as sigtimedwait needs
      pthread_setname_np(pthread_self(), "loom-signals");
      const timespec tick{0, 20'000'000};
      while (!done) {
        const int signum = sigtimedwait(&set, nullptr, &tick);
        if (signum > 0) interrupted = signum;
      }
    });
  }
  ~StopSignals() {
    done = true;
    waiter.join();
    on_every_openmp_thread(unblock, &set);
    pthread_sigmask(SIG_SETMASK, &previous_mask, nullptr);  // a signal that came meanwhile is handled now
    std::signal(SIGINT, previous_int);
    std::signal(SIGTERM, previous_term);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
};

using Clock = std::chrono::steady_clock;

std::string format_eta(double seconds) {
  const int64_t s = int64_t(seconds);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%lld:%02lld", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  return buf;
}

struct Point {
  int64_t step;
  double value;
};

// The loss curves as an SVG line chart: train (blue) and held-out (orange).
void write_loss_svg(const std::string& path, const std::vector<Point>& train, const std::vector<Point>& val,
                    int64_t total_steps) {
  const double W = 640, H = 360, L = 60, R = 20, T = 20, B = 40;
  double lo = INFINITY, hi = -INFINITY;
  for (const auto* series : {&train, &val})
    for (const Point& p : *series) lo = std::min(lo, p.value), hi = std::max(hi, p.value);
  if (!std::isfinite(lo) || !std::isfinite(hi)) lo = 0, hi = 1;  // no points yet
  if (!(hi > lo)) hi = lo + 1;
  auto x = [&](double step) { return L + (W - L - R) * step / double(std::max<int64_t>(1, total_steps)); };
  auto y = [&](double v) { return T + (H - T - B) * (hi - v) / (hi - lo); };
  std::ostringstream s;
  s << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H << "' font-family='sans-serif' font-size='12'>\n"
    << "<rect width='100%' height='100%' fill='white'/>\n";
  for (int k = 0; k <= 4; ++k) {  // horizontal grid with loss labels
    const double v = lo + (hi - lo) * k / 4;
    s << "<line x1='" << L << "' x2='" << W - R << "' y1='" << y(v) << "' y2='" << y(v) << "' stroke='#ddd'/>"
      << "<text x='" << L - 6 << "' y='" << y(v) + 4 << "' text-anchor='end'>" << std::round(v * 1000) / 1000 << "</text>\n";
  }
  s << "<text x='" << (W + L) / 2 << "' y='" << H - 8 << "' text-anchor='middle'>step (of " << total_steps << ")</text>\n"
    << "<text x='14' y='" << H / 2 << "' transform='rotate(-90 14 " << H / 2 << ")' text-anchor='middle'>loss (nats)</text>\n";
  auto line = [&](const std::vector<Point>& pts, const char* colour) {
    if (pts.empty()) return;
    s << "<polyline fill='none' stroke='" << colour << "' stroke-width='2' points='";
    for (const Point& p : pts) s << x(double(p.step)) << ',' << y(p.value) << ' ';
    s << "'/>\n";
  };
  line(train, "#1f77b4");
  line(val, "#ff7f0e");
  s << "<text x='" << W - R - 150 << "' y='" << T + 14 << "' fill='#1f77b4'>train</text>"
    << "<text x='" << W - R - 90 << "' y='" << T + 14 << "' fill='#ff7f0e'>held-out</text>\n</svg>\n";
  write_file_atomic(path, s.str(), "train");  // a full disk leaves the previous plot, not an empty file
}

}  // namespace

namespace {

// The summed loss and the count of the windows in chunks first_chunk,
// first_chunk + stride, ... of 16 windows (one forward each), so that ranks
// can share an evaluation.
std::pair<double, double> evaluation_sum(const LoadedModel& model, const std::vector<uint8_t>& data, int64_t seq_len,
                                         int64_t windows, int64_t first_chunk, int64_t stride) {
  NoGradGuard no_grad;
  const bool was_training = model.module().is_training();
  model.module().eval();
  AutoregressiveWrapper ar(model.transformer);
  Tensor all = contiguous_windows(data, seq_len + 1, windows);
  double total = 0;
  int64_t count = 0;
  for (int64_t first = 16 * first_chunk; first < all.size(0); first += 16 * stride) {
    const int64_t n = std::min<int64_t>(16, all.size(0) - first);
    total += double(ar.loss(all.narrow(0, first, n)).item<float>()) * double(n);
    count += n;
  }
  model.module().train(was_training);
  return {total, double(count)};
}

}  // namespace

double evaluate_language_model(const LoadedModel& model, const std::vector<uint8_t>& data, int64_t seq_len,
                               int64_t windows) {
  const auto [total, count] = evaluation_sum(model, data, seq_len, windows, 0, 1);
  return total / count;
}


namespace {

// A loom checkpoint as stored: the safetensors file split into its parts,
// with every metadata value checked.
struct CheckpointFile {
  std::string path, config_text;
  int64_t step = 0;
  uint64_t data_seed = 0, data_offset = 0, rng_seed = 0, rng_offset = 0;
  Precision precision = Precision::Float32;
  int64_t global_batch = 0, seq_len = 0;  // sequences and tokens per step; 0: not recorded (an older loom)
  NamedTensorList model, optim;
};

// `f` is the file at `path`, read.
CheckpointFile read_checkpoint(SafetensorsFile f, const std::string& path) {
  auto text = [&](const std::string& key) -> const std::string& {
    auto it = f.metadata.find(key);
    LOOM_CHECK(it != f.metadata.end(), "load_checkpoint: '", path, "' has no '", key,
               "' in its metadata (not a complete loom training checkpoint)");
    return it->second;
  };
  auto number = [&](const std::string& key, uint64_t max) {
    const std::string& s = text(key);
    uint64_t v = 0;
    const auto [end, err] = std::from_chars(s.data(), s.data() + s.size(), v);
    LOOM_CHECK(!s.empty() && err == std::errc() && end == s.data() + s.size() && v <= max, "load_checkpoint: '", path,
               "': metadata '", key, "' must be an integer in [0, ", max, "], got \"", s, "\"");
    return v;
  };
  LOOM_CHECK(text("format") == "loom-checkpoint-1", "load_checkpoint: '", path, "' has format \"", text("format"),
             "\"; this loom reads \"loom-checkpoint-1\"");
  CheckpointFile c;
  c.path = path;
  c.config_text = text("config");
  c.step = int64_t(number("step", uint64_t(INT64_MAX)));
  c.data_seed = number("data_seed", UINT64_MAX), c.data_offset = number("data_offset", UINT64_MAX);
  c.rng_seed = number("rng_seed", UINT64_MAX), c.rng_offset = number("rng_offset", UINT64_MAX);
  if (f.metadata.count("precision"))  // absent in checkpoints from before bfloat16: those ran in float32
    c.precision = parse_precision(text("precision"), "load_checkpoint: '" + path + "': metadata 'precision'");
  for (auto [key, value] : {std::pair{"global_batch", &c.global_batch}, {"seq_len", &c.seq_len}})
    if (f.metadata.count(key)) *value = int64_t(number(key, uint64_t(INT64_MAX)));
  for (auto& [name, t] : f.tensors) {
    if (name.rfind("model.", 0) == 0) c.model.emplace_back(name.substr(6), t);
    else if (name.rfind("optim.", 0) == 0) c.optim.emplace_back(name.substr(6), t);
    else fail("load_checkpoint: '", path, "': tensor '", name, "' is neither model.* nor optim.*");
  }
  return c;
}

// Where two JSON values first differ ("attn_layers.depth: 1 in the
// checkpoint, 2 given"), or "" when they are equal. Keys are compared in
// sorted order, so formatting and key order do not count.
std::string first_difference(const nlohmann::json& a, const nlohmann::json& b, const std::string& path) {
  auto where = [&](const std::string& key) { return path.empty() ? key : path + "." + key; };
  std::ostringstream d;
  if (a.is_object() && b.is_object()) {
    auto i = a.begin(), j = b.begin();
    while (i != a.end() || j != b.end()) {
      if (j == b.end() || (i != a.end() && i.key() < j.key())) {
        d << "'" << where(i.key()) << "' is " << i.value().dump() << " in the checkpoint's config and absent from this one";
        return d.str();
      }
      if (i == a.end() || j.key() < i.key()) {
        d << "'" << where(j.key()) << "' is " << j.value().dump() << " in this config and absent from the checkpoint's";
        return d.str();
      }
      if (std::string inner = first_difference(i.value(), j.value(), where(i.key())); !inner.empty()) return inner;
      ++i, ++j;
    }
    return "";
  }
  if (a == b) return "";
  d << "'" << (path.empty() ? "the config" : path) << "' is " << a.dump() << " in the checkpoint's config, " << b.dump()
    << " in this one";
  return d.str();
}

// The name of the first float32 tensor holding inf or NaN, or "".
std::string first_nonfinite(const NamedTensorList& tensors) {
  for (const auto& [name, t] : tensors) {
    if (t.dtype() != kFloat32) continue;
    Tensor c = t.detach().contiguous();
    const float* x = c.data_ptr<float>();
    for (int64_t e = 0; e < c.numel(); ++e)
      if (!std::isfinite(x[e])) return name;
  }
  return "";
}

// Keeps the lines of metrics.jsonl up to `step` (a resumed run redoes the
// later ones) and returns the curves they hold; rewrites the file, atomically,
// only when it drops something.
void resume_metrics(const std::string& path, int64_t step, std::vector<Point>& train, std::vector<Point>& val) {
  if (!std::filesystem::exists(path)) return write_file_atomic(path, "", "train");
  const std::string all = read_file(path, "train");
  std::istringstream in(all);
  std::string line, kept;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("step") || !j["step"].is_number_integer() ||
        j["step"].get<int64_t>() > step)
      continue;
    kept += line + "\n";
    const int64_t s = j["step"].get<int64_t>();
    if (j.contains("loss") && j["loss"].is_number()) train.push_back({s, j["loss"].get<double>()});
    if (j.contains("val_loss") && j["val_loss"].is_number()) val.push_back({s, j["val_loss"].get<double>()});
  }
  if (kept != all) write_file_atomic(path, kept, "train");
}

int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t r = 0;
  LOOM_CHECK(!__builtin_mul_overflow(a, b, &r), "train: ", what, " (", a, " x ", b, ") overflows int64");
  return r;
}

constexpr int64_t kMaxSkippedInARow = 10;

// Runs `write` on rank 0 only, the rank that writes files. Under MPI an
// error there is thrown on every rank, so that none waits in a collective
// for a rank that has stopped. One process runs it as it is.
template <class F>
void on_main(F&& write) {
  if (dist::world_size() == 1) return write();
  std::string error;
  if (dist::is_main()) {
    try {
      write();
    } catch (const std::exception& e) {
      error = e.what();
      if (error.empty()) error = "train: rank 0 failed";
    }
  }
  dist::broadcast(error);
  LOOM_CHECK(error.empty(), error);
}

}  // namespace

Checkpoint load_checkpoint(const std::string& path_in) {
  const std::string path = std::filesystem::is_directory(path_in) ? path_in + "/checkpoint.safetensors" : path_in;
  CheckpointFile f = read_checkpoint(load_safetensors(path), path);
  Checkpoint c;
  c.config_text = f.config_text;
  c.step = f.step;
  c.precision = f.precision;
  c.model = model_from_json(c.config_text, path + " (config)");
  c.model.module().load_state_dict(f.model);
  return c;
}

TrainResult train_language_model(const LoadedModel& model, const std::string& config_text, const TextCorpus& corpus,
                                 const TrainConfig& tc, bool resume) {
  namespace fs = std::filesystem;
  LOOM_CHECK(model.transformer != nullptr && model.transformer->attn_layers->config.causal,
             "train: language-model training needs a TransformerWrapper with a Decoder");
  LOOM_CHECK(model.transformer->config.num_tokens >= 256, "train: byte-level text needs num_tokens >= 256, the config has ",
             model.transformer->config.num_tokens);
  for (auto [name, value] : {std::pair{"steps", tc.steps}, {"batch_size", tc.batch_size}, {"seq_len", tc.seq_len},
                             {"grad_accum", tc.grad_accum}, {"eval_every", tc.eval_every},
                             {"eval_batches", tc.eval_batches}, {"checkpoint_every", tc.checkpoint_every},
                             {"log_every", tc.log_every}})
    LOOM_CHECK(value >= 1, "train: ", name, " must be >= 1, got ", value);
  LOOM_CHECK(tc.warmup_steps >= 0 && tc.stop_after >= 0, "train: warmup_steps and stop_after must be >= 0, got ",
             tc.warmup_steps, " and ", tc.stop_after);
  for (auto [name, value] : {std::pair{"lr", tc.lr}, {"min_lr", tc.min_lr}, {"weight_decay", tc.weight_decay},
                             {"grad_clip", tc.grad_clip}})
    LOOM_CHECK(std::isfinite(value) && value >= 0, "train: ", name, " must be a finite number >= 0, got ", value);
  const int64_t max_len = model.transformer->abs_pos_emb ? model.transformer->config.max_seq_len : INT64_MAX;
  LOOM_CHECK(tc.seq_len <= max_len, "train: seq_len ", tc.seq_len, " exceeds the model's max_seq_len ", max_len);
  LOOM_CHECK(tc.seq_len < int64_t(corpus.train.size()), "train: seq_len ", tc.seq_len, " needs more than ", tc.seq_len,
             " bytes of training text, the corpus has ", corpus.train.size());
  LOOM_CHECK(tc.seq_len < int64_t(corpus.val.size()), "train: seq_len ", tc.seq_len, " needs more than ", tc.seq_len,
             " bytes of held-out text, the corpus has ", corpus.val.size());
  // Data-parallel (train/dist.h): a step's global batch is ranks x grad_accum
  // x batch_size sequences, drawn once from the data stream as one process
  // with that batch would draw them; rank r's micro-batch a is its slice
  // (r·grad_accum + a)·batch_size, so the ranks' losses and gradients average
  // to the whole batch's.
  const int64_t ranks = dist::world_size(), rank = dist::rank();
  checked_mul(tc.batch_size, tc.seq_len, "batch_size x seq_len");  // a batch's tokens fit in int64
  const int64_t global_batch = checked_mul(checked_mul(ranks, tc.grad_accum, "ranks x grad_accum"), tc.batch_size,
                                           "ranks x grad_accum x batch_size");
  const int64_t tokens_per_step = checked_mul(global_batch, tc.seq_len, "tokens per step");
  // Evaluation batches are of the global batch's size: the same windows however the batch is split.
  const int64_t eval_windows = checked_mul(tc.eval_batches, global_batch, "eval_batches x global batch");
  const bool quiet = tc.quiet || !dist::is_main();  // rank 0 prints
  const std::string ckpt_path = tc.out_dir + "/checkpoint.safetensors", metrics_path = tc.out_dir + "/metrics.jsonl";
  on_main([&] {
    std::error_code ec;
    fs::create_directories(tc.out_dir, ec);
    LOOM_CHECK(!ec, "train: cannot create the folder '", tc.out_dir, "': ", ec.message());
  });

  nn::Module& net = model.module();
  net.train();
  AutoregressiveWrapper ar(model.transformer);
  AdamW opt(net.named_parameters(), {.lr = tc.lr, .weight_decay = tc.weight_decay});
  const LRSchedule schedule{.max_lr = tc.lr, .min_lr = tc.min_lr, .warmup_steps = tc.warmup_steps, .total_steps = tc.steps};
  Generator data_gen(tc.seed);
  // Dropout: each rank its own masks (seed + 1 + rank), the same number of draws.
  default_generator() = Generator(tc.seed + 1 + uint64_t(rank));
  int64_t step = 0;
  int64_t saved_step = -1;  // the step of the checkpoint on disk from this run (or the one resumed), -1: none
  std::vector<Point> train_curve, val_curve;  // rank 0's, for loss.svg
  Precision precision = tc.precision.value_or(Precision::Float32);

  if (resume) {
    // Rank 0 reads the checkpoint and sends its bytes to every rank: the
    // other hosts need not see rank 0's disk.
    std::string bytes;
    on_main([&] {
      LOOM_CHECK(fs::exists(ckpt_path), "train: --resume given but '", ckpt_path, "' does not exist");
      bytes = read_file(ckpt_path, "load_safetensors");
    });
    dist::broadcast(bytes);
    CheckpointFile f = read_checkpoint(parse_safetensors(bytes, ckpt_path), ckpt_path);
    // Resuming with another model (or another dropout, or ...) would silently
    // train something that is neither run: the configs must be the same.
    const std::string diff = first_difference(parse_json(f.config_text, ckpt_path + " (config)"),
                                              parse_json(config_text, "train: the config"), "");
    LOOM_CHECK(diff.empty(), "train: cannot resume from '", ckpt_path, "' with a different config: ", diff,
               " (resume with the config the run started with, or train into a new --out)");
    // Another precision would change the numbers of a run that promises the
    // losses of an uninterrupted one.
    LOOM_CHECK(!tc.precision || *tc.precision == f.precision, "train: cannot resume from '", ckpt_path,
               "' with precision ", precision_name(*tc.precision), ": the run trains in ", precision_name(f.precision),
               " (leave the precision out, --precision, to keep it, or train into a new --out)");
    precision = f.precision;
    // So would another batch: the same sequences per step, however many ranks.
    LOOM_CHECK(f.global_batch != 0, "train: cannot resume from '", ckpt_path,
               "': it does not record its global batch (written by a loom before data-parallel training); "
               "train into a new --out");
    LOOM_CHECK(f.global_batch == global_batch && f.seq_len == tc.seq_len, "train: cannot resume from '", ckpt_path,
               "': it was written with a global batch of ", f.global_batch, " sequences of ", f.seq_len,
               " tokens per step, this run has ", global_batch, " of ", tc.seq_len, " (", ranks,
               ranks == 1 ? " rank" : " ranks", " x grad_accum ", tc.grad_accum, " x batch_size ", tc.batch_size,
               "); keep seq_len, and ranks x grad_accum x batch_size at ", f.global_batch,
               " (with fewer ranks, a larger --grad-accum)");
    net.load_state_dict(f.model);
    opt.load_state_dict(f.optim);
    LOOM_CHECK(opt.steps() <= f.step, "train: '", ckpt_path, "' holds an optimizer at step ", opt.steps(),
               " but a run at step ", f.step);
    step = f.step;
    saved_step = f.step;
    data_gen = Generator(f.data_seed);
    data_gen.set_offset(f.data_offset);
    default_generator() = Generator(f.rng_seed + uint64_t(rank));  // rank 0's state is the one saved
    default_generator().set_offset(f.rng_offset);
    on_main([&] { resume_metrics(metrics_path, step, train_curve, val_curve); });
  } else {
    on_main([&] { write_file_atomic(metrics_path, "", "train"); });
  }
  if (ranks > 1) dist::broadcast(net.parameters());  // every rank starts from rank 0's weights

  // Why a run stopped without saving: what is on disk is still good.
  auto kept = [&] {
    return saved_step >= 0 ? "the checkpoint of step " + std::to_string(saved_step) + " in '" + ckpt_path + "' is kept"
                           : std::string("no checkpoint was written");
  };
  auto save = [&] {
    on_main([&] {
      NamedTensorList all;
      for (auto& [name, t] : net.state_dict()) all.emplace_back("model." + name, t);
      for (auto& [name, t] : opt.state_dict()) all.emplace_back("optim." + name, t);
      const std::string bad = first_nonfinite(all);
      LOOM_CHECK(bad.empty(), "train: '", bad, "' holds inf or NaN at step ", step, "; stopped without saving (", kept(),
                 ")");
      save_safetensors(ckpt_path, all,
                       {{"config", config_text}, {"step", std::to_string(step)},
                        {"data_seed", std::to_string(data_gen.seed())}, {"data_offset", std::to_string(data_gen.offset())},
                        {"rng_seed", std::to_string(default_generator().seed())},
                        {"rng_offset", std::to_string(default_generator().offset())},
                        {"global_batch", std::to_string(global_batch)}, {"seq_len", std::to_string(tc.seq_len)},
                        {"precision", precision_name(precision)}, {"format", "loom-checkpoint-1"}});
    });
    saved_step = step;
  };

  StopSignals signals;
  const bool tty = isatty(STDOUT_FILENO) && ranks == 1;  // mpirun gives ranks a terminal even when piped
  std::optional<AppendFile> metrics;
  on_main([&] { metrics.emplace(metrics_path, "train"); });
  auto log_line = [&](const nlohmann::json& line) { metrics->append(line.dump() + "\n"); };
  std::optional<dist::GradReducer> reducer;  // with more than one rank
  if (ranks > 1) reducer.emplace(net.parameters());
  if (!quiet && ranks > 1)
    std::printf("data-parallel: %lld ranks x grad_accum %lld x batch_size %lld = %lld sequences per step; OpenMP "
                "threads per rank: %d\n",
                static_cast<long long>(ranks), static_cast<long long>(tc.grad_accum),
                static_cast<long long>(tc.batch_size), static_cast<long long>(global_batch), omp_get_max_threads());
  TrainResult result;
  result.precision = precision;
  const bool bf16 = precision == Precision::BFloat16;
  const auto start = Clock::now();
  const int64_t first_step = step;
  double step_seconds = 0;
  reset_peak_memory_stats();
  double tokens = 0;
  int64_t skipped_in_a_row = 0;
  // The signal all ranks stop on: one rank's Ctrl-C or SIGTERM stops them all
  // at the end of the same step.
  int stop = dist::all_reduce_max(interrupted);

  const int64_t last_step = tc.stop_after > 0 ? std::min(tc.steps, step + tc.stop_after) : tc.steps;
  const int max_threads = omp_get_max_threads();
  struct RestoreThreads {  // however the run ends, a probe's count does not outlive it
    int count;
    ~RestoreThreads() { omp_set_num_threads(count); }
  } restore_threads{max_threads};
  std::optional<StepThreads> threads;
  if (tc.adapt_threads && ranks == 1) threads.emplace(max_threads);
  while (step < last_step && !stop) {
    if (threads) omp_set_num_threads(threads->next());
    const auto step_start = Clock::now();
    opt.set_lr(schedule.at(step));
    opt.zero_grad();
    const Tensor rows = sample_windows(corpus.train, global_batch, tc.seq_len + 1, data_gen);
    double loss_sum = 0;
    for (int64_t a = 0; a < tc.grad_accum; ++a) {
      // One autocast region per batch: parameters' bfloat16 copies are made
      // once for its forward and backward, and AdamW (below) runs in float32.
      AutocastGuard autocast(bf16);
      const Tensor batch = rows.narrow(0, (rank * tc.grad_accum + a) * tc.batch_size, tc.batch_size);
      if (reducer && a == tc.grad_accum - 1) reducer->begin();  // the last backward reduces while it runs
      Tensor loss = ar.loss(batch);
      (tc.grad_accum > 1 ? loss / float(tc.grad_accum) : loss).backward();
      loss_sum += loss.item<float>();
    }
    if (reducer) reducer->finish();  // every gradient is now the mean over the ranks
    tokens += double(tokens_per_step);
    const double loss = dist::all_reduce_mean(loss_sum / double(tc.grad_accum));
    const double grad_norm = clip_grad_norm(net.parameters(), tc.grad_clip > 0 ? tc.grad_clip : INFINITY);
    ++step;
    // A non-finite loss or gradient would turn every weight into NaN at the
    // update: stop (or skip the step) before it. Both are the same on every
    // rank, so the ranks decide alike.
    const bool finite = std::isfinite(loss) && std::isfinite(grad_norm);
    if (finite) {
      opt.step();
      skipped_in_a_row = 0;
      result.train_loss = loss;
    } else {
      const double bad = std::isfinite(loss) ? grad_norm : loss;
      std::ostringstream what;
      what << (std::isfinite(loss) ? "the gradient norm is " : "the loss is ")
           << (std::isnan(bad) ? "NaN" : bad > 0 ? "inf" : "-inf");
      if (!tc.skip_nonfinite)
        fail("train: ", what.str(), " at step ", step, "; stopped without saving (", kept(),
             "). Lower the learning rate, or skip such steps (skip_nonfinite, loom train --skip-nonfinite)");
      on_main([&] { log_line({{"step", step}, {"skipped", what.str()}}); });
      if (!quiet)
        std::printf("%sstep %lld skipped: %s\n", tty ? "\n" : "", static_cast<long long>(step), what.str().c_str());
      ++result.skipped_steps;
      LOOM_CHECK(++skipped_in_a_row < kMaxSkippedInARow, "train: ", kMaxSkippedInARow,
                 " steps in a row had a non-finite loss or gradient norm (the last at step ", step, ": ", what.str(),
                 "); stopped (", kept(), ")");
    }
    const double this_step = std::chrono::duration<double>(Clock::now() - step_start).count();
    step_seconds += this_step;
    if (threads) {  // evaluations and checkpoints run at the chosen count, not a probe's
      threads->record(this_step);
      omp_set_num_threads(threads->current());
    }
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    const double tok_s = tokens / std::max(elapsed, 1e-9);
    const double eta = elapsed / double(step - first_step) * double(tc.steps - step);
    if (finite && (step % tc.log_every == 0 || step == tc.steps)) {
      // One write per line, straight to the file: a kill -9 loses none of them.
      on_main([&] { log_line({{"step", step}, {"loss", loss}, {"lr", opt.lr()}, {"tokens_per_s", tok_s}}); });
      train_curve.push_back({step, loss});
      if (!quiet && !tty)
        std::printf("step %lld/%lld  loss %.4f  lr %.2e  %.0f tok/s  eta %s\n", static_cast<long long>(step),
                    static_cast<long long>(tc.steps), loss, opt.lr(), tok_s, format_eta(eta).c_str());
    }
    if (!quiet && tty) {
      const int width = 30, done = int(width * step / tc.steps);
      std::printf("\r[%s%s] %lld/%lld  loss %.4f  %.0f tok/s  eta %s   ", std::string(size_t(done), '#').c_str(),
                  std::string(size_t(width - done), '.').c_str(), static_cast<long long>(step),
                  static_cast<long long>(tc.steps), result.train_loss, tok_s, format_eta(eta).c_str());
    }
    if (step % tc.eval_every == 0 || step == tc.steps) {
      // The ranks share the evaluation's forwards and sum the losses.
      double total = 0, count = 0;
      {
        AutocastGuard autocast(bf16);
        std::tie(total, count) = evaluation_sum(model, corpus.val, tc.seq_len, eval_windows, rank, ranks);
      }
      result.val_loss = dist::all_reduce_mean(total) / dist::all_reduce_mean(count);
      if (std::isfinite(result.val_loss)) val_curve.push_back({step, result.val_loss});
      on_main([&] {
        log_line({{"step", step}, {"val_loss", result.val_loss}, {"val_bpc", result.val_loss / std::log(2.0)}});
        write_loss_svg(tc.out_dir + "/loss.svg", train_curve, val_curve, tc.steps);
      });
      if (!quiet)
        std::printf("%sstep %lld  held-out loss %.4f  (%.3f bits per character)\n", tty ? "\n" : "",
                    static_cast<long long>(step), result.val_loss, result.val_loss / std::log(2.0));
    }
    if (step % tc.checkpoint_every == 0 || step == last_step) save();
    std::fflush(stdout);
    stop = dist::all_reduce_max(interrupted);
  }
  if (stop) {
    if (saved_step != step) save();
    if (!quiet)
      std::printf("\ninterrupted by %s: checkpoint saved at step %lld\n", stop == SIGTERM ? "SIGTERM" : "SIGINT",
                  static_cast<long long>(step));
  }
  result.step = step;
  result.interrupted = stop != 0;
  result.signal = stop;
  result.threads = threads ? threads->current() : max_threads;
  result.thread_switches = threads ? threads->switches() : 0;
  result.seconds_per_step = step_seconds / double(std::max<int64_t>(1, step - first_step));
  result.peak_memory_bytes = max_memory_allocated();
  return result;
}

}  // namespace loom
