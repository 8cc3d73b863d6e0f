// loom-pruning-bench: selective attention's context pruning on the char-LM
// demo (benchmarks/pruning.sh trains the models and runs this).
//
//   loom-pruning-bench --selective DIR --plain DIR --data PATH [--selective-mem DIR]
//                      [--context N] [--windows N] [--search-windows N] [--batch N]
//
// Each held-out window of context + 1 bytes is decoded a byte a step with a
// KV cache, as generation would, and scored on every next byte: held-out
// bits per character (evaluate_pruned). The selective models (the second
// trained with the memory loss, attn_selective_memory_loss) run at budgets
// from the whole context down to 1/32 of it (LayersCache::budgets: at most
// that many positions per layer stay cached after each step, the most masked
// are evicted); the plain model at its whole context. Then, for each
// selective model, per-layer budgets and one budget for all layers are
// chosen (choose_selective_budgets) on --search-windows other held-out
// windows, for the plain model's bits there and for 0.01 bits above the
// unpruned selective model's, and scored on the table's windows. Peak KV
// cache is the largest LayersCache::bytes() seen after a step, per sequence
// (keys, values and, for the selective models, each key's F and position);
// during a step one more position is held. Decoding speed is bytes scored
// per second over the whole batch.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <loom/core/parallel.h>
#include <loom/loom.h>

namespace {

std::string flag(int argc, char** argv, const std::string& name, const std::string& def) {
  for (int i = 1; i + 1 < argc; ++i)
    if (argv[i] == "--" + name) return argv[i + 1];
  return def;
}

std::string list(const std::vector<int64_t>& budgets) {
  std::string s;
  for (int64_t k : budgets) s += (s.empty() ? "" : ",") + std::to_string(k);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  loom::openmp_wait_defaults(argv);
  const std::string selective = flag(argc, argv, "selective", ""), plain = flag(argc, argv, "plain", "");
  const std::string selective_mem = flag(argc, argv, "selective-mem", "");
  const std::string data = flag(argc, argv, "data", "/usr/share/games/fortunes");
  const int64_t context = std::atoll(flag(argc, argv, "context", "128").c_str());
  const int64_t windows = std::atoll(flag(argc, argv, "windows", "256").c_str());
  const int64_t search_windows = std::atoll(flag(argc, argv, "search-windows", "64").c_str());
  const int64_t batch = std::atoll(flag(argc, argv, "batch", "64").c_str());
  if (selective.empty() || plain.empty() || context < 32 || windows < 1 || search_windows < 1 || batch < 1) {
    std::fprintf(stderr,
                 "usage: loom-pruning-bench --selective DIR --plain DIR [--selective-mem DIR] [--data PATH] "
                 "[--context N >= 32] [--windows N] [--search-windows N] [--batch N]\n");
    return 2;
  }
  try {
    using loom::Checkpoint;
    const double ln2 = std::log(2.0);
    Checkpoint base = loom::load_checkpoint(plain);
    std::vector<std::pair<std::string, Checkpoint>> models = {{"selective", loom::load_checkpoint(selective)}};
    if (!selective_mem.empty()) models.emplace_back("selective + memory loss", loom::load_checkpoint(selective_mem));
    loom::TextCorpus corpus = loom::load_text_corpus(data);
    loom::Tensor both = loom::contiguous_windows(corpus.val, context + 1, windows + search_windows);
    LOOM_CHECK(both.size(0) == windows + search_windows, "--windows and --search-windows: the held-out data has only ",
               both.size(0), " windows of ", context + 1, " bytes");
    loom::Tensor all = both.narrow(0, 0, windows), search = both.narrow(0, windows, search_windows);
    std::printf("held-out: %lld windows of %lld bytes (budgets chosen on %lld others); plain step %lld",
                static_cast<long long>(windows), static_cast<long long>(context), static_cast<long long>(search_windows),
                static_cast<long long>(base.step));
    for (const auto& [name, ck] : models) std::printf(", %s step %lld", name.c_str(), static_cast<long long>(ck.step));
    std::printf("\n\n| model | budget (positions per layer) | held-out bits/char | peak KV cache per sequence | "
                "vs plain | decoding bytes/s |\n|---|---|---|---|---|---|\n");
    auto decode = [&](const Checkpoint& ck, const loom::Tensor& w, const std::vector<int64_t>& budgets) {
      return loom::evaluate_pruned(*ck.model.transformer, w, budgets, batch);
    };
    const loom::PrunedEvaluation ref = decode(base, all, {});
    auto line = [&](const std::string& model, const std::string& budget, const loom::PrunedEvaluation& r) {
      std::printf("| %s | %s | %.3f | %.1f KiB | %.3f× | %.0f |\n", model.c_str(), budget.c_str(), r.loss / ln2,
                  r.peak_bytes / 1024, r.peak_bytes / ref.peak_bytes, double(all.numel() - all.size(0)) / r.seconds);
      std::fflush(stdout);
    };
    line("plain", std::to_string(context) + " (all)", ref);
    std::vector<std::string> summary;
    for (const auto& [name, ck] : models) {
      // The uncached evaluation of the same windows, as `loom eval` computes it: decoding with a
      // cache at the whole context must give the same bits.
      const double check = loom::evaluate_language_model(ck.model, corpus.val, context, windows) / ln2;
      int64_t smallest = -1;
      double smallest_ratio = 0;
      for (int64_t div = 1; div <= 32; div *= 2) {
        const int64_t k = context / div;
        const loom::PrunedEvaluation r = decode(ck, all, {k});
        if (div == 1 && std::abs(r.loss / ln2 - check) > 1e-3)
          std::fprintf(stderr, "warning: %s: cached decoding gives %.4f bits, the uncached evaluation %.4f\n", name.c_str(),
                       r.loss / ln2, check);
        line(name, std::to_string(k) + (div == 1 ? " (all)" : " (1/" + std::to_string(div) + ")"), r);
        if (r.loss <= ref.loss) smallest = k, smallest_ratio = ref.peak_bytes / r.peak_bytes;
      }
      summary.push_back(name + ": uncached evaluation " + std::to_string(check).substr(0, 5) + " bits/char; " +
                        (smallest > 0 ? "smallest budget no worse than plain " + std::to_string(smallest) + " (" +
                                            std::to_string(smallest_ratio).substr(0, 4) + "× less KV cache)"
                                      : "no budget as good as plain"));
      // Budgets chosen on the search windows: for the plain model's bits there, and for 0.01 bits
      // above this model's unpruned bits there.
      const double plain_there = decode(base, search, {}).loss;
      const double own_there = decode(ck, search, {}).loss;
      for (const auto& [target_name, target] :
           std::vector<std::pair<std::string, double>>{{"≤ plain", plain_there}, {"≤ unpruned + 0.01", own_there + 0.01 * ln2}}) {
        if (target < own_there) continue;  // the unpruned model itself misses it
        for (bool per_layer : {true, false}) {
          const auto start = std::chrono::steady_clock::now();
          const loom::BudgetChoice c = loom::choose_selective_budgets(*ck.model.transformer, search, target, per_layer, batch);
          const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
          line(name, (per_layer ? list(c.budgets) : std::to_string(c.budgets[0])) + " (chosen, " +
                         (per_layer ? "per layer" : "one for all") + ", " + target_name + ")",
               decode(ck, all, c.budgets));
          summary.push_back(name + ", " + target_name + " (" + std::to_string(target / ln2).substr(0, 5) + " bits on the search windows), " +
                            (per_layer ? "per layer " : "one for all ") + list(c.budgets) + ": " +
                            std::to_string(c.evaluations) + " evaluations of " + std::to_string(search_windows) +
                            " windows in " + std::to_string(seconds).substr(0, 5) + " s");
        }
      }
    }
    std::printf("\n");
    for (const std::string& s : summary) std::printf("%s\n", s.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loom-pruning-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
