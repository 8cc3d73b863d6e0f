// Parity with PyTorch: models built in plain PyTorch following
// x-transformers' semantics by scripts/make_parity_fixtures.py (run outside
// CI), saved as config + safetensors + .npy. loom builds each from its JSON
// config, loads the weights by name, and must reproduce the outputs (and,
// for five of them, the parameter gradients) to 1e-4 relative.
#include "helpers.h"

#include <loom/loom.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

using namespace loom;

namespace {
const std::string kRoot = std::string(LOOM_TEST_FIXTURES) + "/parity/";

std::vector<double> as_double(const Tensor& t) {
  std::vector<float> v = t.contiguous().to_vector<float>();
  return std::vector<double>(v.begin(), v.end());
}

Tensor optional_npy(const std::string& dir, const char* name) {
  const std::string path = dir + name + ".npy";
  return std::filesystem::exists(path) ? read_npy(path) : Tensor();
}

struct Fixture {
  LoadedModel model;
  Tensor tokens, expected;
  WrapperInputs in;
};

// The model's forward on the fixture's inputs.
Tensor run(const Fixture& f) {
  if (f.model.vit) return f.model.vit->forward(f.tokens);
  return f.model.transformer->forward(f.tokens, f.in);
}

Fixture load(const std::string& name) {
  const std::string dir = kRoot + name + "/";
  Fixture f{model_from_config_file(dir + "config.json"), read_npy(dir + "input.npy"), read_npy(dir + "output.npy"), {}};
  f.model.module().load_state_dict(load_safetensors(dir + "weights.safetensors").tensors);
  f.model.module().eval();
  f.in.mask = optional_npy(dir, "mask");
  f.in.context = optional_npy(dir, "context");
  f.in.context_mask = optional_npy(dir, "context_mask");
  f.in.layer_pos = optional_npy(dir, "pos");  // ALiBi at irregular positions: the layers' own
  return f;
}
}  // namespace

TEST_CASE("parity with PyTorch: outputs of every fixture model") {
  for (const char* name : {"decoder_rotary", "encoder_alibi_positions", "decoder_rel_pos_cross",
                           "encoder_cross_dim_context", "decoder_selective", "vit", "decoder_residual_attn"}) {
    const std::string fixture = name;
    CAPTURE(fixture);
    Fixture f = load(name);
    NoGradGuard no_grad;
    Tensor out = run(f);
    REQUIRE(out.sizes() == f.expected.sizes());
    CHECK(close_or_same(out.to_vector<float>(), as_double(f.expected), 1e-5, 1e-4));
  }
}

TEST_CASE("parity with PyTorch: parameter gradients") {
  for (const char* name : {"decoder_rotary", "decoder_rel_pos_cross", "decoder_selective", "vit", "decoder_residual_attn"}) {
    const std::string fixture = name;
    CAPTURE(fixture);
    Fixture f = load(name);
    Tensor weights = read_npy(kRoot + name + "/loss_weights.npy");
    (run(f) * weights).sum().backward();
    SafetensorsFile grads = load_safetensors(kRoot + name + "/grads.safetensors");
    nn::NamedTensors params = f.model.module().named_parameters();
    size_t compared = 0;
    for (const auto& entry : grads.tensors) {
      const std::string& pname = entry.first;
      const Tensor& expected = entry.second;
      CAPTURE(pname);
      auto it = std::find_if(params.begin(), params.end(), [&](const auto& p) { return p.first == pname; });
      REQUIRE(it != params.end());
      REQUIRE(it->second.grad().defined());
      // A gradient element sums many terms of both signs, so its float32 error
      // follows the size of the terms, not of the sum: the absolute tolerance
      // is 1e-5 of the tensor's largest gradient, the relative one 1e-4.
      std::vector<double> want = as_double(expected);
      double largest = 0;
      for (double v : want) largest = std::max(largest, std::abs(v));
      CHECK(close_or_same(it->second.grad().to_vector<float>(), want, std::max(1e-5 * largest, 1e-7), 1e-4));
      ++compared;
    }
    CHECK(compared == params.size());  // every parameter has a reference gradient
  }
}

TEST_CASE("`loom forward` reproduces a fixture from the command line") {
  const std::string dir = kRoot + "encoder_cross_dim_context/";
  const std::string out = "loom_cli_output.npy";
  const std::string cmd = std::string(LOOM_CLI) + " forward --config " + dir + "config.json --weights " + dir +
                          "weights.safetensors --input " + dir + "input.npy --mask " + dir + "mask.npy --context " +
                          dir + "context.npy --context-mask " + dir + "context_mask.npy --output " + out;
  REQUIRE(std::system(cmd.c_str()) == 0);
  CHECK(close_or_same(read_npy(out).to_vector<float>(), as_double(read_npy(dir + "output.npy")), 1e-5, 1e-4));
  std::remove(out.c_str());
  // A missing file is a one-line error and a non-zero exit.
  const std::string bad = std::string(LOOM_CLI) + " forward --config " + dir + "config.json --weights nowhere.safetensors" +
                          " --input x.npy --output y.npy 2> loom_cli_err.txt";
  CHECK(std::system(bad.c_str()) != 0);
  std::FILE* err = std::fopen("loom_cli_err.txt", "r");
  REQUIRE(err != nullptr);
  char line[512] = {0};
  CHECK(std::fgets(line, sizeof line, err) != nullptr);
  std::fclose(err);
  std::remove("loom_cli_err.txt");
  CHECK(std::string(line) == "loom forward: load_safetensors: cannot open 'nowhere.safetensors': No such file or directory\n");
}
