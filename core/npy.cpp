// .npy: "\x93NUMPY", version (1.0, 2.0 or 3.0), header length (2 or 4 bytes,
// little-endian), a Python dict literal {'descr': '<f4', 'fortran_order':
// False, 'shape': (2, 3), } padded so the data starts 64-byte aligned, then
// the raw data.
#include <loom/core/npy.h>

#include <cctype>
#include <cstring>
#include <fstream>
#include <iterator>

#include <loom/core/error.h>

namespace loom {

namespace {
// The text after `key': ` in the header dict, up to the next top-level ',' or '}'.
std::string dict_value(const std::string& header, const std::string& key, const std::string& path) {
  const size_t at = header.find("'" + key + "'");
  LOOM_CHECK(at != std::string::npos, "read_npy: '", path, "' header has no '", key, "': ", header);
  size_t p = header.find(':', at) + 1;
  while (p < header.size() && header[p] == ' ') ++p;
  size_t end = p;
  int depth = 0;
  for (; end < header.size(); ++end) {
    const char c = header[end];
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if (depth == 0 && (c == ',' || c == '}')) break;
  }
  return header.substr(p, end - p);
}
}  // namespace

Tensor read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  LOOM_CHECK(in.good(), "read_npy: cannot open '", path, "'");
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  LOOM_CHECK(bytes.size() >= 10 && bytes.compare(0, 6, "\x93NUMPY") == 0, "read_npy: '", path, "' is not a .npy file");
  const int major = uint8_t(bytes[6]);
  LOOM_CHECK(major >= 1 && major <= 3, "read_npy: '", path, "' has unknown format version ", major);
  const size_t len_bytes = major == 1 ? 2 : 4;
  LOOM_CHECK(bytes.size() >= 8 + len_bytes, "read_npy: '", path, "' is truncated");
  size_t hlen = 0;
  for (size_t i = 0; i < len_bytes; ++i) hlen |= size_t(uint8_t(bytes[8 + i])) << (8 * i);
  const size_t start = 8 + len_bytes + hlen;
  LOOM_CHECK(start <= bytes.size(), "read_npy: '", path, "' is truncated (header of ", hlen, " bytes)");
  const std::string header = bytes.substr(8 + len_bytes, hlen);

  std::string descr = dict_value(header, "descr", path);
  LOOM_CHECK(descr.size() >= 2, "read_npy: '", path, "' has a malformed descr");
  descr = descr.substr(1, descr.size() - 2);  // strip the quotes
  LOOM_CHECK(dict_value(header, "fortran_order", path) == "False", "read_npy: '", path,
             "' is in Fortran order; save it C-ordered (np.ascontiguousarray)");
  const std::string shape_text = dict_value(header, "shape", path);
  Shape shape;
  for (size_t p = 0; p < shape_text.size();) {
    if (std::isdigit(uint8_t(shape_text[p]))) {
      size_t used = 0;
      shape.push_back(std::stoll(shape_text.substr(p), &used));
      p += used;
    } else {
      ++p;
    }
  }
  int64_t count = 1;
  for (int64_t s : shape) count *= s;
  size_t esize = 0;
  DType dtype = kFloat32;
  if (descr == "<f4") esize = 4;
  else if (descr == "<f8") esize = 8;
  else if (descr == "<i8") esize = 8, dtype = kInt64;
  else if (descr == "<i4") esize = 4, dtype = kInt64;
  else if (descr == "|b1") esize = 1, dtype = kBool;
  else fail("read_npy: '", path, "' has dtype '", descr, "'; loom reads <f4, <f8, <i8, <i4 and |b1");
  LOOM_CHECK(bytes.size() - start == size_t(count) * esize, "read_npy: '", path, "' should hold ", size_t(count) * esize,
             " bytes of data for shape ", shape, " and dtype ", descr, ", it has ", bytes.size() - start);
  Tensor t = empty(shape, dtype);
  const char* src = bytes.data() + start;
  if (descr == "<f8") {
    float* dst = t.data_ptr<float>();
    for (int64_t e = 0; e < count; ++e) {
      double d;
      std::memcpy(&d, src + 8 * e, 8);
      dst[e] = float(d);
    }
  } else if (descr == "<i4") {
    int64_t* dst = t.data_ptr<int64_t>();
    for (int64_t e = 0; e < count; ++e) {
      int32_t v;
      std::memcpy(&v, src + 4 * e, 4);
      dst[e] = v;
    }
  } else if (count > 0) {
    std::memcpy(t.raw_data(), src, size_t(count) * esize);
  }
  return t;
}

void write_npy(const std::string& path, const Tensor& t) {
  LOOM_CHECK(t.defined() && (t.dtype() == kFloat32 || t.dtype() == kInt64 || t.dtype() == kBool),
             "write_npy: expects a float32, int64 or bool tensor");
  const char* descr = t.dtype() == kFloat32 ? "<f4" : t.dtype() == kInt64 ? "<i8" : "|b1";
  std::string shape = "(";
  for (int64_t s : t.sizes()) shape += std::to_string(s) + ", ";
  if (t.dim() > 1) shape.resize(shape.size() - 2);
  if (t.dim() == 1) shape.resize(shape.size() - 1);
  shape += ")";
  std::string header = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  header.append(64 - (10 + header.size() + 1) % 64, ' ');
  header += '\n';
  Tensor c = t.contiguous();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  LOOM_CHECK(out.good(), "write_npy: cannot open '", path, "' for writing");
  out.write("\x93NUMPY\x01\x00", 8);
  const char len[2] = {char(header.size() & 0xff), char(header.size() >> 8)};
  out.write(len, 2);
  out << header;
  out.write(static_cast<const char*>(c.raw_data()), std::streamsize(size_t(c.numel()) * element_size(c.dtype())));
  LOOM_CHECK(out.good(), "write_npy: writing '", path, "' failed");
}

}  // namespace loom
