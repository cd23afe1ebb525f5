// The tensor-core implicit GEMM, v7 (the default; SQUEEZE_IGEMM_MMA=0 selects the WMMA kernel;
// docs/KERNELS.md): the same three products and operand loaders as igemm_kernel.cuh, but built for
// the tensor cores' rate.
//
// - Asynchronous copies (cp.async, sm_80+) move each operand element from the tensors straight into
//   shared memory, zero-filled in the padding, in a pipeline of 2-4 stages of 32-deep k-steps:
//   no staging registers, and the loads of the next stages are in flight while the tensor cores
//   work on the current one. One barrier per k-step.
// - mma.sync (m16n8k16 for BF16, m16n8k8 for TF32) on fragments read from the fp32 stage and
//   rounded as they are read. Each warp owns a (TM/WM) x (TN/WN) block of the tile.
// - The padded row strides make every fragment read conflict-free (bank = address mod 32 words):
//     [row][k] tiles, BF16: a lane reads the float2 at (g, 2t); the 16 lanes of a half-warp cover
//       4 rows x 8 words, distinct banks when the stride is 8 mod 32 (KB + 8);
//     [row][k] tiles, TF32: a lane reads (g, t): 4g + t covers 32 banks with stride 4 mod 32;
//     [k][n] tiles (B read along n), BF16: a lane reads (2t, g): 2t * stride + g, distinct when the
//       stride is 4 mod 16 (TN + 4); TF32 reads (t, g): stride 8 mod 32 (TN + 8).
//   A is stored [m][k] (its loads run along k); B [k][n], or [n][k] when the op's B is contiguous
//   along k (the weight gradient), so that the copies' stores stay conflict-free too.
//
// Kernel source only, no CUDA runtime: tests/test_igemm.cpp runs it on the CPU under
// tests/simt_host.h, which defines the same cp_async*, ldmatrix_x4, pack_bf16x2, tf32_bits, tf32_operand and mma_* functions
// (their device side: mma_device.cuh):
// the copies land only when the thread waits for their group, and mma exchanges the 32 lanes'
// fragments by the PTX ISA's fragment layouts, so a wrong fragment index, a missing wait or a
// missing barrier gives a wrong product there.
#pragma once
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/igemm_kernel.cuh"
#include "kernels/cuda/mma_device.cuh"

namespace sq {
namespace cuda {
namespace {

// The fragments of one mma, read from fp32 tiles (g = lane / 4, t = lane % 4; PTX ISA, "Matrix
// fragments for mma.m16n8k16 / m16n8k8"). A is 16 x K from a [row][k] tile at p (its first row
// and k), B is K x 8 from a [n][k] tile (load_b_nk) or a [k][n] tile (load_b_kn). The output
// fragment is the same for both: element e at row g + 8 (e / 2), column 2t + e % 2.
struct MmaBf16 {
  static constexpr int K = 16, kPadRowK = 8, kPadKN = 4;
  static constexpr bool kRowKernels = true;  // (igemm_rows.cuh takes this precision)
  static constexpr bool kSplit = false;       // (MmaTf32x3)
  using FragA = uint32_t[4];
  using FragB = uint32_t[2];
  __device__ static uint32_t pair(const float* p) {
    const float2 v = *reinterpret_cast<const float2*>(p);
    return pack_bf16x2(v.x, v.y);
  }
  // Registers: (g, 2t..2t+1), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..).
  __device__ static void load_a(uint32_t (&a)[4], const float* p, int ld, int g, int t) {
    const float* r = p + g * ld + 2 * t;
    a[0] = pair(r), a[1] = pair(r + 8 * ld), a[2] = pair(r + 8), a[3] = pair(r + 8 * ld + 8);
  }
  // Registers: k 2t..2t+1 and 2t+8..2t+9, column g.
  __device__ static void load_b_nk(uint32_t (&b)[2], const float* p, int ld, int g, int t) {
    const float* r = p + g * ld + 2 * t;
    b[0] = pair(r), b[1] = pair(r + 8);
  }
  __device__ static void load_b_kn(uint32_t (&b)[2], const float* p, int ld, int g, int t) {
    const float* c = p + 2 * t * ld + g;
    b[0] = pack_bf16x2(c[0], c[ld]), b[1] = pack_bf16x2(c[8 * ld], c[9 * ld]);
  }
  // The lane's column of a [n][k] tile at p, at any alignment (one float at a time).
  __device__ static void load_b_nk_any(uint32_t (&b)[2], const float* p, int t) {
    const float* r = p + 2 * t;
    b[0] = pack_bf16x2(r[0], r[1]), b[1] = pack_bf16x2(r[8], r[9]);
  }
  __device__ static void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    mma_bf16_16816(d, a, b);
  }
};
struct MmaTf32 {
  static constexpr int K = 8, kPadRowK = 4, kPadKN = 8;
  static constexpr bool kRowKernels = true;
  static constexpr bool kSplit = false;
  using FragA = uint32_t[4];
  using FragB = uint32_t[2];
  // Registers: (g, t), (g+8, t), (g, t+4), (g+8, t+4).
  // One ldmatrix: registers 0-3 are rows g and g + 8 at k t, then at k t + 4, the four 8x4-word
  // quarters of the [m][k] tile, each row's quarter 16-byte aligned (ld and p multiples of 4
  // floats). Lane 4g + t gives the address of quarter (lane >> 3)'s row lane & 7.
  __device__ static void load_a(uint32_t (&a)[4], const float* p, int ld, int g, int t) {
    const int lane = 4 * g + t;
    ldmatrix_x4(a, p + ((lane & 7) + 8 * ((lane >> 3) & 1)) * ld + 4 * (lane >> 4));
  }
  // Registers: k t and t+4, column g.
  __device__ static void load_b_nk(uint32_t (&b)[2], const float* p, int ld, int g, int t) {
    const float* r = p + g * ld + t;
    b[0] = tf32_operand(r[0]), b[1] = tf32_operand(r[4]);
  }
  __device__ static void load_b_kn(uint32_t (&b)[2], const float* p, int ld, int g, int t) {
    const float* c = p + t * ld + g;
    b[0] = tf32_operand(c[0]), b[1] = tf32_operand(c[4 * ld]);
  }
  __device__ static void load_b_nk_any(uint32_t (&b)[2], const float* p, int t) {
    b[0] = tf32_operand(p[t]), b[1] = tf32_operand(p[t + 4]);
  }
  __device__ static void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    mma_tf32_1688(d, a, b);
  }
};

// fp32 products on the tensor cores, three TF32 products each (CUTLASS's "3xTF32"; opt-in as
// SQUEEZE_IGEMM_3XTF32=1, docs/KERNELS.md): every operand v is read as big = tf32(v) and small =
// tf32(v - big) (v - big is exact in fp32), and a b as a_big b_big + (a_small b_big + a_big
// b_small), fp32 accumulation. What is left out, a_small b_small and small's own rounding, is
// within about 2^-21 of a b, below the fp32 accumulation's error over these products' depths
// (tests/test_igemm.cpp compares the two). The stages and their fp32 layouts are
// MmaTf32's; a fragment holds big in registers 0-3 (A) or 0-1 (B), small after them.
struct MmaTf32x3 {
  static constexpr int K = 8, kPadRowK = 4, kPadKN = 8;
  static constexpr bool kRowKernels = false;  // (their resident A is stored rounded, one word a value)
  static constexpr bool kSplit = true;
  using FragA = uint32_t[8];
  using FragB = uint32_t[4];
  __device__ static void split(float v, uint32_t& big, uint32_t& small) {
    big = tf32_bits(v);
    small = tf32_bits(v - __uint_as_float(big));
  }
  // The fragments from the values of TF32's registers 0-3 (A) or 0-1 (B), in that order.
  __device__ static void split_a(uint32_t (&a)[8], float v0, float v1, float v2, float v3) {
    split(v0, a[0], a[4]), split(v1, a[1], a[5]), split(v2, a[2], a[6]), split(v3, a[3], a[7]);
  }
  __device__ static void split_b(uint32_t (&b)[4], float v0, float v1) { split(v0, b[0], b[2]), split(v1, b[1], b[3]); }
  __device__ static void load_a(uint32_t (&a)[8], const float* p, int ld, int g, int t) {
    const float* r = p + g * ld + t;
    split_a(a, r[0], r[8 * ld], r[4], r[8 * ld + 4]);
  }
  __device__ static void load_b_nk(uint32_t (&b)[4], const float* p, int ld, int g, int t) {
    const float* r = p + g * ld + t;
    split_b(b, r[0], r[4]);
  }
  __device__ static void load_b_kn(uint32_t (&b)[4], const float* p, int ld, int g, int t) {
    const float* c = p + t * ld + g;
    split_b(b, c[0], c[4 * ld]);
  }
  // The two small products go into a fresh accumulator, added to d once: d takes one rounding
  // per product of big parts and one per mma, about what an fp32 sum of the same terms takes,
  // where adding all three products to d would round it three times as often.
  __device__ static void mma(float (&d)[4], const uint32_t (&a)[8], const uint32_t (&b)[4]) {
    const uint32_t ab[4] = {a[0], a[1], a[2], a[3]}, as[4] = {a[4], a[5], a[6], a[7]};
    const uint32_t bb[2] = {b[0], b[1]}, bs[2] = {b[2], b[3]};
    float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    mma_tf32_1688(c, as, bb);
    mma_tf32_1688(c, ab, bs);
    mma_tf32_1688(d, ab, bb);
    SQ_UNROLL
    for (int e = 0; e < 4; ++e) d[e] += c[e];
  }
};

// Which operands the kernel copies 16 bytes at a time: those contiguous along the dimension its
// copies run (k for A; n for B, or k where B runs along k), with rows a multiple of 4 floats apart
// and a 16-byte aligned base. A: the forward's weights and the weight gradient's dz when their
// rows are; B: every operand of a 1x1, stride-1, unpadded convolution (x, or dz) when its planes
// are. The other operands (the 3x3 and 7x7 gathers, the input gradient's weights) go 4 bytes at a
// time.
// pair: the output goes out two neighbouring columns at a time, 8-byte stores (the op's pairs():
// an even row length and 8-byte aligned outputs). dense: both operands copied 16 bytes at a time,
// so B is b_dense's matrix and every step is copied through row pointers (igemm_mma_kernel's
// dense_copies; conv.cu clears it with SQUEEZE_IGEMM_DENSE=0).
struct MmaVec {
  bool a = false, b = false, pair = false, dense = false;
};
inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }
inline bool plain_1x1(const Geo& g) { return g.R == 1 && g.S == 1 && g.stride == 1 && g.pad == 0; }
inline MmaVec vec_of(bool a, bool b, bool pair) { return {a, b, pair, a && b}; }
inline MmaVec mma_vec(const FwdOp& op) {
  return vec_of(op.Kd % 4 == 0 && aligned16(op.w), plain_1x1(op.g) && op.N % 4 == 0 && aligned16(op.x), op.pairs());
}
inline MmaVec mma_vec(const DataOp& op) {
  return vec_of(op.Kd % 4 == 0 && aligned16(op.wt), plain_1x1(op.g) && op.N % 4 == 0 && aligned16(op.dz),
                op.pairs());
}
inline MmaVec mma_vec(const WeightOp& op) {
  return vec_of(op.Kd % 4 == 0 && aligned16(op.dz), plain_1x1(op.g) && op.Kd % 4 == 0 && aligned16(op.x),
                op.pairs());
}
// The split-K slice: whole 32-deep k-steps, so that every slice starts 16-byte aligned.
inline int mma_chunk(int Kd, int splits) {
  const int c = (Kd + splits - 1) / splits;
  return (c + 31) / 32 * 32;
}

// The grid: blocks along x, each taking the tiles blockIdx.x, blockIdx.x + gridDim.x, ... of the
// product's `tiles` (rows of tiles fastest), with its split-K slice blockIdx.z. A block that takes
// several tiles runs one pipeline through all of their k-steps: the copies of its next tile's
// first steps are in flight while it finishes the current one, and its prologue (keys, the first
// copies' latency) is paid once. That is for whole products (one slice) with few k-steps a tile
// (at most max_steps: the 1x1 products over few channels, conv1's 147-deep forward), whose blocks
// otherwise spend much of their life on the prologue: `resident` blocks (conv.cu: as many as the
// GPU holds at once) take all the tiles. Elsewhere a block takes one tile, and always where B runs
// along k (the weight gradient): its column keys are filled once.
struct MmaGrid {
  int tiles, blocks;
};
constexpr int kPersistSteps = 8;
inline MmaGrid mma_grid(int M, int N, int TM, int TN, bool b_along_k, int k_chunk, int splits, int resident,
                        int max_steps = kPersistSteps) {
  const int tiles = ((M + TM - 1) / TM) * ((N + TN - 1) / TN), steps = (k_chunk + 31) / 32;
  const bool persist = !b_along_k && splits == 1 && resident > 0 && steps <= max_steps && tiles > resident;
  return {tiles, persist ? resident : tiles};
}

// The mma kernel's tile for an M x N product Kd deep (conv.cu's launch_mma; wide: the GPU allows
// the one-block 128 x 128 tile's stages, mma_blocks_per_sm). The copies, not the multiply, are
// expected to limit the two-block tiles (at most 128 registers a thread), and B is the costly
// operand (a 4-byte gather, where A mostly goes 16 bytes at a time): per output and k a TM x TN
// tile issues about 1/TM B copies and 1/(4 TN) A copies, so 128 x 64 issues a third fewer than
// 64 x 128. Hence 128 x 64 wherever M exceeds 64 and 128 rows pad M no more than 64 do (M = 96,
// 128, 256; not 192); a weight gradient of more than 32 rows (N = C*R*S, 144 to 576 in the Fire
// modules) pads less to 64 columns than to 128. Otherwise 128 columns and 16, 32 or 64 rows, by M
// (16 or 32 rows copy A the least).
// 128 x 128 takes the dense products (MmaVec's dense: plain 1x1, both operands copied 16 bytes at
// a time) large in all three dimensions: at least 256 rows and columns and more than 256
// deep (more than kPersistSteps steps: never persistent), which in the models are conv10's three
// at 13x13 (M 512 or 1000, N 512 or 21,632 at batch 128, 512 to 21,632 deep).
// Their operands are read from L2 once for every tile of the other dimension: per output and k
// 1/TM + 1/TN floats, 2/128 against 128 x 64's 3/128; each warp's 64 x 32 takes 4 A and 4 B
// fragments for 16 mma, where 128 x 64's 32 x 32 takes 2 and 4 for 8.
struct MmaTileSize {
  int m, n;
};
inline MmaTileSize mma_tile(int M, int N, int Kd, bool b_along_k, bool dense, bool wide) {
  const bool rows128 = (M + 127) / 128 * 128 <= (M + 63) / 64 * 64;  // 128 rows pad M no more than 64
  if (wide && dense && M >= 256 && N >= 256 && Kd > 32 * kPersistSteps && rows128) return {128, 128};
  if (M > 64 && rows128) return {128, 64};
  if (N <= 64 || (b_along_k && M > 32)) return {64, 64};
  return {M <= 16 ? 16 : M <= 32 ? 32 : 64, 128};
}

// A warp's accumulators, FM x FN fragments of 16 x 8 outputs (the mma and window kernels).
template <int FM, int FN>
struct MmaAcc {
  float v[FM][FN][4];
  __device__ void clear() {
    SQ_UNROLL
    for (int i = 0; i < FM; ++i)
      SQ_UNROLL
      for (int j = 0; j < FN; ++j)
        SQ_UNROLL
        for (int e = 0; e < 4; ++e) v[i][j][e] = 0.0f;
  }
  // f(fj, r, c, value) for each of the lane's accumulators: fragment column fj, row r = 16 fi + g
  // + 8 (e / 2) and column c = 8 fj + 2t + e % 2 of the warp's tile (the kernels whose outputs do
  // not lie along n: the weight-gradient window kernel, the row kernels).
  template <class F>
  __device__ void each(int g, int t, F f) const {
    SQ_UNROLL
    for (int fi = 0; fi < FM; ++fi)
      SQ_UNROLL
      for (int fj = 0; fj < FN; ++fj)
        SQ_UNROLL
        for (int e = 0; e < 4; ++e) f(fj, 16 * fi + g + 8 * (e / 2), 8 * fj + 2 * t + e % 2, v[fi][fj][e]);
  }
  // The outputs through op's epilogue, the warp's tile at (m0, n0): a lane holds outputs (g, 2t)
  // and (g, 2t + 1) of each 8-row half of a fragment, one 8-byte store where pair (n is even, so
  // n + 1 < N with N even), else two. z: the split-K slice.
  // The forward's bias: read once a row (FwdOp::bias_of), before that row's stores. The input
  // gradient's epilogue inputs (the ReLU's x, dx's old value): a row's loads all issued before
  // its stores (data_row), so that they are in flight together rather than each waiting behind
  // the stores before it (which the compiler must assume may alias them).
  template <class Op>
  __device__ void store(const Op& op, int m0, int n0, int g, int t, bool pair, int z) const {
    SQ_UNROLL
    for (int fi = 0; fi < FM; ++fi)
      SQ_UNROLL
      for (int h = 0; h < 2; ++h) {
        const int m = m0 + 16 * fi + g + 8 * h;
        if (m >= op.M) continue;
        if constexpr (std::is_same<Op, DataOp>::value) {
          if (!op.partial) {
            data_row(op, m, n0, t, pair, v[fi], 2 * h);
            continue;
          }
        }
        float bm = 0.0f;
        if constexpr (std::is_same<Op, FwdOp>::value) bm = op.bias_of(m);
        SQ_UNROLL
        for (int fj = 0; fj < FN; ++fj) {
          const int n = n0 + 8 * fj + 2 * t;
          const float v0 = v[fi][fj][2 * h], v1 = v[fi][fj][2 * h + 1];
          if (n >= op.N) continue;
          if constexpr (std::is_same<Op, FwdOp>::value) {
            if (pair) {
              op.store2_biased(m, n, v0, v1, bm);
            } else {
              op.store_biased(m, n, v0, bm);
              if (n + 1 < op.N) op.store_biased(m, n + 1, v1, bm);
            }
          } else if (pair) {
            op.store2(m, n, v0, v1, z);
          } else {
            op.store(m, n, v0, z);
            if (n + 1 < op.N) op.store(m, n + 1, v1, z);
          }
        }
      }
  }
  // Row m of the input gradient (no split-K), values vf[fj][e0], vf[fj][e0 + 1] at columns
  // n0 + 8 fj + 2t and + 1: DataOp::out's arithmetic, its loads first, a few fragments at a time:
  // 4 with x's loads alone, 2 when dx's old values are loaded too (all FN of the 128x64 tile, or 4
  // with both, held 5 registers too many and spilled keys out of the main loop).
  __device__ static void data_row(const DataOp& op, int m, int n0, int t, bool pair, const float (&vf)[FN][4], int e0) {
    constexpr int FX = FN > 4 ? 4 : FN, FA = FN > 2 ? 2 : FN;
    if (op.accumulate) {
      SQ_UNROLL
      for (int f0 = 0; f0 < FN; f0 += FA) data_cols<FA, true>(op, m, n0, t, pair, vf, e0, f0);
    } else {
      SQ_UNROLL
      for (int f0 = 0; f0 < FN; f0 += FX) data_cols<FX, false>(op, m, n0, t, pair, vf, e0, f0);
    }
  }
  template <int FC, bool kAcc>
  __device__ static void data_cols(const DataOp& op, int m, int n0, int t, bool pair, const float (&vf)[FN][4], int e0,
                                   int f0) {
    float xv[FC][2], old[FC][2];
    SQ_UNROLL
    for (int c = 0; c < FC; ++c) {
      const int fj = f0 + c;
      if (fj >= FN) break;
      float (&xc)[2] = xv[c];
      float (&oc)[2] = old[c];
      const int n = n0 + 8 * fj + 2 * t;
      const size_t i = size_t(m) * op.N + n;
      xc[0] = xc[1] = 1.0f, oc[0] = oc[1] = 0.0f;
      if (n >= op.N) continue;
      if (pair) {
        if (op.relu_x) {
          const float2 x2 = *reinterpret_cast<const float2*>(op.relu_x + i);
          xc[0] = x2.x, xc[1] = x2.y;
        }
        if (kAcc) {
          const float2 d2 = *reinterpret_cast<const float2*>(op.dx + i);
          oc[0] = d2.x, oc[1] = d2.y;
        }
      } else {
        const bool two = n + 1 < op.N;
        if (op.relu_x) xc[0] = op.relu_x[i], xc[1] = two ? op.relu_x[i + 1] : 1.0f;
        if (kAcc) oc[0] = op.dx[i], oc[1] = two ? op.dx[i + 1] : 0.0f;
      }
    }
    SQ_UNROLL
    for (int c = 0; c < FC; ++c) {
      const int fj = f0 + c;
      if (fj >= FN) break;
      const int n = n0 + 8 * fj + 2 * t;
      if (n >= op.N) continue;
      float o[2];
      SQ_UNROLL
      for (int e = 0; e < 2; ++e) o[e] = op.out_loaded(vf[fj][e0 + e], xv[c][e], old[c][e]);
      float* d = op.dx + (size_t(m) * op.N + n);
      if (pair) {
        *reinterpret_cast<float2*>(d) = float2{o[0], o[1]};
      } else {
        d[0] = o[0];
        if (n + 1 < op.N) d[1] = o[1];
      }
    }
  }
};

// Whether precision Prec takes a tile of TM rows over WM warp rows (the mma, window and
// weight-gradient window kernels): MmaTf32x3's fragments take twice the registers, and its kernels
// fit 128 registers a thread unspilled (ptxas, sm_90) only where a warp owns one 16-row fragment
// row (two spilled 8-68 bytes); TF32 and BF16 take every tile.
template <class Prec>
constexpr bool takes_tile(int tm, int wm) {
  return !Prec::kSplit || tm == 16 * wm;
}

// A tile of the mma or window kernel: rows, columns, warp rows (conv.cu's lists of tiles).
template <int TM, int TN, int WM>
struct MmaTile {
  static constexpr int m = TM, n = TN, wm = WM;
};

// The least dynamic shared memory a block may have on the GPUs this build runs on (sm_86 and
// sm_89, with sm_80's code; sm_80 allows 163 KB, sm_90 227 KB). Kernels that need more take only
// the products that fit the GPU at hand (conv.cu's route).
constexpr size_t kMinSmemOptin = 99 * 1024;

// Blocks an SM that the mma kernel of a TM x TN tile is built for (its launch bounds): two for the
// tiles up to 128 x 64 (at most 128 registers a thread), one for 128 x 128, whose 64 accumulators
// a thread would spill under 128 registers (ptxas, sm_90: 160-212 bytes). The one-block tile
// takes the large products (conv10's: mma_tile) on GPUs that allow a block
// kMmaWideSmem (sm_80, sm_90): four stages, the copies three k-steps ahead of the products.
constexpr int mma_blocks_per_sm(int tm, int tn) { return tm * tn > 128 * 64 ? 1 : 2; }
constexpr size_t kMmaWideSmem = 160 * 1024;

// The block tile TM x TN, 8 warps as WM x (8 / WM), k-steps of KB; the stage layout in dynamic
// shared memory (floats), and as many stages (2-4) as fit in kBudget: 99 KB (kMinSmemOptin) for
// the two-block tiles, so that two blocks share an SM of sm_90 and every GPU of the build takes
// them; kMmaWideSmem for the one-block tile.
template <class Op, class Prec, int TM, int TN, int WM>
struct MmaShape {
  static constexpr int KB = 32, WN = 8 / WM, WTM = TM / WM, WTN = TN / WN, FM = WTM / 16, FN = WTN / 8;
  static_assert(WM * WN == kGemmThreads / 32 && FM * 16 * WM == TM && FN * 8 * WN == TN, "warp tiles");
  static constexpr bool kBnk = Op::kBAlongK;  // B stored [n][k]
  static constexpr int LDA = KB + Prec::kPadRowK;
  static constexpr int LDB = kBnk ? KB + Prec::kPadRowK : TN + Prec::kPadKN;
  static constexpr int kAFloats = TM * LDA, kBFloats = kBnk ? TN * LDB : KB * LDB;
  static constexpr int kStageFloats = kAFloats + kBFloats;
  static_assert(kAFloats % 4 == 0 && kStageFloats % 4 == 0, "16-byte aligned tiles");
  static constexpr bool kWide = mma_blocks_per_sm(TM, TN) == 1;
  static constexpr size_t kBudget = kWide ? kMmaWideSmem : kMinSmemOptin;
  // (the wide tile's stages leave 4 KB of its budget to the static k and column keys)
  static constexpr int kFit = int((kWide ? kBudget - 4 * 1024 : kBudget) / (kStageFloats * 4));
  static constexpr int kStages = kFit < 2 ? 2 : kFit > 4 ? 4 : kFit;
  static constexpr size_t kSmemBytes = size_t(kStages) * kStageFloats * sizeof(float);
  static_assert(kSmemBytes <= kBudget, "stages within the tile's budget");
  static constexpr int RA = TM * KB / kGemmThreads, RB = KB * TN / kGemmThreads;
  static_assert(RA * kGemmThreads == TM * KB && RB * kGemmThreads == KB * TN, "whole copies per thread");
};

// Where the kernel writes A's row sums (WeightOp::rows: the bias gradient, from the blocks of the
// first column tile); nullptr, a constant, for the other products.
template <class Op>
__device__ float* row_sums(const Op&) {
  return nullptr;
}
__device__ inline float* row_sums(const WeightOp& op) { return op.rows; }

// The row sums of a TM x KB A operand over a block's k-steps (the weight gradient's bias: WeightOp::rows;
// the mma, window and row kernels), in one register a thread: thread tid < T TM takes row tid / T
// of each stage (T = 256 / TM threads a row, rounded down) and adds up its 4-float pieces tid % T,
// tid % T + T, ..., fp32 as copied; at the end the T partial sums of a row are added in order and
// written to rows[z][m].
template <int TM, int KB>
struct RowSums {
  static constexpr int T = kGemmThreads / TM, kPieces = KB / 4;
  static_assert(T >= 1 && KB % 4 == 0, "a thread or more a row, whole pieces");
  float v = 0.0f;
  __device__ void add(const float* As, int lda) {
    if (int(threadIdx.x) >= T * TM) return;
    const float* row = As + int(threadIdx.x) / T * lda;
    SQ_UNROLL
    for (int q = int(threadIdx.x) % T; q < kPieces; q += T) {
      const float4 a = *reinterpret_cast<const float4*>(row + 4 * q);
      v += (a.x + a.y) + (a.z + a.w);
    }
  }
  // The whole block calls it once its stages are done with: smem (256 floats) takes the partial sums.
  __device__ void finish(float* smem, float* rows, int m0, int M, int z) const {
    __syncthreads();  // every warp done with the stages
    smem[threadIdx.x] = v;
    __syncthreads();
    const int mm = int(threadIdx.x), m = m0 + mm;
    if (mm < TM && m < M) {
      float s = 0.0f;
      for (int q = 0; q < T; ++q) s += smem[mm * T + q];
      rows[size_t(z) * M + m] = s;
    }
  }
};

// Two blocks an SM (at most 128 registers a thread: conv.cu picks the tiles that fit unspilled), or
// one for the 128 x 128 tile (mma_blocks_per_sm).
template <class Op, class Prec, int TM, int TN, int WM>
__global__ void __launch_bounds__(kGemmThreads, mma_blocks_per_sm(TM, TN))
    igemm_mma_kernel(Op op, int k_chunk, MmaVec vec, int tiles) {
  using Sh = MmaShape<Op, Prec, TM, TN, WM>;
  constexpr int KB = Sh::KB, NS = Sh::kStages, LDA = Sh::LDA, LDB = Sh::LDB;
  SQ_DYNAMIC_SHARED(float, smem);
  // Step j's k keys (buffer j % (NS + 1)) are written after the barrier of the iteration before
  // the one that issues it, by one warp, while the others go on to their products: the keys'
  // divisions stay off the path to the barrier. Their buffer was last read when step j - NS - 1
  // was issued, two iterations (and barriers) earlier.
  constexpr int NK = NS + 1;
  __shared__ Keys<Op, TN, KB, NK> tab;
  SQ_FRESH_SHARED(tab);
  static_assert(Sh::kSmemBytes + sizeof(tab) <= Sh::kBudget, "stages and keys within the tile's budget");
  // The block's tiles (MmaGrid): u-th at tile blockIdx.x + u * gridDim.x, rows of tiles fastest;
  // one tile where B runs along k. Its steps are numbered through all of them, `steps` a tile.
  const int mtiles = (op.M + TM - 1) / TM;
  const int ntile_block = Sh::kBnk ? 1 : (tiles - int(blockIdx.x) + int(gridDim.x) - 1) / int(gridDim.x);
  auto tile_m0 = [&](int u) { return (int(blockIdx.x) + u * int(gridDim.x)) % mtiles * TM; };
  auto tile_n0 = [&](int u) { return (int(blockIdx.x) + u * int(gridDim.x)) / mtiles * TN; };
  const int kb = blockIdx.z * k_chunk, ke = min(op.Kd, kb + k_chunk);
  const int steps = ke > kb ? (ke - kb + KB - 1) / KB : 0, total = ntile_block * steps;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, g = lane / 4, t = lane % 4;
  const int wm = (warp / Sh::WN) * Sh::WTM, wn = (warp % Sh::WN) * Sh::WTN;

  MmaAcc<Sh::FM, Sh::FN> acc;
  acc.clear();

  // A's row sums (the bias gradient), from the blocks of the first column tile.
  float* const rows = tile_n0(0) == 0 ? row_sums(op) : nullptr;
  RowSums<TM, KB> rsum;

  // The B elements of a thread lie in one column (its key `fixed`, for the whole kernel) or, where
  // B runs along k, at one k of each step (its key read once per step): fixed_b, the index that
  // stays the same below, with 256 threads and TN, TN / 4 and KB dividing 256.
  static_assert(kGemmThreads % TN == 0 && kGemmThreads % (TN / 4) == 0 && kGemmThreads % KB == 0,
                "a thread's B elements share their column, or their k");
  const int fixed_b = Sh::kBnk ? (vec.b ? int(threadIdx.x) % (KB / 4) * 4 : int(threadIdx.x) % KB)
                               : (vec.b ? int(threadIdx.x) % (TN / 4) * 4 : int(threadIdx.x) % TN);
  // The tile whose steps are being issued: its first row and column, its step, and the thread's
  // column key in it (issue takes the steps in order, once each).
  int iu = 0, ij = 0, m0 = tile_m0(0), n0 = tile_n0(0);
  Key fixed = Sh::kBnk ? Key{0, Op::kNNone} : column_key(op, n0 + fixed_b);

  // A step of a tile of a plain 1x1 product (vec.dense: both operands dense, b_dense): a thread's
  // pieces are row pointers a fixed stride apart, with no keys, where the general copies below
  // take about 30 instructions a piece in the sm_90 SASS (a k key, the keyed address, the bounds).
  // Piece p of a pass: row p / (pieces a row), 4 floats at (p % (pieces a row)) * 4; rows of A and
  // of [n][k] B are KB deep, rows of [k][n] B TN wide. kTested: the step ends past the slice's
  // end ke, or the tile past the product's rows or columns, and each piece is tested against them
  // (a piece lies wholly inside or outside the columns: N, or Kd for [n][k] B, is a multiple of 4),
  // zero-filled outside, never read there; a whole step of a whole tile goes without the tests:
  // about 60 instructions from the branch to the commit for the 8 pieces of 128 x 128, about 85
  // with them.
  auto dense_copies = [&](auto tested, float* As, float* Bs, int m0, int n0, int k0) {
    constexpr bool kTested = decltype(tested)::value;
    constexpr int kRowPieces = KB / 4, kRows = kGemmThreads / kRowPieces;  // [m][k] and [n][k] tiles
    const int tr = int(threadIdx.x) / kRowPieces, tk = int(threadIdx.x) % kRowPieces * 4;
    const size_t kd_step = size_t(kRows) * op.Kd;
    // The floats of the thread's [.][k] pieces inside: 4 or 0, since Kd and the slices' ends are
    // multiples of 4 in a dense product, so every piece is whole or outside and the copies take
    // the zero-fill predicate (cp_async16_if: no source adjusted by a run-time byte count).
    const int kv = kTested ? max(0, min(4, ke - (k0 + tk))) : 4;
    const float* a = op.a_ptr(m0 + tr, k0 + tk);
    SQ_UNROLL
    for (int r = 0; r < (TM + kRows - 1) / kRows; ++r, a += kd_step) {
      const bool in = kv > 0 && (!kTested || m0 + tr + r * kRows < op.M);
      if (TM % kRows == 0 || tr + r * kRows < TM) cp_async16_if(As + (tr + r * kRows) * LDA + tk, a, in, op.any());
    }
    if constexpr (Sh::kBnk) {
      const float* b = op.b_dense(k0 + tk, n0 + tr);
      SQ_UNROLL
      for (int r = 0; r < TN / kRows; ++r, b += kd_step) {
        const bool in = kv > 0 && (!kTested || n0 + tr + r * kRows < op.N);
        cp_async16_if(Bs + (tr + r * kRows) * LDB + tk, b, in, op.any());
      }
    } else {
      constexpr int kColPieces = TN / 4, kKRows = kGemmThreads / kColPieces;
      const int br = int(threadIdx.x) / kColPieces, bn = int(threadIdx.x) % kColPieces * 4;
      const bool col_in = !kTested || n0 + bn < op.N;
      const float* b = op.b_dense(k0 + br, n0 + bn);
      SQ_UNROLL
      for (int r = 0; r < KB / kKRows; ++r, b += size_t(kKRows) * op.N) {
        const bool in = col_in && (!kTested || k0 + br + r * kKRows < ke);
        cp_async16_if(Bs + (br + r * kKRows) * LDB + bn, b, in, op.any());
      }
    }
  };

  // Step j's copies (none past the last step: an empty group keeps the count of groups per
  // iteration fixed), neighbouring threads on neighbouring addresses. A 16-byte piece starts at a
  // k (or n) that is a multiple of 4 and holds the elements up to the product's edge, zero-filled
  // past it. B's address is b_key of two keys, nullptr in the padding and past the edges.
  auto issue = [&](int j) {
    if (j < total) {
      if (ij == steps) {  // the next tile's first step
        ij = 0, ++iu, m0 = tile_m0(iu), n0 = tile_n0(iu);
        if (!Sh::kBnk && !vec.dense) fixed = column_key(op, n0 + fixed_b);  // (the dense copies read no keys)
      }
      const int k0 = kb + ij * KB, buf = j % NK;
      ++ij;
      float* As = smem + (j % NS) * Sh::kStageFloats;
      float* Bs = As + Sh::kAFloats;
      if (vec.dense) {
        if (m0 + TM <= op.M && n0 + TN <= op.N && k0 + KB <= ke)
          dense_copies(std::false_type{}, As, Bs, m0, n0, k0);
        else
          dense_copies(std::true_type{}, As, Bs, m0, n0, k0);
        cp_async_commit();
        return;
      }
      if (vec.a) {
        constexpr int PA = TM * KB / 4;
        SQ_UNROLL
        for (int r = 0; r < (PA + kGemmThreads - 1) / kGemmThreads; ++r) {
          const int l = int(threadIdx.x) + r * kGemmThreads, mm = l / (KB / 4), kk = l % (KB / 4) * 4;
          const int m = m0 + mm, k = k0 + kk, nv = m < op.M ? max(0, min(4, ke - k)) : 0;
          if (PA % kGemmThreads == 0 || l < PA)
            cp_async16(As + mm * LDA + kk, nv > 0 ? op.a_ptr(m, k) : op.any(), nv);
        }
      } else {
        SQ_UNROLL
        for (int r = 0; r < Sh::RA; ++r) {
          const int l = int(threadIdx.x) + r * kGemmThreads, mm = l / KB, kk = l % KB;
          const int m = m0 + mm, k = k0 + kk;
          const bool in = m < op.M && k < ke;
          cp_async4(As + mm * LDA + kk, in ? op.a_ptr(m, k) : op.any(), in);
        }
      }
      const Key fk = Sh::kBnk ? tab.k[buf][fixed_b] : fixed;
      if (vec.b) {
        constexpr int PB = KB * TN / 4;
        static_assert(PB % kGemmThreads == 0, "whole pieces per thread");
        SQ_UNROLL
        for (int r = 0; r < PB / kGemmThreads; ++r) {
          const int l = int(threadIdx.x) + r * kGemmThreads;
          const int kk = Sh::kBnk ? l % (KB / 4) * 4 : l / (TN / 4), nn = Sh::kBnk ? l / (KB / 4) : l % (TN / 4) * 4;
          const int k = k0 + kk, n = n0 + nn;
          const int nv = Sh::kBnk ? (n < op.N ? max(0, min(4, ke - k)) : 0) : (k < ke ? max(0, min(4, op.N - n)) : 0);
          const float* e = nv > 0 ? (Sh::kBnk ? op.b_key(fk, tab.n[nn]) : op.b_key(tab.k[buf][kk], fk)) : nullptr;
          cp_async16(Bs + (Sh::kBnk ? nn * LDB + kk : kk * LDB + nn), e ? e : op.any(), e ? nv : 0);
        }
      } else {
        SQ_UNROLL
        for (int r = 0; r < Sh::RB; ++r) {
          const int l = int(threadIdx.x) + r * kGemmThreads;
          const int kk = Sh::kBnk ? l % KB : l / TN, nn = Sh::kBnk ? l / KB : l % TN;
          const float* e = Sh::kBnk ? op.b_key(fk, tab.n[nn]) : op.b_key(tab.k[buf][kk], fk);
          cp_async4(Bs + (Sh::kBnk ? nn * LDB + kk : kk * LDB + nn), e ? e : op.any(), e != nullptr);
        }
      }
    }
    cp_async_commit();
  };

  // Step j's k keys are those of step j % steps of a tile (the same for every tile); fstep: that
  // step for the next fill, j = i + NS, kept by counting rather than a division per step.
  int fstep = steps > 0 ? NS % steps : 0;
  fill_nkeys(op, tab, n0);
  static_assert(NS * KB <= kGemmThreads, "a warp per step's keys");
  for (int j = 0; j < NS; ++j)
    fill_kkeys(op, tab.k[j], kb + (steps > 0 ? j % steps : 0) * KB, j < total ? ke : kb, j * KB);
  __syncthreads();  // the column keys and the first NS steps' k keys
  for (int j = 0; j < NS - 1; ++j) issue(j);

  auto store_tile = [&](int tm0, int tn0) { acc.store(op, tm0 + wm, tn0 + wn, g, t, vec.pair, blockIdx.z); };

  int cu = 0, cj = 0;  // the tile and step being multiplied
  for (int i = 0; i < total; ++i) {
    cp_async_wait<NS - 2>();  // this thread's copies of step i have landed
    __syncthreads();  // every thread's copies of step i; every thread done with step i - 1's stage;
                      // step i + NS - 1's keys
    issue(i + NS - 1);  // into the stage step i - 1 used
    // Step i + NS's keys, by warp i % 8 (KB = 32 lanes), into the buffer of step i - 1 (none for
    // the dense copies, which read no keys).
    if (!vec.dense)
      fill_kkeys(op, tab.k[(i + NS) % NK], kb + fstep * KB, i + NS < total ? ke : kb, (i % (kGemmThreads / KB)) * KB);
    fstep = fstep + 1 == steps ? 0 : fstep + 1;
    const float* As = smem + (i % NS) * Sh::kStageFloats;
    const float* Bs = As + Sh::kAFloats;
    if (rows) rsum.add(As, LDA);
    // The step's depth: a tile's last step may hold fewer than KB k (zero-filled past them), as in
    // every 1x1 product over 16 or 48 channels; the mma steps past them are skipped.
    const int depth = ke - (kb + cj * KB);
    SQ_UNROLL
    for (int kk = 0; kk < KB; kk += Prec::K) {
      if (kk >= depth) break;  // (the same for the whole block)
      typename Prec::FragA a[Sh::FM];
      SQ_UNROLL
      for (int fi = 0; fi < Sh::FM; ++fi) Prec::load_a(a[fi], As + (wm + 16 * fi) * LDA + kk, LDA, g, t);
      typename Prec::FragB b[Sh::FN];
      SQ_UNROLL
      for (int fj = 0; fj < Sh::FN; ++fj) {
        if (Sh::kBnk)
          Prec::load_b_nk(b[fj], Bs + (wn + 8 * fj) * LDB + kk, LDB, g, t);
        else
          Prec::load_b_kn(b[fj], Bs + kk * LDB + wn + 8 * fj, LDB, g, t);
      }
      SQ_UNROLL
      for (int fi = 0; fi < Sh::FM; ++fi)
        SQ_UNROLL
        for (int fj = 0; fj < Sh::FN; ++fj) Prec::mma(acc.v[fi][fj], a[fi], b[fj]);
    }
    if (++cj == steps) {  // the tile's last step: its outputs, from registers (no shared memory)
      if (Sh::kBnk) break;  // (one tile: stored below, after the row sums)
      store_tile(tile_m0(cu), tile_n0(cu));
      acc.clear();
      cj = 0, ++cu;
    }
  }
  cp_async_wait<0>();  // (only empty groups remain)
  if (rows) rsum.finish(smem, rows, tile_m0(0), op.M, int(blockIdx.z));  // (the same for the whole block)
  // The one tile of a block where B runs along k; an empty split-K slice's zeros (no steps).
  if (Sh::kBnk)
    store_tile(tile_m0(0), tile_n0(0));
  else if (steps == 0)
    for (int u = 0; u < ntile_block; ++u) store_tile(tile_m0(u), tile_n0(u));
}

}  // namespace
}  // namespace cuda
}  // namespace sq
