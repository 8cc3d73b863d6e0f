#include <loom/models/config.h>

#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include <loom/core/error.h>

namespace loom {

namespace {

using json = nlohmann::json;

// The edit distance between two keys, for "did you mean".
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1])});
      diag = up;
    }
  }
  return row[b.size()];
}

// Applies each key of an object through a table of setters; `where` is the
// object's path for messages ("attn_layers").
class Reader {
 public:
  Reader(std::string source, std::string where) : source_(std::move(source)), where_(std::move(where)) {}

  void integer(const std::string& key, int64_t& field, int64_t lo, int64_t hi = INT64_MAX) {
    setters_[key] = [=, this, &field](const json& v) {
      if (!v.is_number_integer() || v.get<int64_t>() < lo || v.get<int64_t>() > hi)
        bad(key, v, "an integer " + range(double(lo), double(hi), true));
      field = v.get<int64_t>();
    };
  }
  void number(const std::string& key, double& field, double lo, double hi, bool hi_open = false) {
    setters_[key] = [=, this, &field](const json& v) {
      if (!v.is_number() || v.get<double>() < lo || v.get<double>() > hi || (hi_open && v.get<double>() == hi))
        bad(key, v, "a number " + range(lo, hi, !hi_open));
      field = v.get<double>();
    };
  }
  void boolean(const std::string& key, bool& field) {
    setters_[key] = [=, this, &field](const json& v) {
      if (!v.is_boolean()) bad(key, v, "true or false");
      field = v.get<bool>();
    };
  }
  void custom(const std::string& key, std::function<void(const json&)> f) { setters_[key] = std::move(f); }

  void read(const json& obj) const {
    if (!obj.is_object()) fail(source_, ": ", where_.empty() ? "the config" : where_, " must be a JSON object");
    for (auto it = obj.begin(); it != obj.end(); ++it) {
      auto s = setters_.find(it.key());
      if (s == setters_.end()) {
        std::string best;
        size_t best_d = SIZE_MAX;
        for (const auto& [k, f] : setters_)
          if (size_t d = edit_distance(it.key(), k); d < best_d) best_d = d, best = k;
        fail(source_, ": unknown key '", path(it.key()), "' (did you mean '", path(best), "'?)");
      }
      s->second(it.value());
    }
  }

  [[noreturn]] void bad(const std::string& key, const json& v, const std::string& allowed) const {
    fail(source_, ": '", path(key), "' must be ", allowed, ", got ", v.dump());
  }
  // "attn_layers.heads"; with a prefix ending in '_' (XTransformer's enc_ / dec_) simply "enc_heads".
  std::string path(const std::string& key) const {
    if (where_.empty()) return key;
    return where_.back() == '_' ? where_ + key : where_ + "." + key;
  }

 private:
  static std::string range(double lo, double hi, bool hi_closed) {
    std::ostringstream s;
    if (hi >= double(INT64_MAX)) s << ">= " << lo;
    else s << "in [" << lo << ", " << hi << (hi_closed ? "]" : ")");
    return s.str();
  }
  std::string source_, where_;
  std::map<std::string, std::function<void(const json&)>> setters_;
};

nn::AttentionLayersConfig layers_from(const json& j, const std::string& source, const std::string& where,
                                      std::string* type_out) {
  nn::AttentionLayersConfig c;
  std::string type = "AttentionLayers";
  bool causal_given = false;
  Reader r(source, where);
  r.custom("type", [&](const json& v) {
    if (!v.is_string() || (v != "Encoder" && v != "Decoder" && v != "CrossAttender" && v != "AttentionLayers"))
      r.bad("type", v, "one of \"Encoder\", \"Decoder\", \"CrossAttender\", \"AttentionLayers\"");
    type = v.get<std::string>();
  });
  r.integer("dim", c.dim, 1);
  r.integer("depth", c.depth, 1);
  r.integer("heads", c.heads, 1);
  r.custom("causal", [&](const json& v) {
    if (!v.is_boolean()) r.bad("causal", v, "true or false");
    c.causal = v.get<bool>(), causal_given = true;
  });
  r.boolean("cross_attend", c.cross_attend);
  r.boolean("only_cross", c.only_cross);
  r.boolean("use_scalenorm", c.use_scalenorm);
  r.boolean("use_rmsnorm", c.use_rmsnorm);
  r.boolean("norm_add_unit_offset", c.norm_add_unit_offset);
  r.boolean("pre_norm", c.pre_norm);
  r.boolean("sandwich_norm", c.sandwich_norm);
  r.boolean("macaron", c.macaron);
  r.boolean("residual_attn", c.residual_attn);
  r.boolean("cross_residual_attn", c.cross_residual_attn);
  r.custom("custom_layers", [&](const json& v) {
    if (!v.is_array() || v.empty()) r.bad("custom_layers", v, "a non-empty list of \"a\", \"c\", \"f\"");
    c.custom_layers.clear();
    for (const json& e : v) {
      if (!e.is_string() || (e != "a" && e != "c" && e != "f")) r.bad("custom_layers", v, "a list of \"a\", \"c\", \"f\"");
      c.custom_layers.push_back(e.get<std::string>());
    }
  });
  r.boolean("alibi_pos_bias", c.alibi_pos_bias);
  r.integer("alibi_num_heads", c.alibi_num_heads, 1);
  r.boolean("rel_pos_bias", c.rel_pos_bias);
  r.integer("rel_pos_num_buckets", c.rel_pos_num_buckets, 2);
  r.integer("rel_pos_max_distance", c.rel_pos_max_distance, 2);
  r.boolean("cross_rel_pos_bias", c.cross_rel_pos_bias);
  r.boolean("cross_attn_self_rel_pos", c.cross_attn_self_rel_pos);
  r.boolean("rotary_pos_emb", c.rotary_pos_emb);
  r.integer("rotary_emb_dim", c.rotary_emb_dim, 2);
  r.boolean("rotary_xpos", c.rotary_xpos);
  r.number("rotary_xpos_scale_base", c.rotary_xpos_scale_base, 1e-9, 1e30);
  r.number("rotary_interpolation_factor", c.rotary_interpolation_factor, 1, 1e30);
  r.number("rotary_base_rescale_factor", c.rotary_base_rescale_factor, 1e-9, 1e30);
  // attn_* (every attention layer)
  r.integer("attn_dim_head", c.attn.dim_head, 1);
  r.integer("attn_kv_heads", c.attn.kv_heads, 1);
  r.boolean("attn_one_kv_head", c.attn.one_kv_head);
  r.integer("attn_value_dim_head", c.attn.value_dim_head, 1);
  r.number("attn_dropout", c.attn.dropout, 0, 1, true);
  r.boolean("attn_qk_norm", c.attn.qk_norm);
  r.number("attn_qk_norm_scale", c.attn.qk_norm_scale, 1e-9, 1e30);
  r.boolean("attn_qk_norm_dim_scale", c.attn.qk_norm_dim_scale);
  r.integer("attn_num_mem_kv", c.attn.num_mem_kv, 0);
  r.boolean("attn_gate_values", c.attn.gate_values);
  r.boolean("attn_swiglu_values", c.attn.swiglu_values);
  r.boolean("attn_selective", c.attn.selective);
  r.boolean("attn_zero_init_output", c.attn.zero_init_output);
  r.integer("cross_attn_dim_context", c.cross_attn_dim_context, 1);
  // ff_*
  r.number("ff_mult", c.ff.mult, 1e-9, 1e6);
  r.boolean("ff_glu", c.ff.glu);
  r.boolean("ff_swish", c.ff.swish);
  r.boolean("ff_relu_squared", c.ff.relu_squared);
  r.boolean("ff_post_act_ln", c.ff.post_act_ln);
  r.number("ff_dropout", c.ff.dropout, 0, 1, true);
  r.boolean("ff_no_bias", c.ff.no_bias);
  r.boolean("ff_zero_init_output", c.ff.zero_init_output);
  r.read(j);

  if (!j.contains("dim")) fail(source, ": '", r.path("dim"), "' is required");
  if (causal_given && type != "AttentionLayers")
    fail(source, ": '", r.path("causal"), "' cannot be set on a ", type, " (it is ", type == "Decoder" ? "always causal" : "never causal", ")");
  if (type == "Decoder") c.causal = true;
  if (type == "Encoder") c.causal = false;
  if (type == "CrossAttender") c.cross_attend = true, c.only_cross = true;
  if (type_out) *type_out = type;
  return c;
}

}  // namespace

nn::AttentionLayersConfig attention_layers_config_from_json(const std::string& text) {
  json j;
  try {
    j = json::parse(text);
  } catch (const std::exception& e) {
    fail("config: not valid JSON: ", e.what());
  }
  return layers_from(j, "config", "", nullptr);
}

nn::Module& LoadedModel::module() const {
  if (transformer) return *transformer;
  if (continuous) return *continuous;
  if (vit) return *vit;
  LOOM_CHECK(xtransformer != nullptr, "LoadedModel: empty");
  return *xtransformer;
}

namespace {

std::shared_ptr<nn::AttentionLayers> layers_setter(const json& v, const std::string& source, const std::string& where) {
  return std::make_shared<nn::AttentionLayers>(layers_from(v, source, where, nullptr));
}

std::shared_ptr<TransformerWrapper> transformer_from(const json& j, const std::string& source) {
  TransformerWrapperConfig c;
  Reader r(source, "");
  r.custom("wrapper", [](const json&) {});
  r.integer("num_tokens", c.num_tokens, 1);
  r.integer("max_seq_len", c.max_seq_len, 0);
  r.integer("emb_dim", c.emb_dim, 1);
  r.number("emb_dropout", c.emb_dropout, 0, 1, true);
  r.boolean("post_emb_norm", c.post_emb_norm);
  r.integer("num_memory_tokens", c.num_memory_tokens, 0);
  r.boolean("tie_embedding", c.tie_embedding);
  r.integer("logits_dim", c.logits_dim, 1);
  r.boolean("use_abs_pos_emb", c.use_abs_pos_emb);
  r.boolean("scaled_sinu_pos_emb", c.scaled_sinu_pos_emb);
  r.boolean("l2norm_embed", c.l2norm_embed);
  r.boolean("return_only_embed", c.return_only_embed);
  r.custom("attn_layers", [&](const json& v) { c.attn_layers = layers_setter(v, source, "attn_layers"); });
  r.read(j);
  LOOM_CHECK(j.contains("num_tokens"), source, ": 'num_tokens' is required");
  LOOM_CHECK(j.contains("attn_layers"), source, ": 'attn_layers' is required");
  return std::make_shared<TransformerWrapper>(c);
}

std::shared_ptr<ContinuousTransformerWrapper> continuous_from(const json& j, const std::string& source) {
  ContinuousTransformerWrapperConfig c;
  Reader r(source, "");
  r.custom("wrapper", [](const json&) {});
  r.integer("max_seq_len", c.max_seq_len, 0);
  r.integer("dim_in", c.dim_in, 1);
  r.integer("dim_out", c.dim_out, 1);
  r.integer("num_memory_tokens", c.num_memory_tokens, 0);
  r.boolean("post_emb_norm", c.post_emb_norm);
  r.number("emb_dropout", c.emb_dropout, 0, 1, true);
  r.boolean("use_abs_pos_emb", c.use_abs_pos_emb);
  r.boolean("scaled_sinu_pos_emb", c.scaled_sinu_pos_emb);
  r.boolean("average_pool_embed", c.average_pool_embed);
  r.custom("attn_layers", [&](const json& v) { c.attn_layers = layers_setter(v, source, "attn_layers"); });
  r.read(j);
  LOOM_CHECK(j.contains("attn_layers"), source, ": 'attn_layers' is required");
  return std::make_shared<ContinuousTransformerWrapper>(c);
}

std::shared_ptr<ViTransformerWrapper> vit_from(const json& j, const std::string& source) {
  ViTransformerWrapperConfig c;
  Reader r(source, "");
  r.custom("wrapper", [](const json&) {});
  r.integer("image_size", c.image_size, 1);
  r.integer("patch_size", c.patch_size, 1);
  r.integer("channels", c.channels, 1);
  r.integer("num_classes", c.num_classes, 1);
  r.boolean("post_emb_norm", c.post_emb_norm);
  r.integer("num_register_tokens", c.num_register_tokens, 0);
  r.number("emb_dropout", c.emb_dropout, 0, 1, true);
  r.custom("attn_layers", [&](const json& v) { c.attn_layers = layers_setter(v, source, "attn_layers"); });
  r.read(j);
  for (const char* key : {"image_size", "patch_size", "attn_layers"})
    LOOM_CHECK(j.contains(key), source, ": '", key, "' is required");
  return std::make_shared<ViTransformerWrapper>(c);
}

// x-transformers' XTransformer(dim, enc_*, dec_*): the enc_ / dec_ keys that
// are not the wrapper's own go to the encoder's / decoder's layers.
std::shared_ptr<XTransformer> xtransformer_from(const json& j, const std::string& source) {
  XTransformerConfig c;
  json enc = json::object(), dec = json::object();
  Reader r(source, "");
  r.custom("wrapper", [](const json&) {});
  r.integer("dim", c.dim, 1);
  r.integer("enc_num_tokens", c.enc_num_tokens, 1);
  r.integer("enc_max_seq_len", c.enc_max_seq_len, 0);
  r.integer("dec_num_tokens", c.dec_num_tokens, 1);
  r.integer("dec_max_seq_len", c.dec_max_seq_len, 0);
  r.integer("ignore_index", c.ignore_index, INT64_MIN);
  r.integer("pad_value", c.pad_value, INT64_MIN);
  json rest = json::object();
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    const bool own = k == "enc_num_tokens" || k == "enc_max_seq_len" || k == "dec_num_tokens" || k == "dec_max_seq_len";
    if (!own && k.rfind("enc_", 0) == 0) enc[k.substr(4)] = it.value();
    else if (!own && k.rfind("dec_", 0) == 0) dec[k.substr(4)] = it.value();
    else rest[k] = it.value();
  }
  r.read(rest);
  for (const char* key : {"dim", "enc_num_tokens", "dec_num_tokens"})
    LOOM_CHECK(j.contains(key), source, ": '", key, "' is required");
  enc["dim"] = c.dim, dec["dim"] = c.dim;
  c.enc = layers_from(enc, source, "enc_", nullptr);
  c.dec = layers_from(dec, source, "dec_", nullptr);
  return std::make_shared<XTransformer>(c);
}

}  // namespace

LoadedModel model_from_json(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const std::exception& e) {
    fail(source, ": not valid JSON: ", e.what());
  }
  LOOM_CHECK(j.is_object(), source, ": the config must be a JSON object");
  LoadedModel m;
  m.wrapper = j.contains("wrapper") && j["wrapper"].is_string() ? j["wrapper"].get<std::string>() : "";
  if (m.wrapper == "TransformerWrapper") m.transformer = transformer_from(j, source);
  else if (m.wrapper == "ContinuousTransformerWrapper") m.continuous = continuous_from(j, source);
  else if (m.wrapper == "ViTransformerWrapper") m.vit = vit_from(j, source);
  else if (m.wrapper == "XTransformer") m.xtransformer = xtransformer_from(j, source);
  else
    fail(source, ": 'wrapper' must be one of \"TransformerWrapper\", \"ContinuousTransformerWrapper\", ",
         "\"ViTransformerWrapper\", \"XTransformer\", got ", j.contains("wrapper") ? j["wrapper"].dump() : "nothing");
  return m;
}

LoadedModel model_from_config_file(const std::string& path) {
  std::ifstream in(path);
  LOOM_CHECK(in.good(), "config: cannot open '", path, "'");
  std::stringstream s;
  s << in.rdbuf();
  return model_from_json(s.str(), path);
}

}  // namespace loom
