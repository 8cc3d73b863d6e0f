// .npy: "\x93NUMPY", version (1.0, 2.0 or 3.0), header length (2 or 4 bytes,
// little-endian), a Python dict literal {'descr': '<f4', 'fortran_order':
// False, 'shape': (2, 3), } padded so the data starts 64-byte aligned, then
// the raw data.
#include <loom/core/npy.h>

#include <algorithm>
#include <charconv>
#include <cstring>

#include <loom/core/error.h>
#include <loom/core/io.h>

namespace loom {

namespace {
// The text after `key': ` in the header dict, up to the next top-level ',' or '}'.
std::string dict_value(const std::string& header, const std::string& key, const std::string& path) {
  const size_t at = header.find("'" + key + "'");
  LOOM_CHECK(at != std::string::npos, "read_npy: '", path, "' header has no '", key, "': ", header.substr(0, 200));
  const size_t colon = header.find(':', at);
  LOOM_CHECK(colon != std::string::npos, "read_npy: '", path, "' header has no value for '", key, "'");
  size_t p = colon + 1;
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

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(' '), e = s.find_last_not_of(' ');
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

// A Python tuple of sizes: "()", "(3,)", "(2, 3)".
Shape parse_shape(const std::string& text, const std::string& path) {
  auto bad = [&](const std::string& why) { fail("read_npy: '", path, "' has a malformed shape ", text, ": ", why); };
  if (text.size() < 2 || text.front() != '(' || text.back() != ')') bad("not a tuple");
  Shape shape;
  std::string inner = text.substr(1, text.size() - 2);
  for (size_t p = 0; p <= inner.size();) {
    const size_t comma = std::min(inner.find(',', p), inner.size());
    const std::string item = trim(inner.substr(p, comma - p));
    p = comma + 1;
    if (item.empty()) {
      if (p > inner.size() && (!shape.empty() || trim(inner).empty())) break;  // "(3,)" and "()"
      bad("an empty size");
    }
    if (item[0] == '-') bad("negative size " + item);
    int64_t v = 0;
    const auto [end, err] = std::from_chars(item.data(), item.data() + item.size(), v);
    if (err == std::errc::result_out_of_range) bad("size " + item + " does not fit in int64");
    if (err != std::errc() || end != item.data() + item.size()) bad("'" + item + "' is not a size");
    shape.push_back(v);
  }
  return shape;
}
}  // namespace

Tensor read_npy(const std::string& path) {
  const std::string bytes = read_file(path, "read_npy");
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
  LOOM_CHECK(descr.size() >= 2 && descr.front() == '\'' && descr.back() == '\'', "read_npy: '", path,
             "' has a malformed descr ", descr);
  descr = descr.substr(1, descr.size() - 2);  // strip the quotes
  LOOM_CHECK(dict_value(header, "fortran_order", path) == "False", "read_npy: '", path,
             "' is in Fortran order; save it C-ordered (np.ascontiguousarray)");
  const Shape shape = parse_shape(dict_value(header, "shape", path), path);
  size_t esize = 0;
  DType dtype = kFloat32;
  if (descr == "<f4") esize = 4;
  else if (descr == "<f8") esize = 8;
  else if (descr == "<i8") esize = 8, dtype = kInt64;
  else if (descr == "<i4") esize = 4, dtype = kInt64;
  else if (descr == "|b1") esize = 1, dtype = kBool;
  else fail("read_npy: '", path, "' has dtype '", descr, "'; loom reads <f4, <f8, <i8, <i4 and |b1");
  // The sizes are checked against the bytes the file holds, with overflow-checked products.
  int64_t count = 1;
  size_t nbytes = 0;
  for (int64_t d : shape)
    LOOM_CHECK(!__builtin_mul_overflow(count, d, &count), "read_npy: '", path, "' declares shape ", shape,
               ", more than 2^63 elements");
  LOOM_CHECK(!__builtin_mul_overflow(size_t(count), esize, &nbytes), "read_npy: '", path, "' declares shape ", shape,
             " of dtype ", descr, ", more than 2^64 bytes");
  LOOM_CHECK(nbytes == bytes.size() - start, "read_npy: '", path, "' should hold ", nbytes, " bytes of data for shape ",
             shape, " and dtype ", descr, ", it has ", bytes.size() - start);
  Tensor t;
  try {
    t = empty(shape, dtype);
  } catch (const Error& e) {  // a zero size beside huge ones: no data, but strides that overflow
    fail("read_npy: '", path, "': ", e.what());
  }
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
    if (dtype == kBool)  // any other byte is not a bool (undefined behaviour to read as one)
      for (int64_t e = 0; e < count; ++e)
        LOOM_CHECK(uint8_t(src[e]) <= 1, "read_npy: '", path, "': bool element ", e, " holds byte ", int(uint8_t(src[e])),
                   " (only 0 and 1 are valid)");
    std::memcpy(t.raw_data(), src, nbytes);
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
  AtomicFile out(path, "write_npy");
  out.write("\x93NUMPY\x01\x00", 8);
  const char len[2] = {char(header.size() & 0xff), char(header.size() >> 8)};
  out.write(len, 2);
  out.write(header);
  out.write(c.raw_data(), size_t(c.numel()) * element_size(c.dtype()));
  out.commit();
}

}  // namespace loom
