// write_png: the file read back (chunks, CRCs, inflated rows) gives the
// pixels written; colormap's ends and masked cells.
#include "helpers.h"

#include <loom/core/png.h>

#include <zlib.h>

#include <cstdio>
#include <fstream>
#include <iterator>

using namespace loom;

namespace {
uint32_t get_u32(const std::vector<unsigned char>& b, size_t at) {
  return uint32_t(b[at]) << 24 | uint32_t(b[at + 1]) << 16 | uint32_t(b[at + 2]) << 8 | uint32_t(b[at + 3]);
}

struct Decoded {
  uint32_t width = 0, height = 0;
  int colour_type = -1;
  std::vector<unsigned char> rows;  // with the filter bytes
  bool crcs_ok = true;
};

// A minimal PNG reader for what write_png produces (one IDAT, no filters).
Decoded read_png(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<unsigned char> b((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  Decoded d;
  REQUIRE(b.size() > 8);
  REQUIRE(std::vector<unsigned char>(b.begin(), b.begin() + 8) ==
          std::vector<unsigned char>{0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'});
  std::vector<unsigned char> idat;
  for (size_t at = 8; at + 12 <= b.size();) {
    const uint32_t len = get_u32(b, at);
    const std::string type(b.begin() + long(at + 4), b.begin() + long(at + 8));
    d.crcs_ok &= crc32(0, &b[at + 4], len + 4) == get_u32(b, at + 8 + len);
    if (type == "IHDR") {
      d.width = get_u32(b, at + 8);
      d.height = get_u32(b, at + 12);
      d.colour_type = b[at + 17];
    }
    if (type == "IDAT") idat.insert(idat.end(), b.begin() + long(at + 8), b.begin() + long(at + 8 + len));
    at += 12 + len;
  }
  uLongf size = 1 << 20;
  d.rows.resize(size);
  REQUIRE(uncompress(d.rows.data(), &size, idat.data(), uLong(idat.size())) == Z_OK);
  d.rows.resize(size);
  return d;
}
}  // namespace

TEST_CASE("write_png: grey and RGB images read back pixel for pixel") {
  const std::string path = "loom_test_image.png";
  Tensor grey = tensor(std::vector<float>{0.0f, 0.5f, 1.0f, 2.0f, -1.0f, NAN}).reshape({2, 3});
  write_png(path, grey);
  Decoded d = read_png(path);
  CHECK(d.crcs_ok);
  CHECK(d.width == 3);
  CHECK(d.height == 2);
  CHECK(d.colour_type == 0);
  // Each row: filter byte 0, then the samples (clamped to [0, 1], NaN as 0).
  CHECK(d.rows == std::vector<unsigned char>{0, 0, 128, 255, 0, 255, 0, 0});
  Tensor rgb = full({1, 2, 3}, 0.2).contiguous();
  rgb.select(0, 0).select(0, 1).select(0, 2).fill_(1.0);  // pixel 1, blue
  write_png(path, rgb);
  d = read_png(path);
  CHECK(d.colour_type == 2);
  CHECK(d.rows == std::vector<unsigned char>{0, 51, 51, 51, 51, 51, 255});
  std::remove(path.c_str());
  CHECK_THROWS_WITH_AS(write_png(path, zeros({2, 3, 4})),
                       "write_png: expects a float32 image (H, W) or (H, W, 3), got [2, 3, 4] float32", Error);
  CHECK_THROWS_WITH_AS(write_png("/nonexistent-dir/x.png", grey),
                       "write_png: cannot open '/nonexistent-dir/x.png' for writing", Error);
}

TEST_CASE("colormap: ends of the ramp, clamping, masked cells black") {
  Tensor v = tensor(std::vector<float>{0.0f, 1.0f, -5.0f, 9.0f, -INFINITY}).reshape({1, 5});
  std::vector<float> c = colormap(v, 0.0, 1.0).to_vector<float>();
  REQUIRE(c.size() == 15);
  CHECK(all_close({c[0], c[1], c[2]}, {0.267f, 0.005f, 0.329f}));   // lo: dark blue
  CHECK(all_close({c[3], c[4], c[5]}, {0.993f, 0.906f, 0.144f}));   // hi: yellow
  CHECK(all_close({c[6], c[7], c[8]}, {c[0], c[1], c[2]}));         // below lo clamps
  CHECK(all_close({c[9], c[10], c[11]}, {c[3], c[4], c[5]}));       // above hi clamps
  CHECK(all_close({c[12], c[13], c[14]}, {0.0f, 0.0f, 0.0f}));      // -inf: black
  // Monotone in brightness along the ramp.
  Tensor ramp = arange(0, 11, kFloat32).reshape({1, 11}) / 10.0f;
  std::vector<float> r = colormap(ramp, 0.0, 1.0).to_vector<float>();
  for (size_t k = 1; k < 11; ++k) CHECK(r[3 * k] + r[3 * k + 1] + r[3 * k + 2] > r[3 * k - 3] + r[3 * k - 2] + r[3 * k - 1]);
}
