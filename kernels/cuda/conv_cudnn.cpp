// The cuDNN implementation of the convolution, behind the same contract as the project's own
// (kernels/cuda/cuda_ops.h): channel-major (C, N, H, W) activations described to cuDNN by
// strides, PyTorch's (K, C, R, S) filters, parameter gradients accumulated (beta = 1). fp32
// arithmetic without TF32 (CUDNN_FMA_MATH) unless --precision tf32 (tensor-op math), so that it
// is compared at equal precision. One plan
// per geometry (descriptors, the fastest algorithms cuDNN finds, one workspace), made on the
// first call with that geometry.
#include "kernels/cuda/cuda_ops.h"
#include "core/error.h"

#ifndef SQUEEZE_HAVE_CUDNN

namespace sq {
namespace cuda {
bool cudnn_built() { return false; }
void cudnn_conv_forward(const ConvGeom&, const float*, const float*, const float*, float*, bool,
                        cudaStream_t) {
  fail("cuDNN convolution: this squeeze was built without cuDNN");
}
void cudnn_conv_backward(const ConvGeom&, const float*, const float*, const float*, float*,
                         float*, float*, bool, cudaStream_t) {
  fail("cuDNN convolution: this squeeze was built without cuDNN");
}
}  // namespace cuda
}  // namespace sq

#else

#include <cuda_runtime_api.h>
#include <cudnn.h>

#include <cstdio>
#include <map>
#include <string>
#include <mutex>
#include <tuple>

namespace sq {
namespace cuda {

namespace {

void check_cudnn(cudnnStatus_t st, const char* what, const char* file, int line) {
  if (st != CUDNN_STATUS_SUCCESS) fail(file, ":", line, ": ", what, ": ", cudnnGetErrorString(st));
}
#define SQ_CUDNN(call) check_cudnn((call), #call, __FILE__, __LINE__)

struct Plan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr, bias = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  // One convolution descriptor per product: a product may fall back to cuDNN's default math.
  cudnnConvolutionDescriptor_t conv = nullptr, conv_data = nullptr, conv_filter = nullptr;
  cudnnActivationDescriptor_t relu = nullptr;
  cudnnConvolutionFwdAlgo_t fwd{};
  cudnnConvolutionBwdDataAlgo_t bwd_data{};
  cudnnConvolutionBwdFilterAlgo_t bwd_filter{};
  void* ws = nullptr;
  size_t ws_bytes = 0;
};

using Key = std::tuple<int, int, int, int, int, int, int, int, int, int, int>;

struct State {
  std::mutex m;
  int device = -1;
  cudnnHandle_t handle = nullptr;
  std::map<Key, Plan> plans;
};
State& state() {
  static State s;
  return s;
}

// Channel-major (C, N, H, W) as cuDNN's (n, c, h, w) with strides.
void set_cnhw(cudnnTensorDescriptor_t d, int N, int C, int H, int W) {
  SQ_CUDNN(cudnnSetTensor4dDescriptorEx(d, CUDNN_DATA_FLOAT, N, C, H, W, H * W, N * H * W, W, 1));
}

constexpr size_t kMaxWorkspace = size_t(1) << 30;

// The first (fastest) successful result of a cudnnFind*Algorithm whose workspace fits: true, its
// algorithm in *algo, *ws_bytes grown to its workspace. Else false and each algorithm's status
// in *why.
template <class Perf, class Algo>
bool fastest(const Perf* perf, int n, size_t* ws_bytes, Algo* algo, std::string* why) {
  for (int i = 0; i < n; ++i)
    if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= kMaxWorkspace) {
      *ws_bytes = std::max(*ws_bytes, perf[i].memory);
      *algo = perf[i].algo;
      return true;
    }
  for (int i = 0; i < n; ++i)
    *why += str(i ? ", " : "", "algo ", int(perf[i].algo), ": ", cudnnGetErrorString(perf[i].status),
                perf[i].memory > kMaxWorkspace ? " (workspace too large)" : "");
  if (n == 0) *why = "none returned";
  return false;
}

std::string geometry(const ConvGeom& g) {
  return str("conv ", g.C, "->", g.K, " ", g.R, "x", g.S, " stride ", g.stride, " pad ", g.pad,
             " on ", g.N, "x", g.H, "x", g.W);
}

// Finds the fastest algorithm of one product with the plan's math; where that math has none
// (seen: fp32 FMA-only math and backward data on this channel-major layout), once more with
// cuDNN's default math, said on stderr, since that math may use TF32 on Ampere and later.
template <class Find, class Algo>
void find_product(const ConvGeom& g, cudnnConvolutionDescriptor_t conv, cudnnMathType_t math,
                  const char* kind, size_t* ws_bytes, Algo* algo, Find find) {
  std::string why;
  if (find(conv, ws_bytes, algo, &why)) return;
  if (math != CUDNN_DEFAULT_MATH) {
    SQ_CUDNN(cudnnSetConvolutionMathType(conv, CUDNN_DEFAULT_MATH));
    std::string why2;
    if (find(conv, ws_bytes, algo, &why2)) {
      std::fprintf(stderr, "squeeze: cuDNN: no %s algorithm with %s math for %s (%s); using "
                   "cuDNN's default math for it\n", kind,
                   math == CUDNN_FMA_MATH ? "FMA-only (fp32)" : "tensor-op", geometry(g).c_str(), why.c_str());
      return;
    }
    why += "; with default math: " + why2;
  }
  fail("cuDNN has no ", kind, " algorithm for ", geometry(g), " (", why, ")");
}

Plan& plan_for(const ConvGeom& g) {
  State& st = state();
  int dev = 0;
  SQ_CUDA(cudaGetDevice(&dev));
  if (!st.handle || st.device != dev) {
    SQ_CUDNN(cudnnCreate(&st.handle));
    st.device = dev;
    st.plans.clear();
  }
  const bool tf32 = conv_math() == ConvMath::kTf32;
  const Key key{g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad, dev, tf32 ? 1 : 0};
  auto it = st.plans.find(key);
  if (it != st.plans.end()) return it->second;
  Plan p;
  SQ_CUDNN(cudnnCreateTensorDescriptor(&p.x));
  SQ_CUDNN(cudnnCreateTensorDescriptor(&p.y));
  SQ_CUDNN(cudnnCreateTensorDescriptor(&p.bias));
  SQ_CUDNN(cudnnCreateFilterDescriptor(&p.w));
  SQ_CUDNN(cudnnCreateConvolutionDescriptor(&p.conv));
  SQ_CUDNN(cudnnCreateConvolutionDescriptor(&p.conv_data));
  SQ_CUDNN(cudnnCreateConvolutionDescriptor(&p.conv_filter));
  SQ_CUDNN(cudnnCreateActivationDescriptor(&p.relu));
  set_cnhw(p.x, g.N, g.C, g.H, g.W);
  set_cnhw(p.y, g.N, g.K, g.P(), g.Q());
  SQ_CUDNN(cudnnSetTensor4dDescriptor(p.bias, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, g.K, 1, 1));
  SQ_CUDNN(cudnnSetFilter4dDescriptor(p.w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, g.K, g.C, g.R, g.S));
  const cudnnMathType_t math = tf32 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH;
  for (cudnnConvolutionDescriptor_t c : {p.conv, p.conv_data, p.conv_filter}) {
    SQ_CUDNN(cudnnSetConvolution2dDescriptor(c, g.pad, g.pad, g.stride, g.stride, 1, 1,
                                             CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    SQ_CUDNN(cudnnSetConvolutionMathType(c, math));
  }
  SQ_CUDNN(cudnnSetActivationDescriptor(p.relu, CUDNN_ACTIVATION_RELU, CUDNN_NOT_PROPAGATE_NAN, 0.0));
  // The fastest algorithm of each kind whose workspace fits (cuDNN times them on this GPU).
  constexpr int kMax = 16;
  find_product(g, p.conv, math, "forward", &p.ws_bytes, &p.fwd,
               [&](cudnnConvolutionDescriptor_t c, size_t* ws, auto* algo, std::string* why) {
                 int n = 0;
                 cudnnConvolutionFwdAlgoPerf_t perf[kMax];
                 SQ_CUDNN(cudnnFindConvolutionForwardAlgorithm(st.handle, p.x, p.w, c, p.y, kMax, &n, perf));
                 return fastest(perf, n, ws, algo, why);
               });
  find_product(g, p.conv_data, math, "backward-data", &p.ws_bytes, &p.bwd_data,
               [&](cudnnConvolutionDescriptor_t c, size_t* ws, auto* algo, std::string* why) {
                 int n = 0;
                 cudnnConvolutionBwdDataAlgoPerf_t perf[kMax];
                 SQ_CUDNN(cudnnFindConvolutionBackwardDataAlgorithm(st.handle, p.w, p.y, c, p.x, kMax, &n, perf));
                 return fastest(perf, n, ws, algo, why);
               });
  find_product(g, p.conv_filter, math, "backward-filter", &p.ws_bytes, &p.bwd_filter,
               [&](cudnnConvolutionDescriptor_t c, size_t* ws, auto* algo, std::string* why) {
                 int n = 0;
                 cudnnConvolutionBwdFilterAlgoPerf_t perf[kMax];
                 SQ_CUDNN(cudnnFindConvolutionBackwardFilterAlgorithm(st.handle, p.x, p.y, c, p.w, kMax, &n, perf));
                 return fastest(perf, n, ws, algo, why);
               });
  if (p.ws_bytes) SQ_CUDA(cudaMalloc(&p.ws, p.ws_bytes));
  return st.plans.emplace(key, p).first->second;
}

}  // namespace

bool cudnn_built() { return true; }

void cudnn_conv_forward(const ConvGeom& g, const float* x, const float* w, const float* b,
                        float* y, bool relu, cudaStream_t s) {
  std::lock_guard<std::mutex> lock(state().m);
  Plan& p = plan_for(g);
  cudnnHandle_t h = state().handle;
  SQ_CUDNN(cudnnSetStream(h, s));
  const float one = 1.0f, zero = 0.0f;
  SQ_CUDNN(cudnnConvolutionForward(h, &one, p.x, x, p.w, w, p.conv, p.fwd, p.ws, p.ws_bytes,
                                   &zero, p.y, y));
  if (b) SQ_CUDNN(cudnnAddTensor(h, &one, p.bias, b, &one, p.y, y));
  if (relu) SQ_CUDNN(cudnnActivationForward(h, p.relu, &one, p.y, y, &zero, p.y, y));
}

void cudnn_conv_backward(const ConvGeom& g, const float* x, const float* w, const float* dz,
                         float* dw, float* db, float* dx, bool accumulate, cudaStream_t s) {
  std::lock_guard<std::mutex> lock(state().m);
  Plan& p = plan_for(g);
  cudnnHandle_t h = state().handle;
  SQ_CUDNN(cudnnSetStream(h, s));
  const float one = 1.0f, zero = 0.0f;
  SQ_CUDNN(cudnnConvolutionBackwardFilter(h, &one, p.x, x, p.y, dz, p.conv_filter, p.bwd_filter, p.ws,
                                          p.ws_bytes, &one, p.w, dw));
  if (db) SQ_CUDNN(cudnnConvolutionBackwardBias(h, &one, p.y, dz, &one, p.bias, db));
  if (dx)
    SQ_CUDNN(cudnnConvolutionBackwardData(h, &one, p.w, w, p.y, dz, p.conv_data, p.bwd_data, p.ws,
                                          p.ws_bytes, accumulate ? &one : &zero, p.x, dx));
}

}  // namespace cuda
}  // namespace sq

#endif  // SQUEEZE_HAVE_CUDNN
