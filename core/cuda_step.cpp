// The training step on one GPU: the CUDA model, the flat buffers in device memory, pinned host
// staging for the batch, and one stream. Host synchronisation only where a value is needed on
// the host: the loss statistics at the end of the step and the gradient norm for clipping.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>

#include "core/cuda_model.h"
#include "core/device_step.h"
#include "core/error.h"
#include "kernels/cuda/cuda_ops.h"

namespace sq {

namespace {

template <class T>
T* device_alloc(size_t n) {
  T* p = nullptr;
  SQ_CUDA(cudaMalloc(reinterpret_cast<void**>(&p), std::max<size_t>(n, 1) * sizeof(T)));
  return p;
}
template <class T>
T* pinned_alloc(size_t n) {
  T* p = nullptr;
  SQ_CUDA(cudaMallocHost(reinterpret_cast<void**>(&p), std::max<size_t>(n, 1) * sizeof(T)));
  return p;
}

class CudaStep final : public DeviceStep {
 public:
  CudaStep(const ModelConfig& cfg, int max_batch, int device)
      : device_((cuda::use_device(device), device)), stream_(make_stream()),
        model_(cfg, max_batch, stream_), max_batch_(max_batch), K_(cfg.num_classes) {
    n_ = model_.layout().total;
    in_per_sample_ = size_t(cfg.in_c) * cfg.in_h * cfg.in_w;
    params_ = device_alloc<float>(n_);
    grads_ = device_alloc<float>(n_);
    momentum_ = device_alloc<float>(n_);
    input_ = device_alloc<float>(in_per_sample_ * max_batch);
    labels_ = device_alloc<int32_t>(max_batch);
    keys_ = device_alloc<uint64_t>(max_batch);
    dlogits_ = device_alloc<float>(size_t(K_) * max_batch);
    result_ = device_alloc<double>(4);
    loss_ws_ = device_alloc<double>(cuda::softmax_xent_workspace(max_batch));
    sum_ws_ = device_alloc<double>(cuda::sum_of_squares_workspace());
    host_input_ = pinned_alloc<float>(in_per_sample_ * max_batch);
    host_labels_ = pinned_alloc<int32_t>(max_batch);
    host_keys_ = pinned_alloc<uint64_t>(max_batch);
    host_result_ = pinned_alloc<double>(4);
    cudaDeviceProp prop;
    SQ_CUDA(cudaGetDeviceProperties(&prop, device));
    name_ = "cuda:" + std::to_string(device) + " (" + prop.name + ")";
  }

  ~CudaStep() override {
    for (void* p : {static_cast<void*>(params_), static_cast<void*>(grads_),
                    static_cast<void*>(momentum_), static_cast<void*>(input_),
                    static_cast<void*>(labels_), static_cast<void*>(keys_),
                    static_cast<void*>(dlogits_), static_cast<void*>(result_),
                    static_cast<void*>(loss_ws_), static_cast<void*>(sum_ws_)})
      cudaFree(p);
    for (void* p : {static_cast<void*>(host_input_), static_cast<void*>(host_labels_),
                    static_cast<void*>(host_keys_), static_cast<void*>(host_result_)})
      cudaFreeHost(p);
    cudaStreamDestroy(stream_);
  }

  std::string name() const override { return name_; }
  size_t device_bytes() const override {
    return model_.device_bytes() + 3 * n_ * sizeof(float) +
           (in_per_sample_ + size_t(K_)) * max_batch_ * sizeof(float);
  }

  void upload(const float* params, const float* momentum) override {
    SQ_CUDA(cudaMemcpy(params_, params, n_ * sizeof(float), cudaMemcpyHostToDevice));
    if (momentum) SQ_CUDA(cudaMemcpy(momentum_, momentum, n_ * sizeof(float), cudaMemcpyHostToDevice));
  }
  void download(float* params, float* momentum) override {
    SQ_CUDA(cudaStreamSynchronize(stream_));
    SQ_CUDA(cudaMemcpy(params, params_, n_ * sizeof(float), cudaMemcpyDeviceToHost));
    if (momentum) SQ_CUDA(cudaMemcpy(momentum, momentum_, n_ * sizeof(float), cudaMemcpyDeviceToHost));
  }

  void forward_backward(const float* input, const int32_t* labels, const uint64_t* keys, int N,
                        float grad_scale, double* stats) override {
    SQ_CUDA(cudaMemsetAsync(grads_, 0, n_ * sizeof(float), stream_));
    if (N == 0) return;  // a rank with no share of a ragged batch contributes zeros
    stage(input, labels, N);
    std::memcpy(host_keys_, keys, sizeof(uint64_t) * size_t(N));
    SQ_CUDA(cudaMemcpyAsync(keys_, host_keys_, sizeof(uint64_t) * size_t(N),
                            cudaMemcpyHostToDevice, stream_));
    const float* logits = model_.forward(params_, input_, N, true, keys_);
    cuda::softmax_xent(N, K_, logits, labels_, grad_scale, dlogits_, result_, loss_ws_, stream_);
    model_.backward(params_, dlogits_, grads_, N, keys_);
    read_result(stats);
  }

  void reduce_through_host(float* host, const std::function<void(float*)>& reduce) override {
    SQ_CUDA(cudaMemcpyAsync(host, grads_, n_ * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    SQ_CUDA(cudaStreamSynchronize(stream_));
    reduce(host);
    SQ_CUDA(cudaMemcpyAsync(grads_, host, n_ * sizeof(float), cudaMemcpyHostToDevice, stream_));
  }

  double grad_sq_norm() override {
    cuda::sum_of_squares(grads_, n_, result_ + 2, sum_ws_, stream_);
    SQ_CUDA(cudaMemcpyAsync(host_result_ + 2, result_ + 2, sizeof(double), cudaMemcpyDeviceToHost,
                            stream_));
    SQ_CUDA(cudaStreamSynchronize(stream_));
    return host_result_[2];
  }
  void scale_grads(float s) override { cuda::scale_inplace(grads_, s, n_, stream_); }
  void sgd(float lr, float momentum, float weight_decay) override {
    cuda::sgd_momentum_update(n_, params_, grads_, momentum_, lr, momentum, weight_decay, stream_);
  }

  void evaluate_batch(const float* input, const int32_t* labels, int N, double* stats) override {
    stage(input, labels, N);
    const float* logits = model_.forward(params_, input_, N, false, nullptr);
    cuda::softmax_xent(N, K_, logits, labels_, 1.0f, nullptr, result_, loss_ws_, stream_);
    read_result(stats);
  }

 private:
  static cudaStream_t make_stream() {
    cudaStream_t s;
    SQ_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    return s;
  }
  // Host batch -> pinned staging -> device, on the stream. (The staging buffer is reused by the
  // next step only after this step's read_result synchronised.)
  void stage(const float* input, const int32_t* labels, int N) {
    SQ_ASSERT(N >= 1 && N <= max_batch_, "batch ", N, " outside [1, ", max_batch_, "]");
    const size_t in = in_per_sample_ * size_t(N);
    std::memcpy(host_input_, input, in * sizeof(float));
    std::memcpy(host_labels_, labels, size_t(N) * sizeof(int32_t));
    SQ_CUDA(cudaMemcpyAsync(input_, host_input_, in * sizeof(float), cudaMemcpyHostToDevice, stream_));
    SQ_CUDA(cudaMemcpyAsync(labels_, host_labels_, size_t(N) * sizeof(int32_t),
                            cudaMemcpyHostToDevice, stream_));
  }
  void read_result(double* stats) {
    SQ_CUDA(cudaMemcpyAsync(host_result_, result_, 2 * sizeof(double), cudaMemcpyDeviceToHost,
                            stream_));
    SQ_CUDA(cudaStreamSynchronize(stream_));
    stats[0] += host_result_[0];
    stats[1] += host_result_[1];
  }

  std::string name_;
  int device_;
  cudaStream_t stream_;
  CudaModel model_;
  int max_batch_, K_;
  size_t n_ = 0, in_per_sample_ = 0;
  float *params_, *grads_, *momentum_, *input_, *dlogits_;
  int32_t* labels_;
  uint64_t* keys_;
  double *result_, *loss_ws_, *sum_ws_;
  float* host_input_;
  int32_t* host_labels_;
  uint64_t* host_keys_;
  double* host_result_;
};

}  // namespace

std::unique_ptr<DeviceStep> make_cuda_step(const ModelConfig& cfg, int max_batch, int device) {
  return std::make_unique<CudaStep>(cfg, max_batch, device);
}

}  // namespace sq
