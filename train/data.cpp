#include <loom/train/data.h>

#include <algorithm>
#include <filesystem>

#include <loom/core/error.h>
#include <loom/core/io.h>

namespace loom {

TextCorpus load_text_corpus(const std::string& path, double val_fraction) {
  namespace fs = std::filesystem;
  LOOM_CHECK(val_fraction > 0 && val_fraction < 1, "load_text_corpus: val_fraction must be in (0, 1), got ", val_fraction);
  LOOM_CHECK(fs::exists(path), "load_text_corpus: '", path, "' does not exist");
  TextCorpus c;
  if (fs::is_directory(path)) {
    std::error_code ec;
    for (fs::directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string ext = it->path().extension().string();
      if (it->is_regular_file() && ext != ".dat" && ext != ".u8") c.files.push_back(it->path().string());
    }
    LOOM_CHECK(!ec, "load_text_corpus: cannot list '", path, "': ", ec.message());
    std::sort(c.files.begin(), c.files.end());
  } else {
    c.files.push_back(path);
  }
  std::vector<uint8_t> all;
  for (const std::string& f : c.files) {
    const std::string bytes = read_file(f, "load_text_corpus");
    all.insert(all.end(), bytes.begin(), bytes.end());
  }
  LOOM_CHECK(all.size() >= 1000, "load_text_corpus: '", path, "' holds only ", all.size(),
             " bytes of text; at least 1000 are needed");
  const size_t split = all.size() - size_t(double(all.size()) * val_fraction);
  c.train.assign(all.begin(), all.begin() + long(split));
  c.val.assign(all.begin() + long(split), all.end());
  return c;
}

Tensor sample_windows(const std::vector<uint8_t>& data, int64_t batch, int64_t length, Generator& gen) {
  LOOM_CHECK(batch >= 0 && length >= 1, "sample_windows: batch must be >= 0 and length >= 1, got ", batch, " and ", length);
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
  LOOM_CHECK(length >= 1, "contiguous_windows: length must be >= 1, got ", length);
  const int64_t n = std::min<int64_t>(max_windows, int64_t(data.size()) / length);
  LOOM_CHECK(n > 0, "contiguous_windows: the data (", data.size(), " bytes) is shorter than a window (", length, ")");
  Tensor out = empty({n, length}, kInt64);
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t e = 0; e < n * length; ++e) o[e] = data[size_t(e)];
  return out;
}

}  // namespace loom
