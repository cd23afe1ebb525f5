// Max-pool with ceil rounding (first maximum; a NaN wins and the first NaN takes the gradient,
// as in the CPU op) and the global average pool. The forward records each window's first
// maximum as a byte (its offset r*k + s inside the window), so the backward reads one byte per
// window instead of searching every window again.
#include "core/error.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/pool_index.h"

namespace sq {
namespace cuda {

namespace {

struct PoolArgs {
  int N, C, H, W, k, stride, pad, P, Q;
};

// Flat index (within the plane) of window (p, q)'s first maximum; its value in *best.
__device__ inline int window_argmax(const PoolArgs& a, const float* xp, int p, int q, float* best) {
  const int h0 = max(p * a.stride - a.pad, 0), h1 = min(p * a.stride - a.pad + a.k, a.H);
  const int w0 = max(q * a.stride - a.pad, 0), w1 = min(q * a.stride - a.pad + a.k, a.W);
  int arg = h0 * a.W + w0;
  float m = xp[arg];
  for (int h = h0; h < h1; ++h)
    for (int w = w0; w < w1; ++w) {
      const float v = xp[h * a.W + w];
      if (v > m || (isnan(v) && !isnan(m))) {
        m = v;
        arg = h * a.W + w;
      }
    }
  *best = m;
  return arg;
}

__global__ void maxpool_forward_kernel(PoolArgs a, const float* x, float* y, uint8_t* argmax) {
  const size_t total = size_t(a.C) * a.N * a.P * a.Q;
  SQ_GRID_STRIDE(i, total) {
    const int q = int(i % a.Q), p = int((i / a.Q) % a.P);
    const size_t plane = i / (size_t(a.P) * a.Q);
    float m;
    const int arg = window_argmax(a, x + plane * a.H * a.W, p, q, &m);
    y[i] = m;
    if (argmax) {
      const int r = arg / a.W - (p * a.stride - a.pad), c = arg % a.W - (q * a.stride - a.pad);
      argmax[i] = uint8_t(r * a.k + c);
    }
  }
}

// One thread per input element: the windows containing (h, w), in row-major (p, q) order, each
// adding its dy where its recorded first maximum is this element.
__global__ void maxpool_backward_kernel(PoolArgs a, const uint8_t* argmax, const float* dy, float* dx) {
  const size_t total = size_t(a.C) * a.N * a.H * a.W;
  SQ_GRID_STRIDE(i, total) {
    const int w = int(i % a.W), h = int((i / a.W) % a.H);
    const size_t plane = i / (size_t(a.H) * a.W);
    const uint8_t* ap = argmax + plane * a.P * a.Q;
    const float* dyp = dy + plane * a.P * a.Q;
    int p_lo, p_hi, q_lo, q_hi;
    windows_containing(h, a.k, a.stride, a.pad, a.P, &p_lo, &p_hi);
    windows_containing(w, a.k, a.stride, a.pad, a.Q, &q_lo, &q_hi);
    float g = 0.0f;
    for (int p = p_lo; p <= p_hi; ++p)
      for (int q = q_lo; q <= q_hi; ++q) {
        const int self = (h - (p * a.stride - a.pad)) * a.k + (w - (q * a.stride - a.pad));
        if (ap[p * a.Q + q] == self) g += dyp[p * a.Q + q];
      }
    dx[i] = g;
  }
}

// y (N, C) from x (C, N, HW): one thread per (n, c), summed in double in order, as on the CPU.
__global__ void avgpool_forward_kernel(int N, int C, int HW, const float* x, float* y) {
  const size_t total = size_t(N) * C;
  SQ_GRID_STRIDE(i, total) {
    const int c = int(i % C), n = int(i / C);
    const float* xp = x + (size_t(c) * N + n) * HW;
    double acc = 0;
    for (int j = 0; j < HW; ++j) acc += double(xp[j]);
    y[i] = float(acc * (1.0 / HW));
  }
}

__global__ void avgpool_backward_kernel(int N, int C, int HW, const float* dy, float* dx) {
  const size_t total = size_t(C) * N * HW;
  const float inv = 1.0f / float(HW);
  SQ_GRID_STRIDE(i, total) {
    const size_t cn = i / HW;
    const int n = int(cn % N), c = int(cn / N);
    dx[i] = dy[size_t(n) * C + c] * inv;
  }
}

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
