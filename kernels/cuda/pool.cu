// Max-pool with ceil rounding (first maximum; a NaN wins and the first NaN takes the gradient,
// as in the CPU op) and the global average pool. The forward records each window's first
// maximum as a byte (its offset r*k + s inside the window), so the backward reads one byte per
// window instead of searching every window again.
#include "core/error.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/pool_kernels.cuh"

namespace sq {
namespace cuda {

namespace {

PoolArgs args_of(const PoolGeom& g) {
  SQ_ASSERT(g.k > 0 && g.k <= 15 && g.stride > 0 && g.pad >= 0 && 2 * g.pad <= g.k,
            "bad pool geometry (window offsets must fit a byte)");
  const int P = g.P(), Q = g.Q();
  SQ_ASSERT(P > 0 && Q > 0, "pool output is empty: H=", g.H, " W=", g.W);
  return {g.N, g.C, g.H, g.W, g.k, g.stride, g.pad, P, Q};
}

}  // namespace

void maxpool_forward(const PoolGeom& g, const float* x, float* y, uint8_t* argmax, cudaStream_t s) {
  const PoolArgs a = args_of(g);
  const size_t total = size_t(a.C) * a.N * a.P * a.Q;
  maxpool_forward_kernel<<<blocks_for(total), kThreads, 0, s>>>(a, x, y, argmax);
  SQ_CUDA_LAUNCH("maxpool_forward");
}

void maxpool_backward(const PoolGeom& g, const uint8_t* argmax, const float* dy, float* dx,
                      cudaStream_t s) {
  const PoolArgs a = args_of(g);
  const size_t total = size_t(a.C) * a.N * a.H * a.W;
  maxpool_backward_kernel<<<blocks_for(total), kThreads, 0, s>>>(a, argmax, dy, dx);
  SQ_CUDA_LAUNCH("maxpool_backward");
}

void avgpool_forward(int N, int C, int HW, const float* x, float* y, cudaStream_t s) {
  SQ_ASSERT(HW > 0, "avgpool over an empty plane");
  avgpool_forward_kernel<<<blocks_for(size_t(N) * C), kThreads, 0, s>>>(N, C, HW, x, y);
  SQ_CUDA_LAUNCH("avgpool_forward");
}

void avgpool_backward(int N, int C, int HW, const float* dy, float* dx, cudaStream_t s) {
  SQ_ASSERT(HW > 0, "avgpool over an empty plane");
  avgpool_backward_kernel<<<blocks_for(size_t(N) * C * HW), kThreads, 0, s>>>(N, C, HW, dy, dx);
  SQ_CUDA_LAUNCH("avgpool_backward");
}

}  // namespace cuda
}  // namespace sq
