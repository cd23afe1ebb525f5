// The first convolution's weight gradient on Hopper's warpgroup MMA (sm_90a, TF32 and BF16;
// docs/KERNELS.md, "the wgmma row weight gradient"): the row kernel's weight gradient (igemm_rows.cuh,
// igemm_rowsw_kernel: dW (K x C R S) += dz (K x N P Q) * col(x)^T, an output row of dz and its
// input rows a tile, x's rows in a ring, split-K slices of consecutive output rows) with the
// multiply turned around: D = dW^T = col(x) * dz^T, so that col(x) is wgmma's register operand and
// dz its shared-memory operand.
//
// - M = the taps, (s, c, r) in order as the row kernel's columns: WG warpgroups of 64 (WG 64 >= C R
//   S: 3 for squeezenet1.0's 147, 1 for 1.1's 27), a block of 128 WG threads. N = TN = 64 or 96
//   filters (all of them: M <= TN). K = a tile's positions.
// - A's fragments are the ring's words exactly as igemm_rowsw_kernel reads its B: tap n at
//   position j is kc(n) + j (its ring row, its column (s & 1) hp + s / 2, less the shift a), lanes
//   g on 8 taps (rows RP = 4 mod 8 words apart: conflict-free) and t on positions.
// - dz's TN rows of the tile's output row go into a K-major stage: core matrices of 8 filters by 4
//   positions (16 bytes), position chunk j of filter m at ((m / 8) KP / 4 + j) 32 + (m % 8) 4 words
//   (LBO 128 bytes, SBO KP / 4 core matrices). Position p holds pixel s0 - a + p, a = s0 mod 4, so
//   that chunks 1 .. KP / 4 - 1 are 16-byte copies (zero-filled past Q; a lane a chunk, a warp a
//   group of 8 filters) and chunk 0 four 4-byte ones (zero before a: col(x) is not zero there):
//   dz's rows must be 16-byte aligned but for the pixel offset (Kd a multiple of 4, dz aligned).
//   KP = 120 positions (a + Q <= 115), 15 wgmmas a tile in 3 groups of 5; the positions past a + Q
//   meet zeros in dz.
// - Two dz stages, the next tile's copies (dz's rows, x's 2 new rows or all R at a fresh image) in
//   flight while this one multiplies, one barrier a tile. The accumulators run over the slice's
//   tiles; slice z's sums go to ws[z] (dW's layout, op.store) and, with op.rows, dz's row sums to
//   rows[z] (from the landed K-major stage), for splitk_reduce_kernel.
// - BF16 (kBf16) runs the same TF32 wgmma on BF16-rounded operands: after a tile's copies land, the
//   threads that sum dz's rows round its stage in place (the sums from the values as copied) and
//   the ring's new rows, then a second barrier. A product of two BF16 values is exact in fp32, as
//   on BF16's wgmma; the tensor cores' TF32 rate is half BF16's, but dz's bytes bound this kernel
//   (docs/KERNELS.md), and a BF16 stage would need dz converted through registers.
// - One block an SM for conv1 of 1.0: two dz stages (45 KB each for 96 filters) and the ring (46 KB)
//   pass half of an SM's shared memory. Two for 1.1's (30 KB stages for 64 filters, a 44 KB ring:
//   105 KB), whose one warpgroup a block would otherwise be 4 warps an SM: conv.cu sizes the
//   slices by occupancy (wgrowsw_slices).
//
// Kernel source only: tests/test_igemm.cpp runs it under tests/simt_host.h.
#pragma once
#include <cstdint>

#include "kernels/cuda/igemm_rows.cuh"
#include "kernels/cuda/igemm_wg.cuh"

namespace sq {
namespace cuda {
namespace {

constexpr int kWgRowswKP = kRowswKmax<8>;  // positions a tile: a + Q <= 115, whole TF32 k-steps (120)
constexpr int kWgRowswGroup = 5;           // k-steps a wgmma group
static_assert(kWgRowswKP % (8 * kWgRowswGroup) == 0, "whole groups");

// The layout (floats): two dz stages, a guard, the ring (igemm_rowsw_kernel's, its rows and pitch),
// then the row sums' scratch (TN x 4 at most).
struct WgRowswLayout {
  int tn, stage, rp, hp, ring;
  SQ_HOST_DEVICE int ring_at() const { return 2 * stage + 4; }
  SQ_HOST_DEVICE int sums_at() const { return ring_at() + ring; }
  SQ_HOST_DEVICE int floats() const { return sums_at() + 4 * tn; }
};
inline int wgrowsw_tn(int M) { return M > 64 ? 96 : 64; }
inline int wgrowsw_wg(const Geo& g) { return (g.C * g.R * g.S + 63) / 64; }
SQ_HOST_DEVICE inline WgRowswLayout wgrowsw_layout(const Geo& g, int tn) {
  const RowswLayout r = rowsw_layout(g, 16, false);  // (its ring, rows and pitch; the stage is ours)
  WgRowswLayout l;
  l.tn = tn, l.stage = tn * kWgRowswKP, l.rp = r.rp, l.hp = r.hp, l.ring = r.ring;
  return l;
}
template <int TN>
size_t wgrowsw_smem_bytes(const Geo& g) {
  return size_t(wgrowsw_layout(g, TN).floats()) * sizeof(float);
}
constexpr size_t kWgRowswSmem = 200 * 1024;  // a block's most (conv1 of squeezenet1.0: 137 KB)
// Its split-K slices: a block a slice, as many as the GPU holds at once (`resident`, conv.cu's
// occupancy query: 1 block an SM for conv1 of squeezenet1.0, 2 for 1.1's), at most kWgRowswSlices
// (conv.cu's workspace holds that many) and one output row a slice.
constexpr int kWgRowswSlices = 512;
inline int wgrowsw_slices(const Geo& g, int resident) {
  const long long rows = (long long)g.N * g.P;
  return int(std::max<long long>(1, std::min<long long>({kWgRowswSlices, rows, resident})));
}
// The weight gradients it takes: the row kernel's (rows_fits), at most 96 filters and 192 taps, dz's
// rows 16-byte aligned but for the pixel offset, its shared memory within `limit`.
inline bool wgrowsw_geometry_fits(const Geo& g, int M) { return M <= 96 && g.C * g.R * g.S <= 192; }
inline bool wgrowsw_fits(const WeightOp& op, size_t limit = kWgRowswSmem) {
  const Geo& g = op.g;
  if (!rows_fits(op, limit) || !wgrowsw_geometry_fits(g, op.M)) return false;
  if (op.Kd % 4 != 0 || (reinterpret_cast<uintptr_t>(op.dz) & 15) != 0) return false;
  return size_t(wgrowsw_layout(g, wgrowsw_tn(op.M)).floats()) * sizeof(float) <= limit;
}

// Four floats rounded to BF16 (to nearest even, cvt.rn.bf16x2 in pack_bf16x2) and back: BF16's 8
// exponent and 7 mantissa bits, which a TF32 operand holds exactly.
__device__ inline float4 bf16_rounded(float4 v) {
  const uint32_t lo = pack_bf16x2(v.x, v.y), hi = pack_bf16x2(v.z, v.w);
  return {__uint_as_float(lo << 16), __uint_as_float(lo & 0xffff0000u), __uint_as_float(hi << 16),
          __uint_as_float(hi & 0xffff0000u)};
}

template <int TN, int WG, bool kBf16>
__global__ void __launch_bounds__(128 * WG, 1) igemm_wgrowsw_kernel(WeightOp op, WgRowswLayout L) {
  static_assert(TN == 64 || TN == 96, "wgmma's N: 64 or 96 filters");
  constexpr int NT = 128 * WG, NR = kRowswRing, KP = kWgRowswKP, KC = KP / 4;
  constexpr uint32_t kLbo = 128, kSbo = KC * 128;
  SQ_DYNAMIC_SHARED(float, stages);
  float* const ring = stages + L.ring_at();
  float* const sums = stages + L.sums_at();
  const Geo& g = op.g;
  const int crs = g.C * g.R * g.S;
  const long long rows = (long long)g.N * g.P;
  const int z = int(blockIdx.x);
  const int tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32, t = lane % 4;

  // The thread's taps n and n + 8 (RowswTap; n = wg_row, its first row of wgmma's M).
  const int n0 = wg_row(tid);
  const RowswTap tap0 = RowswTap::of(n0, g, L.rp, L.hp), tap1 = RowswTap::of(n0 + 8, g, L.rp, L.hp);
  // The slice's output rows [r0, r0 + ntile), each a tile (RowswTile, as igemm_rowsw_kernel's; dz
  // always copied 16 bytes at a time).
  const int r0 = int(rows * z / int(gridDim.x)), ntile = int(rows * (z + 1) / int(gridDim.x)) - r0;
  // Once: the guard before the ring and each ring row's padding, zero (read, never copied).
  for (int i = tid; i < 4; i += NT) ring[i - 4] = 0.0f;
  const int pad = L.rp - 2 * L.hp;
  for (int i = tid; i < g.C * NR * pad; i += NT) ring[i / pad * L.rp + 2 * L.hp + i % pad] = 0.0f;
  __syncthreads();  // (before any copy lands there)

  // Tile u's copies (an empty group past the last tile): dz's TN rows into stage u % 2, K-major;
  // x's rows the ring lacks.
  auto issue = [&](int u, const RowswTile& tl) {
    if (u < ntile) {
      float* const st = stages + (u % 2) * L.stage;
      const int a = tl.a;
      const float* const row0 = op.dz + size_t(tl.s0 - a);  // (filter 0's position 0)
      // Chunks 1 .. KC - 1: lane j - 1 a chunk (its valid count the same for every filter), a warp
      // a group of 8 filters (w, w + NT / 32, ...), the group's rows 16 bytes apart in the stage
      // and Kd floats apart in dz: one 16-byte copy each, its addresses stepped.
      if (lane < KC - 1) {
        const int j = lane + 1, left = g.Q + a - 4 * j, valid = left < 0 ? 0 : left > 4 ? 4 : left;
        for (int gi = warp; gi < TN / 8; gi += NT / 32) {
          float* dst = st + (gi * KC + j) * 32;
          const float* src = row0 + (size_t(8 * gi) * op.Kd + 4 * j);
          SQ_UNROLL
          for (int r = 0; r < 8; ++r, dst += 4, src += op.Kd) {
            const bool mrow = 8 * gi + r < op.M;
            cp_async16(dst, mrow && valid > 0 ? src : op.dz, mrow ? valid : 0);
          }
        }
      }
      // Chunk 0 (positions 0 .. 3, zero before a): position e = tid % 4 of filters tid / 4, + NT / 4.
      for (int i = tid; i < 4 * TN; i += NT) {
        const int m = i >> 2, e = i & 3;
        const bool in = m < op.M && e >= a && e - a < g.Q;
        cp_async4(st + (m >> 3) * KC * 32 + (m & 7) * 4 + e, in ? row0 + (size_t(m) * op.Kd + e) : op.dz, in);
      }
      tl.each_new_row(g, L.rp, warp, NT / 32,
                      [&](int c, int r, int at) { rowsw_copy_x_row(op, tl, c, r, ring + at, L.hp, lane); });
    }
    cp_async_commit();
  };

  // The row sums of dz (op.rows), and in BF16 its rounding: threads kT m .. kT m + kT - 1 take
  // filter m's chunks j = tid % kT + kT i (all TN filters' chunks).
  constexpr int kT = NT >= 4 * TN ? 4 : NT >= 2 * TN ? 2 : 1;
  float rsum = 0.0f;
  const bool summer = (op.rows || kBf16) && tid < kT * TN;
  const int sm = tid / kT, sq = tid % kT;
  float d[TN / 2];
  wg_clear(d);

  RowswTile cur = RowswTile::first(r0, g, true);
  issue(0, cur);
  for (int u = 0; u < ntile; ++u) {
    cp_async_wait<0>();
    fence_proxy_async();  // this thread's copies of dz, before wgmma reads them
    __syncthreads();      // everyone's; everyone done with u - 1
    const RowswTile next = cur.next(g, true);
    issue(u + 1, next);
    float* const st = stages + (u % 2) * L.stage;
    if (summer) {
      for (int j = sq; j < KC; j += kT) {
        float4* const at = reinterpret_cast<float4*>(st + ((sm / 8) * KC + j) * 32 + (sm % 8) * 4);
        const float4 v = *at;
        rsum += (v.x + v.y) + (v.z + v.w);  // (unrounded: the bias's gradient is fp32's)
        if constexpr (kBf16) *at = bf16_rounded(v);
      }
    }
    if constexpr (kBf16) {
      // BF16: the products of BF16 operands through TF32's wgmma, exactly (each rounded operand a
      // TF32 value). dz's stage is rounded above; x's rows that landed for this tile here, in the
      // ring, whole (the padding columns are zeros), once: the tiles after read them rounded.
      cur.each_new_row(g, L.rp, warp, NT / 32, [&](int, int, int at) {  // (the rows issue() copied)
        float4* const row = reinterpret_cast<float4*>(ring + at);
        for (int q = lane; q < L.rp / 4; q += 32) row[q] = bf16_rounded(row[q]);
      });
      fence_proxy_async();  // the stage's rounded words, before wgmma reads them
      __syncthreads();
    }
    // The thread's taps' bases this tile: their rows' places in the ring, less the shift a.
    const float* const ka = ring + tap0.at(cur, L.rp) + t;
    const float* const kb = ring + tap1.at(cur, L.rp) + t;
    const uint64_t sdesc = wgmma_desc(smem_address(st), kLbo, kSbo);
    SQ_UNROLL
    for (int s0 = 0; s0 < KP / 8; s0 += kWgRowswGroup) {
      uint32_t af[kWgRowswGroup][4];
      uint64_t desc[kWgRowswGroup];
      SQ_UNROLL
      for (int e = 0; e < kWgRowswGroup; ++e) {
        const int k0 = 8 * (s0 + e);  // (positions k0 + t and k0 + t + 4)
        af[e][0] = tf32_operand(ka[k0]);
        af[e][1] = tf32_operand(kb[k0]);
        af[e][2] = tf32_operand(ka[k0 + 4]);
        af[e][3] = tf32_operand(kb[k0 + 4]);
        desc[e] = sdesc + uint64_t((s0 + e) * 256 / 16);  // (two chunks, 256 bytes, a k-step)
      }
      wgmma_issue<false, TN>(d, af, desc);
      wgmma_retire(d);
    }
    cur = next;
  }
  cp_async_wait<0>();  // (only an empty group remains)
  // D's row n (tap (s, c, r)) is dW's column (c R + r) S + s; its column m the filter.
  SQ_UNROLL
  for (int i = 0; i < TN / 8; ++i)
    SQ_UNROLL
    for (int e = 0; e < 4; ++e) {
      const int n = n0 + 8 * (e / 2), m = 8 * i + 2 * t + e % 2;
      if (n >= crs || m >= op.M) continue;
      const int s = n / (g.C * g.R), cr = n - s * (g.C * g.R);
      op.store(m, cr * g.S + s, d[4 * i + e], z);
    }
  if (op.rows) {  // each filter's kT partial sums, in order
    __syncthreads();  // (sums: its own region)
    if (summer) sums[tid] = rsum;
    __syncthreads();
    for (int m = tid; m < op.M; m += NT) {
      float v = 0.0f;
      SQ_UNROLL
      for (int q = 0; q < kT; ++q) v += sums[kT * m + q];
      op.rows[size_t(z) * op.M + m] = v;
    }
  }
}

}  // namespace
}  // namespace cuda
}  // namespace sq
