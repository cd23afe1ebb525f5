// End-to-end: the model's gradient against a directional finite difference, a short run on real
// Fashion-MNIST lowering the loss, bit-identical resume, bad outputs and checkpoints refused before
// any work, and the CLI refusing bad flags with one line each.
#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <thread>
#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "core/checkpoint.h"
#include "core/error.h"
#include "core/model.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "core/trainer.h"

using namespace sq;

namespace {

const char* kFashion = "/usr/share/datasets/fashion-mnist";

bool have_fashion() {
  struct stat st;
  return ::stat((std::string(kFashion) + "/train-images-idx3-ubyte.gz").c_str(), &st) == 0;
}

std::string temp_dir(const std::string& name) {
  std::string d = ::testing::TempDir() + "squeeze_" + name + "_" + std::to_string(::getpid());
  std::system(("rm -rf '" + d + "'").c_str());
  return d;
}

TrainConfig small_config() {
  TrainConfig c;
  c.model = preset("squeezenet1.0");
  c.model.base_e = 32;  // a narrow member of the family keeps the test quick
  c.model.incr_e = 32;
  c.epochs = 2;
  c.batch = 32;
  c.schedule.lr = 0.02;
  c.schedule.warmup = 3;
  c.train_limit = 200;  // 7 steps per epoch, the last one ragged (8 samples)
  c.test_limit = 100;
  c.augment.crop_pad = 2;
  c.augment.hflip = true;
  return c;
}

// A data set in MNIST's format (raw IDX files, 28x28, labels i % 10) of n_train and n_test images,
// written to `dir`: training runs that need data without the installed data sets.
void write_tiny_mnist(const std::string& dir, int n_train, int n_test) {
  ::mkdir(dir.c_str(), 0755);
  auto write_idx = [&](const std::string& name, const std::vector<uint32_t>& dims) {
    std::ofstream f(dir + "/" + name, std::ios::binary);
    std::vector<uint32_t> header = {0x800u | uint32_t(dims.size())};  // unsigned bytes, rank
    header.insert(header.end(), dims.begin(), dims.end());
    for (uint32_t v : header) {
      const char be[4] = {char(v >> 24), char(v >> 16), char(v >> 8), char(v)};
      f.write(be, 4);
    }
    size_t count = 1;
    for (uint32_t d : dims) count *= d;
    const bool labels = dims.size() == 1;
    for (size_t i = 0; i < count; ++i) f.put(char(labels ? i % 10 : (i * 37) % 256));
  };
  write_idx("train-images-idx3-ubyte", {uint32_t(n_train), 28, 28});
  write_idx("train-labels-idx1-ubyte", {uint32_t(n_train)});
  write_idx("t10k-images-idx3-ubyte", {uint32_t(n_test), 28, 28});
  write_idx("t10k-labels-idx1-ubyte", {uint32_t(n_test)});
}

// A narrow model on the tiny data set: a step takes milliseconds.
TrainConfig tiny_mnist_config(const std::string& data_dir) {
  TrainConfig c;
  c.data = DataFormat::kMnist;
  c.data_dir = data_dir;
  c.model.base_e = 16;
  c.model.incr_e = 16;
  c.init = "torchvision";  // LSUV's forward passes would cost more than the steps
  c.epochs = 1;
  c.batch = 32;
  return c;
}

// The message of the sq::Error that `f` throws ("" if it returns).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// The squeeze binary: the build's, or $SQUEEZE_BINARY where the tests run elsewhere (the GPU
// machine runs binaries built on another, scripts/gpu_check.sh).
std::string squeeze_binary() {
  const char* env = std::getenv("SQUEEZE_BINARY");
  return env ? env : SQUEEZE_BINARY;
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void copy_file(const std::string& from, const std::string& to) {
  std::ofstream(to, std::ios::binary) << slurp(from);
}

// The "step" of each line of a metrics file (a line that is not JSON throws).
std::vector<int64_t> metric_steps(const std::string& path) {
  std::vector<int64_t> steps;
  std::ifstream f(path);
  for (std::string line; std::getline(f, line);)
    steps.push_back(nlohmann::json::parse(line).at("step").get<int64_t>());
  return steps;
}

// Runs the CLI with stdout to `out`, returns its exit status and puts stderr in *err. The stderr
// file is named by the process: ctest runs these tests in parallel processes, and a shared name
// let one test read another's message (a short one written over the start of a longer one).
int run_cli(const std::string& args, std::string* err, const std::string& out = "/dev/null") {
  std::string errfile = ::testing::TempDir() + "squeeze_cli_err_" + std::to_string(::getpid()) + ".txt";
  std::string cmd = squeeze_binary() + " " + args + " > " + out + " 2> " + errfile;
  int status = std::system(cmd.c_str());
  {
    std::ifstream f(errfile);
    err->assign(std::istreambuf_iterator<char>(f), {});
  }
  std::remove(errfile.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

// The whole model's gradient against finite differences, in double precision (BasicModel<double>
// runs the same layer code and ops as the float model). For every tensor: the directional
// derivative d/dt L(p + t*d) at t = 0 along a random direction d confined to that tensor, by
// central differences, against <grad, d>. In double with h = 1e-6 no ReLU or max-pool decision
// flips, so every tensor must agree to 1e-6 relative. Every layer kind is present: complex and
// simple bypasses, dropout with fixed keys, the small stem, pools; pct_3x3 = 0 and 1 give Fire
// modules with only an expand 1x1 resp. only an expand 3x3 branch.
struct GradCase {
  Bypass bypass;
  double pct_3x3;
};
void PrintTo(const GradCase& g, std::ostream* os) {
  *os << "bypass " << bypass_name(g.bypass) << ", pct_3x3 " << g.pct_3x3;
}
class ModelGradient : public ::testing::TestWithParam<GradCase> {};

TEST_P(ModelGradient, AgreesWithFiniteDifferencesOnEveryTensor) {
  ModelConfig c = preset("squeezenet1.0");
  c.stem = Stem::kSmall;
  c.in_c = 2;
  c.in_h = c.in_w = 12;
  c.num_classes = 5;
  c.base_e = 8;
  c.incr_e = 8;
  c.sr = 0.5;
  c.bypass = GetParam().bypass;
  c.pct_3x3 = GetParam().pct_3x3;
  c.dropout = 0.3;
  const int N = 3;
  BasicModel<double> m(c, N);
  const size_t P = m.layout().total;
  std::vector<double> params(P), grads(P, 0.0), input(size_t(2) * N * 144);
  m.init_params(params.data(), "torchvision", 3);
  SplitMix rng(99);
  for (size_t i = 0; i < P; ++i) params[i] += 0.05 * rng.normal();  // non-zero biases
  for (double& x : input) x = rng.normal();
  std::vector<int32_t> labels = {1, 4, 0};
  std::vector<uint64_t> keys = {11, 22, 33};
  std::vector<double> dlogits(size_t(N) * 5), scratch(dlogits.size());
  auto loss_at = [&](const std::vector<double>& p) {
    const double* logits = m.forward(p.data(), input.data(), N, true, keys.data());
    return softmax_xent(N, 5, logits, labels.data(), 1.0 / N, scratch.data(), nullptr) / N;
  };
  const double* logits = m.forward(params.data(), input.data(), N, true, keys.data());
  softmax_xent(N, 5, logits, labels.data(), 1.0 / N, dlogits.data(), nullptr);
  size_t ready_min = P;
  m.backward(params.data(), dlogits.data(), grads.data(), N, keys.data(), [&](size_t off) {
    EXPECT_LE(off, ready_min);  // readiness only moves towards the front
    ready_min = off;
  });
  EXPECT_EQ(ready_min, 0u);
  const double h = 1e-6;
  for (const ParamSpec& t : m.layout().tensors) {
    std::vector<double> pp(params), pm(params);
    double gd = 0, gnorm = 0;
    for (size_t i = t.offset; i < t.offset + t.count; ++i) {
      const double d = rng.normal();
      gd += grads[i] * d;
      gnorm += grads[i] * grads[i];
      pp[i] = params[i] + h * d;
      pm[i] = params[i] - h * d;
    }
    ASSERT_GT(gnorm, 0.0) << t.name << ": no gradient reaches this tensor";
    const double fd = (loss_at(pp) - loss_at(pm)) / (2 * h);
    EXPECT_NEAR(fd, gd, 1e-6 * std::abs(gd) + 1e-9) << t.name;
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, ModelGradient,
                         ::testing::Values(GradCase{Bypass::kNone, 0.5},
                                           GradCase{Bypass::kSimple, 0.5},
                                           GradCase{Bypass::kComplex, 0.5},
                                           GradCase{Bypass::kNone, 0.0},
                                           GradCase{Bypass::kSimple, 1.0}));

// The CPU ops split their work over OpenMP threads (a convolution's images, a pool's planes, the
// weight gradients' partial sums). CTest runs the test executables with one thread each (two at a
// time on two cores: docs/ARCHITECTURE.md, "Tests"), so this test runs one float training step at
// 1 and at 3 threads: a race or a thread-dependent index shows as a difference beyond the
// reordering of sums (logits and every tensor's gradient agree to 1e-5).
TEST(Threads, SeveralThreadsComputeTheSameStepAsOne) {
  ModelConfig c = preset("squeezenet1.0");
  c.stem = Stem::kSmall;
  c.in_c = 1, c.in_h = c.in_w = 28, c.num_classes = 10;
  c.base_e = 32, c.incr_e = 32;
  c.bypass = Bypass::kComplex;
  const int N = 7;
  Model m(c, N);
  const size_t P = m.layout().total;
  std::vector<float> params(P), input(size_t(N) * 28 * 28);
  m.init_params(params.data(), "torchvision", 5);
  SplitMix rng(17);
  for (float& x : input) x = float(rng.normal());
  const std::vector<int32_t> labels = {0, 1, 2, 3, 4, 5, 9};
  const std::vector<uint64_t> keys = {1, 2, 3, 4, 5, 6, 7};
  auto step = [&](int threads, std::vector<float>* logits, std::vector<float>* grads) {
    omp_set_num_threads(threads);
    const float* l = m.forward(params.data(), input.data(), N, true, keys.data());
    logits->assign(l, l + size_t(N) * 10);
    std::vector<float> dlogits(logits->size());
    softmax_xent(N, 10, logits->data(), labels.data(), 1.0f / N, dlogits.data(), nullptr);
    grads->assign(P, 0.0f);
    m.backward(params.data(), dlogits.data(), grads->data(), N, keys.data(), [](size_t) {});
  };
  const int before = omp_get_max_threads();
  std::vector<float> l1, g1, l3, g3;
  step(1, &l1, &g1);
  step(3, &l3, &g3);
  omp_set_num_threads(before);
  auto rel = [](const float* a, const float* b, size_t n) {
    double d = 0, r = 0;
    for (size_t i = 0; i < n; ++i) d += double(a[i] - b[i]) * (a[i] - b[i]), r += double(b[i]) * b[i];
    return std::sqrt(d / std::max(r, 1e-300));
  };
  EXPECT_LT(rel(l3.data(), l1.data(), l1.size()), 1e-5) << "logits";
  for (const ParamSpec& t : m.layout().tensors)
    EXPECT_LT(rel(g3.data() + t.offset, g1.data() + t.offset, t.count), 1e-5) << t.name;
}

// A few hundred real images, several passes: the default model (squeezenet1.0 with the small
// stem) must fit them measurably. Dropout is off and the learning rate low so that the test
// measures the engine, not SqueezeNet's slow, seed-dependent start (docs/RESULTS.md).
TEST(Train, ShortRunOnFashionMnistLowersTheLoss) {
  if (!have_fashion()) GTEST_SKIP() << "Fashion-MNIST not installed at " << kFashion;
  TrainConfig c;
  c.model.dropout = 0.0;
  c.epochs = 6;
  c.batch = 32;
  c.schedule.lr = 0.005;
  c.train_limit = 320;
  c.test_limit = 300;
  RunOptions o;
  o.quiet = true;
  auto comm = make_local_communicator();
  TrainResult r = train(c, o, *comm);
  ASSERT_EQ(r.epochs.size(), 6u);
  for (const EpochMetrics& e : r.epochs)
    std::printf("epoch %lld: train loss %.4f acc %.3f, test loss %.4f acc %.3f\n",
                (long long)e.epoch, e.train_loss, e.train_acc, e.test_loss, e.test_acc);
  EXPECT_LT(r.epochs.back().train_loss, 0.8 * r.epochs.front().train_loss);
  EXPECT_LT(r.epochs.back().test_loss, 0.9 * std::log(10.0));  // clearly better than chance
  EXPECT_GT(r.epochs.back().test_acc, 0.3);
}

// --clip-grad-norm: with momentum and weight decay off, the first step moves the parameters by
// exactly lr * min(|g|, clip) in L2 norm, along the gradient.
TEST(Train, GradientClippingBoundsTheStep) {
  if (!have_fashion()) GTEST_SKIP() << "Fashion-MNIST not installed at " << kFashion;
  auto comm = make_local_communicator();
  auto step_norm = [&](double clip) {
    TrainConfig c = small_config();
    c.momentum = 0;
    c.weight_decay = 0;
    c.schedule.warmup = 0;
    c.schedule.kind = "constant";
    c.schedule.lr = 0.1;
    c.clip_grad_norm = clip;
    c.init = "torchvision";  // data-independent, so the test can rebuild the start
    RunOptions o;
    o.quiet = true;
    o.max_steps = 1;
    TrainResult r = train(c, o, *comm);
    Model m(r.model, 1);
    std::vector<float> p0(m.layout().total);
    m.init_params(p0.data(), c.init, c.seed);
    double d2 = 0;
    for (size_t i = 0; i < p0.size(); ++i) d2 += double(r.params[i] - p0[i]) * (r.params[i] - p0[i]);
    return std::sqrt(d2);
  };
  const double free_step = step_norm(0);  // lr * |g|
  ASSERT_GT(free_step, 0.1 * 0.05);       // |g| > 0.05, so a clip of 0.01 is active
  EXPECT_NEAR(step_norm(0.01), 0.1 * 0.01, 0.1 * 0.01 * 1e-3);
  EXPECT_NEAR(step_norm(1e6), free_step, free_step * 1e-6);  // a loose bound changes nothing
  TrainConfig bad = small_config();
  bad.clip_grad_norm = -1;
  EXPECT_THROW(bad.validate(), Error);
}

TEST(Train, ResumeIsBitIdentical) {
  if (!have_fashion()) GTEST_SKIP() << "Fashion-MNIST not installed at " << kFashion;
  auto comm = make_local_communicator();
  RunOptions straight;
  straight.quiet = true;
  TrainResult a = train(small_config(), straight, *comm);

  RunOptions first;
  first.quiet = true;
  first.out_dir = temp_dir("resume");
  first.max_steps = 10;  // mid second epoch
  TrainResult b1 = train(small_config(), first, *comm);
  EXPECT_EQ(b1.steps, 10);
  RunOptions second;
  second.quiet = true;
  second.resume = first.out_dir + "/checkpoint.safetensors";
  TrainConfig ignored = small_config();
  ignored.schedule.lr = 0.5;  // settings come from the checkpoint, not from here
  TrainResult b2 = train(ignored, second, *comm);
  ASSERT_EQ(a.steps, b2.steps);
  ASSERT_EQ(a.params.size(), b2.params.size());
  size_t differing = 0;
  for (size_t i = 0; i < a.params.size(); ++i)
    differing += std::memcmp(&a.params[i], &b2.params[i], sizeof(float)) != 0;
  EXPECT_EQ(differing, 0u) << "parameters differ after resume";
  ASSERT_FALSE(b2.epochs.empty());
  EXPECT_EQ(a.epochs.back().train_loss, b2.epochs.back().train_loss);
  EXPECT_EQ(a.epochs.back().test_acc, b2.epochs.back().test_acc);
}

TEST(Train, ExportedWeightsEvaluateTheSame) {
  if (!have_fashion()) GTEST_SKIP() << "Fashion-MNIST not installed at " << kFashion;
  auto comm = make_local_communicator();
  TrainConfig c = small_config();
  c.epochs = 1;
  c.test_limit = 0;
  RunOptions o;
  o.quiet = true;
  o.out_dir = temp_dir("export");
  TrainResult r = train(c, o, *comm);
  std::string err;
  std::string out_file = o.out_dir + "/eval.txt";
  std::string cmd = squeeze_binary() + " eval --weights " + o.out_dir +
                    "/weights.safetensors > " + out_file;
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  std::ifstream f(out_file);
  std::string text((std::istreambuf_iterator<char>(f)), {});
  char buf[32];
  std::snprintf(buf, sizeof buf, "accuracy %.4f", r.epochs.back().test_acc);
  EXPECT_NE(text.find(buf), std::string::npos) << text << " expected " << buf;
}

// --device cuda where no GPU can run is refused before the data is read and the model
// initialised (LSUV took 7 to 35 s on the CPU before the GPU was first looked at). Where a GPU is
// present the run gets past that check to the missing data directory.
TEST(Cli, NoUsableGpuIsRefusedBeforeTheData) {
  DIR* gpus = ::opendir("/proc/driver/nvidia/gpus");
  bool gpu = false;
  if (gpus) {
    while (const dirent* e = ::readdir(gpus)) gpu = gpu || e->d_name[0] != '.';
    ::closedir(gpus);
  }
  std::string err;
  EXPECT_EQ(run_cli("train --device cuda --data-dir /nonexistent/squeeze-gpu-order", &err), 1);
  if (gpu) {
    EXPECT_TRUE(contains(err, "/nonexistent/squeeze-gpu-order")) << err;
  } else {
    EXPECT_TRUE(contains(err, "squeeze: error: --device cuda: ")) << err;
    EXPECT_FALSE(contains(err, "/nonexistent/squeeze-gpu-order")) << err;
  }
}

TEST(Cli, BadFlagsAreRefusedBeforeWork) {
  std::string err;
  EXPECT_NE(run_cli("train --sr 1.5", &err), 0);
  EXPECT_NE(err.find("--sr"), std::string::npos) << err;
  EXPECT_NE(run_cli("train --pct-3x3 -0.5", &err), 0);
  EXPECT_NE(err.find("--pct-3x3"), std::string::npos) << err;
  EXPECT_NE(run_cli("train --batch-size -4", &err), 0);
  EXPECT_NE(err.find("--batch-size"), std::string::npos) << err;
  EXPECT_NE(run_cli("train --model squeezenet3", &err), 0);
  EXPECT_NE(err.find("squeezenet3"), std::string::npos) << err;
  EXPECT_NE(run_cli("train --epochs 0", &err), 0);
  EXPECT_NE(err.find("--epochs"), std::string::npos) << err;
  EXPECT_NE(run_cli("train --data-dir /nonexistent/dir", &err), 0);
  EXPECT_NE(err.find("/nonexistent/dir"), std::string::npos) << err;
  EXPECT_NE(run_cli("eval --weights /nonexistent.safetensors", &err), 0);
  EXPECT_NE(err.find("/nonexistent.safetensors"), std::string::npos) << err;
  EXPECT_NE(run_cli("info --input 3x224", &err), 0);
  EXPECT_NE(err.find("--input"), std::string::npos) << err;
}

// Every malformed flag, whether CLI11 or squeeze finds it, is one line "squeeze: error: ..." that
// names it, and exit status 1 (CLI11's own codes were 104 to 109). A training flag wrongly
// accepted runs into the absent data directory instead of a run.
TEST(Cli, MalformedFlagsAreOneLineErrorsNamingThem) {
  const std::string train = "train --data-dir /nonexistent/squeeze-test ";
  const std::string empty = ::testing::TempDir() + "squeeze_empty_" + std::to_string(::getpid()) + ".sqz";
  std::ofstream{empty};
  const std::vector<std::pair<std::string, std::string>> bad = {
      {train + "--lr abc", "--lr"},
      {train + "--epochs 2147483648", "--epochs"},
      {train + "--frobnicate 3", "--frobnicate"},
      {"frob", "'frob'"},
      {train + "--seed -1", "--seed"},
      {train + "--seed 99999999999999999999999", "--seed"},
      {train + "--weight-decay inf", "--weight-decay"},
      {train + "--max-steps -1", "--max-steps"},
      {train + "--bucket-mib nan", "--bucket-mib"},
      {"info --input 3x224x224x5", "--input"},
      {"eval --weights ''", "--weights"},
      {"eval --weights " + empty, empty + ": empty file (0 bytes)"},
      {"", "subcommand is required"},
      {"eval", "--weights is required"},
      {train + "--overlap maybe", "--overlap"},
      {train + "--stem foo", "(known: auto, imagenet, small)"},
  };
  for (const auto& [args, needle] : bad) {
    std::string err;
    EXPECT_EQ(run_cli(args, &err), 1) << args;
    EXPECT_EQ(err.rfind("squeeze: error: ", 0), 0u) << args << ": " << err;
    EXPECT_TRUE(contains(err, needle)) << args << ": " << err;
    EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << args << ": " << err;
  }
  std::remove(empty.c_str());
  std::string err;
  EXPECT_EQ(run_cli("train --help", &err), 0) << err;  // the control: help is not an error
}

// info plans no activations: a model far too large to train is still described (the table used
// to allocate its activations for one image).
TEST(Cli, InfoDescribesAModelTooLargeToAllocate) {
  std::string err;
  EXPECT_EQ(run_cli("info --input 3x4096x4096 --base-e 100000", &err), 0) << err;
  EXPECT_EQ(err, "");
}

// A model whose parameters cannot fit in memory is refused by name before anything is allocated
// (not a std::bad_alloc, nor the OOM killer after minutes of page faults).
TEST(Train, AModelTooLargeForMemoryIsRefusedBeforeAllocating) {
  const std::string data = temp_dir("tiny_huge");
  write_tiny_mnist(data, 64, 32);
  TrainConfig c = tiny_mnist_config(data);
  c.model.base_e = 100000;
  RunOptions o;
  o.quiet = true;
  auto comm = make_local_communicator();
  const std::string err = error_of([&] { train(c, o, *comm); });
  EXPECT_TRUE(contains(err, "parameters, gradients and momentum")) << err;
  EXPECT_TRUE(contains(err, "GiB")) << err;
  std::system(("rm -rf '" + data + "'").c_str());
}

// The cgroup limits that require_memory takes the smaller of with MemAvailable, read from fake
// cgroup trees: v2 (a limit on the parent, "max" on the process's own cgroup), v1 (the memory
// controller's own mount, its "unlimited" as a huge number), and nothing to read.
TEST(Memory, CgroupLimitsAreReadForVersionsOneAndTwo) {
  const std::string root = temp_dir("cgroup");
  auto put = [&](const std::string& rel, const std::string& text) {
    std::system(("mkdir -p \"$(dirname '" + root + rel + "')\"").c_str());
    std::ofstream(root + rel) << text;
  };
  // v2: /a limits to 1,000,000 with 400,000 used of which 100,000 inactive file cache; /a/b
  // has no limit of its own.
  put("/v2/a/memory.max", "1000000\n");
  put("/v2/a/memory.current", "400000\n");
  put("/v2/a/memory.stat", "anon 250000\nfile 150000\ninactive_file 100000\nactive_file 50000\n");
  put("/v2/a/b/memory.max", "max\n");
  put("/v2/a/b/memory.current", "300000\n");
  put("/self_v2", "0::/a/b\n");
  EXPECT_DOUBLE_EQ(cgroup_memory_available(root + "/self_v2", root + "/v2"), 700000.0);
  // A tighter limit below wins; usage beyond the limit is no room at all, not negative room.
  put("/v2/a/b/memory.max", "350000\n");
  EXPECT_DOUBLE_EQ(cgroup_memory_available(root + "/self_v2", root + "/v2"), 50000.0);
  put("/v2/a/b/memory.max", "200000\n");
  EXPECT_DOUBLE_EQ(cgroup_memory_available(root + "/self_v2", root + "/v2"), 0.0);

  // v1 (hybrid: the "0::/" line finds no memory.max at the v2 root); the process's group is
  // unlimited (2^63 rounded to pages), its parent is not; total_inactive_file, not
  // inactive_file, counts the hierarchy.
  put("/v1/memory/x/memory.limit_in_bytes", "2000000\n");
  put("/v1/memory/x/memory.usage_in_bytes", "600000\n");
  put("/v1/memory/x/memory.stat", "inactive_file 1\ntotal_inactive_file 100000\n");
  put("/v1/memory/x/y/memory.limit_in_bytes", "9223372036854771712\n");
  put("/v1/memory/x/y/memory.usage_in_bytes", "500000\n");
  put("/self_v1", "5:devices:/x/y\n4:memory:/x/y\n0::/\n");
  EXPECT_DOUBLE_EQ(cgroup_memory_available(root + "/self_v1", root + "/v1"), 1500000.0);
  put("/self_v1", "4:cpu,memory:/x/y\n");  // controllers mounted together
  EXPECT_DOUBLE_EQ(cgroup_memory_available(root + "/self_v1", root + "/v1"), 1500000.0);
  put("/self_v1", "4:cpu:/x/y\n");  // no memory controller: no limit
  EXPECT_EQ(cgroup_memory_available(root + "/self_v1", root + "/v1"), INFINITY);
  EXPECT_EQ(cgroup_memory_available(root + "/missing", root + "/v1"), INFINITY);
  // This machine's own cgroups: whatever they say, a number >= 0.
  EXPECT_GE(cgroup_memory_available(), 0.0);
  std::system(("rm -rf '" + root + "'").c_str());
}

// An output directory that cannot take the run's files is refused before the first step (a
// fault injected at step 0 would otherwise be the error), not at the first checkpoint, and a
// metrics file that cannot be written is an error, not silently missing lines.
TEST(Train, OutputsThatCannotBeWrittenAreRefusedBeforeTraining) {
  const std::string data = temp_dir("tiny_out"), out = temp_dir("out");
  write_tiny_mnist(data, 64, 32);
  ::mkdir(out.c_str(), 0755);
  auto comm = make_local_communicator();
  auto run_into = [&](const std::string& out_dir) {
    RunOptions o;
    o.quiet = true;
    o.out_dir = out_dir;
    o.fault.kind = FaultInjection::Kind::kThrow;  // at rank 0, step 0
    return error_of([&] { train(tiny_mnist_config(data), o, *comm); });
  };
  std::ofstream(out + "/file") << "x";
  std::string err = run_into(out + "/file");
  EXPECT_TRUE(contains(err, out + "/file: exists and is not a directory")) << err;
  ::mkdir((out + "/m").c_str(), 0755);
  ::mkdir((out + "/m/metrics.jsonl").c_str(), 0755);
  err = run_into(out + "/m");
  EXPECT_TRUE(contains(err, out + "/m/metrics.jsonl: cannot write")) << err;
  ::mkdir((out + "/c").c_str(), 0755);
  ::mkdir((out + "/c/checkpoint.safetensors").c_str(), 0755);
  err = run_into(out + "/c");
  EXPECT_TRUE(contains(err, out + "/c/checkpoint.safetensors: is a directory")) << err;
  ::mkdir((out + "/w").c_str(), 0755);
  ::mkdir((out + "/w/weights.safetensors").c_str(), 0755);
  err = run_into(out + "/w");
  EXPECT_TRUE(contains(err, out + "/w/weights.safetensors: is a directory")) << err;
  EXPECT_TRUE(contains(run_into(out + "/fine"), "injected fault at step 0"));  // the control
  std::system(("rm -rf '" + data + "' '" + out + "'").c_str());
}

namespace {
// The tiny set (64 samples) written to `data`, and a checkpoint after its first step (batch 32) in
// `out`.
void checkpoint_after_one_step(const std::string& data, const std::string& out) {
  write_tiny_mnist(data, 64, 32);
  auto comm = make_local_communicator();
  RunOptions first;
  first.quiet = true;
  first.out_dir = out;
  first.max_steps = 1;
  ASSERT_EQ(train(tiny_mnist_config(data), first, *comm).steps, 1);
}

// The error of resuming `ckpt` with its data in `data_dir` ("" if it runs to the end).
std::string resume_error(Communicator& comm, const std::string& ckpt, const std::string& data_dir) {
  RunOptions o;
  o.quiet = true;
  o.resume = ckpt;
  TrainConfig c;  // the run's settings come from the checkpoint, its data from here
  c.data_dir = data_dir;
  return error_of([&] { train(c, o, comm); });
}

// `f`'s tensors written to `path` with other metadata.
void write_with_metadata(const SafetensorsFile& f, const std::string& path,
                         const std::map<std::string, std::string>& meta) {
  std::vector<TensorRef> refs;
  for (const TensorData& t : f.tensors) refs.push_back({t.name, t.shape, t.data.data()});
  write_safetensors(path, refs, meta);
}
}  // namespace

// The checkpoint holds what the run computes, not where its data lies: --resume with --data-dir
// reads the data there (it used to fall back to the format's default directory).
TEST(Train, ResumeReadsTheDataFromTheGivenDirectory) {
  const std::string data = temp_dir("tiny_resume"), out = temp_dir("resume_dir");
  checkpoint_after_one_step(data, out);
  auto comm = make_local_communicator();
  RunOptions second;
  second.quiet = true;
  second.resume = out + "/checkpoint.safetensors";
  TrainConfig c;  // the run's settings come from the checkpoint, its data from here
  c.data_dir = data;
  TrainResult r;
  const std::string err = error_of([&] { r = train(c, second, *comm); });
  EXPECT_EQ(err, "");
  EXPECT_EQ(r.steps, 2);  // 64 samples, batch 32: the tiny set's one epoch
  std::system(("rm -rf '" + data + "' '" + out + "'").c_str());
}

// A checkpoint whose metadata was damaged by hand is refused with its path and the bad field,
// never read with a truncated or wrapped value (batch 3.7 as 3, step 1e30 as INT64_MIN).
TEST(Train, ResumeRefusesDamagedMetadataNamingTheCheckpoint) {
  const std::string data = temp_dir("tiny_damaged"), out = temp_dir("damaged");
  checkpoint_after_one_step(data, out);
  auto comm = make_local_communicator();
  const SafetensorsFile good = read_safetensors(out + "/checkpoint.safetensors");
  const nlohmann::json cfg = nlohmann::json::parse(good.metadata.at("squeeze.train_config"));
  auto resume_with = [&](const std::string& key, const std::string& value) {
    std::map<std::string, std::string> meta = good.metadata;
    meta[key] = value;
    const std::string path = out + "/damaged.safetensors";
    write_with_metadata(good, path, meta);
    return resume_error(*comm, path, data);
  };
  const std::string path = out + "/damaged.safetensors: ";
  auto with = [&](const char* key, const nlohmann::json& v) {
    nlohmann::json j = cfg;
    j[key] = v;
    return j.dump();
  };
  std::string err = resume_with("squeeze.train_config", with("batch", 3.7));
  EXPECT_TRUE(contains(err, path) && contains(err, "\"batch\"")) << err;
  err = resume_with("squeeze.train_config", with("epochs", -3));
  EXPECT_TRUE(contains(err, path) && contains(err, "--epochs")) << err;
  err = resume_with("squeeze.train_config", with("seed", -5));
  EXPECT_TRUE(contains(err, path) && contains(err, "\"seed\"")) << err;
  err = resume_with("squeeze.step", "2.5");
  EXPECT_TRUE(contains(err, path) && contains(err, "squeeze.step")) << err;
  err = resume_with("squeeze.step", "1e30");
  EXPECT_TRUE(contains(err, path) && contains(err, "squeeze.step")) << err;
  err = resume_with("squeeze.epoch_seen", "nan");
  EXPECT_TRUE(contains(err, path) && contains(err, "squeeze.epoch_seen")) << err;
  EXPECT_EQ(resume_with("squeeze.step", "1"), "");  // the control: an intact copy resumes
  std::system(("rm -rf '" + data + "' '" + out + "'").c_str());
}

// Output that cannot be written is an error: exit 0 would tell a script the table was saved.
TEST(Cli, AFailedWriteToStandardOutputIsAnError) {
  struct stat st;
  if (::stat("/dev/full", &st) != 0) GTEST_SKIP() << "no /dev/full";
  std::string err;
  EXPECT_NE(run_cli("info --model squeezenet1.0", &err, "/dev/full"), 0);
  EXPECT_TRUE(contains(err, "cannot write standard output")) << err;
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
  EXPECT_EQ(run_cli("info --model squeezenet1.0", &err), 0) << err;  // the control
}

TEST(Cli, InfoPrintsTheTable) {
  std::string out_file = ::testing::TempDir() + "squeeze_info_" + std::to_string(::getpid()) + ".txt";
  std::string err;
  ASSERT_EQ(run_cli("info --model squeezenet1.0", &err, out_file), 0) << err;
  const std::string text = slurp(out_file);
  std::remove(out_file.c_str());
  EXPECT_NE(text.find("1248424"), std::string::npos) << text;
  EXPECT_NE(text.find("818924576"), std::string::npos) << text;
  EXPECT_NE(text.find("96x109x109"), std::string::npos) << text;
}

// A run stopped after an epoch's metrics line and before that epoch's checkpoint resumes from
// the checkpoint before: the epoch runs again and is logged once, not twice, and a line torn by
// the stop is dropped.
TEST(Train, ResumeLogsEachEpochOnce) {
  const std::string data = temp_dir("tiny_epochs"), out = temp_dir("epochs");
  write_tiny_mnist(data, 64, 32);  // batch 32: 2 steps per epoch
  TrainConfig c = tiny_mnist_config(data);
  c.epochs = 3;
  auto comm = make_local_communicator();
  const std::string ckpt = out + "/checkpoint.safetensors", metrics = out + "/metrics.jsonl";
  auto run = [&](bool resume, int64_t max_steps) {
    RunOptions o;
    o.quiet = true;
    o.out_dir = out;
    o.max_steps = max_steps;
    if (resume) o.resume = ckpt;
    return error_of([&] { train(c, o, *comm); });
  };
  ASSERT_EQ(run(false, 2), "");
  copy_file(ckpt, out + "/epoch1.safetensors");
  // A last line without its newline (an editor's save): the next line must not join it.
  const std::string first = slurp(metrics);
  ASSERT_EQ(first.back(), '\n');
  std::ofstream(metrics, std::ios::trunc) << first.substr(0, first.size() - 1);
  ASSERT_EQ(run(true, 4), "");
  EXPECT_EQ(metric_steps(metrics), (std::vector<int64_t>{2, 4}));
  // The stop: epoch 2's line written, its checkpoint not; and half of a line after it.
  copy_file(out + "/epoch1.safetensors", ckpt);
  std::ofstream(metrics, std::ios::app) << "{\"epoch\":3,\"st";
  ASSERT_EQ(::chmod(metrics.c_str(), 0640), 0);
  ASSERT_EQ(run(true, 0), "");
  EXPECT_EQ(metric_steps(metrics), (std::vector<int64_t>{2, 4, 6}));
  struct stat st;
  ASSERT_EQ(::stat(metrics.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u) << "the rewritten file keeps its mode";
  std::system(("rm -rf '" + data + "' '" + out + "'").c_str());
}

// Another run's files in --out are not overwritten unless asked (a fresh run truncated their
// metrics at start-up and replaced their checkpoint at its first epoch's end).
TEST(Train, AFreshRunRefusesAnotherRunsOutput) {
  const std::string data = temp_dir("tiny_taken"), out = temp_dir("taken"), other = temp_dir("taken_other");
  checkpoint_after_one_step(data, out);
  checkpoint_after_one_step(data, other);
  const std::string ckpt = out + "/checkpoint.safetensors";
  const std::string before = slurp(ckpt);
  auto comm = make_local_communicator();
  auto run = [&](const std::string& resume, bool overwrite) {
    RunOptions o;
    o.quiet = true;
    o.out_dir = out;
    o.resume = resume;
    o.overwrite = overwrite;
    return error_of([&] { train(tiny_mnist_config(data), o, *comm); });
  };
  std::string err = run("", false);
  EXPECT_TRUE(contains(err, "--out " + out + " holds another run") && contains(err, "--overwrite")) << err;
  // Another directory's checkpoint resumed into this one would replace this one's.
  err = run(other + "/checkpoint.safetensors", false);
  EXPECT_TRUE(contains(err, "--out " + out + " holds another run")) << err;
  EXPECT_EQ(slurp(ckpt), before);
  EXPECT_EQ(run(ckpt, false), "");  // the controls: the run's own checkpoint, and --overwrite
  EXPECT_EQ(run("", true), "");
  EXPECT_NE(slurp(ckpt), before);
  std::system(("rm -rf '" + data + "' '" + out + "' '" + other + "'").c_str());
}

// --resume on another training set would go on with another schedule and another normalization.
TEST(Train, ResumeRefusesOtherTrainingData) {
  const std::string data = temp_dir("tiny_own"), out = temp_dir("own"), changed = temp_dir("tiny_changed");
  checkpoint_after_one_step(data, out);
  write_tiny_mnist(changed, 64, 32);  // the same size, one image changed
  {
    std::fstream f(changed + "/train-images-idx3-ubyte", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(16 + 5 * 784);
    f << std::string(784, '\xff');
  }
  auto comm = make_local_communicator();
  auto resume = [&](const std::string& ckpt, const std::string& dir) { return resume_error(*comm, ckpt, dir); };
  const std::string ckpt = out + "/checkpoint.safetensors";
  std::string err = resume(ckpt, changed);
  EXPECT_TRUE(contains(err, ckpt + ": trained on another training set") && contains(err, changed)) << err;
  // A checkpoint from before the fingerprint is told apart by its normalization.
  const SafetensorsFile f = read_safetensors(ckpt);
  std::map<std::string, std::string> meta = f.metadata;
  ASSERT_EQ(meta.erase("squeeze.train_data"), 1u);
  const std::string old = out + "/old.safetensors";
  write_with_metadata(f, old, meta);
  err = resume(old, changed);
  EXPECT_TRUE(contains(err, old + ": trained on another training set") && contains(err, "normalization")) << err;
  EXPECT_EQ(resume(old, data), "");  // the controls: the data it was trained on
  EXPECT_EQ(resume(ckpt, data), "");
  std::system(("rm -rf '" + data + "' '" + out + "' '" + changed + "'").c_str());
}

// The test samples the epochs are evaluated on (those within --test-limit) are fingerprinted
// too: a resume that would log accuracies over another test set in the same metrics.jsonl is
// refused; a change past the limit, which no epoch evaluates, is not.
TEST(Train, ResumeRefusesOtherTestData) {
  const std::string data = temp_dir("tiny_test_own"), out = temp_dir("test_own");
  const std::string inside = temp_dir("tiny_test_inside"), past = temp_dir("tiny_test_past");
  write_tiny_mnist(data, 64, 32);
  auto comm = make_local_communicator();
  TrainConfig c = tiny_mnist_config(data);
  c.test_limit = 16;
  RunOptions first;
  first.quiet = true;
  first.out_dir = out;
  first.max_steps = 1;
  ASSERT_EQ(train(c, first, *comm).steps, 1);
  for (const auto& [dir, image] : {std::pair<std::string, int>{inside, 5}, {past, 20}}) {
    write_tiny_mnist(dir, 64, 32);
    std::fstream f(dir + "/t10k-images-idx3-ubyte", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(16 + image * 784);
    f << std::string(784, '\xff');
  }
  const std::string ckpt = out + "/checkpoint.safetensors";
  std::string err = resume_error(*comm, ckpt, inside);
  EXPECT_TRUE(contains(err, ckpt + ": evaluated on another test set (16 samples") &&
              contains(err, inside) && contains(err, "mix two test sets"))
      << err;
  EXPECT_EQ(resume_error(*comm, ckpt, past), "");  // image 20 is past --test-limit 16
  // A checkpoint from before the test fingerprint resumes on any test set.
  const SafetensorsFile f = read_safetensors(ckpt);
  std::map<std::string, std::string> meta = f.metadata;
  ASSERT_EQ(meta.erase("squeeze.test_data"), 1u);
  const std::string old = out + "/old.safetensors";
  write_with_metadata(f, old, meta);
  EXPECT_EQ(resume_error(*comm, old, inside), "");
  EXPECT_EQ(resume_error(*comm, ckpt, data), "");  // the control: the data it was trained on
  std::system(("rm -rf '" + data + "' '" + out + "' '" + inside + "' '" + past + "'").c_str());
}

// eval and info of a file that names its model say which model flags they ignore, as --resume
// does (they were silently dropped: `eval --model squeezenet1.1` evaluated a squeezenet1.0).
TEST(Cli, EvalAndInfoNameTheModelFlagsAFileOverrides) {
  const std::string data = temp_dir("tiny_ignored"), out = temp_dir("ignored");
  checkpoint_after_one_step(data, out);
  const std::string weights = out + "/weights.safetensors", text_file = out + "/stdout.txt";
  auto stdout_of = [&](const std::string& args) {
    std::string err;
    EXPECT_EQ(run_cli(args, &err, text_file), 0) << args << ": " << err;
    return slurp(text_file);
  };
  const std::string eval = "eval --dataset mnist --data-dir " + data + " --weights " + weights;
  std::string text = stdout_of(eval + " --model squeezenet1.1 --sr 0.5");
  EXPECT_TRUE(contains(text, "note: " + weights + " holds its model's configuration; ignoring --model, --sr\n"))
      << text;
  text = stdout_of("info --weights " + weights + " --bypass simple --input 3x64x64 --classes 7");
  EXPECT_TRUE(contains(text, "ignoring --bypass, --input, --classes\n")) << text;
  EXPECT_TRUE(contains(text, "bypass none")) << text;  // the file's model, not the flags'
  for (const std::string& plain : {eval, "info --weights " + weights})  // the controls
    EXPECT_FALSE(contains(stdout_of(plain), "note:")) << plain;
  std::system(("rm -rf '" + data + "' '" + out + "'").c_str());
}

// --resume given a file that is not a checkpoint says what the file is.
TEST(Train, ResumeNamesTheKindOfAFileThatIsNotACheckpoint) {
  const std::string data = temp_dir("tiny_kinds"), out = temp_dir("kinds");
  checkpoint_after_one_step(data, out);
  const std::string weights = out + "/weights.safetensors", sqz = out + "/model.sqz";
  std::string err;
  ASSERT_EQ(run_cli("compress --weights " + weights + " --out " + sqz + " --prune none", &err), 0) << err;
  auto comm = make_local_communicator();
  for (const auto& [file, kind] : {std::pair<std::string, std::string>{weights, ": a weights file"},
                                   {sqz, ": a compressed model (.sqz)"}}) {
    RunOptions o;
    o.quiet = true;
    o.resume = file;
    err = error_of([&] { train(tiny_mnist_config(data), o, *comm); });
    EXPECT_TRUE(contains(err, file + kind)) << err;
  }
  std::system(("rm -rf '" + data + "' '" + out + "'").c_str());
}

// Given statistics (compress's retraining: the weights' own) replace the training set's: the
// inputs are normalized with them, and the files record them.
TEST(Train, GivenNormalizationIsTheOneTheRunUses) {
  const std::string data = temp_dir("tiny_norm"), out = temp_dir("norm");
  write_tiny_mnist(data, 64, 32);
  auto comm = make_local_communicator();
  const Normalization given{{0.25f}, {0.5f}};
  auto one_step = [&](const Normalization* n) {
    RunOptions o;
    o.quiet = true;
    o.out_dir = out;
    o.overwrite = true;
    o.max_steps = 1;
    o.normalization = n;
    return train(tiny_mnist_config(data), o, *comm).params;
  };
  const std::vector<float> own = one_step(nullptr), with_given = one_step(&given);
  EXPECT_NE(own, with_given);
  const nlohmann::json j =
      nlohmann::json::parse(read_safetensors(out + "/weights.safetensors").metadata.at("squeeze.normalization"));
  EXPECT_EQ(j.at("mean"), nlohmann::json::array({0.25}));
  EXPECT_EQ(j.at("std"), nlohmann::json::array({0.5}));
  std::system(("rm -rf '" + data + "' '" + out + "'").c_str());
}

// eval reads the training set only for what the weights do not say: weights from train carry
// their model and normalization, so the test files alone serve.
TEST(Cli, EvalOfWeightsCarryingTheirNormalizationNeedsNoTrainingSet) {
  const std::string data = temp_dir("tiny_evalonly"), out = temp_dir("evalonly"), tests = temp_dir("tests_only");
  checkpoint_after_one_step(data, out);
  ::mkdir(tests.c_str(), 0755);
  for (const char* f : {"/t10k-images-idx3-ubyte", "/t10k-labels-idx1-ubyte"}) copy_file(data + f, tests + f);
  const std::string text = out + "/eval.txt";
  std::string err;
  ASSERT_EQ(run_cli("eval --weights " + out + "/weights.safetensors --dataset mnist --data-dir " + tests, &err, text), 0)
      << err;
  EXPECT_TRUE(contains(slurp(text), "32 samples")) << slurp(text);
  // Without its normalization the training set is needed, and the error says why.
  const SafetensorsFile w = read_safetensors(out + "/weights.safetensors");
  std::map<std::string, std::string> meta = w.metadata;
  ASSERT_EQ(meta.erase("squeeze.normalization"), 1u);
  const std::string bare = out + "/bare.safetensors";
  write_with_metadata(w, bare, meta);
  EXPECT_NE(run_cli("eval --weights " + bare + " --dataset mnist --data-dir " + tests, &err), 0);
  EXPECT_TRUE(contains(err, bare + " carries no normalization, so the training set is read for it: ") &&
              contains(err, tests + "/train-images-idx3-ubyte")) << err;
  EXPECT_EQ(run_cli("eval --weights " + bare + " --dataset mnist --data-dir " + data, &err), 0) << err;
  std::system(("rm -rf '" + data + "' '" + out + "' '" + tests + "'").c_str());
}

// Small slips of the command line: --threads after the subcommand is accepted (it was refused
// as unexpected); --inject-fault on a rank the job lacks is refused (it trained, faultless); the
// start-up line counts the test samples evaluated, and resuming a complete run says so.
TEST(Cli, ThreadsFaultRankTestLimitAndACompleteRun) {
  std::string err;
  EXPECT_EQ(run_cli("info --model squeezenet1.1 --threads 1", &err), 0) << err;
  EXPECT_EQ(run_cli("--threads 1 info --model squeezenet1.1", &err), 0) << err;
  const std::string data = temp_dir("tiny_slips"), out = temp_dir("slips");
  write_tiny_mnist(data, 64, 32);
  const std::string train = "train --dataset mnist --data-dir " + data + " --base-e 16 --incr-e 16 --init torchvision "
                            "--epochs 1 --batch-size 32 --out " + out;
  EXPECT_NE(run_cli(train + " --inject-fault 3:0:throw", &err), 0);
  EXPECT_TRUE(contains(err, "--inject-fault: rank 3 does not exist (world size 1)")) << err;
  const std::string text = temp_dir("slips.txt");
  ASSERT_EQ(run_cli(train + " --overwrite --test-limit 10", &err, text), 0) << err;
  EXPECT_TRUE(contains(slurp(text), "64 train, 10 test from")) << slurp(text);
  ASSERT_EQ(run_cli(train + " --resume " + out + "/checkpoint.safetensors", &err, text), 0) << err;
  EXPECT_TRUE(contains(slurp(text), "its run is complete (step 2 of 2): nothing left to train")) << slurp(text);
  std::system(("rm -rf '" + data + "' '" + out + "' '" + text + "'").c_str());
}

#ifdef SQUEEZE_MPIEXEC
namespace {
// mpirun for n ranks of one thread each (as root, more ranks than cores: CI's machine).
std::string mpirun_command(int n) {
  return "env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 "
         "OMP_NUM_THREADS=1 " + std::string(SQUEEZE_MPIEXEC) + " -n " + std::to_string(n) + " ";
}
}  // namespace
#endif

// compress retrains on any world size dividing its --batch-size (it used to hand train() a batch
// of 128 whatever the flags, and failed after pruning on 3 ranks); one that does not divide it is
// refused up front, naming the flag.
TEST(Cli, CompressRetrainsOnThreeRanks) {
#ifndef SQUEEZE_MPIEXEC
  GTEST_SKIP() << "built without MPI";
#else
  const std::string data = temp_dir("tiny_np3"), out = temp_dir("np3");
  checkpoint_after_one_step(data, out);
  const std::string mpirun = "timeout -s KILL 120 " + mpirun_command(3);
  const std::string compress = "compress --weights " + out + "/weights.safetensors --out " + out +
                               "/m.sqz --prune conv10=0.5 --dataset mnist --data-dir " + data + " --retrain-epochs 1";
  auto run = [&](const std::string& extra, std::string* err) {
    const std::string errfile = out + "/err.txt";
    const int st = std::system((mpirun + squeeze_binary() + " " + compress + extra + " > /dev/null 2> " + errfile).c_str());
    *err = slurp(errfile);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  };
  std::string err;
  EXPECT_NE(run("", &err), 0);
  EXPECT_TRUE(contains(err, "--batch-size 128 is not divisible by the world size 3")) << err;
  struct stat st;
  EXPECT_NE(::stat((out + "/m.sqz").c_str(), &st), 0);
  EXPECT_EQ(run(" --batch-size 30", &err), 0) << err;
  EXPECT_EQ(::stat((out + "/m.sqz").c_str(), &st), 0);
  std::system(("rm -rf '" + data + "' '" + out + "'").c_str());
#endif
}

namespace {
// Raises the stop flag during step `at` (1-based, after its update), as a signal would; the
// trainer reads the flag before each step's allreduce, so it stops after step at + 1.
class StopAt : public ParamConstraint {
 public:
  StopAt(volatile std::sig_atomic_t* flag, int64_t at) : flag_(flag), at_(at) {}
  void on_gradient(float*) override {}
  void after_update(float*, float*, const float*, double) override {
    if (++steps_ == at_) *flag_ = SIGTERM;
  }

 private:
  volatile std::sig_atomic_t* flag_;
  int64_t at_, steps_ = 0;
};
}  // namespace

// A stop request ends training after the step in progress, mid-epoch, with a checkpoint of that
// step; the resumed run ends where an uninterrupted one does, bit for bit.
TEST(Train, AStopRequestEndsAfterTheStepWithACheckpoint) {
  const std::string data = temp_dir("tiny_stop"), out = temp_dir("stop");
  write_tiny_mnist(data, 64, 32);
  TrainConfig c = tiny_mnist_config(data);
  c.epochs = 3;  // 6 steps
  auto comm = make_local_communicator();
  RunOptions straight;
  straight.quiet = true;
  const TrainResult ref = train(c, straight, *comm);
  volatile std::sig_atomic_t flag = 0;
  StopAt stop(&flag, 2);
  RunOptions o = straight;
  o.out_dir = out;
  o.stop_signal = &flag;
  o.constraint = &stop;  // changes nothing but the flag
  const TrainResult r = train(c, o, *comm);
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.steps, 3);
  EXPECT_EQ(read_safetensors(out + "/checkpoint.safetensors").metadata.at("squeeze.step"), "3");
  EXPECT_EQ(metric_steps(out + "/metrics.jsonl"), (std::vector<int64_t>{2}));
  RunOptions again = straight;
  again.out_dir = out;
  again.resume = out + "/checkpoint.safetensors";
  const TrainResult resumed = train(c, again, *comm);
  EXPECT_FALSE(resumed.stopped);
  EXPECT_EQ(resumed.steps, 6);
  EXPECT_EQ(resumed.params, ref.params);
  EXPECT_EQ(metric_steps(out + "/metrics.jsonl"), (std::vector<int64_t>{2, 4, 6}));
  std::system(("rm -rf '" + data + "' '" + out + "'").c_str());
}

namespace {
// Starts `cmd` through sh, exec'd: the pid returned is the command's own.
pid_t spawn(const std::string& cmd) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  return pid;
}

// Waits up to `seconds` for `path` to exist.
bool wait_for_file(const std::string& path, double seconds) {
  const auto t0 = std::chrono::steady_clock::now();
  struct stat st;
  while (::stat(path.c_str(), &st) != 0) {
    if (std::chrono::steady_clock::now() - t0 > std::chrono::duration<double>(seconds)) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

// The exit status of `pid` (128 + the signal that killed it), or -1 if it runs past `seconds`
// (then killed).
int wait_exit(pid_t pid, double seconds) {
  const auto t0 = std::chrono::steady_clock::now();
  int st = 0;
  while (::waitpid(pid, &st, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() - t0 > std::chrono::duration<double>(seconds)) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &st, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

// The step a checkpoint holds.
int64_t checkpoint_step(const std::string& path) {
  return std::stoll(read_safetensors(path).metadata.at("squeeze.step"));
}
}  // namespace

// SIGTERM (a batch scheduler's, or kill) stops squeeze train at the next step boundary: exit
// status 143, one line on stderr naming the checkpoint, and the checkpoint resumes. Without the
// handler the process died at once, the epoch's steps lost. SQUEEZE_TEST_TRAIN_DEVICE=cuda runs
// it on the GPU (scripts/gpu_check.sh).
TEST(Cli, SigtermStopsTrainingWithACheckpoint) {
  const std::string data = temp_dir("tiny_sigterm"), out = temp_dir("sigterm");
  write_tiny_mnist(data, 64, 32);
  const char* device = std::getenv("SQUEEZE_TEST_TRAIN_DEVICE");
  const std::string train = "train --dataset mnist --data-dir " + data +
                            " --base-e 16 --incr-e 16 --init torchvision --batch-size 32 --out " + out +
                            (device ? std::string(" --device ") + device : "");
  const std::string err = out + ".err";
  const pid_t pid = spawn(squeeze_binary() + " " + train + " --epochs 100000 > /dev/null 2> " + err);
  const std::string ckpt = out + "/checkpoint.safetensors";
  ASSERT_TRUE(wait_for_file(ckpt, 60)) << slurp(err);  // past the first epoch
  ::kill(pid, SIGTERM);
  EXPECT_EQ(wait_exit(pid, 60), 128 + SIGTERM) << slurp(err);
  const std::string msg = slurp(err);
  EXPECT_TRUE(contains(msg, "squeeze: stopped by SIGTERM after step ") &&
              contains(msg, "continue with: squeeze train --resume " + ckpt + " --data-dir " + data)) << msg;
  EXPECT_EQ(std::count(msg.begin(), msg.end(), '\n'), 1) << msg;
  const int64_t step = checkpoint_step(ckpt);
  EXPECT_GT(step, 0);
  std::string e;
  EXPECT_EQ(run_cli(train + " --resume " + ckpt + " --max-steps " + std::to_string(step + 1), &e), 0) << e;
  EXPECT_EQ(checkpoint_step(ckpt), step + 1);
  std::system(("rm -rf '" + data + "' '" + out + "' '" + err + "'").c_str());
}

// Under mpirun, SIGUSR1 (which mpirun forwards to every rank; SIGTERM it turns into killing them)
// stops every rank after the same step, with rank 0's checkpoint; so does a signal that reaches
// one rank only (the other ranks learn it from the step's allreduce), and the job's exit status
// and rank 0's line name that rank's signal.
TEST(Cli, SigusrOneStopsEveryRankWithACheckpoint) {
#ifndef SQUEEZE_MPIEXEC
  GTEST_SKIP() << "built without MPI";
#else
  const std::string data = temp_dir("tiny_sigusr1");
  write_tiny_mnist(data, 64, 32);
  for (const bool one_rank : {false, true}) {
    SCOPED_TRACE(one_rank ? "to one rank" : "to mpirun");
    const std::string out = temp_dir(one_rank ? "sigusr1_rank" : "sigusr1"), err = out + ".err";
    const pid_t pid = spawn(mpirun_command(2) + squeeze_binary() +
        " train --dataset mnist --data-dir " + data + " --base-e 16 --incr-e 16 --init torchvision "
        "--batch-size 32 --epochs 100000 --out " + out + " > /dev/null 2> " + err);
    const std::string ckpt = out + "/checkpoint.safetensors";
    ASSERT_TRUE(wait_for_file(ckpt, 60)) << slurp(err);
    pid_t target = pid;
    if (one_rank) {  // the last rank mpirun started
      FILE* p = ::popen(("pgrep -P " + std::to_string(pid) + " | tail -1").c_str(), "r");
      ASSERT_NE(p, nullptr);
      long child = 0;
      EXPECT_EQ(std::fscanf(p, "%ld", &child), 1);
      ::pclose(p);
      ASSERT_GT(child, 0);
      target = pid_t(child);
    }
    ::kill(target, SIGUSR1);
    EXPECT_EQ(wait_exit(pid, 60), 128 + SIGUSR1) << slurp(err);
    const std::string msg = slurp(err);
    const std::string said = "squeeze: stopped by SIGUSR1 after step ";
    const size_t at = msg.find(said);
    ASSERT_NE(at, std::string::npos) << msg;
    const int64_t step = std::stoll(msg.substr(at + said.size()));
    EXPECT_GT(step, 0);
    EXPECT_EQ(checkpoint_step(ckpt), step);  // the step every rank stopped after
    std::system(("rm -rf '" + out + "' '" + err + "'").c_str());
  }
  std::system(("rm -rf '" + data + "'").c_str());
#endif
}

// --resume without --out continues in the checkpoint's directory (the run's metrics there, not a
// second half in runs/squeeze); flags that the checkpoint's settings override are named as
// ignored; --max-steps not past the checkpoint says so; a run stopped mid-epoch by --max-steps
// says which step its last test accuracy is from (or that there is none yet), and each prints
// the command that continues it.
TEST(Cli, ResumeContinuesInTheCheckpointsDirectory) {
  const std::string data = temp_dir("tiny_cont"), out = temp_dir("cont"), text = temp_dir("cont.txt");
  write_tiny_mnist(data, 64, 32);
  const std::string flags = " --dataset mnist --data-dir " + data +
                            " --base-e 16 --incr-e 16 --init torchvision --batch-size 32 --epochs 3";
  const std::string ckpt = out + "/checkpoint.safetensors";
  const std::string next = "continue with: squeeze train --resume " + ckpt + " --data-dir " + data + "\n";
  std::string err;
  ASSERT_EQ(run_cli("train" + flags + " --max-steps 1 --out " + out + " --overwrite", &err, text), 0) << err;
  EXPECT_TRUE(contains(slurp(text), "stopped at step 1 (--max-steps), before an epoch's end: no test accuracy yet\n" + next))
      << slurp(text);
  ASSERT_EQ(run_cli("train" + flags + " --max-steps 3 --overwrite --out " + out + "/", &err, text), 0) << err;
  EXPECT_TRUE(contains(slurp(text), "stopped at step 3; test accuracy ")) << slurp(text);
  EXPECT_TRUE(contains(slurp(text), " at step 2 (epoch 1's end)\n" + next)) << slurp(text);
  ASSERT_EQ(run_cli("train --resume " + ckpt + " --data-dir " + data + " --max-steps 2", &err, text), 0) << err;
  EXPECT_TRUE(contains(slurp(text), "--max-steps 2 is not past the checkpoint's step: nothing to train")) << slurp(text);
  EXPECT_FALSE(contains(slurp(text), "continue with")) << slurp(text);  // it said why nothing ran
  ASSERT_EQ(run_cli("train --resume " + ckpt + " --data-dir " + data + " --epochs 7 --lr 0.5", &err, text), 0) << err;
  EXPECT_TRUE(contains(slurp(text), "ignoring --epochs, --lr")) << slurp(text);
  EXPECT_EQ(metric_steps(out + "/metrics.jsonl"), (std::vector<int64_t>{2, 4, 6}));
  std::system(("rm -rf '" + data + "' '" + out + "' '" + text + "'").c_str());
}
