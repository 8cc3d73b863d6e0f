// JSON configs with x-transformers' keyword names.
#include "helpers.h"

#include <loom/loom.h>

using namespace loom;

TEST_CASE("A JSON config builds the same model as the C++ API") {
  const std::string text = R"({
    "wrapper": "TransformerWrapper", "num_tokens": 20, "max_seq_len": 16, "tie_embedding": true,
    "attn_layers": {"type": "Decoder", "dim": 16, "depth": 2, "heads": 4, "rotary_pos_emb": true,
                    "attn_dim_head": 8, "attn_kv_heads": 2, "attn_num_mem_kv": 1, "ff_glu": true, "ff_mult": 2,
                    "use_rmsnorm": true}
  })";
  manual_seed(1);
  LoadedModel m = model_from_json(text);
  manual_seed(1);
  TransformerWrapper direct({.num_tokens = 20, .max_seq_len = 16,
                             .attn_layers = nn::Decoder({.dim = 16, .depth = 2, .heads = 4, .use_rmsnorm = true,
                                                         .rotary_pos_emb = true,
                                                         .attn = {.dim_head = 8, .kv_heads = 2, .num_mem_kv = 1},
                                                         .ff = {.mult = 2, .glu = true}}),
                             .tie_embedding = true});
  auto a = m.module().state_dict(), b = direct.state_dict();
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].first == b[i].first);
    CHECK(a[i].second.to_vector<float>() == b[i].second.to_vector<float>());
  }
  CHECK(m.transformer->attn_layers->config.causal);
  Tensor tokens = tensor(std::vector<int64_t>{3, 1, 4, 1, 5, 9, 2, 6}).reshape({2, 4});
  CHECK(m.transformer->forward(tokens).to_vector<float>() == direct.forward(tokens).to_vector<float>());
}

TEST_CASE("Config errors name the key, the closest valid key, and the allowed values") {
  auto error_of = [](const std::string& text) {
    try {
      model_from_json(text);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string head = R"({"wrapper": "TransformerWrapper", "num_tokens": 10, "attn_layers": {"type": "Decoder", "dim": 8, "depth": 1, )";
  CHECK(error_of(head + R"("heads": 2}})") == "no error");
  CHECK(error_of(head + R"("heads": 2, "attn_dim_heads": 4}})") ==
        "config: unknown key 'attn_layers.attn_dim_heads' (did you mean 'attn_layers.attn_dim_head'?)");
  CHECK(error_of(R"({"wrapper": "TransformerWrapper", "num_token": 10})") ==
        "config: unknown key 'num_token' (did you mean 'num_tokens'?)");
  CHECK(error_of(head + R"("heads": 0}})") == "config: 'attn_layers.heads' must be an integer >= 1, got 0");
  CHECK(error_of(head + R"("heads": 2, "attn_dropout": 1.5}})") ==
        "config: 'attn_layers.attn_dropout' must be a number in [0, 1), got 1.5");
  CHECK(error_of(head + R"("heads": 2, "rotary_pos_emb": "yes"}})") ==
        "config: 'attn_layers.rotary_pos_emb' must be true or false, got \"yes\"");
  CHECK(error_of(head + R"("heads": 2, "causal": false}})") ==
        "config: 'attn_layers.causal' cannot be set on a Decoder (it is always causal)");
  CHECK(error_of(R"({"wrapper": "TransformerWrapper", "num_tokens": 10, "attn_layers": {"type": "Transformer", "dim": 8}})") ==
        "config: 'attn_layers.type' must be one of \"Encoder\", \"Decoder\", \"PrefixDecoder\", \"CrossAttender\", "
        "\"AttentionLayers\", got "
        "\"Transformer\"");
  CHECK(error_of(R"({"wrapper": "TransformerWrapper", "attn_layers": {"dim": 8, "depth": 1}})") ==
        "config: 'num_tokens' is required");
  CHECK(error_of(R"({"wrapper": "Mystery"})") ==
        "config: 'wrapper' must be one of \"TransformerWrapper\", \"ContinuousTransformerWrapper\", "
        "\"ViTransformerWrapper\", \"XTransformer\", got \"Mystery\"");
  CHECK(error_of("{oops").rfind("config: not valid JSON: ", 0) == 0);
  // Options that are individually fine but conflict are caught by the layers.
  CHECK(error_of(head + R"("heads": 2, "alibi_pos_bias": true, "rel_pos_bias": true}})") ==
        "config: AttentionLayers: use at most one of alibi_pos_bias, rel_pos_bias, dynamic_pos_bias");
}

TEST_CASE("Configs for the other wrappers: continuous, ViT, and XTransformer's enc_/dec_ keys") {
  LoadedModel c = model_from_json(R"({"wrapper": "ContinuousTransformerWrapper", "max_seq_len": 8, "dim_in": 3,
    "dim_out": 2, "attn_layers": {"type": "Encoder", "dim": 8, "depth": 1, "heads": 2, "attn_dim_head": 4}})");
  REQUIRE(c.continuous != nullptr);
  CHECK(c.continuous->forward(zeros({1, 5, 3})).sizes() == Shape{1, 5, 2});
  LoadedModel v = model_from_json(R"({"wrapper": "ViTransformerWrapper", "image_size": 8, "patch_size": 4,
    "channels": 1, "num_classes": 5, "attn_layers": {"type": "Encoder", "dim": 8, "depth": 1, "heads": 2}})");
  REQUIRE(v.vit != nullptr);
  CHECK(v.vit->forward(zeros({2, 1, 8, 8})).sizes() == Shape{2, 5});
  LoadedModel x = model_from_json(R"({"wrapper": "XTransformer", "dim": 16, "enc_num_tokens": 7, "enc_max_seq_len": 6,
    "enc_depth": 1, "enc_heads": 2, "dec_num_tokens": 9, "dec_max_seq_len": 6, "dec_depth": 2, "dec_heads": 4,
    "dec_rotary_pos_emb": true, "dec_attn_dim_head": 4})");
  REQUIRE(x.xtransformer != nullptr);
  CHECK(x.xtransformer->decoder_net->attn_layers->config.depth == 2);
  CHECK(x.xtransformer->decoder_net->attn_layers->config.causal);
  CHECK(x.xtransformer->decoder_net->attn_layers->config.cross_attend);
  CHECK(x.xtransformer->encoder->attn_layers->config.heads == 2);
  CHECK_THROWS_WITH_AS(model_from_json(R"({"wrapper": "XTransformer", "dim": 16, "enc_num_tokens": 7, "enc_depth": 1,
    "dec_num_tokens": 9, "dec_depth": 1, "dec_rotary_pos_embs": true})"),
                       "config: unknown key 'dec_rotary_pos_embs' (did you mean 'dec_rotary_pos_emb'?)", Error);
}
