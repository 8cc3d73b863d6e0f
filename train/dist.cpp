#include <loom/train/dist.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <thread>

#include <omp.h>

#include <loom/core/autograd.h>
#include <loom/core/error.h>

#ifdef LOOM_HAVE_MPI
#include <mpi.h>
#endif

namespace loom::dist {

namespace {
int world_rank = 0, world = 1, local = 1;
bool started = false;  // MPI_Init done by us

void check_floats(const char* op, const Tensor& t) {
  LOOM_CHECK(t.defined() && t.dtype() == kFloat32 && t.is_contiguous(), "dist::", op,
             ": expects defined, contiguous float32 tensors, got ",
             t.defined() ? dtype_name(t.dtype()) : "undefined", " ", t.defined() ? t.sizes() : Shape{});
}

#ifdef LOOM_HAVE_MPI
void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  LOOM_CHECK(false, "dist: ", what, " failed: ", std::string(msg, size_t(len)));
}
#endif

bool launched_by_mpi() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
    if (std::getenv(var)) return true;
  return false;
}
}  // namespace

bool built_with_mpi() {
#ifdef LOOM_HAVE_MPI
  return true;
#else
  return false;
#endif
}

void init(int& argc, char**& argv) {
  (void)argc, (void)argv;
#ifdef LOOM_HAVE_MPI
  int already = 0;
  MPI_Initialized(&already);
  if (!already && launched_by_mpi()) {
    int provided = 0;
    // Only the calling thread talks to MPI (OpenMP threads never do).
    check_mpi(MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    started = true;
    std::atexit([] {
      int finalized = 0;
      MPI_Finalized(&finalized);
      if (!finalized) MPI_Finalize();
    });
    already = 1;
  }
  if (already) {
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world_rank, MPI_INFO_NULL, &node);
    MPI_Comm_size(node, &local);
    MPI_Comm_free(&node);
  }
#endif
  // The cores of a host are shared by its ranks (unless the user chose).
  if (local > 1 && !std::getenv("OMP_NUM_THREADS"))
    omp_set_num_threads(std::max(1, int(std::thread::hardware_concurrency()) / local));
}

int rank() { return world_rank; }
int world_size() { return world; }
int local_size() { return local; }
bool is_main() { return world_rank == 0; }

void broadcast(const std::vector<Tensor>& tensors, int root) {
  for (const Tensor& t : tensors) check_floats("broadcast", t);
#ifdef LOOM_HAVE_MPI
  if (world == 1) return;
  for (const Tensor& t : tensors)
    check_mpi(MPI_Bcast(t.data_ptr<float>(), int(t.numel()), MPI_FLOAT, root, MPI_COMM_WORLD), "MPI_Bcast");
#else
  (void)root;
#endif
}

void all_reduce_mean(const std::vector<Tensor>& tensors) {
  for (const Tensor& t : tensors) check_floats("all_reduce_mean", t);
#ifdef LOOM_HAVE_MPI
  if (world == 1) return;
  for (const Tensor& t : tensors) {
    float* p = t.data_ptr<float>();
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, p, int(t.numel()), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
    const float inv = 1.0f / float(world);
    for (int64_t i = 0; i < t.numel(); ++i) p[i] *= inv;
  }
#endif
}

double all_reduce_mean(double value) {
#ifdef LOOM_HAVE_MPI
  if (world > 1) {
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
    value /= world;
  }
#endif
  return value;
}

int all_reduce_max(int value) {
#ifdef LOOM_HAVE_MPI
  if (world > 1) check_mpi(MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce");
#endif
  return value;
}

void broadcast(std::string& bytes, int root) {
#ifdef LOOM_HAVE_MPI
  if (world == 1) return;
  uint64_t size = bytes.size();
  check_mpi(MPI_Bcast(&size, 1, MPI_UINT64_T, root, MPI_COMM_WORLD), "MPI_Bcast");
  bytes.resize(size);
  constexpr uint64_t kChunk = uint64_t(1) << 30;  // MPI counts are ints
  for (uint64_t at = 0; at < size; at += kChunk)
    check_mpi(MPI_Bcast(bytes.data() + at, int(std::min(kChunk, size - at)), MPI_CHAR, root, MPI_COMM_WORLD),
              "MPI_Bcast");
#else
  (void)bytes, (void)root;
#endif
}

void barrier() {
#ifdef LOOM_HAVE_MPI
  if (world > 1) MPI_Barrier(MPI_COMM_WORLD);
#endif
}

void abort_all(int code) {
#ifdef LOOM_HAVE_MPI
  if (world > 1) MPI_Abort(MPI_COMM_WORLD, code);
#endif
  std::exit(code);
}

// ---- GradReducer --------------------------------------------------------------------------

struct GradReducer::Bucket {
  std::vector<size_t> params;  // indices into params_, in the order they sit in `flat`
  std::vector<int64_t> offsets;
  std::vector<float> flat;  // the gradients, then one "has a gradient" flag per parameter
  int64_t flags = 0;        // where the flags start in `flat`
  size_t waiting = 0;  // parameters whose gradient is not complete yet
  bool started = false;
#ifdef LOOM_HAVE_MPI
  MPI_Request request = MPI_REQUEST_NULL;
#endif
};

GradReducer::GradReducer(std::vector<Tensor> params, size_t bucket_bytes) : params_(std::move(params)) {
  for (const Tensor& p : params_) check_floats("GradReducer", p);
  const int64_t per_bucket = std::max<int64_t>(1, int64_t(bucket_bytes / sizeof(float)));
  for (size_t i = params_.size(); i-- > 0;) {  // reverse order: the backward finishes the last ones first
    if (buckets_.empty() || int64_t(buckets_.back().flat.size()) >= per_bucket) buckets_.emplace_back();
    Bucket& b = buckets_.back();
    where_.push_back({params_[i].impl_ptr().get(), {buckets_.size() - 1, b.params.size()}});
    b.params.push_back(i);
    b.offsets.push_back(int64_t(b.flat.size()));
    b.flat.resize(b.flat.size() + size_t(params_[i].numel()));
  }
  // The flags are summed with the gradients: a parameter that no rank gave a
  // gradient to keeps none (the optimizer skips it, as on one process).
  for (Bucket& b : buckets_) {
    b.flags = int64_t(b.flat.size());
    b.flat.resize(b.flat.size() + b.params.size());
  }
  std::sort(where_.begin(), where_.end());
}

size_t GradReducer::buckets() const { return buckets_.size(); }

GradReducer::~GradReducer() {
  if (active_) set_grad_ready_hook(nullptr);
}

void GradReducer::begin() {
  for (Bucket& b : buckets_) {
    b.waiting = b.params.size();
    b.started = false;
  }
  next_to_start_ = started_during_backward_ = 0;
  active_ = true;
  set_grad_ready_hook([this](const Tensor& leaf) { ready(leaf); });
}

void GradReducer::ready(const Tensor& leaf) {
  auto it = std::lower_bound(where_.begin(), where_.end(), std::make_pair(static_cast<const void*>(leaf.impl_ptr().get()),
                                                                           std::make_pair(size_t(0), size_t(0))));
  if (it == where_.end() || it->first != leaf.impl_ptr().get()) return;  // not one of ours
  Bucket& b = buckets_[it->second.first];
  if (b.waiting > 0) --b.waiting;
  // Start every complete bucket in order; a later one waits for earlier ones.
  while (next_to_start_ < buckets_.size() && buckets_[next_to_start_].waiting == 0) {
    start(buckets_[next_to_start_++]);
    ++started_during_backward_;
  }
#ifdef LOOM_HAVE_MPI
  for (size_t k = 0; k < next_to_start_; ++k) {  // let MPI make progress on what is in flight
    int done = 0;
    if (buckets_[k].request != MPI_REQUEST_NULL) MPI_Test(&buckets_[k].request, &done, MPI_STATUS_IGNORE);
  }
#endif
}

void GradReducer::start(Bucket& b) {
  for (size_t j = 0; j < b.params.size(); ++j) {  // pack the gradients (zeros where there is none)
    const Tensor& p = params_[b.params[j]];
    float* dst = b.flat.data() + b.offsets[size_t(j)];
    const Tensor& g = p.grad();
    if (g.defined()) {
      Tensor gc = g.contiguous();
      std::memcpy(dst, gc.data_ptr<float>(), size_t(p.numel()) * sizeof(float));
    } else {
      std::fill(dst, dst + p.numel(), 0.0f);
    }
    b.flat[size_t(b.flags) + j] = g.defined() ? 1.0f : 0.0f;
  }
  b.started = true;
#ifdef LOOM_HAVE_MPI
  if (world > 1)
    check_mpi(MPI_Iallreduce(MPI_IN_PLACE, b.flat.data(), int(b.flat.size()), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD,
                             &b.request),
              "MPI_Iallreduce");
#endif
}

void GradReducer::finish() {
  LOOM_CHECK(active_, "dist::GradReducer: finish() without begin()");
  set_grad_ready_hook(nullptr);
  active_ = false;
  while (next_to_start_ < buckets_.size()) start(buckets_[next_to_start_++]);  // gradients never reached
  const float inv = 1.0f / float(world);
  for (Bucket& b : buckets_) {
#ifdef LOOM_HAVE_MPI
    if (b.request != MPI_REQUEST_NULL) check_mpi(MPI_Wait(&b.request, MPI_STATUS_IGNORE), "MPI_Wait");
#endif
    for (size_t j = 0; j < b.params.size(); ++j) {  // unpack: grad = sum / world
      const Tensor& p = params_[b.params[j]];
      Tensor& g = p.mutable_grad();
      if (b.flat[size_t(b.flags) + j] == 0.0f) {
        g = Tensor();
        continue;
      }
      if (!g.defined() || !g.is_contiguous()) g = empty(p.sizes());
      float* dst = g.data_ptr<float>();
      const float* src = b.flat.data() + b.offsets[size_t(j)];
      for (int64_t i = 0; i < p.numel(); ++i) dst[i] = src[i] * inv;
    }
  }
}

}  // namespace loom::dist
