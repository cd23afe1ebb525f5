// The three products of the implicit-GEMM convolution as operand loaders: each says how to
// read element (m, k) of A, element (k, n) of B straight from the tensors, and where output
// (m, n) goes. Host and device code: kernels/cuda/conv.cu runs them in its tiled kernels, and
// tests/test_igemm.cpp runs them in a plain loop on the CPU against the CPU convolution, so the
// index arithmetic is checked on machines without a GPU.
//
// No division per element: an element's flat index splits into a part that depends on its k
// only and a part that depends on its n only. Each op describes a k by a Key (kkey(k)) and an n
// by a Key (nkey(n)), each computed once with the divisions; the kernels keep the keys of a
// block's columns, or of its thread's column, for the whole kernel and those of one k-step in
// shared memory per step, and an element is an addition, an AND and a compare away (Key).
// Offsets are 32-bit: launch checks that every tensor has fewer than 2^31 elements.
#pragma once
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/error.h"
#include "core/rng.h"  // SQ_HOST_DEVICE

namespace sq {
namespace cuda {

// A k or an n of a product's B operand (Geo::tap_key, Geo::pix_key): an offset, and bits for the
// padding test. B(k, n) lives at base + (tap.off + pix.off) if the pixel's bits hold every bit of
// the tap's, and is 0 otherwise: one AND and one compare, where the entries before 1f47a61 (a tap's
// offset, r and s, a pixel's offset and corner) took two bounds tests and six table reads a B
// element, with branches between them. A tap's bits are bit r and bit 16 + s; a pixel's, bit r
// for every filter row r that lands inside the input (for the input gradient: on an output row),
// and bit 16 + s for every such column. R and S at most 15 (keys_fit): a pixel's bits then never
// fill a half, and no pixel holds kNoTap. 8-byte aligned: one shared-memory load a key.
struct alignas(8) Key {
  int off;
  unsigned bits;
};
constexpr unsigned kNoTap = ~0u, kNoPix = 0u;  // a k or n past the product's edge: matches nothing
SQ_HOST_DEVICE inline unsigned tap_bits(int r, int s) { return (1u << r) | (1u << (16 + s)); }
// (The address is formed whether or not it is used: a select, no branch, and both halves of a key
// read together.)
SQ_HOST_DEVICE inline const float* keyed(const float* base, const Key& tap, const Key& pix) {
  const float* p = base + (tap.off + pix.off);
  return (tap.bits & pix.bits) == tap.bits ? p : nullptr;
}
// The element's value, for the register-staged kernels: a load under the test (no pointer
// compared with null).
SQ_HOST_DEVICE inline float keyed_value(const float* base, const Key& tap, const Key& pix) {
  return (tap.bits & pix.bits) == tap.bits ? base[tap.off + pix.off] : 0.0f;
}

struct Geo {
  int N, C, H, W, K, R, S, stride, pad, P, Q;

  // col(x), the im2col matrix (C*R*S x N*P*Q) of x (C, N, H, W): element (crs, npq) is the input
  // under filter tap (c, r, s) of output pixel (img, p, q), or 0 in the padding. Its flat index
  // in x is Tap.off + Pix.off, with c*N*H*W + r*W + s in the tap and img*H*W + h0*W + w0 in the
  // pixel, h0 = p*stride - pad and w0 = q*stride - pad the corner of the pixel's window.
  struct Tap {
    int off, r, s;
  };
  struct Pix {
    int off, h0, w0;
  };
  SQ_HOST_DEVICE Tap tap(int crs) const {
    const int RS = R * S, c = crs / RS, rs = crs - c * RS, r = rs / S, s = rs - r * S;
    return {c * N * H * W + r * W + s, r, s};
  }
  SQ_HOST_DEVICE Pix pix(int npq) const {
    const int PQ = P * Q, img = npq / PQ, pq = npq - img * PQ, p = pq / Q, q = pq - p * Q;
    const int h0 = p * stride - pad, w0 = q * stride - pad;
    return {img * H * W + h0 * W + w0, h0, w0};
  }
  // The element's address through keys: keyed(x, tap_key(crs), pix_key(npq)), nullptr in the
  // padding. (unsigned): one comparison for 0 <= h < H.
  SQ_HOST_DEVICE Key tap_key(int crs) const {
    const Tap t = tap(crs);
    return {t.off, tap_bits(t.r, t.s)};
  }
  SQ_HOST_DEVICE Key pix_key(int npq) const {
    const Pix p = pix(npq);
    unsigned bits = 0;
    for (int r = 0; r < R; ++r) bits |= unsigned(p.h0 + r) < unsigned(H) ? 1u << r : 0u;
    for (int s = 0; s < S; ++s) bits |= unsigned(p.w0 + s) < unsigned(W) ? 1u << (16 + s) : 0u;
    return {p.off, bits};
  }
};

inline bool aligned8(const void* p) { return reinterpret_cast<uintptr_t>(p) % 8 == 0; }

// Every op reads A(m, k) at a_ptr(m, k) = a_ptr(0, k) + m Kd (never in the padding) and B(k, n) at
// b_key(kkey(k), nkey(n)), nullptr in the padding: the mma kernel (igemm_mma.cuh) copies from
// there asynchronously, the register-staged kernels (igemm_kernel.cuh) load b_value. kKNone and
// kNNone: the bits of a key past the product's edge in k and in n.
//
// In a plain 1x1 product (stride 1, no padding: every B element inside) B is a dense matrix,
// b_dense(k, n) = b_key(kkey(k), nkey(n)) without keys: x or dz at k N + n ([k][n]), or x at
// n Kd + k for the weight gradient ([n][k]); the mma kernel's dense copies (igemm_mma.cuh) step
// along its rows.
//
// Forward: A = w (K x CRS), B(k, n) = col(x)(k, n): k a tap, n an output pixel.
// kBAlongK: B's elements are adjacent in memory along k (not n), so the tile loader lets
// neighbouring threads take neighbouring k for coalesced reads.
struct FwdOp {
  static constexpr bool kBAlongK = false;
  Geo g;
  const float *x, *w, *b;
  float* y;
  bool relu;
  int M, N, Kd;
  static constexpr unsigned kKNone = kNoTap, kNNone = kNoPix;
  SQ_HOST_DEVICE Key kkey(int k) const { return g.tap_key(k); }
  SQ_HOST_DEVICE Key nkey(int n) const { return g.pix_key(n); }
  SQ_HOST_DEVICE const float* any() const { return w; }  // an address to name in zero-filled copies
  SQ_HOST_DEVICE const float* a_ptr(int m, int k) const { return w + (m * Kd + k); }
  SQ_HOST_DEVICE const float* b_key(const Key& kk, const Key& nk) const { return keyed(x, kk, nk); }
  SQ_HOST_DEVICE const float* b_dense(int k, int n) const { return x + (k * N + n); }
  SQ_HOST_DEVICE float b_value(const Key& kk, const Key& nk) const { return keyed_value(x, kk, nk); }
  // The epilogue with row m's bias read once for all of a thread's outputs of that row (the
  // kernels call store_biased): y's stores may alias b as far as the compiler knows, so store()
  // loads b[m] again after each store, and each output waited on that load (conv1's forward: 9.6
  // of its 16.7 cycles an instruction were such waits in run d).
  SQ_HOST_DEVICE float bias_of(int m) const { return b ? b[m] : 0.0f; }
  SQ_HOST_DEVICE float out_biased(float v, float bm) const {
    if (b) v += bm;
    if (relu) v = v > 0.0f ? v : 0.0f;
    return v;
  }
  SQ_HOST_DEVICE void store(int m, int n, float v, int) const { store_biased(m, n, v, bias_of(m)); }
  // Outputs n and n + 1 in one 8-byte store (the mma kernel, where pairs() holds).
  SQ_HOST_DEVICE void store2(int m, int n, float v0, float v1, int) const { store2_biased(m, n, v0, v1, bias_of(m)); }
  // The stores with row m's bias bm = bias_of(m) read ahead.
  SQ_HOST_DEVICE void store_biased(int m, int n, float v, float bm) const { y[size_t(m) * N + n] = out_biased(v, bm); }
  SQ_HOST_DEVICE void store2_biased(int m, int n, float v0, float v1, float bm) const {
    *reinterpret_cast<float2*>(y + (size_t(m) * N + n)) = float2{out_biased(v0, bm), out_biased(v1, bm)};
  }
  bool pairs() const { return N % 2 == 0 && aligned8(y); }
};

// Backward data: A(c, (ko, r, s)) = w[ko, c, r, s], read from wt, w transposed to (C, K, R, S)
// (splitk_reduce_kernel, beside the weight gradient's sum) so that A runs along k in memory: A(m, k) = wt[m*K*R*S + k], which
// the mma kernel copies 16 bytes at a time and the register-staged kernels read coalesced (w's
// own layout puts neighbouring k of a 1x1 product C floats apart). B((ko, r, s), (img, h, w)) =
// dz at (ko, img, p, q) with h = p*st - pad + r, w = q*st - pad + s, where such p, q exist: a
// (h, w) lies under filter row r of some output row p exactly when h + pad - r is a multiple of
// the stride in [0, st*P), and then p = (h + pad)/st - r/st (both floors, the two having the same
// remainder), which splits into the tap's and the pixel's parts (at stride 1, every Fire
// convolution, p = h + pad - r).
struct DataOp {
  static constexpr bool kBAlongK = false;
  Geo g;
  const float *wt, *dz;  // wt: w transposed, (C, K, R, S)
  float* dx;
  bool accumulate;
  int M, N, Kd;
  // When x is a ReLU's output (the Fire's squeeze output, input of both expands): x itself, and
  // the epilogue applies that ReLU's backward, dx = x > 0 ? dx : 0, after accumulating.
  const float* relu_x = nullptr;
  // Split-K (conv.cu's data_splits, for products with few output tiles): slice z's raw sums go
  // to partial[z][m][n], and data_splitk_reduce_kernel applies the epilogue to their sum.
  float* partial = nullptr;
  static constexpr unsigned kKNone = kNoTap, kNNone = kNoPix;
  SQ_HOST_DEVICE Key kkey(int k) const {
    const int RS = g.R * g.S, ko = k / RS, rs = k - ko * RS, r = rs / g.S, s = rs - r * g.S;
    return {ko * g.N * g.P * g.Q - r / g.stride * g.Q - s / g.stride, tap_bits(r, s)};
  }
  SQ_HOST_DEVICE Key nkey(int n) const {
    const int HW = g.H * g.W, img = n / HW, hw = n - img * HW, h = hw / g.W, wc = hw - h * g.W;
    const int hp = h + g.pad, wp = wc + g.pad, st = g.stride;
    unsigned bits = 0;
    for (int r = 0; r < g.R; ++r)
      bits |= hp >= r && (hp - r) % st == 0 && (hp - r) / st < g.P ? 1u << r : 0u;
    for (int s = 0; s < g.S; ++s)
      bits |= wp >= s && (wp - s) % st == 0 && (wp - s) / st < g.Q ? 1u << (16 + s) : 0u;
    return {img * g.P * g.Q + hp / st * g.Q + wp / st, bits};
  }
  SQ_HOST_DEVICE const float* any() const { return wt; }
  SQ_HOST_DEVICE const float* a_ptr(int m, int k) const { return wt + (m * Kd + k); }
  SQ_HOST_DEVICE const float* b_key(const Key& kk, const Key& nk) const { return keyed(dz, kk, nk); }
  SQ_HOST_DEVICE const float* b_dense(int k, int n) const { return dz + (k * N + n); }
  SQ_HOST_DEVICE float b_value(const Key& kk, const Key& nk) const { return keyed_value(dz, kk, nk); }
  SQ_HOST_DEVICE float out(size_t i, float v) const {
    return out_loaded(v, relu_x ? relu_x[i] : 1.0f, accumulate ? dx[i] : 0.0f);
  }
  // out() with its loads made ahead (the kernels load a row's x and old dx before its stores,
  // which the compiler must otherwise assume may alias them): x = relu_x[i] (any value without
  // one), old = dx[i] (any value unless accumulating).
  SQ_HOST_DEVICE float out_loaded(float v, float x, float old) const {
    v = accumulate ? old + v : v;
    return !relu_x || x > 0.0f ? v : 0.0f;
  }
  SQ_HOST_DEVICE void store(int m, int n, float v, int z) const {
    const size_t i = size_t(m) * N + n;
    if (partial)
      partial[size_t(z) * M * N + i] = v;
    else
      dx[i] = out(i, v);
  }
  SQ_HOST_DEVICE void store2(int m, int n, float v0, float v1, int z) const {
    const size_t i = size_t(m) * N + n;
    if (partial)
      *reinterpret_cast<float2*>(partial + (size_t(z) * M * N + i)) = float2{v0, v1};
    else
      *reinterpret_cast<float2*>(dx + i) = float2{out(i, v0), out(i + 1, v1)};
  }
  bool pairs() const { return N % 2 == 0 && aligned8(dx) && aligned8(partial); }
};

// Backward weights, one split-K slice per blockIdx.z: A = dz (K x NPQ), B((img,p,q), (c,r,s)) =
// col(x)^T: k an output pixel, n a tap. Partial sums go to ws[z][m][n]. The bias gradient is A's
// row sums: where rows is set (the mma kernel only), the blocks of the first column tile also
// write their slice's sums of dz's rows to rows[z][m].
struct WeightOp {
  static constexpr bool kBAlongK = true;  // col(x)^T: k runs along the pixels
  Geo g;
  const float *x, *dz;
  float* ws;
  int M, N, Kd;
  float* rows = nullptr;
  static constexpr unsigned kKNone = kNoPix, kNNone = kNoTap;
  SQ_HOST_DEVICE Key kkey(int k) const { return g.pix_key(k); }
  SQ_HOST_DEVICE Key nkey(int n) const { return g.tap_key(n); }
  SQ_HOST_DEVICE const float* any() const { return dz; }
  SQ_HOST_DEVICE const float* a_ptr(int m, int k) const { return dz + (m * Kd + k); }
  SQ_HOST_DEVICE const float* b_key(const Key& kk, const Key& nk) const { return keyed(x, nk, kk); }
  SQ_HOST_DEVICE const float* b_dense(int k, int n) const { return x + (n * Kd + k); }
  SQ_HOST_DEVICE float b_value(const Key& kk, const Key& nk) const { return keyed_value(x, nk, kk); }
  SQ_HOST_DEVICE void store(int m, int n, float v, int z) const {
    ws[(size_t(z) * M + m) * N + n] = v;
  }
  SQ_HOST_DEVICE void store2(int m, int n, float v0, float v1, int z) const {
    *reinterpret_cast<float2*>(ws + ((size_t(z) * M + m) * N + n)) = float2{v0, v1};
  }
  bool pairs() const { return N % 2 == 0 && aligned8(ws); }
};

// The keys hold every filter of at most 15 x 15 taps (conv.cu refuses larger ones; SqueezeNet's
// largest is 7 x 7).
inline bool keys_fit(const Geo& g) { return g.R <= 15 && g.S <= 15; }

// Every index the loaders form fits in 32 bits (for the launch's check).
inline bool fits_int32(const Geo& g) {
  const long long lim = 2147483647LL;
  return (long long)g.C * g.N * g.H * g.W < lim && (long long)g.K * g.N * g.P * g.Q < lim &&
         (long long)g.K * g.C * g.R * g.S < lim;
}

// The dynamic shared memory a block may have (bytes): the GPU's own limit `device`, or the value
// of SQUEEZE_SMEM_OPTIN (`cap`, null where unset) where that is smaller. A cap routes and sizes
// every convolution as on a GPU with that limit, and without wgmma (conv.cu), so one sm_90 GPU
// also runs the older GPUs' routes (gpu_check.sh's `older` phase): 101376 is sm_86's and sm_89's
// 99 KB, 166912 sm_80's 163 KB. Anything but a whole number of bytes from 99 KB to the GPU's own
// limit is refused: below, no GPU the build has code for; above, a limit the GPU cannot give.
constexpr size_t kSmemOptinLeast = 99 * 1024;
inline size_t smem_optin_capped(size_t device, const char* cap) {
  if (!cap) return device;
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(cap, &end, 10);
  if (*cap < '0' || *cap > '9' || *end != '\0' || errno == ERANGE || v < kSmemOptinLeast || v > device)
    fail("SQUEEZE_SMEM_OPTIN: '", cap, "' is not a number of bytes from ", kSmemOptinLeast,
         " (sm_86's 99 KB) to this GPU's own limit, ", device);
  return size_t(v);
}

}  // namespace cuda
}  // namespace sq
