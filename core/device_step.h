// The training step on an accelerator, as the trainer sees it: parameters, gradients and
// momentum live on the device; the trainer assembles batches on the host and drives the step.
// CUDA implements it (core/cuda_step.cpp); a build without CUDA gets core/cuda_step_none.cpp,
// which refuses with a clear error, so the trainer needs no #ifdefs.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "core/config.h"

namespace sq {

class DeviceStep {
 public:
  virtual ~DeviceStep() = default;
  virtual std::string name() const = 0;  // "cuda:0 (NVIDIA H100 80GB HBM3)"
  virtual size_t device_bytes() const = 0;
  // Host <-> device copies of the flat buffers (momentum may be null). Synchronous.
  virtual void upload(const float* params, const float* momentum) = 0;
  virtual void download(float* params, float* momentum) = 0;
  // Zeroes the gradients; then, for N > 0, forward (train), loss scaled by grad_scale,
  // backward, the host inputs copied in first; stats[0] += loss sum, stats[1] += correct
  // (waits for the step).
  void forward_backward(const float* input, const int32_t* labels, const uint64_t* keys, int N,
                        float grad_scale, double* stats) {
    launch(input, labels, keys, N, grad_scale);
    finish(stats);
  }
  // The same in two halves: launch queues the step and returns (the host batch is copied out
  // before it returns, so the caller may refill it); finish waits for it and adds its stats.
  // on_ready(offset): backward's readiness hook (core/model.h), called as each layer's kernels
  // are queued, for a reducer on device_grads() (NCCL).
  // input == nullptr: the step takes the batch of the last prefetch() (labels and keys are then
  // ignored, and N must be the prefetched N).
  virtual void launch(const float* input, const int32_t* labels, const uint64_t* keys, int N,
                      float grad_scale, const std::function<void(size_t)>& on_ready = {}) = 0;
  // Copies the next batch out of the host buffers (which the caller may refill on return) and
  // starts its host-to-device copy on a stream of its own, so that it overlaps the step in
  // flight; the next launch(nullptr, ...) waits for that copy on the device, not the host.
  virtual void prefetch(const float* input, const int32_t* labels, const uint64_t* keys, int N) = 0;
  // prefetch() of a batch as the data set's bytes: input (C, N, H, W) uint8 (core/data.h,
  // assemble_batch_bytes) and its normalisation table (normalization_table, C x 256 floats). A
  // quarter of the floats' bytes goes to the device, which normalises them on the copy stream
  // into the floats assemble_batch would have written, bit for bit. The trainer's path.
  virtual void prefetch_bytes(const uint8_t* input, const float* table, const int32_t* labels,
                              const uint64_t* keys, int N) = 0;
  virtual void finish(double* stats) = 0;
  // Replay each step's forward, loss and backward as a CUDA graph, captured once per staging
  // slot, batch size, loss scale and convolution precision: one launch per step instead of some
  // hundreds. Only where nothing runs on the host during the step (no readiness hook, own
  // convolutions, no layer profiling); elsewhere the step launches its kernels as before.
  // Default: on, unless the SQUEEZE_CUDA_GRAPH environment variable is 0 (docs/KERNELS.md: run d
  // measured +0.7-15 % on the own kernels' training steps, bit for bit the launched step).
  virtual void use_graphs(bool on) = 0;
  virtual float* device_grads() = 0;  // the flat gradient buffer on the device
  virtual float* device_params() = 0;
  virtual float* device_momentum() = 0;
  virtual void* stream() = 0;         // the step's cudaStream_t, opaque
  // The gradients through the host, for a host-side reduction: download into host, call
  // reduce(host), upload the result. host: best the staging buffer below.
  virtual void reduce_through_host(float* host, const std::function<void(float*)>& reduce) = 0;
  // A pinned host buffer of the gradient's size (allocated on first use), for reduce_through_host:
  // copies from and to page-locked memory run at full bus speed without a bounce buffer.
  virtual float* host_staging() = 0;
  virtual double grad_sq_norm() = 0;     // waits for the value
  virtual void scale_grads(float s) = 0;
  virtual void sgd(float lr, float momentum, float weight_decay) = 0;
  // Forward without dropout: stats[0] += loss sum, stats[1] += correct.
  virtual void evaluate_batch(const float* input, const int32_t* labels, int N, double* stats) = 0;
};

// The step on GPU `device` (this process's local rank) for batches of up to max_batch.
std::unique_ptr<DeviceStep> make_cuda_step(const ModelConfig& cfg, int max_batch, int device);
// Selects `device` for this process, or throws sq::Error saying why it cannot run here (no GPU,
// no such device, no code for its architecture, a build without CUDA). Cheap: the trainer calls
// it before loading data and initialising, so that a run that cannot use the GPU fails at once.
void use_cuda_device(int device);

}  // namespace sq
