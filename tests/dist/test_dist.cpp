// loom::dist (tests/CMakeLists.txt runs these in order):
//   dist.reference         one process: the reference run, batch 8
//   dist.mpirun_np2        `mpirun -np 2`: collectives, the bucketed gradient
//                          reduction, and `train_language_model` on 2 ranks x
//                          batch 4 against the reference; a 2-rank checkpoint
//                          resumed with 2 ranks
//   dist.cli_np2           `mpirun -np 2 loom train`, batch 4 (no checks of its own)
//   dist.resume_one_rank   one process: the 2-rank checkpoint resumed with
//                          grad_accum 2, and the CLI's run, against the reference
// Every comparison is with the reference run of one process, loss by loss,
// to 1e-5 relative. The model has no dropout (with dropout each rank draws
// its own masks).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <loom/loom.h>
#include <loom/core/io.h>
#include <loom/train/dist.h>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "../helpers.h"

using namespace loom;
namespace fs = std::filesystem;

int main(int argc, char** argv) {
  dist::init(argc, argv);
  doctest::Context context(argc, argv);
  const int rc = context.run();
  // One rank's failure fails the job (mpirun returns the worst exit code).
  return rc;
}

namespace {
// The runs live in the test's working folder (build/tests/dist_runs).
const std::string kRuns = "dist_runs", kCorpus = kRuns + "/corpus.txt";

std::string config_text() { return read_file(LOOM_DIST_TOY_CONFIG, "test"); }

// As `loom train` does it: the initial weights from the seed, then the run.
TrainResult train(const std::string& dir, int64_t batch, int64_t accum, int64_t stop_after = 0, bool resume = false,
                  int64_t steps = 12) {
  const TrainConfig tc{.steps = steps, .batch_size = batch, .seq_len = 16, .grad_accum = accum, .lr = 3e-3,
                       .min_lr = 3e-4, .warmup_steps = 2, .eval_every = 4, .eval_batches = 1,
                       .checkpoint_every = 5, .log_every = 1, .seed = 3, .out_dir = dir, .stop_after = stop_after,
                       .quiet = true};
  manual_seed(tc.seed);
  LoadedModel model = model_from_json(config_text());
  return train_language_model(model, config_text(), load_text_corpus(kCorpus), tc, resume);
}

// (step, what, value) of every loss in metrics.jsonl.
struct Logged {
  int64_t step;
  std::string what;
  double value;
};
std::vector<Logged> losses(const std::string& dir) {
  std::ifstream in(dir + "/metrics.jsonl");
  std::vector<Logged> out;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    for (const char* key : {"loss", "val_loss"})
      if (j.contains(key)) out.push_back({j["step"].get<int64_t>(), key, j[key].get<double>()});
  }
  return out;
}

// The run in `dir` logged the reference's losses, each to 1e-5 relative.
void check_same_losses(const std::string& dir) {
  const std::vector<Logged> want = losses(kRuns + "/ref"), got = losses(dir);
  REQUIRE(want.size() == 12 + 3);  // a train loss per step, a held-out loss every 4
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    CAPTURE(dir);
    CAPTURE(want[i].step);
    CAPTURE(want[i].what);
    CHECK(got[i].step == want[i].step);
    CHECK(got[i].what == want[i].what);
    CHECK(std::abs(got[i].value - want[i].value) <= 1e-5 * std::abs(want[i].value));
  }
}


// Rank 0's run folder, and another for every other rank, which must stay empty.
std::string run_dir(const std::string& name) {
  return kRuns + "/" + name + (dist::is_main() ? "" : "_rank" + std::to_string(dist::rank()));
}
}  // namespace

// ---- one process, before the MPI runs -------------------------------------------------------

TEST_CASE("dist: the reference run, one process with batch 8" * doctest::test_suite("one-rank-first")) {
  REQUIRE(dist::world_size() == 1);
  fs::remove_all(kRuns);
  fs::create_directories(kRuns);
  std::string text;
  for (int i = 0; i < 300; ++i) text += "the cat sat on the mat " + std::to_string(i % 7) + ". ";
  std::ofstream(kCorpus) << text;
  const TrainResult r = train(kRuns + "/ref", 8, 1);
  CHECK(r.step == 12);
  const std::vector<Logged> l = losses(kRuns + "/ref");
  REQUIRE(l.size() == 15);
  CHECK(l[l.size() - 2].value < l[0].value);  // it learns
}

// ---- two ranks -------------------------------------------------------------------------------

TEST_CASE("dist: two ranks, started by mpirun" * doctest::test_suite("np2")) {
  REQUIRE(dist::built_with_mpi());
  CHECK(dist::world_size() == 2);
  CHECK(dist::rank() >= 0);
  CHECK(dist::rank() < 2);
  CHECK(dist::is_main() == (dist::rank() == 0));
}

TEST_CASE("dist: broadcast gives every rank rank 0's tensors, all_reduce_mean the mean" * doctest::test_suite("np2")) {
  Tensor a = full({5}, double(dist::rank() + 10)), b = arange(0, 7, kFloat32) * float(dist::rank() + 1);
  dist::broadcast({a, b});
  CHECK(a.to_vector<float>() == std::vector<float>(5, 10.0f));
  CHECK(b.to_vector<float>() == arange(0, 7, kFloat32).to_vector<float>());
  Tensor c = full({3}, double(dist::rank() + 1));  // 1 and 2
  dist::all_reduce_mean({c});
  CHECK(c.to_vector<float>() == std::vector<float>(3, 1.5f));
  CHECK(dist::all_reduce_mean(double(dist::rank())) == 0.5);
  CHECK(dist::all_reduce_max(dist::rank() == 1 ? 15 : 0) == 15);
  std::string s = dist::is_main() ? std::string("rank 0's bytes\0!", 16) : "";
  dist::broadcast(s);
  CHECK(s == std::string("rank 0's bytes\0!", 16));
}

TEST_CASE("dist: GradReducer averages gradients in buckets during the backward, as one rank with the whole batch" *
          doctest::test_suite("np2")) {
  // A small MLP; the global batch is 8 rows, each rank takes 4.
  Generator g(7);
  nn::Linear unused(2, 2), l1(6, 16), l2(16, 3);  // `unused` first: its buckets are the last ones
  std::vector<Tensor> params;
  for (nn::Linear* l : {&unused, &l1, &l2})
    for (auto& [name, p] : l->named_parameters()) params.push_back(p);
  for (const Tensor& p : params) {  // rank-dependent start, then rank 0's everywhere
    NoGradGuard ng;
    p.detach().copy_(randn(p.sizes(), g) * float(dist::rank() + 1));
  }
  dist::broadcast(params);
  Generator data(11);
  Tensor x = randn({8, 6}, data), y = randn({8, 3}, data);
  auto loss_of = [&](const Tensor& xs, const Tensor& ys) { return mse_loss(l2.forward(gelu(l1.forward(xs))), ys); };

  // Reference: the whole batch on this rank alone.
  loss_of(x, y).backward();
  std::vector<std::vector<float>> want;
  for (const Tensor& p : params) want.push_back(p.grad().defined() ? p.grad().to_vector<float>() : std::vector<float>());
  for (const Tensor& p : params) p.mutable_grad() = Tensor();

  // Each rank its half; buckets of 4 bytes, so every parameter is a bucket of its own.
  dist::GradReducer reducer(params, 4);
  CHECK(reducer.buckets() == params.size());
  reducer.begin();
  const int64_t r = dist::rank();
  loss_of(x.narrow(0, 4 * r, 4), y.narrow(0, 4 * r, 4)).backward();
  CHECK(reducer.started_during_backward() == 4);  // l1's and l2's buckets went out before finish()
  reducer.finish();
  for (size_t i = 0; i < params.size(); ++i) {
    CAPTURE(i);
    if (want[i].empty()) {  // `unused`: no gradient, as on one process (the optimizer skips it)
      CHECK(!params[i].grad().defined());
      continue;
    }
    std::vector<double> ref(want[i].begin(), want[i].end());
    CHECK(close_or_same(params[i].grad().to_vector<float>(), ref, 1e-6, 1e-5));
  }
}

TEST_CASE("dist: 2 ranks x batch 4 (or 2 x 2 micro-batches) train as one process with batch 8; only rank 0 writes" *
          doctest::test_suite("np2")) {
  const std::string dir = run_dir("np2");
  fs::remove_all(dir);
  const TrainResult r = train(dir, 4, 1);
  CHECK(r.step == 12);
  // The ranks agree on what they report, and end with the same weights.
  CHECK(dist::all_reduce_max(r.val_loss == dist::all_reduce_mean(r.val_loss) ? 0 : 1) == 0);
  if (dist::is_main()) {
    check_same_losses(dir);
    for (const char* file : {"checkpoint.safetensors", "metrics.jsonl", "loss.svg"}) CHECK(fs::exists(dir + "/" + file));
  } else {
    CHECK(!fs::exists(dir));
  }
  // The same batch as 2 ranks x 2 micro-batches of 2: only the last backward reduces.
  const std::string accum = run_dir("np2_accum");
  fs::remove_all(accum);
  CHECK(train(accum, 2, 2).step == 12);
  if (dist::is_main()) check_same_losses(accum);
}

TEST_CASE("dist: a 2-rank checkpoint resumes exactly with 2 ranks, and refuses another global batch" *
          doctest::test_suite("np2")) {
  const std::string dir = run_dir("np2_resumed");
  fs::remove_all(dir);
  CHECK(train(dir, 4, 1, /*stop_after=*/7).step == 7);
  if (dist::is_main()) {  // for dist.resume_one_rank
    fs::remove_all(kRuns + "/np2_step7");
    fs::copy(dir, kRuns + "/np2_step7");
  }
  // Rank 0 reads the checkpoint and sends it: rank 1's folder does not exist.
  CHECK(error_of([&] { train(dir, 2, 1, 0, /*resume=*/true); }) ==
        "train: cannot resume from '" + dir + "/checkpoint.safetensors': it was written with a global "
        "batch of 8 sequences of 16 tokens per step, this run has 4 of 16 (2 ranks x grad_accum 1 x batch_size 2); "
        "keep seq_len, and ranks x grad_accum x batch_size at 8 (with fewer ranks, a larger --grad-accum)");
  CHECK(train(dir, 4, 1, 0, /*resume=*/true).step == 12);
  if (dist::is_main()) check_same_losses(dir);
  else CHECK(!fs::exists(dir));
}

TEST_CASE("dist: a failed write on rank 0 stops every rank with its error" * doctest::test_suite("np2")) {
  // The out folder is a file on rank 0: it cannot create it; rank 1 must not wait for it.
  const std::string dir = kRuns + "/np2_not_a_folder";
  if (dist::is_main()) std::ofstream(dir) << "a file";
  dist::barrier();
  const std::string e = error_of([&] { train(dir, 4, 1); });
  CHECK(e.rfind("train: cannot create the folder 'dist_runs/np2_not_a_folder'", 0) == 0);
}

TEST_CASE("dist: a SIGTERM to rank 1 alone stops both ranks after the same step, with rank 0's checkpoint" *
          doctest::test_suite("np2")) {
  const std::string dir = run_dir("np2_sigterm");
  fs::remove_all(dir);
  std::thread signaller;
  if (dist::rank() == 1)
    signaller = std::thread([] {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      kill(getpid(), SIGTERM);
    });
  const TrainResult r = train(dir, 4, 1, 0, false, /*steps=*/20000);
  if (signaller.joinable()) signaller.join();
  CHECK(r.interrupted);
  CHECK(r.signal == SIGTERM);
  CHECK(r.step < 20000);
  CHECK(dist::all_reduce_max(int(r.step)) == int(r.step));  // the same step on both
  CHECK(dist::all_reduce_max(-int(r.step)) == -int(r.step));
  if (dist::is_main()) CHECK(load_checkpoint(dir).step == r.step);
  else CHECK(!fs::exists(dir));
}

// ---- one process, after the MPI runs ---------------------------------------------------------

TEST_CASE("dist: a 2-rank checkpoint resumes exactly with one process and grad_accum 2" *
          doctest::test_suite("one-rank-after")) {
  REQUIRE(dist::world_size() == 1);
  const std::string dir = kRuns + "/one_rank_resumed";
  fs::remove_all(dir);
  fs::copy(kRuns + "/np2_step7", dir);
  CHECK(error_of([&] { train(dir, 4, 1, 0, /*resume=*/true); }) ==
        "train: cannot resume from '" + dir + "/checkpoint.safetensors': it was written with a global batch of 8 "
        "sequences of 16 tokens per step, this run has 4 of 16 (1 rank x grad_accum 1 x batch_size 4); keep "
        "seq_len, and ranks x grad_accum x batch_size at 8 (with fewer ranks, a larger --grad-accum)");
  CHECK(train(dir, 4, 2, 0, /*resume=*/true).step == 12);
  check_same_losses(dir);
}

TEST_CASE("dist: `mpirun -np 2 loom train --batch-size 4` trained as one process with batch 8" *
          doctest::test_suite("one-rank-after")) {
  check_same_losses(kRuns + "/cli");
  CHECK(fs::exists(kRuns + "/cli/checkpoint.safetensors"));
  CHECK(fs::exists(kRuns + "/cli/loss.svg"));
}
