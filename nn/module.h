// Module: named parameters, buffers and submodules, like torch.nn.Module.
//
// A layer derives from Module and registers what it owns in its constructor:
//
//   struct Linear : Module {
//     Tensor weight;
//     Linear(int64_t in, int64_t out) { weight = register_parameter("weight", randn({out, in})); }
//   };
//
// Registered tensors are handles to the same storage as the members, so an
// optimizer step or a checkpoint load through named_parameters() updates the
// layer in place. Names join with dots exactly as PyTorch's state_dict does
// (`relative_attention_bias.weight`), which is what makes x-transformers
// checkpoints load by name. Modules hold no per-element virtual calls: the
// virtual functions here run once per layer, never per element.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <loom/core/tensor.h>

namespace loom::nn {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

class Module {
 public:
  Module() = default;
  Module(const Module&) = delete;  // registered handles would be shared by both copies
  Module& operator=(const Module&) = delete;
  virtual ~Module() = default;

  // Parameters of this module and its submodules, depth first in
  // registration order, named with dotted paths.
  NamedTensors named_parameters() const;
  std::vector<Tensor> parameters() const;
  // Persistent buffers (those a state_dict holds), named the same way.
  NamedTensors named_buffers() const;
  // Parameters and persistent buffers, in PyTorch's order: what a checkpoint stores.
  NamedTensors state_dict() const;
  int64_t num_parameters() const;

  // Copies the tensors into this module's parameters and persistent buffers
  // by name (in place, so references stay valid). With strict, every name of
  // the module must be given and nothing else; a shape or dtype mismatch is
  // always an error naming the key.
  void load_state_dict(const NamedTensors& state, bool strict = true);

  // Training mode (dropout on) is the default, as in PyTorch.
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

 protected:
  // Registers t under `name` as a leaf that requires grad; returns it.
  Tensor register_parameter(const std::string& name, Tensor t);
  // Registers a tensor that is state but not trained (e.g. rotary inv_freq).
  Tensor register_buffer(const std::string& name, Tensor t, bool persistent = true);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    add_module(name, m);
    return m;
  }

 private:
  void add_module(const std::string& name, std::shared_ptr<Module> m);
  void collect(const std::string& prefix, bool params, bool buffers, NamedTensors& out) const;

  bool training_ = true;
  NamedTensors params_;
  struct Buffer {
    std::string name;
    Tensor t;
    bool persistent;
  };
  std::vector<Buffer> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
};

// A list of submodules named "0", "1", ... like torch.nn.ModuleList. An
// empty slot (nullptr) keeps its index but registers nothing, as PyTorch does
// for None, so the names of the others match x-transformers' state dicts.
class ModuleList : public Module {
 public:
  void append(std::shared_ptr<Module> m) {
    if (m) register_module(std::to_string(items_.size()), m);
    items_.push_back(std::move(m));
  }
  size_t size() const { return items_.size(); }
  const std::shared_ptr<Module>& operator[](size_t i) const { return items_.at(i); }
  // The slot as its concrete type (nullptr for an empty slot).
  template <class M>
  std::shared_ptr<M> get(size_t i) const { return std::dynamic_pointer_cast<M>(items_.at(i)); }

 private:
  std::vector<std::shared_ptr<Module>> items_;
};

}  // namespace loom::nn
