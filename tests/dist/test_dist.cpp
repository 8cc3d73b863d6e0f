// loom::dist under `mpirun -np 2` (tests/CMakeLists.txt): collectives, and
// the bucketed gradient reduction against the gradient of the whole batch
// computed on one rank.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <loom/loom.h>
#include <loom/train/dist.h>

#include "../helpers.h"

using namespace loom;

int main(int argc, char** argv) {
  dist::init(argc, argv);
  doctest::Context context(argc, argv);
  const int rc = context.run();
  // One rank's failure fails the job (mpirun returns the worst exit code).
  return rc;
}

TEST_CASE("dist: two ranks, started by mpirun") {
  REQUIRE(dist::built_with_mpi());
  CHECK(dist::world_size() == 2);
  CHECK(dist::rank() >= 0);
  CHECK(dist::rank() < 2);
  CHECK(dist::is_main() == (dist::rank() == 0));
}

TEST_CASE("dist: broadcast gives every rank rank 0's tensors, all_reduce_mean the mean") {
  Tensor a = full({5}, double(dist::rank() + 10)), b = arange(0, 7, kFloat32) * float(dist::rank() + 1);
  dist::broadcast({a, b});
  CHECK(a.to_vector<float>() == std::vector<float>(5, 10.0f));
  CHECK(b.to_vector<float>() == arange(0, 7, kFloat32).to_vector<float>());
  Tensor c = full({3}, double(dist::rank() + 1));  // 1 and 2
  dist::all_reduce_mean({c});
  CHECK(c.to_vector<float>() == std::vector<float>(3, 1.5f));
  CHECK(dist::all_reduce_mean(double(dist::rank())) == 0.5);
}

TEST_CASE("dist: GradReducer averages gradients in buckets during the backward, as one rank with the whole batch") {
  // A small MLP; the global batch is 8 rows, each rank takes 4.
  Generator g(7);
  nn::Linear l1(6, 16), l2(16, 3);
  std::vector<Tensor> params;
  for (nn::Linear* l : {&l1, &l2})
    for (auto& [name, p] : l->named_parameters()) params.push_back(p);
  for (const Tensor& p : params) {  // rank-dependent start, then rank 0's everywhere
    NoGradGuard ng;
    p.detach().copy_(randn(p.sizes(), g) * float(dist::rank() + 1));
  }
  dist::broadcast(params);
  Generator data(11);
  Tensor x = randn({8, 6}, data), y = randn({8, 3}, data);
  auto loss_of = [&](const Tensor& xs, const Tensor& ys) { return mse_loss(l2.forward(gelu(l1.forward(xs))), ys); };

  // Reference: the whole batch on this rank alone.
  loss_of(x, y).backward();
  std::vector<std::vector<float>> want;
  for (const Tensor& p : params) want.push_back(p.grad().to_vector<float>());
  for (const Tensor& p : params) p.mutable_grad() = Tensor();

  // Each rank its half; buckets of 4 bytes, so every parameter is a bucket of its own.
  dist::GradReducer reducer(params, 4);
  CHECK(reducer.buckets() == params.size());
  reducer.begin();
  const int64_t r = dist::rank();
  loss_of(x.narrow(0, 4 * r, 4), y.narrow(0, 4 * r, 4)).backward();
  CHECK(reducer.started_during_backward() == params.size());  // every bucket went out before finish()
  reducer.finish();
  for (size_t i = 0; i < params.size(); ++i) {
    CAPTURE(i);
    std::vector<double> ref(want[i].begin(), want[i].end());
    CHECK(close_or_same(params[i].grad().to_vector<float>(), ref, 1e-6, 1e-5));
  }
}
