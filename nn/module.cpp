#include <loom/nn/module.h>

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

void Module::collect(const std::string& prefix, NamedTensors& params, NamedTensors* buffers) const {
  for (const auto& [name, t] : params_) params.emplace_back(prefix + name, t);
  if (buffers)
    for (const Buffer& b : buffers_)
      if (b.persistent) buffers->emplace_back(prefix + b.name, b.t);
  for (const auto& [name, child] : children_) child->collect(prefix + name + ".", params, buffers);
}

NamedTensors Module::named_parameters() const {
  NamedTensors out;
  collect("", out, nullptr);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

NamedTensors Module::named_buffers() const {
  NamedTensors params, buffers;
  collect("", params, &buffers);
  return buffers;
}

NamedTensors Module::state_dict() const {
  NamedTensors params, buffers;
  collect("", params, &buffers);
  params.insert(params.end(), buffers.begin(), buffers.end());
  return params;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (auto& [name, t] : named_parameters()) n += t.numel();
  return n;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->train(on);
}

}  // namespace loom::nn
