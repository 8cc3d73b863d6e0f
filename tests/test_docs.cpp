// The docs cannot drift from the code:
//  - every ```cpp block of README.md and docs/*.md is either a region of a
//    program in docs/samples (built and run by ctest as docs.sample.*), quoted
//    verbatim, or, marked `<!-- excerpt: path -->`, an excerpt of loom's own
//    source whose lines (between "..." elisions) appear in that file in order;
//  - docs/models.md's keyword table agrees with the config reader: every
//    keyword it lists loads at x-transformers' default, an "ignored" one loads
//    with any other value too, a "default only" one refuses any other value.
#include "helpers.h"

#include <loom/loom.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

namespace {
const std::string kRoot = std::string(LOOM_SOURCE_DIR) + "/";

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), "cannot open " << path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream s(text);
  for (std::string line; std::getline(s, line);) out.push_back(line);
  return out;
}

// The lines without their common indentation.
std::vector<std::string> dedent(std::vector<std::string> lines) {
  size_t common = std::string::npos;
  for (const std::string& l : lines)
    if (l.find_first_not_of(' ') != std::string::npos) common = std::min(common, l.find_first_not_of(' '));
  if (common == std::string::npos) common = 0;
  for (std::string& l : lines) l = l.size() >= common ? l.substr(common) : "";
  return lines;
}

std::string join(const std::vector<std::string>& lines) {
  std::string s;
  for (const std::string& l : lines) s += l + "\n";
  return s;
}

std::string squash_spaces(const std::string& s) {  // runs of whitespace -> one space
  std::string out;
  for (char ch : s) {
    const bool space = ch == ' ' || ch == '\t' || ch == '\n';
    if (space && (out.empty() || out.back() == ' ')) continue;
    out += space ? ' ' : ch;
  }
  return out;
}

struct Block {
  std::string file, excerpt_of;
  int line;
  std::vector<std::string> lines;
};

std::vector<Block> cpp_blocks(const std::string& rel) {
  std::vector<Block> out;
  std::vector<std::string> lines = lines_of(slurp(kRoot + rel));
  std::string previous;  // the last non-empty line before a block
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string t = lines[i].substr(std::min(lines[i].size(), lines[i].find_first_not_of(' ')));
    if (t == "```cpp") {
      Block b{rel, "", int(i + 1), {}};
      std::smatch m;
      if (std::regex_search(previous, m, std::regex("<!-- excerpt: (\\S+) -->"))) b.excerpt_of = m[1];
      for (++i; i < lines.size() && lines[i].find("```") == std::string::npos; ++i) b.lines.push_back(lines[i]);
      b.lines = dedent(b.lines);
      out.push_back(b);
    } else if (!t.empty()) {
      previous = t;
    }
  }
  return out;
}

// The regions of docs/samples/*.cpp by name: the pieces between
// `// doc: NAME` / `// doc: resume` and `// doc: pause` / `// doc: end`,
// each dedented, joined.
std::map<std::string, std::string> sample_regions() {
  std::map<std::string, std::string> out;
  for (const auto& f : std::filesystem::directory_iterator(kRoot + "docs/samples")) {
    if (f.path().extension() != ".cpp") continue;
    std::string name;
    std::vector<std::string> piece, all;
    bool on = false;
    for (const std::string& line : lines_of(slurp(f.path().string()))) {
      const size_t at = line.find("// doc: ");
      if (at == std::string::npos) {
        if (on) piece.push_back(line);
        continue;
      }
      const std::string word = line.substr(at + 8);
      if (word == "pause" || word == "end") {
        for (const std::string& l : dedent(piece)) all.push_back(l);
        piece.clear(), on = false;
        if (word == "end") out[name] = join(all), all.clear();
      } else if (word == "resume") {
        on = true;
      } else {
        name = word, on = true;
      }
    }
  }
  return out;
}

const std::vector<std::string> kDocs = {"README.md",        "docs/attention.md", "docs/autograd.md",
                                        "docs/models.md",   "docs/ops.md",       "docs/training.md",
                                        "docs/performance.md", "nn/README.md",   "models/README.md",
                                        "docs/samples/README.md"};
}  // namespace

TEST_CASE("Every C++ block of the docs is a compiled sample or an excerpt of the source, verbatim") {
  const std::map<std::string, std::string> regions = sample_regions();
  REQUIRE(regions.size() >= 10);
  std::set<std::string> used;
  size_t samples = 0, excerpts = 0;
  for (const std::string& doc : kDocs)
    for (const Block& b : cpp_blocks(doc)) {
      CAPTURE(b.file);
      CAPTURE(b.line);
      if (b.excerpt_of.empty()) {
        const std::string text = join(b.lines);
        auto it = std::find_if(regions.begin(), regions.end(), [&](const auto& r) { return r.second == text; });
        CHECK_MESSAGE(it != regions.end(), "not a region of docs/samples/*.cpp:\n" << text);
        if (it != regions.end()) used.insert(it->first), ++samples;
        continue;
      }
      // An excerpt: each line's text between "..." elisions, in order, in the source.
      const std::string source = squash_spaces(slurp(kRoot + b.excerpt_of));
      size_t at = 0;
      for (const std::string& line : b.lines)
        for (size_t from = 0; from <= line.size();) {
          const size_t dots = std::min(line.find("...", from), line.size());
          const std::string part = squash_spaces(line.substr(from, dots - from));
          const std::string trimmed = part.substr(part.find_first_not_of(' ') == std::string::npos ? part.size() : part.find_first_not_of(' '));
          std::string piece = trimmed.substr(0, trimmed.find_last_not_of(' ') + 1);
          if (!piece.empty()) {
            const size_t found = source.find(piece, at);
            CHECK_MESSAGE(found != std::string::npos, "not in " << b.excerpt_of << " (after what came before): " << piece);
            if (found != std::string::npos) at = found + piece.size();
          }
          from = dots + 3;
        }
      ++excerpts;
    }
  for (const auto& region : regions) {
    const std::string name = region.first;
    CHECK_MESSAGE(used.count(name) == 1, "docs/samples region '" << name << "' is quoted nowhere");
  }
  MESSAGE(samples << " samples and " << excerpts << " excerpts checked");
}

TEST_CASE("docs/models.md's keyword table agrees with the config reader") {
  // Rows: | `keyword` | `default` | loom | ... under a "#### level" heading.
  const std::vector<std::string> lines = lines_of(slurp(kRoot + "docs/models.md"));
  std::string level;
  size_t rows = 0;
  const std::regex row("^\\| `([a-z_0-9]+)` \\| `([^`]*)` \\| ([a-z ]+?) \\|");
  for (const std::string& line : lines) {
    if (line.rfind("#### ", 0) == 0) level = line.substr(5);
    std::smatch m;
    if (level.empty() || !std::regex_search(line, m, row)) continue;
    const std::string key = m[1], value = m[2], status = m[3];
    CAPTURE(level);
    CAPTURE(key);
    nlohmann::json v = nlohmann::json::parse(value);
    // A config of the level with the key at `v`.
    auto config = [&](const nlohmann::json& x) {
      nlohmann::json layers = {{"type", "Decoder"}, {"dim", 8}, {"depth", 1}, {"heads", 2}, {"attn_dim_head", 4}};
      nlohmann::json c;
      if (level == "AttentionLayers (Encoder, Decoder, PrefixDecoder, CrossAttender)" || level == "Attention (attn_*, cross_attn_*)" ||
          level == "FeedForward (ff_*)") {
        layers[key] = x;
        c = {{"wrapper", "TransformerWrapper"}, {"num_tokens", 5}, {"max_seq_len", 8}, {"attn_layers", layers}};
      } else if (level == "TransformerWrapper") {
        c = {{"wrapper", "TransformerWrapper"}, {"num_tokens", 5}, {"max_seq_len", 8}, {"attn_layers", layers}};
        c[key] = x;
      } else if (level == "ContinuousTransformerWrapper") {
        c = {{"wrapper", "ContinuousTransformerWrapper"}, {"max_seq_len", 8}, {"attn_layers", layers}};
        c[key] = x;
      } else if (level == "ViTransformerWrapper") {
        layers["type"] = "Encoder";
        c = {{"wrapper", "ViTransformerWrapper"}, {"image_size", 8}, {"patch_size", 4}, {"attn_layers", layers}};
        c[key] = x;
      } else if (level == "XTransformer") {
        c = {{"wrapper", "XTransformer"}, {"dim", 8}, {"enc_num_tokens", 5}, {"dec_num_tokens", 5}, {"enc_depth", 1},
             {"dec_depth", 1}, {"enc_heads", 2}, {"dec_heads", 2}};
        c[key] = x;
      } else {
        FAIL("unknown table level " << level);
      }
      return c.dump();
    };
    auto error = [&](const nlohmann::json& x) {
      try {
        loom::model_from_json(config(x));
      } catch (const std::exception& e) {
        return std::string(e.what());
      }
      return std::string();
    };
    // The default: never an unknown key; it loads unless it needs company (a Decoder cannot take `causal`, ...).
    const std::string at_default = error(v);
    CHECK_MESSAGE(at_default.find("unknown key") == std::string::npos, at_default);
    if (status == "default only" || status == "ignored") CHECK_MESSAGE(at_default.empty(), at_default);
    // Some other value of the same type.
    nlohmann::json other = v.is_boolean() ? nlohmann::json(!v.get<bool>())
                           : v.is_number() ? nlohmann::json(v.get<double>() + 2)
                           : v.is_null()   ? nlohmann::json(3)
                                           : nlohmann::json({{"x", 1}});
    if (status == "ignored") {
      CHECK_MESSAGE(error(other).empty(), error(other));
    } else if (status == "default only") {
      CHECK(error(other).find("is not supported by loom (only x-transformers' default") != std::string::npos);
    } else {
      CHECK_MESSAGE(status == "yes", "the loom column must be 'yes', 'ignored' or 'default only', got '" << status << "'");
    }
    ++rows;
  }
  CHECK(rows > 150);
}
