// A PNG is an 8-byte signature and chunks (length, type, data, CRC-32):
// IHDR (size and pixel format), IDAT (the rows, each prefixed with a filter
// byte, deflate-compressed) and IEND. zlib does the deflate and the CRC.
#include <loom/core/png.h>

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>

#include <loom/core/error.h>

namespace loom {

namespace {

void put_u32(std::vector<unsigned char>& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<unsigned char>(v >> shift));
}

void put_chunk(std::vector<unsigned char>& out, const char* type, const std::vector<unsigned char>& data) {
  put_u32(out, uint32_t(data.size()));
  const size_t start = out.size();
  out.insert(out.end(), type, type + 4);
  out.insert(out.end(), data.begin(), data.end());
  put_u32(out, uint32_t(crc32(0, out.data() + start, uInt(out.size() - start))));  // CRC of type and data
}

}  // namespace

void write_png(const std::string& path, const Tensor& image) {
  LOOM_CHECK(image.defined() && image.dtype() == kFloat32 &&
                 (image.dim() == 2 || (image.dim() == 3 && image.size(2) == 3)),
             "write_png: expects a float32 image (H, W) or (H, W, 3), got ",
             image.defined() ? image.sizes() : Shape{}, " ", image.defined() ? dtype_name(image.dtype()) : "undefined");
  const int64_t h = image.size(0), w = image.size(1), channels = image.dim() == 3 ? 3 : 1;
  LOOM_CHECK(h > 0 && w > 0 && h < (int64_t(1) << 31) && w < (int64_t(1) << 31), "write_png: image size ", image.sizes(),
             " is empty or too large");
  const std::vector<float> px = image.contiguous().to_vector<float>();

  // Rows of 8-bit samples, each after filter byte 0 (none).
  std::vector<unsigned char> raw;
  raw.reserve(size_t(h * (1 + w * channels)));
  for (int64_t y = 0; y < h; ++y) {
    raw.push_back(0);
    for (int64_t x = 0; x < w * channels; ++x) {
      const float v = px[size_t(y * w * channels + x)];
      raw.push_back(std::isnan(v) ? 0 : static_cast<unsigned char>(std::lround(std::clamp(v, 0.0f, 1.0f) * 255.0f)));
    }
  }
  uLongf packed_size = compressBound(uLong(raw.size()));
  std::vector<unsigned char> packed(packed_size);
  LOOM_CHECK(compress2(packed.data(), &packed_size, raw.data(), uLong(raw.size()), 9) == Z_OK,
             "write_png: zlib could not compress ", path);
  packed.resize(packed_size);

  std::vector<unsigned char> header;
  put_u32(header, uint32_t(w));
  put_u32(header, uint32_t(h));
  header.insert(header.end(), {8, static_cast<unsigned char>(channels == 3 ? 2 : 0), 0, 0, 0});  // depth, colour type
  std::vector<unsigned char> file = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  put_chunk(file, "IHDR", header);
  put_chunk(file, "IDAT", packed);
  put_chunk(file, "IEND", {});

  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "wb"), &std::fclose);
  LOOM_CHECK(f != nullptr, "write_png: cannot open '", path, "' for writing");
  LOOM_CHECK(std::fwrite(file.data(), 1, file.size(), f.get()) == file.size(), "write_png: cannot write '", path, "'");
}

Tensor colormap(const Tensor& values, double lo, double hi) {
  LOOM_CHECK(values.defined() && values.dtype() == kFloat32 && values.dim() == 2,
             "colormap: expects a float32 (H, W) tensor, got ", values.defined() ? values.sizes() : Shape{});
  LOOM_CHECK(hi > lo, "colormap: needs hi > lo, got lo = ", lo, ", hi = ", hi);
  // Five stops of viridis; linear in between.
  static const float stops[5][3] = {
      {0.267f, 0.005f, 0.329f}, {0.229f, 0.322f, 0.546f}, {0.128f, 0.567f, 0.551f}, {0.370f, 0.789f, 0.383f},
      {0.993f, 0.906f, 0.144f}};
  const std::vector<float> v = values.contiguous().to_vector<float>();
  std::vector<float> rgb;
  rgb.reserve(v.size() * 3);
  for (float x : v) {
    if (!std::isfinite(x) && !(x > 0)) {  // -inf and NaN: black
      rgb.insert(rgb.end(), {0.0f, 0.0f, 0.0f});
      continue;
    }
    const double t = std::clamp((double(x) - lo) / (hi - lo), 0.0, 1.0) * 4.0;
    const int k = std::min(int(t), 3);
    const float f = float(t - k);
    for (int c = 0; c < 3; ++c) rgb.push_back(stops[k][c] + f * (stops[k + 1][c] - stops[k][c]));
  }
  return from_vector(rgb, {values.size(0), values.size(1), 3});
}

}  // namespace loom
