#include <loom/train/trainer.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include <loom/core/autograd.h>
#include <loom/core/error.h>
#include <loom/core/safetensors.h>
#include <loom/core/storage.h>
#include <loom/models/autoregressive.h>
#include <loom/ops/ops.h>
#include <loom/train/optim.h>

namespace loom {

namespace {

std::atomic<bool> interrupted{false};
void on_sigint(int) { interrupted = true; }

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
  const std::string tmp = path + ".tmp";
  std::ofstream(tmp) << s.str();
  std::filesystem::rename(tmp, path);
}

}  // namespace

double evaluate_language_model(const LoadedModel& model, const std::vector<uint8_t>& data, int64_t seq_len,
                               int64_t windows) {
  NoGradGuard no_grad;
  const bool was_training = model.module().is_training();
  model.module().eval();
  AutoregressiveWrapper ar(model.transformer);
  Tensor all = contiguous_windows(data, seq_len + 1, windows);
  double total = 0;
  int64_t count = 0;
  for (int64_t first = 0; first < all.size(0); first += 16) {  // 16 windows per forward
    const int64_t n = std::min<int64_t>(16, all.size(0) - first);
    total += double(ar.loss(all.narrow(0, first, n)).item<float>()) * double(n);
    count += n;
  }
  model.module().train(was_training);
  return total / double(count);
}

Checkpoint load_checkpoint(const std::string& path_in) {
  const std::string path = std::filesystem::is_directory(path_in) ? path_in + "/checkpoint.safetensors" : path_in;
  SafetensorsFile f = load_safetensors(path);
  LOOM_CHECK(f.metadata.count("config") && f.metadata.count("step"), "load_checkpoint: '", path,
             "' is not a loom training checkpoint (no config in its metadata)");
  Checkpoint c;
  c.config_text = f.metadata.at("config");
  c.step = std::stoll(f.metadata.at("step"));
  c.model = model_from_json(c.config_text, path + " (config)");
  NamedTensorList weights;
  for (auto& [name, t] : f.tensors)
    if (name.rfind("model.", 0) == 0) weights.emplace_back(name.substr(6), t);
  c.model.module().load_state_dict(weights);
  return c;
}

TrainResult train_language_model(const LoadedModel& model, const std::string& config_text, const TextCorpus& corpus,
                                 const TrainConfig& tc, bool resume) {
  namespace fs = std::filesystem;
  LOOM_CHECK(model.transformer != nullptr && model.transformer->attn_layers->config.causal,
             "train: language-model training needs a TransformerWrapper with a Decoder");
  LOOM_CHECK(model.transformer->config.num_tokens >= 256, "train: byte-level text needs num_tokens >= 256, the config has ",
             model.transformer->config.num_tokens);
  LOOM_CHECK(tc.steps > 0 && tc.batch_size > 0 && tc.seq_len > 0 && tc.grad_accum > 0,
             "train: steps, batch size, sequence length and grad_accum must be positive");
  const int64_t max_len = model.transformer->abs_pos_emb ? model.transformer->config.max_seq_len : INT64_MAX;
  LOOM_CHECK(tc.seq_len <= max_len, "train: seq_len ", tc.seq_len, " exceeds the model's max_seq_len ", max_len);
  fs::create_directories(tc.out_dir);
  const std::string ckpt_path = tc.out_dir + "/checkpoint.safetensors", metrics_path = tc.out_dir + "/metrics.jsonl";

  nn::Module& net = model.module();
  net.train();
  AutoregressiveWrapper ar(model.transformer);
  AdamW opt(net.named_parameters(), {.lr = tc.lr, .weight_decay = tc.weight_decay});
  const LRSchedule schedule{.max_lr = tc.lr, .min_lr = tc.min_lr, .warmup_steps = tc.warmup_steps, .total_steps = tc.steps};
  Generator data_gen(tc.seed);
  manual_seed(tc.seed + 1);  // dropout
  int64_t step = 0;
  std::vector<Point> train_curve, val_curve;

  if (resume) {
    LOOM_CHECK(fs::exists(ckpt_path), "train: --resume given but '", ckpt_path, "' does not exist");
    SafetensorsFile f = load_safetensors(ckpt_path);
    NamedTensorList weights, optim;
    for (auto& [name, t] : f.tensors) {
      if (name.rfind("model.", 0) == 0) weights.emplace_back(name.substr(6), t);
      if (name.rfind("optim.", 0) == 0) optim.emplace_back(name.substr(6), t);
    }
    net.load_state_dict(weights);
    opt.load_state_dict(optim);
    step = std::stoll(f.metadata.at("step"));
    data_gen = Generator(std::stoull(f.metadata.at("data_seed")));
    data_gen.set_offset(std::stoull(f.metadata.at("data_offset")));
    default_generator() = Generator(std::stoull(f.metadata.at("rng_seed")));
    default_generator().set_offset(std::stoull(f.metadata.at("rng_offset")));
    // Keep the metrics of the steps the checkpoint covers, drop any later ones.
    std::ifstream in(metrics_path);
    std::string line, kept;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || j.value("step", int64_t(0)) > step) continue;
      kept += line + "\n";
      if (j.contains("loss")) train_curve.push_back({j["step"].get<int64_t>(), j["loss"].get<double>()});
      if (j.contains("val_loss")) val_curve.push_back({j["step"].get<int64_t>(), j["val_loss"].get<double>()});
    }
    std::ofstream(metrics_path, std::ios::trunc) << kept;
  } else {
    std::ofstream(metrics_path, std::ios::trunc);
  }

  auto save = [&] {
    NamedTensorList all;
    for (auto& [name, t] : net.state_dict()) all.emplace_back("model." + name, t);
    for (auto& [name, t] : opt.state_dict()) all.emplace_back("optim." + name, t);
    save_safetensors(ckpt_path, all,
                     {{"config", config_text}, {"step", std::to_string(step)},
                      {"data_seed", std::to_string(data_gen.seed())}, {"data_offset", std::to_string(data_gen.offset())},
                      {"rng_seed", std::to_string(default_generator().seed())},
                      {"rng_offset", std::to_string(default_generator().offset())}, {"format", "loom-checkpoint-1"}});
  };

  interrupted = false;
  auto previous_handler = std::signal(SIGINT, on_sigint);
  const bool tty = isatty(STDOUT_FILENO);
  std::ofstream metrics(metrics_path, std::ios::app);
  TrainResult result;
  const auto start = Clock::now();
  const int64_t first_step = step;
  double step_seconds = 0;
  reset_peak_memory_stats();
  double tokens = 0;
  const int64_t eval_windows = tc.eval_batches * tc.batch_size;

  const int64_t last_step = tc.stop_after > 0 ? std::min(tc.steps, step + tc.stop_after) : tc.steps;
  while (step < last_step && !interrupted) {
    const auto step_start = Clock::now();
    opt.set_lr(schedule.at(step));
    opt.zero_grad();
    double loss_sum = 0;
    for (int64_t a = 0; a < tc.grad_accum; ++a) {
      Tensor batch = sample_windows(corpus.train, tc.batch_size, tc.seq_len + 1, data_gen);
      Tensor loss = ar.loss(batch);
      (tc.grad_accum > 1 ? loss / float(tc.grad_accum) : loss).backward();
      loss_sum += loss.item<float>();
      tokens += double(tc.batch_size * tc.seq_len);
    }
    if (tc.grad_clip > 0) clip_grad_norm(net.parameters(), tc.grad_clip);
    opt.step();
    ++step;
    step_seconds += std::chrono::duration<double>(Clock::now() - step_start).count();
    const double loss = loss_sum / double(tc.grad_accum);
    result.train_loss = loss;
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    const double tok_s = tokens / std::max(elapsed, 1e-9);
    const double eta = elapsed / double(step - first_step) * double(tc.steps - step);
    if (step % tc.log_every == 0 || step == tc.steps) {
      metrics << nlohmann::json{{"step", step}, {"loss", loss}, {"lr", opt.lr()}, {"tokens_per_s", tok_s}}.dump() << "\n";
      train_curve.push_back({step, loss});
      if (!tc.quiet && !tty)
        std::printf("step %lld/%lld  loss %.4f  lr %.2e  %.0f tok/s  eta %s\n", static_cast<long long>(step),
                    static_cast<long long>(tc.steps), loss, opt.lr(), tok_s, format_eta(eta).c_str());
    }
    if (!tc.quiet && tty) {
      const int width = 30, done = int(width * step / tc.steps);
      std::printf("\r[%s%s] %lld/%lld  loss %.4f  %.0f tok/s  eta %s   ", std::string(size_t(done), '#').c_str(),
                  std::string(size_t(width - done), '.').c_str(), static_cast<long long>(step),
                  static_cast<long long>(tc.steps), loss, tok_s, format_eta(eta).c_str());
    }
    if (step % tc.eval_every == 0 || step == tc.steps) {
      result.val_loss = evaluate_language_model(model, corpus.val, tc.seq_len, eval_windows);
      val_curve.push_back({step, result.val_loss});
      metrics << nlohmann::json{{"step", step}, {"val_loss", result.val_loss}, {"val_bpc", result.val_loss / std::log(2.0)}}
                     .dump()
              << "\n";
      metrics.flush();
      if (!tc.quiet)
        std::printf("%sstep %lld  held-out loss %.4f  (%.3f bits per character)\n", tty ? "\n" : "",
                    static_cast<long long>(step), result.val_loss, result.val_loss / std::log(2.0));
      write_loss_svg(tc.out_dir + "/loss.svg", train_curve, val_curve, tc.steps);
    }
    if (step % tc.checkpoint_every == 0 || step == last_step) save();
    std::fflush(stdout);
  }
  if (interrupted) {
    save();
    if (!tc.quiet) std::printf("\ninterrupted: checkpoint saved at step %lld\n", static_cast<long long>(step));
  }
  std::signal(SIGINT, previous_handler);
  result.step = step;
  result.interrupted = interrupted;
  result.seconds_per_step = step_seconds / double(std::max<int64_t>(1, step - first_step));
  result.peak_memory_bytes = max_memory_allocated();
  return result;
}

}  // namespace loom
