// loom-vit-fashion-mnist [--epochs N] [--minutes M]: trains a small vision
// transformer on Fashion-MNIST (Debian's dataset-fashion-mnist, gzip'd IDX
// files in /usr/share/datasets/fashion-mnist) and reports test accuracy
// after each epoch.
#include <loom/loom.h>

#include "flags.h"

#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>

using namespace loom;

namespace {

const std::string kDir = "/usr/share/datasets/fashion-mnist/";

// A gzip'd IDX file: magic (0x0000 type dims), sizes (big-endian), bytes.
std::vector<uint8_t> read_idx(const std::string& path, std::vector<int64_t>& dims) {
  gzFile f = gzopen(path.c_str(), "rb");
  LOOM_CHECK(f != nullptr, "fashion-mnist: cannot open '", path, "' (install dataset-fashion-mnist)");
  std::vector<uint8_t> all;
  unsigned char buf[1 << 16];
  for (int n; (n = gzread(f, buf, sizeof buf)) > 0;) all.insert(all.end(), buf, buf + n);
  gzclose(f);
  LOOM_CHECK(all.size() >= 4 && all[0] == 0 && all[1] == 0 && all[2] == 0x08, "fashion-mnist: '", path,
             "' is not an unsigned-byte IDX file");
  const int nd = all[3];
  size_t at = 4, count = 1;
  dims.clear();
  for (int d = 0; d < nd; ++d, at += 4) {
    dims.push_back(int64_t(all[at]) << 24 | int64_t(all[at + 1]) << 16 | int64_t(all[at + 2]) << 8 | all[at + 3]);
    count *= size_t(dims.back());
  }
  LOOM_CHECK(all.size() == at + count, "fashion-mnist: '", path, "' is truncated");
  return std::vector<uint8_t>(all.begin() + long(at), all.end());
}

struct Split {
  Tensor images;  // (n, 1, 28, 28) in [0, 1], normalised
  Tensor labels;  // (n) int64
};

Split load(const std::string& prefix) {
  std::vector<int64_t> di, dl;
  std::vector<uint8_t> img = read_idx(kDir + prefix + "-images-idx3-ubyte.gz", di);
  std::vector<uint8_t> lab = read_idx(kDir + prefix + "-labels-idx1-ubyte.gz", dl);
  std::vector<float> x(img.size());
  for (size_t i = 0; i < img.size(); ++i) x[i] = (float(img[i]) / 255.0f - 0.286f) / 0.353f;  // dataset mean, std
  std::vector<int64_t> y(lab.begin(), lab.end());
  return {from_vector(x, {di[0], 1, di[1], di[2]}), from_vector(y, {dl[0]})};
}

double accuracy(ViTransformerWrapper& model, const Split& s) {
  NoGradGuard no_grad;
  model.eval();
  int64_t correct = 0;
  for (int64_t first = 0; first < s.labels.size(0); first += 500) {
    const int64_t n = std::min<int64_t>(500, s.labels.size(0) - first);
    std::vector<int64_t> pred = argmax(model.forward(s.images.narrow(0, first, n)), 1).to_vector<int64_t>();
    std::vector<int64_t> truth = s.labels.narrow(0, first, n).to_vector<int64_t>();
    for (int64_t i = 0; i < n; ++i) correct += pred[size_t(i)] == truth[size_t(i)];
  }
  model.train();
  return double(correct) / double(s.labels.size(0));
}

}  // namespace

int main(int argc, char** argv) {
  loom_example::Flags flags(argc, argv,
                            "usage: loom-vit-fashion-mnist [--epochs N] [--minutes M]\n\n"
                            "Trains a small vision transformer on Fashion-MNIST (Debian's dataset-fashion-mnist)\n"
                            "and reports the train loss and test accuracy after each epoch.\n\n"
                            "  --epochs N   passes over the 60000 training images (8)\n"
                            "  --minutes M  stop early after M minutes, mid-epoch if need be (10)\n");
  const int64_t epochs = flags.integer("epochs", 8, 1);
  const double minutes = flags.number("minutes", 10, 0);
  flags.done();
  try {
    Split train = load("train"), test = load("t10k");
    std::printf("Fashion-MNIST: %lld training and %lld test images\n", static_cast<long long>(train.labels.size(0)),
                static_cast<long long>(test.labels.size(0)));
    manual_seed(0);
    ViTransformerWrapper model({.image_size = 28, .patch_size = 4,
                                .attn_layers = nn::Encoder({.dim = 64, .depth = 4, .heads = 4,
                                                            .attn = {.dim_head = 16}, .ff = {.mult = 2}}),
                                .channels = 1, .num_classes = 10});
    std::printf("ViT: 7x7 patches of 4x4 pixels, dim 64, depth 4, %lld parameters\n",
                static_cast<long long>(model.num_parameters()));
    const int64_t batch = 128, per_epoch = train.labels.size(0) / batch;
    AdamW opt(model.named_parameters(), {.lr = 2e-3, .weight_decay = 0.05});
    LRSchedule schedule{.max_lr = 2e-3, .min_lr = 1e-5, .warmup_steps = 200, .total_steps = epochs * per_epoch};
    Generator gen(1);
    const auto start = std::chrono::steady_clock::now();
    auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
    int64_t step = 0;
    double acc = 0;
    for (int64_t epoch = 1; epoch <= epochs && elapsed() < minutes * 60; ++epoch) {
      // A shuffled order: sort random keys.
      std::vector<float> keys = rand({train.labels.size(0)}, gen).to_vector<float>();
      std::vector<int64_t> order(keys.size());
      for (size_t i = 0; i < order.size(); ++i) order[i] = int64_t(i);
      std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return keys[size_t(a)] < keys[size_t(b)]; });
      double loss_sum = 0;
      int64_t batches = 0;  // run in this epoch: fewer than per_epoch when --minutes runs out
      for (int64_t b = 0; b < per_epoch && elapsed() < minutes * 60; ++b, ++step, ++batches) {
        Tensor idx = from_vector(std::vector<int64_t>(order.begin() + b * batch, order.begin() + (b + 1) * batch), {batch});
        Tensor x = index_select(train.images, 0, idx), y = index_select(train.labels, 0, idx);
        opt.set_lr(schedule.at(step));
        opt.zero_grad();
        Tensor loss = cross_entropy(model.forward(x), y);
        loss.backward();
        clip_grad_norm(model.parameters(), 1.0);
        opt.step();
        loss_sum += loss.item<float>();
      }
      acc = accuracy(model, test);
      std::printf("epoch %lld  train loss %.4f  test accuracy %.2f%%  (%.0f s)\n", static_cast<long long>(epoch),
                  loss_sum / double(std::max<int64_t>(batches, 1)), 100 * acc, elapsed());
      std::fflush(stdout);
    }
    std::printf("final test accuracy %.2f%% after %.1f minutes\n", 100 * acc, elapsed() / 60);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loom-vit-fashion-mnist: %s\n", e.what());
    return 1;
  }
  return 0;
}
