#include <loom/core/autograd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <unordered_map>
#include <unordered_set>

#include <loom/core/profile.h>
#include <loom/ops/ops.h>

namespace loom {

namespace {
thread_local bool grad_enabled = true;
thread_local GradReadyHook grad_ready_hook;
std::atomic<uint64_t> next_sequence_nr{0};
}  // namespace

bool is_grad_enabled() { return grad_enabled; }
void set_grad_enabled(bool enabled) { grad_enabled = enabled; }
void set_grad_ready_hook(GradReadyHook hook) { grad_ready_hook = std::move(hook); }

template <typename List>
bool any_requires_grad_in(const List& inputs) {
  if (!grad_enabled) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}
bool any_requires_grad(std::initializer_list<Tensor> inputs) { return any_requires_grad_in(inputs); }
bool any_requires_grad(const std::vector<Tensor>& inputs) { return any_requires_grad_in(inputs); }

namespace {
double bytes_of(const Tensor& t) { return t.defined() ? double(t.numel()) * double(element_size(t.dtype())) : 0.0; }
template <typename List>
double tensor_bytes(const List& ts) {
  double b = 0;
  for (const Tensor& t : ts) b += bytes_of(t);
  return b;
}

template <typename List>
void record_node(const char* name, const List& inputs, Tensor& output, BackwardFn backward) {
  if (grad_enabled && profile::enabled()) profile::charge_forward(name, tensor_bytes(inputs) + bytes_of(output));
  if (!any_requires_grad(inputs)) return;
  auto node = std::make_shared<Node>();
  node->name = name;
  node->sequence_nr = next_sequence_nr++;
  for (const Tensor& t : inputs) {
    Edge e;
    if (t.defined() && t.requires_grad()) {
      if (t.grad_fn()) e.node = t.grad_fn();
      else e.leaf = t.impl_ptr();
      e.shape = t.sizes();
    }
    node->inputs.push_back(std::move(e));
  }
  node->backward = std::move(backward);
  output.impl()->requires_grad = true;
  output.impl()->grad_fn = std::move(node);
}
}  // namespace

void record(const char* name, std::initializer_list<Tensor> inputs, Tensor& output, BackwardFn backward) {
  record_node(name, inputs, output, std::move(backward));
}
void record(const char* name, const std::vector<Tensor>& inputs, Tensor& output, BackwardFn backward) {
  record_node(name, inputs, output, std::move(backward));
}

void check_inplace(const char* op, const Tensor& t) {
  LOOM_CHECK(t.defined(), op, ": tensor is undefined");
  LOOM_CHECK(!(grad_enabled && t.requires_grad()), op,
             ": cannot modify a tensor that requires grad in place while grad mode is on "
             "(shape ", t.sizes(), "); do it inside a loom::NoGradGuard");
  if (t.impl()->storage) t.impl()->storage->set_bf16_twin(nullptr);  // the write would make it stale
}

namespace {
// A leaf's .grad(): the first gradient is taken, later ones are added. It is
// taken as it is when nothing else can see its memory (no other handle or
// view: a later add_ or an optimizer's in-place update would change them
// too), else copied, as PyTorch's AccumulateGrad does. Taking it saves a
// copy of every parameter's gradient in every step.
void accumulate_into_leaf(TensorImpl& leaf, Tensor g) {
  if (leaf.grad.defined()) {
    leaf.grad.add_(g);
    return;
  }
  const bool alone = g.impl_ptr().use_count() == 1 && g.impl()->storage.use_count() == 1 && !g.requires_grad() &&
                     g.is_contiguous() && g.impl()->offset == 0 &&
                     g.impl()->storage->nbytes() == size_t(g.numel()) * element_size(g.dtype());
  leaf.grad = alone ? std::move(g) : g.clone();
}
}  // namespace

void run_backward(const Tensor& root, const Tensor& gradient, bool retain_graph) {
  LOOM_CHECK(root.defined(), "backward: tensor is undefined");
  LOOM_CHECK(root.requires_grad(), "backward: tensor of shape ", root.sizes(),
             " does not require grad and has no grad_fn");
  Tensor seed = gradient;
  if (!seed.defined()) {
    LOOM_CHECK(root.numel() == 1, "backward: grad can be implicitly created only for scalar outputs; "
               "this tensor has shape ", root.sizes(), ", so pass a gradient of that shape");
    seed = ones_like(root);
  }
  LOOM_CHECK(seed.sizes() == root.sizes(), "backward: gradient has shape ", seed.sizes(),
             " but the tensor has shape ", root.sizes());

  NoGradGuard no_grad;  // backward rules are not themselves recorded
  if (!root.grad_fn()) {  // backward on a leaf: its gradient is the seed itself
    accumulate_into_leaf(*root.impl(), seed.to(root.dtype()));
    return;
  }

  // 1. Find the part of the tape the root depends on. The tape holds owning
  //    pointers: releasing a node's edges below must not free a node that
  //    is still to run.
  std::vector<std::shared_ptr<Node>> tape;
  std::unordered_set<Node*> seen;
  std::vector<std::shared_ptr<Node>> stack{root.grad_fn()};
  seen.insert(stack.back().get());
  while (!stack.empty()) {
    std::shared_ptr<Node> n = std::move(stack.back());
    stack.pop_back();
    LOOM_CHECK(!n->released, "backward: trying to backward through the graph a second time (node '",
               n->name, "' was freed by an earlier backward); pass retain_graph=true to the first "
               "backward() if you need to backward twice");
    for (const Edge& e : n->inputs)
      if (e.node && seen.insert(e.node.get()).second) stack.push_back(e.node);
    tape.push_back(std::move(n));
  }
  // 2. Play it back in reverse recording order. Every node's inputs were
  //    recorded before it, so a node runs only after all its consumers.
  std::sort(tape.begin(), tape.end(), [](const auto& a, const auto& b) { return a->sequence_nr > b->sequence_nr; });

  // With a grad-ready hook: how many nodes on the tape still feed each leaf.
  std::unordered_map<TensorImpl*, int64_t> feeds;
  if (grad_ready_hook)
    for (const std::shared_ptr<Node>& n : tape)
      for (const Edge& e : n->inputs)
        if (e.leaf) ++feeds[e.leaf.get()];
  auto fed = [&](const std::shared_ptr<TensorImpl>& leaf) {
    if (grad_ready_hook && --feeds[leaf.get()] == 0) grad_ready_hook(Tensor(leaf));
  };

  std::unordered_map<Node*, Tensor> pending;  // summed gradient of each node's output
  pending[tape.front().get()] = seed;
  for (const std::shared_ptr<Node>& n : tape) {
    auto it = pending.find(n.get());
    if (it != pending.end()) {
      Tensor grad_output = std::move(it->second);
      pending.erase(it);
      const bool timed = profile::enabled();
      const auto t0 = timed ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
      Grads grads = n->backward(grad_output);
      if (timed)
        profile::charge_backward(n->name, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                                 bytes_of(grad_output) + tensor_bytes(grads));
      LOOM_CHECK(grads.size() == n->inputs.size(), "backward: node '", n->name, "' returned ",
                 grads.size(), " gradients for ", n->inputs.size(), " inputs");
      for (size_t i = 0; i < grads.size(); ++i) {
        const Edge& e = n->inputs[i];
        if (!e.needs_grad() || !grads[i].defined()) continue;
        // Broadcasting in the forward means summing in the backward.
        Tensor g = sum_to(grads[i], e.shape);
        grads[i] = Tensor();  // (a gradient no one else holds can then be taken, not copied)
        if (e.leaf) {
          accumulate_into_leaf(*e.leaf, std::move(g));
        } else {
          Tensor& slot = pending[e.node.get()];
          slot = slot.defined() ? add(slot, g) : g;
        }
      }
    }
    if (grad_ready_hook)  // this node is done with its leaves, whether it sent them anything or not
      for (const Edge& e : n->inputs)
        if (e.leaf) fed(e.leaf);
    if (!retain_graph) {  // free what the op saved, and the edges
      n->backward = nullptr;
      n->inputs.clear();
      n->released = true;
    }
  }
}

}  // namespace loom
