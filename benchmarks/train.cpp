// The `train` suite: one training step of a decoder-only language model
// (zero grads, forward, cross-entropy, backward, gradient clipping, AdamW),
// fp32, on 1 and 2 threads, for three models:
//   charlm   the README's char-LM (configs/charlm.json): dim 128 x 4 layers, rotary, batch 16 x seq 128
//   d256     a plain pre-norm decoder, dim 256 x 4 layers, 4 heads of 64, seq 256, batch 8
//   d512     the same at dim 512 x 6 layers, 8 heads of 64, seq 512, batch 4
// Per case (NAME_tT):
//   tokens_per_s        training tokens per second (median step)
//   train_gflops        useful FLOPs per second, against the FMA peak measured in the same run
//                       (benchmarks/peak.cpp) at the vector width oneDNN uses: ratio = fraction of peak
//   forward_tokens_per_s  inference: the forward alone, in no-grad mode
//   peak_memory_mb      largest tensor memory in use during a step
//   peak_rss_growth_mb  growth of the process's peak resident set over model, steps and forward
//   phase_<p>_ms        forward (with the loss), backward, optimizer (clip + AdamW + zero_grad);
//                       ratio = share of the step
//   kind_<k>_ms         per op kind over forward and backward (core/profile.h): matmul, attention,
//                       norms, elementwise, loss, embedding, other ops, and autograd (the engine's
//                       own work: summing and routing gradients, bookkeeping); ratio = share of the step
// Useful FLOPs count each matrix product once: forward 2·m·k·n per product, the backward twice
// that; attention as causal (each query sees (n+1)/2 keys on average), 4·n·n_avg·d per layer
// forward (QKᵀ and AV), the backward twice that (the fused kernel's recompute is not counted).
// NAME_tT_bf16: the same under bfloat16 autocast (core/autocast.h; native bfloat16 products where
// the CPU has them: loom-bench prints whether). The fixed-thread cases run with spinning OpenMP
// waits, as `loom train` does (benchmarks/main.cpp). Threads chosen by timing steps, as `loom train`
// does when OMP_NUM_THREADS is not set (core/parallel.h, StepThreads), over 400 steps after 40:
//   charlm_adaptive_idle  tokens/s on the idle machine (probes included); baseline: the fixed
//                         maximum thread count, measured the same way just before
//   charlm_busy_adaptive  the same beside a busy-loop process that holds one core; baseline: 1 thread
//                         on the idle machine (median step)
//   charlm_busy_1_thread  1 thread beside the busy loop (median step), same baseline
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <omp.h>

#include <loom/loom.h>

#include "bench.h"

namespace loom::bench {

double peak_gflops(int threads);
double copy_gbps(int threads);
std::string peak_isa();

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct ModelCase {
  std::string name;
  int64_t dim, depth, heads, dim_head, ff_mult, batch, seq;
  bool rotary;
};

std::string config_json(const ModelCase& c) {
  return std::string("{\"wrapper\": \"TransformerWrapper\", \"num_tokens\": 256, \"max_seq_len\": ") +
         std::to_string(c.seq) + ", \"attn_layers\": {\"type\": \"Decoder\", \"dim\": " + std::to_string(c.dim) +
         ", \"depth\": " + std::to_string(c.depth) + ", \"heads\": " + std::to_string(c.heads) +
         ", \"attn_dim_head\": " + std::to_string(c.dim_head) + ", \"ff_mult\": " + std::to_string(c.ff_mult) +
         (c.rotary ? ", \"rotary_pos_emb\": true" : "") + "}}";
}

// Forward FLOPs of the matrix products outside attention, and of attention's two products.
double forward_matmul_flops(const ModelCase& c) {
  const double tokens = double(c.batch * c.seq), d = double(c.dim), inner = double(c.heads * c.dim_head);
  return tokens * (double(c.depth) * 2 * (3 * d * inner + inner * d + 2 * d * d * double(c.ff_mult)) + 2 * d * 256);
}
double forward_attention_flops(const ModelCase& c) {
  return double(c.batch * c.seq) * double(c.depth) * 4 * (double(c.seq) + 1) / 2 * double(c.heads * c.dim_head);
}
// Useful FLOPs of one training step (see the top comment).
double train_flops(const ModelCase& c) { return 3 * (forward_matmul_flops(c) + forward_attention_flops(c)); }

// The profile as an SVG bar chart: per op kind, the measured time of one
// step against the least time the machine could do it in (its roofline:
// FLOPs at the FMA peak for matmul and attention, the minimum memory traffic
// at copy bandwidth for the rest). docs/performance.md shows these.
void write_profile_svg(const std::string& path, const std::string& title,
                       const std::vector<std::pair<std::string, std::pair<double, double>>>& bars) {
  double top = 0;
  for (const auto& [kind, t] : bars) top = std::max(top, std::max(t.first, t.second));
  const double W = 640, row = 26, left = 110, right = 90, head = 40, H = head + row * double(bars.size()) + 30;
  auto x = [&](double ms) { return left + (W - left - right) * ms / top; };
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) return;
  std::fprintf(f, "<svg xmlns='http://www.w3.org/2000/svg' width='%g' height='%g' font-family='sans-serif' "
               "font-size='12'>\n<rect width='100%%' height='100%%' fill='white'/>\n", W, H);
  std::fprintf(f, "<text x='%g' y='18' font-size='14'>%s</text>\n", left, title.c_str());
  std::fprintf(f, "<text x='%g' y='34' fill='#555'>measured (blue) and roofline (grey) per op kind, ms per step</text>\n",
               left);
  double y = head;
  for (const auto& [kind, t] : bars) {
    std::fprintf(f, "<text x='%g' y='%g' text-anchor='end'>%s</text>\n", left - 6, y + 15, kind.c_str());
    std::fprintf(f, "<rect x='%g' y='%g' width='%g' height='9' fill='#1f77b4'/>\n", left, y + 3, x(t.first) - left);
    std::fprintf(f, "<rect x='%g' y='%g' width='%g' height='9' fill='#bbb'/>\n", left, y + 13, x(t.second) - left);
    std::fprintf(f, "<text x='%g' y='%g'>%.1f / %.1f</text>\n", x(std::max(t.first, t.second)) + 4, y + 15, t.first,
                 t.second);
    y += row;
  }
  std::fprintf(f, "</svg>\n");
  std::fclose(f);
}

const char* kind_of(const std::string& op) {
  static const std::map<std::string, const char*> kinds = {
      {"matmul", "matmul"},         {"linear", "matmul"},       {"attention", "attention"},
      {"layer_norm", "norms"},      {"rms_norm", "norms"},      {"cross_entropy", "loss"},
      {"embedding", "embedding"},   {"add", "elementwise"},     {"sub", "elementwise"},
      {"mul", "elementwise"},       {"div", "elementwise"},     {"gelu", "elementwise"},
      {"silu", "elementwise"},      {"relu", "elementwise"},    {"exp", "elementwise"},
      {"neg", "elementwise"},       {"tanh", "elementwise"},    {"sigmoid", "elementwise"},
      {"pow", "elementwise"},       {"sqrt", "elementwise"},    {"rsqrt", "elementwise"},
      {"dropout", "elementwise"},   {"where", "elementwise"},   {"masked_fill", "elementwise"}};
  auto it = kinds.find(op);
  return it == kinds.end() ? "other" : it->second;
}

struct StepTimes {
  double forward = 0, backward = 0, optimizer = 0;
  double total() const { return forward + backward + optimizer; }
};

class Trainer {
 public:
  explicit Trainer(const ModelCase& c, bool bf16 = false)
      : bf16_(bf16),
        model_(model_from_json(config_json(c))),
        ar_(model_.transformer),
        opt_(model_.module().named_parameters(), {.lr = 1e-3, .weight_decay = 0.1}) {
    for (auto& [name, p] : model_.module().named_parameters()) params_.push_back(p);
    Generator g(1);
    tokens_ = randint(0, 256, {c.batch, c.seq + 1}, g);
  }
  StepTimes step() {
    StepTimes t;
    auto t0 = Clock::now();
    opt_.zero_grad();
    {
      AutocastGuard autocast(bf16_);  // the optimizer runs outside it, in float32
      profile::mark();
      Tensor loss = ar_.loss(tokens_);
      t.forward = seconds_since(t0);
      t0 = Clock::now();
      loss.backward();
      t.backward = seconds_since(t0);
    }
    t0 = Clock::now();
    clip_grad_norm(params_, 1.0);
    opt_.step();
    t.optimizer = seconds_since(t0);
    return t;
  }
  int64_t parameter_count() const { return model_.module().num_parameters(); }
  double forward_only() {
    NoGradGuard no_grad;
    AutocastGuard autocast(bf16_);
    const auto t0 = Clock::now();
    ar_.net->forward(tokens_.narrow(1, 0, tokens_.size(1) - 1));
    return seconds_since(t0);
  }

 private:
  bool bf16_;
  LoadedModel model_;
  AutoregressiveWrapper ar_;
  AdamW opt_;
  std::vector<Tensor> params_;
  Tensor tokens_;
};

// The step with the median total time of `n` steps (after two warm-up steps).
StepTimes median_step(Trainer& tr, int n) {
  tr.step();
  tr.step();
  std::vector<StepTimes> runs;
  for (int i = 0; i < n; ++i) runs.push_back(tr.step());
  std::sort(runs.begin(), runs.end(), [](const StepTimes& a, const StepTimes& b) { return a.total() < b.total(); });
  return runs[runs.size() / 2];
}

// The resident set now, and the process's peak so far, in MB.
double rss_mb() {
  long pages = 0, resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return double(resident) * double(sysconf(_SC_PAGESIZE)) / 1e6;
}
double peak_rss_mb() {
  // VmHWM, the peak of this memory image: getrusage's ru_maxrss survives
  // exec, so a child of a big process (python with torch loaded) would
  // start with its parent's resident set as its peak.
  double kb = 0;
  if (FILE* f = std::fopen("/proc/self/status", "r")) {
    char line[256];
    while (std::fgets(line, sizeof line, f))
      if (std::sscanf(line, "VmHWM: %lf kB", &kb) == 1) break;
    std::fclose(f);
  }
  return kb * 1024 / 1e6;
}

// A child process spinning on one core until killed.
pid_t start_busy_loop() {
  const pid_t pid = fork();
  if (pid == 0) {
    volatile uint64_t x = 0;
    for (;;) x = x + 1;
  }
  return pid;
}

void stop(pid_t pid) {
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
}

}  // namespace

void train_suite(Reporter& rep) {
  manual_seed(0);
  const int max_threads = omp_get_max_threads();
  const std::vector<ModelCase> cases = {{"charlm", 128, 4, 4, 32, 4, 16, 128, true},
                                        {"d256", 256, 4, 4, 64, 4, 8, 256, false},
                                        {"d512", 512, 6, 8, 64, 4, 4, 512, false}};
  std::fprintf(stderr, "train: FMA peak probe at %s width; native bfloat16 products: %s\n", peak_isa().c_str(),
               native_bf16() ? "yes" : "no (bf16 cases round to bfloat16 and multiply in float32)");
  std::map<int, double> peak;
  for (const ModelCase& c : cases) {
    for (const bool bf16 : {false, true}) {
    for (int threads : {1, 2}) {
      const std::string name = c.name + "_t" + std::to_string(threads) + (bf16 ? "_bf16" : "");
      if (!rep.wants(name) || threads > max_threads) continue;
      omp_set_num_threads(threads);
      if (!peak.count(threads)) peak[threads] = peak_gflops(threads);
      manual_seed(0);
      const double rss_before = rss_mb();
      Trainer tr(c, bf16);
      // Medians of enough steps that the fp32 / bf16 ratios of two cases hold
      // still on a VM whose speed drifts 10–20 % (with 5 char-LM steps they
      // moved by ±8 % between runs).
      const int steps = c.name == "d512" ? 5 : c.name == "d256" ? 9 : 15;
      reset_peak_memory_stats();
      const int64_t before = memory_allocated();
      const StepTimes t = median_step(tr, steps);
      const double peak_mb = double(max_memory_allocated() - before) / 1e6;
      const double tokens = double(c.batch * c.seq), step_ms = t.total() * 1e3;
      rep.add({"", name, "tokens_per_s", "tok/s", "", tokens / t.total(), 0, true});
      rep.add({"", name, "train_gflops", "GFLOP/s", "fma_peak_" + peak_isa(), train_flops(c) / t.total() / 1e9,
               peak[threads], true});
      std::vector<double> fwd;
      for (int i = 0; i < steps; ++i) fwd.push_back(tr.forward_only());
      std::sort(fwd.begin(), fwd.end());
      rep.add({"", name, "forward_tokens_per_s", "tok/s", "", tokens / fwd[fwd.size() / 2], 0, true});
      rep.add({"", name, "peak_memory_mb", "MB", "", peak_mb, 0, false});
      // The measure benchmarks/compare_pytorch.py uses for both: growth of the peak resident set.
      rep.add({"", name, "peak_rss_growth_mb", "MB", "", peak_rss_mb() - rss_before, 0, false});
      rep.add({"", name, "phase_forward_ms", "ms", "step_ms", t.forward * 1e3, step_ms, true});
      rep.add({"", name, "phase_backward_ms", "ms", "step_ms", t.backward * 1e3, step_ms, true});
      rep.add({"", name, "phase_optimizer_ms", "ms", "step_ms", t.optimizer * 1e3, step_ms, true});
      // One profiled step: per op kind; the engine's own share of the backward is what its nodes did not use.
      profile::reset();
      profile::enable(true);
      const StepTimes pt = tr.step();
      profile::enable(false);
      std::map<std::string, double> kinds;
      double in_nodes = 0;
      for (const profile::Entry& e : profile::entries()) {
        kinds[kind_of(e.op)] += e.forward_seconds + e.backward_seconds;
        if (std::getenv("LOOM_BENCH_OPS"))  // every op's own line
          std::fprintf(stderr, "  %-16s %-12s fwd %8.3f ms (%lld)  bwd %8.3f ms (%lld)\n", e.op.c_str(), kind_of(e.op),
                       e.forward_seconds * 1e3, (long long)e.forward_calls, e.backward_seconds * 1e3,
                       (long long)e.backward_calls);
        in_nodes += e.backward_seconds;
      }
      kinds["autograd"] += pt.backward - in_nodes;
      kinds["optimizer"] += pt.optimizer;
      for (const auto& [kind, seconds] : kinds)
        rep.add({"", name, "kind_" + kind + "_ms", "ms", "step_ms", seconds * 1e3, pt.total() * 1e3, true});
      if (const char* dir = std::getenv("LOOM_BENCH_SVG")) {  // the roofline picture of this case
        const double peak_flops = peak[threads] * 1e9, bw = copy_gbps(threads) * 1e9;
        std::map<std::string, double> roof;
        static const std::set<std::string> views = {"view", "reshape", "permute", "transpose", "slice", "select",
                                                     "expand", "squeeze", "unsqueeze", "narrow", "movedim", "t"};
        for (const profile::Entry& e : profile::entries())  // a view moves no data in its forward
          roof[kind_of(e.op)] += ((views.count(e.op) ? 0.0 : e.forward_bytes) + e.backward_bytes) / bw;
        roof["matmul"] = std::max(roof["matmul"], 3 * forward_matmul_flops(c) / peak_flops);
        roof["attention"] = std::max(roof["attention"], 3.5 * forward_attention_flops(c) / peak_flops);  // 7 products
        const double param_bytes = 4.0 * double(tr.parameter_count());
        roof["optimizer"] = 8 * param_bytes / bw;  // read w, g, m, v and write w, m, v; read g for the norm
        std::vector<std::pair<std::string, std::pair<double, double>>> bars;
        for (const auto& [kind, seconds] : kinds) bars.push_back({kind, {seconds * 1e3, roof[kind] * 1e3}});
        std::sort(bars.begin(), bars.end(), [](const auto& a, const auto& b) { return a.second.first > b.second.first; });
        write_profile_svg(std::string(dir) + "/" + name + ".svg",
                          name + ": one training step, " + std::to_string(threads) + " thread(s), " + peak_isa(), bars);
      }
    }
    }
  }
  // loom train's default threading (StepThreads) on the idle machine and beside a busy loop
  // holding one of the cores, against fixed thread counts.
  const ModelCase& c = cases[0];
  const double tokens = double(c.batch * c.seq);
  auto median_speed = [&](int threads) {
    omp_set_num_threads(threads);
    manual_seed(0);
    Trainer tr(c);
    return tokens / median_step(tr, 5).total();
  };
  // Tokens/s over `timed` steps after `warm` ones, all steps timed as they come (wall clock).
  auto run_speed = [&](bool adapt, int warm, int timed) {
    omp_set_num_threads(max_threads);
    manual_seed(0);
    Trainer tr(c);
    StepThreads st(adapt ? max_threads : 1);
    auto one = [&] {
      if (adapt) omp_set_num_threads(st.next());
      st.record(tr.step().total());
      if (adapt) omp_set_num_threads(st.current());
    };
    for (int i = 0; i < warm; ++i) one();
    const auto t0 = Clock::now();
    for (int i = 0; i < timed; ++i) one();
    const double speed = tokens * timed / seconds_since(t0);
    std::fprintf(stderr, "  %s: %d threads at the end, %lld switches\n", adapt ? "adaptive" : "fixed",
                 adapt ? st.current() : max_threads,
                 static_cast<long long>(st.switches()));
    return speed;
  };
  if (rep.wants("charlm_adaptive_idle") && max_threads >= 2) {
    const double fixed = run_speed(false, 40, 400), adaptive = run_speed(true, 40, 400);
    rep.add({"", "charlm_adaptive_idle", "tokens_per_s", "tok/s", "fixed_" + std::to_string(max_threads) + "_threads",
             adaptive, fixed, true});
  }
  if (rep.wants("charlm_busy") && max_threads >= 2) {
    const double idle_one = median_speed(1);
    const pid_t busy = start_busy_loop();
    const double busy_adaptive = run_speed(true, 40, 400), busy_one = median_speed(1);
    stop(busy);
    rep.add({"", "charlm_busy_adaptive", "tokens_per_s", "tok/s", "idle_1_thread", busy_adaptive, idle_one, true});
    rep.add({"", "charlm_busy_1_thread", "tokens_per_s", "tok/s", "idle_1_thread", busy_one, idle_one, true});
  }
  omp_set_num_threads(max_threads);
}

}  // namespace loom::bench
