// loom::Error and the checks that throw it. Every message names the op (or
// config key, or file) and the offending shapes or values, e.g.
//   matmul: cannot multiply [2, 3] by [4, 5] (3 != 4)
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <type_traits>
#include <string>
#include <vector>

namespace loom {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// "[2, 3]" for a shape; used in every error message.
inline std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... Rest>
void append(std::ostringstream& os, const T& v, const Rest&... rest) {
  if constexpr (std::is_same_v<T, std::vector<int64_t>>) os << shape_str(v);
  else os << v;
  append(os, rest...);
}
}  // namespace detail

// Builds a message from pieces: fail("matmul: cannot multiply ", a.sizes(), ...).
template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  std::ostringstream os;
  detail::append(os, args...);
  throw Error(os.str());
}

}  // namespace loom

// LOOM_CHECK(cond, pieces...): throw loom::Error with the pieces if cond is false.
#define LOOM_CHECK(cond, ...)          \
  do {                                 \
    if (!(cond)) ::loom::fail(__VA_ARGS__); \
  } while (0)
