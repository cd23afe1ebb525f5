// squeeze: the command line. `squeeze train` trains (one process, or one rank of
// `mpirun -np N squeeze train`), `squeeze eval` evaluates weights on a test set, `squeeze info`
// prints a model's layer table, `squeeze compress` applies Deep Compression to trained weights. Library code throws sq::Error; this file turns it into one line
// on stderr and a non-zero exit of the whole job (launch/job.h).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <csignal>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/checkpoint.h"
#include "core/error.h"
#include "core/model.h"
#include "core/safetensors.h"
#include "core/trainer.h"
#ifdef SQUEEZE_HAVE_CUDA
#include "core/cuda_model.h"
#include "kernels/cuda/cuda_ops.h"
#endif
#include "comm/nccl.h"
#include "launch/compress.h"
#include "launch/job.h"
#include "launch/threads.h"

namespace {

using namespace sq;

// A stop request: SIGINT, SIGTERM or SIGUSR1 (the one mpirun forwards to every rank; on SIGINT
// and SIGTERM it kills the ranks itself) ends training at the next step boundary with a
// checkpoint. A second one ends the process at once.
volatile std::sig_atomic_t g_stop_signal = 0;
constexpr int kStopSignals[] = {SIGINT, SIGTERM, SIGUSR1};

extern "C" void request_stop(int sig) {
  if (g_stop_signal != 0) {
    sq::abandon_atomic_write();  // a checkpoint being written: its temporary goes with the process
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  g_stop_signal = sig;
}

// The command that continues a run from its checkpoint, with the data directory it was given.
std::string continue_command(const std::string& checkpoint, const std::string& data_dir) {
  return "squeeze train --resume " + checkpoint + (data_dir.empty() ? "" : " --data-dir " + data_dir);
}

const char* signal_name(int sig) {
  return sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : sig == SIGUSR1 ? "SIGUSR1" : "a signal";
}

struct sigaction g_previous[std::size(kStopSignals)];
bool g_installed[std::size(kStopSignals)] = {};

// Installed first thing (MPI_Init leaves these signals alone), so that a signal while MPI and the
// data start up is a stop request too (it used to kill the ranks there).
void stop_on_signals() {
  for (size_t i = 0; i < std::size(kStopSignals); ++i) {
    const int sig = kStopSignals[i];
    struct sigaction ours;
    std::memset(&ours, 0, sizeof ours);
    ours.sa_handler = request_stop;
    sigemptyset(&ours.sa_mask);
    ours.sa_flags = SA_RESTART;
    // A signal ignored at start (a shell's background job ignores SIGINT) stays ignored.
    if (::sigaction(sig, nullptr, &g_previous[i]) == 0 && g_previous[i].sa_handler != SIG_IGN)
      g_installed[i] = ::sigaction(sig, &ours, nullptr) == 0;
  }
}

// Commands other than training end at a signal as usual: the previous actions back, and a
// signal that came meanwhile raised again.
void default_signals() {
  for (size_t i = 0; i < std::size(kStopSignals); ++i)
    if (g_installed[i]) ::sigaction(kStopSignals[i], &g_previous[i], nullptr);
  if (g_stop_signal) std::raise(g_stop_signal);
}

// Flags that shape the model, shared by train, eval and info.
struct ModelFlags {
  std::string model = "squeezenet1.0";
  std::string stem = "auto";
  std::string bypass = "none";
  int base_e = 128, incr_e = 128, freq = 2;
  double pct_3x3 = 0.5, sr = 0.125, dropout = 0.5;

  CLI::App* app_ = nullptr;

  void add(CLI::App* app) {
    app_ = app;
    app->add_option("--model", model, "squeezenet1.0 | squeezenet1.1")->capture_default_str();
    app->add_option("--stem", stem, "auto | imagenet | small (auto: small for inputs <= 64 px)")
        ->capture_default_str();
    app->add_option("--bypass", bypass, "none | simple | complex")->capture_default_str();
    app->add_option("--base-e", base_e, "metaparameter base_e")->capture_default_str();
    app->add_option("--incr-e", incr_e, "metaparameter incr_e")->capture_default_str();
    app->add_option("--pct-3x3", pct_3x3, "metaparameter pct_3x3 in [0, 1]")->capture_default_str();
    app->add_option("--freq", freq, "metaparameter freq")->capture_default_str();
    app->add_option("--sr", sr, "squeeze ratio SR in (0, 1]")->capture_default_str();
    app->add_option("--dropout", dropout, "dropout before conv10, in [0, 1)")->capture_default_str();
  }
  // The model flags given on the command line, comma-separated ("" if none), and `extra` ones.
  std::string given(std::initializer_list<const char*> extra = {}) const {
    std::vector<const char*> flags = {"--model", "--stem", "--bypass", "--base-e", "--incr-e",
                                      "--pct-3x3", "--freq", "--sr", "--dropout"};
    flags.insert(flags.end(), extra.begin(), extra.end());
    std::string names;
    for (const char* name : flags)
      if (app_->count(name) > 0) names += (names.empty() ? "" : ", ") + std::string(name);
    return names;
  }
  // A file that names its model decides it: flags that would shape another are said to be ignored.
  void note_ignored(const std::string& file, std::initializer_list<const char*> extra = {}) const {
    const std::string names = given(extra);
    if (!names.empty())
      std::printf("note: %s holds its model's configuration; ignoring %s\n", file.c_str(), names.c_str());
  }
  ModelConfig config() const {
    ModelConfig c = preset(model);
    c.bypass = parse_bypass(bypass);
    c.base_e = base_e;
    c.incr_e = incr_e;
    c.pct_3x3 = pct_3x3;
    c.freq = freq;
    c.sr = sr;
    c.dropout = dropout;
    if (stem != "auto" && stem != "imagenet" && stem != "small")
      fail("unknown --stem '", stem, "' (known: auto, imagenet, small)");
    if (stem != "auto") c.stem = parse_stem(stem);
    return c;
  }
};

// "CxHxW", three decimal integers and nothing else (sscanf would take "3x224x224x5" or wrap an
// overflowing field).
bool parse_chw(const std::string& s, int* c, int* h, int* w) {
  int* fields[3] = {c, h, w};
  const char* p = s.c_str();
  for (int i = 0; i < 3; ++i) {
    if (i > 0 && *p++ != 'x') return false;
    if (!(*p >= '0' && *p <= '9') && *p != '-') return false;
    char* end = nullptr;
    errno = 0;
    const long v = std::strtol(p, &end, 10);
    if (end == p || errno == ERANGE || v < INT_MIN || v > INT_MAX) return false;
    *fields[i] = int(v);
    p = end;
  }
  return *p == '\0';
}

// CLI11 reads "-1", and any number past 2^64 - 1, into a uint64_t as 2^64 - 1 without a word.
std::string unsigned_64(const std::string& s) {
  char* end = nullptr;
  errno = 0;
  if (!s.empty() && s[0] >= '0' && s[0] <= '9') {
    std::strtoull(s.c_str(), &end, 0);
    if (*end == '\0' && errno != ERANGE) return "";
  }
  return "must be an integer in [0, 18446744073709551615], got '" + s + "'";
}

int run_info(const ModelFlags& mf, const std::string& input, int classes, const std::string& weights) {
  ModelConfig c;
  if (!weights.empty()) {
    const LoadedWeights lw = describe_weights(weights);
    if (!lw.has_config) fail(weights, ": no squeeze.model metadata; pass --model flags instead");
    c = lw.config;
    mf.note_ignored(weights, {"--input", "--classes"});
    if (lw.compressed) {
      const CompressedModel& cm = *lw.compressed;
      const Model plan(c, 1, false);
      size_t kept = cm.exact.size(), total = plan.layout().total;
      for (const QuantizedTensor& q : cm.weights) kept += q.positions.size();
      std::printf("%s: compressed model (Deep Compression), %zu of %zu parameters kept (%.1f%%), "
                  "%d-bit codes, %d-bit relative indices\n",
                  weights.c_str(), kept, total, 100.0 * double(kept) / double(total), cm.bits,
                  cm.index_bits);
    }
  } else {
    c = mf.config();
    int ch = 0, h = 0, w = 0;
    if (!parse_chw(input, &ch, &h, &w)) fail("--input must look like 3x224x224, got '", input, "'");
    c.in_c = ch;
    c.in_h = h;
    c.in_w = w;
    c.num_classes = classes;
    if (mf.stem == "auto") c.stem = std::max(h, w) <= 64 ? Stem::kSmall : Stem::kImageNet;
  }
  const Model m(c, 1, false);  // the table needs no activations: any size of model is described
  std::fputs(model_table(m).c_str(), stdout);
  return 0;
}

int run_eval(const ModelFlags& mf, const std::string& weights, const std::string& dataset,
             const std::string& data_dir, int batch, Communicator& comm) {
  if (batch < 1) fail("--batch-size must be at least 1, got ", batch);
  const LoadedWeights lw = describe_weights(weights);
  const DataFormat fmt = parse_data_format(dataset);
  // The training set only fills in what the weights do not say (the model's shape, the inputs'
  // normalization).
  const bool need_train = !lw.has_config || !lw.has_norm;
  const std::string dir = data_dir.empty() ? default_data_dir(fmt) : data_dir;
  DataSplit data;
  try {
    data = load_dataset(fmt, dir, need_train);
  } catch (const Error& e) {
    // Where only the training files are missing, say why they are needed.
    if (!need_train) throw;
    load_dataset(fmt, dir, false);  // throws if the test files fail too: that error is the one
    fail(weights, " carries no ", lw.has_config ? "normalization" : "model configuration",
         ", so the training set is read for it: ", e.what());
  }
  ModelConfig c;
  if (lw.has_config) {
    c = lw.config;
    if (comm.rank() == 0) mf.note_ignored(weights);
  } else {
    c = mf.config();
    adapt_model_to_data(c, mf.stem, data.train);
  }
  check_model_fits(weights, c, data.test);
  const Normalization norm = lw.has_norm ? lw.norm : compute_normalization(data.train);
  Model m(c, batch);
  const std::vector<float> params = load_weights_for(lw, weights, m);
  EvalResult r = evaluate(m, params.data(), data.test, norm, batch, 0, &comm);
  if (comm.rank() == 0)
    std::printf("%s on %s: %lld samples, loss %.4f, accuracy %.4f\n", weights.c_str(),
              data.test.name.c_str(), (long long)r.samples, r.loss, r.accuracy);
  return 0;
}

// Under mpirun with --device cuda: NCCL when every rank can use it (decided together: a split
// decision would hang), and *gpu = local rank modulo the GPUs; otherwise `comm` (MPI) stays and
// gradients go through host memory, said at start-up.
void use_nccl_if_possible(const Job& job, double nccl_timeout, std::unique_ptr<Communicator>& comm,
                          int& gpu) {
#ifdef SQUEEZE_HAVE_CUDA
  std::string why;
  const int gpus = cuda::device_count(&why);
  if (gpus > 0) gpu = job.world.local_rank % gpus;
  const std::string reason = nccl_unusable_reason(job.world, gpus);
  double unusable = reason.empty() ? 0.0 : 1.0;
  comm->allreduce_sum(&unusable, 1);
  if (unusable == 0.0) {
    comm = make_nccl_communicator(job.world, gpu, nccl_timeout);
  } else if (job.root()) {
    std::printf("NCCL not used (%s; %g rank(s) cannot use it): gradients go over MPI "
                "through host memory\n",
                reason.empty() ? "other hosts" : reason.c_str(), unusable);
  }
#else
  (void)job, (void)nccl_timeout, (void)comm, (void)gpu;
#endif
}

// --device cuda --check-layers: one batch through the GPU and the CPU model, each layer's error.
int run_check_layers(TrainConfig tc, const Job& job) {
#ifndef SQUEEZE_HAVE_CUDA
  (void)tc, (void)job;
  fail("--device cuda: this squeeze was built without CUDA (CMake found no nvcc)");
#else
  cuda::use_device(job.world.local_rank);
  const std::string dir = tc.data_dir.empty() ? default_data_dir(tc.data) : tc.data_dir;
  const DataSplit data = load_dataset(tc.data, dir);
  adapt_model_to_data(tc.model, tc.stem, data.train);
  const int N = tc.batch / job.size();
  // fp32: the order of the sums only (worst 8.2e-7 on the H200, run c). TF32 and BF16: the CPU
  // rounds its convolutions' operands as the GPU does, so that the two differ by the order of their
  // sums and the roundings that order flips (check_layers_tolerance; docs/KERNELS.md).
  const OperandRounding rounding = gpu_operand_rounding();
  const double tol = check_layers_tolerance(rounding);
  const char* prec = rounding == OperandRounding::kTf32 ? "tf32" : rounding == OperandRounding::kBf16 ? "bf16" : "fp32";
  const std::vector<LayerCheck> rows = check_layers(tc.model, N, tc.seed);
  int bad = 0;
  if (job.root())
    std::printf("--check-layers: %s, batch %d, random inputs; relative error GPU (%s) vs CPU%s%s "
                "(tolerance %g)\n%-10s %14s %14s\n",
                arch_name(tc.model.arch).c_str(), N, prec,
                rounding == OperandRounding::kNone ? "" : " rounding its operands as ",
                rounding == OperandRounding::kNone ? "" : prec, tol, "layer", "forward", "param grad");
  for (const LayerCheck& r : rows) {
    bad += !r.ok;
    if (job.root())
      std::printf("%-10s %14.3e %14.3e%s\n", r.layer.c_str(), r.forward_err, r.backward_err,
                  r.ok ? "" : "   <-- FAILS");
  }
  if (bad) fail("--check-layers: ", bad, " layer(s) of ", rows.size(), " past tolerance ", tol);
  return 0;
#endif
}

}  // namespace

int main(int argc, char** argv) {
  stop_on_signals();
  Job job;
  try {
    job = start_job(&argc, &argv);
  } catch (const std::exception& e) {
    fail_job(job, e.what());
  }
  CLI::App app{"squeeze: data-parallel SqueezeNet training (CPU reference engine)"};
  app.require_subcommand(1);
  // A parse error reads like every other error: one line, naming the flag (or the word).
  app.failure_message([](const CLI::App* a, const CLI::Error& e) {
    std::string what = e.what();
    // CLI11 says only "A subcommand is required" when the first word is not a subcommand.
    if (dynamic_cast<const CLI::RequiredError*>(&e) && a->get_subcommands().empty() &&
        !a->remaining().empty())
      what = "unknown subcommand '" + a->remaining().front() + "' (known: train, eval, compress, info)";
    return "squeeze: error: " + what + " (see --help)\n";
  });
  int threads = 0;
  const char* threads_help = "CPU threads per rank (0: all cores; under mpirun, the host's cores shared by its ranks)";
  app.add_option("--threads", threads, threads_help);

  // train
  CLI::App* train_cmd = app.add_subcommand("train", "train a SqueezeNet (default: Fashion-MNIST)");
  ModelFlags train_model;
  train_model.add(train_cmd);
  TrainConfig tc;
  RunOptions ro;
  std::string dataset = "fashion-mnist";
  ro.out_dir = "runs/squeeze";
  train_cmd->add_option("--dataset", dataset, "fashion-mnist | mnist | cifar10")->capture_default_str();
  train_cmd->add_option("--data-dir", tc.data_dir, "directory of the data files (default: Debian's)");
  train_cmd->add_option("--epochs", tc.epochs, "epochs")->capture_default_str();
  train_cmd->add_option("--batch-size", tc.batch, "global batch size")->capture_default_str();
  train_cmd->add_option("--lr", tc.schedule.lr, "base learning rate")->capture_default_str();
  train_cmd->add_option("--schedule", tc.schedule.kind, "poly | cosine | step | constant")->capture_default_str();
  train_cmd->add_option("--clip-grad-norm", tc.clip_grad_norm,
                        "clip the averaged gradient to this global L2 norm (0: off)")
      ->capture_default_str();
  train_cmd->add_option("--warmup-steps", tc.schedule.warmup, "linear warm-up steps")->capture_default_str();
  train_cmd->add_option("--step-size", tc.schedule.step_size, "steps between decays (step schedule; 0: a third of the run)");
  train_cmd->add_option("--gamma", tc.schedule.gamma, "decay factor (step schedule)")->capture_default_str();
  train_cmd->add_option("--momentum", tc.momentum, "SGD momentum")->capture_default_str();
  train_cmd->add_option("--weight-decay", tc.weight_decay, "L2 weight decay")->capture_default_str();
  train_cmd->add_option("--init", tc.init, "torchvision | xavier | lsuv (data-dependent, see docs/RESULTS.md)")->capture_default_str();
  train_cmd->add_option("--seed", tc.seed, "seed of every random draw")
      ->check(unsigned_64, "", "UINT")
      ->capture_default_str();
  train_cmd->add_option("--crop-pad", tc.augment.crop_pad, "random crop with this zero padding (0: off)")->capture_default_str();
  train_cmd->add_flag("--hflip", tc.augment.hflip, "random horizontal flips");
  train_cmd->add_option("--train-limit", tc.train_limit, "train on the first N samples only (0: all)");
  train_cmd->add_option("--test-limit", tc.test_limit, "evaluate on the first N test samples (0: all)");
  train_cmd->add_option("--out", ro.out_dir,
                        "directory for metrics.jsonl, checkpoint and weights ('' : none; with --resume: "
                        "the checkpoint's directory)")
      ->capture_default_str();
  train_cmd->add_flag("--overwrite", ro.overwrite,
                      "replace another run's metrics, checkpoint and weights in --out (otherwise refused)");
  train_cmd->add_option("--resume", ro.resume, "continue from this checkpoint (its settings are used; --data-dir still says where the data is)");
  train_cmd->add_option("--max-steps", ro.max_steps, "stop after this global step, with a checkpoint (0: run to the end)");
  std::string mpi_progress = "thread", fault, device = "cpu", conv = "own", precision = "fp32";
  train_cmd->add_option("--precision", precision,
                        "fp32 | tf32 | bf16: the GPU convolutions' multiply (tensor cores for "
                        "tf32/bf16, fp32 accumulation and storage)")
      ->capture_default_str();
  train_cmd->add_option("--conv", conv,
                        "own | cudnn: the GPU's convolutions (cuDNN: the baseline, fp32)")
      ->capture_default_str();
  bool check_layers_flag = false;
  double nccl_timeout = 300;
  train_cmd->add_option("--nccl-timeout", nccl_timeout,
                        "seconds a GPU allreduce may wait before the job is aborted")
      ->capture_default_str();
  train_cmd->add_option("--device", device, "cpu | cuda (one GPU per rank, by local rank)")
      ->capture_default_str();
  train_cmd->add_flag("--check-layers", check_layers_flag,
                      "with --device cuda: run one batch on the GPU and on the CPU and print each "
                      "layer's forward and backward relative error; fail past 1e-4");
  train_cmd->add_option("--bucket-mib", ro.bucket_mib,
                        "gradient bucket size for the allreduce (0: one bucket)")
      ->capture_default_str();
  train_cmd->add_option("--overlap", ro.overlap,
                        "start each bucket's allreduce during backward (false: after it)")
      ->capture_default_str();
  train_cmd->add_option("--mpi-progress", mpi_progress,
                        "thread | nonblocking: how allreduces progress during backward")
      ->capture_default_str();
  train_cmd->add_option("--check-replicas", ro.check_replicas_every,
                        "verify every K steps that all ranks hold the same parameters (0: at start only)");
  train_cmd->add_option("--inject-fault", fault, "RANK:STEP:throw|kill|nan|desync (failure-handling tests)")
      ->group("");

  // eval
  CLI::App* eval = app.add_subcommand("eval", "evaluate weights on a test set");
  ModelFlags eval_model;
  eval_model.add(eval);
  std::string eval_weights, eval_dataset = "fashion-mnist", eval_dir;
  int eval_batch = 256;
  eval->add_option("--weights", eval_weights, "safetensors weights (train's weights.safetensors) or a compressed model (.sqz); not a checkpoint")->required();
  eval->add_option("--dataset", eval_dataset, "fashion-mnist | mnist | cifar10")->capture_default_str();
  eval->add_option("--data-dir", eval_dir, "directory of the data files");
  eval->add_option("--batch-size", eval_batch, "batch size")->capture_default_str();

  // compress
  CLI::App* compress = app.add_subcommand(
      "compress", "Deep Compression of trained weights: prune, quantize, Huffman-code (docs/COMPRESSION.md)");
  CompressOptions co;
  compress->add_option("--weights", co.weights, "trained weights (safetensors from squeeze train)")->required();
  compress->add_option("--out", co.out, "the compressed model file to write")->required();
  compress->add_option("--prune", co.prune,
                       "paper (the paper's Table 1) | none | NAME=FRACTION,... (e.g. conv10=0.2)")
      ->capture_default_str();
  compress->add_option("--bits", co.bits, "code width of the per-layer codebooks, 2..8")->capture_default_str();
  compress->add_option("--index-bits", co.index_bits, "width of the relative indices, 1..12")->capture_default_str();
  compress->add_option("--dataset", co.dataset,
                       "report the test accuracy after each stage on this data set (fashion-mnist | mnist | cifar10)");
  compress->add_option("--data-dir", co.data_dir, "directory of the data files");
  compress->add_option("--retrain-epochs", co.retrain_epochs,
                       "retrain this many epochs after pruning (mask held) and after quantization "
                       "(centroids trained); needs --dataset")
      ->capture_default_str();
  compress->add_option("--lr", co.lr, "retraining learning rate (poly schedule)")->capture_default_str();
  compress->add_option("--batch-size", co.retrain_batch, "retraining's global batch (divisible by the number of ranks)")
      ->capture_default_str();
  compress->add_option("--prune-steps", co.prune_steps,
                       "prune in this many steps (the pruned fraction growing linearly), retraining after each")
      ->capture_default_str();
  std::string compress_device = "cpu";
  compress->add_option("--device", compress_device,
                       "cpu | cuda: where retraining and the accuracy figures run (one GPU per rank)")
      ->capture_default_str();

  // info
  CLI::App* info = app.add_subcommand("info", "print a model's layers, parameters and MACs");
  ModelFlags info_model;
  info_model.add(info);
  std::string info_input = "3x224x224", info_weights;
  int info_classes = 1000;
  info->add_option("--input", info_input, "input CxHxW")->capture_default_str();
  info->add_option("--classes", info_classes, "number of classes")->capture_default_str();
  info->add_option("--weights", info_weights, "describe the model stored in this file (weights or compressed) instead");

  // --threads before or after the subcommand (each subcommand's --help lists it).
  for (CLI::App* sub : {train_cmd, eval, compress, info})
    sub->add_option("--threads", threads, threads_help);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // The same on every rank: rank 0 speaks for the job. --help exits 0; every error 1, as the
    // errors found after parsing do (CLI11's own codes, 104 to 109, would tell nothing apart).
    const int rc = job.root() ? app.exit(e) : e.get_exit_code();
    end_job(job);
    return rc == 0 ? 0 : 1;
  }
  if (!*train_cmd || check_layers_flag) default_signals();

  // Outlives the try block: a failing rank must reach MPI_Abort before the communicator's
  // destructor, which could otherwise wait on a collective that the other ranks never join.
  std::unique_ptr<Communicator> comm;
  int exit_status = 0;
  try {
    set_threads(threads == 0 ? default_threads(job) : threads);
    if (*train_cmd) {
      tc.data = parse_data_format(dataset);
      tc.model = train_model.config();
      tc.stem = train_model.stem;
      tc.validate();
      // Under mpirun a rank's stdout is a pty whatever mpirun's own stdout is: no live line there.
      ro.progress = !job.mpi && isatty(STDOUT_FILENO);
      ro.quiet = !job.root();
      if (!fault.empty()) ro.fault = parse_fault(fault);
      if (device != "cpu" && device != "cuda")
        fail("unknown --device '", device, "' (known: cpu, cuda)");
      if (check_layers_flag && device != "cuda") fail("--check-layers needs --device cuda");
      if (conv != "own" && conv != "cudnn") fail("unknown --conv '", conv, "' (known: own, cudnn)");
      if (precision != "fp32" && precision != "tf32" && precision != "bf16")
        fail("unknown --precision '", precision, "' (known: fp32, tf32, bf16)");
      if (conv == "cudnn" && device != "cuda") fail("--conv cudnn needs --device cuda");
      if (precision != "fp32" && device != "cuda")
        fail("--precision ", precision, " needs --device cuda");
#ifdef SQUEEZE_HAVE_CUDA
      if (conv == "cudnn") cuda::set_conv_impl(cuda::ConvImpl::kCudnn);
      cuda::set_conv_math(precision == "tf32"   ? cuda::ConvMath::kTf32
                          : precision == "bf16" ? cuda::ConvMath::kBf16
                                                : cuda::ConvMath::kFp32);
#endif
      if (check_layers_flag) {
        run_check_layers(tc, job);
        end_job(job);
        return 0;
      }
      ro.cuda = device == "cuda";
      ro.gpu = job.world.local_rank;  // one GPU per rank
      if (ro.max_steps < 0) fail("--max-steps must not be negative, got ", ro.max_steps);
      if (!(ro.bucket_mib >= 0) || !std::isfinite(ro.bucket_mib))
        fail("--bucket-mib must be a finite number >= 0 (0: one bucket), got ", ro.bucket_mib);
      if (ro.check_replicas_every < 0)
        fail("--check-replicas must not be negative, got ", ro.check_replicas_every);
      if (!(nccl_timeout > 0)) fail("--nccl-timeout must be positive, got ", nccl_timeout);
      comm = make_job_communicator(job, parse_mpi_progress(mpi_progress));
      if (ro.cuda && job.mpi) use_nccl_if_possible(job, nccl_timeout, comm, ro.gpu);
      if (!ro.resume.empty()) {
        // Continuing a run writes into that run's directory unless told otherwise.
        if (train_cmd->count("--out") == 0) ro.out_dir = dir_of(ro.resume);
        // The run's settings are the checkpoint's: a flag that would change them is said to be
        // ignored rather than silently dropped.
        static const std::set<std::string> how = {
            "--out", "--resume", "--max-steps", "--data-dir", "--device", "--precision", "--conv",
            "--bucket-mib", "--overlap", "--mpi-progress", "--check-replicas", "--nccl-timeout",
            "--threads", "--inject-fault", "--overwrite", "--check-layers"};
        std::string ignored;
        for (const CLI::Option* o : train_cmd->get_options())
          if (o->count() > 0 && !how.count(o->get_name()))
            ignored += (ignored.empty() ? "" : ", ") + o->get_name();
        if (!ignored.empty() && job.root())
          std::printf("note: --resume continues with the checkpoint's settings; ignoring %s\n", ignored.c_str());
      }
      ro.stop_signal = &g_stop_signal;
      TrainResult r = sq::train(tc, ro, *comm);
      if (r.stopped) {
        // Every rank stopped after the same step; the exit status says the run did not finish.
        const int sig = r.stop_signal ? r.stop_signal : SIGTERM;
        if (job.root())
          std::fprintf(stderr, "squeeze: stopped by %s after step %lld: %s\n",
                       r.stop_signal ? signal_name(r.stop_signal) : "a signal", (long long)r.steps,
                       r.checkpoint.empty()
                           ? "nothing saved (--out '')"
                           : ("checkpoint " + r.checkpoint + "; continue with: " +
                              continue_command(r.checkpoint, tc.data_dir)).c_str());
        exit_status = 128 + sig;
      } else if (job.root()) {
        const bool ended_epoch = !r.epochs.empty() && r.epochs.back().step == r.steps;
        // --max-steps ended this run early, after training at least one step.
        const bool cut_short = r.steps > r.first_step && r.steps < r.total_steps && ro.max_steps == r.steps;
        if (ended_epoch) {
          std::printf("final test accuracy %.4f after %lld steps\n", r.epochs.back().test_acc,
                      (long long)r.steps);
        } else if (!r.epochs.empty()) {  // --max-steps stopped mid-epoch: the last accuracy is older
          const EpochMetrics& last = r.epochs.back();
          std::printf("stopped at step %lld; test accuracy %.4f at step %lld (epoch %lld's end)\n",
                      (long long)r.steps, last.test_acc, (long long)last.step, (long long)last.epoch);
        } else if (cut_short) {
          std::printf("stopped at step %lld (--max-steps), before an epoch's end: no test accuracy yet\n",
                      (long long)r.steps);
        }
        if (cut_short && !r.checkpoint.empty())
          std::printf("continue with: %s\n", continue_command(r.checkpoint, tc.data_dir).c_str());
      }
    } else if (*eval) {
      comm = make_job_communicator(job, MpiProgress::kThread);
      run_eval(eval_model, eval_weights, eval_dataset, eval_dir, eval_batch, *comm);
    } else if (*compress) {
      if (compress_device != "cpu" && compress_device != "cuda")
        fail("unknown --device '", compress_device, "' (known: cpu, cuda)");
      co.cuda = compress_device == "cuda";
      co.gpu = job.world.local_rank;
      comm = make_job_communicator(job, MpiProgress::kThread);
      if (co.cuda && job.mpi) use_nccl_if_possible(job, nccl_timeout, comm, co.gpu);
      run_compress(co, *comm);
    } else if (*info && job.root()) {
      run_info(info_model, info_input, info_classes, info_weights);
    }
    comm.reset();
    // What went to stdout (info's table, eval's accuracy, the progress lines) must have arrived:
    // `squeeze info > /dev/full` is an error, not exit 0 with nothing written.
    errno = 0;
    if (std::fflush(stdout) != 0 || std::ferror(stdout))
      fail("cannot write standard output", errno ? std::string(": ") + std::strerror(errno) : "");
  } catch (const std::exception& e) {
    fail_job(job, e.what());
  }
  end_job(job);
  return exit_status;
}
