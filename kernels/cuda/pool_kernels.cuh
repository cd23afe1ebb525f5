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

// Flat index (within the plane) of window (p, q)'s first maximum; its value in *best. xp holds
// the plane's rows from h_base on (a band of them staged in shared memory; 0: the whole plane).
template <int K, int S>
__device__ inline int window_argmax(const PoolArgs& a, const Window<K, S>& win, const float* xp,
                                    int p, int q, float* best, int h_base = 0) {
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
        v[r * KK + c] = in[r * KK + c] ? xp[(h - h_base) * a.W + w] : 0.0f;
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
  float m = xp[(h0 - h_base) * a.W + w0];
  for (int h = h0; h < h1; ++h)
    for (int w = w0; w < w1; ++w) {
      const float v = xp[(h - h_base) * a.W + w];
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
// Window (p, q)'s argmax byte from window_argmax's flat index arg and maximum m.
template <int K, int S>
__device__ inline uint8_t argmax_byte(const PoolArgs& a, const Window<K, S>& win, int arg, int p, int q, float m) {
  const int r = arg / a.W - (p * win.stride - a.pad), c = arg % a.W - (q * win.stride - a.pad);
  return uint8_t(r * win.k + c) | uint8_t(m > 0.0f ? 0 : kNotPositive);
}

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
    if (argmax) argmax[i] = argmax_byte(a, win, arg, p, q, m);
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

// ---- The band kernels: the pools through shared memory (the default; SQUEEZE_POOL_BAND=0 runs the
// kernels above). In the kernels above each thread gathers its window (forward: 9 loads an
// output, consecutive lanes 2 columns apart) or its windows (backward) from global memory, and
// run d timed the three pools at 2-5x their bytes' time (0.84 ms forward, 0.93 backward, for 0.36
// and 0.36 of bytes). Here a block copies what an item needs into shared memory first, each
// element once, in order (a warp's copies one 128-byte line), with several copies a thread in
// flight; then each warp takes a row of outputs, its lanes along the row, windows read from
// shared memory, and stores whole lines. Same comparisons and sums in the same order: bit for bit
// the kernels above.
//
// An item is g whole planes (consecutive planes are consecutive in memory), or, for a plane
// larger than the staging buffer (the forward of pool1 at 224²: 109 x 109), a band of output
// rows and the input rows its windows reach.
constexpr int kPoolBandFloats = 6144;  // the staging buffer: 24 KB of floats (and as many bytes)
struct PoolBand {
  bool whole;    // an item is whole planes (else a band of one plane's output rows)
  int planes;    // whole planes an item (1 with bands)
  int rows;      // output rows an item (forward; P with whole planes)
  int bands;     // items a plane (1 with whole planes)
  int items;     // items in all
  bool ok;       // the launch fits: the kernels below may run it
};
// Items of as many whole planes of `plane` floats as fit in `cap` (plane <= cap; fewer than 2^31
// planes: pool.cu checks).
SQ_HOST_DEVICE inline PoolBand whole_planes(const PoolArgs& a, long long planes, long long plane, int cap) {
  PoolBand b{true, 1, a.P, 1, 0, true};
  b.planes = int(cap / plane < planes ? cap / plane : planes);
  b.items = int((planes + b.planes - 1) / b.planes);
  return b;
}
// The forward's items: whole planes if one fits in `cap` floats, else bands of output rows whose
// input rows fit.
SQ_HOST_DEVICE inline PoolBand pool_band_forward(const PoolArgs& a, int cap = kPoolBandFloats) {
  const long long planes = (long long)a.N * a.C, plane = (long long)a.H * a.W;
  if (plane <= cap) return whole_planes(a, planes, plane, cap);
  PoolBand b{false, 1, a.P, 1, 0, false};
  const int in_rows = cap / a.W;
  if (in_rows < a.k) return b;  // not even one output row's windows fit
  b.rows = (in_rows - a.k) / a.stride + 1;
  b.bands = (a.P + b.rows - 1) / b.rows;
  b.items = int(planes * b.bands);
  b.ok = planes * b.bands < (1LL << 31);
  return b;
}
// The backward's items: whole planes of dy and argmax bytes (never bands: dy's plane is a quarter
// of x's; one that does not fit takes the kernels above).
SQ_HOST_DEVICE inline PoolBand pool_band_backward(const PoolArgs& a, int cap = kPoolBandFloats) {
  const long long planes = (long long)a.N * a.C, plane = (long long)a.P * a.Q;
  if (plane > cap) return PoolBand{true, 1, a.P, 1, 0, false};
  return whole_planes(a, planes, plane, cap);
}

// n elements from src to dst (shared memory) by the block, in order, 8 loads a thread in flight
// before their stores.
template <class T>
__device__ inline void stage_block(T* dst, const T* src, int n) {
  constexpr int U = 8;
  for (int i0 = int(threadIdx.x); i0 < n; i0 += U * int(blockDim.x)) {
    T v[U];
    SQ_UNROLL
    for (int u = 0; u < U; ++u) {
      const int i = i0 + u * int(blockDim.x);
      if (i < n) v[u] = src[i];
    }
    SQ_UNROLL
    for (int u = 0; u < U; ++u) {
      const int i = i0 + u * int(blockDim.x);
      if (i < n) dst[i] = v[u];
    }
  }
}

// Five blocks an SM for the 3x3 stride-2 window (48 registers, no spills on sm_90); four for the
// generic one, which spills at five.
template <int K = 0, int S = 0>
__global__ void __launch_bounds__(kThreads, K > 0 ? 5 : 4)
    maxpool_forward_band_kernel(PoolArgs a, PoolBand b, const float* x, float* y, uint8_t* argmax) {
  __shared__ float band[kPoolBandFloats];
  SQ_FRESH_SHARED(band);
  const Window<K, S> win(a);
  const int planes = a.N * a.C, HW = a.H * a.W, PQ = a.P * a.Q;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, warps = int(blockDim.x) / 32;
  for (int item = int(blockIdx.x); item < b.items; item += int(gridDim.x)) {
    const int plane0 = item / b.bands * b.planes, p0 = item % b.bands * b.rows;
    const int g = min(b.planes, planes - plane0), p1 = min(a.P, p0 + b.rows);
    // Input rows [h_lo, h_hi) of each plane: all of them for whole planes, else those the band's
    // windows reach (inside the plane).
    const int h_lo = b.whole ? 0 : max(0, p0 * win.stride - a.pad);
    const int h_hi = b.whole ? a.H : min(a.H, (p1 - 1) * win.stride - a.pad + win.k);
    stage_block(band, x + size_t(plane0) * HW + size_t(h_lo) * a.W, b.whole ? g * HW : (h_hi - h_lo) * a.W);
    __syncthreads();
    const int rows = p1 - p0;
    for (int r = warp; r < g * rows; r += warps) {
      const int pl = r / rows, p = p0 + (r - pl * rows);
      const float* xp = band + pl * HW;  // (bands: pl is 0)
      const size_t out = size_t(plane0 + pl) * PQ + size_t(p) * a.Q;
      for (int q = lane; q < a.Q; q += 32) {
        float m;
        const int arg = window_argmax(a, win, xp, p, q, &m, h_lo);
        y[out + q] = m;
        if (argmax) argmax[out + q] = argmax_byte(a, win, arg, p, q, m);
      }
    }
    __syncthreads();  // the band is staged again for the next item
  }
}

template <int K = 0, int S = 0>
__global__ void __launch_bounds__(kThreads, K > 0 ? 5 : 4)
    maxpool_backward_band_kernel(PoolArgs a, PoolBand b, const uint8_t* argmax, const float* dy, float* dx,
                                 bool relu_in = false) {
  __shared__ float dys[kPoolBandFloats];
  __shared__ uint8_t args[kPoolBandFloats];
  SQ_FRESH_SHARED(dys);
  SQ_FRESH_SHARED(args);
  const uint8_t keep = argmax_bits(relu_in);
  const Window<K, S> win(a);
  const int planes = a.N * a.C, PQ = a.P * a.Q;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, warps = int(blockDim.x) / 32;
  for (int item = int(blockIdx.x); item < b.items; item += int(gridDim.x)) {
    const int plane0 = item * b.planes, g = min(b.planes, planes - plane0);
    stage_block(dys, dy + size_t(plane0) * PQ, g * PQ);
    stage_block(args, argmax + size_t(plane0) * PQ, g * PQ);
    __syncthreads();
    for (int r = warp; r < g * a.H; r += warps) {
      const int pl = r / a.H, h = r - pl * a.H;
      const float* dyp = dys + pl * PQ;
      const uint8_t* ap = args + pl * PQ;
      int p_lo, p_hi;
      windows_containing(h, win.k, win.stride, a.pad, a.P, &p_lo, &p_hi);
      float* dxr = dx + (size_t(plane0 + pl) * a.H + size_t(h)) * a.W;
      for (int w = lane; w < a.W; w += 32) {
        int q_lo, q_hi;
        windows_containing(w, win.k, win.stride, a.pad, a.Q, &q_lo, &q_hi);
        float gsum = 0.0f;  // the windows in (p, q) order, as maxpool_backward_kernel
        for (int p = p_lo; p <= p_hi; ++p)
          for (int q = q_lo; q <= q_hi; ++q) {
            const int self = (h - (p * win.stride - a.pad)) * win.k + (w - (q * win.stride - a.pad));
            if ((ap[p * a.Q + q] & keep) == self) gsum += dyp[p * a.Q + q];
          }
        dxr[w] = gsum;
      }
    }
    __syncthreads();
  }
}

// y (N, C) from x (C, N, HW): one thread per plane (c, n), summed in double in order, as on the
// CPU. Neighbouring threads take neighbouring planes, so a warp reads one contiguous 32 HW-float
// stretch. Threads by output (n, c) had their planes N HW floats apart (86 KB for conv10's
// output at batch 128): 0.095 ms in run c for 0.02 of bytes.
// Plane i = (c, n)'s mean into y (N, C): its HW values summed in order in double, as on the CPU.
__device__ inline void store_plane_mean(int N, int C, int HW, unsigned i, const float* xp, float* y) {
  double acc = 0;
  for (int j = 0; j < HW; ++j) acc += double(xp[j]);
  const unsigned c = i / unsigned(N), n = i - c * unsigned(N);
  y[size_t(n) * C + c] = float(acc * (1.0 / HW));
}
__global__ void avgpool_forward_kernel(int N, int C, int HW, const float* x, float* y) {
  SQ_GRID_STRIDE(i, size_t(N) * C) store_plane_mean(N, C, HW, unsigned(i), x + i * HW, y);
}

// The same through shared memory, for planes of at most kAvgMaxHW elements (conv10's output is 13
// x 13 at 224²). A thread a plane read its plane along its own column of x, so that each load of a
// warp touched 32 lines: 0.053 ms in run d for 0.02 of bytes. Here a block takes 32 consecutive
// planes (contiguous in x), copies them into shared memory with whole-line loads, and its first
// warp sums one plane a lane, in the same order, in double: bit for bit the kernel above. (For an
// odd HW, as 169, the lanes' reads fall in distinct banks.)
constexpr int kAvgPlanes = 32, kAvgMaxHW = 192;
__global__ void avgpool_forward_staged_kernel(int N, int C, int HW, const float* x, float* y) {
  __shared__ float planes_s[kAvgPlanes * kAvgMaxHW];
  SQ_FRESH_SHARED(planes_s);
  const int planes = N * C;
  for (int p0 = int(blockIdx.x) * kAvgPlanes; p0 < planes; p0 += int(gridDim.x) * kAvgPlanes) {
    const int g = min(kAvgPlanes, planes - p0);
    stage_block(planes_s, x + size_t(p0) * HW, g * HW);
    __syncthreads();
    if (int(threadIdx.x) < g)
      store_plane_mean(N, C, HW, unsigned(p0) + threadIdx.x, planes_s + threadIdx.x * HW, y);
    __syncthreads();  // the planes are staged again for the next item
  }
}

// dx (C, N, HW) from dy (N, C), fewer than 2^31 elements (pool.cu checks). A warp a plane (c, n),
// its lanes along the plane: the plane's (c, n) and dy's value once a warp. Three 64-bit divisions
// an element made this take 0.133 ms in run c, and two 32-bit ones still 0.123 in run d (with the
// loss), where its bytes (x's ReLU mask read, dx written: 172 MB for conv10's output at batch 128)
// take 0.04. blockDim.x a multiple of 32.
__global__ void avgpool_backward_kernel(int N, int C, int HW, const float* dy, float* dx,
                                        const float* relu_x = nullptr) {
  const float inv = 1.0f / float(HW);
  SQ_WARP_PLANES(cn, lane, unsigned(C) * unsigned(N)) {
    const unsigned c = cn / unsigned(N), n = cn - c * unsigned(N);
    const float g = dy[size_t(n) * C + c] * inv;
    const size_t base = size_t(cn) * unsigned(HW);
    for (unsigned j = lane; j < unsigned(HW); j += 32)
      dx[base + j] = !relu_x || relu_x[base + j] > 0.0f ? g : 0.0f;
  }
}

}  // namespace
}  // namespace cuda
}  // namespace sq
