// The examples' command lines: `--name value` flags, positional arguments,
// and --help. --help (or -h) prints the usage and exits 0 before anything
// runs; an unknown flag or a bad value prints what is wrong and the usage
// and exits 2.
//
//   Flags flags(argc, argv, "usage: loom-reverse [--steps N]\n...");
//   const int64_t steps = flags.integer("steps", 600, 1);
//   flags.done();  // rejects anything not asked for
#pragma once

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include <loom/core/parallel.h>

namespace loom_example {

class Flags {
 public:
  Flags(int argc, char** argv, std::string usage) : usage_(std::move(usage)) {
    loom::openmp_wait_defaults(argv);  // as the loom CLI: robust on a busy machine (core/parallel.h)
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--help" || a == "-h") {
        std::fputs(usage_.c_str(), stdout);
        std::exit(0);
      }
      if (a.rfind("--", 0) != 0) {
        positional_.push_back(a);
        continue;
      }
      if (i + 1 >= argc) fail("flag '" + a + "' needs a value");
      values_[a.substr(2)] = argv[++i];
    }
  }

  std::string text(const std::string& name, const std::string& def) {
    used_[name] = true;
    auto it = values_.find(name);
    return it == values_.end() ? def : it->second;
  }

  int64_t integer(const std::string& name, int64_t def, int64_t min) {
    used_[name] = true;
    auto it = values_.find(name);
    return it == values_.end() ? def : to_integer("--" + name, it->second, min);
  }
  double number(const std::string& name, double def, double min) {
    used_[name] = true;
    auto it = values_.find(name);
    if (it == values_.end()) return def;
    return parse<double>("--" + name, it->second, [](const std::string& s, size_t& used) { return std::stod(s, &used); },
                         [&](double v) { return std::isfinite(v) && v >= min; }, "a finite number >= " + format(min));
  }
  // The positional argument `index` (counted from 0), an integer.
  int64_t integer_at(size_t index, const std::string& name, int64_t def, int64_t min) const {
    return index < positional_.size() ? to_integer(name, positional_[index], min) : def;
  }
  const std::vector<std::string>& positional() const { return positional_; }

  // Every flag given must have been asked for, and at most `max_positional` arguments.
  void done(size_t max_positional = 0) const {
    for (const auto& [name, value] : values_)
      if (!used_.count(name)) fail("unknown flag '--" + name + "'");
    if (positional_.size() > max_positional) fail("unexpected argument '" + positional_[max_positional] + "'");
  }

  [[noreturn]] void fail(const std::string& what) const {
    std::fprintf(stderr, "%s\n\n%s", what.c_str(), usage_.c_str());
    std::exit(2);
  }

 private:
  int64_t to_integer(const std::string& name, const std::string& text, int64_t min) const {
    return parse<int64_t>(name, text, [](const std::string& s, size_t& used) { return std::stoll(s, &used); },
                          [&](int64_t v) { return v >= min; }, "an integer >= " + std::to_string(min));
  }
  template <class T, class Parse, class Valid>
  T parse(const std::string& name, const std::string& text, Parse parse_text, Valid valid,
          const std::string& allowed) const {
    size_t used = 0;
    T v{};
    try {
      v = parse_text(text, used);
    } catch (...) {  // std::stoll's invalid_argument and out_of_range
      used = 0;
    }
    if (used == 0 || used != text.size() || !valid(v)) fail(name + " must be " + allowed + ", got '" + text + "'");
    return v;
  }
  static std::string format(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", v);
    return buf;
  }

  std::string usage_;
  std::map<std::string, std::string> values_;
  std::map<std::string, bool> used_;
  std::vector<std::string> positional_;
};

}  // namespace loom_example
