// Multi-rank tests: every rank runs this program under mpiexec (CTest registers it at 2 and 4
// ranks) and checks its own results. Collectives on exactly representable inputs, the reducer
// against one allreduce, replica checks, and training at N ranks against the same run in one
// process (in-process, with the world-size-1 communicator, on every rank).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <new>
#include <cstdio>
#include <csignal>
#include <cstring>
#include <random>

#include "comm/communicator.h"
#include "comm/mpi.h"
#include "comm/reducer.h"
#include "core/compress.h"
#include "core/error.h"
#include "core/trainer.h"
#ifdef SQUEEZE_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h"
#endif
#ifdef SQUEEZE_HAVE_NCCL
#include "comm/nccl.h"
#include "kernels/cuda/device_buffer.h"
#endif

using namespace sq;

// Counts C++ heap allocations, for the test that a steady-state step allocates nothing. (GCC
// cannot see that this operator new pairs with the free() below.) Every form that a sanitizer's
// runtime would otherwise supply is replaced, so that no block is allocated by one allocator and
// freed by the other: libstdc++'s std::stable_sort takes its buffer with the nothrow form and
// gives it back with the sized delete, which ASan reported as operator new against free().
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
static std::atomic<long> g_news{0};
static void* counted_alloc(std::size_t n) noexcept {
  g_news.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(n ? n : 1);
}
void* operator new(std::size_t n) {
  if (void* p = counted_alloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
  if (void* p = counted_alloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return counted_alloc(n); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return counted_alloc(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

namespace {

MpiWorld g_world;
// SQUEEZE_FASHION_MNIST: where scripts/gpu_check.sh unpacked the data set on the GPU machine.
const std::string kFashion = [] {
  const char* env = std::getenv("SQUEEZE_FASHION_MNIST");
  return std::string(env ? env : "/usr/share/datasets/fashion-mnist");
}();

bool have_fashion() {
  struct stat st;
  return ::stat((kFashion + "/train-images-idx3-ubyte.gz").c_str(), &st) == 0;
}

// Small integers: every partial sum of up to 16 ranks is exact in float, in any order.
float value(int rank, size_t i) { return float(int((i * 7 + size_t(rank) * 13) % 64) - 20); }

std::string progress_name(const ::testing::TestParamInfo<MpiProgress>& p) {
  return p.param == MpiProgress::kThread ? "thread" : "nonblocking";
}

class Collectives : public ::testing::TestWithParam<MpiProgress> {};

double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0, n = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    d += double(a[i] - b[i]) * double(a[i] - b[i]);
    n += double(b[i]) * double(b[i]);
  }
  return std::sqrt(d / n);
}

}  // namespace

TEST_P(Collectives, AllreduceIsExactOnEveryRank) {
  auto comm = make_mpi_communicator(GetParam());
  const int P = comm->size(), R = comm->rank();
  ASSERT_EQ(P, g_world.size);
  for (size_t n : {size_t(1), size_t(7), size_t(1000), (size_t(1) << 20) + 3}) {
    std::vector<float> sum(n), avg(n);
    for (size_t i = 0; i < n; ++i) sum[i] = avg[i] = value(R, i);
    comm->allreduce(sum.data(), n, ReduceOp::kSum);
    comm->allreduce_async(avg.data(), n, ReduceOp::kAvg).wait();
    size_t bad_sum = 0, bad_avg = 0;
    for (size_t i = 0; i < n; ++i) {
      float expect = 0;
      for (int r = 0; r < P; ++r) expect += value(r, i);
      bad_sum += sum[i] != expect;
      bad_avg += std::abs(avg[i] - expect / float(P)) > 1e-6f * std::abs(expect);
    }
    EXPECT_EQ(bad_sum, 0u) << "n " << n << ": sums wrong on rank " << R;
    EXPECT_EQ(bad_avg, 0u) << "n " << n << ": averages wrong on rank " << R;
  }
}

// Several buckets in flight at once, a blocking collective issued between them, waits in
// reverse order: still each slice's exact sum.
TEST_P(Collectives, OutstandingRequestsCompleteInAnyWaitOrder) {
  auto comm = make_mpi_communicator(GetParam());
  const int P = comm->size(), R = comm->rank();
  const size_t n = 300000;
  std::vector<float> buf(n);
  for (size_t i = 0; i < n; ++i) buf[i] = value(R, i);
  std::vector<CommRequest> reqs;
  const size_t cuts[] = {0, 1, 4000, 70000, 250000, n};
  for (int k = 4; k >= 0; --k) {
    reqs.push_back(comm->allreduce_async(buf.data() + cuts[k], cuts[k + 1] - cuts[k], ReduceOp::kSum));
    comm->poll();
  }
  double d[2] = {double(R), 1.0};
  comm->allreduce_sum(d, 2);
  EXPECT_EQ(d[0], P * (P - 1) / 2.0);
  EXPECT_EQ(d[1], double(P));
  for (size_t k = reqs.size(); k-- > 0;) reqs[k].wait();
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) {
    float expect = 0;
    for (int r = 0; r < P; ++r) expect += value(r, i);
    bad += buf[i] != expect;
  }
  EXPECT_EQ(bad, 0u) << "on rank " << R;
}

TEST_P(Collectives, BroadcastAllgatherBarrier) {
  auto comm = make_mpi_communicator(GetParam());
  const int P = comm->size(), R = comm->rank();
  std::vector<float> b(5000);
  for (size_t i = 0; i < b.size(); ++i) b[i] = value(R, i);
  comm->broadcast(b.data(), b.size(), P - 1);
  size_t bad = 0;
  for (size_t i = 0; i < b.size(); ++i) bad += b[i] != value(P - 1, i);
  EXPECT_EQ(bad, 0u) << "on rank " << R;
  const std::vector<uint64_t> all = comm->allgather(uint64_t(R) * 3 + 1);
  ASSERT_EQ(all.size(), size_t(P));
  for (int r = 0; r < P; ++r) EXPECT_EQ(all[size_t(r)], uint64_t(r) * 3 + 1);
  comm->barrier();
}

// The reducer's buckets, started from a simulated backward, sum exactly what one allreduce of
// the whole buffer sums.
TEST_P(Collectives, ReducerEqualsOneAllreduce) {
  auto comm = make_mpi_communicator(GetParam());
  const int R = comm->rank();
  std::vector<size_t> bounds{0};
  std::mt19937 rng(5);
  for (int i = 0; i < 30; ++i) bounds.push_back(bounds.back() + 1 + rng() % 20000);
  const size_t n = bounds.back();
  std::vector<float> g(n), whole(n);
  for (size_t i = 0; i < n; ++i) g[i] = whole[i] = value(R, i * 31);
  for (bool overlap : {true, false}) {
    std::vector<float> work = g;
    GradReducer red(*comm, work.data(), plan_buckets(bounds, 50000), ReduceOp::kSum, overlap);
    EXPECT_GT(red.plan().size(), 3u);
    for (size_t k = bounds.size() - 1; k-- > 0;) red.ready(bounds[k]);
    red.finish();
    if (overlap) comm->allreduce(whole.data(), n, ReduceOp::kSum);
    EXPECT_EQ(0, std::memcmp(work.data(), whole.data(), n * sizeof(float)))
        << (overlap ? "overlapped" : "after backward") << ", rank " << R;
  }
}

// After warm-up, a step's communication — every bucket started from backward's hook, the wait,
// the metric sums — allocates nothing (the request pool has grown to what is in flight).
TEST_P(Collectives, ASteadyStateStepAllocatesNothing) {
  auto comm = make_mpi_communicator(GetParam());
  std::vector<size_t> bounds{0};
  for (int i = 0; i < 20; ++i) bounds.push_back(bounds.back() + 5000 + size_t(i) * 300);
  std::vector<float> g(bounds.back(), 1.0f);
  GradReducer red(*comm, g.data(), plan_buckets(bounds, 20000), ReduceOp::kSum, true);
  ASSERT_GT(red.plan().size(), 3u);
  auto step = [&] {
    for (size_t k = bounds.size() - 1; k-- > 0;) red.ready(bounds[k]);
    red.finish();
    double stats[2] = {1, 2};
    comm->allreduce_sum(stats, 2);
  };
  for (int i = 0; i < 3; ++i) step();
  const long before = g_news.load();
  for (int i = 0; i < 10; ++i) step();
  EXPECT_EQ(g_news.load() - before, 0) << "heap allocations in 10 steady-state steps";
}

INSTANTIATE_TEST_SUITE_P(Mpi, Collectives,
                         ::testing::Values(MpiProgress::kThread, MpiProgress::kNonblocking),
                         progress_name);

// The CPU model's step allocates nothing after its first either (docs/ARCHITECTURE.md, "No
// allocation in the step"): activations, gradients and workspace are planned at start-up, and
// what an op builds once (the max-pools' window tables) is kept. The Fashion-MNIST model (its
// pools take the table path) and squeezenet1.1 at 224x224 (pool1 takes the row path).
TEST(Model, ASteadyStateCpuStepAllocatesNothing) {
  for (const char* name : {"fmnist", "squeezenet1.1"}) {
    SCOPED_TRACE(name);
    ModelConfig cfg = preset("squeezenet1.0");
    if (std::string(name) == "fmnist") {
      cfg.stem = Stem::kSmall, cfg.in_c = 1, cfg.in_h = cfg.in_w = 28, cfg.num_classes = 10;
    } else {
      cfg = preset(name);
    }
    const int N = 2, K = cfg.num_classes;
    Model m(cfg, N);
    std::vector<float> p(m.layout().total), g(p.size(), 0.0f);
    std::vector<float> x(size_t(cfg.in_c) * N * cfg.in_h * cfg.in_w), dl(size_t(K) * N);
    std::mt19937 rng(5);
    std::normal_distribution<float> nd;
    for (float& v : x) v = nd(rng);
    m.init_params(p.data(), "torchvision", 3);
    const uint64_t keys[N] = {11, 12};
    const int32_t labels[N] = {1, 0};
    auto step = [&] {
      const float* logits = m.forward(p.data(), x.data(), N, true, keys);
      softmax_xent(N, K, logits, labels, 1.0f / N, dl.data(), static_cast<int*>(nullptr));
      m.backward(p.data(), dl.data(), g.data(), N, keys);
    };
    step();
    const long before = g_news.load();
    for (int i = 0; i < 3; ++i) step();
    EXPECT_EQ(g_news.load() - before, 0) << "heap allocations in 3 steady-state steps";
  }
}

TEST(Replicas, ADesyncedRankIsNamedOnEveryRank) {
  auto comm = make_mpi_communicator(MpiProgress::kThread);
  const int P = comm->size(), R = comm->rank();
  std::vector<float> p(10000, 0.5f);
  EXPECT_NO_THROW(verify_replicas(*comm, p.data(), p.size(), "at start"));
  if (R == P - 1) p[1234] = std::nextafter(0.5f, 1.0f);
  try {
    verify_replicas(*comm, p.data(), p.size(), "after step 3");
    ADD_FAILURE() << "rank " << R << " did not see the disagreement";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank " + std::to_string(P - 1)), std::string::npos)
        << e.what();
  }
}

namespace {

TrainConfig small_config() {
  TrainConfig c;
  c.data_dir = kFashion;
  c.model = preset("squeezenet1.0");
  c.model.base_e = 32;  // narrow: quick on a shared 2-core machine
  c.model.incr_e = 32;
  c.epochs = 2;
  c.batch = 32;         // divisible by 1, 2 and 4
  c.schedule.lr = 0.002;  // see RanksComputeTheSameFunctionAsOneProcess
  c.train_limit = 200;  // 7 steps per epoch; the last batch is ragged (8 samples)
  c.test_limit = 200;
  c.augment.crop_pad = 2;
  c.augment.hflip = true;
  return c;  // dropout 0.5, LSUV init and gradient clipping: the defaults
}

// A data set in MNIST's format whose every pixel and label is drawn at random (a fixed
// generator: the same files on every rank), written to `dir`. Unlike Fashion-MNIST it has no
// flat background: no max-pool window holds mathematically equal values.
void write_random_mnist(const std::string& dir, int n_train, int n_test) {
  ::mkdir(dir.c_str(), 0755);
  std::mt19937 gen(12345);
  auto write_idx = [&](const std::string& name, const std::vector<uint32_t>& dims) {
    FILE* f = std::fopen((dir + "/" + name).c_str(), "wb");
    ASSERT_NE(f, nullptr) << dir << "/" << name;
    std::vector<uint32_t> header = {0x800u | uint32_t(dims.size())};
    header.insert(header.end(), dims.begin(), dims.end());
    for (uint32_t v : header) {
      const unsigned char be[4] = {uint8_t(v >> 24), uint8_t(v >> 16), uint8_t(v >> 8), uint8_t(v)};
      std::fwrite(be, 1, 4, f);
    }
    size_t count = 1;
    for (uint32_t d : dims) count *= d;
    for (size_t i = 0; i < count; ++i) std::fputc(dims.size() == 1 ? int(gen() % 10) : int(gen() % 256), f);
    ASSERT_EQ(std::fclose(f), 0);
  };
  write_idx("train-images-idx3-ubyte", {uint32_t(n_train), 28, 28});
  write_idx("train-labels-idx1-ubyte", {uint32_t(n_train)});
  write_idx("t10k-images-idx3-ubyte", {uint32_t(n_test), 28, 28});
  write_idx("t10k-labels-idx1-ubyte", {uint32_t(n_test)});
}

}  // namespace

// -np N computes the same function as one process (dropout, augmentation and LSUV keyed by
// global sample, the ragged batch split across ranks, sharded evaluation), up to the summation
// order of floats. Each step of an epoch is checked from the same state: the N-rank run resumes
// the one-process run's checkpoint after k steps and takes step k+1, and its parameters and
// (after the last, ragged step) every metric agree with the one-process step to 1e-5.
// Why step by step: a rounding difference can flip a discrete decision (a ReLU input or a max-pool
// near-tie; the GEMM shapes, and with them the rounding, depend on the per-rank batch), and each
// flip moves the parameters by about lr x a gradient element; whole trajectories then part by a
// CPU-dependent amount. Measured on an AVX-512 EPYC over one epoch: 1.04e-5 at 4 ranks on
// Fashion-MNIST and 8.5e-6 at 2 ranks on this random set, from one flip each (1.4e-6 at the step
// it happened, carried forward and grown by momentum); other pairs stayed at 1e-9. A bug (a mask
// or a sample on the wrong rank, a wrong scale) parts them at its first step by orders more.
TEST(Train, RanksComputeTheSameFunctionAsOneProcess) {
  TrainConfig c = small_config();
  c.epochs = 1;
  // Each rank its own data and its own one-process checkpoints (no rank reads what another
  // writes); the one-process runs are the same on every rank.
  const std::string dir = ::testing::TempDir() + "squeeze_mpi_steps_" + std::to_string(::getpid());
  write_random_mnist(dir, 200, 200);
  c.data = DataFormat::kMnist;
  c.data_dir = dir;
  auto local = make_local_communicator();
  const std::string ckpt = dir + "/one/checkpoint.safetensors", state = dir + "/state.safetensors";
  double worst = 0;
  for (int64_t k = 0;; ++k) {  // from the state after k steps, step k+1
    SCOPED_TRACE("step " + std::to_string(k + 1));
    RunOptions o;
    o.quiet = true;
    o.bucket_mib = 0.05;  // several buckets even for this narrow model
    o.max_steps = k + 1;
    if (k > 0) o.resume = state;
    RunOptions one_o = o;
    one_o.out_dir = dir + "/one";
    one_o.resume = k > 0 ? ckpt : "";
    const TrainResult one = train(c, one_o, *local);
    for (MpiProgress mode : {MpiProgress::kThread, MpiProgress::kNonblocking}) {
      SCOPED_TRACE(mode == MpiProgress::kThread ? "thread" : "nonblocking");
      auto comm = make_mpi_communicator(mode);
      o.check_replicas_every = 1;
      const TrainResult many = train(c, o, *comm);
      ASSERT_EQ(many.steps, k + 1);
      const double d = rel_diff(many.params, one.params);
      worst = std::max(worst, d);
      EXPECT_LT(d, 1e-5);
      ASSERT_EQ(many.epochs.size(), one.epochs.size());
      if (one.epochs.empty()) continue;
      const EpochMetrics &a = many.epochs[0], &b = one.epochs[0];
      EXPECT_NEAR(a.train_loss, b.train_loss, 1e-5 * b.train_loss);
      EXPECT_EQ(a.train_acc, b.train_acc);
      EXPECT_NEAR(a.test_loss, b.test_loss, 1e-5 * b.test_loss);
      EXPECT_NEAR(a.test_acc, b.test_acc, 1.0 / 200 + 1e-12);  // a near-tie may flip one sample
    }
    if (!one.epochs.empty()) break;  // the epoch's last step
    // The one-process state after step k+1, for the next step's N-rank run to start from.
    std::system(("cp '" + ckpt + "' '" + state + "'").c_str());
  }
  std::printf("rank %d: every step's parameters within %.3g (relative) of one process\n", g_world.rank, worst);
  std::system(("rm -rf '" + dir + "'").c_str());
}

// A checkpoint written by rank 0 of an N-rank run holds the whole state (resumed at N ranks, the
// next step is bit-identical to the uninterrupted run's) and resumes in one process: its next step
// agrees with the N-rank one to summation order (step by step, as above: trajectories part by
// flipped decisions), and it runs the epoch to its end.
TEST(Train, CheckpointOfNRanksResumesInOneProcess) {
  if (!have_fashion()) GTEST_SKIP() << "Fashion-MNIST not installed at " << kFashion;
  auto comm = make_mpi_communicator(MpiProgress::kThread);
  const uint64_t pid0 = comm->allgather(uint64_t(::getpid()))[0];
  const std::string dir = ::testing::TempDir() + "squeeze_mpi_ckpt_" + std::to_string(pid0);
  TrainConfig c = small_config();
  c.epochs = 1;
  auto run = [&](Communicator& on, const std::string& out, const std::string& resume, int64_t max_steps) {
    RunOptions o;
    o.quiet = true;
    o.out_dir = out;
    o.resume = resume;
    o.max_steps = max_steps;
    return train(resume.empty() ? c : small_config(), o, on);  // resumed: the checkpoint's settings
  };
  const std::string ckpt = dir + "/checkpoint.safetensors";
  run(*comm, dir, "", 4);  // mid-epoch
  comm->barrier();         // the checkpoint is on disk before anyone reads it
  const TrainResult straight = run(*comm, "", "", 5), resumed_n = run(*comm, "", ckpt, 5);
  ASSERT_EQ(resumed_n.params.size(), straight.params.size());
  EXPECT_EQ(std::memcmp(resumed_n.params.data(), straight.params.data(), straight.params.size() * sizeof(float)), 0)
      << "resumed at the same world size, the step differs from the uninterrupted one";
  auto local = make_local_communicator();
  const TrainResult resumed_1 = run(*local, "", ckpt, 5);
  ASSERT_EQ(resumed_1.steps, 5);
  EXPECT_LT(rel_diff(resumed_1.params, resumed_n.params), 1e-5);
  const TrainResult to_end = run(*local, "", ckpt, 0);
  EXPECT_EQ(to_end.steps, 7);
  EXPECT_EQ(to_end.epochs.size(), 1u);
  comm->barrier();
  if (comm->rank() == 0) std::system(("rm -rf '" + dir + "'").c_str());
}

// squeeze compress's retraining under mpirun against one process, step by step as above (whole
// trajectories part by flipped decisions). With the pruning mask, which holds no state, every
// step of an epoch from the one-process state before it (the N-rank run resumes the one-process
// checkpoint); pruned weights stay zero on every rank. With 4-bit codebooks, whose velocities no
// checkpoint holds: the first step from the same quantized weights, codebooks included; and over
// an epoch at N ranks the tuned weights are exactly the codebooks, on every rank alike.
TEST(Train, CompressionRetrainingAtNRanksMatchesOneProcess) {
  TrainConfig c = small_config();
  c.epochs = 1;
  const std::string dir = ::testing::TempDir() + "squeeze_mpi_compress_" + std::to_string(::getpid());
  write_random_mnist(dir, 200, 200);
  c.data = DataFormat::kMnist;
  c.data_dir = dir;
  RunOptions o;
  o.quiet = true;
  auto local = make_local_communicator();
  auto comm = make_mpi_communicator(MpiProgress::kThread);
  const TrainResult dense = train(c, o, *local);
  const Model plan(dense.model, 1, false);
  const std::vector<uint8_t> mask = magnitude_mask(plan, dense.params.data(), paper_schedule());
  std::vector<float> pruned = dense.params;
  apply_mask(pruned.data(), mask);
  MaskConstraint masked(mask);
  const std::string ckpt = dir + "/one/checkpoint.safetensors", state = dir + "/state.safetensors";
  std::vector<float> retrained;
  for (int64_t k = 0; retrained.empty(); ++k) {  // from the state after k steps, step k+1
    SCOPED_TRACE("masked step " + std::to_string(k + 1));
    RunOptions step = o;
    step.constraint = &masked;
    step.max_steps = k + 1;
    RunOptions one_o = step;
    one_o.out_dir = dir + "/one";
    if (k == 0) one_o.initial_params = &pruned;
    else one_o.resume = ckpt;
    const TrainResult one = train(c, one_o, *local);
    if (k == 0) step.initial_params = &pruned;
    else step.resume = state;
    step.check_replicas_every = 1;
    const TrainResult many = train(c, step, *comm);
    ASSERT_EQ(many.steps, k + 1);
    EXPECT_LT(rel_diff(many.params, one.params), 1e-5);
    for (size_t i = 0; i < mask.size(); ++i) {
      if (!mask[i]) {
        ASSERT_EQ(many.params[i], 0.0f) << "pruned parameter " << i;
      }
    }
    if (!one.epochs.empty()) retrained = one.params;  // the epoch's last step
    std::system(("cp '" + ckpt + "' '" + state + "'").c_str());
  }

  auto books = [](const CompressedModel& cm) {
    std::vector<float> all;
    for (const QuantizedTensor& q : cm.weights) all.insert(all.end(), q.codebook.begin(), q.codebook.end());
    return all;
  };
  CompressedModel cm_one = quantize(plan, retrained.data(), mask, 4), cm_many = cm_one, cm_epoch = cm_one;
  const std::vector<float> q = dequantize(cm_one, plan);
  QuantizedConstraint q_one(cm_one, plan, c.momentum), q_many(cm_many, plan, c.momentum);
  o.initial_params = &q;
  o.max_steps = 1;
  o.constraint = &q_one;
  const TrainResult first_one = train(c, o, *local);
  o.constraint = &q_many;
  const TrainResult first_many = train(c, o, *comm);
  EXPECT_LT(rel_diff(first_many.params, first_one.params), 1e-5);
  EXPECT_LT(rel_diff(books(cm_many), books(cm_one)), 1e-5);
  EXPECT_NE(books(cm_many), books(quantize(plan, retrained.data(), mask, 4)));  // the step moved them

  QuantizedConstraint q_epoch(cm_epoch, plan, c.momentum);
  o.constraint = &q_epoch;
  o.max_steps = 0;
  o.check_replicas_every = 2;
  const TrainResult tuned = train(c, o, *comm);
  q_epoch.finish(tuned.params.data());
  EXPECT_EQ(dequantize(cm_epoch, plan), tuned.params);
  std::system(("rm -rf '" + dir + "'").c_str());
}

// GPU ranks over the MPI backend (what squeeze train --device cuda does where NCCL cannot serve,
// e.g. several ranks on one GPU before NCCL 2.30): backward on the GPU, the gradient reduced over
// MPI in pinned host memory, the update on the GPU. Against one process on the CPU, to the GPU
// test's tolerance. Skips without a GPU.
TEST(Train, GpuRanksWithoutNcclMatchOneCpuProcess) {
#ifndef SQUEEZE_HAVE_CUDA
  GTEST_SKIP() << "built without CUDA";
#else
  std::string why;
  if (cuda::device_count(&why) == 0) GTEST_SKIP() << "no GPU: " << why;
  if (!have_fashion()) GTEST_SKIP() << "Fashion-MNIST not installed at " << kFashion;
  TrainConfig c = small_config();
  c.epochs = 1;
  RunOptions o;
  o.quiet = true;
  auto local = make_local_communicator();
  const TrainResult cpu = train(c, o, *local);
  auto comm = make_mpi_communicator(MpiProgress::kThread);
  o.cuda = true;
  o.check_replicas_every = 2;
  const TrainResult gpu = train(c, o, *comm);
  ASSERT_EQ(gpu.steps, cpu.steps);
  EXPECT_LT(rel_diff(gpu.params, cpu.params), 1e-4);
#endif
}

// A stop request on any rank stops every rank after the same step; the result names the signal
// where the ranks that got one got the same, and none where they differ.
TEST(Train, AStopOnAnyRankStopsEveryRankAndNamesOneSignal) {
  TrainConfig c = small_config();
  const std::string dir = ::testing::TempDir() + "squeeze_mpi_stop_" + std::to_string(::getpid());
  write_random_mnist(dir, 200, 200);
  c.data = DataFormat::kMnist;
  c.data_dir = dir;
  auto comm = make_mpi_communicator(MpiProgress::kThread);
  const int P = comm->size(), last = P - 1;
  struct Case {
    int first_rank, last_rank, expected;  // signals on rank 0 and on the last rank
  };
  for (const Case& k : {Case{0, SIGUSR1, SIGUSR1}, Case{SIGUSR1, SIGUSR1, SIGUSR1}, Case{SIGINT, SIGUSR1, 0}}) {
    SCOPED_TRACE(std::to_string(k.first_rank) + " and " + std::to_string(k.last_rank));
    volatile std::sig_atomic_t flag = comm->rank() == 0 ? k.first_rank : comm->rank() == last ? k.last_rank : 0;
    RunOptions o;
    o.quiet = true;
    o.stop_signal = &flag;
    const TrainResult r = train(c, o, *comm);
    EXPECT_TRUE(r.stopped);
    EXPECT_EQ(r.steps, 1);
    EXPECT_EQ(r.stop_signal, k.expected);
  }
  std::system(("rm -rf '" + dir + "'").c_str());
}

TEST(Train, BadWorldShapesAreClearErrorsOnEveryRank) {
  if (!have_fashion()) GTEST_SKIP() << "Fashion-MNIST not installed at " << kFashion;
  auto comm = make_mpi_communicator(MpiProgress::kThread);
  const int P = comm->size();
  RunOptions o;
  o.quiet = true;
  TrainConfig c = small_config();
  c.batch = 8 * P + 1;
  try {
    train(c, o, *comm);
    ADD_FAILURE() << "a batch not divisible by the world size was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not divisible by the world size"), std::string::npos)
        << e.what();
  }
  // A resumed run keeps its batch: the error names the checkpoint, not a --batch-size it ignores.
  const uint64_t pid0 = comm->allgather(uint64_t(::getpid()))[0];
  const std::string dir = ::testing::TempDir() + "squeeze_mpi_oddbatch_" + std::to_string(pid0);
  if (comm->rank() == 0) {
    RunOptions one;
    one.quiet = true;
    one.out_dir = dir;
    one.max_steps = 1;
    auto local = make_local_communicator();
    train(c, one, *local);  // batch 8P+1 in one process
  }
  comm->barrier();
  RunOptions resume = o;
  resume.resume = dir + "/checkpoint.safetensors";
  try {
    train(small_config(), resume, *comm);
    ADD_FAILURE() << "a checkpoint whose batch the world size does not divide was resumed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(resume.resume + ": the run's global batch " + std::to_string(8 * P + 1)),
              std::string::npos) << e.what();
  }
  comm->barrier();
  if (comm->rank() == 0) std::system(("rm -rf '" + dir + "'").c_str());
  c = small_config();
  c.train_limit = P - 1;
  c.batch = P;
  try {
    train(c, o, *comm);
    ADD_FAILURE() << "more ranks than samples was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("more ranks"), std::string::npos) << e.what();
  }
}

#ifdef SQUEEZE_HAVE_NCCL
// NCCL on device buffers: exact sums, and the bucketed reducer started from a simulated
// backward gives the same result as the MPI backend on the same inputs. Skipped (on every rank
// together) without a GPU per rank or where NCCL refuses ranks sharing a GPU.
TEST(Nccl, DeviceAllreduceAndBucketsMatchTheMpiBackend) {
  auto mpi = make_mpi_communicator(MpiProgress::kThread);
  std::string why;
  const int gpus = cuda::device_count(&why);
  const std::string reason = nccl_unusable_reason(g_world, gpus);
  double unusable = reason.empty() ? 0.0 : 1.0;
  mpi->allreduce_sum(&unusable, 1);
  if (unusable > 0) GTEST_SKIP() << "NCCL unusable here: " << (reason.empty() ? "elsewhere" : reason);
  const int device = g_world.local_rank % gpus;
  auto nccl = make_nccl_communicator(g_world, device, 60.0);
  cudaStream_t stream;
  SQ_CUDA(cudaStreamCreate(&stream));
  nccl->set_compute_stream(stream);
  const int P = nccl->size(), R = nccl->rank();
  std::vector<size_t> bounds{0};
  for (int i = 0; i < 25; ++i) bounds.push_back(bounds.back() + 3000 + size_t(i) * 977);
  const size_t n = bounds.back();
  std::vector<float> host(n), expect(n, 0.0f);
  for (size_t i = 0; i < n; ++i) host[i] = value(R, i);
  for (int r = 0; r < P; ++r)
    for (size_t i = 0; i < n; ++i) expect[i] += value(r, i);
  for (bool overlap : {true, false}) {
    cuda::DeviceBuffer<float> g(host);
    GradReducer red(*nccl, g.get(), plan_buckets(bounds, 20000), ReduceOp::kSum, overlap);
    for (size_t k = bounds.size() - 1; k-- > 0;) red.ready(bounds[k]);
    red.finish();
    SQ_CUDA(cudaStreamSynchronize(stream));
    EXPECT_EQ(g.download(), expect) << (overlap ? "overlapped" : "after") << ", rank " << R;
  }
  std::vector<float> via_mpi = host;
  mpi->allreduce(via_mpi.data(), n, ReduceOp::kSum);
  EXPECT_EQ(via_mpi, expect);
  cuda::DeviceBuffer<float> avg(host);
  nccl->allreduce_async(avg.get(), n, ReduceOp::kAvg).wait();
  SQ_CUDA(cudaStreamSynchronize(stream));
  const std::vector<float> a = avg.download();
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) bad += std::abs(a[i] - expect[i] / float(P)) > 1e-6f * std::abs(expect[i]);
  EXPECT_EQ(bad, 0u) << "ncclAvg on rank " << R;
  nccl.reset();
  cudaStreamDestroy(stream);
}
#endif

namespace {
// Ranks other than 0 print only their failures, prefixed with the rank.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (r.failed())
      std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", g_world.rank,
                   r.file_name() ? r.file_name() : "?", r.line_number(), r.message());
  }
};
}  // namespace

int main(int argc, char** argv) {
  try {
    g_world = mpi_init(&argc, &argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "test_mpi: %s\n", e.what());
    return 1;
  }
  ::testing::InitGoogleTest(&argc, argv);
  if (g_world.rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter);
  }
  const int rc = RUN_ALL_TESTS();
  mpi_finalize();
  return rc;
}
