// Max pooling (PyTorch's ceil_mode rule) and global average pooling, channel-major.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <limits>
#include <vector>

#include "core/error.h"
#include "kernels/ops.h"

namespace sq {

namespace {

using i64 = int64_t;

// Loops over fewer elements than this run on one thread: waking the team costs more.
constexpr i64 kParallelMin = 1 << 15;

inline int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// PyTorch's pooling_output_shape (dilation 1): floor or ceil of (L + 2*pad - k) / stride, + 1;
// in ceil mode a last window that starts in the (right) padding is dropped.
int pool_out(int L, int k, int stride, int pad, bool ceil_mode) {
  int out = floor_div(L + 2 * pad - k + (ceil_mode ? stride - 1 : 0), stride) + 1;
  if (ceil_mode && (out - 1) * stride >= L + pad) --out;
  return out;
}

void check_geom(const PoolGeom& g) {
  SQ_ASSERT(g.k > 0 && g.stride > 0 && g.pad >= 0 && 2 * g.pad <= g.k,
            "bad pool geometry: k=", g.k, " stride=", g.stride, " pad=", g.pad);
  SQ_ASSERT(g.P() > 0 && g.Q() > 0, "pool output is empty: H=", g.H, " W=", g.W);
}

// Window [h0, h1) x [w0, w1) of output (p, q), clipped to the input.
struct Window {
  int h0, h1, w0, w1;
};
inline Window window(const PoolGeom& g, int p, int q) {
  const int hs = p * g.stride - g.pad, ws = q * g.stride - g.pad;
  return {std::max(hs, 0), std::min(hs + g.k, g.H), std::max(ws, 0), std::min(ws + g.k, g.W)};
}

// Offset (h*W + w) of the window's first maximum, row-major ties to the first; NaN wins, as in
// PyTorch's CPU kernel.
template <class T>
inline i64 argmax(const PoolGeom& g, const T* plane, const Window& win, T& best) {
  i64 idx = i64(win.h0) * g.W + win.w0;
  best = -std::numeric_limits<T>::infinity();
  for (int h = win.h0; h < win.h1; ++h) {
    const T* row = plane + i64(h) * g.W;
    for (int w = win.w0; w < win.w1; ++w) {
      const T v = row[w];
      if (v > best || std::isnan(v)) {
        best = v;
        idx = i64(h) * g.W + w;
        if (std::isnan(v)) return idx;
      }
    }
  }
  return idx;
}

// The common case, a 3x3 window wholly inside the input: unrolled and branch-free, with the same
// semantics as argmax() (first maximum in row-major order; the first NaN wins).
template <class T>
inline i64 argmax3x3(const T* plane, i64 W, i64 off, T& best) {
  i64 idx = off;
  T m = plane[off];
  const i64 offs[8] = {1, 2, W, W + 1, W + 2, 2 * W, 2 * W + 1, 2 * W + 2};
  for (int j = 0; j < 8; ++j) {
    const T v = plane[off + offs[j]];
    const bool take = (v > m) | ((v != v) & (m == m));
    m = take ? v : m;
    idx = take ? off + offs[j] : idx;
  }
  best = m;
  return idx;
}

// argmax of output (p, q), taking the unrolled path when the window is a whole 3x3 inside.
template <class T>
inline i64 window_argmax(const PoolGeom& g, const T* plane, int p, int q, T& best) {
  const int hs = p * g.stride - g.pad, ws = q * g.stride - g.pad;
  if (g.k == 3 && hs >= 0 && ws >= 0 && hs + 3 <= g.H && ws + 3 <= g.W)
    return argmax3x3(plane, g.W, i64(hs) * g.W + ws, best);
  return argmax(g, plane, window(g, p, q), best);
}

// Widest output row the stack buffers of pool_row() hold; wider rows go through it in pieces.
constexpr int kRowChunk = 256;

// Columns [q_lo, q_hi) whose windows lie wholly inside the input horizontally.
inline void interior_cols(const PoolGeom& g, int Q, int& q_lo, int& q_hi) {
  q_lo = (g.pad + g.stride - 1) / g.stride;
  q_hi = g.W + g.pad - g.k >= 0 ? std::min(Q, (g.W + g.pad - g.k) / g.stride + 1) : 0;
  if (q_hi < q_lo) q_hi = q_lo = 0;
}

// Output row p, columns [qb, qe) (at most kRowChunk) of one plane: max value m[q - qb] and its
// input offset idx[q - qb] (h*W + w), with argmax()'s semantics (first maximum in row-major
// window order; the first NaN wins). Where the windows lie wholly inside the input (rows, and
// columns [q_lo, q_hi)) a vectorised path runs: for each window offset (dh, dw) in row-major
// order, one strided pass over q.
template <class T, int S>
void pool_row(const PoolGeom& g, const T* plane, int p, int qb, int qe, int q_lo, int q_hi,
              T* m, int32_t* idx) {
  const int hs = p * S - g.pad;
  int a = std::max(qb, q_lo), b = std::min(qe, q_hi);  // the vectorised range
  if (!(hs >= 0 && hs + g.k <= g.H) || a >= b) a = b = qe;
  for (int q = qb; q < qe; ++q) {
    if (q == a) q = b;
    if (q >= qe) break;
    T best;
    idx[q - qb] = int32_t(argmax(g, plane, window(g, p, q), best));
    m[q - qb] = best;
  }
  if (a >= b) return;
  const int W = g.W;
  T* __restrict mm = m - qb;
  int32_t* __restrict ii = idx - qb;
  {
    const int32_t base = int32_t(i64(hs) * W - g.pad + a * S);  // >= 0: a >= q_lo
    const T* __restrict row = plane + base;
#pragma omp simd
    for (int q = a; q < b; ++q) {
      mm[q] = row[(q - a) * S];
      ii[q] = base + (q - a) * S;
    }
  }
  for (int dh = 0; dh < g.k; ++dh) {
    for (int dw = dh == 0 ? 1 : 0; dw < g.k; ++dw) {
      const int32_t base = int32_t(i64(hs + dh) * W - g.pad + dw + a * S);
      const T* __restrict row = plane + base;
#pragma omp simd
      for (int q = a; q < b; ++q) {
        const T v = row[(q - a) * S];
        const T cur = mm[q];
        const bool take = (v > cur) | ((v != v) & (cur == cur));
        mm[q] = take ? v : cur;
        ii[q] = take ? base + (q - a) * S : ii[q];
      }
    }
  }
}

// Planes with output rows of at most kTableRow (the Fashion-MNIST model's three pools: 14x14,
// 7x7 and 3x3; squeezenet's last, 13x13) and at most kTableOutputs outputs go through a table
// instead of pool_row(): its nine passes over a row of 3 to 14 outputs cost more in loop set-up
// than in work (the Fashion-MNIST pool3 took 54 ns an output). At 27 outputs a row (squeezenet's
// pool2) the rows were 0-20 % faster, at 55 they were level (bench_step's maxpool/ rows,
// docs/BENCHMARKS.md).
constexpr int kTableRow = 16;
constexpr int kTableOutputs = 1024;

// SQUEEZE_POOL_TABLE=0 sends every plane through the row path: the benchmark's A/B switch
// (bench_step's maxpool/ rows), read once.
bool table_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("SQUEEZE_POOL_TABLE");
    return !(e && std::string(e) == "0");
  }();
  return on;
}

// For each window element j (row-major) and output o, the input offset table[j * PQ + o]; an
// element outside the input (a clipped window) repeats the window's first element inside it,
// which can never win against itself (not greater; a NaN there has already won), so that every
// window has k*k entries and argmax()'s semantics hold unchanged. Entry 0 is that first element
// (the top-left corner, or its stand-in where the corner lies in the padding): the running
// maximum starts there, as in argmax().
std::vector<int32_t> window_table(const PoolGeom& g, int P, int Q) {
  const int PQ = P * Q, K = g.k * g.k;
  std::vector<int32_t> t(size_t(K) * PQ);
  for (int p = 0; p < P; ++p)
    for (int q = 0; q < Q; ++q) {
      const Window win = window(g, p, q);
      const int32_t first = win.h0 * g.W + win.w0;
      const int hs = p * g.stride - g.pad, ws = q * g.stride - g.pad;
      for (int j = 0; j < K; ++j) {
        const int h = hs + j / g.k, w = ws + j % g.k;
        const bool inside = h >= 0 && h < g.H && w >= 0 && w < g.W;
        t[size_t(j) * PQ + p * Q + q] = inside ? h * g.W + w : first;
      }
    }
  return t;
}

// window_table() of the geometry, built at its first use on this thread and kept: a training
// step allocates nothing after its first (docs/ARCHITECTURE.md, "No allocation in the step").
// The caller's thread owns the cache; the OpenMP threads of its parallel loop only read it.
const int32_t* cached_window_table(const PoolGeom& g, int P, int Q) {
  struct Entry {
    int H, W, k, stride, pad;
    bool ceil_mode;
    std::vector<int32_t> table;
  };
  thread_local std::vector<Entry> cache;
  for (const Entry& e : cache)
    if (e.H == g.H && e.W == g.W && e.k == g.k && e.stride == g.stride && e.pad == g.pad &&
        e.ceil_mode == g.ceil_mode)
      return e.table.data();  // a moved vector keeps its buffer: earlier pointers stay valid
  cache.push_back({g.H, g.W, g.k, g.stride, g.pad, g.ceil_mode, window_table(g, P, Q)});
  return cache.back().table.data();
}

// Every output of one plane through the table: m[o], idx[o] as argmax() gives them.
template <class T>
void pool_plane_table(const T* __restrict plane, const int32_t* __restrict table, int PQ, int K,
                      T* __restrict m, int32_t* __restrict idx) {
#pragma omp simd
  for (int o = 0; o < PQ; ++o) {
    idx[o] = table[o];
    m[o] = plane[table[o]];
  }
  for (int j = 1; j < K; ++j) {
    const int32_t* __restrict tj = table + size_t(j) * PQ;
#pragma omp simd
    for (int o = 0; o < PQ; ++o) {
      const T v = plane[tj[o]];
      const T cur = m[o];
      const bool take = (v > cur) | ((v != v) & (cur == cur));
      m[o] = take ? v : cur;
      idx[o] = take ? tj[o] : idx[o];
    }
  }
}

// Calls f(p, qb, n, m, idx) for every piece [qb, qb + n) of every output row of one plane, m and
// idx holding the piece's max values and their input offsets. `table`: window_table() of a plane
// of at most kTableOutputs outputs, or null for the row path.
template <class T, class F>
void for_each_row(const PoolGeom& g, const T* plane, int P, int Q, const int32_t* table, F&& f) {
  if (table) {
    T m[kTableOutputs];
    int32_t idx[kTableOutputs];
    pool_plane_table(plane, table, P * Q, g.k * g.k, m, idx);
    for (int p = 0; p < P; ++p) f(p, 0, Q, m + p * Q, idx + p * Q);
    return;
  }
  int q_lo, q_hi;
  interior_cols(g, Q, q_lo, q_hi);
  T m[kRowChunk];
  int32_t idx[kRowChunk];
  for (int p = 0; p < P; ++p) {
    for (int qb = 0; qb < Q; qb += kRowChunk) {
      const int qe = std::min(Q, qb + kRowChunk);
      if (g.stride == 2)
        pool_row<T, 2>(g, plane, p, qb, qe, q_lo, q_hi, m, idx);
      else if (g.stride == 1)
        pool_row<T, 1>(g, plane, p, qb, qe, q_lo, q_hi, m, idx);
      else
        for (int q = qb; q < qe; ++q) {
          T best;
          idx[q - qb] = int32_t(window_argmax(g, plane, p, q, best));
          m[q - qb] = best;
        }
      f(p, qb, qe - qb, m, idx);
    }
  }
}

}  // namespace

int PoolGeom::P() const { return pool_out(H, k, stride, pad, ceil_mode); }
int PoolGeom::Q() const { return pool_out(W, k, stride, pad, ceil_mode); }

template <class T>
void maxpool_forward(const PoolGeom& g, const T* x, T* y) {
  check_geom(g);
  const int P = g.P(), Q = g.Q();
  const i64 HW = i64(g.H) * g.W, PQ = i64(P) * Q;
  const i64 work = i64(g.C) * g.N * (PQ * g.k * g.k + HW);
  const int32_t* tab =
      Q <= kTableRow && PQ <= kTableOutputs && table_enabled() ? cached_window_table(g, P, Q) : nullptr;
#pragma omp parallel for collapse(2) schedule(static) if (work > kParallelMin)
  for (int c = 0; c < g.C; ++c) {
    for (int n = 0; n < g.N; ++n) {
      const i64 plane = i64(c) * g.N + n;
      T* yp = y + plane * PQ;
      for_each_row(g, x + plane * HW, P, Q, tab,
                   [&](int p, int qb, int cnt, const T* m, const int32_t*) {
                     std::copy(m, m + cnt, yp + i64(p) * Q + qb);
                   });
    }
  }
}

template <class T>
void maxpool_backward(const PoolGeom& g, const T* x, const T* dy, T* dx) {
  check_geom(g);
  const int P = g.P(), Q = g.Q();
  const i64 HW = i64(g.H) * g.W, PQ = i64(P) * Q;
  const i64 work = i64(g.C) * g.N * (PQ * g.k * g.k + HW);
  const int32_t* tab =
      Q <= kTableRow && PQ <= kTableOutputs && table_enabled() ? cached_window_table(g, P, Q) : nullptr;
#pragma omp parallel for collapse(2) schedule(static) if (work > kParallelMin)
  for (int c = 0; c < g.C; ++c) {
    for (int n = 0; n < g.N; ++n) {
      const i64 plane = i64(c) * g.N + n;
      const T* dyp = dy + plane * PQ;
      T* dxp = dx + plane * HW;
      std::fill(dxp, dxp + HW, T(0));
      for_each_row(g, x + plane * HW, P, Q, tab,
                   [&](int p, int qb, int cnt, const T*, const int32_t* idx) {
                     const T* d = dyp + i64(p) * Q + qb;
                     for (int q = 0; q < cnt; ++q) dxp[idx[q]] += d[q];
                   });
    }
  }
}

template <class T>
void avgpool_forward(int N, int C, int HW, const T* x, T* y) {
  SQ_ASSERT(HW > 0, "avgpool over an empty plane");
  const double inv = 1.0 / HW;
#pragma omp parallel for collapse(2) schedule(static) if (i64(N) * C * HW > kParallelMin)
  for (int c = 0; c < C; ++c) {
    for (int n = 0; n < N; ++n) {
      const T* xp = x + (i64(c) * N + n) * HW;
      double acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int i = 0; i < HW; ++i) acc += double(xp[i]);
      y[i64(n) * C + c] = static_cast<T>(acc * inv);
    }
  }
}

template <class T>
void avgpool_backward(int N, int C, int HW, const T* dy, T* dx) {
  SQ_ASSERT(HW > 0, "avgpool over an empty plane");
  const T inv = T(1) / T(HW);
#pragma omp parallel for collapse(2) schedule(static) if (i64(N) * C * HW > kParallelMin)
  for (int c = 0; c < C; ++c) {
    for (int n = 0; n < N; ++n) {
      T* dxp = dx + (i64(c) * N + n) * HW;
      const T v = dy[i64(n) * C + c] * inv;
      std::fill(dxp, dxp + HW, v);
    }
  }
}

#define SQ_INSTANTIATE(T)                                                      \
  template void maxpool_forward<T>(const PoolGeom&, const T*, T*);             \
  template void maxpool_backward<T>(const PoolGeom&, const T*, const T*, T*);  \
  template void avgpool_forward<T>(int, int, int, const T*, T*);               \
  template void avgpool_backward<T>(int, int, int, const T*, T*);
SQ_INSTANTIATE(float)
SQ_INSTANTIATE(double)
#undef SQ_INSTANTIATE

}  // namespace sq
