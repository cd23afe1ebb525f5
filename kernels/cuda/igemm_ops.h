// The three products of the implicit-GEMM convolution as operand loaders: each says how to
// read element (m, k) of A, element (k, n) of B straight from the tensors, and where output
// (m, n) goes. Host and device code: kernels/cuda/conv.cu runs them in its tiled kernel, and
// tests/test_igemm.cpp runs them in a plain loop on the CPU against the CPU convolution, so the
// index arithmetic is checked on machines without a GPU.
#pragma once
#include <cstddef>

#include "core/rng.h"  // SQ_HOST_DEVICE

namespace sq {
namespace cuda {

struct Geo {
  int N, C, H, W, K, R, S, stride, pad, P, Q;

  // A 1x1 filter at stride 1 without padding: col(x) is x itself, read without index division.
  // (A run-time test, but the same for every thread of a launch: no divergence.)
  SQ_HOST_DEVICE bool pointwise() const { return R == 1 && S == 1 && stride == 1 && pad == 0; }

  // Element (crs, npq) of col(x), the im2col matrix (C*R*S x N*P*Q) of x (C, N, H, W): the
  // input under filter tap (r, s) of output pixel (img, p, q), or 0 in the padding.
  SQ_HOST_DEVICE float col(const float* x, int crs, int npq) const {
    if (pointwise()) return x[size_t(crs) * N * P * Q + npq];
    const int RS = R * S, PQ = P * Q;
    const int c = crs / RS, rs = crs % RS, r = rs / S, s = rs % S;
    const int img = npq / PQ, pq = npq % PQ, p = pq / Q, q = pq % Q;
    const int h = p * stride - pad + r, wc = q * stride - pad + s;
    if (h < 0 || h >= H || wc < 0 || wc >= W) return 0.0f;
    return x[((size_t(c) * N + img) * H + h) * W + wc];
  }
};

// Forward: A = w (K x CRS), B(k, n) = x at (c, img, p*st - pad + r, q*st - pad + s).
// kBAlongK: B's elements are adjacent in memory along k (not n), so the tile loader lets
// neighbouring threads take neighbouring k for coalesced reads.
struct FwdOp {
  static constexpr bool kBAlongK = false;
  Geo g;
  const float *x, *w, *b;
  float* y;
  bool relu;
  int M, N, Kd;
  SQ_HOST_DEVICE float a(int m, int k) const { return w[size_t(m) * Kd + k]; }
  SQ_HOST_DEVICE float bval(int k, int n) const { return g.col(x, k, n); }
  SQ_HOST_DEVICE void store(int m, int n, float v, int) const {
    if (b) v += b[m];
    if (relu) v = v > 0.0f ? v : 0.0f;
    y[size_t(m) * N + n] = v;
  }
};

// Backward data: A(c, (k, r, s)) = w[k, c, r, s]; B((k, r, s), (img, h, w)) = dz at
// (k, img, p, q) with h = p*st - pad + r, w = q*st - pad + s, where such p, q exist.
struct DataOp {
  static constexpr bool kBAlongK = false;
  Geo g;
  const float *w, *dz;
  float* dx;
  bool accumulate;
  int M, N, Kd;
  SQ_HOST_DEVICE float a(int m, int k) const {
    if (g.pointwise()) return w[size_t(k) * g.C + m];
    const int RS = g.R * g.S;
    const int ko = k / RS, rs = k % RS;
    return w[(size_t(ko) * g.C + m) * RS + rs];
  }
  SQ_HOST_DEVICE float bval(int k, int n) const {
    if (g.pointwise()) return dz[size_t(k) * N + n];
    const int RS = g.R * g.S, HW = g.H * g.W;
    const int ko = k / RS, rs = k % RS, r = rs / g.S, s = rs % g.S;
    const int img = n / HW, hw = n % HW, h = hw / g.W, wc = hw % g.W;
    const int ph = h + g.pad - r, qw = wc + g.pad - s;
    if (ph < 0 || qw < 0) return 0.0f;
    int p = ph, q = qw;
    if (g.stride != 1) {  // (no integer division at stride 1, the Fire's 3x3)
      if (ph % g.stride || qw % g.stride) return 0.0f;
      p = ph / g.stride, q = qw / g.stride;
    }
    if (p >= g.P || q >= g.Q) return 0.0f;
    return dz[((size_t(ko) * g.N + img) * g.P + p) * g.Q + q];
  }
  SQ_HOST_DEVICE void store(int m, int n, float v, int) const {
    float* o = dx + size_t(m) * N + n;
    *o = accumulate ? *o + v : v;
  }
};

// Backward weights, one split-K slice per blockIdx.z: A = dz (K x NPQ), B((img,p,q), (c,r,s)) =
// x at (c, img, p*st - pad + r, q*st - pad + s). Partial sums go to ws[z][m][n].
struct WeightOp {
  static constexpr bool kBAlongK = true;  // col(x)^T: k runs along the pixels
  Geo g;
  const float *x, *dz;
  float* ws;
  int M, N, Kd;
  SQ_HOST_DEVICE float a(int m, int k) const { return dz[size_t(m) * Kd + k]; }
  SQ_HOST_DEVICE float bval(int k, int n) const { return g.col(x, n, k); }  // col(x)^T
  SQ_HOST_DEVICE void store(int m, int n, float v, int z) const {
    ws[(size_t(z) * M + m) * N + n] = v;
  }
};

}  // namespace cuda
}  // namespace sq
