// Models from JSON configs written with x-transformers' keyword names
// (models/config.cpp):
//
//   {"wrapper": "TransformerWrapper", "num_tokens": 256, "max_seq_len": 1024,
//    "attn_layers": {"type": "Decoder", "dim": 512, "depth": 6, "heads": 8,
//                    "rotary_pos_emb": true, "attn_dim_head": 64, "ff_glu": true}}
//
// ContinuousTransformerWrapper and ViTransformerWrapper take "attn_layers"
// the same way; XTransformer takes x-transformers' flat enc_* / dec_* keys
// ({"wrapper": "XTransformer", "dim": 256, "enc_num_tokens": 10, "enc_depth": 2,
// "dec_num_tokens": 10, "dec_rotary_pos_emb": true, ...}).
//
// Layer options use x-transformers' prefixes: attn_* for every attention
// layer, cross_attn_dim_context for cross-attention, ff_* for feedforwards.
// An unknown key is an error naming it and the closest valid key; a bad
// value names the key and the allowed range.
#pragma once

#include <memory>
#include <string>

#include <loom/models/continuous.h>
#include <loom/models/transformer_wrapper.h>
#include <loom/models/vit.h>
#include <loom/models/xtransformer.h>

namespace loom {

// One of the wrappers, as the config's "wrapper" key names it.
struct LoadedModel {
  std::string wrapper;  // TransformerWrapper, ContinuousTransformerWrapper, ViTransformerWrapper or XTransformer
  std::shared_ptr<TransformerWrapper> transformer;
  std::shared_ptr<ContinuousTransformerWrapper> continuous;
  std::shared_ptr<ViTransformerWrapper> vit;
  std::shared_ptr<XTransformer> xtransformer;
  nn::Module& module() const;
};

// Builds from JSON text; `source` names it in error messages.
LoadedModel model_from_json(const std::string& text, const std::string& source = "config");
LoadedModel model_from_config_file(const std::string& path);

// The config parts on their own.
nn::AttentionLayersConfig attention_layers_config_from_json(const std::string& text);

}  // namespace loom
