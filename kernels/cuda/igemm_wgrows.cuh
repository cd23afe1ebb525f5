// The first convolution's forward on Hopper's warpgroup MMA (sm_90a, TF32 and BF16; docs/KERNELS.md,
// "the wgmma row kernel"): the row kernel's product (igemm_rows.cuh: stride 2, no padding, a
// square filter of at most 7x7 over a few channels) with the multiply turned around as the other
// wgmma kernels', D^T = col(x)^T * w^T, so that the im2col of x is wgmma's register operand and w
// its shared-memory operand.
//
// - A tile is one output row (img, p) of 128 columns, 64 a warpgroup (Q <= 128; the columns past
//   Q are multiplied and not stored), against all TN = 64 or 96 filters (wgmma's N; M <= TN).
// - w is resident: a block copies it once, k = (s, c, r) as the row kernel orders it, rounded to
//   the multiply's type, in core matrices of 8 filters by 16 bytes of k (k-step st's TN x 8 TF32
//   or TN x 16 BF16 at st TN 8 words, the two k halves 128 bytes apart, filter groups 256).
// - The tile's input rows 2p .. 2p + R - 1 of each channel are copied whole (4-byte copies) into
//   a stage split by column parity as the row kernel's: row (c, r) holds x's even columns at
//   [0, HP) and the odd ones at [HP, 2 HP), zero past the image, so that tap (r, s) of column q is
//   word (c R + r) RP + (s & 1) HP + s / 2 + q, consecutive columns consecutive words. A thread's
//   fragment element (column q, k) is then koff(k) + q, koff a table made once a block and stored
//   as each lane needs it a k-step (tab: TF32 koff(8 st + t), koff(8 st + t + 4); BF16 koff(16 st +
//   2t), (+ 1), (+ 8), (+ 9)): one 16-byte read a lane and step. RP = 8 (TF32) or 4 (BF16) mod 32
//   words, so the four k a step's lanes read (consecutive rows, mostly) fall in different banks.
// - Blocks persistent over the tiles (b, b + G, ...), two stages of input rows: the next tile's
//   copies in flight while this one multiplies, one barrier a tile. A tile's k-steps go in groups
//   of 32 k (4 TF32 or 2 BF16 wgmmas): the group's fragments made before its fence, the group
//   waited for before the next group's fragments are written (ptxas's C7513 otherwise).
// - The epilogue: filter m = 8i + 2t + j of the thread's columns q and q + 8 (d[4i + j], d[4i + 2
//   + j]) plus m's bias (copied to shared memory once a block, 0 where there is none), the ReLU as
//   a max, stored where q < Q (and m < M where M < TN), without a branch an output.
//
// Kernel source only: tests/test_igemm.cpp runs it under tests/simt_host.h.
#pragma once
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/igemm_rows.cuh"
#include "kernels/cuda/igemm_wg.cuh"

namespace sq {
namespace cuda {
namespace {

constexpr int kWgRowsQ = 128;  // columns a tile: two warpgroups of 64

// The layout of one launch (host and device), in floats: w's words, the k table (4 ints a lane
// and step), the biases, then two stages of input rows.
struct WgRowsLayout {
  int kp, steps, hp, rp, stage, tn;
  SQ_HOST_DEVICE int w_words() const { return steps * tn * 8; }  // TN x kp of the multiply's type
  SQ_HOST_DEVICE int tab_at() const { return w_words(); }
  SQ_HOST_DEVICE int bias_at() const { return tab_at() + steps * 16; }
  SQ_HOST_DEVICE int stages_at() const { return bias_at() + tn; }
  SQ_HOST_DEVICE int floats() const { return stages_at() + 2 * stage; }
};
// The filter tile: wgmma's N, 64 or 96.
inline int wgrows_tn(int M) { return M > 64 ? 96 : 64; }
SQ_HOST_DEVICE inline WgRowsLayout wgrows_layout(const Geo& g, int tn, bool bf16) {
  WgRowsLayout l;
  const int crs = g.C * g.R * g.S, kw = bf16 ? 16 : 8;
  l.tn = tn;
  l.kp = (crs + 31) / 32 * 32;  // whole groups of 32 k
  l.steps = l.kp / kw;
  const int half = (g.W + 1) / 2, reach = kWgRowsQ + (g.S - 1) / 2;  // the columns past Q read up to q + s/2
  l.hp = half > reach ? half : reach;
  const int span = 2 * l.hp, pad = bf16 ? 4 : 8;
  l.rp = span + ((pad - span) % 32 + 32) % 32;
  l.stage = (g.C * g.R * l.rp + 3) / 4 * 4;
  return l;
}
template <bool kBf16, int TN>
size_t wgrows_smem_bytes(const Geo& g) {
  return size_t(wgrows_layout(g, TN, kBf16).floats()) * sizeof(float);
}
constexpr size_t kWgRowsSmem = 113 * 1024;  // two blocks an SM
// The forwards the wgmma row kernel takes: the row kernel's geometry (stride 2, no padding, a
// square filter of at most 7x7), output rows of at most 128, at most 96 filters, and its stages
// within `limit` in both precisions (squeezenet1.0's conv1 at 224²: 106 KB in TF32, 79 KB in BF16).
inline bool wgrows_fits(const FwdOp& op, size_t limit = kWgRowsSmem) {
  const Geo& g = op.g;
  if (g.stride != 2 || g.pad != 0 || g.R != g.S || g.R > kRowsMaxR || g.Q > kWgRowsQ || op.M > 96) return false;
  const int tn = wgrows_tn(op.M);
  return size_t(wgrows_layout(g, tn, false).floats()) * sizeof(float) <= limit &&
         size_t(wgrows_layout(g, tn, true).floats()) * sizeof(float) <= limit;
}
// The tiles: an output row of an image each.
SQ_HOST_DEVICE inline int wgrows_tiles(const Geo& g) { return g.N * g.P; }

template <bool kBf16, int TN>
__global__ void __launch_bounds__(kWgThreads, 2) igemm_wgrows_kernel(FwdOp op, WgRowsLayout L) {
  static_assert(TN == 64 || TN == 96, "wgmma's N: 64 or 96 filters");
  constexpr int KW = kBf16 ? 16 : 8, kGroup = 32 / KW, kStepWords = TN * 8;
  SQ_DYNAMIC_SHARED(float, smem);
  uint32_t* const ws = reinterpret_cast<uint32_t*>(smem);
  uint32_t* const tab = reinterpret_cast<uint32_t*>(smem + L.tab_at());
  float* const bias = smem + L.bias_at();
  float* const stages = smem + L.stages_at();
  const Geo& g = op.g;
  const int RS = g.R * g.S, crs = g.C * RS, HW = g.H * g.W, PQ = g.P * g.Q, rows = g.C * g.R;
  const int tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32, t = lane % 4;

  // Once a block: w in core matrices, its k (s, c, r) in order, rounded; zero past M and crs. First
  // where each k lies in a row of w, (c R + r) S + s (-1 past crs), in stage 1 (unused until tile 1's
  // copies). Word l of w is ((st TN / 8 + ni) 2 + kh) 32 + 4 r + kw (k-step st, filter group ni, k
  // half kh, filter row r, word kw of the core matrix's row); a thread's words l = tid + 256 j keep
  // (kh, r, kw) = l mod 64 and step (st, ni) by 4 filter groups, without a division a word.
  int* const ksrc = reinterpret_cast<int*>(stages + L.stage);
  for (int k = tid; k < L.kp; k += kWgThreads) {
    const int s = k / rows, cr = k - s * rows;
    ksrc[k] = k < crs ? cr * g.S + s : -1;
  }
  __syncthreads();
  {
    static_assert(kWgThreads % 64 == 0 && kWgThreads / 64 <= TN / 8, "a thread's words: (st, ni) one wrap at most a step");
    const int kw = tid % 4, r = tid / 4 % 8, kh = tid / 32 % 2, kin = kh * (KW / 2) + kw * (KW / 8);
    int ni = tid / 64, st = 0;
    for (int l = tid; l < L.steps * kStepWords; l += kWgThreads) {
      const int m = 8 * ni + r, k = st * KW + kin;
      const float* const wm = op.w + size_t(m < op.M ? m : 0) * crs;
      auto at = [&](int kk) {
        const int o = ksrc[kk];
        return m < op.M && o >= 0 ? wm[o] : 0.0f;
      };
      ws[l] = kBf16 ? pack_bf16x2(at(k), at(k + 1)) : tf32_operand(at(k));
      if ((ni += kWgThreads / 64) >= TN / 8) ni -= TN / 8, ++st;
    }
  }
  // The k table, each lane's four offsets a step; the biases (0 where there are none).
  auto koff = [&](int k) {
    if (k >= crs) return 0;  // (w is zero there; row 0's words are copied every tile)
    const int s = k / rows, cr = k - s * rows;
    return cr * L.rp + (s & 1) * L.hp + s / 2;
  };
  for (int l = tid; l < L.steps * 16; l += kWgThreads) {
    const int i = l % 4, tt = l / 4 % 4, st = l / 16;
    tab[l] = uint32_t(koff(kBf16 ? st * 16 + 2 * tt + (i & 1) + 8 * (i >> 1) : st * 8 + tt + 4 * i));
  }
  for (int m = tid; m < TN; m += kWgThreads) bias[m] = m < op.M ? op.bias_of(m) : 0.0f;
  fence_proxy_async();  // w's stores before wgmma's reads of them (after the barrier below)

  // Tile u of the block: its image and output row.
  const int tiles = wgrows_tiles(g);
  const int ntile_block = (tiles - int(blockIdx.x) + int(gridDim.x) - 1) / int(gridDim.x);
  auto tile_of = [&](int u, int& img, int& p) {
    const int tile = int(blockIdx.x) + u * int(gridDim.x);
    img = tile / g.P, p = tile - img * g.P;
  };
  // Tile u's input rows into stage u % 2 (an empty group past the last tile): a warp a row (c, r),
  // x's row 2p + r of channel c (inside the image: no padding), its lanes along the columns, even
  // columns then odd ones, zero past W.
  const int dlane = (lane & 1) * L.hp + (lane >> 1);  // column lane + 32 j's place, + 16 j
  auto issue = [&](int u) {
    if (u < ntile_block) {
      int img, p;
      tile_of(u, img, p);
      float* const st = stages + (u % 2) * L.stage;
      for (int row = warp; row < rows; row += kWgThreads / 32) {
        const int c = row / g.R, r = row - c * g.R;
        const float* src = op.x + ((size_t(c) * g.N + img) * HW + size_t(2 * p + r) * g.W + lane);
        float* dst = st + row * L.rp + dlane;
        const float* from = src;
        for (int col = lane; col < 2 * L.hp; col += 32, from += 32, dst += 16) {
          const bool in = col < g.W;
          cp_async4(dst, in ? from : src, in);
        }
      }
    }
    cp_async_commit();
  };

  // The thread's columns q and q + 8 of the tile (64 its warpgroup, 16 its warp in it, g).
  const int q = wg_row(tid);
  // w's descriptor; k-step st's starts st TN 8 words on, added to its address field (addr / 16 in
  // bits 0-13, which w's end, under 256 KB, does not overflow): fewer instructions a wgmma than a
  // descriptor made anew.
  const uint64_t wdesc = wgmma_desc(smem_address(ws), 128, 256);
  const uint4* const tabt = reinterpret_cast<const uint4*>(tab) + t;
  issue(0);
  for (int u = 0; u < ntile_block; ++u) {
    cp_async_wait<0>();  // this thread's copies of tile u
    fence_proxy_async(); // (the stages are no operand of wgmma's; the emulator asks it after any copy)
    __syncthreads();     // everyone's (and w, the table and the biases at the first); everyone done with u - 1
    issue(u + 1);
    const float* const xs = stages + (u % 2) * L.stage + q;
    float d[TN / 2];
    wg_clear(d);
    uint64_t gdesc = wdesc;  // (the group's first k-step's)
    for (int s0 = 0; s0 < L.steps; s0 += kGroup, gdesc += uint64_t(kGroup * kStepWords / 4)) {
      uint32_t a[kGroup][4];
      uint64_t desc[kGroup];
      SQ_UNROLL
      for (int e = 0; e < kGroup; ++e) {
        const uint4 ko = tabt[4 * (s0 + e)];
        if constexpr (kBf16) {  // (k 2t, 2t + 1 and 2t + 8, 2t + 9)
          a[e][0] = pack_bf16x2(xs[ko.x], xs[ko.y]);
          a[e][1] = pack_bf16x2(xs[ko.x + 8], xs[ko.y + 8]);
          a[e][2] = pack_bf16x2(xs[ko.z], xs[ko.w]);
          a[e][3] = pack_bf16x2(xs[ko.z + 8], xs[ko.w + 8]);
        } else {  // (k t and t + 4)
          a[e][0] = tf32_operand(xs[ko.x]);
          a[e][1] = tf32_operand(xs[ko.x + 8]);
          a[e][2] = tf32_operand(xs[ko.y]);
          a[e][3] = tf32_operand(xs[ko.y + 8]);
        }
        desc[e] = gdesc + uint64_t(e * kStepWords / 4);  // (st TN 8 words: st TN 2 in the field)
      }
      wgmma_issue<kBf16, TN>(d, a, desc);
      wgmma_retire(d);
    }
    // The outputs: filter m = 8i + 2t + j at columns q (d[4i + j]) and q + 8 (d[4i + 2 + j]) of
    // output row p, where m < M and the column < Q.
    int img, p;
    tile_of(u, img, p);
    float* const yt = op.y + (size_t(img) * PQ + size_t(p) * g.Q + q);
    const bool in0 = q < g.Q, in1 = q + 8 < g.Q;
    // The bias added unconditionally (0 where there is none), the ReLU a max, the stores
    // predicated: no branch an output. Two paths on purpose: every filter row exists (conv1 of
    // both models), or each is tested.
    auto store = [&](auto every_row) {
      SQ_UNROLL
      for (int i = 0; i < TN / 8; ++i)
        SQ_UNROLL
        for (int j = 0; j < 2; ++j) {
          const int m = 8 * i + 2 * t + j;
          if (!decltype(every_row)::value && m >= op.M) continue;
          const float bm = bias[m];
          float v0 = d[4 * i + j] + bm, v1 = d[4 * i + 2 + j] + bm;
          if (op.relu) v0 = fmaxf(v0, 0.0f), v1 = fmaxf(v1, 0.0f);
          float* const yr = yt + size_t(m) * op.N;
          if (in0) yr[0] = v0;
          if (in1) yr[8] = v1;
        }
    };
    if (op.M >= TN)
      store(std::true_type{});
    else
      store(std::false_type{});
  }
  cp_async_wait<0>();  // (only an empty group remains)
}

}  // namespace
}  // namespace cuda
}  // namespace sq
