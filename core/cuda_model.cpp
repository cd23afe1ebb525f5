#ifdef SQUEEZE_HAVE_CUDA
#include "core/cuda_model.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "core/error.h"
#include "core/rng.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/device_buffer.h"

namespace sq {

CudaModel::CudaModel(const ModelConfig& cfg, int max_batch, cudaStream_t stream)
    : plan_(cfg, 1), max_batch_(max_batch), stream_(stream),
      relu_by_next_(relu_backward_by_next(plan_.layers())) {
  SQ_ASSERT(max_batch >= 1, "max_batch must be positive");
  // Every activation, gradient buffer and the workspace start at a multiple of 32 floats (128
  // bytes), whatever the batch: the convolutions' 16-byte copies (igemm_mma.cuh, igemm_win.cuh)
  // take only aligned operands.
  auto whole = [](size_t n) { return (n + 31) / 32 * 32; };
  size_t total = 0, largest = 0;
  for (const ActShape& a : plan_.acts()) {
    act_offset_.push_back(total);
    const size_t n = whole(size_t(a.per_sample()) * max_batch_);
    total += n;
    largest = std::max(largest, n);
  }
  size_t ws = 1;
  for (const Layer& l : plan_.layers()) {
    if (l.kind == LayerKind::kConv) {
      ConvGeom g = l.conv;
      g.N = max_batch_;
      ws = std::max({ws, cuda::conv_backward_workspace(g), cuda::conv_forward_workspace(g)});
    } else if (l.kind == LayerKind::kFire) {
      FireGeom f = l.fire;
      f.N = max_batch_;
      ws = std::max(ws, cuda::fire_workspace(f));
      if (l.bypass == Bypass::kComplex) {
        ConvGeom g = l.bypass_conv;
        g.N = max_batch_;
        ws = std::max(ws, cuda::conv_backward_workspace(g));
      }
    }
  }
  size_t idx_bytes = 0;
  for (const Layer& l : plan_.layers()) {
    pool_idx_offset_.push_back(idx_bytes);
    if (l.kind == LayerKind::kMaxPool)
      idx_bytes += size_t(plan_.acts()[size_t(l.out)].per_sample()) * max_batch_;
  }
  const size_t floats = total + 2 * largest + ws;
  bytes_ = floats * sizeof(float) + idx_bytes;
  SQ_CUDA(cudaMalloc(reinterpret_cast<void**>(&arena_), bytes_));
  grad_a_ = arena_ + total;
  grad_b_ = grad_a_ + largest;
  ws_ = grad_b_ + largest;
  pool_idx_ = reinterpret_cast<uint8_t*>(ws_ + ws);
}

CudaModel::~CudaModel() {
  set_profiling(false);
  cudaFree(arena_);
}

void CudaModel::set_profiling(bool on) {
  for (cudaEvent_t e : prof_events_) cudaEventDestroy(e);
  prof_events_.clear();
  prof_labels_.clear();
  if (!on) return;
  prof_events_.resize(2 * plan_.layers().size() + 1);
  for (cudaEvent_t& e : prof_events_) SQ_CUDA(cudaEventCreate(&e));
}

void CudaModel::mark(const std::string& label) {
  if (prof_events_.empty()) return;
  if (label.empty()) prof_next_ = 0, prof_labels_.clear();  // the start of a forward
  if (prof_next_ >= prof_events_.size()) return;
  SQ_CUDA(cudaEventRecord(prof_events_[prof_next_++], stream_));
  prof_labels_.push_back(label);
}

std::vector<std::pair<std::string, float>> CudaModel::layer_times() {
  std::vector<std::pair<std::string, float>> out;
  if (prof_next_ == 0) return out;
  SQ_CUDA(cudaEventSynchronize(prof_events_[prof_next_ - 1]));
  for (size_t i = 1; i < prof_next_; ++i) {
    float ms = 0;
    SQ_CUDA(cudaEventElapsedTime(&ms, prof_events_[i - 1], prof_events_[i]));
    out.push_back({prof_labels_[i], ms});
  }
  return out;
}

const float* CudaModel::forward(const float* params, const float* input, int N, bool train,
                                const uint64_t* dropout_keys) {
  SQ_ASSERT(N >= 1 && N <= max_batch_, "batch ", N, " outside [1, ", max_batch_, "]");
  n_ = N;
  const std::vector<ActShape>& acts = plan_.acts();
  const ModelConfig& cfg = plan_.config();
  cudaStream_t s = stream_;
  mark("");
  SQ_CUDA(cudaMemcpyAsync(act(0), input, sizeof(float) * size_t(acts[0].per_sample()) * N,
                          cudaMemcpyDeviceToDevice, s));
  const float* P = params;
  for (const Layer& l : plan_.layers()) {
    const ActShape& ain = acts[size_t(l.in)];
    const size_t n_in = size_t(ain.per_sample()) * N;
    switch (l.kind) {
      case LayerKind::kConv: {
        ConvGeom g = l.conv;
        g.N = N;
        cuda::conv_forward(g, act(l.in), P + l.w, P + l.b, act(l.out), true, s, ws_);
        break;
      }
      case LayerKind::kMaxPool: {
        PoolGeom g = l.pool;
        g.N = N;
        cuda::maxpool_forward(g, act(l.in), act(l.out), pool_idx_ + pool_idx_offset_[size_t(&l - plan_.layers().data())], s);
        break;
      }
      case LayerKind::kFire: {
        FireGeom f = l.fire;
        f.N = N;
        FireParams<const float> fp{P + l.ws, P + l.bs, P + l.w1, P + l.b1, P + l.w3, P + l.b3};
        float* y = l.bypass == Bypass::kNone ? act(l.out) : act(l.fire_act);
        cuda::fire_forward(f, act(l.in), fp, act(l.squeeze_act), y, s, ws_);
        if (l.bypass == Bypass::kSimple) {
          SQ_CUDA(cudaMemcpyAsync(act(l.out), act(l.in), sizeof(float) * n_in,
                                  cudaMemcpyDeviceToDevice, s));
          cuda::add_inplace(act(l.out), y, n_in, s);
        } else if (l.bypass == Bypass::kComplex) {
          ConvGeom g = l.bypass_conv;
          g.N = N;
          cuda::conv_forward(g, act(l.in), P + l.bw, P + l.bb, act(l.out), false, s, ws_);
          cuda::add_inplace(act(l.out), y, size_t(acts[size_t(l.out)].per_sample()) * N, s);
        }
        break;
      }
      case LayerKind::kDropout:
        if (train && cfg.dropout > 0.0)
          cuda::dropout_forward(N, ain.c, ain.h * ain.w, float(cfg.dropout), dropout_keys,
                                act(l.in), act(l.out), s);
        else
          SQ_CUDA(cudaMemcpyAsync(act(l.out), act(l.in), sizeof(float) * n_in,
                                  cudaMemcpyDeviceToDevice, s));
        break;
      case LayerKind::kAvgPool:
        cuda::avgpool_forward(N, ain.c, ain.h * ain.w, act(l.in), act(l.out), s);
        break;
    }
    mark(l.name + " fwd");
  }
  return act(plan_.layers().back().out);
}

void CudaModel::backward(const float* params, const float* dlogits, float* grads, int N,
                         const uint64_t* dropout_keys,
                         const std::function<void(size_t)>& on_ready) {
  SQ_ASSERT(N == n_, "backward batch ", N, " differs from the forward's ", n_);
  const std::vector<ActShape>& acts = plan_.acts();
  const std::vector<Layer>& layers = plan_.layers();
  const ModelConfig& cfg = plan_.config();
  cudaStream_t s = stream_;
  const float* P = params;
  float* G = grads;
  float* dcur = grad_a_;
  float* dprev = grad_b_;
  SQ_CUDA(cudaMemcpyAsync(dcur, dlogits, sizeof(float) * size_t(cfg.num_classes) * N,
                          cudaMemcpyDeviceToDevice, s));
  for (size_t li = layers.size(); li-- > 0;) {
    const Layer& l = layers[li];
    const ActShape& ain = acts[size_t(l.in)];
    const size_t n_in = size_t(ain.per_sample()) * N;
    const bool first = li == 0;
    // The ReLU backwards (relu_backward_by_next): this layer's own is done when dcur arrives if
    // own_relu_done; it applies the previous layer's to dprev, as it writes it, if relu_in (the
    // mask is its input, that ReLU's output).
    const bool own_relu_done = relu_by_next_[li] != 0, relu_in = !first && relu_by_next_[li - 1] != 0;
    const float* in_mask = relu_in ? act(l.in) : nullptr;
    switch (l.kind) {
      case LayerKind::kAvgPool:
        cuda::avgpool_backward(N, ain.c, ain.h * ain.w, dcur, dprev, s, in_mask);
        break;
      case LayerKind::kConv: {
        ConvGeom g = l.conv;
        g.N = N;
        if (!own_relu_done)
          cuda::relu_backward(dcur, act(l.out), dcur, size_t(acts[size_t(l.out)].per_sample()) * N, s);
        cuda::conv_backward(g, act(l.in), P + l.w, dcur, G + l.w, G + l.b,
                            first ? nullptr : dprev, false, ws_, s, relu_in);
        break;
      }
      case LayerKind::kDropout:
        if (cfg.dropout > 0.0 && relu_in)  // from the forward's output: no masks, no x
          cuda::dropout_backward_relu_from_output(n_in, float(cfg.dropout), act(l.out), dcur, dprev, s);
        else if (cfg.dropout > 0.0)
          cuda::dropout_backward(N, ain.c, ain.h * ain.w, float(cfg.dropout), dropout_keys, dcur,
                                 dprev, s);
        else if (relu_in)
          cuda::relu_backward(dcur, in_mask, dprev, n_in, s);
        else
          SQ_CUDA(cudaMemcpyAsync(dprev, dcur, sizeof(float) * n_in, cudaMemcpyDeviceToDevice, s));
        break;
      case LayerKind::kMaxPool: {
        PoolGeom g = l.pool;
        g.N = N;
        cuda::maxpool_backward(g, pool_idx_ + pool_idx_offset_[li], dcur, dprev, s, relu_in);
        break;
      }
      case LayerKind::kFire: {
        FireGeom f = l.fire;
        f.N = N;
        FireParams<const float> fp{P + l.ws, P + l.bs, P + l.w1, P + l.b1, P + l.w3, P + l.b3};
        FireParams<float> fg{G + l.ws, G + l.bs, G + l.w1, G + l.b1, G + l.w3, G + l.b3};
        const float* y = l.bypass == Bypass::kNone ? act(l.out) : act(l.fire_act);
        cuda::fire_backward(f, act(l.in), fp, act(l.squeeze_act), y, dcur, fg, dprev, false, ws_,
                            s, own_relu_done, relu_in);
        if (l.bypass == Bypass::kSimple) {
          cuda::add_inplace(dprev, dcur, n_in, s);
        } else if (l.bypass == Bypass::kComplex) {
          ConvGeom g = l.bypass_conv;
          g.N = N;
          cuda::conv_backward(g, act(l.in), P + l.bw, dcur, G + l.bw, G + l.bb, dprev, true, ws_, s);
        }
        break;
      }
    }
    mark(l.name + " bwd");
    if (l.param_end > l.param_begin && on_ready) on_ready(l.param_begin);
    std::swap(dcur, dprev);
  }
}

void CudaModel::load_activation(int id, const float* host) {
  SQ_ASSERT(id >= 0 && size_t(id) < act_offset_.size() && n_ > 0, "no activation ", id);
  SQ_CUDA(cudaStreamSynchronize(stream_));
  SQ_CUDA(cudaMemcpy(act(id), host, sizeof(float) * size_t(plan_.acts()[size_t(id)].per_sample()) * n_,
                     cudaMemcpyHostToDevice));
  SQ_CUDA(cudaDeviceSynchronize());  // see DeviceBuffer::upload
  // The max-pools reading this activation record their window maxima from it afresh (their
  // outputs come out as the exact maxima of the loaded values).
  const std::vector<Layer>& layers = plan_.layers();
  for (size_t li = 0; li < layers.size(); ++li) {
    if (layers[li].kind != LayerKind::kMaxPool || layers[li].in != id) continue;
    PoolGeom g = layers[li].pool;
    g.N = n_;
    cuda::maxpool_forward(g, act(id), act(layers[li].out), pool_idx_ + pool_idx_offset_[li], stream_);
  }
  SQ_CUDA(cudaStreamSynchronize(stream_));
}

namespace {

double rel_err(const float* got, const float* ref, size_t n) {
  double d = 0, r = 0;
  for (size_t i = 0; i < n; ++i) {
    const double e = double(got[i]) - double(ref[i]);
    d += e * e;
    r += double(ref[i]) * double(ref[i]);
  }
  if (!std::isfinite(d)) return INFINITY;
  return r > 0 ? std::sqrt(d / r) : std::sqrt(d);
}

}  // namespace

OperandRounding gpu_operand_rounding() {
  switch (cuda::conv_math()) {
    case cuda::ConvMath::kTf32: return OperandRounding::kTf32;
    case cuda::ConvMath::kBf16: return OperandRounding::kBf16;
    default: return OperandRounding::kNone;
  }
}

std::vector<LayerCheck> check_layers(const ModelConfig& cfg, int N, uint64_t seed) {
  const OperandRounding rounding = gpu_operand_rounding();
  const double tolerance = check_layers_tolerance(rounding);
  struct Restore {
    OperandRounding was = conv_operand_rounding();
    ~Restore() { set_conv_operand_rounding(was); }
  } restore;
  set_conv_operand_rounding(rounding);
  Model cpu(cfg, N);
  CudaModel gpu(cfg, N);
  const ParamLayout& layout = cpu.layout();
  std::vector<float> params(layout.total);
  cpu.init_params(params.data(), "torchvision", seed);
  std::mt19937 rng{uint32_t(seed)};
  std::normal_distribution<float> nd;
  std::vector<float> input(size_t(cfg.in_c) * N * cfg.in_h * cfg.in_w);
  for (float& x : input) x = nd(rng);
  std::vector<int32_t> labels(N);
  std::vector<uint64_t> keys(N);
  for (int n = 0; n < N; ++n) {
    labels[n] = int32_t(n % cfg.num_classes);
    keys[n] = sample_key(seed, RngStream::kDropout, 0, uint64_t(n));
  }
  const int K = cfg.num_classes;
  const float scale = 1.0f / float(N);

  std::vector<float> dlogits(size_t(K) * N), grads(layout.total, 0.0f);
  const float* logits = cpu.forward(params.data(), input.data(), N, true, keys.data());
  softmax_xent(N, K, logits, labels.data(), scale, dlogits.data(), static_cast<int*>(nullptr));

  using cuda::DeviceBuffer;
  DeviceBuffer<float> dparams(params), dinput(input), dgrads(std::vector<float>(layout.total, 0.0f));
  DeviceBuffer<float> ddlogits(dlogits.size());
  DeviceBuffer<int32_t> dlabels(labels);
  DeviceBuffer<uint64_t> dkeys(keys);
  DeviceBuffer<double> dloss(2), dws(cuda::softmax_xent_workspace(N));
  const float* glogits = gpu.forward(dparams.get(), dinput.get(), N, true, dkeys.get());
  cuda::softmax_xent(N, K, glogits, dlabels.get(), scale, ddlogits.get(), dloss.get(), dws.get(),
                     gpu.stream());

  std::vector<LayerCheck> out;
  for (const Layer& l : cpu.layers()) {
    LayerCheck c;
    c.layer = l.name;
    const size_t n = size_t(cpu.acts()[size_t(l.out)].per_sample()) * N;
    c.forward_err =
        rel_err(cuda::download(gpu.activation(l.out), n).data(), cpu.activation(l.out), n);
    out.push_back(c);
  }
  for (size_t id = 0; id < cpu.acts().size(); ++id) gpu.load_activation(int(id), cpu.activation(int(id)));
  ddlogits.upload(dlogits.data());
  cpu.backward(params.data(), dlogits.data(), grads.data(), N, keys.data());
  gpu.backward(dparams.get(), ddlogits.get(), dgrads.get(), N, dkeys.get());
  const std::vector<float> ggrads = dgrads.download();
  for (size_t i = 0; i < out.size(); ++i) {
    const Layer& l = cpu.layers()[i];
    if (l.param_end > l.param_begin)
      out[i].backward_err = rel_err(ggrads.data() + l.param_begin, grads.data() + l.param_begin,
                                    l.param_end - l.param_begin);
    out[i].ok = out[i].forward_err <= tolerance && out[i].backward_err <= tolerance;
  }
  return out;
}

}  // namespace sq
#endif
