// Max-pool with ceil rounding (first maximum; a NaN wins and the first NaN takes the gradient,
// as in the CPU op) and the global average pool. The forward records each window's first
// maximum as a byte (its offset r*k + s inside the window, and whether that maximum is positive),
// so the backward reads one byte per window instead of searching every window again, and applies
// the previous ReLU without reading the input.
#include <algorithm>

#include "core/error.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/pool_kernels.cuh"

namespace sq {
namespace cuda {

namespace {

PoolArgs args_of(const PoolGeom& g) {
  SQ_ASSERT(g.k > 0 && g.k <= 11 && g.stride > 0 && g.pad >= 0 && 2 * g.pad <= g.k,
            "bad pool geometry (window offsets must fit 7 bits of a byte: k at most 11)");
  const int P = g.P(), Q = g.Q();
  SQ_ASSERT(P > 0 && Q > 0, "pool output is empty: H=", g.H, " W=", g.W);
  SQ_ASSERT((long long)g.H * g.W < (1LL << 31) && (long long)g.N * g.C < (1LL << 31),
            "max-pool plane or plane count too large: ", g.H, "x", g.W, ", ", g.N, "x", g.C);
  return {g.N, g.C, g.H, g.W, g.k, g.stride, g.pad, P, Q};
}

// A plane (one image's channel) per grid column, its elements over the grid's rows of blocks.
dim3 plane_grid(const PoolArgs& a, long long per_plane) {
  const long long planes = (long long)a.N * a.C, chunks = (per_plane + kThreads - 1) / kThreads;
  return dim3(unsigned(std::max(1LL, std::min(planes, 1LL << 20))),
              unsigned(std::max(1LL, std::min(chunks, 65535LL))));
}

}  // namespace

void maxpool_forward(const PoolGeom& g, const float* x, float* y, uint8_t* argmax, cudaStream_t s) {
  const PoolArgs a = args_of(g);
  const dim3 grid = plane_grid(a, (long long)a.P * a.Q);
  if (a.k == 3 && a.stride == 2)
    maxpool_forward_kernel<3, 2><<<grid, kThreads, 0, s>>>(a, x, y, argmax);
  else
    maxpool_forward_kernel<<<grid, kThreads, 0, s>>>(a, x, y, argmax);
  SQ_CUDA_LAUNCH("maxpool_forward");
}

void maxpool_backward(const PoolGeom& g, const uint8_t* argmax, const float* dy, float* dx,
                      cudaStream_t s, bool relu_in) {
  const PoolArgs a = args_of(g);
  if (a.k == 3 && a.stride == 2) {  // (args_of: 2 * pad <= k, so pad is 0 or 1)
    const long long cells = (long long)((a.H + a.pad + 1) / 2) * ((a.W + a.pad + 1) / 2);
    maxpool_backward_k3s2_kernel<<<plane_grid(a, cells), kThreads, 0, s>>>(a, argmax, dy, dx, relu_in);
  } else {
    maxpool_backward_kernel<<<plane_grid(a, (long long)a.H * a.W), kThreads, 0, s>>>(a, argmax, dy, dx, relu_in);
  }
  SQ_CUDA_LAUNCH("maxpool_backward");
}

void avgpool_forward(int N, int C, int HW, const float* x, float* y, cudaStream_t s) {
  SQ_ASSERT(HW > 0, "avgpool over an empty plane");
  SQ_ASSERT((long long)N * C < (1LL << 31), "avgpool over 2^31 or more planes: ", N, "x", C);
  avgpool_forward_kernel<<<blocks_for(size_t(N) * C), kThreads, 0, s>>>(N, C, HW, x, y);
  SQ_CUDA_LAUNCH("avgpool_forward");
}

void avgpool_backward(int N, int C, int HW, const float* dy, float* dx, cudaStream_t s,
                      const float* relu_x) {
  SQ_ASSERT(HW > 0, "avgpool over an empty plane");
  SQ_ASSERT((long long)N * C * HW < (1LL << 31), "avgpool input of 2^31 or more elements: ", N, "x", C, "x", HW);
  avgpool_backward_kernel<<<blocks_for(size_t(N) * C * HW), kThreads, 0, s>>>(N, C, HW, dy, dx, relu_x);
  SQ_CUDA_LAUNCH("avgpool_backward");
}

}  // namespace cuda
}  // namespace sq
