// Element types. A small fixed set, like ggml: float32 for values and
// gradients, int64 for token ids and indices, bool for masks, and bfloat16
// reserved for storage (kernels for it come later).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

namespace loom {

enum class DType : uint8_t { Float32, Int64, Bool, BFloat16 };

// libtorch-style constants: loom::kFloat32, loom::kInt64, loom::kBool.
inline constexpr DType kFloat32 = DType::Float32;
inline constexpr DType kFloat = DType::Float32;
inline constexpr DType kInt64 = DType::Int64;
inline constexpr DType kLong = DType::Int64;
inline constexpr DType kBool = DType::Bool;
inline constexpr DType kBFloat16 = DType::BFloat16;

// bfloat16: the top 16 bits of a float32. Conversion rounds to nearest even.
struct BFloat16 {
  uint16_t bits = 0;
  BFloat16() = default;
  explicit BFloat16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) {
      bits = uint16_t((u >> 16) | 0x40);  // keep NaN a NaN
    } else {
      u += 0x7fffu + ((u >> 16) & 1u);
      bits = uint16_t(u >> 16);
    }
  }
  explicit operator float() const {
    uint32_t u = uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

inline size_t element_size(DType t) {
  switch (t) {
    case DType::Float32: return 4;
    case DType::Int64: return 8;
    case DType::Bool: return 1;
    case DType::BFloat16: return 2;
  }
  return 0;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float32: return "float32";
    case DType::Int64: return "int64";
    case DType::Bool: return "bool";
    case DType::BFloat16: return "bfloat16";
  }
  return "?";
}

inline bool is_floating_point(DType t) { return t == DType::Float32 || t == DType::BFloat16; }

// The C++ type stored for each dtype, and back.
template <typename T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::Float32; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::Int64; };
template <> struct dtype_of<bool> { static constexpr DType value = DType::Bool; };
template <> struct dtype_of<BFloat16> { static constexpr DType value = DType::BFloat16; };

// Type promotion for binary ops, as PyTorch does it for these types:
// bool < int64 < bfloat16 < float32.
inline DType promote_types(DType a, DType b) {
  auto rank = [](DType t) {
    switch (t) {
      case DType::Bool: return 0;
      case DType::Int64: return 1;
      case DType::BFloat16: return 2;
      case DType::Float32: return 3;
    }
    return 3;
  };
  return rank(a) >= rank(b) ? a : b;
}

}  // namespace loom

namespace loom {

// Calls f(T{}) with T the C++ type of dtype d: the one place a runtime dtype
// becomes a compile-time type.
template <typename F>
decltype(auto) visit_dtype(DType d, F&& f) {
  switch (d) {
    case DType::Int64: return f(int64_t{});
    case DType::Bool: return f(bool{});
    case DType::BFloat16: return f(BFloat16{});
    case DType::Float32: break;
  }
  return f(float{});
}

// Value conversion between element types (bfloat16 goes through float).
template <typename To, typename From>
To convert(From v) {
  if constexpr (std::is_same_v<To, BFloat16>) return BFloat16(static_cast<float>(v));
  else if constexpr (std::is_same_v<From, BFloat16>) return static_cast<To>(static_cast<float>(v));
  else return static_cast<To>(v);
}

}  // namespace loom
