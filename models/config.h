// Models from JSON configs written with x-transformers' keyword names
// (models/config.cpp):
//
//   {"wrapper": "TransformerWrapper", "num_tokens": 256, "max_seq_len": 1024,
//    "attn_layers": {"type": "Decoder", "dim": 512, "depth": 6, "heads": 8,
//                    "rotary_pos_emb": true, "attn_dim_head": 64, "ff_glu": true}}
//
// Layer options use x-transformers' prefixes: attn_* for every attention
// layer, cross_attn_dim_context for cross-attention, ff_* for feedforwards.
// An unknown key is an error naming it and the closest valid key; a bad
// value names the key and the allowed range.
#pragma once

#include <memory>
#include <string>

#include <loom/models/transformer_wrapper.h>

namespace loom {

struct LoadedModel {
  std::string wrapper;  // "TransformerWrapper"
  std::shared_ptr<TransformerWrapper> transformer;
  nn::Module& module() const { return *transformer; }
};

// Builds from JSON text; `source` names it in error messages.
LoadedModel model_from_json(const std::string& text, const std::string& source = "config");
LoadedModel model_from_config_file(const std::string& path);

// The config parts on their own.
nn::AttentionLayersConfig attention_layers_config_from_json(const std::string& text);

}  // namespace loom
