// JSON text to nlohmann::json with duplicate keys refused: nlohmann keeps the
// last of two equal keys without a word, which hides a typo in a config
// and lets a safetensors header list a tensor twice. Used by every loom
// reader of JSON (configs, safetensors headers, checkpoint metadata).
// Not part of <loom/loom.h>: it needs nlohmann/json.hpp.
#pragma once

#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include <loom/core/error.h>

namespace loom {

// Throws loom::Error "<source>: not valid JSON: ..." or
// "<source>: the key 'attn_layers.heads' appears twice".
template <class Json = nlohmann::json>
Json parse_json(const std::string& text, const std::string& source) {
  struct Object {
    std::set<std::string> keys;
    std::string last;  // the key whose value is being read, for the path
  };
  std::vector<Object> open;  // the objects being read, outermost first
  auto on_event = [&](int, typename Json::parse_event_t event, Json& parsed) {
    using E = typename Json::parse_event_t;
    if (event == E::object_start) open.emplace_back();
    if (event == E::object_end) open.pop_back();
    if (event == E::key) {
      const std::string key = parsed.template get<std::string>();
      if (!open.back().keys.insert(key).second) {
        std::string path;
        for (size_t i = 0; i + 1 < open.size(); ++i) path += open[i].last + ".";
        fail(source, ": the key '", path + key, "' appears twice");
      }
      open.back().last = key;
    }
    return true;
  };
  try {
    return Json::parse(text, on_event);
  } catch (const nlohmann::json::exception& e) {
    fail(source, ": not valid JSON: ", e.what());
  }
}

}  // namespace loom
