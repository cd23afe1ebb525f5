// Convolution on the CPU: im2col + one GEMM per chunk of images, channel-major activations.
//
//   forward:  Y (K x N*P*Q) = W (K x C*R*S) * col (C*R*S x N*P*Q), then bias (+ ReLU).
//   backward: dW += dz * col^T;  db += row sums of dz;  dcol = W^T * dz, col2im -> dx.
//
// Pointwise convolutions (1x1, stride 1, no padding) skip im2col: X (C, N, H, W) already is
// the C x N*H*W matrix. Other convolutions lower the batch in chunks of whole images (at most
// conv_chunk_limit() col elements, at least one image); a chunk's slice of Y or dz is the
// K x n*P*Q sub-matrix starting at column n0*P*Q with leading dimension N*P*Q, because each
// channel of a (K, N, P, Q) activation is one contiguous row.
//
// The workspace holds one col buffer; backward reuses it for dcol once dW has consumed col.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "kernels/cpu/conv_internal.h"
#include "kernels/ops.h"

namespace sq {

namespace cpu {

namespace {
std::atomic<size_t> g_chunk_limit{kDefaultConvChunkElems};
}

size_t conv_chunk_limit() { return g_chunk_limit.load(std::memory_order_relaxed); }
void set_conv_chunk_limit(size_t elems) {
  g_chunk_limit.store(elems, std::memory_order_relaxed);
}

int conv_chunk_images(const ConvGeom& g) {
  if (g.N <= 0) return 0;
  const size_t per_image =
      size_t(g.C) * g.R * g.S * size_t(std::max(g.P(), 0)) * size_t(std::max(g.Q(), 0));
  if (per_image == 0) return g.N;
  const size_t n = conv_chunk_limit() / per_image;
  return static_cast<int>(std::clamp<size_t>(n, 1, size_t(g.N)));
}

}  // namespace cpu

namespace {
std::atomic<OperandRounding> g_rounding{OperandRounding::kNone};
}  // namespace

void set_conv_operand_rounding(OperandRounding r) { g_rounding.store(r, std::memory_order_relaxed); }
OperandRounding conv_operand_rounding() { return g_rounding.load(std::memory_order_relaxed); }

float round_operand(float v, OperandRounding r) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if (r == OperandRounding::kNone || (u & 0x7F800000u) == 0x7F800000u) return v;  // inf, NaN
  if (r == OperandRounding::kTf32)
    u &= 0xFFFFE000u;  // the 13 dropped bits cut: the GPU kernels pass fp32 bits to mma (toward zero)
  else
    u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  std::memcpy(&v, &u, 4);
  return v;
}

size_t conv_workspace(const ConvGeom& g) {
  if (g.is_pointwise()) return 0;
  return size_t(g.C) * g.R * g.S * size_t(cpu::conv_chunk_images(g)) * g.P() * g.Q();
}

namespace {

using i64 = int64_t;

// Loops over fewer elements than this run on one thread: waking the team costs more.
constexpr i64 kParallelMin = 1 << 15;

// Output columns q whose input column q*stride - pad + s lies in [0, W): [lo, hi).
inline void valid_q(int Q, int W, int stride, int pad, int s, int& lo, int& hi) {
  const int a = pad - s;  // need q*stride >= a
  lo = a <= 0 ? 0 : (a + stride - 1) / stride;
  const int b = W - 1 + pad - s;  // need q*stride <= b
  hi = b < 0 ? 0 : b / stride + 1;
  hi = std::min(hi, Q);
  lo = std::min(lo, hi);
}

// col (C*R*S x nb*P*Q) from images [n0, n0 + nb) of x (C, N, H, W). Row (c, r, s), column
// (n, p, q). Each (row, image) pair writes one contiguous P*Q run; rows of x are copied with
// memcpy when stride == 1.
template <class T>
void im2col(const ConvGeom& g, const T* x, int n0, int nb, T* col) {
  const int H = g.H, W = g.W, R = g.R, S = g.S, st = g.stride, pad = g.pad;
  const int P = g.P(), Q = g.Q();
  const i64 PQ = i64(P) * Q, HW = i64(H) * W, ncols = i64(nb) * PQ;
  const i64 rows = i64(g.C) * R * S;
#pragma omp parallel for collapse(2) schedule(static) if (rows * ncols > kParallelMin)
  for (i64 row = 0; row < rows; ++row) {
    for (int n = 0; n < nb; ++n) {
      const int c = static_cast<int>(row / (R * S));
      const int rs = static_cast<int>(row % (R * S));
      const int r = rs / S, s = rs % S;
      const T* xp = x + (i64(c) * g.N + n0 + n) * HW;
      T* dst = col + row * ncols + n * PQ;
      int qlo, qhi;
      valid_q(Q, W, st, pad, s, qlo, qhi);
      const int w0 = s - pad;  // input column of q = 0
      for (int p = 0; p < P; ++p) {
        T* d = dst + i64(p) * Q;
        const int h = p * st - pad + r;
        if (h < 0 || h >= H) {
          std::fill(d, d + Q, T(0));
          continue;
        }
        const T* xr = xp + i64(h) * W + w0;
        std::fill(d, d + qlo, T(0));
        if (st == 1) {
          std::memcpy(d + qlo, xr + qlo, sizeof(T) * size_t(qhi - qlo));
        } else {
          for (int q = qlo; q < qhi; ++q) d[q] = xr[i64(q) * st];
        }
        std::fill(d + qhi, d + Q, T(0));
      }
    }
  }
}

// dx images [n0, n0 + nb) (=, or += if accumulate) the scatter-add of dcol. Each thread owns
// whole (c, n) planes of dx, so there are no races; planes not touched by any window are zeroed.
template <class T>
void col2im(const ConvGeom& g, const T* dcol, int n0, int nb, T* dx, bool accumulate) {
  const int H = g.H, W = g.W, R = g.R, S = g.S, st = g.stride, pad = g.pad;
  const int P = g.P(), Q = g.Q();
  const i64 PQ = i64(P) * Q, HW = i64(H) * W, ncols = i64(nb) * PQ;
  const i64 work = i64(g.C) * R * S * ncols;
#pragma omp parallel for collapse(2) schedule(static) if (work > kParallelMin)
  for (int c = 0; c < g.C; ++c) {
    for (int n = 0; n < nb; ++n) {
      T* dxp = dx + (i64(c) * g.N + n0 + n) * HW;
      if (!accumulate) std::fill(dxp, dxp + HW, T(0));
      for (int r = 0; r < R; ++r) {
        for (int s = 0; s < S; ++s) {
          const T* src = dcol + ((i64(c) * R + r) * S + s) * ncols + n * PQ;
          int qlo, qhi;
          valid_q(Q, W, st, pad, s, qlo, qhi);
          const int w0 = s - pad;
          for (int p = 0; p < P; ++p) {
            const int h = p * st - pad + r;
            if (h < 0 || h >= H) continue;
            T* d = dxp + i64(h) * W + w0;
            const T* sp = src + i64(p) * Q;
            if (st == 1) {
#pragma omp simd
              for (int q = qlo; q < qhi; ++q) d[q] += sp[q];
            } else {
              for (int q = qlo; q < qhi; ++q) d[i64(q) * st] += sp[q];
            }
          }
        }
      }
    }
  }
}

// The forward epilogue: rows [0, K) of y (leading dimension ld), columns [0, cols):
// y += b[k], then ReLU (NaN propagates, as in PyTorch).
template <class T>
void bias_act(T* y, int K, i64 cols, i64 ld, const T* b, bool relu) {
  if (!b && !relu) return;
  constexpr i64 kBlock = 8192;
  const i64 nblk = (cols + kBlock - 1) / kBlock;
#pragma omp parallel for collapse(2) schedule(static) if (i64(K) * cols > kParallelMin)
  for (int k = 0; k < K; ++k) {
    for (i64 blk = 0; blk < nblk; ++blk) {
      T* row = y + i64(k) * ld + blk * kBlock;
      const i64 len = std::min(kBlock, cols - blk * kBlock);
      const T bk = b ? b[k] : T(0);
      if (relu) {
#pragma omp simd
        for (i64 j = 0; j < len; ++j) {
          const T v = row[j] + bk;
          row[j] = v < T(0) ? T(0) : v;
        }
      } else {
#pragma omp simd
        for (i64 j = 0; j < len; ++j) row[j] += bk;
      }
    }
  }
}

// db[k] += sum over columns of dz row k (accumulated in double).
template <class T>
void bias_grad(const T* dz, int K, i64 cols, T* db) {
#pragma omp parallel for schedule(static) if (i64(K) * cols > kParallelMin)
  for (int k = 0; k < K; ++k) {
    const T* row = dz + i64(k) * cols;
    double acc = 0;
#pragma omp simd reduction(+ : acc)
    for (i64 j = 0; j < cols; ++j) acc += double(row[j]);
    db[k] += static_cast<T>(acc);
  }
}

void check_geom(const ConvGeom& g) {
  SQ_ASSERT(g.N >= 0 && g.C > 0 && g.K > 0 && g.R > 0 && g.S > 0 && g.stride > 0 && g.pad >= 0,
            "bad conv geometry");
  SQ_ASSERT(g.P() > 0 && g.Q() > 0, "conv output is empty: H=", g.H, " W=", g.W);
  SQ_ASSERT(i64(g.N) * g.P() * g.Q() < (i64(1) << 31) && i64(g.C) * g.R * g.S < (i64(1) << 31),
            "conv too large for 32-bit BLAS");
}

}  // namespace

namespace {
// Rounded copies of a float convolution's operands (conv_operand_rounding); doubles as they are.
struct Rounded {
  std::vector<float> buf;
  template <class T>
  const T* of(const T* p, size_t n) {
    const OperandRounding r = conv_operand_rounding();
    if constexpr (std::is_same_v<T, float>) {
      if (r != OperandRounding::kNone && p && n) {
        buf.resize(n);
#pragma omp parallel for schedule(static) if (n > size_t(kParallelMin))
        for (i64 i = 0; i < i64(n); ++i) buf[size_t(i)] = round_operand(p[i], r);
        return buf.data();
      }
    }
    return p;
  }
};
}  // namespace

template <class T>
void conv_forward(const ConvGeom& g, const T* x, const T* w, const T* b, T* y, bool relu, T* ws) {
  check_geom(g);
  if (g.N == 0) return;
  Rounded rx, rw;
  x = rx.of(x, size_t(g.C) * g.N * g.H * g.W);
  w = rw.of(w, size_t(g.K) * g.C * g.R * g.S);
  const i64 PQ = i64(g.P()) * g.Q(), NPQ = i64(g.N) * PQ;
  const int CRS = g.C * g.R * g.S;
  if (g.is_pointwise()) {
    gemm<T>(false, false, g.K, int(NPQ), g.C, T(1), w, g.C, x, int(NPQ), T(0), y, int(NPQ));
    bias_act(y, g.K, NPQ, NPQ, b, relu);
    return;
  }
  SQ_ASSERT(ws != nullptr, "conv_forward: workspace required");
  const int chunk = cpu::conv_chunk_images(g);
  for (int n0 = 0; n0 < g.N; n0 += chunk) {
    const int nb = std::min(chunk, g.N - n0);
    const i64 cols = i64(nb) * PQ;
    im2col(g, x, n0, nb, ws);
    T* yc = y + i64(n0) * PQ;
    gemm<T>(false, false, g.K, int(cols), CRS, T(1), w, CRS, ws, int(cols), T(0), yc, int(NPQ));
    bias_act(yc, g.K, cols, NPQ, b, relu);
  }
}

template <class T>
void conv_backward(const ConvGeom& g, const T* x, const T* w, const T* dz, T* dw, T* db, T* dx,
                   bool accumulate, T* ws) {
  check_geom(g);
  if (g.N == 0) {
    if (dx && !accumulate) std::fill(dx, dx + size_t(g.C) * g.N * g.H * g.W, T(0));
    return;
  }
  const i64 PQ = i64(g.P()) * g.Q(), NPQ = i64(g.N) * PQ;
  const int CRS = g.C * g.R * g.S;
  if (db) bias_grad(dz, g.K, NPQ, db);  // (dz unrounded)
  Rounded rx, rw, rdz;
  x = rx.of(x, size_t(g.C) * g.N * g.H * g.W);
  w = rw.of(w, size_t(g.K) * CRS);
  dz = rdz.of(dz, size_t(g.K) * size_t(NPQ));
  if (g.is_pointwise()) {
    // dW (K x C) += dz (K x NPQ) * X^T (NPQ x C);  dX (C x NPQ) = W^T (C x K) * dz.
    gemm<T>(false, true, g.K, g.C, int(NPQ), T(1), dz, int(NPQ), x, int(NPQ), T(1), dw, g.C);
    if (dx)
      gemm<T>(true, false, g.C, int(NPQ), g.K, T(1), w, g.C, dz, int(NPQ),
              accumulate ? T(1) : T(0), dx, int(NPQ));
    return;
  }
  SQ_ASSERT(ws != nullptr, "conv_backward: workspace required");
  const int chunk = cpu::conv_chunk_images(g);
  for (int n0 = 0; n0 < g.N; n0 += chunk) {
    const int nb = std::min(chunk, g.N - n0);
    const i64 cols = i64(nb) * PQ;
    const T* dzc = dz + i64(n0) * PQ;
    im2col(g, x, n0, nb, ws);
    // dW (K x CRS) += dz_chunk (K x cols) * col^T (cols x CRS)
    gemm<T>(false, true, g.K, CRS, int(cols), T(1), dzc, int(NPQ), ws, int(cols), T(1), dw, CRS);
    if (dx) {
      // dcol (CRS x cols) = W^T (CRS x K) * dz_chunk (K x cols), overwriting col.
      gemm<T>(true, false, CRS, int(cols), g.K, T(1), w, CRS, dzc, int(NPQ), T(0), ws, int(cols));
      col2im(g, ws, n0, nb, dx, accumulate);
    }
  }
}

#define SQ_INSTANTIATE(T)                                                                     \
  template void conv_forward<T>(const ConvGeom&, const T*, const T*, const T*, T*, bool, T*); \
  template void conv_backward<T>(const ConvGeom&, const T*, const T*, const T*, T*, T*, T*,   \
                                 bool, T*);
SQ_INSTANTIATE(float)
SQ_INSTANTIATE(double)
#undef SQ_INSTANTIATE

}  // namespace sq
