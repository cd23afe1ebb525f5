// The pooling kernels (launched by kernels/cuda/pool.cu). Kernel source only: the CPU tests run
// it under tests/simt_host.h.
#pragma once
#include <cstdint>

#include "kernels/cuda/kernel_util.cuh"
#include "kernels/cuda/pool_index.h"

namespace sq {
namespace cuda {
namespace {  // one copy per translation unit (the .cu file; the CPU tests)

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

}  // namespace
}  // namespace cuda
}  // namespace sq
