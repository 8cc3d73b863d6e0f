// Where loom differed from x-transformers 2.3.12 (issue 12), each resolved:
// rows emptied only by the causal mask (zeros, documented), the wrappers'
// pos (absolute embedding only; the layers' positions are layer_pos),
// rotary_xpos alone, ViT without classes, selective + residual attention,
// configs with keys that change no math, and the command line (--attn-mask,
// --layer-pos, XTransformer --src/--tgt, loom train checkpoints).
#include "helpers.h"

#include <loom/loom.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

using namespace loom;
using namespace loom::nn;

namespace {
using Inputs = std::vector<Tensor>;
constexpr double kMaxNeg = -3.4028234663852886e38;
const std::string kXt = std::string(LOOM_TEST_FIXTURES) + "/x-transformers/";

std::vector<double> as_double(const Tensor& t) {
  std::vector<float> v = t.contiguous().to_vector<float>();
  return std::vector<double>(v.begin(), v.end());
}

Tensor P(const Module& m, const std::string& name) {
  for (auto& [n, t] : m.state_dict())
    if (n == name) return t;
  FAIL("no parameter named " << name);
  return Tensor();
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

void perturb(Module& m, Generator& g, float scale = 0.3f) {
  NoGradGuard no_grad;
  for (auto& [name, t] : m.named_parameters()) t.add_(randn(t.sizes(), g) * scale);
}

struct Run {
  int code;
  std::string err;
};
Run cli(const std::string& args) {
  const int status = std::system((std::string(LOOM_CLI) + " " + args + " 2> loom_cli_err.txt").c_str());
  std::ifstream in("loom_cli_err.txt");
  std::stringstream s;
  s << in.rdbuf();
  std::remove("loom_cli_err.txt");
  return {WEXITSTATUS(status), s.str()};
}
}  // namespace

TEST_CASE("A query row that only the causal mask empties gets zeros, in the fused and the materialised path") {
  // x-transformers' non-flash Attend fills such a row with -finfo.max and so
  // attends uniformly to every key, the future ones too; its flash path and
  // loom give zeros (docs/attention.md, "Rows with nothing to attend to").
  Generator g(201);
  const int64_t n = 5;
  Tensor allowed = tril(ones({n, n}, kBool));
  allowed.select(0, 2).fill_(0.0);
  allowed.select(0, 2).select(0, 4).fill_(1.0);  // row 2 allows only key 4, which is in its future
  for (bool materialised : {false, true}) {
    CAPTURE(materialised);
    manual_seed(202);
    nn::Attention attn({.dim = 8, .dim_head = 4, .heads = 2, .causal = true, .pre_talking_heads = materialised});
    perturb(attn, g);
    Tensor x = randn({1, n, 8}, g).requires_grad_();
    Tensor out = attn.forward(x, {.attn_mask = allowed});
    for (float v : out.select(1, 2).to_vector<float>()) CHECK(v == 0.0f);
    for (int64_t r : {0, 1, 3, 4})
      CHECK(loom::abs(out.select(1, r)).sum().item<float>() > 0.0f);
    // its query gets no gradient through the weights (nothing was attended)
    out.select(1, 2).sum().backward();
    const Tensor& gq = attn.to_q->weight.grad();
    CHECK((!gq.defined() || loom::abs(gq).sum().item<float>() == 0.0f));
  }
}

TEST_CASE("TransformerWrapper pos feeds only the absolute embedding, layer_pos the layers (x-transformers' pos)") {
  Generator g(211);
  Tensor tokens = randint(0, 10, {2, 5}, g);
  Tensor int_pos = tensor(std::vector<int64_t>{4, 0, 3, 1, 2, 0, 1, 2, 3, 4}).reshape({2, 5});
  Tensor layer_pos = tensor(std::vector<float>{0, 1, 2.5f, 4, 9, 0, 2, 3, 3.5f, 8}).reshape({2, 5});
  SUBCASE("ALiBi keeps the absolute embedding: pos indexes it, layer_pos moves the ALiBi positions") {
    manual_seed(212);
    TransformerWrapper m({.num_tokens = 10, .max_seq_len = 6,
                          .attn_layers = Decoder({.dim = 8, .depth = 1, .heads = 2, .alibi_pos_bias = true, .attn = {.dim_head = 4}})});
    REQUIRE(m.abs_pos_emb);
    perturb(m, g);
    auto by_hand = [&](const Tensor& pos, const Tensor& lpos) {
      Tensor x = m.token_emb->forward(tokens) + m.abs_pos_emb->forward(tokens, pos);
      return linear(m.attn_layers->forward(x, {.pos = lpos}), P(m, "to_logits.weight"));
    };
    CHECK(close_or_same(m.forward(tokens, {.pos = int_pos}).to_vector<float>(), as_double(by_hand(int_pos, Tensor())),
                        1e-6, 1e-5));
    CHECK(close_or_same(m.forward(tokens, {.layer_pos = layer_pos}).to_vector<float>(),
                        as_double(by_hand(Tensor(), layer_pos)), 1e-6, 1e-5));
    // a permuted pos changes the output only through the embedding: not the ALiBi bias
    CHECK(m.forward(tokens, {.pos = int_pos}).to_vector<float>() != m.forward(tokens).to_vector<float>());
  }
  SUBCASE("rotary: no absolute embedding, so an int pos is an error that points at layer_pos") {
    manual_seed(213);
    TransformerWrapper m({.num_tokens = 10, .max_seq_len = 6,
                          .attn_layers = Decoder({.dim = 8, .depth = 1, .heads = 2, .rotary_pos_emb = true, .attn = {.dim_head = 4}})});
    CHECK(!m.abs_pos_emb);
    CHECK(error_of([&] { m.forward(tokens, {.pos = int_pos}); }) ==
          "TransformerWrapper: pos (int64) indexes the absolute position embedding, which this model does not have; "
          "positions for ALiBi or rotary go in layer_pos");
    Tensor rot_pos = tensor(std::vector<int64_t>{0, 2, 3, 7, 8, 1, 2, 3, 4, 5}).reshape({2, 5});
    Tensor want = linear(m.attn_layers->forward(m.token_emb->forward(tokens), {.pos = rot_pos}), P(m, "to_logits.weight"));
    CHECK(close_or_same(m.forward(tokens, {.layer_pos = rot_pos}).to_vector<float>(), as_double(want), 1e-6, 1e-5));
  }
  SUBCASE("a float pos is an external position embedding, added in place of the table") {
    manual_seed(214);
    TransformerWrapper m({.num_tokens = 10, .max_seq_len = 6,
                          .attn_layers = Encoder({.dim = 8, .depth = 1, .heads = 2, .attn = {.dim_head = 4}})});
    Tensor emb = randn({2, 5, 8}, g);
    Tensor want = linear(m.attn_layers->forward(m.token_emb->forward(tokens) + emb), P(m, "to_logits.weight"));
    CHECK(close_or_same(m.forward(tokens, {.pos = emb}).to_vector<float>(), as_double(want), 1e-6, 1e-5));
    CHECK(error_of([&] { m.forward(tokens, {.pos = randn({2, 5}, g)}); }).rfind(
              "TransformerWrapper: a float pos is an external position embedding and must be (b, 5, 8)", 0) == 0);
  }
  SUBCASE("ContinuousTransformerWrapper: the same rule") {
    manual_seed(215);
    ContinuousTransformerWrapper m({.max_seq_len = 0,
                                    .attn_layers = Encoder({.dim = 8, .depth = 1, .heads = 2, .alibi_pos_bias = true,
                                                            .attn = {.dim_head = 4}})});
    Tensor x = randn({2, 5, 8}, g);
    CHECK(error_of([&] { m.forward(x, {.pos = int_pos}); }).rfind("ContinuousTransformerWrapper: pos indexes", 0) == 0);
    CHECK(m.forward(x, {.layer_pos = layer_pos}).to_vector<float>() ==
          m.attn_layers->forward(x, {.pos = layer_pos}).to_vector<float>());
  }
  // The layers refuse positions nothing of theirs uses.
  auto t5 = Encoder({.dim = 8, .depth = 1, .heads = 2, .rel_pos_bias = true, .attn = {.dim_head = 4}});
  CHECK(error_of([&] { t5->forward(randn({2, 5, 8}, g), {.pos = layer_pos}); }) ==
        "AttentionLayers: custom positions work with ALiBi, not with the T5 or dynamic position bias");
}

TEST_CASE("rotary_xpos alone turns rotary on, so the absolute embedding is off (x-transformers' rule)") {
  Generator g(221);
  manual_seed(222);
  auto xpos_only = Decoder({.dim = 8, .depth = 1, .heads = 2, .rotary_xpos = true, .rotary_xpos_scale_base = 16, .attn = {.dim_head = 8}});
  CHECK(xpos_only->config.rotary_pos_emb);
  CHECK(xpos_only->disable_abs_pos_emb());
  TransformerWrapper a({.num_tokens = 10, .max_seq_len = 6, .attn_layers = xpos_only});
  CHECK(!a.abs_pos_emb);
  TransformerWrapper b({.num_tokens = 10, .max_seq_len = 6,
                        .attn_layers = Decoder({.dim = 8, .depth = 1, .heads = 2, .rotary_pos_emb = true, .rotary_xpos = true,
                                                .rotary_xpos_scale_base = 16, .attn = {.dim_head = 8}})});
  perturb(a, g);
  b.load_state_dict(a.state_dict());  // the same names: no pos_emb.emb.weight; rotary_pos_emb.inv_freq and .scale
  P(a, "attn_layers.rotary_pos_emb.scale");
  Tensor tokens = randint(0, 10, {2, 6}, g);
  CHECK(a.forward(tokens).to_vector<float>() == b.forward(tokens).to_vector<float>());
  LoadedModel m = model_from_json(R"({"wrapper": "TransformerWrapper", "num_tokens": 10, "max_seq_len": 6,
      "attn_layers": {"type": "Decoder", "dim": 8, "depth": 1, "heads": 2, "attn_dim_head": 8,
                      "rotary_xpos": true, "rotary_xpos_scale_base": 16}})");
  m.module().load_state_dict(a.state_dict());  // strict: x-transformers' names load
  CHECK(m.transformer->forward(tokens).to_vector<float>() == a.forward(tokens).to_vector<float>());
}

TEST_CASE("ViTransformerWrapper without num_classes mean-pools to (b, dim), as x-transformers' Identity head") {
  Generator g(231);
  manual_seed(232);
  ViTransformerWrapper vit({.image_size = 8, .patch_size = 4, .attn_layers = Encoder({.dim = 8, .depth = 1, .heads = 2}),
                            .channels = 1, .num_register_tokens = 2});
  Tensor img = randn({3, 1, 8, 8}, g);
  Tensor pooled = vit.forward(img);
  CHECK(pooled.sizes() == Shape{3, 8});
  CHECK(close_or_same(pooled.to_vector<float>(), as_double(mean(vit.forward(img, true), {1})), 1e-6, 1e-5));
  CHECK(vit.forward(img, true).sizes() == Shape{3, 4, 8});  // return_embeddings: the patches, registers removed
}

namespace {
// x-transformers' Attend with residual attention and selective attention,
// materialised: sim = s·q·kᵀ + prev; masked; causal; then the selective
// subtraction; pre-softmax handed on.
Tensor xt_selective_residual(const nn::Attention& a, const Tensor& x, const Tensor& prev, Tensor& pre_softmax) {
  const int64_t b = x.size(0), n = x.size(1), h = a.config.heads, d = a.config.dim_head;
  Tensor q = linear(x, P(a, "to_q.weight")).reshape({b, n, h, d}).permute({0, 2, 1, 3});
  Tensor k = linear(x, P(a, "to_k.weight")).reshape({b, n, h, d}).permute({0, 2, 1, 3});
  Tensor v = linear(x, P(a, "to_v.weight")).reshape({b, n, h, d}).permute({0, 2, 1, 3});
  Tensor sim = matmul(q, k.transpose(-1, -2)) * float(1.0 / std::sqrt(double(d)));
  if (prev.defined()) sim = sim + prev;
  sim = where(tril(ones({n, n}, kBool)), sim, full({1}, kMaxNeg));
  // selective_attn: gate = relu(sim[:, 0]); column 0 and the diagonal zeroed;
  // shifted down one row; cumulative over rows; subtracted from every head.
  Tensor gate = relu(sim.select(1, 0));
  std::vector<float> keep(size_t(n * n), 1.0f);
  for (int64_t r = 0; r < n; ++r) keep[size_t(r * n)] = 0, keep[size_t(r * n + r)] = 0;
  gate = gate * from_vector(keep, {n, n});
  std::vector<Tensor> rows = {zeros({b, n})};
  for (int64_t r = 1; r < n; ++r) rows.push_back(rows.back() + gate.select(1, r - 1));
  sim = sim - stack(rows, 1).unsqueeze(1);
  pre_softmax = sim;
  Tensor out = matmul(softmax(sim, -1), v).permute({0, 2, 1, 3}).reshape({b, n, h * d});
  return linear(out, P(a, "to_out.weight"));
}
}  // namespace

TEST_CASE("Selective attention with residual attention: allowed, as in x-transformers, and equal to its definition") {
  Generator g(241);
  manual_seed(242);
  auto dec = Decoder({.dim = 8, .depth = 2, .heads = 2, .residual_attn = true, .attn = {.dim_head = 4, .selective = true},
                      .ff = {.mult = 1}});
  perturb(*dec, g);
  Tensor x = randn({2, 5, 8}, g).requires_grad_();
  auto by_hand = [&](const Inputs& in) {
    Tensor h = in[0], prev;
    for (const auto& l : dec->stack()) {
      Tensor normed = std::static_pointer_cast<LayerNorm>(l.pre_norm)->forward(h);
      if (l.type == "a") {
        Tensor next;
        h = h + xt_selective_residual(*l.attention, normed, prev, next);
        prev = next;
      } else {
        h = h + l.ff->forward(normed);
      }
    }
    return std::static_pointer_cast<LayerNorm>(dec->final_norm)->forward(h);
  };
  Tensor got = dec->forward(x), want = by_hand({x});
  CHECK(close_or_same(got.to_vector<float>(), as_double(want), 1e-5, 1e-4));
  Tensor r = randn(got.sizes(), g);
  (got * r).sum().backward();
  Tensor gx = x.grad();
  x.mutable_grad() = Tensor();
  (by_hand({x}) * r).sum().backward();
  CHECK(close_or_same(gx.to_vector<float>(), as_double(x.grad()), 1e-5, 1e-3));
  GradcheckResult gc = gradcheck([&](const Inputs& in) { return dec->forward(in[0]); }, {x}, {.eps = 1e-2});
  CHECK_MESSAGE(gc.passed, gc.report);
}

TEST_CASE("Config keys that change no math load, and those loom lacks load only at x-transformers' default") {
  const std::string base = R"({"wrapper": "TransformerWrapper", "num_tokens": 10, "max_seq_len": 6, )";
  auto with = [&](const std::string& wrapper_keys, const std::string& layer_keys) {
    return base + wrapper_keys + R"("attn_layers": {"type": "Decoder", "dim": 8, "depth": 1, "heads": 2, "attn_dim_head": 4)" +
           layer_keys + "}}";
  };
  manual_seed(251);
  LoadedModel plain = model_from_json(with("", ""));
  Generator g(252);
  Tensor tokens = randint(0, 10, {2, 6}, g);
  const Tensor want = plain.transformer->forward(tokens);
  // No math: flash (SDPA, same softmax), onnxable (how the causal mask is built), SDPA backend
  // choice, a log warning, settings read only by options that are off.
  for (const std::string& keys :
       {std::string(R"(, "attn_flash": true, "attn_onnxable": true, "attn_attend_sdp_kwargs": {"enable_math": false})"),
        std::string(R"(, "verbose": false, "cross_attn_flash": true)")}) {
    CAPTURE(keys);
    LoadedModel m = model_from_json(with(R"("attn_z_loss_weight": 0.5, "train_max_recycle_steps": 2, )", keys));
    m.module().load_state_dict(plain.module().state_dict());
    CHECK(m.transformer->forward(tokens).to_vector<float>() == want.to_vector<float>());
  }
  // Not implemented: the default loads (and is the same model), anything else names the key and the value.
  LoadedModel defaults = model_from_json(
      with(R"("recycling": false, "num_output_heads": 1, "embed_num_tokens": {}, )",
           R"(, "attn_hard": false, "attn_max_attend_past": null, "use_dynamic_tanh": false, "ff_glu_mult_bias": false,
              "softclamp_output": false, "rel_pos_kwargs": {})"));
  defaults.module().load_state_dict(plain.module().state_dict());
  CHECK(defaults.transformer->forward(tokens).to_vector<float>() == want.to_vector<float>());
  CHECK(error_of([&] { model_from_json(with("", R"(, "attn_hard": true)")); }) ==
        "config: 'attn_layers.attn_hard' = true is not supported by loom (only x-transformers' default, false)");
  CHECK(error_of([&] { model_from_json(with(R"("recycling": true, )", "")); }) ==
        "config: 'recycling' = true is not supported by loom (only x-transformers' default, false)");
  CHECK(error_of([&] { model_from_json(with("", R"(, "attn_max_attend_past": 4)")); }) ==
        "config: 'attn_layers.attn_max_attend_past' = 4 is not supported by loom (only x-transformers' default, null)");
  CHECK(error_of([&] { model_from_json(with("", R"(, "attn_flash": "yes")")); }) ==
        "config: 'attn_layers.attn_flash' must be a JSON boolean (loom ignores it: it changes no math), got \"yes\"");
  // and unknown keys still name the closest valid one
  CHECK(error_of([&] { model_from_json(with("", R"(, "attn_flsh": true)")); }) ==
        "config: unknown key 'attn_layers.attn_flsh' (did you mean 'attn_layers.attn_flash'?)");
}

TEST_CASE("loom forward: --attn-mask, --layer-pos and an XTransformer from --src/--tgt reproduce x-transformers' fixtures") {
  auto run_case = [&](const std::string& name, const std::string& flags) {
    const std::string dir = kXt + name + "/";
    Run r = cli("forward --config " + dir + "loom_config.json --weights " + dir + "weights.safetensors --output out.npy " + flags);
    REQUIRE_MESSAGE(r.code == 0, r.err);
    const Tensor want = read_npy(dir + "output.npy");
    CHECK(close_or_same(read_npy("out.npy").to_vector<float>(), as_double(want), 1e-5, 1e-4));
    std::remove("out.npy");
  };
  {
    const std::string d = kXt + "02c_decoder_attn_mask_bhij/";
    run_case("02c_decoder_attn_mask_bhij", "--input " + d + "input.npy --mask " + d + "mask.npy --attn-mask " + d + "attn_mask.npy");
  }
  {
    const std::string d = kXt + "03a_encoder_alibi_pos_subset/";
    run_case("03a_encoder_alibi_pos_subset", "--input " + d + "input.npy --mask " + d + "mask.npy --layer-pos " + d + "pos.npy");
    Run wrong = cli("forward --config " + d + "loom_config.json --weights " + d + "weights.safetensors --output out.npy --input " +
                    d + "input.npy --pos " + d + "pos.npy");
    CHECK(wrong.code == 1);
    CHECK(wrong.err.find("positions for ALiBi or rotary go in layer_pos") != std::string::npos);
  }
  // The whole XTransformer of 21 (encoder) and 22 (decoder, whose context is 21's output):
  // one config from x-transformers' own keyword arguments, one weights file.
  const std::string enc = kXt + "21_xtransformer_encoder/", dec = kXt + "22_xtransformer_decoder/";
  std::ifstream kw(enc + "xt_kwargs.json");
  nlohmann::json config = nlohmann::json::parse(kw)["model"]["kwargs"];
  config["wrapper"] = "XTransformer";
  std::ofstream("xt_config.json") << config.dump();
  NamedTensorList weights;
  for (auto& [n, t] : load_safetensors(enc + "weights.safetensors").tensors) weights.emplace_back("encoder." + n, t);
  for (auto& [n, t] : load_safetensors(dec + "weights.safetensors").tensors) weights.emplace_back("decoder.net." + n, t);
  save_safetensors("xt_weights.safetensors", weights);
  Run r = cli("forward --config xt_config.json --weights xt_weights.safetensors --src " + enc + "input.npy --tgt " + dec +
              "input.npy --mask " + enc + "mask.npy --output out.npy");
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(close_or_same(read_npy("out.npy").to_vector<float>(), as_double(read_npy(dec + "output.npy")), 1e-5, 1e-4));
  std::remove("out.npy");
  Run no_tgt = cli("forward --config xt_config.json --weights xt_weights.safetensors --src " + enc + "input.npy --output out.npy");
  CHECK(no_tgt.code == 2);
  CHECK(no_tgt.err == "loom forward: an XTransformer needs --src and --tgt (try 'loom forward --help')\n");
  Run bad = cli("forward --config xt_config.json --weights xt_weights.safetensors --src " + enc + "input.npy --tgt " + dec +
                "input.npy --context x.npy --output out.npy");
  CHECK(bad.code == 2);
  CHECK(bad.err == "loom forward: an XTransformer (--src, --tgt) does not take --context (try 'loom forward --help')\n");
  std::remove("xt_config.json");
  std::remove("xt_weights.safetensors");
}

TEST_CASE("loom forward --weights takes a checkpoint of loom train (its file or run folder)") {
  std::string text;
  for (int i = 0; i < 100; ++i) text += "the quick brown fox. ";
  std::ofstream("fw_corpus.txt") << text;
  std::ofstream("fw_config.json") << R"({"wrapper": "TransformerWrapper", "num_tokens": 256, "max_seq_len": 32,
    "attn_layers": {"type": "Decoder", "dim": 16, "depth": 1, "heads": 2, "attn_dim_head": 8}})";
  Run t = cli("train --config fw_config.json --data fw_corpus.txt --out fw_run --steps 3 --batch-size 2 --seq-len 16 "
              "--warmup 1 --eval-every 3 --eval-batches 1 > /dev/null");
  REQUIRE_MESSAGE(t.code == 0, t.err);
  write_npy("fw_tokens.npy", from_vector(std::vector<int64_t>{116, 104, 101, 32, 113, 117}, {1, 6}));
  Checkpoint ck = load_checkpoint("fw_run");
  NoGradGuard no_grad;
  ck.model.module().eval();
  const Tensor want = ck.model.transformer->forward(read_npy("fw_tokens.npy"));
  for (const std::string& weights : {std::string("fw_run"), std::string("fw_run/checkpoint.safetensors")})
    for (bool with_config : {false, true}) {
      CAPTURE(weights);
      CAPTURE(with_config);
      Run r = cli(std::string("forward ") + (with_config ? "--config fw_config.json " : "") + "--weights " + weights +
                  " --input fw_tokens.npy --output fw_out.npy");
      REQUIRE_MESSAGE(r.code == 0, r.err);
      CHECK(read_npy("fw_out.npy").to_vector<float>() == want.to_vector<float>());
    }
  // a plain weights file still needs its config
  save_safetensors("fw_plain.safetensors", ck.model.module().state_dict());
  Run no_config = cli("forward --weights fw_plain.safetensors --input fw_tokens.npy --output fw_out.npy");
  CHECK(no_config.code == 2);
  CHECK(no_config.err ==
        "loom forward: --config is required (only a loom train checkpoint carries its own) (try 'loom forward --help')\n");
  std::filesystem::remove_all("fw_run");
  for (const char* f : {"fw_corpus.txt", "fw_config.json", "fw_tokens.npy", "fw_out.npy", "fw_plain.safetensors"}) std::remove(f);
}
