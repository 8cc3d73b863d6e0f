// `loom train` left alone: SIGTERM saves like Ctrl-C, kill -9 loses no
// logged line, a full disk (simulated with LOOM_TEST_DISK_BYTES, see
// core/io.h) stops the run with errno's text and leaves every earlier file as
// it was, a NaN loss exits 1 without touching the checkpoint, and bad flags
// are one-line errors.
#include "helpers.h"

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include <loom/core/io.h>

namespace {

struct Run {
  int code;
  std::string out, err;
};

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Runs `prefix loom args` through the shell; `tag` keeps the output files of
// tests running at the same time apart.
Run loom_run(const std::string& tag, const std::string& args, const std::string& prefix = "") {
  const std::string out = "loom_robust_" + tag + ".out", err = "loom_robust_" + tag + ".err";
  const std::string cmd = prefix + " " + std::string(LOOM_CLI) + " " + args + " > " + out + " 2> " + err;
  const int status = std::system(cmd.c_str());
  Run r{WEXITSTATUS(status), slurp(out), slurp(err)};
  std::remove(out.c_str());
  std::remove(err.c_str());
  return r;
}

// A small corpus and model, written under `tag`.
std::string setup(const std::string& tag) {
  std::string text;
  for (int i = 0; i < 200; ++i) text += "to be or not to be, that is the question. ";
  std::ofstream("loom_robust_" + tag + ".txt") << text;
  std::ofstream("loom_robust_" + tag + ".json")
      << R"({"wrapper": "TransformerWrapper", "num_tokens": 256, "max_seq_len": 64,
             "attn_layers": {"type": "Decoder", "dim": 16, "depth": 1, "heads": 2, "attn_dim_head": 8}})";
  const std::string dir = "loom_robust_" + tag + "_run";
  std::filesystem::remove_all(dir);
  return "train --config loom_robust_" + tag + ".json --data loom_robust_" + tag + ".txt --out " + dir +
         " --batch-size 2 --seq-len 16 --eval-batches 1";
}

void cleanup(const std::string& tag) {
  std::filesystem::remove_all("loom_robust_" + tag + "_run");
  std::remove(("loom_robust_" + tag + ".txt").c_str());
  std::remove(("loom_robust_" + tag + ".json").c_str());
}

}  // namespace

TEST_CASE("loom train: SIGTERM saves a checkpoint and exits 143") {
  const std::string train = setup("term"), dir = "loom_robust_term_run";
  Run r = loom_run("term", train + " --steps 1000000 --eval-every 1000000 --checkpoint-every 1000000",
                   "timeout --preserve-status -s TERM 2");
  CHECK(r.code == 143);
  std::smatch m;
  REQUIRE(std::regex_search(r.out, m, std::regex("interrupted by SIGTERM: checkpoint saved at step (\\d+)")));
  CHECK(loom::load_checkpoint(dir).step == std::stoll(m[1]));
  CHECK(loom::load_checkpoint(dir).step > 0);
  cleanup("term");
}

TEST_CASE("loom train: while it runs, SIGINT and SIGTERM are blocked in every thread (oneDNN's kernels never get one)") {
  // A signal delivered to a thread inside a oneDNN JIT sgemm kernel corrupts
  // the heap (train/trainer.cpp, StopSignals): loom takes them in a thread
  // of its own with sigtimedwait, so all its other threads have them blocked
  // (the kernel lifts the block of the one in sigtimedwait while it waits).
  const std::string train = setup("mask"), dir = "loom_robust_mask_run";
  std::ofstream("loom_robust_mask.sh")
      << std::string(LOOM_CLI) << " " << train
      << " --steps 1000000 --log-every 1 --eval-every 1000000 --checkpoint-every 1000000 > /dev/null 2>&1 &\n"
         "pid=$!\n"
         "for i in $(seq 400); do [ -s "
      << dir
      << "/metrics.jsonl ] && break; sleep 0.05; done\n"
         "for t in /proc/$pid/task/*; do echo \"$(cat $t/comm) $(grep '^SigBlk' $t/status | cut -f2)\"; done"
         " > loom_robust_mask.tasks\n"
         "kill -INT $pid\n"
         "wait $pid\n"
         "echo $? > loom_robust_mask.rc\n";
  REQUIRE(std::system("bash loom_robust_mask.sh") == 0);
  CHECK(slurp("loom_robust_mask.rc") == "130\n");
  std::istringstream tasks(slurp("loom_robust_mask.tasks"));
  int threads = 0, waiters = 0;
  for (std::string name, mask; tasks >> name >> mask; ++threads) {
    CAPTURE(name);
    CAPTURE(mask);
    if (name == "loom-signals") {
      ++waiters;
      continue;
    }
    const unsigned long long blocked = std::stoull(mask, nullptr, 16);
    CHECK((blocked >> (SIGINT - 1) & 1) == 1);
    CHECK((blocked >> (SIGTERM - 1) & 1) == 1);
  }
  CHECK(waiters == 1);
  CHECK(threads >= 2);
  CHECK(loom::load_checkpoint(dir).step > 0);
  for (const char* f : {"loom_robust_mask.sh", "loom_robust_mask.tasks", "loom_robust_mask.rc"}) std::remove(f);
  cleanup("mask");
}

TEST_CASE("loom train: after kill -9 metrics.jsonl holds every step logged, in whole lines") {
  const std::string train = setup("kill"), dir = "loom_robust_kill_run";
  Run r = loom_run("kill", train + " --steps 1000000 --log-every 1 --eval-every 1000000 --checkpoint-every 1000000",
                   "timeout -s KILL 3");
  CHECK(r.code == 137);
  const std::string metrics = slurp(dir + "/metrics.jsonl");
  REQUIRE(!metrics.empty());
  CHECK(metrics.back() == '\n');  // no half line: each line is one write(2), straight to the file
  std::istringstream in(metrics);
  int64_t expected = 1;
  for (std::string line; std::getline(in, line); ++expected) {
    CAPTURE(line);
    const auto j = nlohmann::json::parse(line, nullptr, false);
    REQUIRE(!j.is_discarded());
    CHECK(j["step"].get<int64_t>() == expected);  // consecutive: none lost in a buffer
  }
  CHECK(expected > 1);
  cleanup("kill");
}

TEST_CASE("loom train: a full disk stops the run with errno's text, removes the .tmp, keeps every earlier file") {
  const std::string train = setup("disk"), dir = "loom_robust_disk_run";
  const std::string ckpt = dir + "/checkpoint.safetensors", metrics = dir + "/metrics.jsonl", plot = dir + "/loss.svg";
  const std::string periods = " --eval-every 10 --log-every 10 --checkpoint-every 10";
  REQUIRE(loom_run("disk", train + periods + " --steps 20").code == 0);
  const std::string ckpt0 = slurp(ckpt), metrics0 = slurp(metrics), plot0 = slurp(plot);
  REQUIRE(ckpt0.size() > 100000);
  REQUIRE(plot0.size() > 1000);
  auto no_tmp = [&] {
    for (const auto& e : std::filesystem::directory_iterator(dir))
      if (e.path().extension() == ".tmp") return false;
    return true;
  };
  auto full_disk = [](int bytes) { return "LOOM_TEST_DISK_BYTES=" + std::to_string(bytes); };

  // 40 bytes: the metrics line of step 30 is cut off half-way; the partial line is removed again.
  Run a = loom_run("disk", train + periods + " --steps 40 --resume", full_disk(40));
  CHECK(a.code == 1);
  CHECK(a.err == "loom train: train: writing '" + metrics + "' failed: No space left on device\n");
  CHECK(slurp(metrics) == metrics0);
  CHECK(slurp(ckpt) == ckpt0);
  CHECK(no_tmp());

  // 1000 bytes: the step-30 lines fit, the plot does not: the old plot stays (it used to become 0 bytes).
  Run b = loom_run("disk", train + periods + " --steps 40 --resume", full_disk(1000));
  CHECK(b.code == 1);
  CHECK(b.err == "loom train: train: writing '" + plot + ".tmp' failed: No space left on device\n");
  CHECK(slurp(plot) == plot0);
  CHECK(slurp(ckpt) == ckpt0);
  const std::string metrics1 = slurp(metrics);
  CHECK(metrics1.rfind(metrics0, 0) == 0);
  CHECK(metrics1.size() > metrics0.size());
  CHECK(no_tmp());

  // Resuming on a full disk: dropping the lines after step 20 is a rewrite, which fails and keeps the file.
  Run c = loom_run("disk", train + periods + " --steps 40 --resume", full_disk(0));
  CHECK(c.code == 1);
  CHECK(c.err == "loom train: train: writing '" + metrics + ".tmp' failed: No space left on device\n");
  CHECK(slurp(metrics) == metrics1);
  CHECK(no_tmp());

  // Room for the metrics, not for the checkpoint of step 25.
  Run d = loom_run("disk", train + " --eval-every 10 --log-every 10 --checkpoint-every 5 --steps 40 --resume",
                   full_disk(20000));
  CHECK(d.code == 1);
  CHECK(d.err == "loom train: save_safetensors: writing '" + ckpt + ".tmp' failed: No space left on device\n");
  CHECK(slurp(ckpt) == ckpt0);
  CHECK(slurp(plot) == plot0);
  CHECK(no_tmp());

  // With room again, the run resumes from the step-20 checkpoint and finishes.
  Run e = loom_run("disk", train + periods + " --steps 40 --resume");
  CHECK(e.code == 0);
  CHECK(loom::load_checkpoint(dir).step == 40);
  std::vector<int64_t> train_steps;
  std::istringstream in(slurp(metrics));
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) train_steps.push_back(j["step"].get<int64_t>());
  }
  CHECK(train_steps == std::vector<int64_t>{10, 20, 30, 40});
  cleanup("disk");
}

TEST_CASE("loom train: a NaN loss exits 1 naming the step, bad flags and a folder as --config are clear errors") {
  const std::string train = setup("nan"), dir = "loom_robust_nan_run";
  Run nan = loom_run("nan", train + " --steps 50 --lr 1e30 --warmup 0 --checkpoint-every 1");
  CHECK(nan.code == 1);
  CHECK(nan.err.rfind("loom train: train: the ", 0) == 0);
  CHECK(nan.err.find(" at step 2; stopped without saving (the checkpoint of step 1 in '" + dir +
                     "/checkpoint.safetensors' is kept)") != std::string::npos);
  CHECK(loom::load_checkpoint(dir).step == 1);
  CHECK(slurp(dir + "/metrics.jsonl").find("null") == std::string::npos);

  Run inf = loom_run("nan", train + " --lr inf");
  CHECK(inf.code == 2);
  CHECK(inf.err == "loom train: --lr must be a finite number >= 0, got 'inf' (try 'loom train --help')\n");
  Run zero = loom_run("nan", train + " --checkpoint-every 0");
  CHECK(zero.code == 2);
  CHECK(zero.err == "loom train: --checkpoint-every must be an integer >= 1, got '0' (try 'loom train --help')\n");
  Run big = loom_run("nan", train + " --steps 99999999999999999999");
  CHECK(big.code == 2);
  CHECK(big.err ==
        "loom train: --steps must be an integer >= 1, got '99999999999999999999' (try 'loom train --help')\n");
  Run long_seq = loom_run("nan", train + " --seq-len 100000");
  CHECK(long_seq.code == 1);
  CHECK(long_seq.err == "loom train: train: seq_len 100000 exceeds the model's max_seq_len 64\n");
  std::filesystem::create_directories("loom_robust_nan_config_dir");
  Run folder = loom_run("nan", "train --config loom_robust_nan_config_dir --data loom_robust_nan.txt --out " + dir);
  CHECK(folder.code == 1);
  CHECK(folder.err == "loom train: config: 'loom_robust_nan_config_dir' is a directory, not a file loom can read\n");
  std::filesystem::remove_all("loom_robust_nan_config_dir");
  cleanup("nan");
}
