// The loom command line. So far one command:
//
//   loom forward --config C.json --weights W.safetensors --input in.npy --output out.npy
//                [--mask M.npy] [--context C.npy] [--context-mask CM.npy]
//                [--attn-bias B.npy] [--pos P.npy]
//
// runs one forward pass in eval mode and writes the output: how anyone checks
// loom against another implementation. Errors are one line on stderr and a
// non-zero exit code.
#include <loom/loom.h>

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <vector>
#include <map>
#include <string>

namespace {

const char* kUsage =
    "usage: loom forward --config C.json --weights W.safetensors --input in.npy --output out.npy\n"
    "                    [--mask M.npy] [--context C.npy] [--context-mask CM.npy] [--attn-bias B.npy] [--pos P.npy]\n"
    "\n"
    "Runs one forward pass of the model the config describes, in eval mode, with the weights\n"
    "loaded by name, and writes the output (logits, or embeddings) as .npy. Inputs are NumPy\n"
    ".npy files: int64 token ids (b, n) for a TransformerWrapper, float32 (b, n, dim_in) for a\n"
    "ContinuousTransformerWrapper, float32 images (b, c, h, w) for a ViTransformerWrapper; bool masks\n"
    "(True = attend); float32 context, bias, positions.\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::map<std::string, std::string> parse_flags(int argc, char** argv, int first,
                                               const std::vector<std::string>& known) {
  std::map<std::string, std::string> flags;
  for (int i = first; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") throw UsageError("");
    if (a.rfind("--", 0) != 0) throw UsageError("unexpected argument '" + a + "'");
    const std::string key = a.substr(2);
    if (std::find(known.begin(), known.end(), key) == known.end()) throw UsageError("unknown flag '" + a + "'");
    if (i + 1 >= argc) throw UsageError("flag '" + a + "' needs a value");
    flags[key] = argv[++i];
  }
  return flags;
}

int forward(int argc, char** argv) {
  auto flags = parse_flags(argc, argv, 2,
                           {"config", "weights", "input", "output", "mask", "context", "context-mask", "attn-bias", "pos"});
  for (const char* required : {"config", "weights", "input", "output"})
    if (!flags.count(required)) throw UsageError(std::string("--") + required + " is required");
  loom::LoadedModel model = loom::model_from_config_file(flags["config"]);
  model.module().load_state_dict(loom::load_safetensors(flags["weights"]).tensors);
  model.module().eval();
  loom::WrapperInputs in;
  auto optional = [&](const char* key) { return flags.count(key) ? loom::read_npy(flags[key]) : loom::Tensor(); };
  in.mask = optional("mask");
  in.context = optional("context");
  in.context_mask = optional("context-mask");
  in.attn_bias = optional("attn-bias");
  in.pos = optional("pos");
  loom::NoGradGuard no_grad;
  const loom::Tensor input = loom::read_npy(flags["input"]);
  loom::Tensor out;
  if (model.transformer) {
    out = model.transformer->forward(input, in);
  } else if (model.continuous) {
    out = model.continuous->forward(input, {.mask = in.mask, .pos = in.pos, .context = in.context,
                                            .context_mask = in.context_mask, .attn_bias = in.attn_bias});
  } else if (model.vit) {
    if (in.mask.defined() || in.context.defined() || in.context_mask.defined() || in.attn_bias.defined() || in.pos.defined())
      throw UsageError("a ViTransformerWrapper takes only --input (images)");
    out = model.vit->forward(input);
  } else {
    throw std::runtime_error("an XTransformer has no single forward pass; use its encoder or decoder config");
  }
  loom::write_npy(flags["output"], out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string command = argc > 1 ? argv[1] : "";
  try {
    if (command == "forward") return forward(argc, argv);
    if (command == "--help" || command == "-h" || command == "help") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    std::fprintf(stderr, "loom: %s (try 'loom forward --help')\n",
                 command.empty() ? "missing command" : ("unknown command '" + command + "'").c_str());
    return 2;
  } catch (const UsageError& e) {
    if (std::string(e.what()).empty()) {
      std::fputs(kUsage, stdout);
      return 0;
    }
    std::fprintf(stderr, "loom %s: %s\n%s", command.c_str(), e.what(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loom %s: %s\n", command.c_str(), e.what());
    return 1;
  }
}
