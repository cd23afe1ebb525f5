// The cuDNN implementation of the convolution, behind the same contract as the project's own
// (kernels/cuda/cuda_ops.h): channel-major (C, N, H, W) activations, PyTorch's (K, C, R, S)
// filters, parameter gradients accumulated (beta = 1). fp32 arithmetic without TF32
// (CUDNN_FMA_MATH) unless --precision tf32 (tensor-op math), so that it is compared at equal
// precision. One plan per geometry (descriptors, the fastest algorithms cuDNN finds, one
// workspace), made on the first call with that geometry.
// Layouts: cuDNN 9.19 has no backward-data algorithm at all for the channel-major layout
// described by strides (every algorithm NOT_SUPPORTED, seen on an H200, 2026-11-26), while
// forward and backward-filter accept it. So a 1x1 stride-1 convolution is described as what it
// is, one packed NCHW image of C channels and N*H rows, for all three products; any other
// convolution keeps the strided description for forward and backward-filter, and its backward
// data runs on packed NCHW copies: dz transposed in, dx transposed out (two passes over dz and
// dx that the timings include).
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
void cudnn_bf16_forward(const ConvGeom&, const uint16_t*, const uint16_t*, uint16_t*, cudaStream_t) {
  fail("cuDNN BF16 convolution: this squeeze was built without cuDNN");
}
void cudnn_bf16_backward(const ConvGeom&, const uint16_t*, const uint16_t*, const uint16_t*, uint16_t*,
                         uint16_t*, bool, cudaStream_t) {
  fail("cuDNN BF16 convolution: this squeeze was built without cuDNN");
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
  bool pointwise = false;
  bool fwd_nchw = false, filter_nchw = false;  // the product runs on packed NCHW copies
  cudnnTensorDescriptor_t x = nullptr, y = nullptr, bias = nullptr;
  cudnnTensorDescriptor_t x_nchw = nullptr, y_nchw = nullptr;  // packed, for backward data
  cudnnFilterDescriptor_t w = nullptr;
  // One convolution descriptor per product: a product may fall back to cuDNN's default math.
  cudnnConvolutionDescriptor_t conv = nullptr, conv_data = nullptr, conv_filter = nullptr;
  cudnnActivationDescriptor_t relu = nullptr;
  cudnnConvolutionFwdAlgo_t fwd{};
  cudnnConvolutionBwdDataAlgo_t bwd_data{};
  cudnnConvolutionBwdFilterAlgo_t bwd_filter{};
  void* ws = nullptr;
  size_t ws_bytes = 0;
  float* staging = nullptr;  // not pointwise: x or dx, then y or dz, in NCHW
};

using Key = std::tuple<int, int, int, int, int, int, int, int, int, int, int>;

// The BF16 baseline's plan: packed NHWC BF16 tensors, one algorithm a product, one workspace.
struct Bf16Plan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  cudnnConvolutionFwdAlgo_t fwd{};
  cudnnConvolutionBwdDataAlgo_t bwd_data{};
  cudnnConvolutionBwdFilterAlgo_t bwd_filter{};
  void* ws = nullptr;
  size_t ws_bytes = 0;
};

struct State {
  std::mutex m;
  int device = -1;
  cudnnHandle_t handle = nullptr;
  std::map<Key, Plan> plans;
  std::map<Key, Bf16Plan> bf16_plans;
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

// One product's search on one layout with one math type: true when an algorithm was found; else
// the statuses appended to *why.
template <class Find, class Algo>
bool try_product(cudnnConvolutionDescriptor_t conv, cudnnMathType_t math, const char* layout,
                 size_t* ws_bytes, Algo* algo, std::string* why, Find find) {
  SQ_CUDNN(cudnnSetConvolutionMathType(conv, math));
  std::string w;
  if (find(conv, ws_bytes, algo, &w)) return true;
  *why += str(why->empty() ? "" : "; ", layout, math == CUDNN_DEFAULT_MATH ? ", default math: " : ": ", w);
  return false;
}

// The handle for the current device, set to stream s. Every use sets the stream first: a stream
// set by an earlier call may have been destroyed since (a training step's stream outlives none
// of the steps after it), and cuDNN's algorithm searches run on the handle's stream (seen on the
// H200: INTERNAL_ERROR from every search, and once a crash, after a step's stream was gone).
cudnnHandle_t handle_on(cudaStream_t s) {
  State& st = state();
  int dev = 0;
  SQ_CUDA(cudaGetDevice(&dev));
  if (!st.handle || st.device != dev) {
    SQ_CUDNN(cudnnCreate(&st.handle));
    st.device = dev;
    st.plans.clear();
    st.bf16_plans.clear();
  }
  SQ_CUDNN(cudnnSetStream(st.handle, s));
  return st.handle;
}

// The algorithms a plan found, one line on stderr (SQUEEZE_CUDNN_ALGOS=1; gpu_check.sh bench keeps
// it): which method cuDNN's times come from (an implicit GEMM, FFT or Winograd: fewer multiplies
// than the direct product the own kernels count as their floor), and on which layout.
const char* algo_name(cudnnConvolutionFwdAlgo_t a) {
  static const char* const names[] = {"implicit GEMM", "implicit precomputed GEMM", "GEMM", "direct",
                                      "FFT", "FFT tiling", "Winograd", "Winograd nonfused"};
  return int(a) >= 0 && int(a) < 8 ? names[int(a)] : "unknown";
}
const char* algo_name(cudnnConvolutionBwdDataAlgo_t a) {
  static const char* const names[] = {"algo 0", "algo 1", "FFT", "FFT tiling", "Winograd", "Winograd nonfused"};
  return int(a) >= 0 && int(a) < 6 ? names[int(a)] : "unknown";
}
const char* algo_name(cudnnConvolutionBwdFilterAlgo_t a) {
  static const char* const names[] = {"algo 0", "algo 1", "FFT", "algo 3", "Winograd", "Winograd nonfused",
                                      "FFT tiling"};
  return int(a) >= 0 && int(a) < 7 ? names[int(a)] : "unknown";
}
void report(const ConvGeom& g, const Plan& p, bool tf32) {
  auto layout = [&](bool nchw) { return p.pointwise ? "packed" : nchw ? "NCHW copies" : "own layout"; };
  std::fprintf(stderr,
               "squeeze: cuDNN %s plan for %s: forward %s (%s), backward data %s, backward filter %s (%s), "
               "workspace %.1f MB\n",
               tf32 ? "TF32" : "fp32", geometry(g).c_str(), algo_name(p.fwd), layout(p.fwd_nchw),
               algo_name(p.bwd_data), algo_name(p.bwd_filter), layout(p.filter_nchw), double(p.ws_bytes) / 1e6);
}

// A plan's key: the geometry, the current device and the arithmetic (0 fp32, 1 TF32, 2 BF16).
Key plan_key(const ConvGeom& g, int math) {
  int dev = 0;
  SQ_CUDA(cudaGetDevice(&dev));
  return Key{g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad, dev, math};
}

Plan& plan_for(const ConvGeom& g) {
  State& st = state();
  const bool tf32 = conv_math() == ConvMath::kTf32;
  const Key key = plan_key(g, tf32 ? 1 : 0);
  auto it = st.plans.find(key);
  if (it != st.plans.end()) return it->second;
  Plan p;
  SQ_CUDNN(cudnnCreateTensorDescriptor(&p.x));
  SQ_CUDNN(cudnnCreateTensorDescriptor(&p.y));
  SQ_CUDNN(cudnnCreateTensorDescriptor(&p.bias));
  SQ_CUDNN(cudnnCreateTensorDescriptor(&p.x_nchw));
  SQ_CUDNN(cudnnCreateTensorDescriptor(&p.y_nchw));
  SQ_CUDNN(cudnnCreateFilterDescriptor(&p.w));
  SQ_CUDNN(cudnnCreateConvolutionDescriptor(&p.conv));
  SQ_CUDNN(cudnnCreateConvolutionDescriptor(&p.conv_data));
  SQ_CUDNN(cudnnCreateConvolutionDescriptor(&p.conv_filter));
  SQ_CUDNN(cudnnCreateActivationDescriptor(&p.relu));
  p.pointwise = g.R == 1 && g.S == 1 && g.stride == 1 && g.pad == 0;
  if (p.pointwise) {  // (C, N, H, W) is the packed NCHW image (1, C, N*H, W)
    SQ_CUDNN(cudnnSetTensor4dDescriptor(p.x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, g.C, g.N * g.H, g.W));
    SQ_CUDNN(cudnnSetTensor4dDescriptor(p.y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, g.K, g.N * g.H, g.W));
  } else {
    set_cnhw(p.x, g.N, g.C, g.H, g.W);
    set_cnhw(p.y, g.N, g.K, g.P(), g.Q());
  }
  SQ_CUDNN(cudnnSetTensor4dDescriptor(p.x_nchw, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, g.N, g.C, g.H, g.W));
  SQ_CUDNN(cudnnSetTensor4dDescriptor(p.y_nchw, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, g.N, g.K, g.P(), g.Q()));
  SQ_CUDNN(cudnnSetTensor4dDescriptor(p.bias, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, g.K, 1, 1));
  SQ_CUDNN(cudnnSetFilter4dDescriptor(p.w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, g.K, g.C, g.R, g.S));
  const cudnnMathType_t math = tf32 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH;
  for (cudnnConvolutionDescriptor_t c : {p.conv, p.conv_data, p.conv_filter}) {
    SQ_CUDNN(cudnnSetConvolution2dDescriptor(c, g.pad, g.pad, g.stride, g.stride, 1, 1,
                                             CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    SQ_CUDNN(cudnnSetConvolutionMathType(c, math));
  }
  SQ_CUDNN(cudnnSetActivationDescriptor(p.relu, CUDNN_ACTIVATION_RELU, CUDNN_NOT_PROPAGATE_NAN, 0.0));
  // The fastest algorithm of each kind whose workspace fits (cuDNN times them on this GPU), on
  // the strided channel-major description where cuDNN takes it, else on packed NCHW copies.
  constexpr int kMax = 16;
  // Order of preference: the plan's math on the strided layout, on packed NCHW copies, then
  // cuDNN's default math (which may use TF32 on Ampere and later: said on stderr).
  auto search = [&](const char* kind, cudnnConvolutionDescriptor_t conv, bool strided_ok,
                    bool* nchw, auto* algo, const auto& find) {
    std::string why;
    for (cudnnMathType_t m : {math, CUDNN_DEFAULT_MATH}) {
      if (m == CUDNN_DEFAULT_MATH && math == CUDNN_DEFAULT_MATH) break;
      for (bool packed : {false, true}) {
        if (!packed && !strided_ok) continue;
        if (packed && p.pointwise) continue;  // pointwise: the plan's layout is packed already
        const cudnnTensorDescriptor_t xd = packed ? p.x_nchw : p.x, yd = packed ? p.y_nchw : p.y;
        if (try_product(conv, m, packed ? "NCHW copies" : "own layout", &p.ws_bytes, algo, &why,
                        [&](cudnnConvolutionDescriptor_t c, size_t* ws, auto* a, std::string* w) {
                          return find(c, xd, yd, ws, a, w);
                        })) {
          *nchw = packed;
          if (m != math)
            std::fprintf(stderr, "squeeze: cuDNN: no %s algorithm with %s math for %s (%s); using "
                         "cuDNN's default math for it\n", kind,
                         math == CUDNN_FMA_MATH ? "FMA-only (fp32)" : "tensor-op", geometry(g).c_str(),
                         why.c_str());
          return;
        }
      }
    }
    fail("cuDNN has no ", kind, " algorithm for ", geometry(g), " (", why, ")");
  };
  search("forward", p.conv, true, &p.fwd_nchw, &p.fwd,
         [&](cudnnConvolutionDescriptor_t c, cudnnTensorDescriptor_t xd, cudnnTensorDescriptor_t yd,
             size_t* ws, auto* algo, std::string* why) {
           int n = 0;
           cudnnConvolutionFwdAlgoPerf_t perf[kMax];
           SQ_CUDNN(cudnnFindConvolutionForwardAlgorithm(st.handle, xd, p.w, c, yd, kMax, &n, perf));
           return fastest(perf, n, ws, algo, why);
         });
  // Backward data never on the strided layout: it has no algorithm at all there.
  bool data_nchw = false;
  search("backward-data", p.conv_data, p.pointwise, &data_nchw, &p.bwd_data,
         [&](cudnnConvolutionDescriptor_t c, cudnnTensorDescriptor_t xd, cudnnTensorDescriptor_t yd,
             size_t* ws, auto* algo, std::string* why) {
           int n = 0;
           cudnnConvolutionBwdDataAlgoPerf_t perf[kMax];
           SQ_CUDNN(cudnnFindConvolutionBackwardDataAlgorithm(st.handle, p.w, yd, c, xd, kMax, &n, perf));
           return fastest(perf, n, ws, algo, why);
         });
  search("backward-filter", p.conv_filter, true, &p.filter_nchw, &p.bwd_filter,
         [&](cudnnConvolutionDescriptor_t c, cudnnTensorDescriptor_t xd, cudnnTensorDescriptor_t yd,
             size_t* ws, auto* algo, std::string* why) {
           int n = 0;
           cudnnConvolutionBwdFilterAlgoPerf_t perf[kMax];
           SQ_CUDNN(cudnnFindConvolutionBackwardFilterAlgorithm(st.handle, xd, yd, c, p.w, kMax, &n, perf));
           return fastest(perf, n, ws, algo, why);
         });
  if (!p.pointwise) {
    const size_t nx = size_t(g.C) * g.N * g.H * g.W, ny = size_t(g.K) * g.N * g.P() * g.Q();
    SQ_CUDA(cudaMalloc(reinterpret_cast<void**>(&p.staging), (nx + ny) * sizeof(float)));
  }
  if (p.ws_bytes) SQ_CUDA(cudaMalloc(&p.ws, p.ws_bytes));
  if (env_is("SQUEEZE_CUDNN_ALGOS", "1")) report(g, p, tf32);
  return st.plans.emplace(key, p).first->second;
}

// The BF16 baseline's plan for g on the current device, made on first use: the fastest algorithm
// of each product with tensor-op math (no fallback: a product cuDNN cannot run in BF16 is an
// error that names it).
Bf16Plan& bf16_plan_for(const ConvGeom& g) {
  State& st = state();
  const Key key = plan_key(g, 2);
  auto it = st.bf16_plans.find(key);
  if (it != st.bf16_plans.end()) return it->second;
  Bf16Plan p;
  SQ_CUDNN(cudnnCreateTensorDescriptor(&p.x));
  SQ_CUDNN(cudnnCreateTensorDescriptor(&p.y));
  SQ_CUDNN(cudnnCreateFilterDescriptor(&p.w));
  SQ_CUDNN(cudnnCreateConvolutionDescriptor(&p.conv));
  SQ_CUDNN(cudnnSetTensor4dDescriptor(p.x, CUDNN_TENSOR_NHWC, CUDNN_DATA_BFLOAT16, g.N, g.C, g.H, g.W));
  SQ_CUDNN(cudnnSetTensor4dDescriptor(p.y, CUDNN_TENSOR_NHWC, CUDNN_DATA_BFLOAT16, g.N, g.K, g.P(), g.Q()));
  SQ_CUDNN(cudnnSetFilter4dDescriptor(p.w, CUDNN_DATA_BFLOAT16, CUDNN_TENSOR_NHWC, g.K, g.C, g.R, g.S));
  SQ_CUDNN(cudnnSetConvolution2dDescriptor(p.conv, g.pad, g.pad, g.stride, g.stride, 1, 1,
                                           CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  SQ_CUDNN(cudnnSetConvolutionMathType(p.conv, CUDNN_TENSOR_OP_MATH));
  constexpr int kMax = 16;
  std::string why;
  auto need = [&](bool found, const char* kind) {
    if (!found) fail("cuDNN has no BF16 ", kind, " algorithm for ", geometry(g), " (", why, ")");
  };
  {
    int n = 0;
    cudnnConvolutionFwdAlgoPerf_t perf[kMax];
    SQ_CUDNN(cudnnFindConvolutionForwardAlgorithm(st.handle, p.x, p.w, p.conv, p.y, kMax, &n, perf));
    need(fastest(perf, n, &p.ws_bytes, &p.fwd, &why), "forward");
  }
  {
    int n = 0;
    cudnnConvolutionBwdDataAlgoPerf_t perf[kMax];
    SQ_CUDNN(cudnnFindConvolutionBackwardDataAlgorithm(st.handle, p.w, p.y, p.conv, p.x, kMax, &n, perf));
    need(fastest(perf, n, &p.ws_bytes, &p.bwd_data, &why), "backward-data");
  }
  {
    int n = 0;
    cudnnConvolutionBwdFilterAlgoPerf_t perf[kMax];
    SQ_CUDNN(cudnnFindConvolutionBackwardFilterAlgorithm(st.handle, p.x, p.y, p.conv, p.w, kMax, &n, perf));
    need(fastest(perf, n, &p.ws_bytes, &p.bwd_filter, &why), "backward-filter");
  }
  if (p.ws_bytes) SQ_CUDA(cudaMalloc(&p.ws, p.ws_bytes));
  if (env_is("SQUEEZE_CUDNN_ALGOS", "1"))
    std::fprintf(stderr,
                 "squeeze: cuDNN BF16 plan for %s: forward %s, backward data %s, backward filter %s "
                 "(NHWC), workspace %.1f MB\n",
                 geometry(g).c_str(), algo_name(p.fwd), algo_name(p.bwd_data), algo_name(p.bwd_filter),
                 double(p.ws_bytes) / 1e6);
  return st.bf16_plans.emplace(key, p).first->second;
}

}  // namespace

bool cudnn_built() { return true; }

void cudnn_bf16_forward(const ConvGeom& g, const uint16_t* x, const uint16_t* w, uint16_t* y,
                        cudaStream_t s) {
  std::lock_guard<std::mutex> lock(state().m);
  cudnnHandle_t h = handle_on(s);  // before the plan: its searches run on the handle's stream
  Bf16Plan& p = bf16_plan_for(g);
  const float one = 1.0f, zero = 0.0f;  // (fp32 scalars: the compute type is FLOAT)
  SQ_CUDNN(cudnnConvolutionForward(h, &one, p.x, x, p.w, w, p.conv, p.fwd, p.ws, p.ws_bytes, &zero,
                                   p.y, y));
}

void cudnn_bf16_backward(const ConvGeom& g, const uint16_t* x, const uint16_t* w, const uint16_t* dz,
                         uint16_t* dw, uint16_t* dx, bool accumulate, cudaStream_t s) {
  std::lock_guard<std::mutex> lock(state().m);
  cudnnHandle_t h = handle_on(s);
  Bf16Plan& p = bf16_plan_for(g);
  const float one = 1.0f, zero = 0.0f;
  SQ_CUDNN(cudnnConvolutionBackwardFilter(h, &one, p.x, x, p.y, dz, p.conv, p.bwd_filter, p.ws,
                                          p.ws_bytes, &zero, p.w, dw));
  if (dx)
    SQ_CUDNN(cudnnConvolutionBackwardData(h, &one, p.w, w, p.y, dz, p.conv, p.bwd_data, p.ws, p.ws_bytes,
                                          accumulate ? &one : &zero, p.x, dx));
}

void cudnn_conv_forward(const ConvGeom& g, const float* x, const float* w, const float* b,
                        float* y, bool relu, cudaStream_t s) {
  std::lock_guard<std::mutex> lock(state().m);
  cudnnHandle_t h = handle_on(s);  // before plan_for: its searches run on the handle's stream
  Plan& p = plan_for(g);
  const float one = 1.0f, zero = 0.0f;
  const size_t nx = size_t(g.C) * g.N * g.H * g.W;
  // Staging: x (or dx) in NCHW first, then y (or dz) in NCHW.
  const float* xin = x;
  float* yout = y;
  cudnnTensorDescriptor_t xd = p.x, yd = p.y;
  if (p.fwd_nchw) {
    swap_outer(x, g.C, g.N, size_t(g.H) * g.W, p.staging, false, s);
    xin = p.staging, yout = p.staging + nx, xd = p.x_nchw, yd = p.y_nchw;
  }
  SQ_CUDNN(cudnnConvolutionForward(h, &one, xd, xin, p.w, w, p.conv, p.fwd, p.ws, p.ws_bytes,
                                   &zero, yd, yout));
  if (b) SQ_CUDNN(cudnnAddTensor(h, &one, p.bias, b, &one, yd, yout));
  if (relu) SQ_CUDNN(cudnnActivationForward(h, p.relu, &one, yd, yout, &zero, yd, yout));
  if (p.fwd_nchw) swap_outer(yout, g.N, g.K, size_t(g.P()) * g.Q(), y, false, s);
}

void cudnn_conv_backward(const ConvGeom& g, const float* x, const float* w, const float* dz,
                         float* dw, float* db, float* dx, bool accumulate, cudaStream_t s) {
  std::lock_guard<std::mutex> lock(state().m);
  cudnnHandle_t h = handle_on(s);  // before plan_for: its searches run on the handle's stream
  Plan& p = plan_for(g);
  const float one = 1.0f, zero = 0.0f;
  if (p.pointwise) {
    SQ_CUDNN(cudnnConvolutionBackwardFilter(h, &one, p.x, x, p.y, dz, p.conv_filter, p.bwd_filter,
                                            p.ws, p.ws_bytes, &one, p.w, dw));
    if (db) SQ_CUDNN(cudnnConvolutionBackwardBias(h, &one, p.y, dz, &one, p.bias, db));
    if (dx)
      SQ_CUDNN(cudnnConvolutionBackwardData(h, &one, p.w, w, p.y, dz, p.conv_data, p.bwd_data, p.ws,
                                            p.ws_bytes, accumulate ? &one : &zero, p.x, dx));
    return;
  }
  // dz to NCHW once; the bias gradient and backward data read that copy.
  const size_t nx = size_t(g.C) * g.N * g.H * g.W;
  float* x_nchw = p.staging;  // x for the filter (if it needs the copy), then dx
  float* dz_nchw = p.staging + nx;
  swap_outer(dz, g.K, g.N, size_t(g.P()) * g.Q(), dz_nchw, false, s);
  if (p.filter_nchw) {
    swap_outer(x, g.C, g.N, size_t(g.H) * g.W, x_nchw, false, s);
    SQ_CUDNN(cudnnConvolutionBackwardFilter(h, &one, p.x_nchw, x_nchw, p.y_nchw, dz_nchw, p.conv_filter,
                                            p.bwd_filter, p.ws, p.ws_bytes, &one, p.w, dw));
  } else {
    SQ_CUDNN(cudnnConvolutionBackwardFilter(h, &one, p.x, x, p.y, dz, p.conv_filter, p.bwd_filter,
                                            p.ws, p.ws_bytes, &one, p.w, dw));
  }
  if (db) SQ_CUDNN(cudnnConvolutionBackwardBias(h, &one, p.y_nchw, dz_nchw, &one, p.bias, db));
  if (!dx) return;
  SQ_CUDNN(cudnnConvolutionBackwardData(h, &one, p.w, w, p.y_nchw, dz_nchw, p.conv_data, p.bwd_data,
                                        p.ws, p.ws_bytes, &zero, p.x_nchw, x_nchw));
  swap_outer(x_nchw, g.N, g.C, size_t(g.H) * g.W, dx, accumulate, s);
}

}  // namespace cuda
}  // namespace sq

#endif  // SQUEEZE_HAVE_CUDNN
