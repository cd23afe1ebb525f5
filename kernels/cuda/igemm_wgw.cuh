// The plain 1x1 products' weight gradient on Hopper's warpgroup MMA (sm_90a, TF32 and BF16;
// docs/KERNELS.md, "the 1x1 weight gradients on wgmma"): dW (K x C) += dz (K x NHW) * x^T, both
// operands rows along the pixels (k), as they lie in memory: every Fire's squeeze and expand 1x1
// weight gradient, and conv10's, which the mma kernel multiplies with mma.sync.
//
// - wgmma's register operand is the larger side's rows, 128 a block (64 a warpgroup), read from a
//   [row][k] stage as mma.sync's A fragments are: dz's filters (D = dz * x^T) where K >= C, else
//   x's channels (D^T = x * dz^T: a Fire's squeeze, 16 to 64 filters from 96 to 512 channels).
// - wgmma's shared-memory operand is the other side's rows, TN = 64 or 128 a block, K-major as they
//   lie (KMajorCopy, the 1x1 wgmma kernel's weight copies), so the smaller side pads at most to 64.
// - Stages of 32 pixels, 3 (at most 103 KB, two blocks an SM), copies two steps ahead, each step's
//   group waited for at its end (igemm_wg.cuh's reasons).
// - Split-K over blockIdx.z as the mma kernel's (conv.cu's weight_splits slices, mma_chunk's whole
//   32-pixel chunks), slice z's sums to op.ws's slice z; with op.rows, the blocks of the first tile
//   along the side that is not dz's also write their slice's sums of dz's rows (the bias gradient):
//   from the [row][k] stage (RowSums), or from KMajorCopy's (BF16: its loads; TF32: the landed
//   stage), fp32 as copied either way.
//
// Kernel source only: tests/test_igemm.cpp runs it under tests/simt_host.h.
#pragma once
#include <cstdint>

#include "kernels/cuda/igemm_mma.cuh"  // RowSums
#include "kernels/cuda/igemm_wg.cuh"

namespace sq {
namespace cuda {
namespace {

template <bool kBf16, int TN>
struct WgwShape {
  static_assert(TN == 64 || TN == 128, "wgmma tiles of 64 or 128 columns");
  static constexpr int KS = 32, kRows = 128, kStages = 3, kAhead = kStages - 1;
  // The [row][k] stage's pitch: TF32 fragments read (row g, k t) at 4g + t mod 32 banks; BF16's
  // read k pairs 2t, 2t + 1 as 8 bytes, at 8g + 2t: conflict-free in each half warp.
  static constexpr int kLdr = KS + (kBf16 ? 8 : 4);
  static constexpr int kRFloats = kRows * kLdr, kQFloats = KMajorCopy<kBf16, TN>::kFloats;
  static constexpr int kStageFloats = kRFloats + kQFloats;
  static constexpr size_t kSmemBytes = size_t(kStages) * kStageFloats * sizeof(float);
  static constexpr uint32_t kLbo = KMajorCopy<kBf16, TN>::kLbo, kSbo = KMajorCopy<kBf16, TN>::kSbo;
};
// The side of a weight gradient that is wgmma's register operand: x's channels where C > K.
inline bool wgw_x_rows(const WeightOp& op) { return op.N > op.M; }
// The other side's tile: 128 where that side has more than 64 rows, else 64.
inline int wgw_tile(const WeightOp& op) { return (wgw_x_rows(op) ? op.M : op.N) > 64 ? 128 : 64; }

// Grid: x the 128-row tiles of the register side, y the TN-row tiles of the other, z the split-K
// slices of `chunk` pixels (a multiple of 32).
template <bool kBf16, int TN, bool kXRows>
__global__ void __launch_bounds__(kWgThreads, 2) igemm_wgw_kernel(WeightOp op, int chunk) {
  using Sh = WgwShape<kBf16, TN>;
  constexpr int KS = Sh::KS, LDR = Sh::kLdr;
  SQ_DYNAMIC_SHARED(float, smem);
  const int tid = int(threadIdx.x), lane = tid % 32, t = lane % 4;
  const int r0 = int(blockIdx.x) * Sh::kRows, q0 = int(blockIdx.y) * TN, z = int(blockIdx.z);
  const int kb = z * chunk, ke = min(op.Kd, kb + chunk);
  const int steps = ke > kb ? (ke - kb + KS - 1) / KS : 0;
  const float* const rsrc = kXRows ? op.x : op.dz;  // the register side's rows, Kd floats apart
  const float* const qsrc = kXRows ? op.dz : op.x;
  const int rcount = kXRows ? op.N : op.M, qcount = kXRows ? op.M : op.N;

  // The register side's copies: row rr = tid / 8 + 32u, its 16 bytes at k piece tid % 8; a step
  // adds KS floats. Rows past the side's end and k past the slice's copy zeros (naming the
  // tensor's start, unread).
  const int rr = tid / 8, rk = 4 * (tid % 8);
  const float* rp = rsrc + (size_t(r0 + rr) * size_t(op.Kd) + size_t(kb + rk));
  const size_t rows32 = size_t(32) * size_t(op.Kd);
  const KMajorCopy<kBf16, TN> qcopy(qsrc, q0, qcount, size_t(op.Kd), kb);
  // The bias's row sums, dz's: from the register stage (RowSums) in the blocks of the first
  // column tile, or from the other stage in those of the first row tile.
  float* const rows = (kXRows ? r0 : q0) == 0 ? op.rows : nullptr;
  RowSums<kXRows ? TN : Sh::kRows, KS> rs;
  float qsum[kXRows && kBf16 ? TN / 32 : 1] = {};
  auto copy = [&](int j, int st) {
    float* rs_ = smem + st * Sh::kStageFloats;
    const int k0 = kb + j * KS;
    const float* rj = rp + j * KS;
    const bool kin = k0 + rk < ke;
    SQ_UNROLL
    for (int u = 0; u < Sh::kRows / 32; ++u)
      cp_async16_if(rs_ + (rr + 32 * u) * LDR + rk, rj + u * rows32, kin && r0 + rr + 32 * u < rcount, rsrc);
    qcopy.template copy<kXRows && kBf16>(rs_ + Sh::kRFloats, j, k0, ke, qsrc, qsum);
  };

  const int fr = wg_row(tid);  // the thread's first row in the tile
  float d[TN / 2];
  wg_clear(d);
  wg_prologue<Sh::kAhead>(steps, copy);
  constexpr int KW = kBf16 ? 16 : 8;
  for (int j = 0; j < steps; ++j) {
    wg_step_begin<Sh::kAhead>();
    const float* rs_ = smem + (j % Sh::kStages) * Sh::kStageFloats;
    const float* qs = rs_ + Sh::kRFloats;
    if (rows) {  // (fp32 as copied)
      if constexpr (!kXRows) {
        rs.add(rs_, LDR);
      } else if constexpr (!kBf16) {
        KMajorCopy<kBf16, TN>::add_landed_rows(rs, qs);
      }
    }
    uint32_t a[KS / KW][4];  // (live until the wait below: the tensor cores read them)
    uint64_t desc[KS / KW];
    SQ_UNROLL
    for (int s = 0; s < KS / KW; ++s) {
      const float* p = rs_ + fr * LDR;
      if constexpr (kBf16) {  // k pairs 2t, 2t + 1 and 2t + 8, 2t + 9 of the 16
        const int k = 16 * s + 2 * t;
        const float2 v0 = *reinterpret_cast<const float2*>(p + k), v1 = *reinterpret_cast<const float2*>(p + 8 * LDR + k);
        const float2 v2 = *reinterpret_cast<const float2*>(p + k + 8),
                     v3 = *reinterpret_cast<const float2*>(p + 8 * LDR + k + 8);
        a[s][0] = pack_bf16x2(v0.x, v0.y);
        a[s][1] = pack_bf16x2(v1.x, v1.y);
        a[s][2] = pack_bf16x2(v2.x, v2.y);
        a[s][3] = pack_bf16x2(v3.x, v3.y);
      } else {  // k t and t + 4 of the 8
        const int k = 8 * s + t;
        a[s][0] = tf32_operand(p[k]);
        a[s][1] = tf32_operand(p[8 * LDR + k]);
        a[s][2] = tf32_operand(p[k + 4]);
        a[s][3] = tf32_operand(p[8 * LDR + k + 4]);
      }
      desc[s] = wgmma_desc(smem_address(qs + 64 * s), Sh::kLbo, Sh::kSbo);
    }
    wgmma_issue<kBf16, TN>(d, a, desc);
    wg_step_end<Sh::kAhead, Sh::kStages>(j, steps, copy, d);
  }
  cp_async_wait<0>();  // (the last steps' empty groups)
  if (rows) {  // (the same for the whole block)
    if constexpr (kXRows && kBf16)
      qcopy.finish_rows(qsum, smem, rows, q0, op.M, z);
    else
      rs.finish(smem, rows, kXRows ? q0 : r0, op.M, z);
  }
  // D's row fr + 8 (e / 2) of the register side, column 8i + 2t + e % 2 of the other: dW's element
  // (filter, channel) in slice z. An empty slice stores its zeros.
  SQ_UNROLL
  for (int i = 0; i < TN / 8; ++i)
    SQ_UNROLL
    for (int e = 0; e < 4; ++e) {
      const int r = r0 + fr + 8 * (e / 2), q = q0 + 8 * i + 2 * t + e % 2;
      if (r < rcount && q < qcount) {
        if constexpr (kXRows)
          op.store(q, r, d[4 * i + e], z);
        else
          op.store(r, q, d[4 * i + e], z);
      }
    }
}

}  // namespace
}  // namespace cuda
}  // namespace sq
