// ContinuousTransformerWrapper, ViTransformerWrapper, XTransformer: names,
// the math of each step, and (for the encoder-decoder) that it learns.
#include "helpers.h"

#include <loom/loom.h>

#include <algorithm>

using namespace loom;

namespace {
std::vector<std::string> names_of(const nn::Module& m) {
  std::vector<std::string> out;
  for (auto& [name, t] : m.state_dict()) out.push_back(name);
  return out;
}
bool has(const std::vector<std::string>& v, const std::string& s) { return std::find(v.begin(), v.end(), s) != v.end(); }
}  // namespace

TEST_CASE("ContinuousTransformerWrapper: project in, positions, layers, masked average pool, project out") {
  manual_seed(1);
  Generator g(2);
  ContinuousTransformerWrapper model({.max_seq_len = 8,
                                      .attn_layers = nn::Encoder({.dim = 8, .depth = 1, .heads = 2, .attn = {.dim_head = 4}}),
                                      .dim_in = 5, .dim_out = 3});
  std::vector<std::string> n = names_of(model);
  for (const char* want : {"project_in.weight", "project_out.weight", "pos_emb.emb.weight", "attn_layers.final_norm.gamma"})
    CHECK_MESSAGE(has(n, want), want);
  Tensor x = randn({2, 6, 5}, g), mask = ones({2, 6}, kBool);
  mask.select(0, 1).narrow(0, 4, 2).fill_(0.0);
  Tensor h = linear(x, model.project_in->weight);
  h = h + model.abs_pos_emb->forward(h);
  Tensor want = linear(model.attn_layers->forward(h, {.mask = mask}), model.project_out->weight);
  CHECK(model.forward(x, {.mask = mask}).to_vector<float>() == want.to_vector<float>());

  ContinuousTransformerWrapper pooled({.max_seq_len = 8,
                                       .attn_layers = nn::Encoder({.dim = 8, .depth = 1, .heads = 2, .attn = {.dim_head = 4}}),
                                       .dim_in = 5, .average_pool_embed = true});
  Tensor emb = pooled.forward(x, {.mask = mask, .return_embeddings = true});
  REQUIRE(emb.sizes() == Shape{2, 8});
  // Sample 1 averages its 4 real positions only.
  Tensor h1 = linear(x, pooled.project_in->weight);
  h1 = pooled.attn_layers->forward(h1 + pooled.abs_pos_emb->forward(h1), {.mask = mask});
  CHECK(all_close(emb.select(0, 1).to_vector<float>(), mean(h1.select(0, 1).narrow(0, 0, 4), {0}).to_vector<float>(),
                  1e-6f, 1e-5f));
  CHECK_THROWS_WITH_AS(model.forward(randn({2, 6, 4}, g)),
                       "ContinuousTransformerWrapper: expects float32 x (b, n, 5), got [2, 6, 4]", Error);
}

TEST_CASE("ViTransformerWrapper: x-transformers' patch layout, names, logits") {
  // 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'
  Tensor img = arange(0, 2 * 3 * 4 * 4, kFloat32).reshape({2, 3, 4, 4});
  Tensor p = ViTransformerWrapper::patchify(img, 2);
  REQUIRE(p.sizes() == Shape{2, 4, 12});
  std::vector<float> pv = p.to_vector<float>(), iv = img.to_vector<float>();
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t hh = 0; hh < 2; ++hh)
      for (int64_t ww = 0; ww < 2; ++ww)
        for (int64_t p1 = 0; p1 < 2; ++p1)
          for (int64_t p2 = 0; p2 < 2; ++p2)
            for (int64_t c = 0; c < 3; ++c)
              CHECK(pv[size_t(((b * 4 + hh * 2 + ww) * 2 * 2 + p1 * 2 + p2) * 3 + c)] ==
                    iv[size_t(((b * 3 + c) * 4 + hh * 2 + p1) * 4 + ww * 2 + p2)]);
  manual_seed(3);
  ViTransformerWrapper vit({.image_size = 8, .patch_size = 4,
                            .attn_layers = nn::Encoder({.dim = 16, .depth = 1, .heads = 2, .attn = {.dim_head = 8}}),
                            .channels = 1, .num_classes = 10, .num_register_tokens = 2});
  std::vector<std::string> n = names_of(vit);
  for (const char* want : {"pos_embedding", "register_tokens", "patch_to_embedding.0.gamma", "patch_to_embedding.1.weight",
                           "patch_to_embedding.2.gamma", "mlp_head.weight", "attn_layers.layers.0.1.to_q.weight"})
    CHECK_MESSAGE(has(n, want), want);
  Generator g(4);
  Tensor images = rand({3, 1, 8, 8}, g);
  CHECK(vit.forward(images).sizes() == Shape{3, 10});
  CHECK(vit.forward(images, true).sizes() == Shape{3, 4, 16});
  CHECK_THROWS_WITH_AS(ViTransformerWrapper({.image_size = 10, .patch_size = 4, .attn_layers = nn::Encoder({.dim = 8, .depth = 1})}),
                       "ViTransformerWrapper: image_size (10) must be a positive multiple of patch_size (4)", Error);
}

TEST_CASE("XTransformer: x-transformers' names, it learns to reverse sequences, cached decoding matches") {
  manual_seed(5);
  XTransformer model({.dim = 32, .enc_num_tokens = 10, .enc_max_seq_len = 8,
                      .enc = {.depth = 1, .heads = 2, .attn = {.dim_head = 16}}, .dec_num_tokens = 10,
                      .dec_max_seq_len = 8, .dec = {.depth = 1, .heads = 2, .attn = {.dim_head = 16}}});
  std::vector<std::string> n = names_of(model);
  for (const char* want : {"encoder.token_emb.emb.weight", "encoder.attn_layers.layers.0.1.to_q.weight",
                           "decoder.net.token_emb.emb.weight", "decoder.net.attn_layers.layers.1.1.to_k.weight",
                           "decoder.net.to_logits.weight"})
    CHECK_MESSAGE(has(n, want), want);
  CHECK(!has(n, "encoder.to_logits.weight"));  // the encoder returns embeddings

  // Reverse 4 digits (1..9); the decoder starts from token 0.
  Generator g(6);
  std::vector<Tensor> params = model.parameters();
  auto batch = [&](int64_t b) {
    Tensor src = randint(1, 10, {b, 4}, g);
    std::vector<int64_t> s = src.to_vector<int64_t>(), t;
    for (int64_t r = 0; r < b; ++r) {
      t.push_back(0);
      for (int64_t c = 3; c >= 0; --c) t.push_back(s[size_t(r * 4 + c)]);
    }
    return std::make_pair(src, from_vector(t, {b, 5}));
  };
  float first = 0, last = 0;
  for (int step = 0; step < 200; ++step) {
    auto [src, tgt] = batch(16);
    for (Tensor& p : params) p.mutable_grad() = Tensor();
    Tensor loss = model.loss(src, tgt);
    loss.backward();
    {
      NoGradGuard no_grad;
      for (Tensor& p : params) p -= 0.3f * p.grad();
    }
    if (step == 0) first = loss.item<float>();
    last = loss.item<float>();
  }
  CHECK(last < 0.5f * first);
  auto [src, tgt] = batch(4);
  Generator g1(7), g2(7);
  Tensor start = zeros({4, 1}, kInt64);
  Tensor cached = model.generate(src, start, 4, {.temperature = 0}, g1);
  Tensor uncached = model.generate(src, start, 4, {.temperature = 0, .cache_kv = false}, g2);
  CHECK(cached.to_vector<int64_t>() == uncached.to_vector<int64_t>());
  CHECK(model.is_training());  // generate restores the mode
}
