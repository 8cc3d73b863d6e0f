// The training loop: the loss falls, the files it writes, and a run split in
// two by a checkpoint gives exactly the losses of an uninterrupted run.
#include "helpers.h"

#include <loom/loom.h>
#include <loom/core/io.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <omp.h>

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

namespace {
// Runs StepThreads over `steps` steps whose time is step_time(step, threads);
// returns the thread count of every step.
template <class F>
std::vector<int> adapt(StepThreads& st, int64_t steps, F step_time) {
  std::vector<int> used;
  for (int64_t s = 0; s < steps; ++s) {
    used.push_back(st.next());
    st.record(step_time(s, used.back()));
  }
  return used;
}
int64_t count_of(const std::vector<int>& v, int value, size_t from = 0) {
  return std::count(v.begin() + std::ptrdiff_t(from), v.end(), value);
}
}  // namespace

TEST_CASE("StepThreads keeps all threads when they are fastest and drops to fewer when a core is busy") {
  // Idle 2-core machine: 2 threads take 1.0, 1 thread 1.6. The count stays
  // at 2; the probes at 1 thread are a small share of the steps.
  StepThreads idle(2);
  std::vector<int> used = adapt(idle, 2000, [](int64_t, int t) { return t == 2 ? 1.0 : 1.6; });
  CHECK(idle.current() == 2);
  CHECK(idle.switches() == 0);
  CHECK(count_of(used, 1) > 0);                         // it did look
  CHECK(count_of(used, 1) <= 3 * 10);  // probes of 3 steps after 4, 8, ..., 512 steps, then every 512
  CHECK(count_of(used, 1, 1000) <= 3 * 2);

  // A busy core: 2 threads collapse to 10 per step. The first probe finds 1
  // thread faster (even though the first step at a new count costs 3x) and
  // the run stays there, looking back at 2 ever more rarely, even when one
  // step of a probe at 2 is lucky.
  StepThreads busy(2);
  int last = 2;
  used = adapt(busy, 2000, [&](int64_t, int t) {
    const bool first = t != last;
    last = t;
    if (t == 1) return first ? 3 * 1.6 : 1.6;
    return first ? 0.5 : 10.0;  // back at 2 threads, the first step happens to be fast
  });
  CHECK(busy.current() == 1);
  CHECK(busy.switches() == 1);
  const auto switched = std::find(used.begin(), used.end(), 1) - used.begin();
  CHECK(switched <= 8);
  CHECK(count_of(used, 2, size_t(switched) + 3) <= 3 * 8);  // after 16, 32, ..., 512, then every 512

  // The other process ends at step 300: the run goes back to 2 threads.
  StepThreads comes_and_goes(2);
  int64_t back = -1;  // the step after which it runs at 2 threads again
  for (int64_t s = 0; s < 1500; ++s) {
    const int t = comes_and_goes.next();
    comes_and_goes.record(t == 2 ? (s < 300 ? 10.0 : 1.0) : 1.6);
    if (s == 299) CHECK(comes_and_goes.current() == 1);
    if (back < 0 && s >= 300 && comes_and_goes.current() == 2) back = s;
  }
  CHECK(comes_and_goes.current() == 2);
  CHECK(comes_and_goes.switches() == 2);
  CHECK(back >= 300);
  CHECK(back <= 300 + 512 + 3);  // within the longest wait between probes

  // 8 threads on a machine where one of 8 cores is busy: 8 collapse, 4 are
  // the fastest (halving: 8, 4, 2, 1).
  StepThreads eight(8);
  adapt(eight, 3000, [](int64_t, int t) { return t == 8 ? 5.0 : 1.0 / t; });
  CHECK(eight.current() == 4);

  // One thread: nothing to choose.
  StepThreads one(1);
  used = adapt(one, 100, [](int64_t, int) { return 1.0; });
  CHECK(count_of(used, 1) == 100);
}

TEST_CASE("Training with adapt_threads: losses as with fixed threads (within 1e-4), and the threads are restored") {
  // The probes run some steps at fewer threads; only oneDNN's summation
  // order may differ then, in the last bits.
  const char* config = R"({"wrapper": "TransformerWrapper", "num_tokens": 256, "max_seq_len": 32,
    "attn_layers": {"type": "Decoder", "dim": 64, "depth": 2, "heads": 4, "attn_dim_head": 16, "ff_mult": 4}})";
  TextCorpus corpus = toy_corpus();
  auto run = [&](bool adapt) {
    std::filesystem::remove_all("loom_adapt");
    manual_seed(5);
    LoadedModel m = model_from_json(config);
    TrainConfig tc{.steps = 40, .batch_size = 8, .seq_len = 32, .lr = 3e-3, .min_lr = 3e-4, .warmup_steps = 5,
                   .eval_every = 40, .eval_batches = 4, .checkpoint_every = 1000, .log_every = 10, .seed = 3,
                   .out_dir = "loom_adapt", .quiet = true, .adapt_threads = adapt};
    TrainResult r = train_language_model(m, config, corpus, tc);
    std::filesystem::remove_all("loom_adapt");
    return r;
  };
  const int max_threads = omp_get_max_threads();
  const TrainResult fixed = run(false), adapted = run(true);
  CHECK(omp_get_max_threads() == max_threads);
  CHECK(fixed.threads == max_threads);
  CHECK(adapted.threads >= 1);
  CHECK(adapted.threads <= max_threads);
  CHECK(adapted.val_loss < 3.0);
  CHECK(std::abs(adapted.val_loss - fixed.val_loss) < 1e-4);
}

namespace {
std::string file_bytes(const std::string& path) { return read_file(path, "test"); }


// Rewrites a checkpoint with `edit` applied to its tensors and metadata.
template <class F>
void edit_checkpoint(const std::string& path, F edit) {
  SafetensorsFile f = load_safetensors(path);
  edit(f);
  save_safetensors(path, f.tensors, f.metadata);
}
}  // namespace

TEST_CASE("Training: a NaN loss stops the run before the update, the last good checkpoint stays as it was") {
  TextCorpus corpus = toy_corpus();
  const std::string dir = "loom_nan_run";
  std::filesystem::remove_all(dir);
  manual_seed(1);
  LoadedModel m = model_from_json(kConfig);
  TrainConfig tc = toy_config(dir);
  tc.steps = 4, tc.checkpoint_every = 4;
  train_language_model(m, kConfig, corpus, tc);
  const std::string good = file_bytes(dir + "/checkpoint.safetensors"), metrics = file_bytes(dir + "/metrics.jsonl");
  const std::string plot = file_bytes(dir + "/loss.svg");

  // An absurd learning rate: step 5 (good weights) is finite and its update
  // blows the weights up, so the loss of step 6 is not finite.
  tc.steps = 20, tc.lr = 1e30, tc.min_lr = 1e30, tc.warmup_steps = 0;
  const std::string e = error_of([&] { train_language_model(m, kConfig, corpus, tc, /*resume=*/true); });
  CHECK(e.rfind("train: the loss is ", 0) == 0);
  CHECK(e.find(" at step 6; stopped without saving (the checkpoint of step 4 in "
               "'loom_nan_run/checkpoint.safetensors' is kept)") != std::string::npos);
  CHECK(file_bytes(dir + "/checkpoint.safetensors") == good);
  CHECK(file_bytes(dir + "/loss.svg") == plot);
  // Step 5 was logged; nothing non-finite ("null") ever was.
  const std::string after = file_bytes(dir + "/metrics.jsonl");
  CHECK(after.rfind(metrics, 0) == 0);
  CHECK(after.find("\"step\":5") != std::string::npos);
  CHECK(after.find("\"step\":6") == std::string::npos);
  CHECK(after.find("null") == std::string::npos);
  CHECK(load_checkpoint(dir).step == 4);
  std::filesystem::remove_all(dir);
}

TEST_CASE("Training: skip_nonfinite skips non-finite steps without touching weights or moments, and stops after 10") {
  TextCorpus corpus = toy_corpus();
  const std::string dir = "loom_skip_run";
  std::filesystem::remove_all(dir);
  manual_seed(1);
  LoadedModel m = model_from_json(kConfig);
  TrainConfig tc = toy_config(dir);
  tc.steps = 30, tc.lr = 1e30, tc.min_lr = 1e30, tc.warmup_steps = 0, tc.checkpoint_every = 1, tc.eval_every = 100;
  tc.stop_after = 1;  // step 1: finite loss, an update that makes every later loss non-finite
  train_language_model(m, kConfig, corpus, tc);
  const SafetensorsFile after_step_1 = load_safetensors(dir + "/checkpoint.safetensors");

  tc.stop_after = 0, tc.skip_nonfinite = true;
  const std::string e = error_of([&] { train_language_model(m, kConfig, corpus, tc, /*resume=*/true); });
  CHECK(e.rfind("train: 10 steps in a row had a non-finite loss or gradient norm (the last at step 11: ", 0) == 0);
  // Steps 2..10 were skipped and checkpointed: the same weights and moments as after step 1.
  const SafetensorsFile last = load_safetensors(dir + "/checkpoint.safetensors");
  CHECK(last.metadata.at("step") == "10");
  REQUIRE(last.tensors.size() == after_step_1.tensors.size());
  for (size_t i = 0; i < last.tensors.size(); ++i) {
    CAPTURE(last.tensors[i].first);
    CHECK(last.tensors[i].first == after_step_1.tensors[i].first);
    if (last.tensors[i].second.dtype() == kFloat32)
      CHECK(last.tensors[i].second.to_vector<float>() == after_step_1.tensors[i].second.to_vector<float>());
    else
      CHECK(last.tensors[i].second.to_vector<int64_t>() == after_step_1.tensors[i].second.to_vector<int64_t>());
  }
  // Each skipped step has its line, with the reason and no loss.
  std::ifstream in(dir + "/metrics.jsonl");
  std::vector<int64_t> skipped;
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("skipped")) {
      skipped.push_back(j["step"].get<int64_t>());
      CHECK(j["skipped"].get<std::string>().rfind("the ", 0) == 0);
      CHECK(!j.contains("loss"));
    }
  }
  CHECK(skipped == std::vector<int64_t>{2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
  std::filesystem::remove_all(dir);
}

TEST_CASE("Training in bf16: losses close to fp32 but not equal, kept in the checkpoint, a resume keeps it") {
  TextCorpus corpus = toy_corpus();
  const std::string a = "loom_run_fp32", b = "loom_run_bf16", c = "loom_run_bf16_split";
  for (const auto& d : {a, b, c}) std::filesystem::remove_all(d);
  auto run = [&](const std::string& dir, std::optional<Precision> precision, int64_t stop_after = 0,
                 bool resume = false) {
    manual_seed(1);
    LoadedModel m = model_from_json(kConfig);
    TrainConfig tc = toy_config(dir);
    tc.precision = precision, tc.stop_after = stop_after;
    return train_language_model(m, kConfig, corpus, tc, resume);
  };
  CHECK(run(a, std::nullopt).precision == Precision::Float32);
  CHECK(run(b, Precision::BFloat16).precision == Precision::BFloat16);
  CHECK(load_checkpoint(a).precision == Precision::Float32);
  CHECK(load_checkpoint(b).precision == Precision::BFloat16);
  // Per logged step: within 2 % of fp32 (bfloat16 keeps 8 significant bits;
  // over 12 steps the runs drift apart only that far), and not the same
  // numbers, so autocast was on.
  const std::vector<std::string> la = losses(a), lb = losses(b);
  REQUIRE(la.size() == lb.size());
  double largest = 0;
  for (size_t i = 0; i < la.size(); ++i) {
    auto ja = nlohmann::json::parse(la[i]), jb = nlohmann::json::parse(lb[i]);
    const char* key = ja.contains("loss") ? "loss" : "val_loss";
    const double x = ja[key].get<double>(), y = jb[key].get<double>();
    CAPTURE(i);
    CHECK(std::abs(y - x) <= 0.02 * x);
    largest = std::max(largest, std::abs(y - x));
  }
  MESSAGE("largest |bf16 - fp32| loss difference over 12 steps: ", largest, " nats");
  CHECK(largest > 1e-5);
  // Stopped after 7 steps and resumed without saying the precision: the
  // checkpoint's bf16 is kept, and the losses are those of the whole run.
  run(c, Precision::BFloat16, 7);
  CHECK(run(c, std::nullopt, 0, true).precision == Precision::BFloat16);
  CHECK(losses(c) == lb);
  // Resuming it in fp32 would give neither run's numbers.
  CHECK(error_of([&] { run(c, Precision::Float32, 0, true); }) ==
        "train: cannot resume from 'loom_run_bf16_split/checkpoint.safetensors' with precision fp32: the run trains in "
        "bf16 (leave the precision out, --precision, to keep it, or train into a new --out)");
  // A bad value in the metadata names the key.
  edit_checkpoint(c + "/checkpoint.safetensors", [](SafetensorsFile& f) { f.metadata["precision"] = "fp16"; });
  CHECK(error_of([&] { load_checkpoint(c); }) ==
        "load_checkpoint: 'loom_run_bf16_split/checkpoint.safetensors': metadata 'precision' must be fp32 or bf16, "
        "got 'fp16'");
  // A checkpoint from before bfloat16 has no precision: it ran in fp32.
  edit_checkpoint(c + "/checkpoint.safetensors", [](SafetensorsFile& f) { f.metadata.erase("precision"); });
  CHECK(load_checkpoint(c).precision == Precision::Float32);
  CHECK_THROWS_WITH_AS(parse_precision("half", "--precision"), "--precision must be fp32 or bf16, got 'half'", Error);
  for (const auto& d : {a, b, c}) std::filesystem::remove_all(d);
}

TEST_CASE("Resume refuses another config, an incomplete optimizer state and bad metadata, each naming what") {
  TextCorpus corpus = toy_corpus();
  const std::string dir = "loom_resume_checks", ckpt = dir + "/checkpoint.safetensors";
  std::filesystem::remove_all(dir);
  manual_seed(1);
  LoadedModel m = model_from_json(kConfig);
  TrainConfig tc = toy_config(dir);
  tc.stop_after = 2;
  train_language_model(m, kConfig, corpus, tc);
  const std::string good = file_bytes(ckpt);
  tc.stop_after = 1;
  auto resume_with = [&](const std::string& config) {
    return error_of([&] {
      LoadedModel other = model_from_json(config);
      train_language_model(other, config, corpus, tc, /*resume=*/true);
    });
  };

  // Another config: the first key that differs is named.
  std::string deeper = kConfig;
  deeper.replace(deeper.find("\"depth\": 1"), 10, "\"depth\": 2");
  CHECK(resume_with(deeper) ==
        "train: cannot resume from 'loom_resume_checks/checkpoint.safetensors' with a different config: "
        "'attn_layers.depth' is 1 in the checkpoint's config, 2 in this one (resume with the config the run started "
        "with, or train into a new --out)");
  std::string more = kConfig;
  more.replace(more.find("\"ff_mult\": 2"), 12, "\"ff_mult\": 2, \"ff_glu\": true");
  CHECK(resume_with(more).find("'attn_layers.ff_glu' is true in this config and absent from the checkpoint's") !=
        std::string::npos);
  // The same config written differently (key order, spacing, 2 vs 2.0) is the same config.
  const std::string same = R"({"attn_layers": {"attn_dropout": 0.1, "ff_mult": 2.0, "attn_dim_head": 8, "heads": 2,
    "depth": 1, "dim": 16, "type": "Decoder"}, "max_seq_len": 32, "num_tokens": 256, "wrapper": "TransformerWrapper"})";
  CHECK(resume_with(same) == "no error");
  CHECK(load_checkpoint(dir).step == 3);

  // A missing optimizer moment used to be re-initialised without a word.
  write_file_atomic(ckpt, good, "test");
  edit_checkpoint(ckpt, [](SafetensorsFile& f) {
    std::erase_if(f.tensors, [](const auto& t) { return t.first == "optim.to_logits.weight.exp_avg_sq"; });
  });
  CHECK(resume_with(kConfig) ==
        "Optimizer::load_state_dict: the state has no 'to_logits.weight.exp_avg_sq' (incomplete optimizer state)");

  // Metadata: "-5", "abc" and a missing data_seed used to give no error, "stoll" and "map::at".
  auto with_metadata = [&](const std::string& key, const char* value, bool loads = false) {
    write_file_atomic(ckpt, good, "test");
    edit_checkpoint(ckpt, [&](SafetensorsFile& f) {
      if (value) f.metadata[key] = value;
      else f.metadata.erase(key);
    });
    const std::string resumed = resume_with(kConfig);
    // One reader for both: `loom generate` and `loom eval` get the same message.
    CHECK(error_of([&] { load_checkpoint(dir); }) == (loads ? "no error" : resumed));
    return resumed;
  };
  CHECK(with_metadata("step", "-5") ==
        "load_checkpoint: 'loom_resume_checks/checkpoint.safetensors': metadata 'step' must be an integer in [0, "
        "9223372036854775807], got \"-5\"");
  CHECK(with_metadata("step", "abc") ==
        "load_checkpoint: 'loom_resume_checks/checkpoint.safetensors': metadata 'step' must be an integer in [0, "
        "9223372036854775807], got \"abc\"");
  CHECK(with_metadata("step", "12abc").find("got \"12abc\"") != std::string::npos);
  CHECK(with_metadata("data_seed", nullptr) ==
        "load_checkpoint: 'loom_resume_checks/checkpoint.safetensors' has no 'data_seed' in its metadata (not a "
        "complete loom training checkpoint)");
  CHECK(with_metadata("config", "{\"wrapper\": ").rfind(
            "loom_resume_checks/checkpoint.safetensors (config): not valid JSON: ", 0) == 0);
  // The batch: a checkpoint without it cannot be resumed exactly (generate and eval still read it).
  CHECK(with_metadata("global_batch", nullptr, /*loads=*/true) ==
        "train: cannot resume from 'loom_resume_checks/checkpoint.safetensors': it does not record its global batch "
        "(written by a loom before data-parallel training); train into a new --out");
  CHECK(with_metadata("global_batch", "eight") ==
        "load_checkpoint: 'loom_resume_checks/checkpoint.safetensors': metadata 'global_batch' must be an integer in "
        "[0, 9223372036854775807], got \"eight\"");
  write_file_atomic(ckpt, good, "test");
  tc.batch_size = 2;
  CHECK(resume_with(kConfig) ==
        "train: cannot resume from 'loom_resume_checks/checkpoint.safetensors': it was written with a global batch of "
        "4 sequences of 16 tokens per step, this run has 2 of 16 (1 rank x grad_accum 1 x batch_size 2); keep "
        "seq_len, and ranks x grad_accum x batch_size at 4 (with fewer ranks, a larger --grad-accum)");
  tc.batch_size = 1, tc.grad_accum = 4;  // the same 4 sequences per step: accepted
  CHECK(resume_with(kConfig) == "no error");
  tc.batch_size = 4, tc.grad_accum = 1;
  // The optimizer cannot be ahead of the run.
  CHECK(with_metadata("step", "1", /*loads=*/true) ==
        "train: 'loom_resume_checks/checkpoint.safetensors' holds an optimizer at step 2 but a run at step 1");
  std::filesystem::remove_all(dir);
}

TEST_CASE("Training settings that would divide by zero or overflow are errors naming the setting") {
  TextCorpus corpus = toy_corpus();
  LoadedModel m = model_from_json(kConfig);
  auto train_with = [&](auto edit) {
    TrainConfig tc = toy_config("loom_bad_settings");
    edit(tc);
    return error_of([&] { train_language_model(m, kConfig, corpus, tc); });
  };
  CHECK(train_with([](TrainConfig& c) { c.checkpoint_every = 0; }) == "train: checkpoint_every must be >= 1, got 0");
  CHECK(train_with([](TrainConfig& c) { c.eval_every = 0; }) == "train: eval_every must be >= 1, got 0");
  CHECK(train_with([](TrainConfig& c) { c.log_every = -1; }) == "train: log_every must be >= 1, got -1");
  CHECK(train_with([](TrainConfig& c) { c.lr = INFINITY; }) == "train: lr must be a finite number >= 0, got inf");
  CHECK(train_with([](TrainConfig& c) { c.seq_len = 30, c.batch_size = INT64_MAX; }) ==
        "train: batch_size x seq_len (9223372036854775807 x 30) overflows int64");
  CHECK(train_with([](TrainConfig& c) { c.seq_len = 20000; }) ==
        "train: seq_len 20000 exceeds the model's max_seq_len 32");
  CHECK(!std::filesystem::exists("loom_bad_settings"));
}
