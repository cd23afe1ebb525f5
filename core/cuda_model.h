// The model on one GPU: the host model's layer table and parameter layout (core/model.h),
// activations, activation gradients and workspaces planned once in device memory, forward and
// backward with the CUDA ops (kernels/cuda/cuda_ops.h) on one stream. Nothing is allocated and
// nothing synchronises with the host inside forward or backward. Built with CUDA only.
#pragma once
#ifdef SQUEEZE_HAVE_CUDA
#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/model.h"

namespace sq {

class CudaModel {
 public:
  CudaModel(const ModelConfig& cfg, int max_batch, cudaStream_t stream = nullptr);
  ~CudaModel();
  CudaModel(const CudaModel&) = delete;
  CudaModel& operator=(const CudaModel&) = delete;

  const ModelConfig& config() const { return plan_.config(); }
  const ParamLayout& layout() const { return plan_.layout(); }
  const std::vector<Layer>& layers() const { return plan_.layers(); }
  const std::vector<ActShape>& acts() const { return plan_.acts(); }
  int max_batch() const { return max_batch_; }
  size_t device_bytes() const { return bytes_; }
  cudaStream_t stream() const { return stream_; }

  // Device pointers throughout. input (in_c, N, in_h, in_w); dropout_keys[N] on the device.
  // Returns the device logits (N, classes), valid until the next forward.
  const float* forward(const float* params, const float* input, int N, bool train,
                       const uint64_t* dropout_keys);
  // grads += dL/dparams (device); on_ready(offset) after each layer with parameters, as the
  // host model's (the hook runs on the host when the layer's kernels are queued, not finished).
  void backward(const float* params, const float* dlogits, float* grads, int N,
                const uint64_t* dropout_keys, const std::function<void(size_t)>& on_ready = {});

  // Activation `id` of the last forward, on the device ((C, N, H, W), N of that forward).
  const float* activation(int id) const { return arena_ + act_offset_[size_t(id)]; }
  // Per-layer timing for benchmarks: while on, forward and backward record a CUDA event after
  // each layer; layer_times() then waits and returns (layer name + " fwd"/" bwd", ms) in the
  // order run. Off by default (no events in a training step).
  void set_profiling(bool on);
  bool profiling() const { return !prof_events_.empty(); }
  std::vector<std::pair<std::string, float>> layer_times();

  // Overwrites activation `id` of the last forward with host values (synchronous): --check-layers
  // runs the GPU backward on the CPU's activations.
  void load_activation(int id, const float* host);

 private:
  float* act(int id) { return arena_ + act_offset_[size_t(id)]; }

  Model plan_;  // batch-1 host model: the layer table, shapes and layout (its arena is small)
  int max_batch_;
  cudaStream_t stream_;
  std::vector<size_t> act_offset_;
  float* arena_ = nullptr;  // every activation, for max_batch
  float* grad_a_ = nullptr;  // ping-pong activation gradients
  float* grad_b_ = nullptr;
  float* ws_ = nullptr;      // op workspace
  uint8_t* pool_idx_ = nullptr;         // each max-pool's recorded window maxima (bytes)
  std::vector<size_t> pool_idx_offset_;  // per layer, into pool_idx_
  // Per layer: the layer after it applies its output ReLU's backward (relu_backward_by_next).
  std::vector<char> relu_by_next_;
  size_t bytes_ = 0;
  int n_ = 0;
  // Profiling: events[0] before the forward, then one per layer run; their labels.
  std::vector<cudaEvent_t> prof_events_;
  std::vector<std::string> prof_labels_;
  size_t prof_next_ = 0;
  void mark(const std::string& label);
};

// --check-layers: one batch through the GPU model and the CPU model from the same parameters and
// inputs; per layer the relative error (norm-wise) of its output and of its parameter gradient.
// The GPU backward runs on the CPU's activations: the forward outputs differ by rounding, and
// where two values of a max-pool window are that close, the two sides would route the gradient
// to different inputs (max-pool's backward is discontinuous), an error no kernel made.
struct LayerCheck {
  std::string layer;
  double forward_err = 0;   // ||gpu - cpu|| / ||cpu|| of the layer's output
  double backward_err = 0;  // the same for the layer's parameter gradient (0: no parameters)
  bool ok = true;
};
// How the GPU's convolutions round their operands at the current precision (cuda::conv_math()):
// kNone in fp32.
OperandRounding gpu_operand_rounding();
// Dropout is active with the same keys on both sides. The CPU model's convolutions round their
// operands as the GPU's do (gpu_operand_rounding; set_conv_operand_rounding for the CPU side only,
// restored after), and ok holds each error within check_layers_tolerance of that rounding.
std::vector<LayerCheck> check_layers(const ModelConfig& cfg, int N, uint64_t seed);

}  // namespace sq
#endif
