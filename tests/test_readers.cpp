// Hostile files: every reader (.npy, safetensors, JSON configs, text data)
// checks sizes with overflow-checked products against what the file holds,
// and answers a broken file with a loom::Error naming the file and the
// field. The inputs here are the ones fuzzing and a new user's probing
// found (issue 11); tests/fuzz/ keeps looking for more.
#include "helpers.h"

#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>

#include <loom/core/io.h>
#include <loom/core/json.h>
#include <loom/core/storage.h>

using namespace loom;

namespace {

void write_all(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

// A .npy file as NumPy lays it out: magic, version, header length (2 bytes
// for version 1, 4 for version 2), the header dict, the data.
std::string npy_file(const std::string& dict, const std::string& data, int major = 1) {
  const std::string header = dict + "\n";
  std::string out = std::string("\x93NUMPY", 6) + char(major) + '\0';
  const int len_bytes = major == 1 ? 2 : 4;
  for (int i = 0; i < len_bytes; ++i) out += char((header.size() >> (8 * i)) & 0xff);
  return out + header + data;
}

std::string npy_dict(const std::string& descr, const std::string& shape) {
  return "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
}

// A safetensors file from a header text and data bytes.
std::string safetensors_file(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char((header.size() >> (8 * i)) & 0xff);
  return out + header + data;
}


// Restores "no memory limit" however the test ends.
struct MemoryLimit {
  explicit MemoryLimit(int64_t bytes) { set_memory_limit(bytes); }
  ~MemoryLimit() { set_memory_limit(0); }
};

}  // namespace

TEST_CASE("npy: files as NumPy writes them are read, versions 1 and 2, every dtype loom takes") {
  const std::string p = "loom_readers_good.npy";
  const float f[3] = {1.5f, -2.0f, 0.25f};
  write_all(p, npy_file(npy_dict("<f4", "(3,)"), std::string(reinterpret_cast<const char*>(f), 12)));
  CHECK(read_npy(p).to_vector<float>() == std::vector<float>{1.5f, -2.0f, 0.25f});
  CHECK(read_npy(p).sizes() == Shape{3});
  const double d[2] = {3.25, -1.0};
  write_all(p, npy_file(npy_dict("<f8", "(1, 2)"), std::string(reinterpret_cast<const char*>(d), 16), 2));
  CHECK(read_npy(p).sizes() == Shape{1, 2});
  CHECK(read_npy(p).to_vector<float>() == std::vector<float>{3.25f, -1.0f});
  const int32_t i[2] = {-7, 9};
  write_all(p, npy_file(npy_dict("<i4", "(2,)"), std::string(reinterpret_cast<const char*>(i), 8)));
  CHECK(read_npy(p).to_vector<int64_t>() == std::vector<int64_t>{-7, 9});
  const int64_t scalar = 42;
  write_all(p, npy_file(npy_dict("<i8", "()"), std::string(reinterpret_cast<const char*>(&scalar), 8)));
  CHECK(read_npy(p).dim() == 0);
  CHECK(read_npy(p).item<int64_t>() == 42);
  write_all(p, npy_file(npy_dict("|b1", "(0, 5)"), ""));
  CHECK(read_npy(p).sizes() == Shape{0, 5});
  // And loom's own files round-trip.
  Tensor t = arange(0, 6, kFloat32).reshape({2, 3});
  write_npy(p, t);
  CHECK(read_npy(p).to_vector<float>() == t.to_vector<float>());
  CHECK(!std::filesystem::exists(p + ".tmp"));
  std::remove(p.c_str());
}

TEST_CASE("npy: hostile shapes and sizes give errors naming the file and the field") {
  const std::string p = "loom_readers_bad.npy";
  auto read = [&](const std::string& bytes) {
    write_all(p, bytes);
    return error_of([&] { read_npy(p); });
  };
  // 2^40 x 2^30 elements and no data: the count used to overflow to 0.
  CHECK(read(npy_file(npy_dict("<i8", "(1099511627776, 1073741824)"), "")) ==
        "read_npy: 'loom_readers_bad.npy' declares shape [1099511627776, 1073741824], more than 2^63 elements");
  // A size longer than int64 (std::stoll's out_of_range used to escape).
  CHECK(read(npy_file(npy_dict("<i8", "(99999999999999999999999, 1)"), "")) ==
        "read_npy: 'loom_readers_bad.npy' has a malformed shape (99999999999999999999999, 1): size "
        "99999999999999999999999 does not fit in int64");
  // (-2, 9) used to be read as (2, 9).
  CHECK(read(npy_file(npy_dict("<i8", "(-2, 9)"), std::string(144, '\0'))) ==
        "read_npy: 'loom_readers_bad.npy' has a malformed shape (-2, 9): negative size -2");
  // A zero size beside huge ones: no data, but strides that overflow int64.
  CHECK(read(npy_file(npy_dict("<f4", "(0, 4611686018427387904, 4611686018427387904)"), "")) ==
        "read_npy: 'loom_readers_bad.npy': shape [0, 4611686018427387904, 4611686018427387904] is too large: its "
        "strides overflow int64");
  // Found by tests/fuzz: strides that fit int64 in elements but not in bytes (a UBSan report in contiguous()).
  CHECK(read(npy_file(npy_dict("<f8", "(2, 2, 112222222, 20, 50012967, 20, 0)"), "")) ==
        "read_npy: 'loom_readers_bad.npy': shape [2, 2, 112222222, 20, 50012967, 20, 0] is too large: its strides "
        "overflow int64");
  // Elements that fit, bytes that do not.
  CHECK(read(npy_file(npy_dict("<f8", "(2305843009213693952,)"), "")) ==
        "read_npy: 'loom_readers_bad.npy' declares shape [2305843009213693952] of dtype <f8, more than 2^64 bytes");
  CHECK(read(npy_file(npy_dict("<f4", "(2, 3)"), std::string(8, '\0'))) ==
        "read_npy: 'loom_readers_bad.npy' should hold 24 bytes of data for shape [2, 3] and dtype <f4, it has 8");
  CHECK(read(npy_file(npy_dict("<f4", "(2, x)"), "")) ==
        "read_npy: 'loom_readers_bad.npy' has a malformed shape (2, x): 'x' is not a size");
  CHECK(read(npy_file(npy_dict("<f4", "[2]"), "")) ==
        "read_npy: 'loom_readers_bad.npy' has a malformed shape [2]: not a tuple");
  CHECK(read(npy_file(npy_dict("|b1", "(2,)"), std::string("\x01\x07", 2))) ==
        "read_npy: 'loom_readers_bad.npy': bool element 1 holds byte 7 (only 0 and 1 are valid)");
  CHECK(read(npy_file("{'descr': '<f4', 'fortran_order': False}", "")).rfind(
            "read_npy: 'loom_readers_bad.npy' header has no 'shape'", 0) == 0);
  CHECK(read(npy_file(npy_dict("<f4", "(1,)"), "").substr(0, 12))
            .rfind("read_npy: 'loom_readers_bad.npy' is truncated (header of ", 0) == 0);
  CHECK(read("\x93NUMPY") == "read_npy: 'loom_readers_bad.npy' is not a .npy file");
  std::remove(p.c_str());

  std::filesystem::create_directories("loom_readers_dir.npy");
  CHECK(error_of([] { read_npy("loom_readers_dir.npy"); }) ==
        "read_npy: 'loom_readers_dir.npy' is a directory, not a file loom can read");
  std::filesystem::remove_all("loom_readers_dir.npy");
  CHECK(error_of([] { read_npy("loom_readers_missing.npy"); }) ==
        "read_npy: cannot open 'loom_readers_missing.npy': No such file or directory");
}

TEST_CASE("safetensors: hostile shapes, duplicate names and directories give errors naming the file and tensor") {
  const std::string p = "loom_readers_bad.safetensors";
  auto read = [&](const std::string& header, const std::string& data = "") {
    write_all(p, safetensors_file(header, data));
    return error_of([&] { load_safetensors(p); });
  };
  CHECK(read(R"({"w":{"dtype":"F32","shape":[0,4611686018427387904,4611686018427387904],"data_offsets":[0,0]}})") ==
        "load_safetensors: 'loom_readers_bad.safetensors': tensor 'w' cannot be made: shape [0, 4611686018427387904, "
        "4611686018427387904] is too large: its strides overflow int64");
  CHECK(read(R"({"w":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,0]}})") ==
        "load_safetensors: 'loom_readers_bad.safetensors': tensor 'w' has a size that does not fit in int64");
  CHECK(read(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,0]}})") ==
        "load_safetensors: 'loom_readers_bad.safetensors': tensor 'w' has more elements than fit in 64 bits");
  CHECK(read(R"({"w":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}})") ==
        "load_safetensors: 'loom_readers_bad.safetensors': tensor 'w' needs more than 2^64 bytes");
  // Sizes are capped by the data the file holds, before anything is allocated.
  CHECK(read(R"({"w":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,8]}})", std::string(8, '\0')) ==
        "load_safetensors: 'loom_readers_bad.safetensors': tensor 'w' of shape [1099511627776] and dtype F32 needs "
        "4398046511104 bytes, its data_offsets give 8");
  CHECK(read(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
             std::string(8, '\0')) ==
        "load_safetensors: 'loom_readers_bad.safetensors' has a malformed header: the key 'w' appears twice");
  CHECK(read(R"({"__metadata__":{"step":"1","step":"2"}})") ==
        "load_safetensors: 'loom_readers_bad.safetensors' has a malformed header: the key '__metadata__.step' appears "
        "twice");
  std::remove(p.c_str());
  std::filesystem::create_directories("loom_readers_dir.safetensors");
  CHECK(error_of([] { load_safetensors("loom_readers_dir.safetensors"); }) ==
        "load_safetensors: 'loom_readers_dir.safetensors' is a directory, not a file loom can read");
  std::filesystem::remove_all("loom_readers_dir.safetensors");
}

TEST_CASE("Tensors refuse shapes whose element count, strides or bytes overflow") {
  CHECK(error_of([] { empty({0, int64_t(1) << 62, int64_t(1) << 62}); }) ==
        "shape [0, 4611686018427387904, 4611686018427387904] is too large: its strides overflow int64");
  CHECK(error_of([] { empty({int64_t(1) << 40, int64_t(1) << 30}); }) ==
        "shape [1099511627776, 1073741824] is too large: its strides overflow int64");
  // Strides are used in bytes: 2^61 float elements would overflow them (found by fuzzing read_npy).
  CHECK(error_of([] { empty({0, int64_t(1) << 61}, kFloat32); }) ==
        "shape [0, 2305843009213693952] is too large: its strides overflow int64");
  CHECK(empty({0, int64_t(1) << 59}, kInt64).strides() == Shape{int64_t(1) << 59, 1});
  // More bytes than the machine has: an error before malloc is asked.
  const std::string e = error_of([] { empty({int64_t(1) << 59}, kFloat32); });
  CHECK(e.rfind("out of memory: a tensor of 2305843009213693952 bytes is more than this machine's memory (", 0) == 0);
  CHECK(error_of([] { zeros({0}).reshape({0, int64_t(1) << 62, int64_t(1) << 62}); }) ==
        "shape [0, 4611686018427387904, 4611686018427387904] is too large: its strides overflow int64");
  CHECK(error_of([] { zeros({1, 1}).expand({int64_t(1) << 40, int64_t(1) << 40}).numel(); }) ==
        "shape [1099511627776, 1099511627776] has more than 2^63 elements");
  // Sizes that fit still work, empty ones too.
  CHECK(empty({0, int64_t(1) << 30, int64_t(1) << 29}).numel() == 0);
  CHECK(empty({0, int64_t(1) << 30, int64_t(1) << 29}).strides() == Shape{int64_t(1) << 59, int64_t(1) << 29, 1});
}

TEST_CASE("A memory limit turns a huge allocation into an error naming its size") {
  MemoryLimit limit(memory_allocated() + (int64_t(1) << 20));
  Tensor small = zeros({1000});  // 4 kB fits under the limit
  CHECK(small.numel() == 1000);
  const std::string e = error_of([] { empty({int64_t(1) << 20}); });
  CHECK(e.rfind("out of memory: a tensor of 4194304 bytes would exceed the memory limit of ", 0) == 0);
}

TEST_CASE("JSON: a key given twice is an error naming its path, equal keys in different objects are fine") {
  CHECK(error_of([] { parse_json(R"({"a": 1, "a": 2})", "x.json"); }) == "x.json: the key 'a' appears twice");
  CHECK(error_of([] { parse_json(R"({"a": {"b": 1, "c": {"d": 0}, "b": 2}})", "x.json"); }) ==
        "x.json: the key 'a.b' appears twice");
  CHECK(error_of([] { parse_json(R"({"a": [{"x": 1}, {"x": 1, "x": 2}]})", "x.json"); }) ==
        "x.json: the key 'a.x' appears twice");
  const nlohmann::json j = parse_json(R"({"a": {"x": 1}, "b": {"x": 2}, "c": [{"x": 3}, {"x": 4}]})", "x.json");
  CHECK(j["b"]["x"] == 2);
  CHECK(j["c"][1]["x"] == 4);
  CHECK(error_of([] { parse_json("{\"a\": ", "x.json"); }).rfind("x.json: not valid JSON: ", 0) == 0);
}

TEST_CASE("Configs: duplicate keys, a directory, and sizes that make no layer name the config key") {
  const std::string head =
      R"({"wrapper": "TransformerWrapper", "num_tokens": 256, "attn_layers": {"type": "Decoder", "depth": 1, )";
  CHECK(error_of([&] { model_from_json(head + R"("dim": 16, "heads": 2, "heads": 4}})", "c.json"); }) ==
        "c.json: the key 'attn_layers.heads' appears twice");
  // ff_mult 0.001 at dim 16 is a feedforward of 0 units; the error used to name an internal Linear.
  CHECK(error_of([&] { model_from_json(head + R"("dim": 16, "ff_mult": 0.001}})", "c.json"); }) ==
        "c.json: 'attn_layers.ff_mult' 0.001 gives a feedforward of no units at dim 16 (dim x ff_mult must be >= 1)");
  CHECK(model_from_json(head + R"("dim": 16, "ff_mult": 0.0625}})", "c.json").transformer != nullptr);  // 1 unit
  CHECK(error_of([] {
          model_from_json(R"({"wrapper": "XTransformer", "dim": 8, "enc_num_tokens": 5, "dec_num_tokens": 5,
                              "enc_ff_mult": 0.01})",
                          "x.json");
        }) == "x.json: 'enc_ff_mult' 0.01 gives a feedforward of no units at dim 8 (dim x ff_mult must be >= 1)");
  // Errors from inside the layers get the config's name in front.
  CHECK(error_of([&] { model_from_json(head + R"("dim": 16, "rotary_pos_emb": true, "rotary_emb_dim": 3}})", "c.json"); })
            .rfind("c.json: RotaryEmbedding: ", 0) == 0);
  std::filesystem::create_directories("loom_readers_config_dir");
  CHECK(error_of([] { model_from_config_file("loom_readers_config_dir"); }) ==
        "config: 'loom_readers_config_dir' is a directory, not a file loom can read");
  std::filesystem::remove_all("loom_readers_config_dir");
}

TEST_CASE("Text data: a FIFO or a missing file is an error, not a hang") {
  const std::string fifo = "loom_readers_fifo";
  std::remove(fifo.c_str());
  REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
  CHECK(error_of([&] { load_text_corpus(fifo); }) ==
        "load_text_corpus: 'loom_readers_fifo' is not a regular file, not a file loom can read");
  std::remove(fifo.c_str());
  CHECK(error_of([] { read_file("loom_readers_missing.txt", "who"); }) ==
        "who: cannot open 'loom_readers_missing.txt': No such file or directory");
  // A folder is read file by file; a FIFO inside it is skipped, not waited on.
  std::filesystem::create_directories("loom_readers_text");
  std::string text;
  for (int i = 0; i < 100; ++i) text += "abcdefghij";
  write_all("loom_readers_text/a.txt", text);
  REQUIRE(mkfifo("loom_readers_text/pipe", 0600) == 0);
  TextCorpus c = load_text_corpus("loom_readers_text", 0.1);
  CHECK(c.files == std::vector<std::string>{"loom_readers_text/a.txt"});
  CHECK(c.train.size() == 900);
  CHECK(c.val.size() == 100);
  std::filesystem::remove_all("loom_readers_text");
}

TEST_CASE("The fuzz targets' seeds (tests/fuzz/corpus) are valid files their readers accept") {
  const std::string root = std::string(LOOM_TEST_FIXTURES) + "/../fuzz/corpus/";
  const std::map<std::string, Shape> npy = {{"f4_3.npy", {3}},       {"f4_2x3_v2.npy", {2, 3}}, {"f8_2x2.npy", {2, 2}},
                                            {"i8_scalar.npy", {}},   {"i4_4.npy", {4}},         {"b1_2x2.npy", {2, 2}},
                                            {"f4_0x5.npy", {0, 5}}};
  for (const auto& entry : npy) {  // no structured bindings: CAPTURE is a lambda (clang 14)
    const std::string& name = entry.first;
    CAPTURE(name);
    CHECK(read_npy(root + "npy/" + name).sizes() == entry.second);
  }
  const std::map<std::string, size_t> safetensors = {{"f32.safetensors", 1}, {"mixed.safetensors", 4},
                                                     {"f16_f64.safetensors", 2}, {"empty.safetensors", 0},
                                                     {"checkpoint.safetensors", 4}};
  for (const auto& entry : safetensors) {
    const std::string& name = entry.first;
    CAPTURE(name);
    CHECK(load_safetensors(root + "safetensors/" + name).tensors.size() == entry.second);
  }
  const std::map<std::string, std::string> configs = {
      {"decoder.json", "TransformerWrapper"},       {"encoder_alibi.json", "TransformerWrapper"},
      {"decoder_t5_selective.json", "TransformerWrapper"}, {"continuous.json", "ContinuousTransformerWrapper"},
      {"vit.json", "ViTransformerWrapper"},         {"xtransformer.json", "XTransformer"}};
  for (const auto& entry : configs) {
    const std::string& name = entry.first;
    CAPTURE(name);
    CHECK(model_from_config_file(root + "config/" + name).wrapper == entry.second);
  }
  // Every seed is one of those.
  size_t files = 0;
  for (const char* kind : {"npy", "safetensors", "config"})
    files += size_t(std::distance(std::filesystem::directory_iterator(root + kind), std::filesystem::directory_iterator()));
  CHECK(files == npy.size() + safetensors.size() + configs.size());
}
