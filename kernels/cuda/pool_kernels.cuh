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

// The max-pool kernels take the window size K and stride S as template arguments where they are
// the model family's (3 and 2: divisions by the stride become shifts, window loops fixed-length),
// and 0 for "read them from PoolArgs" otherwise; pool.cu picks.
template <int K, int S>
struct Window {
  int k, stride;
  __device__ explicit Window(const PoolArgs& a) : k(K ? K : a.k), stride(S ? S : a.stride) {}
};

// Flat index (within the plane) of window (p, q)'s first maximum; its value in *best.
template <int K, int S>
__device__ inline int window_argmax(const PoolArgs& a, const Window<K, S>& win, const float* xp,
                                    int p, int q, float* best) {
  const int hs = p * win.stride - a.pad, ws = q * win.stride - a.pad;
  if (K > 0) {
    // A compile-time window: its elements inside the plane loaded first (the others never read),
    // then the generic scan's order over them. One path for every window, so that a warp whose
    // windows reach past the plane (the last row and column at ceil rounding: pool2 of
    // squeezenet1.0, 54 -> 27, has one in every 27 outputs, in nearly every warp) does not run
    // both the scan of whole windows and the generic loop.
    constexpr int KK = K > 0 ? K : 1;
    float v[KK * KK];
    bool in[KK * KK];
    SQ_UNROLL
    for (int r = 0; r < KK; ++r)
      SQ_UNROLL
      for (int c = 0; c < KK; ++c) {
        const int h = hs + r, w = ws + c;
        in[r * KK + c] = h >= 0 && h < a.H && w >= 0 && w < a.W;
        v[r * KK + c] = in[r * KK + c] ? xp[h * a.W + w] : 0.0f;
      }
    int at = -1;
    float m = 0.0f;
    SQ_UNROLL
    for (int i = 0; i < KK * KK; ++i)
      if (in[i] && (at < 0 || v[i] > m || (isnan(v[i]) && !isnan(m)))) {
        m = v[i];
        at = i;
      }
    *best = m;
    return (hs + at / KK) * a.W + ws + at % KK;
  }
  const int h0 = max(hs, 0), h1 = min(hs + win.k, a.H);
  const int w0 = max(ws, 0), w1 = min(ws + win.k, a.W);
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

// The max-pool kernels stride over planes (a channel of an image) along the grid's x and over a
// plane's elements along y, so that an element's row and column come from one 32-bit division
// by the width (a plane has fewer than 2^31 elements; pool.cu checks): the per-element 64-bit
// divisions of a flat index made the backward of pool1 take 10x its bytes' time on the H200.
#define SQ_PLANE_STRIDE(plane, j, planes, per_plane)                                          \
  for (unsigned plane = blockIdx.x; plane < unsigned(planes); plane += gridDim.x)              \
    for (unsigned j = blockIdx.y * blockDim.x + threadIdx.x; j < unsigned(per_plane);           \
         j += blockDim.x * gridDim.y)

// An argmax byte: the window's first maximum as its offset r*k + s (windows of at most 11 x 11:
// pool.cu checks), and kNotPositive where that maximum is not above zero (0, negative or NaN).
// The backward that also applies the ReLU whose output is the pool's input (relu_in) drops such
// windows' dy: the ReLU mask at an element that is some window's maximum is that maximum > 0, and
// an element that is no window's maximum gets 0 either way. So it needs no read of the input (for
// pool1 of squeezenet1.0 at batch 128, 584 MB of the backward's 1.35 GB), and dx is bit for bit
// the gather followed by dx = x > 0 ? dx : 0.
constexpr uint8_t kNotPositive = 0x80;
// What of an argmax byte the backward compares with an offset: all of it under relu_in (a flagged
// byte then matches none), else the offset alone.
__device__ inline uint8_t argmax_bits(bool relu_in) { return relu_in ? 0xFF : uint8_t(~kNotPositive); }

template <int K = 0, int S = 0>
__global__ void maxpool_forward_kernel(PoolArgs a, const float* x, float* y, uint8_t* argmax) {
  const Window<K, S> win(a);
  const unsigned PQ = unsigned(a.P) * unsigned(a.Q);
  SQ_PLANE_STRIDE(plane, pq, size_t(a.C) * a.N, PQ) {
    const int p = int(pq / unsigned(a.Q)), q = int(pq - unsigned(p) * unsigned(a.Q));
    const size_t i = size_t(plane) * PQ + pq;
    float m;
    const int arg = window_argmax(a, win, x + size_t(plane) * a.H * a.W, p, q, &m);
    y[i] = m;
    if (argmax) {
      const int r = arg / a.W - (p * win.stride - a.pad), c = arg % a.W - (q * win.stride - a.pad);
      argmax[i] = uint8_t(r * win.k + c) | uint8_t(m > 0.0f ? 0 : kNotPositive);
    }
  }
}

// One thread per input element: the windows containing (h, w), in row-major (p, q) order, each
// adding its dy where its recorded first maximum is this element.
// (relu_in, in both backwards: see kNotPositive and cuda_ops.h.)
template <int K = 0, int S = 0>
__global__ void maxpool_backward_kernel(PoolArgs a, const uint8_t* argmax, const float* dy, float* dx,
                                        bool relu_in = false) {
  const uint8_t keep = argmax_bits(relu_in);
  const Window<K, S> win(a);
  const unsigned HW = unsigned(a.H) * unsigned(a.W);
  SQ_PLANE_STRIDE(plane, hw, size_t(a.C) * a.N, HW) {
    const int h = int(hw / unsigned(a.W)), w = int(hw - unsigned(h) * unsigned(a.W));
    const uint8_t* ap = argmax + size_t(plane) * a.P * a.Q;
    const float* dyp = dy + size_t(plane) * a.P * a.Q;
    int p_lo, p_hi, q_lo, q_hi;
    windows_containing(h, win.k, win.stride, a.pad, a.P, &p_lo, &p_hi);
    windows_containing(w, win.k, win.stride, a.pad, a.Q, &q_lo, &q_hi);
    float g = 0.0f;
    for (int p = p_lo; p <= p_hi; ++p)
      for (int q = q_lo; q <= q_hi; ++q) {
        const int self = (h - (p * win.stride - a.pad)) * win.k + (w - (q * win.stride - a.pad));
        if ((ap[p * a.Q + q] & keep) == self) g += dyp[p * a.Q + q];
      }
    dx[size_t(plane) * HW + hw] = g;
  }
}

// The backward for the model family's window (3x3, stride 2, padding 0 or 1), one thread per
// 2x2 cell of the input: rows h with h + pad in {2cp, 2cp + 1}, columns likewise. The cell's
// elements lie only in windows cp - 1 and cp (rows) and cq - 1 and cq (columns): window cp - 1 + i
// holds row 2cp - pad + dh at offset 2 - 2i + dh, so only where i = 1 or dh = 0. The thread loads
// the four windows' argmax bytes and dy values first, all independent of each other; the
// per-element kernel above chained up to four dependent (byte, then dy) loads per element, and
// their latency, not bytes, limited pool1's backward on the H200 (1.5 ms against 0.18 of bytes).
// Each element sums its windows in the per-element kernel's (p, q) order, so the result is the
// same bit for bit.
__global__ void maxpool_backward_k3s2_kernel(PoolArgs a, const uint8_t* argmax, const float* dy, float* dx,
                                             bool relu_in = false) {
  const uint8_t keep = argmax_bits(relu_in);
  const int CQ = (a.W + a.pad + 1) / 2;
  const unsigned cells = unsigned((a.H + a.pad + 1) / 2) * unsigned(CQ);
  const unsigned HW = unsigned(a.H) * unsigned(a.W), PQ = unsigned(a.P) * unsigned(a.Q);
  SQ_PLANE_STRIDE(plane, j, size_t(a.C) * a.N, cells) {
    const int cp = int(j / unsigned(CQ)), cq = int(j - unsigned(cp) * unsigned(CQ));
    const uint8_t* ap = argmax + size_t(plane) * PQ;
    const float* dyp = dy + size_t(plane) * PQ;
    int sel[2][2];
    float v[2][2];
    for (int i = 0; i < 2; ++i)
      for (int jj = 0; jj < 2; ++jj) {
        const int p = cp - 1 + i, q = cq - 1 + jj;
        const bool in = p >= 0 && p < a.P && q >= 0 && q < a.Q;
        sel[i][jj] = in ? int(ap[p * a.Q + q] & keep) : -1;  // -1: no window there
        v[i][jj] = in ? dyp[p * a.Q + q] : 0.0f;
      }
    for (int dh = 0; dh < 2; ++dh)
      for (int dw = 0; dw < 2; ++dw) {
        const int h = 2 * cp - a.pad + dh, w = 2 * cq - a.pad + dw;
        if (h < 0 || h >= a.H || w < 0 || w >= a.W) continue;
        float g = 0.0f;
        for (int i = dh; i < 2; ++i)  // (dh = 1: window cp only)
          for (int jj = dw; jj < 2; ++jj)
            if (sel[i][jj] == (2 - 2 * i + dh) * 3 + (2 - 2 * jj + dw)) g += v[i][jj];
        dx[size_t(plane) * HW + unsigned(h) * unsigned(a.W) + unsigned(w)] = g;
      }
  }
}

// y (N, C) from x (C, N, HW): one thread per plane (c, n), summed in double in order, as on the
// CPU. Neighbouring threads take neighbouring planes, so a warp reads one contiguous 32 HW-float
// stretch. Threads by output (n, c) had their planes N HW floats apart (86 KB for conv10's
// output at batch 128): 0.095 ms in run c for 0.02 of bytes.
__global__ void avgpool_forward_kernel(int N, int C, int HW, const float* x, float* y) {
  const size_t total = size_t(N) * C;
  SQ_GRID_STRIDE(i, total) {
    const unsigned c = unsigned(i) / unsigned(N), n = unsigned(i) - c * unsigned(N);
    const float* xp = x + i * HW;
    double acc = 0;
    for (int j = 0; j < HW; ++j) acc += double(xp[j]);
    y[size_t(n) * C + c] = float(acc * (1.0 / HW));
  }
}

// dx (C, N, HW) from dy (N, C), fewer than 2^31 elements (pool.cu checks): the plane's (c, n) by
// 32-bit divisions. Three 64-bit divisions an element, about 200 instructions, made this take
// 0.133 ms in run c where its bytes take 0.04.
__global__ void avgpool_backward_kernel(int N, int C, int HW, const float* dy, float* dx,
                                        const float* relu_x = nullptr) {
  const size_t total = size_t(C) * N * HW;
  const float inv = 1.0f / float(HW);
  SQ_GRID_STRIDE(i, total) {
    const unsigned cn = unsigned(i) / unsigned(HW), c = cn / unsigned(N), n = cn - c * unsigned(N);
    dx[i] = !relu_x || relu_x[i] > 0.0f ? dy[size_t(n) * C + c] * inv : 0.0f;
  }
}

}  // namespace
}  // namespace cuda
}  // namespace sq
