// The 3x3 window products (every Fire's expand 3x3 forward and input gradient) on Hopper's
// warpgroup MMA (sm_90a, TF32 and BF16; docs/KERNELS.md, "wgmma window"): the window kernel's
// nine shifted 1x1 products (igemm_win.cuh) with the multiply turned around as the 1x1 wgmma
// kernel's (igemm_wg.cuh), D^T = window^T * A^T.
//
// - wgmma's register operand is the window: a tap's A fragment is the mma kernels' fragment of the
//   window's rows (channels) at the pixels shifted by the tap, zeroed where the tap leaves the
//   pixel's image (pixel_taps), so the shift and the padding cost what they cost the window
//   kernel's B fragments. The window cannot be the shared-memory operand: a shift by one pixel
//   moves it off the core matrices' 16-byte rows, and no element could be zeroed.
// - wgmma's shared-memory operand is A (w for the forward, wt for the input gradient) K-major,
//   k a tap's channels: core matrices of 8 rows by 16 bytes of consecutive channels at one tap.
//   A's rows hold (channel, tap) with the taps innermost, so A is first rewritten in the stages'
//   order as 32-bit words, fp32's bits (TF32) or two channels' BF16 (reorder_taps_kernel, once a
//   product): row m's piece of stage j is its 9 taps by 32 bytes of the stage's channels, 288
//   contiguous bytes, which a thread copies 16 bytes at a time at constant offsets from one
//   pointer. Rewritten in the copy instead, BF16's conversion and the reordering would take 36 of
//   a thread's registers and 72 of its instructions a stage at 128 rows; with the taps outermost
//   but the channels whole (m, tap, channel), each copy's address took 6 instructions.
// - A stage: one wgmma deep of channels (8 TF32, 16 BF16: 32 bytes of each row and tap): A's TM
//   rows under the 9 taps (9 TM x 32 bytes; a tap's core matrices 128 bytes apart along k, 256
//   along m) and the channels' windows of the tile's 128 pixels (copy_windows; rows ldw = win_ld
//   apart, conflict-free fragment reads as in the window kernel). Two stages, one barrier a
//   stage, the next stage's copies in flight while the tensor cores multiply.
// - A block: two warpgroups, 128 pixels (64 a warpgroup) by TM = 64 or 128 rows, two blocks an
//   SM. A stage's 9 wgmmas go in groups of kTapGroup taps, each group's fragments and descriptors
//   made before its wgmma.fence and the group waited for before the next group's fragments are
//   written (ptxas serialises wgmmas whose input registers are written while they run; its C7513):
//   at 128 rows, 9 taps' fragments beside 64 accumulators would pass 128 registers.
// - Split-K (the input gradient's data_splits) over blockIdx.z in slices of whole 16-channel
//   chunks (win_slice_chunks, as the window kernel's): slice z's raw sums to op.partial, an empty
//   slice stores zeros. The epilogue: wg_store (igemm_wg.cuh).
//
// Kernel source only: tests/test_igemm.cpp runs it under tests/simt_host.h.
#pragma once
#include <cstdint>

#include "kernels/cuda/igemm_wg.cuh"
#include "kernels/cuda/igemm_win.cuh"

namespace sq {
namespace cuda {
namespace {

// A (M x 9C, row m holding channel c's taps at 9c .. 9c + 8) in the wgmma window kernel's stages
// of kC = 8P channels (P = 1: TF32, fp32's bits; P = 2: BF16, channels c and c + 1 in a word, c in
// the low half): word ((m S + j) 9 + tap) 8 + w, S = C / kC, holds channel (8j + w) P (and the
// next) of row m at that tap. A thread a word.
struct TapsOp {
  const float* a;
  int M, C;
  bool bf16;
  uint32_t* out;
  SQ_HOST_DEVICE long long words() const { return (long long)M * 9 * (bf16 ? C / 2 : C); }
};
__global__ void reorder_taps_kernel(TapsOp op) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= op.words()) return;
  const int P = op.bf16 ? 2 : 1, S = op.C / (8 * P), w = int(i % 8), tap = int(i / 8 % 9);
  const long long mj = i / 72;
  const int c = (8 * int(mj % S) + w) * P;
  const float* p = op.a + (mj / S * 9 * op.C + 9 * c + tap);
  op.out[i] = op.bf16 ? pack_bf16x2(p[0], p[9]) : tf32_operand(p[0]);
}

template <bool kBf16, int TM>
struct WgWinShape {
  static_assert(TM == 64 || TM == 128, "wgmma tiles of 64 or 128 rows");
  static constexpr int kPix = 128;
  static constexpr int kC = kBf16 ? 16 : 8;   // a stage's channels: one wgmma deep, 8 words a row and tap
  static constexpr int kStagesAChunk = kWinC / kC;
  static constexpr int kTapWords = TM * 8;    // a tap's B: TM rows by 32 bytes
  static constexpr int kBWords = 9 * kTapWords;
  static constexpr uint32_t kLbo = 128, kSbo = 256;
  static constexpr int kTapGroup = TM == 128 ? 3 : 9;
  static_assert(9 % kTapGroup == 0, "whole groups of taps");
  // B's 16-byte copies: thread (piece tid % 2, row tid / 2 % TM) of taps tid / (2 TM) + u kTapStep.
  static constexpr int kTapStep = kWgThreads / (2 * TM), kTapCopies = (9 + kTapStep - 1) / kTapStep;
};
// The window's row stride (win_ld over 128 pixels) and a launch's dynamic shared memory: two
// stages of B and kC windows.
SQ_HOST_DEVICE inline int wgwin_ld(int W, bool bf16) { return win_ld(128, W, bf16); }
template <bool kBf16, int TM>
size_t wgwin_smem_bytes(int W) {
  using Sh = WgWinShape<kBf16, TM>;
  return 2 * size_t(Sh::kBWords + Sh::kC * wgwin_ld(W, kBf16)) * sizeof(float);
}
constexpr size_t kWgWinSmem = 113 * 1024;  // two blocks an SM
// Whether the wgmma window kernel can take op (which win_fits), in both precisions and tiles.
inline bool wgwin_fits(const Geo& g, size_t limit = kWgWinSmem) {
  return wgwin_smem_bytes<false, 128>(g.W) <= limit && wgwin_smem_bytes<true, 128>(g.W) <= limit;
}

// Grid: x the 128-pixel tiles, y the TM-row tiles, z the split-K slices of slice_chunks 16-channel
// chunks. ar: A through reorder_taps_kernel; ldw: wgwin_ld.
template <class Op, bool kBf16, int TM>
__global__ void __launch_bounds__(kWgThreads, 2) igemm_wgwin_kernel(Op op, const uint32_t* ar, int ldw,
                                                                     int slice_chunks) {
  using Sh = WgWinShape<kBf16, TM>;
  constexpr int kC = Sh::kC;
  SQ_DYNAMIC_SHARED(float, smem);
  const float* const src = Win<Op>::src(op);
  const int channels = Win<Op>::channels(op);
  const int tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32, t = lane % 4;
  const int n0 = int(blockIdx.x) * Sh::kPix, m0 = int(blockIdx.y) * TM, z = int(blockIdx.z);
  const int cb = z * slice_chunks * kWinC, ce = min(channels, cb + slice_chunks * kWinC);
  const int steps = ce > cb ? (ce - cb) / kC : 0;
  const int W = op.g.W, H = op.g.H, HW = H * W;
  const int stage = Sh::kBWords + kC * ldw, npieces = win_pieces(Sh::kPix, W);
  const int a0 = (n0 - W - 1) & ~3;  // the window's first element: the multiple of 4 at or below

  // B's copies: the thread's row and piece are the same every step and tap, at constant offsets
  // from one pointer (288 bytes a stage of a row, 32 a tap); a step adds 72 words. A row past M
  // copies zeros from row 0's address (a tensor's address, unread).
  const int bq = tid % 2, bm = tid / 2 % TM, bt0 = tid / (2 * TM);
  const bool brow = m0 + bm < op.M;
  const float* bp = reinterpret_cast<const float*>(ar) +
                    ((size_t(brow ? m0 + bm : 0) * size_t(channels / kC) + size_t(cb / kC)) * 72 + 8 * bt0 + 4 * bq);
  const int bdst = (bm / 8 * 2 + bq) * 32 + bm % 8 * 4 + bt0 * Sh::kTapWords;
  auto copy = [&](int j, int st) {
    float* bs = smem + st * stage;
    const float* bj = bp + 72 * j;
    SQ_UNROLL
    for (int u = 0; u < Sh::kTapCopies; ++u) {
      const int at = u * Sh::kTapStep;  // (the thread's taps: bt0 + at)
      if (Sh::kTapStep * Sh::kTapCopies == 9 || bt0 + at < 9)
        cp_async16_if(bs + bdst + at * Sh::kTapWords, bj + 8 * at, brow, bj + 8 * at);
    }
    copy_windows<kC>(bs + Sh::kBWords, ldw, src, cb + j * kC, op.N, a0, npieces, warp, lane);
  };

  // The thread's pixels px and px + 8 of the tile: their taps (0 past the product's edge), and
  // pixel px's place in the window.
  const int px = wg_row(tid);
  unsigned pb[2];
  SQ_UNROLL
  for (int e = 0; e < 2; ++e) {
    const int n = n0 + px + 8 * e, hw = n % HW, h = hw / W, w = hw - h * W;
    pb[e] = n < op.N ? pixel_taps(h, w, H, W) : 0u;
  }
  const int woff = n0 - a0 + px + (kBf16 ? 2 : 1) * t * ldw;

  float d[TM / 2];
  wg_clear(d);
  if (steps > 0) copy(0, 0);
  cp_async_commit();
  for (int j = 0; j < steps; ++j) {
    cp_async_wait<0>();  // this thread's copies of step j landed
    fence_proxy_async(); // ... where wgmma reads them
    __syncthreads();     // everyone's; and everyone waited for step j - 1's groups
    if (j + 1 < steps) copy(j + 1, (j + 1) % 2);  // into the stage step j - 1 read
    cp_async_commit();
    const float* bs = smem + (j % 2) * stage;
    const float* ws = bs + Sh::kBWords + woff;
    const uint32_t b0 = smem_address(bs);
    SQ_UNROLL
    for (int tg = 0; tg < 9; tg += Sh::kTapGroup) {
      uint32_t a[Sh::kTapGroup][4];
      uint64_t desc[Sh::kTapGroup];
      SQ_UNROLL
      for (int u = 0; u < Sh::kTapGroup; ++u) {
        const int tap = tg + u, r = tap / 3, s = tap % 3;
        const float* p = ws + ((r - 1) * W + (s - 1));
        const bool on0 = (pb[0] & 1u << tap) != 0u, on1 = (pb[1] & 1u << tap) != 0u;
        if constexpr (kBf16) {  // (channels 2t, 2t + 1 and 2t + 8, 2t + 9)
          a[u][0] = on0 ? pack_bf16x2(p[0], p[ldw]) : 0u;
          a[u][1] = on1 ? pack_bf16x2(p[8], p[ldw + 8]) : 0u;
          a[u][2] = on0 ? pack_bf16x2(p[8 * ldw], p[9 * ldw]) : 0u;
          a[u][3] = on1 ? pack_bf16x2(p[8 * ldw + 8], p[9 * ldw + 8]) : 0u;
        } else {  // (channels t and t + 4)
          a[u][0] = on0 ? tf32_operand(p[0]) : 0u;
          a[u][1] = on1 ? tf32_operand(p[8]) : 0u;
          a[u][2] = on0 ? tf32_operand(p[4 * ldw]) : 0u;
          a[u][3] = on1 ? tf32_operand(p[4 * ldw + 8]) : 0u;
        }
        const int bt = Win<Op>::kFlip ? 8 - tap : tap;  // (the input gradient's taps run backwards)
        desc[u] = wgmma_desc(b0 + uint32_t(bt * Sh::kTapWords * 4), Sh::kLbo, Sh::kSbo);
      }
      wgmma_issue<kBf16, TM>(d, a, desc);
      wgmma_retire(d);
    }
  }
  cp_async_wait<0>();  // (the last step's empty group)
  wg_store<TM>(op, d, m0, n0 + px, t, z);
}

}  // namespace
}  // namespace cuda
}  // namespace sq
