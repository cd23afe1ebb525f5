// Max-pool with ceil rounding (first maximum; a NaN wins and the first NaN takes the gradient,
// as in the CPU op) and the global average pool. The forward records each window's first
// maximum as a byte (its offset r*k + s inside the window, and whether that maximum is positive),
// so the backward reads one byte per window instead of searching every window again, and applies
// the previous ReLU without reading the input. Both max-pool passes stage their input through
// shared memory (the band kernels) where it fits, which is everywhere in the model family;
// SQUEEZE_POOL_BAND=0 selects the gathering kernels instead (same results bit for bit).
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

const bool g_band = !env_is("SQUEEZE_POOL_BAND", "0");

// The band kernels' grid: an item a block, at most 2^20 blocks (they stride over the rest).
unsigned band_grid(const PoolBand& b) { return unsigned(std::max(1, std::min(b.items, 1 << 20))); }
// The staging a launch uses, in floats: the whole buffer, unless that would leave fewer than
// about 2048 items (5 blocks an SM of the H200's 132, three times over): a small tensor (the
// Fashion-MNIST configuration's) then stages fewer planes an item, so that every SM has blocks.
int band_cap(long long total, long long plane) {
  return int(std::min<long long>(kPoolBandFloats, std::max(plane, total / 2048)));
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
  const long long HW = (long long)a.H * a.W;
  const PoolBand b = pool_band_forward(a, band_cap(HW * a.N * a.C, HW));
  if (g_band && b.ok) {
    if (a.k == 3 && a.stride == 2)
      maxpool_forward_band_kernel<3, 2><<<band_grid(b), kThreads, 0, s>>>(a, b, x, y, argmax);
    else
      maxpool_forward_band_kernel<<<band_grid(b), kThreads, 0, s>>>(a, b, x, y, argmax);
    SQ_CUDA_LAUNCH("maxpool_forward (band)");
    return;
  }
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
  const long long PQ = (long long)a.P * a.Q;
  const PoolBand b = pool_band_backward(a, band_cap(PQ * a.N * a.C, PQ));
  if (g_band && b.ok) {
    if (a.k == 3 && a.stride == 2)
      maxpool_backward_band_kernel<3, 2><<<band_grid(b), kThreads, 0, s>>>(a, b, argmax, dy, dx, relu_in);
    else
      maxpool_backward_band_kernel<<<band_grid(b), kThreads, 0, s>>>(a, b, argmax, dy, dx, relu_in);
    SQ_CUDA_LAUNCH("maxpool_backward (band)");
    return;
  }
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
  if (HW <= kAvgMaxHW) {  // 32 planes a block, staged in shared memory
    avgpool_forward_staged_kernel<<<blocks_for(size_t(N) * C, kAvgPlanes), kThreads, 0, s>>>(N, C, HW, x, y);
  } else {
    avgpool_forward_kernel<<<blocks_for(size_t(N) * C), kThreads, 0, s>>>(N, C, HW, x, y);
  }
  SQ_CUDA_LAUNCH("avgpool_forward");
}

void avgpool_backward(int N, int C, int HW, const float* dy, float* dx, cudaStream_t s,
                      const float* relu_x) {
  SQ_ASSERT(HW > 0, "avgpool over an empty plane");
  SQ_ASSERT((long long)N * C * HW < (1LL << 31), "avgpool input of 2^31 or more elements: ", N, "x", C, "x", HW);
  // A warp a plane: N * C warps, at most 65535 * 8 blocks (they stride over the rest).
  avgpool_backward_kernel<<<blocks_for(size_t(N) * C * 32), kThreads, 0, s>>>(N, C, HW, dy, dx, relu_x);
  SQ_CUDA_LAUNCH("avgpool_backward");
}

}  // namespace cuda
}  // namespace sq
