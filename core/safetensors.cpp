#include <loom/core/safetensors.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include <loom/core/error.h>
#include <loom/core/io.h>
#include <loom/core/json.h>

namespace loom {

namespace {

const char* st_dtype(DType t) {
  switch (t) {
    case kFloat32: return "F32";
    case kInt64: return "I64";
    case kBool: return "BOOL";
    case kBFloat16: return "BF16";
  }
  return "?";
}

// float16 bits -> float (for reading F16 checkpoints).
float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  float v;
  if (exp == 0) v = std::ldexp(float(mant), -24);
  else if (exp == 31) v = mant ? NAN : INFINITY;
  else v = std::ldexp(float(mant | 0x400), int(exp) - 25);
  return sign ? -v : v;
}

}  // namespace

void save_safetensors(const std::string& path, const NamedTensorList& tensors,
                      const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<Tensor> data;
  size_t offset = 0;
  for (const auto& [name, t] : tensors) {
    LOOM_CHECK(t.defined(), "save_safetensors: tensor '", name, "' is undefined");
    LOOM_CHECK(!header.contains(name), "save_safetensors: the name '", name, "' appears twice");
    Tensor c = t.detach().contiguous();
    const size_t bytes = size_t(c.numel()) * element_size(c.dtype());
    header[name] = {{"dtype", st_dtype(c.dtype())}, {"shape", c.sizes()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    data.push_back(c);
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned
  AtomicFile out(path, "save_safetensors");  // a crash or a full disk leaves the previous file as it was
  const uint64_t n = text.size();
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
  out.write(len, 8);
  out.write(text);
  for (const Tensor& c : data) out.write(c.raw_data(), size_t(c.numel()) * element_size(c.dtype()));
  out.commit();
}

SafetensorsFile load_safetensors(const std::string& path) {
  return parse_safetensors(read_file(path, "load_safetensors"), path);
}

SafetensorsFile parse_safetensors(const std::string& bytes, const std::string& path) {
  const uint64_t file_size = bytes.size();
  LOOM_CHECK(file_size >= 8, "load_safetensors: '", path, "' is too short (", file_size, " bytes) to be a safetensors file");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = n << 8 | uint8_t(bytes[size_t(i)]);
  LOOM_CHECK(n <= file_size - 8, "load_safetensors: '", path, "' declares a ", n, "-byte header but has only ",
             file_size - 8, " bytes after the length (truncated or not safetensors)");
  const auto header =
      parse_json<nlohmann::ordered_json>(bytes.substr(8, n), "load_safetensors: '" + path + "' has a malformed header");
  LOOM_CHECK(header.is_object(), "load_safetensors: '", path, "' header is not a JSON object");
  const char* data = bytes.data() + 8 + n;
  const uint64_t data_size = file_size - 8 - n;

  SafetensorsFile file;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const auto& entry = it.value();
    if (name == "__metadata__") {
      LOOM_CHECK(entry.is_object(), "load_safetensors: '", path, "': __metadata__ must be an object");
      for (auto m = entry.begin(); m != entry.end(); ++m)
        file.metadata[m.key()] = m.value().is_string() ? m.value().get<std::string>() : m.value().dump();
      continue;
    }
    auto bad = [&](const std::string& what) { fail("load_safetensors: '", path, "': tensor '", name, "' ", what); };
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") || !entry.contains("data_offsets"))
      bad("needs dtype, shape and data_offsets");
    if (!entry["dtype"].is_string() || !entry["shape"].is_array() || !entry["data_offsets"].is_array() ||
        entry["data_offsets"].size() != 2)
      bad("has a malformed entry");
    // Sizes with overflow-checked products; the data_offsets below cap the total by what the file holds.
    Shape shape;
    uint64_t count = 1;
    for (const auto& d : entry["shape"]) {
      if (!d.is_number_unsigned()) bad("has a negative or non-integer size");
      if (d.get<uint64_t>() > uint64_t(INT64_MAX)) bad("has a size that does not fit in int64");
      shape.push_back(d.get<int64_t>());
      if (__builtin_mul_overflow(count, d.get<uint64_t>(), &count)) bad("has more elements than fit in 64 bits");
    }
    const auto& off = entry["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned()) bad("has non-integer data_offsets");
    const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (begin > end || end > data_size)
      fail("load_safetensors: '", path, "': tensor '", name, "' data [", begin, ", ", end, ") lies outside the ",
           data_size, " bytes of data (truncated file?)");
    const std::string dt = entry["dtype"].get<std::string>();
    size_t esize = 0;
    DType dtype = kFloat32;
    if (dt == "F32") esize = 4;
    else if (dt == "I64") esize = 8, dtype = kInt64;
    else if (dt == "BOOL") esize = 1, dtype = kBool;
    else if (dt == "BF16") esize = 2, dtype = kBFloat16;
    else if (dt == "F16") esize = 2;
    else if (dt == "F64") esize = 8;
    else bad("has dtype " + dt + ", which loom does not read (F32, F16, F64, BF16, I64, BOOL)");
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(count, uint64_t(esize), &nbytes)) bad("needs more than 2^64 bytes");
    if (nbytes != end - begin)
      fail("load_safetensors: '", path, "': tensor '", name, "' of shape ", shape, " and dtype ", dt, " needs ",
           nbytes, " bytes, its data_offsets give ", end - begin);
    ranges.emplace_back(begin, end);
    const char* src = data + begin;
    Tensor t;
    try {
      t = empty(shape, dtype);
    } catch (const Error& e) {  // a zero size beside huge ones: no data, but strides that overflow
      bad(std::string("cannot be made: ") + e.what());
    }
    if (dt == "F16" || dt == "F64") {
      float* dst = t.data_ptr<float>();
      for (uint64_t e = 0; e < count; ++e) {
        if (dt == "F16") {
          uint16_t h;
          std::memcpy(&h, src + 2 * e, 2);
          dst[e] = half_to_float(h);
        } else {
          double d;
          std::memcpy(&d, src + 8 * e, 8);
          dst[e] = float(d);
        }
      }
    } else {
      if (count > 0) std::memcpy(t.raw_data(), src, count * esize);
      if (dtype == kBool)
        for (uint64_t e = 0; e < count; ++e)
          LOOM_CHECK(uint8_t(src[e]) <= 1, "load_safetensors: '", path, "': bool tensor '", name, "' holds byte ",
                     int(uint8_t(src[e])), " (only 0 and 1 are valid)");
    }
    file.tensors.emplace_back(name, t);
  }
  // The spec: the tensors cover the data exactly, without overlaps or holes.
  std::sort(ranges.begin(), ranges.end());
  uint64_t covered = 0;
  for (auto [b, e] : ranges) {
    LOOM_CHECK(b == covered, "load_safetensors: '", path, "': tensor data ",
               b < covered ? "overlaps" : "leaves a hole", " at byte ", std::min(b, covered));
    covered = e;
  }
  LOOM_CHECK(covered == data_size, "load_safetensors: '", path, "': ", data_size - covered,
             " bytes of data belong to no tensor");
  return file;
}

}  // namespace loom
