// The 3x3 weight gradient over windows on Hopper's warpgroup MMA (sm_90a, TF32 and BF16;
// docs/KERNELS.md, "the wgmma window weight gradient"): every Fire's expand 3x3 weight gradient,
// dW (K x 9C) += dz (K x NHW) * col(x)^T, which the window kernel (igemm_win.cuh,
// igemm_winw_kernel) multiplies with mma.sync.
//
// The product turned around, D^T = col(x) * dz^T (9C x K, k the pixels):
// - wgmma's register operand is col(x): row m = 9c + tap of D^T (dW's column m) at pixel p is x's
//   channel c at p shifted by the tap, 0 where the tap leaves p's image. A thread's rows are the
//   same two for the whole kernel (16w + g and + 8 of its warpgroup's 64), so each has one offset
//   into the window (its channel's row, its tap's shift) and one tap bit; a fragment element is a
//   load predicated on its pixel's taps (a stage's pixels' taps, pixel_taps, computed at its copy).
// - wgmma's shared-memory operand is dz, K-major as it lies in memory (pixels along k): the 1x1
//   wgmma kernel's weight copies (KMajorCopy), 128 or 64 filters by 32 pixels a step.
// - A block: two warpgroups, 128 rows of D^T (64 each: dW's columns 9c + tap, 14 to 15 channels'
//   worth) by TN = 128 or 64 filters; a warpgroup whose rows all lie past 9C multiplies zeros. The
//   stage's window holds the 16 channels from min(the first row's channel, C - 16) (C is a
//   multiple of 16), each over the step's 32 pixels and their reach (copy_windows, win_pieces of
//   32 pixels).
// - Stages and the wait as the 1x1 wgmma kernel's: 4 of 32 pixels, copies a stage short of the
//   pipeline ahead, each step's group waited for before the next step's fragments are written.
// - Split-K over blockIdx.z as the window kernel's (conv.cu's win_splits, winw_slice_pixels: whole
//   64-pixel chunks), slice z's sums to op.ws's slice z; with op.rows, the blocks of the first row
//   tile also write their slice's sums of dz's rows (the bias gradient).
//
// Kernel source only: tests/test_igemm.cpp runs it under tests/simt_host.h.
#pragma once
#include <cstdint>

#include "kernels/cuda/igemm_wg.cuh"
#include "kernels/cuda/igemm_win.cuh"

namespace sq {
namespace cuda {
namespace {

template <bool kBf16, int TN>
struct WgWinwShape {
  static_assert(TN == 64 || TN == 128, "wgmma tiles of 64 or 128 filters");
  static constexpr int KS = 32, kRows = 128, kStages = 4, kAhead = kStages - 1;
  static constexpr int kBFloats = KMajorCopy<kBf16, TN>::kFloats;
  static constexpr uint32_t kLbo = KMajorCopy<kBf16, TN>::kLbo, kSbo = KMajorCopy<kBf16, TN>::kSbo;
};
// The window's row stride: the 32 pixels' reach, a multiple of 4 (16-byte copies), at 8 mod 32
// (TF32) or 4 mod 32 (BF16), win_ld's. A warp's 8 rows g read their channels' rows at their taps'
// shifts, + t (TF32) or + 2t (BF16); over SqueezeNet's rows (W = 55, 27, 13) and every window
// offset these strides average 1.0-1.7 ways a bank in TF32 and 1.3-2.0 in BF16, where 16 mod 32
// gave 1.7-1.8 and 1.8-2.0 (a count of the distinct words a bank serves, docs/KERNELS.md).
SQ_HOST_DEVICE inline int wgwinw_ld(int W, bool bf16) { return win_ld(32, W, bf16); }
// A stage: dz's piece, the 16 windows, the 32 pixels' tap bits.
template <bool kBf16, int TN>
SQ_HOST_DEVICE inline int wgwinw_stage_floats(int W) {
  return WgWinwShape<kBf16, TN>::kBFloats + kWinC * wgwinw_ld(W, kBf16) + 32;
}
template <bool kBf16, int TN>
size_t wgwinw_smem_bytes(int W) {
  return size_t(WgWinwShape<kBf16, TN>::kStages) * size_t(wgwinw_stage_floats<kBf16, TN>(W)) * sizeof(float);
}
constexpr size_t kWgWinwSmem = 113 * 1024;  // two blocks an SM
inline bool wgwinw_fits(const Geo& g, size_t limit = kWgWinwSmem) {
  return wgwinw_smem_bytes<false, 128>(g.W) <= limit && wgwinw_smem_bytes<true, 128>(g.W) <= limit;
}
// The filters' tile: 128 where it divides K, else 64 (K = 192: three tiles of 64, not two of 128).
inline int wgwinw_tile(int K) { return K % 128 == 0 ? 128 : 64; }

// Grid: x the tiles (row tiles of 128 fastest, then filter tiles of TN), z the split-K slices of
// slice_pixels each (a multiple of 32).
template <bool kBf16, int TN>
__global__ void __launch_bounds__(kWgThreads, 2) igemm_wgwinw_kernel(WeightOp op, int ldw, int slice_pixels) {
  using Sh = WgWinwShape<kBf16, TN>;
  constexpr int KS = Sh::KS;
  SQ_DYNAMIC_SHARED(float, smem);
  const int tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32, t = lane % 4;
  const int C = op.g.C, rows9 = 9 * C, rtiles = (rows9 + Sh::kRows - 1) / Sh::kRows;
  const int r0 = int(blockIdx.x) % rtiles * Sh::kRows, n0 = int(blockIdx.x) / rtiles * TN, z = int(blockIdx.z);
  const int pb = z * slice_pixels, pe = min(op.Kd, pb + slice_pixels);
  const int steps = pe > pb ? (pe - pb + KS - 1) / KS : 0;
  const int W = op.g.W, H = op.g.H, HW = H * W;
  const int stage = wgwinw_stage_floats<kBf16, TN>(W), npieces = win_pieces(KS, W);
  const int cbase = min(r0 / 9, C - kWinC);  // the window's first channel
  auto win0 = [&](int p0) { return (p0 - W - 1) & ~3; };

  // dz's rows n0 .. n0 + TN - 1 from the slice's first pixel (row sums where op.rows is set and
  // the block has the first row tile).
  KMajorCopy<kBf16, TN> bcopy(op.dz, n0, op.M, size_t(op.Kd), pb);
  // The bias's row sums: BF16 from the loads (rsum, KMajorCopy's rows), TF32 from the landed
  // stage, fp32 as copied (RowSums' thread map: 256 / TN threads a row, one register).
  float* const rows = r0 == 0 ? op.rows : nullptr;
  float rsum[kBf16 ? TN / 32 : 1] = {};
  RowSums<TN, KS> rs;
  // Warp 0's lane l computes the tap bits of pixel pb + 32 j + l, step by step (copy's j runs
  // 0, 1, 2, ...): its row and column in the image, found by two divisions once and moved 32
  // pixels a step (the divisions a step made warp 0 the last at every barrier); packed in one
  // register, row above column (H, W < 2^15), which keeps the 128-filter TF32 kernel unspilled.
  int prc = 0;
  if (tid < KS) {
    const int hw = (pb + tid) % HW, h = hw / W;
    prc = h << 16 | (hw - h * W);
  }
  auto copy = [&](int j, int st) {
    float* bs = smem + st * stage;
    float* ws = bs + Sh::kBFloats;
    unsigned* pbits = reinterpret_cast<unsigned*>(ws + kWinC * ldw);
    const int p0 = pb + j * KS;
    bcopy.template copy<kBf16>(bs, j, p0, pe, op.dz, rsum);
    copy_windows(ws, ldw, op.x, cbase, op.Kd, win0(p0), npieces, warp, lane);
    if (tid < KS) {  // (plain stores: visible after the barrier before the step's products)
      int ph = prc >> 16, pw = prc & 0xFFFF;
      pbits[tid] = p0 + tid < pe ? pixel_taps(ph, pw, H, W) : 0u;
      for (pw += KS; pw >= W; pw -= W)
        if (++ph == H) ph = 0;
      prc = ph << 16 | pw;
    }
  };

  // The thread's two rows of D^T (dW's columns m = 9c + tap): their place in the window (the
  // channel's row, the tap's shift) and their tap bit; a row past 9C reads the window's start
  // under no tap.
  const int wrow = r0 + wg_row(tid);
  int off[2];
  unsigned bit[2];
  SQ_UNROLL
  for (int e = 0; e < 2; ++e) {
    const int m = wrow + 8 * e, c = m / 9, tap = m % 9, r = tap / 3, s = tap % 3;
    const bool in = m < rows9;
    off[e] = in ? (c - cbase) * ldw + (r - 1) * W + (s - 1) : 0;
    bit[e] = in ? 1u << tap : 0u;
  }

  float d[TN / 2];
  wg_clear(d);
  wg_prologue<Sh::kAhead>(steps, copy);
  constexpr int KW = kBf16 ? 16 : 8;
  for (int j = 0; j < steps; ++j) {
    wg_step_begin<Sh::kAhead>();  // (the tap bits too: plain stores before the barrier)
    const float* bs = smem + (j % Sh::kStages) * stage;
    const float* ws = bs + Sh::kBFloats;
    const unsigned* pbits = reinterpret_cast<const unsigned*>(ws + kWinC * ldw);
    if constexpr (!kBf16) {
      if (rows) KMajorCopy<kBf16, TN>::add_landed_rows(rs, bs);
    }
    // The fragments live until the wait below, where the tensor cores have read them. (A
    // warpgroup whose rows all lie past 9C multiplies zeros: skipping its wgmmas on a condition the
    // compiler cannot see is uniform made ptxas serialise every wgmma, its C7518.)
    uint32_t a[KS / KW][4];
    const int p0 = pb + j * KS, woff = p0 - win0(p0);
    const float* x0 = ws + (off[0] + woff);
    const float* x1 = ws + (off[1] + woff);
    uint64_t desc[KS / KW];
    SQ_UNROLL
    for (int s = 0; s < KS / KW; ++s) {
      if constexpr (kBf16) {  // pixels 2t, 2t + 1 and 2t + 8, 2t + 9 of the 16
        const int q = 16 * s + 2 * t;
        const unsigned b0 = pbits[q], b1 = pbits[q + 1], b8 = pbits[q + 8], b9 = pbits[q + 9];
        auto v = [&](const float* x, int k, unsigned bits, unsigned tb) { return (bits & tb) != 0u ? x[k] : 0.0f; };
        a[s][0] = pack_bf16x2(v(x0, q, b0, bit[0]), v(x0, q + 1, b1, bit[0]));
        a[s][1] = pack_bf16x2(v(x1, q, b0, bit[1]), v(x1, q + 1, b1, bit[1]));
        a[s][2] = pack_bf16x2(v(x0, q + 8, b8, bit[0]), v(x0, q + 9, b9, bit[0]));
        a[s][3] = pack_bf16x2(v(x1, q + 8, b8, bit[1]), v(x1, q + 9, b9, bit[1]));
      } else {  // pixels t and t + 4 of the 8
        const int q = 8 * s + t;
        const unsigned b0 = pbits[q], b4 = pbits[q + 4];
        a[s][0] = (b0 & bit[0]) != 0u ? tf32_operand(x0[q]) : 0u;
        a[s][1] = (b0 & bit[1]) != 0u ? tf32_operand(x1[q]) : 0u;
        a[s][2] = (b4 & bit[0]) != 0u ? tf32_operand(x0[q + 4]) : 0u;
        a[s][3] = (b4 & bit[1]) != 0u ? tf32_operand(x1[q + 4]) : 0u;
      }
      desc[s] = wgmma_desc(smem_address(bs + 64 * s), Sh::kLbo, Sh::kSbo);
    }
    wgmma_issue<kBf16, TN>(d, a, desc);
    wg_step_end<Sh::kAhead, Sh::kStages>(j, steps, copy, d);
  }
  cp_async_wait<0>();  // (the last steps' empty groups)
  if (rows) {  // (the same for the whole block)
    if constexpr (kBf16)
      bcopy.finish_rows(rsum, smem, rows, n0, op.M, z);
    else
      rs.finish(smem, rows, n0, op.M, z);
  }
  // Row m = wrow + 8 (e / 2) of D^T, filter n0 + 8i + 2t + e % 2: dW's element (filter, m) in
  // slice z. An empty slice stores its zeros.
  SQ_UNROLL
  for (int i = 0; i < TN / 8; ++i)
    SQ_UNROLL
    for (int e = 0; e < 4; ++e) {
      const int m = wrow + 8 * (e / 2), n = n0 + 8 * i + 2 * t + e % 2;
      if (m < rows9 && n < op.M) op.store(n, m, d[4 * i + e], z);
    }
}

}  // namespace
}  // namespace cuda
}  // namespace sq
