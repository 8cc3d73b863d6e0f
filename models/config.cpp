#include <loom/models/config.h>

#include <algorithm>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include <loom/core/error.h>
#include <loom/core/io.h>
#include <loom/core/json.h>

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
  // An integer whose x-transformers default is None: null loads as loom's
  // "unset" (0, the same default).
  void nullable_integer(const std::string& key, int64_t& field, int64_t lo) {
    setters_[key] = [=, this, &field](const json& v) {
      if (!v.is_null() && (!v.is_number_integer() || v.get<int64_t>() < lo))
        bad(key, v, "an integer " + range(double(lo), double(INT64_MAX), true) + " or null");
      field = v.is_null() ? 0 : v.get<int64_t>();
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
  // An x-transformers keyword that changes no math (speed, logging, a
  // setting read only by an option that is off): any value of its type loads.
  void ignored(const std::string& key, const json& default_value) {
    setters_[key] = [=, this](const json& v) {
      if (v.type() != default_value.type() && !(v.is_number() && default_value.is_number()) &&
          !(default_value.is_null() || v.is_null()))
        bad(key, v, std::string("a JSON ") + default_value.type_name() + " (loom ignores it: it changes no math)");
    };
  }
  // An x-transformers keyword loom does not implement: only its default, the
  // value under which it does nothing, loads.
  void default_only(const std::string& key, const json& default_value) {
    setters_[key] = [=, this](const json& v) {
      if (v != default_value)
        fail(source_, ": '", path(key), "' = ", v.dump(), " is not supported by loom (only x-transformers' default, ",
             default_value.dump(), ")");
    };
  }

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

// x-transformers' Attention keywords, under a prefix (attn_, cross_attn_).
void attention_keys(Reader& r, const std::string& p, nn::AttentionConfig& a) {
  r.integer(p + "dim_head", a.dim_head, 1);
  r.nullable_integer(p + "kv_heads", a.kv_heads, 1);
  r.boolean(p + "one_kv_head", a.one_kv_head);
  r.nullable_integer(p + "value_dim_head", a.value_dim_head, 1);
  r.number(p + "dropout", a.dropout, 0, 1, true);
  r.boolean(p + "qk_norm", a.qk_norm);
  r.number(p + "qk_norm_scale", a.qk_norm_scale, 1e-9, 1e30);
  r.boolean(p + "qk_norm_dim_scale", a.qk_norm_dim_scale);
  r.integer(p + "num_mem_kv", a.num_mem_kv, 0);
  r.boolean(p + "gate_values", a.gate_values);
  r.boolean(p + "swiglu_values", a.swiglu_values);
  r.boolean(p + "gate_value_heads", a.gate_value_heads);
  r.boolean(p + "selective", a.selective);
  r.number(p + "selective_memory_loss", a.selective_memory_loss, 0, 1e30);  // loom's: the paper's ε (recalled)
  r.number(p + "selective_memory_loss_tau", a.selective_memory_loss_tau, 1e-30, 1e30);
  r.boolean(p + "zero_init_output", a.zero_init_output);
  r.boolean(p + "pre_talking_heads", a.pre_talking_heads);
  r.boolean(p + "post_talking_heads", a.post_talking_heads);
  r.boolean(p + "pre_scale_post_talking_heads", a.pre_scale_post_talking_heads);
  r.boolean(p + "head_scale", a.head_scale);
  r.custom(p + "sparse_topk", [&r, &a, key = p + "sparse_topk"](const json& v) {  // None = off
    if (!v.is_null() && !(v.is_number_integer() && v.get<int64_t>() >= 1)) r.bad(key, v, "an integer >= 1 or null");
    a.sparse_topk = v.is_null() ? 0 : v.get<int64_t>();
  });
  r.boolean(p + "sparse_topk_straight_through", a.sparse_topk_straight_through);
  r.boolean(p + "on_attn", a.on_attn);
  r.boolean(p + "softclamp_logits", a.softclamp_logits);
  r.number(p + "logit_softclamp_value", a.logit_softclamp_value, 1e-30, 1e30);
  // Speed or export only: the same math either way.
  r.ignored(p + "flash", false);
  r.ignored(p + "onnxable", false);
  r.ignored(p + "attend_sdp_kwargs", json::object());
  // Not implemented: only x-transformers' default loads.
  for (const auto& [key, value] : std::vector<std::pair<std::string, json>>{
           {"dim_context", nullptr}, {"dim_out", nullptr}, {"sublayer_dropout", 0.0}, {"hard", false},
           {"max_attend_past", nullptr}, {"qk_norm_groups", 1}, {"l2_distance", false}, {"sigmoid", false},
           {"custom_attn_fn", nullptr}, {"hybrid_module", nullptr}, {"hybrid_mask_kwarg", nullptr},
           {"hybrid_fold_axial_dim", nullptr}, {"hybrid_learned_mix", false}, {"add_zero_kv", false},
           {"rotate_num_heads", nullptr}, {"data_dependent_alibi", false}, {"data_dependent_alibi_per_row", false},
           {"data_dependent_alibi_per_row_dim_head", 8}, {"data_dependent_alibi_kwargs", json::object()},
           {"use_cope", false}, {"cope_max_pos", 16}, {"cope_soft_onehot_pos", false}, {"cope_talking_heads", false},
           {"laser", false}, {"laser_softclamp_value", 15.0}, {"use_latent_q", false}, {"dim_latent_q", nullptr},
           {"use_latent_kv", false}, {"dim_latent_kv", nullptr}, {"latent_rope_subheads", nullptr}})
    r.default_only(p + key, value);
}

// The AttentionLayers and FeedForward keywords loom ignores or has only at
// x-transformers' default.
void layers_defaults(Reader& r) {
  r.ignored("verbose", true);                  // a warning about small rotary dims
  r.ignored("pre_norm_has_final_norm", true);  // taken and never read by x-transformers 2.3.12
  for (const auto& [key, value] : std::vector<std::pair<std::string, json>>{
           {"use_dynamic_tanh", false}, {"dynamic_tanh_init_alpha", 1.0}, {"rotate_num_heads", nullptr},
           {"weight_tie_layers", false}, {"layers_execute_order", nullptr}, {"sandwich_coef", nullptr},
           {"par_ratio", nullptr}, {"softclamp_output", false}, {"softclamp_output_value", 30.0},
           {"unet_skips", false}, {"integrate_layers", false}, {"layer_integrate_use_softmax", true},
           {"qkv_receive_diff_residuals", false}, {"reinject_input", false}, {"learned_reinject_input_gate", false},
           {"rel_pos_kwargs", json::object()}, {"residual_fn_kwargs", json::object()},
           {"ff_glu_mult_bias", false}, {"ff_custom_activation", nullptr}, {"ff_sublayer_dropout", 0.0},
           {"ff_dim_out", nullptr}})
    r.default_only(key, value);
}

nn::AttentionLayersConfig layers_from(const json& j, const std::string& source, const std::string& where,
                                      std::string* type_out) {
  nn::AttentionLayersConfig c;
  std::string type = "AttentionLayers";
  bool causal_given = false;
  Reader r(source, where);
  r.custom("type", [&](const json& v) {
    if (!v.is_string() || (v != "Encoder" && v != "Decoder" && v != "PrefixDecoder" && v != "CrossAttender" &&
                           v != "AttentionLayers"))
      r.bad("type", v, "one of \"Encoder\", \"Decoder\", \"PrefixDecoder\", \"CrossAttender\", \"AttentionLayers\"");
    type = v.get<std::string>();
  });
  r.integer("dim", c.dim, 1);
  r.nullable_integer("depth", c.depth, 1);
  r.integer("heads", c.heads, 1);
  r.custom("causal", [&](const json& v) {
    if (!v.is_boolean()) r.bad("causal", v, "true or false");
    c.causal = v.get<bool>(), causal_given = true;
  });
  r.boolean("cross_attend", c.cross_attend);
  r.boolean("only_cross", c.only_cross);
  r.boolean("use_scalenorm", c.use_scalenorm);
  r.boolean("use_rmsnorm", c.use_rmsnorm);
  r.boolean("use_simple_rmsnorm", c.use_simple_rmsnorm);
  r.boolean("use_adaptive_layernorm", c.use_adaptive_layernorm);
  r.boolean("use_adaptive_rmsnorm", c.use_adaptive_rmsnorm);
  r.boolean("use_adaptive_layerscale", c.use_adaptive_layerscale);
  r.custom("dim_condition", [&](const json& v) {  // None = dim
    if (!v.is_null() && !(v.is_number_integer() && v.get<int64_t>() >= 1)) r.bad("dim_condition", v, "an integer >= 1 or null");
    c.dim_condition = v.is_null() ? 0 : v.get<int64_t>();
  });
  r.boolean("adaptive_condition_mlp", c.adaptive_condition_mlp);
  r.integer("adaptive_condition_mlp_expansion", c.adaptive_condition_mlp_expansion, 1);
  r.boolean("norm_add_unit_offset", c.norm_add_unit_offset);
  r.boolean("pre_norm", c.pre_norm);
  r.boolean("sandwich_norm", c.sandwich_norm);
  r.boolean("macaron", c.macaron);
  r.boolean("residual_attn", c.residual_attn);
  r.boolean("cross_residual_attn", c.cross_residual_attn);
  r.boolean("use_layerscale", c.use_layerscale);
  r.number("layerscale_init_value", c.layerscale_init_value, -1e30, 1e30);
  r.boolean("zero_init_branch_output", c.zero_init_branch_output);
  r.boolean("gate_residual", c.gate_residual);
  r.boolean("scale_residual", c.scale_residual);
  r.number("scale_residual_constant", c.scale_residual_constant, -1e30, 1e30);
  r.custom("shift_tokens", [&](const json& v) {  // an int for every layer, or one per layer
    auto ok = [](const json& e) { return e.is_number_integer() && e.get<int64_t>() >= 0; };
    if (!(ok(v) || (v.is_array() && !v.empty() && std::all_of(v.begin(), v.end(), ok))))
      r.bad("shift_tokens", v, "an integer >= 0 or a list of them, one per layer");
    c.shift_tokens.clear();
    if (v.is_array())
      for (const json& e : v) c.shift_tokens.push_back(e.get<int64_t>());
    else
      c.shift_tokens.push_back(v.get<int64_t>());
  });
  r.integer("num_residual_streams", c.num_residual_streams, 1);
  r.boolean("add_value_residual", c.add_value_residual);
  r.boolean("learned_value_residual_mix", c.learned_value_residual_mix);
  r.number("layer_dropout", c.layer_dropout, 0, 1, true);
  r.number("cross_attn_tokens_dropout", c.cross_attn_tokens_dropout, 0, 1, true);
  r.custom("custom_layers", [&](const json& v) {
    c.custom_layers.clear();
    if (v.is_null()) return;  // x-transformers' default
    if (!v.is_array() || v.empty()) r.bad("custom_layers", v, "a non-empty list of \"a\", \"c\", \"f\" (or null)");
    for (const json& e : v) {
      if (!e.is_string() || (e != "a" && e != "c" && e != "f")) r.bad("custom_layers", v, "a list of \"a\", \"c\", \"f\"");
      c.custom_layers.push_back(e.get<std::string>());
    }
  });
  r.boolean("alibi_pos_bias", c.alibi_pos_bias);
  r.nullable_integer("alibi_num_heads", c.alibi_num_heads, 1);
  r.boolean("rel_pos_bias", c.rel_pos_bias);
  r.integer("rel_pos_num_buckets", c.rel_pos_num_buckets, 2);
  r.integer("rel_pos_max_distance", c.rel_pos_max_distance, 2);
  r.boolean("dynamic_pos_bias", c.dynamic_pos_bias);
  r.boolean("dynamic_pos_bias_log_distance", c.dynamic_pos_bias_log_distance);
  r.integer("dynamic_pos_bias_mlp_depth", c.dynamic_pos_bias_mlp_depth, 1);
  r.boolean("dynamic_pos_bias_norm", c.dynamic_pos_bias_norm);
  r.custom("disable_abs_pos_emb", [&](const json& v) {  // None = with a T5 bias or rotary
    if (!v.is_null() && !v.is_boolean()) r.bad("disable_abs_pos_emb", v, "true, false or null");
    if (v.is_boolean()) c.disable_abs_pos_emb = v.get<bool>();
  });
  r.boolean("cross_rel_pos_bias", c.cross_rel_pos_bias);
  r.boolean("cross_attn_self_rel_pos", c.cross_attn_self_rel_pos);
  r.boolean("rotary_pos_emb", c.rotary_pos_emb);
  r.nullable_integer("rotary_emb_dim", c.rotary_emb_dim, 2);
  r.boolean("rotary_xpos", c.rotary_xpos);
  r.number("rotary_xpos_scale_base", c.rotary_xpos_scale_base, 1e-9, 1e30);
  r.number("rotary_interpolation_factor", c.rotary_interpolation_factor, 1, 1e30);
  r.number("rotary_base_rescale_factor", c.rotary_base_rescale_factor, 1e-9, 1e30);
  // attn_* (every attention layer); the cross_attn_* keys for the 'c' layers
  // are read after the others, on top of attn_* (below).
  attention_keys(r, "attn_", c.attn);
  // ff_*
  r.number("ff_mult", c.ff.mult, 1e-9, 1e6);
  r.boolean("ff_glu", c.ff.glu);
  r.boolean("ff_swish", c.ff.swish);
  r.boolean("ff_relu_squared", c.ff.relu_squared);
  r.boolean("ff_post_act_ln", c.ff.post_act_ln);
  r.number("ff_dropout", c.ff.dropout, 0, 1, true);
  r.boolean("ff_no_bias", c.ff.no_bias);
  r.boolean("ff_zero_init_output", c.ff.zero_init_output);
  layers_defaults(r);
  // x-transformers: cross-attention gets {**attn_kwargs, **cross_attn_kwargs}.
  json own = json::object(), cross = json::object();
  if (j.is_object())
    for (auto it = j.begin(); it != j.end(); ++it) {
      const bool layer_key = it.key() == "cross_attn_self_rel_pos" || it.key() == "cross_attn_tokens_dropout";
      (it.key().rfind("cross_attn_", 0) == 0 && !layer_key ? cross : own)[it.key()] = it.value();
    }
  r.read(j.is_object() ? own : j);
  if (!cross.empty()) {
    nn::AttentionConfig cross_attn = c.attn;
    Reader rc(source, where);
    attention_keys(rc, "cross_attn_", cross_attn);
    rc.custom("cross_attn_dim_context", [&](const json& v) {
      if (!v.is_null() && (!v.is_number_integer() || v.get<int64_t>() < 1))
        rc.bad("cross_attn_dim_context", v, "an integer >= 1 or null");
      c.cross_attn_dim_context = v.is_null() ? 0 : v.get<int64_t>();
    });
    rc.read(cross);
    if (cross.size() > size_t(cross.contains("cross_attn_dim_context"))) c.cross_attn = cross_attn;
  }

  if (!j.contains("dim")) fail(source, ": '", r.path("dim"), "' is required");
  if (int64_t(double(c.dim) * c.ff.mult) < 1)  // nn::FeedForward's inner width, dim · ff_mult
    fail(source, ": '", r.path("ff_mult"), "' ", c.ff.mult, " gives a feedforward of no units at dim ", c.dim,
         " (dim x ff_mult must be >= 1)");
  if (causal_given && type != "AttentionLayers")
    fail(source, ": '", r.path("causal"), "' cannot be set on a ", type, " (it is ", type == "Decoder" ? "always causal" : "never causal", ")");
  if (type == "Decoder") c.causal = true;
  if (type == "Encoder") c.causal = false;
  if (type == "PrefixDecoder") c.causal = false, c.prefix_decoder = true;
  if (type == "CrossAttender") c.cross_attend = true, c.only_cross = true;
  if (type_out) *type_out = type;
  return c;
}

}  // namespace

nn::AttentionLayersConfig attention_layers_config_from_json(const std::string& text) {
  return layers_from(parse_json(text, "config"), "config", "", nullptr);
}

nn::Module& LoadedModel::module() const {
  if (transformer) return *transformer;
  if (continuous) return *continuous;
  if (vit) return *vit;
  LOOM_CHECK(xtransformer != nullptr, "LoadedModel: empty");
  return *xtransformer;
}

namespace {

// Builds a module from its config; an error from inside (say
// "RotaryEmbedding: dim must be even") gets the config's name in front.
template <class T, class Config>
std::shared_ptr<T> build(const Config& c, const std::string& source) {
  try {
    return std::make_shared<T>(c);
  } catch (const Error& e) {
    fail(source, ": ", e.what());
  }
}

std::shared_ptr<nn::AttentionLayers> layers_setter(const json& v, const std::string& source, const std::string& where) {
  return build<nn::AttentionLayers>(layers_from(v, source, where, nullptr), source);
}

std::shared_ptr<TransformerWrapper> transformer_from(const json& j, const std::string& source) {
  TransformerWrapperConfig c;
  Reader r(source, "");
  r.custom("wrapper", [](const json&) {});
  r.integer("num_tokens", c.num_tokens, 1);
  r.integer("max_seq_len", c.max_seq_len, 0);
  r.nullable_integer("emb_dim", c.emb_dim, 1);
  r.number("emb_dropout", c.emb_dropout, 0, 1, true);
  r.boolean("post_emb_norm", c.post_emb_norm);
  r.nullable_integer("num_memory_tokens", c.num_memory_tokens, 0);
  r.boolean("tie_embedding", c.tie_embedding);
  r.nullable_integer("logits_dim", c.logits_dim, 1);
  r.boolean("use_abs_pos_emb", c.use_abs_pos_emb);
  r.boolean("scaled_sinu_pos_emb", c.scaled_sinu_pos_emb);
  r.boolean("l2norm_embed", c.l2norm_embed);
  r.boolean("return_only_embed", c.return_only_embed);
  r.boolean("use_cls_token", c.use_cls_token);
  r.integer("num_cls_tokens", c.num_cls_tokens, 1);
  r.boolean("average_pool_embed", c.average_pool_embed);
  r.integer("max_mem_len", c.max_mem_len, 0);
  r.integer("shift_mem_down", c.shift_mem_down, 0);
  r.number("emb_frac_gradient", c.emb_frac_gradient, 1e-30, 1);
  // Read only by options that are off (recycling, return_attn_z_loss, mixture_of_softmax).
  r.ignored("train_max_recycle_steps", 4);
  r.ignored("attn_z_loss_weight", 1e-4);
  r.ignored("mixture_of_softmax_k", 4);
  for (const auto& [key, value] : std::vector<std::pair<std::string, json>>{
           {"embed_num_tokens", json::object()}, {"memory_tokens_interspersed_every", nullptr}, {"num_output_heads", 1},
           {"recycling", false}, {"squeeze_out_last_dim", false}, {"token_emb", nullptr}, {"mixture_of_softmax", false},
           {"sigsoftmax_logits", false}, {"ff_deep_embed", false}, {"to_logits", nullptr}})
    r.default_only(key, value);
  r.custom("attn_layers", [&](const json& v) { c.attn_layers = layers_setter(v, source, "attn_layers"); });
  r.read(j);
  LOOM_CHECK(j.contains("num_tokens"), source, ": 'num_tokens' is required");
  LOOM_CHECK(j.contains("attn_layers"), source, ": 'attn_layers' is required");
  return build<TransformerWrapper>(c, source);
}

std::shared_ptr<ContinuousTransformerWrapper> continuous_from(const json& j, const std::string& source) {
  ContinuousTransformerWrapperConfig c;
  Reader r(source, "");
  r.custom("wrapper", [](const json&) {});
  r.integer("max_seq_len", c.max_seq_len, 0);
  r.nullable_integer("dim_in", c.dim_in, 1);
  r.nullable_integer("dim_out", c.dim_out, 1);
  r.nullable_integer("num_memory_tokens", c.num_memory_tokens, 0);
  r.boolean("post_emb_norm", c.post_emb_norm);
  r.number("emb_dropout", c.emb_dropout, 0, 1, true);
  r.boolean("use_abs_pos_emb", c.use_abs_pos_emb);
  r.boolean("scaled_sinu_pos_emb", c.scaled_sinu_pos_emb);
  r.boolean("average_pool_embed", c.average_pool_embed);
  r.ignored("emb_dim", nullptr);   // x-transformers 2.3.12 takes it and never reads it
  r.ignored("max_mem_len", 0);     // read only with return_mems
  r.default_only("probabilistic", false);
  r.custom("attn_layers", [&](const json& v) { c.attn_layers = layers_setter(v, source, "attn_layers"); });
  r.read(j);
  LOOM_CHECK(j.contains("attn_layers"), source, ": 'attn_layers' is required");
  return build<ContinuousTransformerWrapper>(c, source);
}

std::shared_ptr<ViTransformerWrapper> vit_from(const json& j, const std::string& source) {
  ViTransformerWrapperConfig c;
  Reader r(source, "");
  r.custom("wrapper", [](const json&) {});
  r.integer("image_size", c.image_size, 1);
  r.integer("patch_size", c.patch_size, 1);
  r.integer("channels", c.channels, 1);
  r.nullable_integer("num_classes", c.num_classes, 1);
  r.boolean("post_emb_norm", c.post_emb_norm);
  r.integer("num_register_tokens", c.num_register_tokens, 0);
  r.number("emb_dropout", c.emb_dropout, 0, 1, true);
  r.custom("attn_layers", [&](const json& v) { c.attn_layers = layers_setter(v, source, "attn_layers"); });
  r.read(j);
  for (const char* key : {"image_size", "patch_size", "attn_layers"})
    LOOM_CHECK(j.contains(key), source, ": '", key, "' is required");
  return build<ViTransformerWrapper>(c, source);
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
  // The TransformerWrapper keys x-transformers' XTransformer takes from enc_ / dec_.
  r.number("enc_emb_dropout", c.enc_emb_dropout, 0, 1, true);
  r.nullable_integer("enc_num_memory_tokens", c.enc_num_memory_tokens, 0);
  r.boolean("enc_scaled_sinu_pos_emb", c.enc_scaled_sinu_pos_emb);
  r.boolean("enc_use_abs_pos_emb", c.enc_use_abs_pos_emb);
  r.number("dec_emb_dropout", c.dec_emb_dropout, 0, 1, true);
  r.boolean("dec_scaled_sinu_pos_emb", c.dec_scaled_sinu_pos_emb);
  r.boolean("dec_use_abs_pos_emb", c.dec_use_abs_pos_emb);
  r.boolean("tie_token_emb", c.tie_token_emb);
  r.number("cross_attn_tokens_dropout", c.cross_attn_tokens_dropout, 0, 1, true);
  r.integer("ignore_index", c.ignore_index, INT64_MIN);
  r.integer("pad_value", c.pad_value, INT64_MIN);
  json rest = json::object();
  const std::vector<std::string> wrapper_keys = {"num_tokens", "max_seq_len", "emb_dropout", "num_memory_tokens",
                                                 "scaled_sinu_pos_emb", "use_abs_pos_emb"};
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    const bool enc_key = k.rfind("enc_", 0) == 0, dec_key = k.rfind("dec_", 0) == 0;
    const std::string rest_of_key = enc_key || dec_key ? k.substr(4) : k;
    // (x-transformers' decoder takes no num_memory_tokens: dec_num_memory_tokens reaches its layers and fails there)
    const bool own = (enc_key || dec_key) && !(dec_key && rest_of_key == "num_memory_tokens") &&
                     std::find(wrapper_keys.begin(), wrapper_keys.end(), rest_of_key) != wrapper_keys.end();
    if ((enc_key || dec_key) && rest_of_key == "dim")
      fail(source, ": '", k, "' cannot be set: the encoder and the decoder are both 'dim' wide");
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
  return build<XTransformer>(c, source);
}

}  // namespace

LoadedModel model_from_json(const std::string& text, const std::string& source) {
  const json j = parse_json(text, source);  // duplicate keys are an error
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

LoadedModel model_from_config_file(const std::string& path) { return model_from_json(read_file(path, "config"), path); }

}  // namespace loom
