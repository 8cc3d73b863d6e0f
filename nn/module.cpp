#include <loom/nn/module.h>

#include <algorithm>

#include <loom/core/autograd.h>
#include <loom/core/error.h>

namespace loom::nn {

namespace {
// One name per module: a second registration under the same name is a bug in
// the layer, and would silently shadow a parameter in checkpoints.
template <class List>
void check_unique(const List& list, const std::string& name) {
  LOOM_CHECK(!name.empty() && name.find('.') == std::string::npos, "Module: invalid name '", name,
             "' (must be non-empty and contain no '.')");
  for (const auto& entry : list) {
    if constexpr (requires { entry.name; }) {
      LOOM_CHECK(entry.name != name, "Module: '", name, "' is registered twice");
    } else {
      LOOM_CHECK(entry.first != name, "Module: '", name, "' is registered twice");
    }
  }
}
}  // namespace

Tensor Module::register_parameter(const std::string& name, Tensor t) {
  check_unique(params_, name);
  LOOM_CHECK(t.defined() && t.dtype() == kFloat32, "Module: parameter '", name, "' must be a float32 tensor");
  t = t.detach().requires_grad_();
  params_.emplace_back(name, t);
  return t;
}

Tensor Module::register_buffer(const std::string& name, Tensor t, bool persistent) {
  check_unique(buffers_, name);
  buffers_.push_back({name, t, persistent});
  return t;
}

void Module::add_module(const std::string& name, std::shared_ptr<Module> m) {
  check_unique(children_, name);
  LOOM_CHECK(m != nullptr, "Module: submodule '", name, "' is null");
  m->train(training_);
  children_.emplace_back(name, std::move(m));
}

// Depth first, as PyTorch's state_dict: a module's own parameters, then its
// own persistent buffers, then its children in registration order.
void Module::collect(const std::string& prefix, bool params, bool buffers, NamedTensors& out) const {
  if (params)
    for (const auto& [name, t] : params_) out.emplace_back(prefix + name, t);
  if (buffers)
    for (const Buffer& b : buffers_)
      if (b.persistent) out.emplace_back(prefix + b.name, b.t);
  for (const auto& [name, child] : children_) child->collect(prefix + name + ".", params, buffers, out);
}

// A parameter shared by two modules (XTransformer's tie_token_emb) is listed
// once, under its first name, as PyTorch's named_parameters does; the
// state_dict keeps both names.
NamedTensors Module::named_parameters() const {
  NamedTensors all, out;
  collect("", true, false, all);
  for (auto& entry : all)
    if (std::none_of(out.begin(), out.end(), [&](const auto& e) { return e.second.impl() == entry.second.impl(); }))
      out.push_back(std::move(entry));
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

NamedTensors Module::named_buffers() const {
  NamedTensors out;
  collect("", false, true, out);
  return out;
}

NamedTensors Module::state_dict() const {
  NamedTensors out;
  collect("", true, true, out);
  return out;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (auto& [name, t] : named_parameters()) n += t.numel();
  return n;
}

void Module::load_state_dict(const NamedTensors& state, bool strict) {
  NamedTensors own = state_dict();
  std::vector<std::string> missing, unexpected;
  auto find = [](const NamedTensors& list, const std::string& key) {
    return std::find_if(list.begin(), list.end(), [&](const auto& e) { return e.first == key; });
  };
  for (const auto& [name, src] : state) {
    auto it = find(own, name);
    if (it == own.end()) {
      unexpected.push_back(name);
      continue;
    }
    const Tensor& dst = it->second;
    // bfloat16 into float32 widens exactly: bf16 checkpoints (PyTorch's
    // model.bfloat16(), x-transformers) load into loom's float32 weights.
    const bool widens = src.defined() && src.dtype() == kBFloat16 && dst.dtype() == kFloat32;
    LOOM_CHECK(src.defined() && src.sizes() == dst.sizes() && (src.dtype() == dst.dtype() || widens), "load_state_dict: '", name,
               "' has shape ", src.defined() ? src.sizes() : Shape{}, " ", src.defined() ? dtype_name(src.dtype()) : "undefined",
               ", the module expects ", dst.sizes(), " ", dtype_name(dst.dtype()));
  }
  for (const auto& [name, dst] : own)
    if (find(state, name) == state.end()) missing.push_back(name);
  auto list = [](const std::vector<std::string>& v) {
    std::string s;
    for (size_t i = 0; i < v.size() && i < 5; ++i) s += (i ? ", " : "") + v[i];
    if (v.size() > 5) s += ", ... (" + std::to_string(v.size()) + " in all)";
    return s;
  };
  LOOM_CHECK(!strict || missing.empty(), "load_state_dict: missing keys: ", list(missing));
  LOOM_CHECK(!strict || unexpected.empty(), "load_state_dict: unexpected keys: ", list(unexpected));
  NoGradGuard no_grad;
  for (const auto& [name, src] : state) {
    auto it = find(own, name);
    if (it != own.end()) it->second.detach().copy_(src.dtype() == it->second.dtype() ? src : src.to(it->second.dtype()));
  }
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->train(on);
}

}  // namespace loom::nn
