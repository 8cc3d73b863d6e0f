// safetensors: bit-identical round trips, checkpoints of modules, and clear
// errors for every kind of broken file.
#include "helpers.h"

#include <loom/loom.h>

#include <cstdio>
#include <fstream>
#include <iterator>

using namespace loom;

namespace {
std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
void write_all(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}
// A file from a header text and data bytes, as another writer would make it.
std::string make_file(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char((header.size() >> (8 * i)) & 0xff);
  return out + header + data;
}
}  // namespace

TEST_CASE("safetensors: every dtype round-trips bit for bit, with metadata and file order") {
  Generator g(1);
  NamedTensorList ts = {{"z.weight", randn({3, 5}, g)},
                        {"a.ids", randint(-9, 9, {4}, g)},
                        {"m.mask", tensor(std::vector<bool>{true, false, true})},
                        {"b.half", randn({2, 2}, g).to(kBFloat16)},
                        {"s.scalar", scalar_tensor(2.5)},
                        {"e.empty", zeros({0, 3})},
                        {"t.view", randn({4, 6}, g).t()}};  // non-contiguous: saved in logical order
  save_safetensors("loom_test.safetensors", ts, {{"format", "pt"}});
  SafetensorsFile f = load_safetensors("loom_test.safetensors");
  REQUIRE(f.tensors.size() == ts.size());
  CHECK(f.metadata.at("format") == "pt");
  for (size_t i = 0; i < ts.size(); ++i) {
    CAPTURE(ts[i].first);
    CHECK(f.tensors[i].first == ts[i].first);
    CHECK(f.tensors[i].second.sizes() == ts[i].second.sizes());
    CHECK(f.tensors[i].second.dtype() == ts[i].second.dtype());
    Tensor a = f.tensors[i].second, b = ts[i].second.contiguous();
    CHECK(std::string(static_cast<const char*>(a.raw_data()), size_t(a.numel()) * element_size(a.dtype())) ==
          std::string(static_cast<const char*>(b.raw_data()), size_t(b.numel()) * element_size(b.dtype())));
  }
  // The header is what other readers expect.
  std::string bytes = read_all("loom_test.safetensors");
  CHECK(bytes.find("\"z.weight\":{\"dtype\":\"F32\",\"shape\":[3,5],\"data_offsets\":[0,60]}") != std::string::npos);
  std::remove("loom_test.safetensors");
}

TEST_CASE("safetensors: F16 and F64 from other writers are read as float32") {
  // 1.0, -2.0, 0.5 in float16, then 3.25 in float64.
  std::string data = std::string("\x00\x3c\x00\xc0\x00\x38", 6) + std::string("\x00\x00\x00\x00\x00\x00\x0a\x40", 8);
  write_all("loom_test.safetensors",
            make_file(R"({"h":{"dtype":"F16","shape":[3],"data_offsets":[0,6]},"d":{"dtype":"F64","shape":[1],"data_offsets":[6,14]}})",
                      data));
  SafetensorsFile f = load_safetensors("loom_test.safetensors");
  CHECK(f.tensors[0].second.to_vector<float>() == std::vector<float>{1.0f, -2.0f, 0.5f});
  CHECK(f.tensors[1].second.to_vector<float>() == std::vector<float>{3.25f});
  std::remove("loom_test.safetensors");
}

TEST_CASE("safetensors: broken files give errors that say what is wrong") {
  const std::string p = "loom_test.safetensors";
  const std::string good_header = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string data(8, '\0');
  auto error_of = [&](const std::string& bytes) {
    write_all(p, bytes);
    try {
      load_safetensors(p);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(error_of(make_file(good_header, data)) == "no error");
  CHECK(error_of("abc") == "load_safetensors: 'loom_test.safetensors' is too short (3 bytes) to be a safetensors file");
  CHECK(error_of(make_file(good_header, data).substr(0, 20)) ==
        "load_safetensors: 'loom_test.safetensors' declares a 54-byte header but has only 12 bytes after the length "
        "(truncated or not safetensors)");
  CHECK(error_of(make_file(good_header, data.substr(0, 4))) ==
        "load_safetensors: 'loom_test.safetensors': tensor 'w' data [0, 8) lies outside the 4 bytes of data (truncated "
        "file?)");
  CHECK(error_of(make_file("{\"w\": [1, 2", data)).find("has a malformed header") != std::string::npos);
  CHECK(error_of(make_file(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data)) ==
        "load_safetensors: 'loom_test.safetensors': tensor 'w' of shape [3] and dtype F32 needs 12 bytes, its "
        "data_offsets give 8");
  CHECK(error_of(make_file(R"({"w":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}})", data)) ==
        "load_safetensors: 'loom_test.safetensors': tensor 'w' has dtype U8, which loom does not read (F32, F16, F64, "
        "BF16, I64, BOOL)");
  CHECK(error_of(make_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", data)) ==
        "load_safetensors: 'loom_test.safetensors': tensor data leaves a hole at byte 0");
  CHECK(error_of(make_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", data)) ==
        "load_safetensors: 'loom_test.safetensors': 4 bytes of data belong to no tensor");
  CHECK(error_of(make_file(R"({"w":{"dtype":"BOOL","shape":[8],"data_offsets":[0,8]}})", std::string(7, '\0') + "\x07")) ==
        "load_safetensors: 'loom_test.safetensors': bool tensor 'w' holds byte 7 (only 0 and 1 are valid)");
  CHECK(error_of(make_file(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data)) ==
        "load_safetensors: 'loom_test.safetensors': tensor 'w' has a negative or non-integer size");
  std::remove(p.c_str());
  CHECK_THROWS_WITH_AS(load_safetensors("/nonexistent/x.safetensors"),
                       "load_safetensors: cannot open '/nonexistent/x.safetensors': No such file or directory", Error);
}

TEST_CASE("A model saved and loaded back gives the same outputs, load_state_dict checks names and shapes") {
  manual_seed(2);
  auto make = [] {
    return TransformerWrapper({.num_tokens = 13, .max_seq_len = 6,
                               .attn_layers = nn::Decoder({.dim = 8, .depth = 2, .heads = 2, .rotary_pos_emb = true,
                                                           .attn = {.dim_head = 4, .num_mem_kv = 1}})});
  };
  TransformerWrapper a = make();
  save_safetensors("loom_model.safetensors", a.state_dict());
  manual_seed(3);  // different initial weights
  TransformerWrapper b = make();
  Tensor tokens = tensor(std::vector<int64_t>{1, 5, 7, 12, 0, 3}).reshape({1, 6});
  CHECK(a.forward(tokens).to_vector<float>() != b.forward(tokens).to_vector<float>());
  b.load_state_dict(load_safetensors("loom_model.safetensors").tensors);
  CHECK(a.forward(tokens).to_vector<float>() == b.forward(tokens).to_vector<float>());
  std::remove("loom_model.safetensors");

  // A bfloat16 checkpoint (PyTorch's model.bfloat16()) loads into the float32
  // weights exactly widened: the model then computes with the rounded weights.
  {
    NamedTensorList half;
    for (auto& [name, t] : a.state_dict()) half.emplace_back(name, t.to(kBFloat16));
    save_safetensors("loom_model_bf16.safetensors", half);
    SafetensorsFile f = load_safetensors("loom_model_bf16.safetensors");
    CHECK(f.tensors[0].second.dtype() == kBFloat16);
    b.load_state_dict(f.tensors);
    for (size_t i = 0; i < half.size(); ++i) {
      CAPTURE(half[i].first);
      CHECK(b.state_dict()[i].second.dtype() == kFloat32);
      CHECK(b.state_dict()[i].second.to_vector<float>() == half[i].second.to(kFloat32).to_vector<float>());
    }
    CHECK(a.forward(tokens).to_vector<float>() != b.forward(tokens).to_vector<float>());  // rounded weights
    std::remove("loom_model_bf16.safetensors");
  }

  nn::NamedTensors state = a.state_dict();
  state.pop_back();
  CHECK_THROWS_WITH_AS(b.load_state_dict(state), "load_state_dict: missing keys: to_logits.weight", Error);
  state = a.state_dict();
  state.emplace_back("extra.weight", zeros({1}));
  CHECK_THROWS_WITH_AS(b.load_state_dict(state), "load_state_dict: unexpected keys: extra.weight", Error);
  b.load_state_dict(state, false);  // non-strict ignores it
  state = a.state_dict();
  state[0].second = zeros({13, 9});
  CHECK_THROWS_WITH_AS(b.load_state_dict(state),
                       "load_state_dict: 'token_emb.emb.weight' has shape [13, 9] float32, the module expects [13, 8] "
                       "float32",
                       Error);
  state[0].second = zeros({13, 8}).to(kInt64);  // only bfloat16 widens into float32
  CHECK_THROWS_WITH_AS(b.load_state_dict(state),
                       "load_state_dict: 'token_emb.emb.weight' has shape [13, 8] int64, the module expects [13, 8] "
                       "float32",
                       Error);
}
