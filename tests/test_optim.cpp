// Optimizers against scalar references of PyTorch's update rules; state
// round trips; clipping; schedules.
#include "helpers.h"

#include <loom/loom.h>

#include <cmath>

using namespace loom;

namespace {
// A parameter and the gradients of three steps, fixed.
struct Problem {
  std::vector<float> p0 = {0.5f, -1.0f, 2.0f, 0.0f, 3.0f, -0.25f};
  std::vector<std::vector<float>> grads = {{0.1f, -0.2f, 0.3f, 0.0f, 1.0f, -1.0f},
                                           {0.2f, 0.1f, -0.3f, 0.5f, -1.0f, 0.0f},
                                           {-0.1f, 0.4f, 0.2f, -0.5f, 0.5f, 2.0f}};
};

// Runs three steps of `opt` on parameter `p` (shape `shape`) with the fixed gradients.
std::vector<float> run(Optimizer& opt, Tensor& p, const Problem& pr) {
  for (const auto& g : pr.grads) {
    p.mutable_grad() = from_vector(g, p.sizes());
    opt.step();
  }
  return p.to_vector<float>();
}

// PyTorch's SGD rule, in double, over the given gradients.
std::vector<double> sgd_reference(const std::vector<float>& p0, const std::vector<std::vector<float>>& grads,
                                  const SGDOptions& o) {
  std::vector<double> want;
  for (size_t k = 0; k < p0.size(); ++k) {
    double w = p0[k], buf = 0;
    for (size_t s = 0; s < grads.size(); ++s) {
      double d = grads[s][k] + o.weight_decay * w;
      if (o.momentum > 0) {
        buf = s == 0 ? d : o.momentum * buf + (1 - o.dampening) * d;
        d = o.nesterov ? d + o.momentum * buf : buf;
      }
      w -= o.lr * d;
    }
    want.push_back(w);
  }
  return want;
}

// PyTorch's Adam (L2 decay) or AdamW (decoupled decay) rule, in double.
std::vector<double> adam_reference(const std::vector<float>& p0, const std::vector<std::vector<float>>& grads,
                                   const AdamOptions& o, bool decoupled, double wd) {
  std::vector<double> want;
  for (size_t k = 0; k < p0.size(); ++k) {
    double w = p0[k], m = 0, v = 0;
    for (size_t s = 0; s < grads.size(); ++s) {
      const double t = double(s + 1);
      double g = grads[s][k];
      if (decoupled) w *= 1 - o.lr * wd;
      else g += wd * w;
      m = o.beta1 * m + (1 - o.beta1) * g;
      v = o.beta2 * v + (1 - o.beta2) * g * g;
      w -= o.lr / (1 - std::pow(o.beta1, t)) * m / (std::sqrt(v) / std::sqrt(1 - std::pow(o.beta2, t)) + o.eps);
    }
    want.push_back(w);
  }
  return want;
}

const SGDOptions kSGDCases[] = {
    {.lr = 0.1},
    {.lr = 0.1, .momentum = 0.9, .dampening = 0.1, .weight_decay = 0.01},
    {.lr = 0.05, .momentum = 0.8, .weight_decay = 0.1, .nesterov = true}};
}  // namespace

TEST_CASE("SGD: plain, momentum with dampening, Nesterov, weight decay") {
  Problem pr;
  for (const SGDOptions& o : kSGDCases) {
    CAPTURE(o.momentum);
    Tensor p = from_vector(pr.p0, {2, 3}).requires_grad_();
    SGD opt({{"w", p}}, o);
    CHECK(close_or_same(run(opt, p, pr), sgd_reference(pr.p0, pr.grads, o), 1e-6, 1e-5));
  }
}

TEST_CASE("Adam and AdamW: bias correction, L2 versus decoupled decay, no decay on 1-D parameters") {
  Problem pr;
  for (bool decoupled : {false, true}) {
    CAPTURE(decoupled);
    AdamOptions o{.lr = 0.01, .beta1 = 0.8, .beta2 = 0.95, .eps = 1e-6, .weight_decay = 0.1};
    Tensor w2 = from_vector(pr.p0, {2, 3}).requires_grad_(), w1 = from_vector(pr.p0, {6}).requires_grad_();
    std::unique_ptr<Optimizer> opt;
    if (decoupled) opt = std::make_unique<AdamW>(NamedParams{{"w2", w2}, {"w1", w1}}, o);
    else opt = std::make_unique<Adam>(NamedParams{{"w2", w2}, {"w1", w1}}, o);
    for (const auto& g : pr.grads) {
      w2.mutable_grad() = from_vector(g, {2, 3});
      w1.mutable_grad() = from_vector(g, {6});
      opt->step();
    }
    for (int dims : {2, 1}) {
      CAPTURE(dims);
      const double wd = decoupled && dims == 1 ? 0.0 : 0.1;  // AdamW: 1-D parameters do not decay
      CHECK(close_or_same((dims == 2 ? w2 : w1).to_vector<float>(), adam_reference(pr.p0, pr.grads, o, decoupled, wd),
                          1e-6, 1e-5));
    }
  }
}

// The updates run as SIMD kernels: full batches and a tail, on every
// instruction set, over lengths around the batch widths (4, 8, 16 lanes).
TEST_CASE("Optimizer updates match the reference on every instruction set and length") {
  Generator gen(7);
  for (int64_t n : {1, 3, 8, 13, 16, 37, 1003}) {
    CAPTURE(n);
    const std::vector<float> p0 = randn({n}, gen).to_vector<float>();
    std::vector<std::vector<float>> grads;
    for (int s = 0; s < 3; ++s) grads.push_back(randn({n}, gen).to_vector<float>());
    for_each_isa([&](const std::string& isa) {
      CAPTURE(isa);
      auto steps = [&](Optimizer& opt, Tensor& p) {
        for (const auto& g : grads) {
          p.mutable_grad() = from_vector(g, {n});
          opt.step();
        }
        return p.to_vector<float>();
      };
      for (const SGDOptions& o : kSGDCases) {
        CAPTURE(o.momentum);
        Tensor p = from_vector(p0, {n}).requires_grad_();
        SGD opt({{"w", p}}, o);
        CHECK(close_or_same(steps(opt, p), sgd_reference(p0, grads, o), 1e-6, 1e-5));
      }
      const AdamOptions o{.lr = 0.01, .beta1 = 0.8, .beta2 = 0.95, .eps = 1e-6, .weight_decay = 0.1, .decay_1d = true};
      for (bool decoupled : {false, true}) {
        CAPTURE(decoupled);
        Tensor p = from_vector(p0, {n}).requires_grad_();
        std::unique_ptr<Optimizer> opt;
        if (decoupled) opt = std::make_unique<AdamW>(NamedParams{{"w", p}}, o);
        else opt = std::make_unique<Adam>(NamedParams{{"w", p}}, o);
        CHECK(close_or_same(steps(*opt, p), adam_reference(p0, grads, o, decoupled, 0.1), 1e-6, 1e-5));
      }
    });
  }
}

TEST_CASE("Optimizer state round-trips: a resumed optimizer continues exactly") {
  Problem pr;
  Tensor a = from_vector(pr.p0, {6}).requires_grad_(), b = from_vector(pr.p0, {6}).requires_grad_();
  AdamW full({{"w", a}}, {.lr = 0.01, .weight_decay = 0.1, .decay_1d = true});
  AdamW first({{"w", b}}, {.lr = 0.01, .weight_decay = 0.1, .decay_1d = true});
  for (size_t s = 0; s < 3; ++s) {
    a.mutable_grad() = tensor(pr.grads[s]);
    full.step();
  }
  for (size_t s = 0; s < 2; ++s) {
    b.mutable_grad() = tensor(pr.grads[s]);
    first.step();
  }
  NamedParams state = first.state_dict();
  CHECK(state[0].first == "step");
  CHECK(state[1].first == "w.exp_avg");
  AdamW resumed({{"w", b}}, {.lr = 0.01, .weight_decay = 0.1, .decay_1d = true});
  resumed.load_state_dict(state);
  CHECK(resumed.steps() == 2);
  b.mutable_grad() = tensor(pr.grads[2]);
  resumed.step();
  CHECK(a.to_vector<float>() == b.to_vector<float>());
  CHECK_THROWS_WITH_AS(resumed.load_state_dict({{"v.exp_avg", zeros({6})}}),
                       "Optimizer::load_state_dict: 'v.exp_avg' belongs to no parameter of this optimizer", Error);
}

TEST_CASE("clip_grad_norm scales to the global norm, schedules warm up and decay") {
  Tensor a = zeros({2}).requires_grad_(), b = zeros({1}).requires_grad_();
  a.mutable_grad() = tensor({3.0f, 0.0f});
  b.mutable_grad() = tensor({4.0f});
  CHECK(clip_grad_norm({a, b}, 1.0) == doctest::Approx(5.0));
  CHECK(a.grad().to_vector<float>()[0] == doctest::Approx(0.6f).epsilon(1e-5));
  CHECK(b.grad().to_vector<float>()[0] == doctest::Approx(0.8f).epsilon(1e-5));
  CHECK(clip_grad_norm({a, b}, 10.0) == doctest::Approx(1.0).epsilon(1e-5));  // under the limit: unchanged
  CHECK(b.grad().to_vector<float>()[0] == doctest::Approx(0.8f).epsilon(1e-5));

  LRSchedule s{.max_lr = 1.0, .min_lr = 0.1, .warmup_steps = 10, .total_steps = 110};
  CHECK(s.at(0) == doctest::Approx(0.1));
  CHECK(s.at(9) == doctest::Approx(1.0));
  CHECK(s.at(60) == doctest::Approx(0.55));  // half way through the cosine
  CHECK(s.at(110) == doctest::Approx(0.1));
  CHECK(s.at(500) == doctest::Approx(0.1));
  LRSchedule lin{.max_lr = 1.0, .min_lr = 0.0, .total_steps = 100, .decay = "linear"};
  CHECK(lin.at(25) == doctest::Approx(0.75));
}

TEST_CASE("clip_grad_norm: the norm of many large gradients against double, the same bits on every ISA and thread count" *
          doctest::test_suite("thread-sweep")) {
  Generator g(81);
  // Sizes around the kernel's 16 lanes, its 4096-element blocks and the 65536-element chunks.
  std::vector<Tensor> params;
  double ref = 0;
  for (int64_t n : {1, 17, 4095, 4097, 65536, 65537, 300001}) {
    Tensor p = zeros({n}).requires_grad_();
    p.mutable_grad() = randn({n}, g);
    for (float x : p.grad().to_vector<float>()) ref += double(x) * double(x);
    params.push_back(p);
  }
  ref = std::sqrt(ref);
  std::vector<double> norms;
  for (int threads : kThreadCounts) {
    WithThreads with(threads);
    for_each_isa([&](const std::string&) { norms.push_back(clip_grad_norm(params, 1e9)); });  // no clipping
  }
  for (double n : norms) CHECK(n == norms.front());
  CHECK(norms.front() == doctest::Approx(ref).epsilon(1e-6));
  // Clipping scales every gradient in place by max_norm / norm.
  const std::vector<float> before = params[6].grad().to_vector<float>();
  const Tensor same = params[6].grad();
  clip_grad_norm(params, 1.0);
  CHECK(params[6].grad().is_same_storage(same));
  const std::vector<float> after = params[6].grad().to_vector<float>();
  for (size_t i = 0; i < after.size(); i += 997) CHECK(after[i] == doctest::Approx(before[i] / ref).epsilon(1e-5));
}

TEST_CASE("Optimizer state is complete: every parameter's moments, zeros before its first gradient, and a load missing one is refused") {
  Tensor a = ones({3}).requires_grad_(), b = ones({2, 2}).requires_grad_();
  AdamW opt({{"a", a}, {"b", b}}, {.lr = 0.1});
  a.mutable_grad() = full({3}, 0.5);  // b gets no gradient: Adam creates no state for it
  opt.step();
  NamedParams state = opt.state_dict();
  std::vector<std::string> names;
  for (const auto& [n, t] : state) names.push_back(n);
  CHECK(names == std::vector<std::string>{"step", "a.exp_avg", "a.exp_avg_sq", "b.exp_avg", "b.exp_avg_sq"});
  for (float m : state[1].second.to_vector<float>()) CHECK(m == doctest::Approx(0.05).epsilon(1e-6));  // (1 - 0.9) * 0.5
  CHECK(state[3].second.to_vector<float>() == std::vector<float>(4, 0.0f));
  AdamW other({{"a", ones({3}).requires_grad_()}, {"b", ones({2, 2}).requires_grad_()}}, {.lr = 0.1});
  other.load_state_dict(state);
  CHECK(other.steps() == 1);
  NamedParams missing(state.begin(), state.end() - 1);
  CHECK_THROWS_WITH_AS(other.load_state_dict(missing),
                       "Optimizer::load_state_dict: the state has no 'b.exp_avg_sq' (incomplete optimizer state)", Error);
  NamedParams no_step(state.begin() + 1, state.end());
  CHECK_THROWS_WITH_AS(other.load_state_dict(no_step),
                       "Optimizer::load_state_dict: the state has no 'step' (incomplete optimizer state)", Error);
  NamedParams wrong = state;
  wrong[2].second = zeros({3}, kInt64);
  CHECK_THROWS_WITH_AS(other.load_state_dict(wrong),
                       "Optimizer::load_state_dict: 'a.exp_avg_sq' is int64 [3], the parameter float32 [3]", Error);
  // A refused load leaves the optimizer as it was.
  CHECK(other.steps() == 1);
  CHECK(other.state_dict()[1].second.to_vector<float>() == state[1].second.to_vector<float>());
}
