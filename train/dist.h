// Data-parallel training over MPI (train/dist.cpp), the way PyTorch's
// DistributedDataParallel does it: every rank (process) holds the whole
// model, starts from rank 0's parameters, runs forward and backward on its
// own share of the batch, and the gradients are averaged over the ranks
// before the optimizer step, so every rank takes the same step.
//
//   loom::dist::init(argc, argv);                      // MPI when started by mpirun
//   loom::dist::broadcast(model.parameters());         // identical start
//   loom::dist::GradReducer reducer(model.parameters());
//   for (...) {
//     opt.zero_grad();
//     reducer.begin();                                 // reduce during the next backward
//     loss_on_my_shard.backward();                     // buckets are reduced as they fill
//     reducer.finish();                                // wait; every .grad() is now the mean
//     opt.step();
//   }
//
// Built with MPI when CMake finds it (option LOOM_WITH_MPI); without it, or
// when the process was not started by mpirun, the world is one rank and
// every call here is a no-op. examples/ and docs/training.md show a whole
// training loop.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include <loom/core/tensor.h>

namespace loom::dist {

// Whether this loom was built with MPI.
bool built_with_mpi();

// Starts MPI if the process was started by an MPI launcher (mpirun/mpiexec:
// it sets OMPI_COMM_WORLD_SIZE, PMI_SIZE or PMIX_RANK) and MPI is built in;
// otherwise the world is this process alone. When OMP_NUM_THREADS is not
// set, each rank gets cores / (ranks on this host) OpenMP threads. Safe to
// call more than once; MPI is finalized at exit.
void init(int& argc, char**& argv);

int rank();        // 0 .. world_size() - 1
int world_size();  // 1 without MPI
int local_size();  // ranks on this host
bool is_main();    // rank 0: the one that writes files and prints

// Collectives over all ranks (every rank must call them, in the same order).
void broadcast(const std::vector<Tensor>& tensors, int root = 0);  // float32, contiguous, in place
void all_reduce_mean(const std::vector<Tensor>& tensors);          // float32, contiguous, in place
double all_reduce_mean(double value);
int all_reduce_max(int value);
void broadcast(std::string& bytes, int root = 0);  // resized on the other ranks
void barrier();

// Ends the whole job with `code` (MPI_Abort on every rank), so that an error
// on one rank does not leave the others waiting in a collective forever.
[[noreturn]] void abort_all(int code);

// Averages the gradients of `params` over the ranks, in buckets of about
// `bucket_bytes`, each reduced (MPI_Iallreduce) as soon as the backward has
// finished all of its gradients, while the rest of the backward goes on.
// Buckets hold the parameters in reverse order, the order a backward
// finishes them, and are started strictly in bucket order on every rank.
class GradReducer {
 public:
  explicit GradReducer(std::vector<Tensor> params, size_t bucket_bytes = size_t(1) << 20);
  ~GradReducer();
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  // The next backward on this thread reduces. (With gradient accumulation,
  // call it before the last micro-batch's backward only, like DDP's no_sync.)
  void begin();
  // Waits for every bucket; then each parameter's .grad() is the mean over
  // the ranks (a parameter no rank gave a gradient to keeps none, so the
  // optimizer skips it as it would on one process).
  void finish();

  size_t buckets() const;
  // Buckets the last backward started itself, before finish().
  size_t started_during_backward() const { return started_during_backward_; }

 private:
  struct Bucket;
  void ready(const Tensor& leaf);
  void start(Bucket& b);
  std::vector<Tensor> params_;
  std::vector<Bucket> buckets_;
  std::vector<std::pair<const void*, std::pair<size_t, size_t>>> where_;  // impl -> (bucket, slot)
  size_t next_to_start_ = 0, started_during_backward_ = 0;
  bool active_ = false;
};

}  // namespace loom::dist
