// libFuzzer target for JSON model configs (models/config.cpp): parses the
// input and builds the model it describes. Seeds: corpus/config; run.sh adds
// a dictionary of the config keys.
#include <loom/loom.h>

#include <nlohmann/json.hpp>

#include "fuzz_input.h"

namespace {
// Thousands of layers of width 1 are a valid config that takes seconds to
// build, not a bug; the memory limit bounds every other size.
bool too_deep(const nlohmann::json& j) {
  if (j.is_object())
    for (auto it = j.begin(); it != j.end(); ++it) {
      const std::string& k = it.key();
      const bool depth = k == "depth" || k == "enc_depth" || k == "dec_depth";
      if (depth && it.value().is_number() && it.value().get<double>() > 64) return true;
      if (k == "custom_layers" && it.value().is_array() && it.value().size() > 256) return true;
      if (too_deep(it.value())) return true;
    }
  return false;
}
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  loom_fuzz::limit_memory();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto j = nlohmann::json::parse(data, data + size, nullptr, false);
  if (!j.is_discarded() && too_deep(j)) return 0;
  try {
    const loom::LoadedModel m = loom::model_from_config_file(loom_fuzz::write_input(data, size, ".json"));
    volatile int64_t sink = m.module().num_parameters();
    (void)sink;
  } catch (const loom::Error&) {
  }
  return 0;
}
