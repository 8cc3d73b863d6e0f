// The `loom` program: train, generate and eval end to end on a small text,
// and one-line errors with non-zero exits for bad flags and files.
#include "helpers.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace {
struct Run {
  int code;
  std::string out, err;
};

// `files`: the prefix of the files stdout and stderr go through.
Run run(const std::string& args, const std::string& files = "loom_cmd") {
  const std::string out = files + "_out.txt", err = files + "_err.txt";
  const std::string cmd = std::string(LOOM_CLI) + " " + args + " > " + out + " 2> " + err;
  const int status = std::system(cmd.c_str());
  auto slurp = [](const std::string& p) {
    std::ifstream in(p);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  };
  Run r{WEXITSTATUS(status), slurp(out), slurp(err)};
  std::remove(out.c_str());
  std::remove(err.c_str());
  return r;
}
}  // namespace

TEST_CASE("loom train, generate and eval on a small text") {
  std::string text;
  for (int i = 0; i < 200; ++i) text += "to be or not to be, that is the question. ";
  std::ofstream("loom_cli_corpus.txt") << text;
  std::ofstream("loom_cli_config.json") << R"({"wrapper": "TransformerWrapper", "num_tokens": 256, "max_seq_len": 64,
    "attn_layers": {"type": "Decoder", "dim": 16, "depth": 1, "heads": 2, "attn_dim_head": 8}})";
  std::filesystem::remove_all("loom_cli_run");
  Run t = run("train --config loom_cli_config.json --data loom_cli_corpus.txt --out loom_cli_run --steps 30 "
              "--batch-size 4 --seq-len 32 --lr 1e-2 --warmup 5 --eval-every 30 --eval-batches 1");
  CHECK(t.code == 0);
  CHECK(t.out.find("held-out loss") != std::string::npos);
  CHECK(t.out.find("done: step 30") != std::string::npos);
  CHECK(std::filesystem::exists("loom_cli_run/checkpoint.safetensors"));
  CHECK(std::filesystem::exists("loom_cli_run/metrics.jsonl"));
  CHECK(std::filesystem::exists("loom_cli_run/loss.svg"));
  Run g = run("generate --checkpoint loom_cli_run --prompt \"to be\" --max-tokens 20 --temperature 0");
  CHECK(g.code == 0);
  CHECK(g.out.rfind("to be", 0) == 0);
  CHECK(g.out.size() == 5 + 20 + 1);  // the prompt, 20 bytes, a newline
  Run e = run("eval --checkpoint loom_cli_run --data loom_cli_corpus.txt --seq-len 32 --windows 4");
  CHECK(e.code == 0);
  CHECK(e.out.find("bits per character") != std::string::npos);

  // bf16: train, generate, eval and forward under autocast; a bad value names the flag.
  std::filesystem::remove_all("loom_cli_bf16");
  Run tb = run("train --config loom_cli_config.json --data loom_cli_corpus.txt --out loom_cli_bf16 --steps 30 "
               "--batch-size 4 --seq-len 32 --lr 1e-2 --warmup 5 --eval-every 30 --eval-batches 1 --precision bf16");
  CHECK(tb.code == 0);
  CHECK(tb.out.find("ms per step (bf16)") != std::string::npos);
  CHECK(loom::load_checkpoint("loom_cli_bf16").precision == loom::Precision::BFloat16);
  Run gb = run("generate --checkpoint loom_cli_bf16 --prompt \"to be\" --max-tokens 20 --temperature 0 --precision bf16");
  CHECK(gb.code == 0);
  CHECK(gb.out.size() == 5 + 20 + 1);
  Run eb = run("eval --checkpoint loom_cli_bf16 --data loom_cli_corpus.txt --seq-len 32 --windows 4 --precision bf16");
  Run ef = run("eval --checkpoint loom_cli_bf16 --data loom_cli_corpus.txt --seq-len 32 --windows 4");
  CHECK(eb.code == 0);
  CHECK(eb.out.find("bf16)") != std::string::npos);
  CHECK(ef.out.find("fp32)") != std::string::npos);
  CHECK(eb.out != ef.out);  // the bf16 evaluation really rounds
  // loom forward: the bf16 logits are close to the fp32 ones and not the same.
  loom::write_npy("loom_cli_ids.npy", loom::tensor(std::vector<int64_t>{116, 111, 32, 98, 101}).view({1, 5}));
  CHECK(run("forward --weights loom_cli_bf16 --input loom_cli_ids.npy --output loom_cli_f32.npy").code == 0);
  CHECK(run("forward --weights loom_cli_bf16 --input loom_cli_ids.npy --output loom_cli_b16.npy --precision bf16")
            .code == 0);
  {
    const std::vector<float> a = loom::read_npy("loom_cli_f32.npy").to_vector<float>(),
                             b = loom::read_npy("loom_cli_b16.npy").to_vector<float>();
    REQUIRE(a.size() == b.size());
    double diff = 0, size = 0;
    for (size_t i = 0; i < a.size(); ++i) diff = std::max(diff, double(std::abs(a[i] - b[i]))), size = std::max(size, double(std::abs(a[i])));
    CHECK(diff > 0);
    CHECK(diff <= 0.05 * size);
  }
  for (const char* f : {"loom_cli_ids.npy", "loom_cli_f32.npy", "loom_cli_b16.npy"}) std::remove(f);
  Run bad_precision = run("train --config loom_cli_config.json --data loom_cli_corpus.txt --out loom_cli_bf16 "
                          "--precision fp16");
  CHECK(bad_precision.code == 2);
  CHECK(bad_precision.err == "loom train: --precision must be fp32 or bf16, got 'fp16' (try 'loom train --help')\n");
  CHECK(run("generate --checkpoint loom_cli_bf16 --prompt hi --precision 16").err ==
        "loom generate: --precision must be fp32 or bf16, got '16' (try 'loom generate --help')\n");
  std::filesystem::remove_all("loom_cli_bf16");

  // Ctrl-C: SIGINT after 2 s stops a long run with a checkpoint and exit code 130.
  std::filesystem::remove_all("loom_cli_run");
  const std::string long_run = std::string("timeout --preserve-status -s INT 2 ") + LOOM_CLI +
                               " train --config loom_cli_config.json --data loom_cli_corpus.txt --out loom_cli_run"
                               " --steps 1000000 --batch-size 2 --seq-len 16 --eval-every 1000000"
                               " --checkpoint-every 1000000 > loom_cmd_out.txt 2>&1";
  const int status = std::system(long_run.c_str());
  CHECK(WEXITSTATUS(status) == 130);
  CHECK(std::filesystem::exists("loom_cli_run/checkpoint.safetensors"));
  {
    std::ifstream in("loom_cmd_out.txt");
    std::stringstream s;
    s << in.rdbuf();
    CHECK(s.str().find("interrupted by SIGINT: checkpoint saved at step") != std::string::npos);
  }
  std::remove("loom_cmd_out.txt");

  // Errors: one line, non-zero exit.
  Run bad_flag = run("train --config loom_cli_config.json --data loom_cli_corpus.txt --out loom_cli_run --stepz 3");
  CHECK(bad_flag.code == 2);
  CHECK(bad_flag.err == "loom train: unknown flag '--stepz' (try 'loom train --help')\n");
  Run bad_value = run("train --config loom_cli_config.json --data loom_cli_corpus.txt --out loom_cli_run --steps -3");
  CHECK(bad_value.code == 2);
  CHECK(bad_value.err == "loom train: --steps must be an integer >= 1, got '-3' (try 'loom train --help')\n");
  Run missing = run("generate --checkpoint nowhere --prompt hi");
  CHECK(missing.code == 1);
  CHECK(missing.err == "loom generate: load_safetensors: cannot open 'nowhere': No such file or directory\n");
  Run no_data = run("train --config loom_cli_config.json --data /nonexistent --out loom_cli_run");
  CHECK(no_data.code == 1);
  CHECK(no_data.err == "loom train: load_text_corpus: '/nonexistent' does not exist\n");
  CHECK(run("--help").code == 0);
  CHECK(run("frobnicate").code == 2);
  std::filesystem::remove_all("loom_cli_run");
  std::remove("loom_cli_corpus.txt");
  std::remove("loom_cli_config.json");
}

TEST_CASE("loom generate --selective-budget and loom budgets: pruned decoding of a selective model, bad values named") {
  // Its own file names: ctest may run the other case of this file at the same time.
  auto run_here = [](const std::string& args) { return run(args, "loom_sel"); };
  std::string text;
  for (int i = 0; i < 200; ++i) text += "to be or not to be, that is the question. ";
  std::ofstream("loom_sel_corpus.txt") << text;
  std::ofstream("loom_sel_config.json") << R"({"wrapper": "TransformerWrapper", "num_tokens": 256, "max_seq_len": 64,
    "attn_layers": {"type": "Decoder", "dim": 16, "depth": 2, "heads": 2, "attn_dim_head": 8, "rotary_pos_emb": true,
    "attn_selective": true}})";
  std::ofstream("loom_sel_plain.json") << R"({"wrapper": "TransformerWrapper", "num_tokens": 256, "max_seq_len": 64,
    "attn_layers": {"type": "Decoder", "dim": 16, "depth": 1, "heads": 2, "attn_dim_head": 8}})";
  std::filesystem::remove_all("loom_sel_run");
  std::filesystem::remove_all("loom_sel_plain_run");
  const std::string train = " --data loom_sel_corpus.txt --steps 20 --batch-size 4 --seq-len 32 --lr 1e-2 --warmup 5 "
                            "--eval-every 20 --eval-batches 1";
  REQUIRE(run_here("train --config loom_sel_config.json --out loom_sel_run" + train).code == 0);
  REQUIRE(run_here("train --config loom_sel_plain.json --out loom_sel_plain_run" + train).code == 0);
  const std::string gen = "generate --checkpoint loom_sel_run --prompt \"to be\" --max-tokens 30 --temperature 0";
  Run whole = run_here(gen), roomy = run_here(gen + " --selective-budget 64"), tight = run_here(gen + " --selective-budget 4");
  CHECK(whole.code == 0);
  CHECK(roomy.code == 0);
  CHECK(tight.code == 0);
  CHECK(roomy.out == whole.out);  // a budget >= the sequence evicts nothing
  CHECK(tight.out.size() == whole.out.size());
  Run negative = run_here(gen + " --selective-budget -1");
  CHECK(negative.code == 2);
  CHECK(negative.err ==
        "loom generate: --selective-budget must be an integer >= 0, got '-1' (try 'loom generate --help')\n");
  // One budget per self-attention layer (depth 2); one value holds for both.
  Run both = run_here(gen + " --selective-budget 4,4"), mixed = run_here(gen + " --selective-budget 64,4");
  CHECK(both.code == 0);
  CHECK(both.out == tight.out);
  CHECK(mixed.code == 0);
  CHECK(mixed.out.size() == whole.out.size());
  Run three = run_here(gen + " --selective-budget 4,4,4");
  CHECK(three.code == 2);
  CHECK(three.err == "loom generate: --selective-budget needs 1 value or 2 (one per self-attention layer), got 3: "
                     "'4,4,4' (try 'loom generate --help')\n");
  Run bad_item = run_here(gen + " --selective-budget 4,x");
  CHECK(bad_item.code == 2);
  CHECK(bad_item.err == "loom generate: --selective-budget must be an integer >= 0, got 'x' (try 'loom generate --help')\n");
  // loom budgets: per-layer budgets for a target, printed as --selective-budget takes them.
  const std::string budgets = "budgets --checkpoint loom_sel_run --data loom_sel_corpus.txt --seq-len 32 --windows 4";
  Run chosen = run_here(budgets + " --tolerance 0.05");
  CHECK(chosen.code == 0);
  CHECK(chosen.out.find("per layer:   --selective-budget ") != std::string::npos);
  CHECK(chosen.out.find("one for all: --selective-budget ") != std::string::npos);
  Run neither = run_here(budgets);
  CHECK(neither.code == 2);
  CHECK(neither.err == "loom budgets: give one of --tolerance and --max-bits (try 'loom budgets --help')\n");
  Run too_low = run_here(budgets + " --max-bits 0.001");
  CHECK(too_low.code == 1);
  CHECK(too_low.err.find("bits per character are above --max-bits") != std::string::npos);
  Run not_selective = run_here("budgets --checkpoint loom_sel_plain_run --data loom_sel_corpus.txt --max-bits 8");
  CHECK(not_selective.code == 2);
  CHECK(not_selective.err == "loom budgets: --checkpoint needs a TransformerWrapper trained with selective attention "
                             "(try 'loom budgets --help')\n");
  Run plain = run_here("generate --checkpoint loom_sel_plain_run --prompt hi --selective-budget 4");
  CHECK(plain.code == 2);
  CHECK(plain.err == "loom generate: --selective-budget needs a checkpoint trained with selective attention (try 'loom "
                     "generate --help')\n");
  std::filesystem::remove_all("loom_sel_run");
  std::filesystem::remove_all("loom_sel_plain_run");
  for (const char* f : {"loom_sel_corpus.txt", "loom_sel_config.json", "loom_sel_plain.json"}) std::remove(f);
}
