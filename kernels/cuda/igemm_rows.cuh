// The first convolution's forward on the tensor cores (TF32, BF16): a stride-2, unpadded filter of
// at most 7x7 over a few channels (squeezenet1.0's 3 -> 96 7x7, squeezenet1.1's 3 -> 64 3x3, at
// 224²), two output rows of one image a tile (docs/KERNELS.md, "the row kernel"). The mma kernel
// (igemm_mma.cuh) copies every element of these products 4 bytes at a time: B (the im2col of x) by
// a gather for each of its C*R*S x N*P*Q elements, and A (w, K x C*R*S) as well, since C*R*S (147)
// is no multiple of 4. Here:
//
// - A is resident. A block copies w once, reordered to k = (s, c, r) and already rounded to the
//   multiply's type (TF32 bits, or BF16 pairs packed in a word), into rows of 32-bit words; the
//   fragments read words (g, t), (g + 8, t), (g, t + 4), (g + 8, t + 4), conflict-free with rows
//   4 mod 32 words apart.
// - A tile is output rows p0 and p0 + 1 of one image, 112 columns each (Q <= 112; columns past Q
//   are computed and not stored): 224 columns. They read input rows 2 p0 .. 2 p0 + R of each
//   channel, which the block copies whole (4-byte copies), split by column parity: row j of
//   channel c holds x's even columns at [0, HP) and odd ones at [HP, 2 HP), so that tap (r, s) of
//   output (pr, q) reads row 2 pr + r at (s & 1) HP + s / 2 + q: consecutive q are consecutive
//   words. The part of a row past the image is zero-filled (the columns past Q read it).
// - k = (s, c, r): four consecutive k are mostly four consecutive rows, RP words apart, RP = 8 mod
//   32 (TF32: lane (g, t) reads k t at koff(k) + q + g) or 4 mod 32 (BF16: k 2t and 2t + 1), so the
//   B reads miss each other's banks except where r wraps. koff(k), the offset of tap k's row and
//   column, is a table made once; a k past C*R*S points at word 0 (A is zero there).
// - Blocks persistent over tiles (MmaGrid's resident count), two stages of input rows: the next
//   tile's copies are in flight while the current one is multiplied, one barrier a tile.
// - Warps 2 x 4: a warp takes M_pad / 2 rows (FM fragments of 16, M <= 32 FM) and 56 columns (7
//   fragments), in groups of 4 fragments where FM > 1 (A's fragments read again for each), so that
//   the accumulators fit 128 registers unspilled. The outputs go through FwdOp's epilogue (bias,
//   ReLU) one at a time, each stored through one pointer a row of the lane (a warp's columns lie
//   in one output row), its column an immediate offset.
//
// Kernel source only, no CUDA runtime: tests/test_igemm.cpp runs it on the CPU under
// tests/simt_host.h.
#pragma once
#include <algorithm>

#include "kernels/cuda/igemm_mma.cuh"

namespace sq {
namespace cuda {
namespace {

constexpr int kRowsQ = 112, kRowsTN = 2 * kRowsQ;  // columns an output row, a tile
constexpr int kRowsMaxR = 7;

// A's words: TF32 one k a word (tf32 bits), BF16 two (k and k + 1 packed, the lower k low).
template <class Prec>
struct RowsA;
template <>
struct RowsA<MmaTf32> {
  static constexpr int kPerWord = 1;
  __device__ static uint32_t word(const float* v) { return tf32_operand(v[0]); }
};
template <>
struct RowsA<MmaBf16> {
  static constexpr int kPerWord = 2;
  __device__ static uint32_t word(const float* v) { return pack_bf16x2(v[0], v[1]); }
};

// B's fragment at tap offsets ko (TF32: k t, t + 4; BF16: 2t, 2t + 1, 2t + 8, 2t + 9) of column
// base cb (lane g's column).
template <class Prec>
struct RowsB;
template <>
struct RowsB<MmaTf32> {
  static constexpr int kTaps = 2;
  __device__ static void offsets(int (&ko)[2], const int* koff, int t) { ko[0] = koff[t], ko[1] = koff[t + 4]; }
  __device__ static void load(uint32_t (&b)[2], const float* Bs, const int (&ko)[2], int cb) {
    b[0] = tf32_operand(Bs[ko[0] + cb]), b[1] = tf32_operand(Bs[ko[1] + cb]);
  }
};
template <>
struct RowsB<MmaBf16> {
  static constexpr int kTaps = 4;
  __device__ static void offsets(int (&ko)[4], const int* koff, int t) {
    ko[0] = koff[2 * t], ko[1] = koff[2 * t + 1], ko[2] = koff[2 * t + 8], ko[3] = koff[2 * t + 9];
  }
  __device__ static void load(uint32_t (&b)[2], const float* Bs, const int (&ko)[4], int cb) {
    b[0] = pack_bf16x2(Bs[ko[0] + cb], Bs[ko[1] + cb]), b[1] = pack_bf16x2(Bs[ko[2] + cb], Bs[ko[3] + cb]);
  }
};

// The layout of one launch (host and device): k padded to whole k-steps, A's row of words, the
// input rows (R + 2 a channel) and their pitch, and the dynamic shared memory (floats): A's words,
// the k table, two stages of input rows.
struct RowsLayout {
  int kp, steps, nrows, hp, rp, stage;
  // A's words in fragment order: k-step, fragment of 16 rows, lane, the lane's 4 registers.
  SQ_HOST_DEVICE int a_words(int mpad) const { return steps * (mpad / 16) * 128; }
  SQ_HOST_DEVICE int stages_at(int mpad) const { return a_words(mpad) + kp; }
  SQ_HOST_DEVICE int floats(int mpad) const { return stages_at(mpad) + 2 * stage; }
};
SQ_HOST_DEVICE inline RowsLayout rows_layout(const Geo& g, bool bf16) {
  RowsLayout l;
  const int crs = g.C * g.R * g.S;
  const int step = bf16 ? 16 : 8;  // the mma's depth
  l.kp = (crs + step - 1) / step * step;
  l.steps = l.kp / step;
  l.nrows = g.R + 2;
  const int half = (g.W + 1) / 2, reach = kRowsQ + (g.S - 1) / 2;  // the columns past Q read up to q + s/2
  l.hp = half > reach ? half : reach;
  const int span = 2 * l.hp, pad = bf16 ? 4 : 8;
  l.rp = span + ((pad - span) % 32 + 32) % 32;
  l.stage = g.C * l.nrows * l.rp;
  l.stage = (l.stage + 3) / 4 * 4;
  return l;
}
// Fragments of 16 rows a warp (two warp rows): M <= 32 FM.
inline int rows_fm(int M) { return (M + 31) / 32; }
template <class Prec, int FM>
size_t rows_smem_bytes(const Geo& g) {
  return size_t(rows_layout(g, Prec::K == 16).floats(32 * FM)) * sizeof(float);
}

// The forward that the row kernel takes: stride 2, no padding, a square filter of at most 7x7,
// outputs rows of at most 112, at most 96 filters (FM <= 3), and its stages within kWinSmem in
// both precisions (for squeezenet1.0's conv1 at 224², 111 KB in TF32), or within `limit` where
// the GPU allows a block less (conv.cu).
constexpr size_t kRowsSmem = 113 * 1024;
inline bool rows_fits(const FwdOp& op, size_t limit = kRowsSmem) {
  const Geo& g = op.g;
  if (g.stride != 2 || g.pad != 0 || g.R != g.S || g.R > kRowsMaxR || g.Q > kRowsQ) return false;
  const int fm = rows_fm(g.K);
  if (fm > 3) return false;
  const size_t tf32 = size_t(rows_layout(g, false).floats(32 * fm)) * sizeof(float);
  const size_t bf16 = size_t(rows_layout(g, true).floats(32 * fm)) * sizeof(float);
  return tf32 <= limit && bf16 <= limit;
}
// The tiles: two output rows of an image.
SQ_HOST_DEVICE inline int rows_tiles(const Geo& g) { return g.N * ((g.P + 1) / 2); }

template <class Prec, int FM>
__global__ void __launch_bounds__(kGemmThreads, 2) igemm_rows_kernel(FwdOp op, RowsLayout L) {
  constexpr int MPAD = 32 * FM, FN = kRowsTN / 4 / 8, FG = FM == 1 ? FN : 4, KW = RowsA<Prec>::kPerWord;
  SQ_DYNAMIC_SHARED(float, smem);
  uint32_t* const Aw = reinterpret_cast<uint32_t*>(smem);
  int* const koff = reinterpret_cast<int*>(smem + L.a_words(MPAD));
  float* const stages = smem + L.stages_at(MPAD);
  const Geo& g = op.g;
  const int RS = g.R * g.S, crs = g.C * RS, HW = g.H * g.W, PQ = g.P * g.Q, ptiles = (g.P + 1) / 2;
  const int tiles = rows_tiles(g);
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, gq = lane / 4, t = lane % 4;
  const int wm = (warp / 4) * (MPAD / 2), wn = (warp % 4) * (kRowsTN / 4);

  // A, once, in fragment order: word i of lane (g, t) in fragment f of k-step st is row m = 16 f +
  // g + 8 (i & 1), word kw = 8 st + t + 4 (i >> 1) of that row, and word kw holds k = KW kw .. KW
  // kw + KW - 1, k = (s, c, r) in order; zero past the rows and the taps. A fragment is then one
  // 16-byte read a lane, the 32 lanes' reads contiguous. The k table: tap k's row and column in a
  // stage.
  auto a_at = [&](int m, int k) {  // A(m, k) as read, 0 outside
    if (m >= op.M || k >= crs) return 0.0f;
    const int s = k / (g.C * g.R), cr = k - s * (g.C * g.R), c = cr / g.R, r = cr - c * g.R;
    return op.w[size_t(m) * crs + (c * g.R + r) * g.S + s];
  };
  for (int l = int(threadIdx.x); l < L.a_words(MPAD); l += kGemmThreads) {
    const int i = l % 4, ln = l / 4 % 32, f = l / 128 % (MPAD / 16), st = l / 128 / (MPAD / 16);
    const int m = 16 * f + ln / 4 + 8 * (i & 1), kw = 8 * st + ln % 4 + 4 * (i >> 1);
    float v[2] = {a_at(m, KW * kw), KW == 2 ? a_at(m, KW * kw + 1) : 0.0f};
    Aw[l] = RowsA<Prec>::word(v);
  }
  for (int k = int(threadIdx.x); k < L.kp; k += kGemmThreads) {
    int o = 0;
    if (k < crs) {
      const int s = k / (g.C * g.R), cr = k - s * (g.C * g.R), c = cr / g.R, r = cr - c * g.R;
      o = (c * L.nrows + r) * L.rp + (s & 1) * L.hp + s / 2;
    }
    koff[k] = o;
  }

  // Tile u of the block: its image and first output row.
  auto tile_of = [&](int u, int& img, int& p0) {
    const int tile = int(blockIdx.x) + u * int(gridDim.x);
    img = tile / ptiles, p0 = (tile - img * ptiles) * 2;
  };
  const int ntile_block = (tiles - int(blockIdx.x) + int(gridDim.x) - 1) / int(gridDim.x);
  const int warp_c = warp / L.nrows, warp_j = warp - warp_c * L.nrows;  // the warp's first stage row
  // Tile u's input rows into stage u % 2 (an empty group past the last tile): row j of channel c
  // is x's row 2 p0 + j, even columns then odd ones, zero past the image (its address is formed
  // only for a row inside it).
  auto issue = [&](int u) {
    if (u < ntile_block) {
      int img, p0;
      tile_of(u, img, p0);
      float* Bs = stages + (u % 2) * L.stage;
      // A warp a row, its lanes along x's columns (col < 2 HP: each E and O place once); the
      // warp's rows warp, warp + 8, ... as (channel c, row j of it), stepped without a division.
      for (int row = warp, c = warp_c, j = warp_j; row < g.C * L.nrows; row += kGemmThreads / 32) {
        const int h = 2 * p0 + j;
        const float* src = h < g.H ? op.x + ((size_t(c) * g.N + img) * HW + size_t(h) * g.W) : op.x;
        float* dst = Bs + row * L.rp;
        for (int col = lane; col < 2 * L.hp; col += 32) {
          const bool in = h < g.H && col < g.W;
          cp_async4(dst + (col & 1) * L.hp + (col >> 1), in ? src + col : op.x, in);
        }
        for (j += kGemmThreads / 32; j >= L.nrows; j -= L.nrows) ++c;
      }
    }
    cp_async_commit();
  };

  // The lane's rows' biases, once (FwdOp::bias_of): rows wm + 16 fi + gq + 8 h.
  float bias[FM][2];
  SQ_UNROLL
  for (int fi = 0; fi < FM; ++fi)
    SQ_UNROLL
    for (int h = 0; h < 2; ++h) {
      const int m = wm + 16 * fi + gq + 8 * h;
      bias[fi][h] = m < op.M ? op.bias_of(m) : 0.0f;
    }
  // The warp's output row in a tile and its first column: its 56 columns lie in one row (wn is a
  // multiple of 56, two warps a row). The lane's outputs of row wm + gq start at out (column
  // 2t). lead: all of the warp's rows are among the M and all its columns but the last
  // fragment's are inside Q.
  const int wpr = wn / kRowsQ, wq = wn - wpr * kRowsQ;
  const bool lead = wm + 16 * FM <= op.M && wq + 8 * (FN - 1) <= g.Q;
  float* const out = op.y + (size_t(wm + gq) * op.N + wq + 2 * t);
  // The lane's column of its first fragment as a base in a stage: output row wpr reads input rows
  // from 2 wpr, column wq + gq; fragment fj's is 8 fj further, an immediate offset of the loads.
  const int cb = 2 * wpr * L.rp + wq + gq;

  issue(0);
  for (int u = 0; u < ntile_block; ++u) {
    cp_async_wait<0>();  // this thread's copies of tile u
    __syncthreads();     // everyone's (and A and the k table, at the first); everyone done with u - 1
    issue(u + 1);
    const float* Bs = stages + (u % 2) * L.stage;
    int img, p0;
    tile_of(u, img, p0);
    // The warp's fragments in groups of FG (the accumulators of all FN at FM = 3 would spill):
    // A's fragments are read again for each group.
    SQ_UNROLL
    for (int f0 = 0; f0 < FN; f0 += FG) {
      MmaAcc<FM, FG> acc;
      acc.clear();
      for (int k0 = 0; k0 < L.kp; k0 += Prec::K) {
        uint32_t a[FM][4];
        SQ_UNROLL
        for (int fi = 0; fi < FM; ++fi) {
          const uint4 r = *reinterpret_cast<const uint4*>(Aw + ((k0 / Prec::K * (MPAD / 16) + wm / 16 + fi) * 32 + lane) * 4);
          a[fi][0] = r.x, a[fi][1] = r.y, a[fi][2] = r.z, a[fi][3] = r.w;
        }
        int ko[RowsB<Prec>::kTaps];
        RowsB<Prec>::offsets(ko, koff + k0, t);
        SQ_UNROLL
        for (int fj = 0; fj < FG; ++fj) {
          if (f0 + fj >= FN) break;
          uint32_t b[2];
          RowsB<Prec>::load(b, Bs, ko, cb + 8 * (f0 + fj));
          SQ_UNROLL
          for (int fi = 0; fi < FM; ++fi) Prec::mma(acc.v[fi][fj], a[fi], b);
        }
      }
      // The outputs: the warp's columns are one output row's (p0 + wpr), columns wq .. wq + 55;
      // the lane's (16 fi + gq + 8 h, 8 fj + 2 t + j), as MmaAcc::each lists them, with its rows'
      // biases, where q < Q (every column of a warp that ends inside the row) and m < M. One
      // pointer a row of the lane, the columns its immediate offsets.
      if (p0 + wpr < g.P) {
        float* const yt = out + (size_t(img) * PQ + size_t(p0 + wpr) * g.Q);
        // FwdOp::out_biased without a branch a store: the bias is 0 where there is none.
        auto value = [&](int fi, int fj, int h, int j) {
          const float v = acc.v[fi][fj][2 * h + j] + bias[fi][h];
          return op.relu ? fmaxf(v, 0.0f) : v;
        };
        // Row (fi, h) of the lane's outputs where in(fragment, column) holds.
        auto store_row = [&](int fi, int h, auto in) {
          float* const yr = yt + size_t(16 * fi + 8 * h) * op.N;
          SQ_UNROLL
          for (int fj = 0; fj < FG; ++fj) {
            if (f0 + fj >= FN) break;
            SQ_UNROLL
            for (int j = 0; j < 2; ++j) {
              const int c = 8 * (f0 + fj) + j;
              if (in(f0 + fj, c)) yr[c] = value(fi, fj, h, j);
            }
          }
        };
        // Two paths on purpose: with the row and column tests merged under `lead`, nvcc keeps a
        // branch and a 64-bit address a store (about 14 instructions an output, the SASS).
        if (lead) {
          // Every row of the warp is one of the M, and every column but the last fragment's is
          // inside Q (conv1 of both models): no test but the last fragment's columns.
          SQ_UNROLL
          for (int fi = 0; fi < FM; ++fi)
            SQ_UNROLL
            for (int h = 0; h < 2; ++h)
              store_row(fi, h, [&](int f, int c) { return f < FN - 1 || wq + 2 * t + c < g.Q; });
        } else {
          SQ_UNROLL
          for (int fi = 0; fi < FM; ++fi)
            SQ_UNROLL
            for (int h = 0; h < 2; ++h)
              if (wm + 16 * fi + gq + 8 * h < op.M) store_row(fi, h, [&](int, int c) { return wq + 2 * t + c < g.Q; });
        }
      }
    }
  }
  cp_async_wait<0>();  // (only an empty group remains)
}

// ---- The first convolution's weight gradient -------------------------------------------------
//
// dW (K x C*R*S) += dz (K x N*P*Q) * col(x)^T over the same geometry, k an output pixel. A tile is
// one output row (img, p) for TM filters. Column n of the product is tap (s, c, r) in that order.
//
// - dz's TM x Q piece of the row goes into a stage ([m][k], two stages). Where dz's rows are
//   16-byte aligned (Kd a multiple of 4, dz aligned: every batch size that is a multiple of 4), a
//   row is one copy a lane: pixel q at position q + a, a = the row's start mod 4, so that
//   positions 4 .. 115 are 28 aligned 16-byte copies (zero-filled past Q) and positions 0 .. 3
//   four 4-byte ones (zero before a). Otherwise 4-byte copies, a = 0. The products run over
//   positions 0 .. a + Q, in steps of the mma's depth.
// - x's rows are a ring of kRowswRing rows a channel, split by column parity as the forward's
//   stage. A block's tiles are consecutive output rows (its slice of them), so the next tile
//   reads R - 2 of the current tile's rows again: it copies only its last 2 (all R at an image's
//   first row or the block's first tile). The tile's first row sits at ring position v (v grows
//   by 2 a tile, by R at a fresh one), row r at (v + r) mod kRowswRing: the rows in use and those
//   being copied never share a place (R + 2 <= kRowswRing).
// - Tap n's B element at position j is at kc(n) + j: its row's place in the ring, its column
//   (s & 1) hp + s / 2, less a. Lane (g, t) reads kc(n_g) + t: rows RP = 4 mod 8 words apart,
//   consecutive n on consecutive rows, conflict-free in TF32 where r does not wrap (BF16 reads j
//   2t and 2t + 1: two ways a bank). Positions before a read the word before a row: the
//   previous row's padding (or a guard before the ring), zeroed once, as is every word a product
//   reads that no copy writes; it meets zeros in dz.
//
// Blocks (z, mt): m-tile mt's rows, slice z of the output rows (Z = gridDim.x, the split-K
// slices), summed in registers; slice z goes to ws[z] (dW's own layout) and, with op.rows, its row
// sums of dz to rows[z] (RowSums), for splitk_reduce_kernel. Warps 1 x 8: each takes all TM = 16 FM
// rows and 8 FN of the 64 FN columns. 95 KB (TF32, conv1 of squeezenet1.0; BF16 97 KB): two
// blocks an SM.
constexpr int kRowswK = kRowsQ;            // pixels a tile: one output row, padded
constexpr int kRowswRing = 16;             // ring rows a channel (R + 2 at most 9; a power of two)
// Positions a product may read: a + Q <= 115 rounded up to the mma's depth.
template <int K>
constexpr int kRowswKmax = (kRowswK + 3 + K - 1) / K * K;

struct RowswLayout {
  int lda, rp, hp, stage, ring;
  SQ_HOST_DEVICE int ring_at() const { return 2 * stage + 4; }  // after the two stages and a guard
  SQ_HOST_DEVICE int floats() const { return ring_at() + ring; }
};
SQ_HOST_DEVICE inline RowswLayout rowsw_layout(const Geo& g, int tm, bool bf16) {
  RowswLayout l;
  l.lda = kRowswK + (bf16 ? 24 : 20);  // 8 mod 32 (BF16 pairs), 4 mod 32 (TF32); holds kmax
  const int kmax = bf16 ? kRowswKmax<16> : kRowswKmax<8>;
  const int half = (g.W + 1) / 2, reach = kRowswK + (g.S - 1) / 2;
  l.hp = half > reach ? half : reach;
  // A row: its two halves, then room for the furthest read (odd half, column (S - 1) / 2 + kmax -
  // 1) and for the next row's reads before its start (4 words); an odd multiple of 4 words, so
  // that 8 consecutive rows start in 8 different banks mod 32 (and fit 99 KB, below).
  const int span = 2 * l.hp, far = l.hp + (g.S - 1) / 2 + kmax, need = span + 4 > far ? span + 4 : far;
  l.rp = need + ((4 - need) % 8 + 8) % 8;
  l.stage = tm * l.lda;
  l.ring = g.C * kRowswRing * l.rp;
  return l;
}
// The tile: FM fragments of 16 filters (3 above 64 filters, else 2), FN of 64 columns.
inline int rowsw_fm(int M) { return M > 64 ? 3 : 2; }
inline int rowsw_fn(const Geo& g) { return (g.C * g.R * g.S + 63) / 64; }
inline int rowsw_mtiles(int M) { return (M + 16 * rowsw_fm(M) - 1) / (16 * rowsw_fm(M)); }
template <class Prec, int FM, int FN>
size_t rowsw_smem_bytes(const Geo& g) {
  return size_t(rowsw_layout(g, 16 * FM, Prec::K == 16).floats()) * sizeof(float);
}
// The weight gradient that the row kernel takes: the forward's geometry (stride 2, no padding, a
// square filter of at most 7x7, output rows of at most 112), at most 192 taps, and stages within
// `limit` (kRowsSmem, or less: conv.cu) in both precisions.
inline bool rows_fits(const WeightOp& op, size_t limit = kRowsSmem) {
  const Geo& g = op.g;
  if (g.stride != 2 || g.pad != 0 || g.R != g.S || g.R > kRowsMaxR || g.Q > kRowsQ) return false;
  const int fn = rowsw_fn(g), tm = 16 * rowsw_fm(g.K);
  if (fn > 3) return false;
  return size_t(rowsw_layout(g, tm, false).floats()) * sizeof(float) <= limit &&
         size_t(rowsw_layout(g, tm, true).floats()) * sizeof(float) <= limit;
}
// Its split-K slices: as many blocks as resident (two an SM), at most kRowswSlices (the sum of the
// slices loops over them per output; conv.cu's workspace holds that many) and one output row a slice.
constexpr int kRowswSlices = 256;
inline int rowsw_slices(const Geo& g, int resident) {
  const long long rows = (long long)g.N * g.P, per = (resident + rowsw_mtiles(g.K) - 1) / rowsw_mtiles(g.K);
  return int(std::max<long long>(1, std::min<long long>({kRowswSlices, rows, per})));
}

// A weight-gradient tile of the row kernels (this one's and igemm_wgrowsw.cuh's): output row p of
// image img, its first pixel s0 (consecutive rows are Q pixels apart), dz's shift a (s0 mod 4 where
// dz's rows are copied 16 bytes at a time, else 0), whether it shares no input rows with the tile
// before (fresh), and the ring position v of its first input row (+2 a tile, +R at a fresh one).
struct RowswTile {
  int img, p, s0, a, v;
  bool fresh;
  SQ_HOST_DEVICE static RowswTile first(int r, const Geo& g, bool vec) {  // output row r of N P
    RowswTile u{r / g.P, r % g.P, 0, 0, 0, true};
    u.s0 = u.img * g.P * g.Q + u.p * g.Q, u.a = vec ? u.s0 % 4 : 0;
    return u;
  }
  SQ_HOST_DEVICE RowswTile next(const Geo& g, bool vec) const {
    RowswTile u = *this;
    u.s0 += g.Q, u.fresh = ++u.p == g.P;
    if (u.fresh) u.p = 0, ++u.img;
    u.a = vec ? u.s0 % 4 : 0, u.v += u.fresh ? g.R : 2;
    return u;
  }
  // The input rows the ring lacks for this tile, warp w of `warps` taking rows w, w + warps, ...:
  // f(c, r, at) for row 2p + r of channel c (r from R - 2, all R at a fresh tile), at its place
  // in the ring (floats from the ring's start; rows rp apart).
  template <class F>
  __device__ void each_new_row(const Geo& g, int rp, int warp, int warps, F f) const {
    const int first = fresh ? 0 : g.R - 2, nr = g.R - first;
    for (int i = warp; i < g.C * nr; i += warps) {
      const int c = i / nr, r = first + (i - c * nr);
      f(c, r, (c * kRowswRing + ((v + r) & (kRowswRing - 1))) * rp);
    }
  }
};

// x's row 2p + r of channel c of tile tl into the ring row at xd: its even columns, then its odd
// ones hp on, a lane a column (cp.async; zeros past W).
__device__ inline void rowsw_copy_x_row(const WeightOp& op, const RowswTile& tl, int c, int r, float* xd, int hp,
                                        int lane) {
  const Geo& g = op.g;
  const float* xs = op.x + ((size_t(c) * g.N + tl.img) * (g.H * g.W) + size_t(2 * tl.p + r) * g.W);
  for (int col = lane; col < 2 * hp; col += 32) {
    const bool in = col < g.W;
    cp_async4(xd + (col & 1) * hp + (col >> 1), in ? xs + col : op.x, in);
  }
}

// Tap n = (s, c, r) of the row kernels' weight gradients (this one's B, igemm_wgrowsw.cuh's A):
// its channel's ring and column in it, (s & 1) hp + s / 2, and its row r; 0 past the C R S taps
// (their products are not stored). Its word at position j of a tile is at(tile) + j.
struct RowswTap {
  int base = 0, r = 0;
  SQ_HOST_DEVICE static RowswTap of(int n, const Geo& g, int rp, int hp) {
    const int s = n / (g.C * g.R), cr = n - s * (g.C * g.R), c = cr / g.R;
    const bool in = n < g.C * g.R * g.S;
    return {in ? c * kRowswRing * rp + (s & 1) * hp + s / 2 : 0, in ? cr - c * g.R : 0};
  }
  SQ_HOST_DEVICE int at(const RowswTile& u, int rp) const { return base + ((u.v + r) & (kRowswRing - 1)) * rp - u.a; }
};

template <class Prec, int FM, int FN>
__global__ void __launch_bounds__(kGemmThreads, 2) igemm_rowsw_kernel(WeightOp op, RowswLayout L) {
  constexpr int TM = 16 * FM, TN = 64 * FN, KMAX = kRowswKmax<Prec::K>, NR = kRowswRing;
  SQ_DYNAMIC_SHARED(float, stages);
  float* const ring = stages + L.ring_at();
  const Geo& g = op.g;
  const int crs = g.C * g.R * g.S;
  const long long rows = (long long)g.N * g.P;
  const int m0 = int(blockIdx.y) * TM, z = int(blockIdx.x);
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, gq = lane / 4, t = lane % 4;
  const int wn = warp * (TN / 8);
  // 16-byte copies of dz's rows where every row starts 16-byte aligned but for the pixel offset.
  const bool vec = op.Kd % 4 == 0 && (reinterpret_cast<uintptr_t>(op.dz) & 15) == 0;
  // The lane's tap of each fragment (RowswTap).
  RowswTap tap[FN];
  SQ_UNROLL
  for (int fj = 0; fj < FN; ++fj) tap[fj] = RowswTap::of(wn + 8 * fj + gq, g, L.rp, L.hp);
  // The slice's output rows: [r0, r0 + ntile), each a tile (RowswTile).
  const int r0 = int(rows * z / int(gridDim.x)), ntile = int(rows * (z + 1) / int(gridDim.x)) - r0;
  // Once: zero what products and row sums read and no copy writes: the guard before the ring,
  // each ring row's padding, the stages' positions past 112.
  for (int i = int(threadIdx.x); i < 4; i += kGemmThreads) ring[i - 4] = 0.0f;
  const int pad = L.rp - 2 * L.hp;
  for (int i = int(threadIdx.x); i < g.C * NR * pad; i += kGemmThreads) ring[i / pad * L.rp + 2 * L.hp + i % pad] = 0.0f;
  for (int i = int(threadIdx.x); i < 2 * TM * (KMAX - kRowswK); i += kGemmThreads)
    stages[i / (KMAX - kRowswK) * L.lda + kRowswK + i % (KMAX - kRowswK)] = 0.0f;
  __syncthreads();  // (before any copy lands there)

  // Tile u's copies (an empty group past the last tile): dz's rows into stage u % 2, and x's rows
  // that the ring lacks.
  auto issue = [&](int u, const RowswTile& tl) {
    if (u < ntile) {
      const int a = tl.a;
      float* As = stages + (u % 2) * L.stage;
      for (int mm = warp; mm < TM; mm += kGemmThreads / 32) {
        const int m = m0 + mm;
        const bool mrow = m < op.M;
        const float* src = mrow ? op.dz + (size_t(m) * op.Kd + size_t(tl.s0 - a)) : op.dz;
        float* dst = As + mm * L.lda;
        if (vec) {  // a lane a copy: positions 0 .. 3 by 4 bytes, 4j .. 4j + 3 by 16
          if (lane < 4) {
            const bool in = mrow && lane >= a && lane - a < g.Q;
            cp_async4(dst + lane, in ? src + lane : op.dz, in);
          } else {
            const int j = lane - 3, left = g.Q + a - 4 * j, valid = mrow ? (left < 0 ? 0 : left > 4 ? 4 : left) : 0;
            cp_async16(dst + 4 * j, valid > 0 ? src + 4 * j : op.dz, valid);
          }
        } else {
          for (int q = lane; q < kRowswK; q += 32) {
            const bool in = mrow && q < g.Q;
            cp_async4(dst + q, in ? src + q : op.dz, in);
          }
        }
      }
      tl.each_new_row(g, L.rp, warp, kGemmThreads / 32,
                      [&](int c, int r, int at) { rowsw_copy_x_row(op, tl, c, r, ring + at, L.hp, lane); });
    }
    cp_async_commit();
  };
  float* const rows_out = op.rows;
  RowSums<TM, KMAX> rsum;
  MmaAcc<FM, FN> acc;
  acc.clear();

  RowswTile cur = RowswTile::first(r0, g, vec);
  issue(0, cur);
  for (int u = 0; u < ntile; ++u) {
    cp_async_wait<0>();
    __syncthreads();  // tile u's copies; everyone done with u - 1
    const RowswTile next = cur.next(g, vec);
    issue(u + 1, next);
    const float* As = stages + (u % 2) * L.stage;
    const int kend = cur.a + g.Q;
    int kc[FN];
    SQ_UNROLL
    for (int fj = 0; fj < FN; ++fj) kc[fj] = tap[fj].at(cur, L.rp);
    if (rows_out) rsum.add(As, L.lda);
    SQ_UNROLL
    for (int k0 = 0; k0 < KMAX; k0 += Prec::K) {
      if (k0 >= kend) break;
      uint32_t af[FM][4];
      SQ_UNROLL
      for (int fi = 0; fi < FM; ++fi) Prec::load_a(af[fi], As + 16 * fi * L.lda + k0, L.lda, gq, t);
      SQ_UNROLL
      for (int fj = 0; fj < FN; ++fj) {
        uint32_t b[2];
        Prec::load_b_nk_any(b, ring + kc[fj] + k0, t);
        SQ_UNROLL
        for (int fi = 0; fi < FM; ++fi) Prec::mma(acc.v[fi][fj], af[fi], b);
      }
    }
    cur = next;
  }
  cp_async_wait<0>();  // (only an empty group remains)
  if (rows_out) rsum.finish(stages, rows_out, m0, op.M, z);
  // Column n = (s, c, r) is dW's (c R + r) S + s.
  acc.each(gq, t, [&](int, int r, int j, float val) {
    const int m = m0 + r, n = wn + j;
    if (m >= op.M || n >= crs) return;
    const int s = n / (g.C * g.R), cr = n - s * (g.C * g.R);
    op.store(m, cr * g.S + s, val, z);
  });
}

}  // namespace
}  // namespace cuda
}  // namespace sq
