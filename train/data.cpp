#include <loom/train/data.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>

#include <loom/core/error.h>

namespace loom {

TextCorpus load_text_corpus(const std::string& path, double val_fraction) {
  namespace fs = std::filesystem;
  LOOM_CHECK(val_fraction > 0 && val_fraction < 1, "load_text_corpus: val_fraction must be in (0, 1), got ", val_fraction);
  LOOM_CHECK(fs::exists(path), "load_text_corpus: '", path, "' does not exist");
  TextCorpus c;
  if (fs::is_directory(path)) {
    for (const auto& e : fs::directory_iterator(path)) {
      const std::string ext = e.path().extension().string();
      if (e.is_regular_file() && ext != ".dat" && ext != ".u8") c.files.push_back(e.path().string());
    }
    std::sort(c.files.begin(), c.files.end());
  } else {
    c.files.push_back(path);
  }
  std::vector<uint8_t> all;
  for (const std::string& f : c.files) {
    std::ifstream in(f, std::ios::binary);
    LOOM_CHECK(in.good(), "load_text_corpus: cannot read '", f, "'");
    all.insert(all.end(), std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  LOOM_CHECK(all.size() >= 1000, "load_text_corpus: '", path, "' holds only ", all.size(),
             " bytes of text; at least 1000 are needed");
  const size_t split = all.size() - size_t(double(all.size()) * val_fraction);
  c.train.assign(all.begin(), all.begin() + long(split));
  c.val.assign(all.begin() + long(split), all.end());
  return c;
}

Tensor sample_windows(const std::vector<uint8_t>& data, int64_t batch, int64_t length, Generator& gen) {
  LOOM_CHECK(int64_t(data.size()) > length, "sample_windows: the data (", data.size(), " bytes) is shorter than a window (",
             length, ")");
  Tensor out = empty({batch, length}, kInt64);
  int64_t* o = out.data_ptr<int64_t>();
  const uint64_t range = data.size() - size_t(length);
  for (int64_t r = 0; r < batch; ++r) {
    const auto bits = gen.block(gen.advance(1));
    const uint64_t start = ((uint64_t(bits[0]) << 32) | bits[1]) % range;
    for (int64_t c = 0; c < length; ++c) o[r * length + c] = data[start + size_t(c)];
  }
  return out;
}

Tensor contiguous_windows(const std::vector<uint8_t>& data, int64_t length, int64_t max_windows) {
  const int64_t n = std::min<int64_t>(max_windows, int64_t(data.size()) / length);
  LOOM_CHECK(n > 0, "contiguous_windows: the data (", data.size(), " bytes) is shorter than a window (", length, ")");
  Tensor out = empty({n, length}, kInt64);
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t e = 0; e < n * length; ++e) o[e] = data[size_t(e)];
  return out;
}

}  // namespace loom
