// The training step on one GPU: the CUDA model, the flat buffers in device memory, two staging
// slots for batches (pinned host memory and device memory), the compute stream and a copy
// stream. prefetch() copies the next batch into the slot the running step does not read, on the
// copy stream, while the step computes (prefetch_bytes() copies the data set's bytes and
// normalises them there); launch(nullptr) makes the compute stream wait for that copy by an
// event. Host synchronisation only where a value is needed on the host: the loss
// statistics at the end of the step and the gradient norm for clipping.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <utility>

#include "core/cuda_model.h"
#include "core/device_step.h"
#include "core/error.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/ops.h"

namespace sq {

namespace {

class CudaStep final : public DeviceStep {
 public:
  CudaStep(const ModelConfig& cfg, int max_batch, int device)
      : device_((cuda::use_device(device), device)),
        stream_(make_stream()),
        copy_stream_(make_stream()),
        model_(cfg, max_batch, stream_.s),
        max_batch_(max_batch),
        K_(cfg.num_classes),
        n_(model_.layout().total),
        in_per_sample_(size_t(cfg.in_c) * cfg.in_h * cfg.in_w),
        params_(n_), grads_(n_), momentum_(n_),
        dlogits_(size_t(K_) * size_t(max_batch)),
        result_(4), loss_ws_(cuda::softmax_xent_workspace(max_batch)),
        sum_ws_(cuda::sum_of_squares_workspace()),
        in_c_(cfg.in_c),
        slots_{Slot(in_per_sample_, max_batch, cfg.in_c), Slot(in_per_sample_, max_batch, cfg.in_c)},
        host_result_(4) {
    cuda::prepare_conv_kernels();  // before any graph capture can meet a kernel's first launch
    cudaDeviceProp prop;
    SQ_CUDA(cudaGetDeviceProperties(&prop, device));
    name_ = "cuda:" + std::to_string(device) + " (" + prop.name + ")";
  }

  std::string name() const override { return name_; }
  size_t device_bytes() const override {
    // (The slots' bytes, allocated on the first prefetch_bytes(), counted: the trainer's path.)
    return model_.device_bytes() + 3 * n_ * sizeof(float) +
           (2 * in_per_sample_ + size_t(K_)) * max_batch_ * sizeof(float) + 2 * in_per_sample_ * max_batch_ +
           2 * size_t(in_c_) * 256 * sizeof(float);
  }

  void upload(const float* params, const float* momentum) override {
    SQ_CUDA(cudaMemcpy(params_.get(), params, n_ * sizeof(float), cudaMemcpyHostToDevice));
    if (momentum) SQ_CUDA(cudaMemcpy(momentum_.get(), momentum, n_ * sizeof(float), cudaMemcpyHostToDevice));
    SQ_CUDA(cudaDeviceSynchronize());  // see DeviceBuffer::upload
  }
  void download(float* params, float* momentum) override {
    SQ_CUDA(cudaStreamSynchronize(stream_.s));
    SQ_CUDA(cudaMemcpy(params, params_.get(), n_ * sizeof(float), cudaMemcpyDeviceToHost));
    if (momentum) SQ_CUDA(cudaMemcpy(momentum, momentum_.get(), n_ * sizeof(float), cudaMemcpyDeviceToHost));
  }

  void launch(const float* input, const int32_t* labels, const uint64_t* keys, int N,
              float grad_scale, const std::function<void(size_t)>& on_ready) override {
    SQ_CUDA(cudaMemsetAsync(grads_.get(), 0, n_ * sizeof(float), stream_.s));
    pending_ = N > 0;
    if (N == 0) {  // a rank with no share of a ragged batch contributes zeros
      if (on_ready) on_ready(0);
      return;
    }
    if (input) {
      prefetch(input, labels, keys, N);
    } else {
      SQ_ASSERT(prefetched_ == N, "launch of a prefetched batch of ", N, " but ",
                prefetched_ < 0 ? std::string("none was prefetched") : str(prefetched_, " was"));
    }
    prefetched_ = -1;
    cur_ = 1 - cur_;  // the slot prefetch() filled
    Slot& sl = slots_[cur_];
    SQ_CUDA(cudaStreamWaitEvent(stream_.s, sl.copied.get(), 0));
    auto body = [&] {
      const float* logits = model_.forward(params_.get(), sl.input.get(), N, true, sl.keys.get());
      cuda::softmax_xent(N, K_, logits, sl.labels.get(), grad_scale, dlogits_.get(), result_.get(),
                         loss_ws_.get(), stream_.s);
      model_.backward(params_.get(), dlogits_.get(), grads_.get(), N, sl.keys.get(), on_ready);
    };
    if (graphs_ && !on_ready && cuda::conv_impl() == cuda::ConvImpl::kOwn && !model_.profiling())
      SQ_CUDA(cudaGraphLaunch(graph_for(cur_, N, grad_scale, body), stream_.s));
    else
      body();
    SQ_CUDA(cudaEventRecord(sl.consumed.get(), stream_.s));  // the slot may be refilled now
    SQ_CUDA(cudaMemcpyAsync(host_result_.get(), result_.get(), 2 * sizeof(double),
                            cudaMemcpyDeviceToHost, stream_.s));
  }

  void use_graphs(bool on) override { graphs_ = on; }

  void prefetch(const float* input, const int32_t* labels, const uint64_t* keys, int N) override {
    stage(input, nullptr, nullptr, labels, keys, N);
  }
  void prefetch_bytes(const uint8_t* input, const float* table, const int32_t* labels, const uint64_t* keys,
                      int N) override {
    SQ_ASSERT(input && table, "prefetch_bytes without the batch's bytes or its table");
    stage(nullptr, input, table, labels, keys, N);
  }

  void finish(double* stats) override {
    SQ_CUDA(cudaStreamSynchronize(stream_.s));
    if (!pending_) return;
    stats[0] += host_result_.get()[0];
    stats[1] += host_result_.get()[1];
    pending_ = false;
  }

  float* device_grads() override { return grads_.get(); }
  float* device_params() override { return params_.get(); }
  float* device_momentum() override { return momentum_.get(); }
  void* stream() override { return stream_.s; }

  void reduce_through_host(float* host, const std::function<void(float*)>& reduce) override {
    SQ_CUDA(cudaMemcpyAsync(host, grads_.get(), n_ * sizeof(float), cudaMemcpyDeviceToHost, stream_.s));
    SQ_CUDA(cudaStreamSynchronize(stream_.s));
    reduce(host);
    SQ_CUDA(cudaMemcpyAsync(grads_.get(), host, n_ * sizeof(float), cudaMemcpyHostToDevice, stream_.s));
  }

  float* host_staging() override {
    if (!staging_) staging_.emplace(n_);
    return staging_->get();
  }

  double grad_sq_norm() override {
    cuda::sum_of_squares(grads_.get(), n_, result_.get() + 2, sum_ws_.get(), stream_.s);
    SQ_CUDA(cudaMemcpyAsync(host_result_.get() + 2, result_.get() + 2, sizeof(double), cudaMemcpyDeviceToHost,
                            stream_.s));
    SQ_CUDA(cudaStreamSynchronize(stream_.s));
    return host_result_.get()[2];
  }
  void scale_grads(float s) override { cuda::scale_inplace(grads_.get(), s, n_, stream_.s); }
  void sgd(float lr, float momentum, float weight_decay) override {
    cuda::sgd_momentum_update(n_, params_.get(), grads_.get(), momentum_.get(), lr, momentum, weight_decay, stream_.s);
  }

  // Evaluation stages through the slot of the last step (finished, since finish() waited), on
  // the compute stream, and leaves a prefetched batch in the other slot alone.
  void evaluate_batch(const float* input, const int32_t* labels, int N, double* stats) override {
    SQ_ASSERT(N >= 1 && N <= max_batch_, "batch ", N, " outside [1, ", max_batch_, "]");
    Slot& sl = slots_[cur_];
    SQ_CUDA(cudaEventSynchronize(sl.copied.get()));
    SQ_CUDA(cudaStreamSynchronize(stream_.s));  // the pinned buffers were last read by this stream
    const size_t in = in_per_sample_ * size_t(N);
    copy_parallel(sl.host_input.get(), input, in * sizeof(float));
    std::memcpy(sl.host_labels.get(), labels, size_t(N) * sizeof(int32_t));
    SQ_CUDA(cudaMemcpyAsync(sl.input.get(), sl.host_input.get(), in * sizeof(float), cudaMemcpyHostToDevice,
                            stream_.s));
    SQ_CUDA(cudaMemcpyAsync(sl.labels.get(), sl.host_labels.get(), size_t(N) * sizeof(int32_t),
                            cudaMemcpyHostToDevice, stream_.s));
    const float* logits = model_.forward(params_.get(), sl.input.get(), N, false, nullptr);
    cuda::softmax_xent(N, K_, logits, sl.labels.get(), 1.0f, nullptr, result_.get(), loss_ws_.get(), stream_.s);
    read_result(stats);
  }

 private:
  struct Stream {  // destroyed after everything queued on it (declared before them)
    explicit Stream(cudaStream_t x) : s(x) {}
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;
    cudaStream_t s;
    ~Stream() {
      if (s) cudaStreamDestroy(s);
    }
  };
  static cudaStream_t make_stream() {
    cudaStream_t s;
    SQ_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    return s;
  }
  // One staging slot: a batch in pinned host memory and on the device (a batch of bytes passes
  // through `bytes` and `table`, C x 256 floats, into `input`); `copied` is recorded on the copy
  // stream after its host-to-device copy, `consumed` on the compute stream after the step that
  // read it.
  struct Slot {
    Slot(size_t per_sample, int max_batch, int in_c)
        : input(per_sample * size_t(max_batch)), labels(size_t(max_batch)), keys(size_t(max_batch)),
          table(size_t(in_c) * 256), host_input(per_sample * size_t(max_batch)), host_labels(size_t(max_batch)),
          host_keys(size_t(max_batch)), host_table(size_t(in_c) * 256) {}
    cuda::DeviceBuffer<float> input;
    cuda::DeviceBuffer<int32_t> labels;
    cuda::DeviceBuffer<uint64_t> keys;
    cuda::DeviceBuffer<float> table;
    std::optional<cuda::DeviceBuffer<uint8_t>> bytes;
    cuda::PinnedBuffer<float> host_input;
    cuda::PinnedBuffer<int32_t> host_labels;
    cuda::PinnedBuffer<uint64_t> host_keys;
    cuda::PinnedBuffer<float> host_table;
    std::optional<cuda::PinnedBuffer<uint8_t>> host_bytes;
    cuda::Event copied, consumed;
  };
  // prefetch() and prefetch_bytes(): the batch (floats, or bytes and their table) into the pinned
  // side of the slot the running step does not read, then its copy to the device on the copy
  // stream; bytes are normalised there into the slot's device input, before `copied`.
  void stage(const float* input, const uint8_t* bytes, const float* table, const int32_t* labels,
             const uint64_t* keys, int N) {
    SQ_ASSERT(N >= 1 && N <= max_batch_, "batch ", N, " outside [1, ", max_batch_, "]");
    Slot& sl = slots_[1 - cur_];  // not the slot of the step in flight
    // The host side of the slot is free once its last copy is done (long ago, in a pipeline).
    SQ_CUDA(cudaEventSynchronize(sl.copied.get()));
    const size_t in = in_per_sample_ * size_t(N), tab = size_t(in_c_) * 256;
    if (bytes) {
      if (!sl.bytes) {  // on first use: a float-fed step (the tests', the benchmarks') never pays for them
        sl.bytes.emplace(in_per_sample_ * size_t(max_batch_));
        sl.host_bytes.emplace(in_per_sample_ * size_t(max_batch_));
      }
      copy_parallel(sl.host_bytes->get(), bytes, in);
      std::memcpy(sl.host_table.get(), table, tab * sizeof(float));
    } else {
      copy_parallel(sl.host_input.get(), input, in * sizeof(float));
    }
    std::memcpy(sl.host_labels.get(), labels, size_t(N) * sizeof(int32_t));
    if (keys) std::memcpy(sl.host_keys.get(), keys, size_t(N) * sizeof(uint64_t));
    else std::memset(sl.host_keys.get(), 0, size_t(N) * sizeof(uint64_t));
    // The device side is free once the step that last read it is done.
    SQ_CUDA(cudaStreamWaitEvent(copy_stream_.s, sl.consumed.get(), 0));
    if (bytes) {
      SQ_CUDA(cudaMemcpyAsync(sl.bytes->get(), sl.host_bytes->get(), in, cudaMemcpyHostToDevice, copy_stream_.s));
      SQ_CUDA(cudaMemcpyAsync(sl.table.get(), sl.host_table.get(), tab * sizeof(float), cudaMemcpyHostToDevice,
                              copy_stream_.s));
      cuda::bytes_to_input(sl.bytes->get(), in / size_t(in_c_), in_c_, sl.table.get(), sl.input.get(),
                           copy_stream_.s);
    } else {
      SQ_CUDA(cudaMemcpyAsync(sl.input.get(), sl.host_input.get(), in * sizeof(float),
                              cudaMemcpyHostToDevice, copy_stream_.s));
    }
    SQ_CUDA(cudaMemcpyAsync(sl.labels.get(), sl.host_labels.get(), size_t(N) * sizeof(int32_t),
                            cudaMemcpyHostToDevice, copy_stream_.s));
    SQ_CUDA(cudaMemcpyAsync(sl.keys.get(), sl.host_keys.get(), size_t(N) * sizeof(uint64_t),
                            cudaMemcpyHostToDevice, copy_stream_.s));
    SQ_CUDA(cudaEventRecord(sl.copied.get(), copy_stream_.s));
    prefetched_ = N;
  }
  // The step body's graph for this slot, batch, loss scale and precision, captured from the
  // compute stream on first use. The body's kernels read the slot's device buffers (the batch,
  // the dropout keys) and the flat buffers, whose addresses never change, so a replay computes
  // what the launches would.
  cudaGraphExec_t graph_for(int slot, int N, float grad_scale, const std::function<void()>& body) {
    const auto key = std::make_tuple(slot, N, grad_scale, int(cuda::conv_math()));
    auto it = graphs_by_key_.find(key);
    if (it != graphs_by_key_.end()) return it->second.exec;
    Graph g;
    SQ_CUDA(cudaStreamBeginCapture(stream_.s, cudaStreamCaptureModeThreadLocal));
    try {
      body();
    } catch (...) {
      cudaGraph_t broken = nullptr;
      cudaStreamEndCapture(stream_.s, &broken);  // leave the stream usable; the error is thrown
      if (broken) cudaGraphDestroy(broken);
      throw;
    }
    SQ_CUDA(cudaStreamEndCapture(stream_.s, &g.graph));
    SQ_CUDA(cudaGraphInstantiate(&g.exec, g.graph, 0));
    return graphs_by_key_.emplace(key, std::move(g)).first->second.exec;
  }

  void read_result(double* stats) {
    SQ_CUDA(cudaMemcpyAsync(host_result_.get(), result_.get(), 2 * sizeof(double), cudaMemcpyDeviceToHost,
                            stream_.s));
    SQ_CUDA(cudaStreamSynchronize(stream_.s));
    stats[0] += host_result_.get()[0];
    stats[1] += host_result_.get()[1];
  }

  struct Graph {  // a captured step body and its executable form
    Graph() = default;
    Graph(Graph&& o) noexcept : graph(std::exchange(o.graph, nullptr)), exec(std::exchange(o.exec, nullptr)) {}
    Graph& operator=(Graph&&) = delete;
    ~Graph() {
      if (exec) cudaGraphExecDestroy(exec);
      if (graph) cudaGraphDestroy(graph);
    }
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
  };

  std::string name_;
  int device_;
  Stream stream_, copy_stream_;
  CudaModel model_;
  int max_batch_, K_;
  size_t n_, in_per_sample_;
  cuda::DeviceBuffer<float> params_, grads_, momentum_, dlogits_;
  cuda::DeviceBuffer<double> result_, loss_ws_, sum_ws_;
  int in_c_;
  Slot slots_[2];
  cuda::PinnedBuffer<double> host_result_;
  std::optional<cuda::PinnedBuffer<float>> staging_;  // host_staging()
  int cur_ = 1;          // the slot of the last launched step; prefetch() fills the other
  int prefetched_ = -1;  // N of the batch waiting in slot 1 - cur_, or -1
  bool pending_ = false;  // a launched step's stats are on their way to host_result_
  bool graphs_ = !cuda::env_is("SQUEEZE_CUDA_GRAPH", "0");
  // Declared last: destroyed first, before the buffers and streams they use.
  std::map<std::tuple<int, int, float, int>, Graph> graphs_by_key_;
};

}  // namespace

void use_cuda_device(int device) { cuda::use_device(device); }

std::unique_ptr<DeviceStep> make_cuda_step(const ModelConfig& cfg, int max_batch, int device) {
  return std::make_unique<CudaStep>(cfg, max_batch, device);
}

}  // namespace sq
