// The training loop: the loss falls, the files it writes, and a run split in
// two by a checkpoint gives exactly the losses of an uninterrupted run.
#include "helpers.h"

#include <loom/loom.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

using namespace loom;

namespace {
const char* kConfig = R"({"wrapper": "TransformerWrapper", "num_tokens": 256, "max_seq_len": 32,
  "attn_layers": {"type": "Decoder", "dim": 16, "depth": 1, "heads": 2, "attn_dim_head": 8, "ff_mult": 2,
                  "attn_dropout": 0.1}})";

TextCorpus toy_corpus() {
  std::string text;
  for (int i = 0; i < 300; ++i) text += "the cat sat on the mat. ";
  std::ofstream("loom_toy_corpus.txt") << text;
  TextCorpus c = load_text_corpus("loom_toy_corpus.txt", 0.1);
  std::filesystem::remove("loom_toy_corpus.txt");
  return c;
}

// (step, loss) and (step, val_loss) lines of metrics.jsonl, without timings.
std::vector<std::string> losses(const std::string& dir) {
  std::ifstream in(dir + "/metrics.jsonl");
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    j.erase("tokens_per_s");
    out.push_back(j.dump());
  }
  return out;
}

TrainConfig toy_config(const std::string& dir) {
  return TrainConfig{.steps = 12, .batch_size = 4, .seq_len = 16, .lr = 3e-3, .min_lr = 3e-4, .warmup_steps = 2,
                     .eval_every = 4, .eval_batches = 1, .checkpoint_every = 5, .log_every = 1, .seed = 3,
                     .out_dir = dir, .quiet = true};
}
}  // namespace

TEST_CASE("Training: the loss falls, metrics, plot and checkpoint are written, a resumed run repeats the losses") {
  TextCorpus corpus = toy_corpus();
  const std::string a = "loom_run_a", b = "loom_run_b";
  std::filesystem::remove_all(a), std::filesystem::remove_all(b);

  manual_seed(1);
  LoadedModel m1 = model_from_json(kConfig);
  TrainResult r1 = train_language_model(m1, kConfig, corpus, toy_config(a));
  CHECK(r1.step == 12);
  std::vector<std::string> full = losses(a);
  REQUIRE(full.size() == 12 + 3);  // a train line per step, a held-out line every 4 steps
  auto first = nlohmann::json::parse(full[0]), last = nlohmann::json::parse(full[full.size() - 2]);
  CHECK(last["loss"].get<double>() < first["loss"].get<double>());
  CHECK(std::filesystem::exists(a + "/loss.svg"));
  Checkpoint ck = load_checkpoint(a);
  CHECK(ck.step == 12);
  CHECK(ck.model.transformer->config.num_tokens == 256);

  // The same run, stopped after 7 steps and resumed from its checkpoint.
  manual_seed(1);
  LoadedModel m2 = model_from_json(kConfig);
  TrainConfig part = toy_config(b);
  part.stop_after = 7;
  CHECK(train_language_model(m2, kConfig, corpus, part).step == 7);
  manual_seed(99);  // a fresh process: different initial weights, overwritten by the checkpoint
  LoadedModel m3 = model_from_json(kConfig);
  TrainResult r3 = train_language_model(m3, kConfig, corpus, toy_config(b), /*resume=*/true);
  CHECK(r3.step == 12);
  CHECK(losses(b) == full);
  std::filesystem::remove_all(a), std::filesystem::remove_all(b);
}

TEST_CASE("Training: 1, 2 and 8 threads reach the same held-out loss (within 1e-3 nats), each run repeatable" *
          doctest::test_suite("thread-sweep")) {
  // Products big enough that oneDNN threads them (and may split their sums
  // differently for each thread count), so the runs differ in the last bits
  // but must not drift apart.
  const char* config = R"({"wrapper": "TransformerWrapper", "num_tokens": 256, "max_seq_len": 32,
    "attn_layers": {"type": "Decoder", "dim": 64, "depth": 2, "heads": 4, "attn_dim_head": 16, "ff_mult": 4,
                    "rotary_pos_emb": true}})";
  TextCorpus corpus = toy_corpus();
  auto run = [&](int threads, const std::string& dir) {
    WithThreads with(threads);
    std::filesystem::remove_all(dir);
    manual_seed(5);
    LoadedModel m = model_from_json(config);
    TrainConfig tc{.steps = 30, .batch_size = 8, .seq_len = 32, .lr = 3e-3, .min_lr = 3e-4, .warmup_steps = 5,
                   .eval_every = 30, .eval_batches = 4, .checkpoint_every = 1000, .log_every = 10, .seed = 3,
                   .out_dir = dir, .quiet = true};
    TrainResult r = train_language_model(m, config, corpus, tc);
    std::filesystem::remove_all(dir);
    return r;
  };
  double one_thread = 0;
  for (int threads : kThreadCounts) {
    CAPTURE(threads);
    const TrainResult a = run(threads, "loom_threads_a"), b = run(threads, "loom_threads_b");
    CHECK(a.val_loss == b.val_loss);  // same thread count: same bits
    if (threads == 1) one_thread = a.val_loss;
    CHECK(a.val_loss < 3.0);  // it learned something: untrained is ln 256 = 5.5
    CHECK(std::abs(a.val_loss - one_thread) < 1e-3);
  }
}
