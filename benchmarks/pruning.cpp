// loom-pruning-bench: selective attention's context pruning on the char-LM
// demo (benchmarks/pruning.sh trains the two models and runs this).
//
//   loom-pruning-bench --selective DIR --plain DIR --data PATH [--context N] [--windows N] [--batch N]
//
// Each held-out window of context + 1 bytes is decoded a byte a step with a
// KV cache, as generation would, and scored on every next byte: held-out
// bits per character. The selective model runs at budgets from the whole
// context down to 1/32 of it (LayersCache::budget: at most that many
// positions per layer stay cached after each step, the most masked are
// evicted); the plain model at its whole context. Peak KV cache is the
// largest LayersCache::bytes() seen after a step, per sequence (keys, values
// and, for the selective model, each key's F and position); during a step
// one more position is held. Decoding speed is bytes scored per second over
// the whole batch.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <loom/core/parallel.h>
#include <loom/loom.h>

namespace {

struct Row {
  double bits = 0, peak_bytes = 0, tokens_per_s = 0;
};

// Bits per character of `model` on `windows` (w, context + 1), decoded a byte a step.
Row decode(const loom::LoadedModel& model, const loom::Tensor& windows, int64_t budget, int64_t batch) {
  using namespace loom;
  NoGradGuard no_grad;
  model.module().eval();
  const int64_t w = windows.size(0), n = windows.size(1) - 1;
  double nats = 0, peak = 0, seconds = 0;
  for (int64_t first = 0; first < w; first += batch) {
    const int64_t b = std::min(batch, w - first);
    Tensor rows = windows.narrow(0, first, b);
    nn::LayersCache cache;
    cache.budget = budget;
    const auto start = std::chrono::steady_clock::now();
    for (int64_t t = 0; t < n; ++t) {
      Tensor logits = model.transformer->forward(rows.narrow(1, t, 1), {}, &cache).select(1, 0);  // (b, V)
      nats += double(cross_entropy(logits, rows.select(1, t + 1)).item<float>()) * double(b);
      peak = std::max(peak, double(cache.bytes()) / double(b));
    }
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  return {nats / double(w * n) / std::log(2.0), peak, double(w * n) / seconds};
}

std::string flag(int argc, char** argv, const std::string& name, const std::string& def) {
  for (int i = 1; i + 1 < argc; ++i)
    if (argv[i] == "--" + name) return argv[i + 1];
  return def;
}

}  // namespace

int main(int argc, char** argv) {
  loom::openmp_wait_defaults(argv);
  const std::string selective = flag(argc, argv, "selective", ""), plain = flag(argc, argv, "plain", "");
  const std::string data = flag(argc, argv, "data", "/usr/share/games/fortunes");
  const int64_t context = std::atoll(flag(argc, argv, "context", "128").c_str());
  const int64_t windows = std::atoll(flag(argc, argv, "windows", "256").c_str());
  const int64_t batch = std::atoll(flag(argc, argv, "batch", "64").c_str());
  if (selective.empty() || plain.empty() || context < 32 || windows < 1 || batch < 1) {
    std::fprintf(stderr,
                 "usage: loom-pruning-bench --selective DIR --plain DIR [--data PATH] [--context N >= 32] "
                 "[--windows N] [--batch N]\n");
    return 2;
  }
  try {
    loom::Checkpoint sel = loom::load_checkpoint(selective), base = loom::load_checkpoint(plain);
    loom::TextCorpus corpus = loom::load_text_corpus(data);
    loom::Tensor all = loom::contiguous_windows(corpus.val, context + 1, windows);
    std::printf("held-out: %lld windows of %lld bytes; selective step %lld, plain step %lld\n\n",
                static_cast<long long>(all.size(0)), static_cast<long long>(context), static_cast<long long>(sel.step),
                static_cast<long long>(base.step));
    // The uncached evaluation of the same windows, as `loom eval` computes it: decoding with a
    // cache at the whole context must give the same bits.
    const double check = loom::evaluate_language_model(sel.model, corpus.val, context, windows) / std::log(2.0);
    std::printf("| model | budget (positions per layer) | held-out bits/char | peak KV cache per sequence | "
                "vs plain | decoding bytes/s |\n|---|---|---|---|---|---|\n");
    const Row ref = decode(base.model, all, 0, batch);
    auto line = [&](const char* model, const std::string& budget, const Row& r) {
      std::printf("| %s | %s | %.3f | %.1f KiB | %.3f× | %.0f |\n", model, budget.c_str(), r.bits, r.peak_bytes / 1024,
                  r.peak_bytes / ref.peak_bytes, r.tokens_per_s);
      std::fflush(stdout);
    };
    line("plain", std::to_string(context) + " (all)", ref);
    int64_t smallest = -1;
    double smallest_ratio = 0;
    for (int64_t div = 1; div <= 32; div *= 2) {
      const int64_t k = context / div;
      const Row r = decode(sel.model, all, k, batch);
      if (div == 1 && std::abs(r.bits - check) > 1e-3)
        std::fprintf(stderr, "warning: cached decoding gives %.4f bits, the uncached evaluation %.4f\n", r.bits, check);
      line("selective", std::to_string(k) + (div == 1 ? " (all)" : " (1/" + std::to_string(div) + ")"), r);
      if (r.bits <= ref.bits) smallest = k, smallest_ratio = ref.peak_bytes / r.peak_bytes;
    }
    std::printf("\nuncached evaluation of the selective model on the same windows: %.3f bits/char\n", check);
    if (smallest > 0)
      std::printf("smallest budget no worse than the plain model at its whole context: %lld (%.1f× less KV cache)\n",
                  static_cast<long long>(smallest), smallest_ratio);
    else
      std::printf("no budget of the selective model is as good as the plain model at its whole context\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loom-pruning-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
