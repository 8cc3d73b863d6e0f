// Data-parallel training with loom::dist, the library way (train/dist.h):
// the MLP of mlp.cpp (y = x1 * x2), each rank on its own share of every
// batch, gradients averaged over the ranks while the backward runs.
//
//   mpirun -np 2 build/examples/loom-data-parallel [steps]
//   build/examples/loom-data-parallel [steps]          (one process: a world of one)
//
// Every rank prints nothing but rank 0; at the end each rank checks that its
// parameters are bit-identical to rank 0's (they took the same steps).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <loom/loom.h>
#include <loom/train/dist.h>

int main(int argc, char** argv) {
  loom::dist::init(argc, argv);
  if (argc > 1 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
    std::printf("usage: [mpirun -np N] loom-data-parallel [STEPS]\n\n"
                "Trains a 2-layer MLP on y = x1 * x2 data-parallel over the MPI ranks (a world of one\n"
                "without mpirun) and checks that every rank ends with rank 0's parameters.\n"
                "  STEPS   optimizer steps (default 300)\n");
    return 0;
  }
  const int steps = argc > 1 ? std::atoi(argv[1]) : 300;
  const int64_t global_batch = 256, hidden = 32;
  const int rank = loom::dist::rank(), world = loom::dist::world_size();
  const int64_t per_rank = global_batch / world;

  // Parameters start as rank 0's (each rank draws its own, then takes rank 0's).
  loom::manual_seed(uint64_t(rank));
  auto param = [](loom::Shape shape, int64_t fan_in) {
    float bound = 1.0f / std::sqrt(float(fan_in));
    return ((loom::rand(shape) * 2.0f - 1.0f) * bound).requires_grad_();
  };
  std::vector<loom::Tensor> params = {param({2, hidden}, 2), param({hidden}, 2), param({hidden, 1}, hidden),
                                      param({1}, hidden)};
  loom::dist::broadcast(params);
  loom::AdamW opt({{"w1", params[0]}, {"b1", params[1]}, {"w2", params[2]}, {"b2", params[3]}}, {.lr = 1e-2});
  loom::dist::GradReducer reducer(params);

  // Every rank draws the same global batch and takes rows [rank·B, (rank+1)·B).
  loom::Generator data(1);
  double first = 0, last = 0;
  for (int step = 0; step < steps; ++step) {
    loom::Tensor x = loom::rand({global_batch, 2}, data) * 2.0f - 1.0f;
    loom::Tensor y = (x.select(1, 0) * x.select(1, 1)).unsqueeze(1);
    loom::Tensor xs = x.narrow(0, rank * per_rank, per_rank), ys = y.narrow(0, rank * per_rank, per_rank);
    loom::Tensor pred = loom::relu(xs.matmul(params[0]) + params[1]).matmul(params[2]) + params[3];
    loom::Tensor loss = loom::mse_loss(pred, ys);
    opt.zero_grad();
    reducer.begin();
    loss.backward();   // buckets go out as they fill
    reducer.finish();  // every .grad() is now the mean over the ranks
    opt.step();
    last = loom::dist::all_reduce_mean(double(loss.item<float>()));  // the global batch's loss
    if (step == 0) first = last;
    if (loom::dist::is_main() && step % (steps / 5 > 0 ? steps / 5 : 1) == 0)
      std::printf("step %4d  loss %.6f  (%d rank%s)\n", step, last, world, world > 1 ? "s" : "");
  }
  // Same steps everywhere: the parameters must be rank 0's, bit for bit.
  bool same = true;
  for (const loom::Tensor& p : params) {
    loom::Tensor copy = p.detach().clone();
    loom::dist::broadcast({copy});
    same = same && copy.to_vector<float>() == p.to_vector<float>();
  }
  const double agree = loom::dist::all_reduce_mean(same ? 1.0 : 0.0);
  if (loom::dist::is_main())
    std::printf("loss fell from %.6f to %.6f; parameters identical on all ranks: %s\n", first, last,
                agree == 1.0 ? "yes" : "no");
  return last < first && agree == 1.0 ? 0 : 1;
}
