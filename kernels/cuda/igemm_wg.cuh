// The plain 1x1 products' forward and input gradient on Hopper's warpgroup MMA (sm_90a, TF32 and
// BF16; docs/KERNELS.md, "wgmma"): the products that the mma kernel copies through row pointers
// (MmaVec::dense), with their multiply turned around so that the weights are wgmma's shared-memory
// operand and the activations its register operand.
//
// A product is D (M x N) = W (M x K) * X (K x N): the forward's w and x, or the input gradient's
// w transposed (wt) and dz. wgmma takes its B from shared memory K-major, which for TF32 it must
// be (only 16-bit types may be transposed there): W's rows run along k, X's along n. So the kernel
// computes D's transpose, D^T (N x M) = X^T * W^T: wgmma's A (64 x 8 a warpgroup and k-step, or
// x 16 in BF16) is X^T, read from the X stage into registers as mma.sync's A fragments are; its B
// is W^T, W's rows as they are, in core matrices of 8 rows by 16 bytes of k (128 contiguous bytes),
// the k pieces of a row side by side (lbo 128 bytes), rows 8 apart (sbo). Per warp and 8 k: 4
// fragment loads and one wgmma of 16 x TM x 8 a warp, where the mma kernel's 32 x 64 warp tile
// issues 16 mma and their fragments' loads (docs/KERNELS.md, "What bounds the convolution
// kernels": issue, not the tensor pipe, bounded those).
//
// - A block: two warpgroups, 128 pixels (columns n, 64 a warpgroup) by TM = 64 or 128 rows m; two
//   blocks an SM.
// - Stages (WgShape): 3 or 4 of 32-deep k-steps, X (32 rows of 128 pixels, pitch 136 for TF32's
//   fragment reads, 132 for BF16's pairs: conflict-free) and W (TM x 32 in core matrices), zero
//   past the product's edges and the slice's end. Copies run a stage short of the pipeline's
//   depth ahead; a step's wgmma group is waited for at the step's end, so the stage it read is
//   free at the next barrier. (Keeping one group in flight across the next step, as a second set
//   of fragment registers would allow, makes ptxas serialise every wgmma (its C7513): it will not
//   have other instructions write a wgmma's input registers while a group is in flight. The two
//   blocks an SM share the tensor cores instead.)
// - Split-K (the input gradient's data_splits) over blockIdx.z, chunks of whole k-steps (conv.cu
//   passes mma_chunk's, a multiple of 32, so every slice starts 16-byte aligned): slice z's
//   raw sums to op.partial (DataOp::store), an empty slice stores zeros.
// - The epilogue stores through store_row (igemm_kernel.cuh: bias and ReLU, or accumulation and the
//   ReLU of x, their loads ahead of the row's stores): lanes g hold 8 consecutive pixels of a row,
//   32-byte segments.
//
// Kernel source only: tests/test_igemm.cpp runs it under tests/simt_host.h, whose wgmma is
// written from the PTX ISA and checked on the device by the wgmma probe (wgmma_probe.cuh).
#pragma once
#include <cstdint>

#include "kernels/cuda/igemm_kernel.cuh"  // store_row
#include "kernels/cuda/igemm_ops.h"
#include "kernels/cuda/kernel_util.cuh"
#include "kernels/cuda/mma_device.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace sq {
namespace cuda {
namespace {

constexpr int kWgThreads = 256;

// The first of the two rows of wgmma's M (64 a warpgroup) whose A registers and accumulators thread
// tid holds, counted over the block's warpgroups: 64 (warp / 4) + 16 (warp % 4) + g, that is 16
// warp + g; the other is 8 rows on.
SQ_HOST_DEVICE inline int wg_row(int tid) { return 16 * (tid / 32) + tid % 32 / 4; }
// The accumulators zeroed (the kernels' wgmma_issue always adds to them).
template <int R>
__device__ inline void wg_clear(float (&d)[R]) {
  SQ_UNROLL
  for (int i = 0; i < R; ++i) d[i] = 0.0f;
}

// wgmma's K-major shared-memory operand from a row-major fp32 matrix (rows ld floats apart): TM
// rows from row m0 (of M) by a 32-deep k-step, in core matrices of 8 rows by 16 bytes of k (4 TF32,
// 8 BF16), the k pieces of a row side by side (lbo 128 bytes), rows 8 apart (sbo: KS / T core
// matrices): TM x 32 of the multiply's type, kFloats floats. A block's 256 threads: thread
// (r = tid % 8, kq = tid / 8 % 8, rg = tid / 64) copies the 16 bytes at k piece kq of rows
// m0 + 8 (rg + 4u) + r, u < TM / 32, their addresses made once (a step adds KS). Every piece is whole
// or outside (M's rows, ke a multiple of 4), so TF32's copies take cp.async's zero-fill predicate
// (cp_async16_if, an unread piece naming `safe`); BF16's go through registers, converted: 4 floats
// loaded, 8 bytes stored, half a core matrix's row (its multiply's operand must be BF16 itself).
template <bool kBf16, int TM>
struct KMajorCopy {
  static constexpr int KS = 32, kT = kBf16 ? 8 : 4, kU = TM / 32;
  static constexpr int kFloats = TM * KS / (kBf16 ? 2 : 1);
  static constexpr uint32_t kLbo = 128, kSbo = KS / kT * 128;
  const float* p;    // the thread's piece of its first row (row u: 32 u rows on)
  size_t rows32;     // 32 rows' floats
  int left, r, kq, rg;  // left: the rows from the thread's first to M (row u exists where 32 u < left)
  __device__ KMajorCopy(const float* a, int m0, int M, size_t ld, int k0)
      : r(int(threadIdx.x) % 8), kq(int(threadIdx.x) / 8 % (KS / 4)), rg(int(threadIdx.x) / 64) {
    static_assert(kWgThreads == 256 && KS == 32, "the copies' thread map");
    const int m = m0 + 8 * rg + r;
    left = M - m;
    rows32 = 32 * ld;
    p = a + (size_t(m) * ld + size_t(k0 + 4 * kq));
  }
  __device__ bool row(int u) const { return 32 * u < left; }
  __device__ const float* at_row(int u) const { return p + size_t(u) * rows32; }
  // The thread's piece of row u in the stage (floats): row r of core matrix (rg + 4u, its k piece).
  __device__ int at(int u) const {
    return kBf16 ? ((rg + 4 * u) * (KS / 8) + kq / 2) * 32 + 4 * r + 2 * (kq % 2) : ((rg + 4 * u) * (KS / 4) + kq) * 32 + 4 * r;
  }
  // Step j (its first k: kj) into stage b, k at or past ke zero. BF16 with kSums: sums += each
  // row's 4 floats as loaded.
  template <bool kSums = false>
  __device__ void copy(float* b, int j, int kj, int ke, const float* safe, float* sums = nullptr) const {
    const bool kin = kj + 4 * kq < ke;
    if constexpr (kBf16) {
      float4 v[kU];
      SQ_UNROLL
      for (int u = 0; u < kU; ++u)
        v[u] = row(u) && kin ? load16(at_row(u) + j * KS) : float4{0.0f, 0.0f, 0.0f, 0.0f};
      SQ_UNROLL
      for (int u = 0; u < kU; ++u) {
        if (kSums) sums[u] += (v[u].x + v[u].y) + (v[u].z + v[u].w);
        uint32_t* to = reinterpret_cast<uint32_t*>(b + at(u));
        to[0] = pack_bf16x2(v[u].x, v[u].y);
        to[1] = pack_bf16x2(v[u].z, v[u].w);
      }
    } else {
      (void)sums;
      SQ_UNROLL
      for (int u = 0; u < kU; ++u) cp_async16_if(b + at(u), at_row(u) + j * KS, row(u) && kin, safe);
    }
  }
  // TF32: a RowSums-style partial sum rs.v += the landed stage b's pieces of row tid / T (fp32 as
  // copied; Sums::T threads a row, pieces tid % T, + T, ... of the row's KS / 4).
  template <class Sums>
  __device__ static void add_landed_rows(Sums& rs, const float* b) {
    const int tid = int(threadIdx.x);
    if (tid >= Sums::T * TM) return;
    const int n = tid / Sums::T;
    SQ_UNROLL
    for (int q = tid % Sums::T; q < KS / 4; q += Sums::T) {
      const float4 v = *reinterpret_cast<const float4*>(b + ((n / 8) * (KS / 4) + q) * 32 + n % 8 * 4);
      rs.v += (v.x + v.y) + (v.z + v.w);
    }
  }
  // The rows' sums over their 8 k-piece threads into rows[z M + m0 + i]: the whole block calls it
  // once its stages are done with (smem: 8 TM floats).
  __device__ void finish_rows(const float* sums, float* smem, float* rows, int m0, int M, int z) const {
    __syncthreads();
    SQ_UNROLL
    for (int u = 0; u < kU; ++u) smem[(8 * (rg + 4 * u) + r) * 8 + kq] = sums[u];
    __syncthreads();
    const int i = int(threadIdx.x);
    if (i < TM && m0 + i < M) {
      float s = 0.0f;
      for (int q = 0; q < 8; ++q) s += smem[i * 8 + q];
      rows[size_t(z) * M + m0 + i] = s;
    }
  }
};

// TF32 (kBf16 false) or BF16, TM rows. A core matrix is 8 rows by 16 bytes of k (4 TF32, 8 BF16)
// and the stage's W holds TM x 32 of them in the multiply's type: 16 or 8 KB at TM 128.
template <bool kBf16, int TM>
struct WgShape {
  static_assert(TM == 64 || TM == 128, "wgmma tiles of 64 or 128 rows");
  static constexpr int kPix = 128, KS = 32, kStages = TM == 128 && !kBf16 ? 3 : 4, kAhead = kStages - 1;
  static constexpr int kT = kBf16 ? 8 : 4;  // k a core matrix's row holds
  // X's pitch: TF32 fragments read (k t, pixel g): 8 mod 32 words; BF16 read the pairs (2t, 2t + 1):
  // 4 mod 32. Either way conflict-free.
  static constexpr int kLdx = kPix + (kBf16 ? 4 : 8);
  static constexpr int kXFloats = KS * kLdx, kWFloats = KMajorCopy<kBf16, TM>::kFloats;
  static constexpr int kStageFloats = kXFloats + kWFloats;
  static constexpr size_t kSmemBytes = size_t(kStages) * kStageFloats * sizeof(float);
  static constexpr int kBlocksPerSm = 2;  // 101 KB (TF32, 128 rows) or at most 102 KB of stages
  static constexpr uint32_t kLbo = KMajorCopy<kBf16, TM>::kLbo, kSbo = KMajorCopy<kBf16, TM>::kSbo;
};

// The pipeline the wgmma kernels with kAhead copies in flight share: the first kAhead steps'
// copies (an empty group for each past the last step, so that the waits stay exact), and a step's
// start: this thread's copies of it landed, made visible to wgmma's reads (the async proxy), and
// every thread's, every warpgroup having waited for the previous step's group.
template <int kAhead, class Copy>
__device__ void wg_prologue(int steps, Copy&& copy) {
  for (int j = 0; j < kAhead; ++j) {
    if (j < steps) copy(j, j);
    cp_async_commit();
  }
}
template <int kAhead>
__device__ void wg_step_begin() {
  cp_async_wait<kAhead - 1>();
  fence_proxy_async();
  __syncthreads();
}
// A step's end, its group issued (wgmma_issue): the copies kAhead steps ahead, into the stage step
// j - 1 read, while the tensor cores work; then the wait for the group.
template <int kAhead, int kStages, class Copy, int R>
__device__ void wg_step_end(int j, int steps, Copy&& copy, float (&d)[R]) {
  if (j + kAhead < steps) copy(j + kAhead, (j + kAhead) % kStages);
  cp_async_commit();
  wgmma_retire(d);
}

// The epilogue of a 128-pixel x TM tile of D^T: row m = m0 + 8i + 2t + p of D holds the thread's
// pixels n and n + 8 (n = its first pixel: 64 its warpgroup, 16 its warp in the warpgroup, g) in
// d[4i + p], d[4i + 2 + p]. store_row (igemm_kernel.cuh) reads the row's bias, or its x and old dx,
// before its stores; split-K slice z's raw sums go to op.partial.
template <int TM, class Op>
__device__ void wg_store(const Op& op, const float (&d)[TM / 2], int m0, int n, int t, int z) {
  const int ns[2] = {n, n + 8};
  SQ_UNROLL
  for (int i = 0; i < TM / 8; ++i)
    SQ_UNROLL
    for (int p = 0; p < 2; ++p) {
      const int m = m0 + 8 * i + 2 * t + p;
      const float v[2] = {d[4 * i + p], d[4 * i + 2 + p]};
      if (m < op.M) store_row(op, m, ns, v, z);
    }
}

template <class Op, bool kBf16, int TM>
__global__ void __launch_bounds__(kWgThreads, WgShape<kBf16, TM>::kBlocksPerSm) igemm_wg_kernel(Op op, int chunk) {
  using Sh = WgShape<kBf16, TM>;
  constexpr int KS = Sh::KS;
  SQ_DYNAMIC_SHARED(float, smem);
  const int tid = int(threadIdx.x);
  const int n0 = int(blockIdx.x) * Sh::kPix, m0 = int(blockIdx.y) * TM, z = int(blockIdx.z);
  const int kb = z * chunk, ke = min(op.Kd, kb + chunk);
  const int steps = ke > kb ? (ke - kb + KS - 1) / KS : 0;

  // k-step j's operands into stage `stage`. Each thread's pieces are the same every step, their
  // addresses made once: of X, the 16 bytes at column xn of rows kb + xk + 8u (b_dense's rows are N
  // floats apart); of W, KMajorCopy's. A step adds KS rows of X, KS floats of W. Every piece is
  // whole or outside (N, Kd and the slices' ends are multiples of 4: MmaVec::dense), so the copies
  // take the zero-fill predicate (cp_async16_if). BF16's W goes through registers (KMajorCopy; the
  // loads are made after the step's wgmmas are issued, so they wait beside the tensor cores' work).
  const int xq = tid % 32, xk = tid / 32, xn = n0 + 4 * xq;
  const bool xin = xn < op.N;
  const size_t xrows8 = size_t(8) * size_t(op.N);
  const float* xp = op.b_dense(0, 0) + (size_t(kb + xk) * size_t(op.N) + size_t(xn));
  const KMajorCopy<kBf16, TM> wcopy(op.a_ptr(0, 0), m0, op.M, size_t(op.Kd), kb);
  auto copy = [&](int j, int stage) {
    float* xs = smem + stage * Sh::kStageFloats;
    const int k0 = kb + j * KS;
    const float* xj = xp + size_t(j) * size_t(KS) * size_t(op.N);
    SQ_UNROLL
    for (int u = 0; u < KS / 8; ++u)
      cp_async16_if(xs + (xk + 8 * u) * Sh::kLdx + 4 * xq, xj + u * xrows8, xin && k0 + xk + 8 * u < ke, op.any());
    wcopy.copy(xs + Sh::kXFloats, j, k0, ke, op.any());
  };
  static_assert(kWgThreads == 256 && KS == 32 && Sh::kPix == 128, "the copies' thread map");

  const int t = tid % 4;
  const int px = wg_row(tid);  // the thread's first pixel in the tile
  float d[TM / 2];
  wg_clear(d);
  wg_prologue<Sh::kAhead>(steps, copy);
  // A wgmma's k: 8 (TF32: fragment rows t, t + 4) or 16 (BF16: row pairs 2t, 2t + 1 and
  // 2t + 8, 2t + 9); its B: two core matrices along k, 256 bytes, 64 floats of the stage.
  constexpr int KW = kBf16 ? 16 : 8;
  uint32_t a[KS / KW][4];
  for (int j = 0; j < steps; ++j) {
    wg_step_begin<Sh::kAhead>();
    const float* xs = smem + (j % Sh::kStages) * Sh::kStageFloats;
    const float* ws = xs + Sh::kXFloats;
    // Every input of the group's wgmmas made before the fence (fragments and descriptors): ptxas
    // serialises wgmmas whose input registers other instructions write inside the group.
    uint64_t desc[KS / KW];
    SQ_UNROLL
    for (int s = 0; s < KS / KW; ++s) {
      if constexpr (kBf16) {
        const float* p = xs + (16 * s + 2 * t) * Sh::kLdx + px;
        a[s][0] = pack_bf16x2(p[0], p[Sh::kLdx]);
        a[s][1] = pack_bf16x2(p[8], p[Sh::kLdx + 8]);
        a[s][2] = pack_bf16x2(p[8 * Sh::kLdx], p[9 * Sh::kLdx]);
        a[s][3] = pack_bf16x2(p[8 * Sh::kLdx + 8], p[9 * Sh::kLdx + 8]);
      } else {
        const float* p = xs + (8 * s + t) * Sh::kLdx + px;
        a[s][0] = tf32_operand(p[0]);
        a[s][1] = tf32_operand(p[8]);
        a[s][2] = tf32_operand(p[4 * Sh::kLdx]);
        a[s][3] = tf32_operand(p[4 * Sh::kLdx + 8]);
      }
      desc[s] = wgmma_desc(smem_address(ws + 64 * s), Sh::kLbo, Sh::kSbo);
    }
    wgmma_issue<kBf16, TM>(d, a, desc);
    wg_step_end<Sh::kAhead, Sh::kStages>(j, steps, copy, d);
  }
  cp_async_wait<0>();  // (the last steps' empty groups)

  wg_store<TM>(op, d, m0, n0 + px, t, z);
}

}  // namespace
}  // namespace cuda
}  // namespace sq
