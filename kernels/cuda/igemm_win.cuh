// The 3x3, stride-1, padding-1 products on the tensor cores (TF32, BF16) as nine shifted 1x1
// products over a window of the input held in shared memory (docs/KERNELS.md, "the window
// kernel"): every Fire module's expand 3x3 forward, and its input gradient, which is the same
// convolution of dz with w flipped and transposed. The mma kernel (igemm_mma.cuh) gathers each B
// element of these products with its own 4-byte copy and key test; here a block copies, for each
// chunk of 16 channels, the pixels its tile needs under all nine taps once, 16 bytes at a time:
//
// - The activations are (C, N, H, W): a channel's pixels over the whole batch are one contiguous
//   run, and output pixel n under tap (r, s) reads input n + (r - 1) W + (s - 1) of it, where the
//   tap lands inside the image (else 0). A tile of TN consecutive pixels [n0, n0 + TN) so reads
//   [n0 - W - 1, n0 + TN + W + 1) of each channel, whatever images and rows it spans: the window,
//   copied from the multiple of 4 below its start. The taps that land outside the image (the
//   padding, a neighbouring row's or image's pixels) are zeroed as the fragments are read, by a
//   pixel's taps (pixel_taps: bit 3 r + s), computed once a tile.
// - k is ordered (tap, channel): a 144-deep chunk is 16 channels under each of the 9 taps. A is
//   read in its own layout, (m, channel, tap): a chunk of a row is 144 consecutive floats of w (the
//   forward) or of w transposed (the input gradient, whose taps run backwards), copied 16 bytes at
//   a time; the fragments read it with a stride of 9 along k.
// - A chunk is a stage: two stages, one barrier a chunk, the next chunk's copies in flight while
//   the current one is multiplied; blocks persistent over tiles as the mma kernel's (MmaGrid), or
//   (the input gradient of small images) a block a tile and split-K slices of whole chunks.
//
// Bank conflicts (bank = address mod 32 words): A rows of LDA = 148 (4 mod 8): a TF32 lane reads
// (g, 9t), at 148g + 9t, which covers the 32 banks (148g mod 32 takes the 8 multiples of 4, and
// 9t mod 4 = t); a BF16 lane reads (g, 18t) and (g, 18t + 9): two ways a bank (t and t + 2), the
// price of reading w in place. The window's rows are ldw apart, ldw = 8 mod 32 (TF32: lane (t, g) reads
// t ldw + g) or 4 mod 32 (BF16: 2t ldw + g), as the mma kernel's [k][n] tiles; a tap's shift is the
// same for the whole warp.
//
// Kernel source only, no CUDA runtime: tests/test_igemm.cpp runs it on the CPU under
// tests/simt_host.h.
#pragma once
#include <algorithm>
#include <type_traits>

#include "kernels/cuda/igemm_mma.cuh"

namespace sq {
namespace cuda {
namespace {

constexpr int kWinC = 16;  // channels a chunk: one BF16 mma deep, two TF32

// A pixel's taps under the 3x3 filter: bit 3 r + s set where row h + r - 1 and column w + s - 1
// lie in the H x W image (one test a tap: (taps & 1 << tap) != 0, a LOP3 into a predicate).
SQ_HOST_DEVICE inline unsigned pixel_taps(int h, int w, int H, int W) {
  unsigned cols = 0, taps = 0;
  for (int s = 0; s < 3; ++s) cols |= unsigned(w + s - 1) < unsigned(W) ? 1u << s : 0u;
  for (int r = 0; r < 3; ++r) taps |= unsigned(h + r - 1) < unsigned(H) ? cols << (3 * r) : 0u;
  return taps;
}

// The product's window operand and A: the forward convolves x with w; the input gradient convolves
// dz with wt (w transposed, (C, K, 3, 3)), tap (r, s) of the window taking w's tap (2 - r, 2 - s).
template <class Op>
struct Win;
template <>
struct Win<FwdOp> {
  static constexpr bool kFlip = false;
  SQ_HOST_DEVICE static const float* src(const FwdOp& op) { return op.x; }
  SQ_HOST_DEVICE static const float* a(const FwdOp& op) { return op.w; }
  SQ_HOST_DEVICE static int channels(const FwdOp& op) { return op.g.C; }
};
template <>
struct Win<DataOp> {
  static constexpr bool kFlip = true;
  SQ_HOST_DEVICE static const float* src(const DataOp& op) { return op.dz; }
  SQ_HOST_DEVICE static const float* a(const DataOp& op) { return op.wt; }
  SQ_HOST_DEVICE static int channels(const DataOp& op) { return op.g.K; }
};

// A's fragments read with a stride of 9 along k (the chunk's (channel, tap) layout, at one tap).
template <class Prec>
struct WinA;
template <>
struct WinA<MmaTf32> {
  // (g, t), (g + 8, t), (g, t + 4), (g + 8, t + 4).
  __device__ static void load(uint32_t (&a)[4], const float* p, int ld, int g, int t) {
    const float* r = p + g * ld + 9 * t;
    a[0] = tf32_operand(r[0]), a[1] = tf32_operand(r[8 * ld]), a[2] = tf32_operand(r[36]),
    a[3] = tf32_operand(r[8 * ld + 36]);
  }
};
template <>
struct WinA<MmaTf32x3> {
  __device__ static void load(uint32_t (&a)[8], const float* p, int ld, int g, int t) {
    const float* r = p + g * ld + 9 * t;
    MmaTf32x3::split_a(a, r[0], r[8 * ld], r[36], r[8 * ld + 36]);
  }
};
template <>
struct WinA<MmaBf16> {
  // (g, 2t..2t+1), (g + 8, 2t..), (g, 2t+8..), (g + 8, 2t+8..).
  __device__ static void load(uint32_t (&a)[4], const float* p, int ld, int g, int t) {
    const float* r = p + g * ld + 18 * t;
    const float* r8 = r + 8 * ld;
    a[0] = pack_bf16x2(r[0], r[9]), a[1] = pack_bf16x2(r8[0], r8[9]);
    a[2] = pack_bf16x2(r[72], r[81]), a[3] = pack_bf16x2(r8[72], r8[81]);
  }
};

template <class Prec, int TM, int TN, int WM>
struct WinShape {
  static constexpr int WN = 8 / WM, WTM = TM / WM, WTN = TN / WN, FM = WTM / 16, FN = WTN / 8;
  static_assert(WM * WN == kGemmThreads / 32 && FM * 16 * WM == TM && FN * 8 * WN == TN, "warp tiles");
  static constexpr int KC = kWinC * 9, LDA = KC + 4, kAFloats = TM * LDA;
  static_assert(LDA % 8 == 4 && kAFloats % 4 == 0, "conflict-free TF32 A reads, 16-byte aligned window");
};

// The window's row stride for TN pixels of rows W wide: the span a tile reads, from the multiple of
// 4 below its start (TN + 2W + 2 + up to 3), rounded up to 8 mod 32 (TF32) or 4 mod 32 (BF16).
SQ_HOST_DEVICE inline int win_pieces(int TN, int W) { return (TN + 2 * W + 5 + 3) / 4; }
SQ_HOST_DEVICE inline int win_ld(int TN, int W, bool bf16) {
  const int span = 4 * win_pieces(TN, W), pad = bf16 ? 4 : 8;
  return span + ((pad - span) % 32 + 32) % 32;
}
// Dynamic shared memory of a launch: two stages of A's chunk and the window.
template <class Prec, int TM, int TN, int WM>
size_t win_smem_bytes(int W) {
  using Sh = WinShape<Prec, TM, TN, WM>;
  const int ldw = win_ld(TN, W, Prec::K == 16);
  return 2 * size_t(Sh::kAFloats + kWinC * ldw) * sizeof(float);
}

// Two blocks an SM: at most this much of stages a block.
constexpr size_t kWinSmem = 113 * 1024;

// The tiles: the forward's M (E3, 64 to 256) in 64 x 128; the input gradient's (S, 16 to 64) as
// narrow as it allows, 256 pixels wide so that a tile's window (TN + 2W + 5 pixels) is mostly its
// own. At W = 55 their stages take 110, 88 and 69 KB (TF32).
template <class F>
void for_each_win_tile(F f) {
  f(MmaTile<64, 128, 2>{});
  f(MmaTile<32, 256, 1>{});
  f(MmaTile<16, 256, 1>{});
}
struct WinTile {
  int m, n;
};
inline WinTile win_tile(int M) { return M <= 16 ? WinTile{16, 256} : M <= 32 ? WinTile{32, 256} : WinTile{64, 128}; }

// Whether the window kernel can take a product whose window operand src has `channels` runs of n
// pixels: a 3x3 filter at stride 1 and padding 1, whole chunks of 16 channels, runs of 4k floats
// from a 16-byte aligned tensor (whole 16-byte pieces), and stages of every tile in both
// precisions within `limit` bytes: kWinSmem (rows up to W = 79), or less where the GPU allows a
// block less (conv.cu: 99 KB on sm_86 and sm_89, rows up to W = 31).
inline bool win_fits(const Geo& g, int channels, int n, const float* src, size_t limit = kWinSmem) {
  if (g.R != 3 || g.S != 3 || g.stride != 1 || g.pad != 1) return false;
  if (channels % kWinC != 0 || n % 4 != 0 || !aligned16(src)) return false;
  bool fit = true;
  for_each_win_tile([&](auto tile) {
    using T = decltype(tile);
    fit = fit && win_smem_bytes<MmaTf32, T::m, T::n, T::wm>(g.W) <= limit &&
          win_smem_bytes<MmaBf16, T::m, T::n, T::wm>(g.W) <= limit;
  });
  return fit;
}
template <class Op>
bool win_fits(const Op& op, size_t limit = kWinSmem) {
  return win_fits(op.g, Win<Op>::channels(op), op.N, Win<Op>::src(op), limit);
}
// The chunks of a split-K slice (the input gradient's, DataOp::partial; conv.cu's data_splits).
inline int win_slice_chunks(int channels, int splits) { return (channels / kWinC + splits - 1) / splits; }

// The windows of kChannels channels (a chunk's kWinC; 8 for the wgmma window kernel's TF32 stages):
// channel c0 + cc's pieces [a0, a0 + 4 npieces) of its run of n floats (from src) into row cc of
// Ws (ldw floats apart), 16 bytes a copy, zero-filled outside the run (a piece lies wholly inside
// or outside it: n and a0 are multiples of 4). The block's 8 warps: warp w takes channels w,
// w + 8, its lanes along the pieces: no division, one pointer a channel (the block's pieces by a
// flat index took a division by npieces and a 64-bit product a copy).
template <int kChannels = kWinC>
__device__ inline void copy_windows(float* Ws, int ldw, const float* src, int c0, int n, int a0, int npieces, int warp,
                                    int lane) {
  static_assert(kChannels % 8 == 0, "whole channels a warp, 8 warps");
  SQ_UNROLL
  for (int q = 0; q < kChannels / 8; ++q) {
    const int cc = warp + q * 8;
    const float* run = src + size_t(c0 + cc) * n;
    float* row = Ws + cc * ldw;
    for (int i = lane; i < npieces; i += 32) {
      const int pos = a0 + 4 * i;
      const bool in = pos >= 0 && pos < n;
      cp_async16_if(row + 4 * i, run + pos, in, src);
    }
  }
}

// vec.a: A's rows 16-byte aligned (else 4-byte copies); vec.pair: the output two at a time. tiles:
// the product's TM x TN tiles, taken by the block as the mma kernel's (rows of tiles fastest).
// slice_chunks: the chunks of split-K slice blockIdx.z (all of them in one slice); a slice past
// the last chunk stores zeros.
template <class Op, class Prec, int TM, int TN, int WM>
__global__ void __launch_bounds__(kGemmThreads, 2) igemm_win_kernel(Op op, int ldw, MmaVec vec, int tiles,
                                                                     int slice_chunks) {
  using Sh = WinShape<Prec, TM, TN, WM>;
  constexpr int LDA = Sh::LDA, KC = Sh::KC;
  SQ_DYNAMIC_SHARED(float, smem);
  const float* const src = Win<Op>::src(op);
  const float* const A = Win<Op>::a(op);
  const int cb = int(blockIdx.z) * slice_chunks, z = int(blockIdx.z);
  const int chunks = max(0, min(Win<Op>::channels(op) / kWinC - cb, slice_chunks));
  const int W = op.g.W, HW = op.g.H * op.g.W;
  const int stage = Sh::kAFloats + kWinC * ldw, npieces = win_pieces(TN, W);
  const int mtiles = (op.M + TM - 1) / TM;
  const int ntile_block = (tiles - int(blockIdx.x) + int(gridDim.x) - 1) / int(gridDim.x);
  auto tile_m0 = [&](int u) { return (int(blockIdx.x) + u * int(gridDim.x)) % mtiles * TM; };
  auto tile_n0 = [&](int u) { return (int(blockIdx.x) + u * int(gridDim.x)) / mtiles * TN; };
  // The window's first element: the multiple of 4 at or below n0 - W - 1 (& ~3 floors negatives).
  auto win0 = [&](int n0) { return (n0 - W - 1) & ~3; };
  const int total = ntile_block * chunks;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, g = lane / 4, t = lane % 4;
  const int wm = (warp / Sh::WN) * Sh::WTM, wn = (warp % Sh::WN) * Sh::WTN;
  // A's 16-byte copies: KC / 4 pieces a row, kARows rows a pass of the block.
  constexpr int kAPieces = KC / 4, kARows = kGemmThreads / kAPieces;
  const int a_row = int(threadIdx.x) / kAPieces, a_kk = int(threadIdx.x) % kAPieces * 4;

  MmaAcc<Sh::FM, Sh::FN> acc;
  acc.clear();

  // Chunk j's copies into stage j % 2 (an empty group past the last: the wait below stays exact).
  // The window's pieces lie wholly inside a channel's run or wholly outside it (N and the window's
  // start are multiples of 4): those outside are zero-filled, never read.
  int iu = 0, ij = 0, m0 = tile_m0(0), n0 = tile_n0(0);
  auto issue = [&](int j) {
    if (j < total) {
      if (ij == chunks) ij = 0, ++iu, m0 = tile_m0(iu), n0 = tile_n0(iu);
      const int c0 = (cb + ij) * kWinC;
      ++ij;
      float* As = smem + (j % 2) * stage;
      float* Ws = As + Sh::kAFloats;
      if (vec.a) {
        // Thread (row a_row, piece a_kk) of each pass of kARows rows (the last 4 threads idle):
        // the divisions once a kernel, a row's pointer a step (a division and a 64-bit product a
        // copy made the copies half the instructions of a chunk).
        if (a_row < kARows) {
          const float* a = A + (size_t(m0 + a_row) * op.Kd + c0 * 9 + a_kk);
          SQ_UNROLL
          for (int r = 0; r < (TM + kARows - 1) / kARows; ++r) {
            const int mm = a_row + r * kARows, m = m0 + mm;
            if (mm < TM) cp_async16_if(As + mm * LDA + a_kk, a, m < op.M, A);
            a += size_t(kARows) * op.Kd;
          }
        }
      } else {
        for (int l = int(threadIdx.x); l < TM * KC; l += kGemmThreads) {
          const int mm = l / KC, kk = l % KC, m = m0 + mm;
          cp_async4(As + mm * LDA + kk, m < op.M ? A + (size_t(m) * op.Kd + c0 * 9 + kk) : A, m < op.M);
        }
      }
      copy_windows(Ws, ldw, src, c0, op.N, win0(n0), npieces, warp, lane);
    }
    cp_async_commit();
  };

  // The multiplied tile's pixels, a thread's column of each fragment: their taps (pixel_taps; 0
  // past the product's edge), and where pixel n0 sits in the window.
  unsigned pbits[Sh::FN];
  int woff = 0;
  auto tile_pixels = [&](int tn0) {
    woff = tn0 - win0(tn0);
    SQ_UNROLL
    for (int fj = 0; fj < Sh::FN; ++fj) {
      const int n = tn0 + wn + 8 * fj + g, hw = n % HW, h = hw / W, w = hw - h * W;
      pbits[fj] = n < op.N ? pixel_taps(h, w, op.g.H, W) : 0u;
    }
  };

  auto store_tile = [&](int tm0, int tn0) { acc.store(op, tm0 + wm, tn0 + wn, g, t, vec.pair, z); };

  issue(0);
  int cu = 0, cj = 0;  // the tile and chunk being multiplied
  for (int i = 0; i < total; ++i) {
    cp_async_wait<0>();  // this thread's copies of chunk i
    __syncthreads();     // everyone's; everyone done with chunk i - 1's stage
    issue(i + 1);        // into that stage
    if (cj == 0) tile_pixels(tile_n0(cu));
    const float* As = smem + (i % 2) * stage;
    const float* Ws = As + Sh::kAFloats;
    SQ_UNROLL
    for (int tap = 0; tap < 9; ++tap) {
      const int r = tap / 3, s = tap % 3;
      const unsigned tb = 1u << tap;
      const float* Wt = Ws + (woff + (r - 1) * W + (s - 1) + wn);
      const float* At = As + wm * LDA + (Win<Op>::kFlip ? 8 - tap : tap);
      SQ_UNROLL
      for (int kk = 0; kk < kWinC; kk += Prec::K) {
        typename Prec::FragA a[Sh::FM];
        typename Prec::FragB b[Sh::FN];
        SQ_UNROLL
        for (int fi = 0; fi < Sh::FM; ++fi) WinA<Prec>::load(a[fi], At + 16 * fi * LDA + 9 * kk, LDA, g, t);
        SQ_UNROLL
        for (int fj = 0; fj < Sh::FN; ++fj) {
          Prec::load_b_kn(b[fj], Wt + kk * ldw + 8 * fj, ldw, g, t);
          const bool on = (pbits[fj] & tb) != 0u;  // the tap lands inside the pixel's image
          for (uint32_t& e : b[fj]) e = on ? e : 0u;
        }
        SQ_UNROLL
        for (int fi = 0; fi < Sh::FM; ++fi)
          SQ_UNROLL
          for (int fj = 0; fj < Sh::FN; ++fj) Prec::mma(acc.v[fi][fj], a[fi], b[fj]);
      }
    }
    if (++cj == chunks) {  // the tile's last chunk: its outputs, from registers
      store_tile(tile_m0(cu), tile_n0(cu));
      acc.clear();
      cj = 0, ++cu;
    }
  }
  cp_async_wait<0>();  // (only an empty group remains)
  if (chunks == 0)       // an empty slice's zeros
    for (int u = 0; u < ntile_block; ++u) store_tile(tile_m0(u), tile_n0(u));
}

// ---- The weight gradient over windows ----------------------------------------------------------
//
// dW (K x 9C) += dz (K x NHW) * col(x)^T: k a pixel, n a (channel, tap), dW's column 9 c + tap
// (WeightOp, whose B the mma kernel gathers 4 bytes at a time along the pixels). Here k runs in
// chunks of kWinP pixels [p0, p0 + kWinP), and under tap (r, s) pixel p reads x at
// p + (r - 1) W + (s - 1) of each channel (0 where the tap leaves the pixel's image), so a chunk of
// a channel reads the window [p0 - W - 1, p0 + kWinP + W + 1) of it, whatever the tap:
//
// - A block's tile is TM rows of dW by 16 channels under all 9 taps: the 144 columns [9 c0,
//   9 c0 + 144). A stage holds dz's TM x kWinP piece ([m][k], 16-byte copies), the 16 channels'
//   windows (16-byte copies from the multiple of 4 below the start) and the chunk's pixels' taps
//   (bit 3 r + s where tap (r, s) lands inside the pixel's image, computed at the copy).
// - Warps 4 x 2: warp (wm, wn) takes TM / 4 rows and channels 8 wn .. 8 wn + 7 under each tap, one
//   8-column fragment a tap, so a fragment's tap is a constant: the B fragment of tap (r, s) is the
//   [n][k] tile at the window's row 8 wn, shifted by (r - 1) W + (s - 1), its elements zeroed where
//   their pixel lacks the tap's bit. Its reads: lane (g, t) reads channel g at pixel t (TF32), at
//   g ldw + t + shift, conflict-free with ldw = 4 mod 32; BF16 pixels 2t and 2t + 1 one float at a
//   time (the shift may be odd), two ways a bank.
// - Split-K as the mma kernel's weight gradient (conv.cu's weight_splits, ws[z]), in slices of
//   whole chunks; a slice past the pixels stores zeros. With op.rows, the blocks of the first
//   channel tile also write their slice's sums of dz's rows (the bias gradient, RowSums).
constexpr int kWinP = 64;  // pixels a chunk

template <class Prec, int TM>
struct WinWShape {
  static constexpr int WM = 4, WN = 2, FM = TM / WM / 16, FN = 9;
  static_assert(FM >= 1 && FM * 16 * WM == TM && WN * kWinC / 2 == kWinC && WM * WN == kGemmThreads / 32,
                "warps 4 x 2, 8 channels a warp");
  static constexpr int LDA = kWinP + Prec::kPadRowK, kAFloats = TM * LDA;
  static_assert(kAFloats % 4 == 0, "16-byte aligned window");
};
// The window's row stride: kWinP pixels' span, at 4 mod 32 (conflict-free [n][k] reads in TF32).
SQ_HOST_DEVICE inline int winw_ld(int W) { return win_ld(kWinP, W, true); }
// A stage: A's piece, the 16 windows, the kWinP pixels' tap bits.
template <class Prec, int TM>
SQ_HOST_DEVICE inline int winw_stage_floats(int W) {
  return WinWShape<Prec, TM>::kAFloats + kWinC * winw_ld(W) + kWinP;
}
template <class Prec, int TM>
size_t winw_smem_bytes(int W) {
  return 2 * size_t(winw_stage_floats<Prec, TM>(W)) * sizeof(float);
}
// The tiles: 128 rows where they pad M no more than 64 would (M = 128, 256), else 64.
template <class F>
void for_each_winw_tile(F f) {
  f(std::integral_constant<int, 64>{});
  f(std::integral_constant<int, 128>{});
}
inline int winw_tile(int M) { return M > 64 && (M + 127) / 128 * 128 <= (M + 63) / 64 * 64 ? 128 : 64; }
// A split-K slice's pixels: whole chunks.
inline int winw_slice_pixels(int Kd, int splits) {
  const int p = (Kd + splits - 1) / splits;
  return (p + kWinP - 1) / kWinP * kWinP;
}
// Whether the window kernel can take a weight gradient of geometry g: a 3x3 filter at stride 1 and
// padding 1, whole chunks of 16 channels, planes of 4k floats, and the stages of both tiles in both
// precisions within `limit` bytes (kWinSmem: rows up to W = 127; 99 KB: up to W = 63); and of op:
// x and dz 16-byte aligned.
inline bool winw_geometry_fits(const Geo& g, size_t limit = kWinSmem) {
  if (g.R != 3 || g.S != 3 || g.stride != 1 || g.pad != 1) return false;
  if (g.C % kWinC != 0 || (long long)g.N * g.H * g.W % 4 != 0) return false;
  bool fit = true;
  for_each_winw_tile([&](auto tm) {
    constexpr int TM = decltype(tm)::value;
    fit = fit && winw_smem_bytes<MmaTf32, TM>(g.W) <= limit && winw_smem_bytes<MmaBf16, TM>(g.W) <= limit;
  });
  return fit;
}
inline bool win_fits(const WeightOp& op, size_t limit = kWinSmem) {
  return winw_geometry_fits(op.g, limit) && aligned16(op.x) && aligned16(op.dz);
}
// The weight gradient's split-K slices through the window kernel: enough for about `fill` blocks
// (conv.cu: two waves of two blocks an SM), slices of at least 4 chunks, at most 256 slices (the
// sum of the slices loops over them per output). conv.cu's weight_splits counts the fp32 kernel's
// 64x64 tiles, of which a weight gradient has 2-5x as many as the window's TM x 144: its slices
// left these launches under one wave (fire8: 28 slices of 8 tiles, 224 blocks).
inline int winw_splits(const Geo& g, int fill) {
  const int tm = winw_tile(g.K), tiles = (g.K + tm - 1) / tm * (g.C / kWinC);
  const long long kd = (long long)g.N * g.H * g.W;
  const long long z = std::min<long long>({256, std::max<long long>(1, kd / (4 * kWinP)), (fill + tiles - 1) / tiles});
  return int(std::max<long long>(1, z));
}

// B's fragment of one tap from the [n][k] window tile at p (channel g's row, pixel t), its pixels'
// taps in pb (TF32: pixels t, t + 4; BF16: 2t, 2t + 1, 2t + 8, 2t + 9; bit 3 r + s set where tap
// (r, s) lands inside the pixel's image), zero where they lack the tap's bit tb: one test an
// element, which the compiler makes one LOP3 into a predicate (a tap as two bits, row and column,
// took a LOP3 and a compare).
template <class Prec>
struct WinB;
template <>
struct WinB<MmaTf32> {
  static constexpr int kBits = 2;
  __device__ static void bits(unsigned (&b)[2], const unsigned* pb, int t) { b[0] = pb[t], b[1] = pb[t + 4]; }
  __device__ static void load(uint32_t (&b)[2], const float* p, int ld, int g, int t, const unsigned (&pb)[2],
                              unsigned tb) {
    const float* r = p + g * ld + t;
    b[0] = (pb[0] & tb) != 0u ? tf32_operand(r[0]) : 0u;
    b[1] = (pb[1] & tb) != 0u ? tf32_operand(r[4]) : 0u;
  }
};
template <>
struct WinB<MmaTf32x3> : WinB<MmaTf32> {  // (TF32's pixels and bits; each value split)
  __device__ static void load(uint32_t (&b)[4], const float* p, int ld, int g, int t, const unsigned (&pb)[2],
                              unsigned tb) {
    const float* r = p + g * ld + t;
    MmaTf32x3::split_b(b, (pb[0] & tb) != 0u ? r[0] : 0.0f, (pb[1] & tb) != 0u ? r[4] : 0.0f);
  }
};
template <>
struct WinB<MmaBf16> {
  static constexpr int kBits = 4;
  __device__ static void bits(unsigned (&b)[4], const unsigned* pb, int t) {
    b[0] = pb[2 * t], b[1] = pb[2 * t + 1], b[2] = pb[2 * t + 8], b[3] = pb[2 * t + 9];
  }
  __device__ static void load(uint32_t (&b)[2], const float* p, int ld, int g, int t, const unsigned (&pb)[4],
                              unsigned tb) {
    const float* r = p + g * ld + 2 * t;
    b[0] = pack_bf16x2((pb[0] & tb) != 0u ? r[0] : 0.0f, (pb[1] & tb) != 0u ? r[1] : 0.0f);
    b[1] = pack_bf16x2((pb[2] & tb) != 0u ? r[8] : 0.0f, (pb[3] & tb) != 0u ? r[9] : 0.0f);
  }
};

// Grid: x the tiles (row tiles fastest, then the C / 16 channel tiles), z the split-K slices of
// slice_pixels each; ldw = winw_ld(W).
template <class Prec, int TM>
__global__ void __launch_bounds__(kGemmThreads, 2) igemm_winw_kernel(WeightOp op, int ldw, int slice_pixels) {
  using Sh = WinWShape<Prec, TM>;
  constexpr int LDA = Sh::LDA;
  SQ_DYNAMIC_SHARED(float, smem);
  const int mtiles = (op.M + TM - 1) / TM;
  const int m0 = int(blockIdx.x) % mtiles * TM, c0 = int(blockIdx.x) / mtiles * kWinC, z = int(blockIdx.z);
  const int kd = op.Kd, pb = z * slice_pixels, pe = min(kd, pb + slice_pixels);
  const int chunks = pe > pb ? (pe - pb + kWinP - 1) / kWinP : 0;
  const int W = op.g.W, H = op.g.H, HW = H * W;
  const int stage = Sh::kAFloats + kWinC * ldw + kWinP, npieces = win_pieces(kWinP, W);
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, g = lane / 4, t = lane % 4;
  const int wm = (warp / Sh::WN) * (TM / Sh::WM), wn = warp % Sh::WN;
  auto win0 = [&](int p0) { return (p0 - W - 1) & ~3; };
  // dz's 16-byte copies: kWinP / 4 pieces a row, kARows rows a pass of the block.
  constexpr int kAPieces = kWinP / 4, kARows = kGemmThreads / kAPieces;
  static_assert(kARows * kAPieces == kGemmThreads && TM % kARows == 0, "whole passes");
  const int a_row = int(threadIdx.x) / kAPieces, a_kk = int(threadIdx.x) % kAPieces * 4;
  float* const rows = c0 == 0 ? op.rows : nullptr;
  RowSums<TM, kWinP> rsum;
  MmaAcc<Sh::FM, Sh::FN> acc;
  acc.clear();

  // Chunk j's copies and tap bits into stage j % 2 (an empty group past the last chunk).
  auto issue = [&](int j) {
    if (j < chunks) {
      const int p0 = pb + j * kWinP;
      float* As = smem + (j % 2) * stage;
      float* Ws = As + Sh::kAFloats;
      unsigned* Pb = reinterpret_cast<unsigned*>(Ws + kWinC * ldw);
      {  // dz's rows: thread (a_row, a_kk) of each pass of kARows rows, a row's pointer a step
        const int p = p0 + a_kk, nv = max(0, min(4, pe - p));
        const float* a = op.dz + (size_t(m0 + a_row) * kd + p);
        SQ_UNROLL
        for (int r = 0; r < TM / kARows; ++r) {
          const int mm = a_row + r * kARows, v = m0 + mm < op.M ? nv : 0;
          cp_async16(As + mm * LDA + a_kk, v > 0 ? a : op.dz, v);
          a += size_t(kARows) * kd;
        }
      }
      copy_windows(Ws, ldw, op.x, c0, kd, win0(p0), npieces, warp, lane);
      if (int(threadIdx.x) < kWinP) {  // (plain stores: visible after the barrier before the chunk's products)
        const int p = p0 + int(threadIdx.x), hw = p % HW, h = hw / W, w = hw - h * W;
        Pb[threadIdx.x] = p < pe ? pixel_taps(h, w, H, W) : 0u;
      }
    }
    cp_async_commit();
  };

  issue(0);
  for (int i = 0; i < chunks; ++i) {
    cp_async_wait<0>();  // this thread's copies of chunk i
    __syncthreads();     // everyone's, and the tap bits; everyone done with chunk i - 1's stage
    issue(i + 1);        // into that stage
    const int p0 = pb + i * kWinP;
    const float* As = smem + (i % 2) * stage;
    const float* Ws = As + Sh::kAFloats;
    const unsigned* Pb = reinterpret_cast<const unsigned*>(Ws + kWinC * ldw);
    if (rows) rsum.add(As, LDA);
    const float* Wc = Ws + 8 * wn * ldw + (p0 - win0(p0));  // pixel p0 of the warp's first channel
    SQ_UNROLL
    for (int kk = 0; kk < kWinP; kk += Prec::K) {
      typename Prec::FragA a[Sh::FM];
      SQ_UNROLL
      for (int fi = 0; fi < Sh::FM; ++fi) Prec::load_a(a[fi], As + (wm + 16 * fi) * LDA + kk, LDA, g, t);
      unsigned pbits[WinB<Prec>::kBits];
      WinB<Prec>::bits(pbits, Pb + kk, t);
      SQ_UNROLL
      for (int tap = 0; tap < 9; ++tap) {
        const int r = tap / 3, s = tap % 3;
        typename Prec::FragB b;
        WinB<Prec>::load(b, Wc + kk + (r - 1) * W + (s - 1), ldw, g, t, pbits, 1u << tap);
        SQ_UNROLL
        for (int fi = 0; fi < Sh::FM; ++fi) Prec::mma(acc.v[fi][tap], a[fi], b);
      }
    }
  }
  cp_async_wait<0>();  // (only an empty group remains)
  if (rows) rsum.finish(smem, rows, m0, op.M, z);  // (the same for the whole block)
  // Fragment `tap`'s column j is channel j - 8 tap of the warp's 8: dW's column 9 c + tap. An empty
  // slice stores its zeros.
  acc.each(g, t, [&](int tap, int r, int j, float v) {
    const int m = m0 + wm + r, c = c0 + 8 * wn + j - 8 * tap;
    if (m < op.M) op.store(m, 9 * c + tap, v, z);
  });
}

}  // namespace
}  // namespace cuda
}  // namespace sq
