// The training loop: data order, batch assembly, forward, loss, backward, gradient averaging
// through the communicator, fused SGD, schedule, metrics, checkpoints and exact resume.
//
// Every random draw is keyed by (seed, epoch, global sample index), so a run's trajectory is a
// function of its settings alone, and a checkpoint needs no generator state: it holds the
// parameters, momentum, the step, the position in the epoch and the epoch's running metrics.
#pragma once
#include <csignal>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/config.h"
#include "core/data.h"
#include "core/model.h"
#include "core/schedule.h"
#include "nlohmann/json_fwd.hpp"

namespace sq {

struct TrainConfig {
  ModelConfig model;        // input shape and classes are taken from the data set
  std::string stem = "auto";  // auto: small for inputs of at most 64 px, imagenet otherwise
  DataFormat data = DataFormat::kFashionMnist;
  std::string data_dir;     // empty: the format's default
  int epochs = 3;
  int batch = 128;          // global batch
  Schedule schedule = [] { Schedule s; s.lr = 0.02; return s; }();  // poly from 0.02 (docs/RESULTS.md)
  double momentum = 0.9;
  double weight_decay = 2e-4;
  double clip_grad_norm = 2;  // > 0: scale the averaged gradient to at most this global L2 norm
  std::string init = "lsuv";
  uint64_t seed = 1;
  Augment augment;
  bool shuffle = true;
  int64_t train_limit = 0;  // use only the first N training samples (0: all)
  int64_t test_limit = 0;   // evaluate on the first N test samples (0: all)

  void validate() const;  // throws sq::Error naming the bad setting
};

nlohmann::json to_json(const TrainConfig& c);
TrainConfig train_config_from_json(const nlohmann::json& j);

// A deliberate failure on one rank at one step, for the tests of whole-job failure handling
// (`squeeze train --inject-fault RANK:STEP:KIND`).
struct FaultInjection {
  enum class Kind { kNone, kThrow, kKill, kNan, kDesync };
  Kind kind = Kind::kNone;
  int rank = 0;
  int64_t step = 0;
};
FaultInjection parse_fault(const std::string& s);  // "1:3:throw"; throws sq::Error

// A constraint on training (Deep Compression's retraining, core/compress.h): sees the averaged
// gradient before clipping and the update, and the parameters after each update. Every rank
// applies it to the same values, so replicas stay identical.
class ParamConstraint {
 public:
  virtual ~ParamConstraint() = default;
  virtual void on_gradient(float* grads) = 0;
  virtual void after_update(float* params, float* momentum, const float* grads, double lr) = 0;
  // Training on a GPU: the same on the device's flat buffers, queued on `stream` (the step's
  // cudaStream_t) without host synchronisation. The defaults refuse with sq::Error.
  virtual void on_gradient_device(float* grads, void* stream);
  virtual void after_update_device(float* params, float* momentum, const float* grads, double lr,
                                   void* stream);
};

// Default gradient bucket: docs/BENCHMARKS.md ("Bucket size") has the measurement behind it.
constexpr double kDefaultBucketMiB = 1.0;

struct RunOptions {  // how to run, not what to compute: never changes the trajectory
  std::string out_dir;       // metrics.jsonl, checkpoint.safetensors, weights.safetensors
  std::string resume;        // checkpoint to continue from
  int64_t max_steps = 0;     // stop (and checkpoint) after this global step (0: run to the end)
  bool progress = false;     // live progress line
  bool quiet = false;        // no per-epoch lines (tests)
  double bucket_mib = kDefaultBucketMiB;  // gradient bucket cap (0: one bucket for the model)
  bool overlap = true;       // start each bucket's allreduce during backward
  int64_t check_replicas_every = 0;  // also verify replica checksums every K steps (0: at start only)
  bool cuda = false;         // the step on GPU `gpu` (model, loss, clipping, SGD on the device)
  int gpu = 0;
  // Start from these parameters instead of cfg.init (not with resume), and constrain every
  // update (on the CPU or the GPU): squeeze compress's retraining.
  const std::vector<float>* initial_params = nullptr;
  ParamConstraint* constraint = nullptr;
  // Normalize the inputs with these statistics instead of the training set's (compress's
  // retraining: the weights' own).
  const Normalization* normalization = nullptr;
  // A fresh run may replace the metrics, checkpoint and weights of another run in out_dir
  // (otherwise refused).
  bool overwrite = false;
  // Set (non-zero) by a signal handler, on any rank: every rank stops after the same step (the
  // flag rides on the step's allreduce), with a checkpoint, and the result says so.
  const volatile std::sig_atomic_t* stop_signal = nullptr;
  FaultInjection fault;
};

struct EpochMetrics {
  int64_t epoch = 0;  // 1-based, completed
  int64_t step = 0;
  double lr = 0, train_loss = 0, train_acc = 0, test_loss = 0, test_acc = 0;
  double images_per_s = 0, seconds = 0;
  int64_t clipped_steps = 0;  // steps of this epoch whose gradient norm was clipped
};

struct TrainResult {
  std::vector<EpochMetrics> epochs;
  int64_t steps = 0;        // the global step reached
  int64_t total_steps = 0;  // the run's last step (steps < total_steps: --max-steps or a stop)
  int64_t first_step = 0;   // the step it started from (the checkpoint's, on --resume)
  std::vector<float> params;  // final parameters
  ModelConfig model;
  bool stopped = false;  // ended before the run's end at a stop request (RunOptions::stop_signal)
  int stop_signal = 0;   // the signal every rank that got one got (0: differing ones)
  std::string checkpoint;  // the checkpoint rank 0 wrote last ("" elsewhere, or without out_dir)
};

// Loads the data set, builds the model, trains, evaluates each epoch.
TrainResult train(TrainConfig cfg, const RunOptions& opt, Communicator& comm);

// Test-set loss and accuracy of `params` (batches of `batch`, no dropout, no augmentation).
struct EvalResult {
  double loss = 0, accuracy = 0;
  int64_t samples = 0;
};
// With a communicator of several ranks, each rank evaluates a contiguous share of the samples
// and the sums are reduced, so every rank gets the whole test set's figures.
// With `device`, the device's model and parameters are used (params is then ignored).
class DeviceStep;
EvalResult evaluate(Model& model, const float* params, const Dataset& test,
                    const Normalization& norm, int batch, int64_t limit = 0,
                    Communicator* comm = nullptr, DeviceStep* device = nullptr);

// Fills the model config's input shape and class count from a data set and resolves "auto".
void adapt_model_to_data(ModelConfig& m, const std::string& stem, const Dataset& d);

}  // namespace sq
