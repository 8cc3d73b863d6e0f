// docs/models.md: a model in three lines, positions, generation, Transformer-XL memories.
// doc: models_quickstart
#include <loom/loom.h>

// doc: pause
int main() {
  loom::Generator g(0);
  loom::Tensor tokens = loom::randint(0, 256, {2, 16}, g);
  {
    // doc: resume
    auto model = loom::TransformerWrapper({.num_tokens = 256, .max_seq_len = 1024,
        .attn_layers = loom::nn::Decoder({.dim = 512, .depth = 6, .heads = 8, .rotary_pos_emb = true,
                                          .attn = {.dim_head = 64}, .ff = {.glu = true}})});
    loom::Tensor logits = model.forward(tokens);                 // tokens: int64 (b, n) -> (b, n, 256)
    // doc: end
    if (logits.sizes() != loom::Shape{2, 16, 256}) return 1;
  }
  {
    auto model = loom::TransformerWrapper({.num_tokens = 256, .max_seq_len = 64,
        .attn_layers = loom::nn::Decoder({.dim = 32, .depth = 1, .heads = 2, .alibi_pos_bias = true})});
    loom::Tensor times = loom::cumsum(loom::rand({2, 16}, g), 1) * 3.0f;  // irregular sample times
    // doc: models_positions
    // pos: the wrapper's own, int64 rows of the absolute embedding (x-transformers' pos)
    loom::Tensor a = model.forward(tokens, {.pos = 15 - loom::arange(16)});
    // layer_pos: the positions ALiBi and rotary see (x-transformers' AttentionLayers pos)
    loom::Tensor b = model.forward(tokens, {.layer_pos = times});
    // doc: end
    if (a.sizes() != b.sizes()) return 1;
  }
  {
    loom::Tensor prompt = tokens.narrow(1, 0, 4);
    // doc: models_generate
    auto net = std::make_shared<loom::TransformerWrapper>(loom::TransformerWrapperConfig{
        .num_tokens = 256, .max_seq_len = 1024,
        .attn_layers = loom::nn::Decoder({.dim = 128, .depth = 2, .heads = 4, .rotary_pos_emb = true})});
    loom::AutoregressiveWrapper ar(net);
    loom::Generator gen(42);
    loom::Tensor next = ar.generate(prompt, 100, {.temperature = 0.8, .top_k = 40, .eos_token = 0}, gen);
    // doc: end
    if (next.size(0) != 2 || next.size(1) > 100) return 1;
  }
  {
    loom::Tensor segment1 = tokens.narrow(1, 0, 8), segment2 = tokens.narrow(1, 8, 8);
    // doc: models_xl
    auto xl = loom::TransformerWrapper({.num_tokens = 256, .max_seq_len = 0,
        .attn_layers = loom::nn::Decoder({.dim = 64, .depth = 2, .heads = 4, .rotary_pos_emb = true}),
        .max_mem_len = 32});
    std::vector<loom::Tensor> mems;  // one per self-attention layer
    loom::Tensor logits1 = xl.forward(segment1, {.mems_out = &mems});
    loom::Tensor logits2 = xl.forward(segment2, {.mems = mems, .mems_out = &mems});  // sees segment1 too
    // doc: end
    if (mems.size() != 2 || mems[0].size(1) != 16 || logits2.sizes() != logits1.sizes()) return 1;
  }
  return 0;
}
