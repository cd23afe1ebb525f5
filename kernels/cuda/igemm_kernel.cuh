// The convolution's kernels (kernels/cuda/conv.cu launches them): the tiled implicit GEMM, fp32
// and tensor-core, the split-K sum and the bias gradient.
// Kernel source only, no CUDA runtime: tests/test_igemm.cpp compiles this file for the CPU under
// tests/simt_host.h, which runs every thread of a block as a fiber and __syncthreads() as a switch
// between them (and stands in for WMMA and bfloat16), so the tiling, the operand keys and their
// barriers are checked on machines without a GPU.
#pragma once
#include <type_traits>
#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <mma.h>
#endif

#include "kernels/cuda/igemm_ops.h"
#include "kernels/cuda/kernel_util.cuh"

namespace sq {
namespace cuda {
namespace {  // internal linkage: one copy per translation unit (conv.cu; the CPU tests)

constexpr int BM = 64, BN = 64, BK = 16, kGemmThreads = 256;

// The operand keys of one block (igemm_ops.h, Key): those of the k-steps, in NB buffers (the keys
// of step k0 + BK go into the buffer step k0 does not use, before the barrier that publishes step
// k0's tile), and, where B runs along k (the weight gradient), the n key of each column of the
// tile. Elsewhere all of a thread's B elements lie in one column, whose key it keeps in registers.
// (KB: the k-step's depth, BK here, 32 in the mma kernel; NB: the k keys' buffers, 2 here, one
// more than the pipeline's stages there.)
template <class Op, int TN, int KB = BK, int NB = 2>
struct Keys {
  Key k[NB][KB];
  Key n[Op::kBAlongK ? TN : 1];
};

// The key of column n (kNNone past the edge).
template <class Op>
__device__ Key column_key(const Op& op, int n) {
  return n < op.N ? op.nkey(n) : Key{0, Op::kNNone};
}
template <class Op, int TN, int KB, int NB>
__device__ void fill_nkeys(const Op& op, Keys<Op, TN, KB, NB>& t, int n0) {
  if (Op::kBAlongK)
    for (int l = threadIdx.x; l < TN; l += kGemmThreads) t.n[l] = column_key(op, n0 + l);
}
// Threads first..first+KB-1 fill one buffer (tab.k[buf]) with the keys of the step at k0, kKNone
// past ke.
template <class Op, int KB>
__device__ void fill_kkeys(const Op& op, Key (&k)[KB], int k0, int ke, int first = 0) {
  const int t = int(threadIdx.x) - first;
  if (t >= 0 && t < KB) k[t] = k0 + t < ke ? op.kkey(k0 + t) : Key{0, Op::kKNone};
}

// One thread's share of a k-step's operand tiles (TM x BK of A, BK x TN of B), in registers
// between its loads from global memory and its stores to shared memory. Element r of the share
// is A (mm, kk) and B (kk, nn) of the tile; neighbouring threads take neighbouring elements along
// the dimension that is contiguous in memory.
template <class Op, int TM, int TN>
struct Staged {
  static constexpr int RA = TM * BK / kGemmThreads, RB = BK * TN / kGemmThreads;
  static_assert(RA * kGemmThreads == TM * BK && RB * kGemmThreads == BK * TN, "whole loads per thread");
  float a[RA], b[RB];
  // All of this thread's B elements lie in column tid % TN (col, its key), or where B runs along
  // k at k tid % BK of each step.
  static_assert(kGemmThreads % TN == 0 && kGemmThreads % BK == 0, "a thread's B elements share their column, or k");
  Key col{0, Op::kNNone};
  __device__ static void a_at(int r, int& mm, int& kk) {
    const int l = int(threadIdx.x) + r * kGemmThreads;
    mm = l / BK, kk = l % BK;
  }
  __device__ static void b_at(int r, int& kk, int& nn) {
    const int l = int(threadIdx.x) + r * kGemmThreads;
    kk = Op::kBAlongK ? l % BK : l / TN, nn = Op::kBAlongK ? l / BK : l % TN;
  }
  // Hands every element to put_a(mm, kk, v) and put_b(kk, nn, v): the kernel's stores.
  template <class PutA, class PutB>
  __device__ void store(PutA put_a, PutB put_b) const {
    SQ_UNROLL
    for (int r = 0; r < RA; ++r) {
      int mm, kk;
      a_at(r, mm, kk);
      put_a(mm, kk, a[r]);
    }
    SQ_UNROLL
    for (int r = 0; r < RB; ++r) {
      int kk, nn;
      b_at(r, kk, nn);
      put_b(kk, nn, b[r]);
    }
  }
  // A kernel's start: the column keys and the first step's k keys, the barrier that publishes
  // them, then the first step's elements (kb: the block's first k, ke: its end).
  __device__ void begin(const Op& op, Keys<Op, TN>& tab, int m0, int n0, int kb, int ke) {
    fill_nkeys(op, tab, n0);
    fill_kkeys(op, tab.k[0], kb, ke);
    if (!Op::kBAlongK) col = column_key(op, n0 + int(threadIdx.x) % TN);
    __syncthreads();
    if (kb < ke) load(op, tab, 0, m0, kb, ke);
  }
  // Step k0's elements (zero outside the product), with its k keys in tab.k[buf].
  __device__ void load(const Op& op, const Keys<Op, TN>& tab, int buf, int m0, int k0, int ke) {
    SQ_UNROLL
    for (int r = 0; r < RA; ++r) {
      int mm, kk;
      a_at(r, mm, kk);
      const int m = m0 + mm, k = k0 + kk;
      a[r] = (m < op.M && k < ke) ? *op.a_ptr(m, k) : 0.0f;
    }
    const Key fixed = Op::kBAlongK ? tab.k[buf][int(threadIdx.x) % BK] : col;
    SQ_UNROLL
    for (int r = 0; r < RB; ++r) {
      int kk, nn;
      b_at(r, kk, nn);
      b[r] = Op::kBAlongK ? op.b_value(fixed, tab.n[nn]) : op.b_value(tab.k[buf][kk], fixed);
    }
  }
};

// A thread's J outputs of row m (columns n[j], values v[j]) through op's epilogue, the loads first:
// the forward's bias once (FwdOp::bias_of), the input gradient's x and old dx for the whole row
// before its stores (DataOp::out_loaded). Through op.store, each output's loads waited behind the
// store before it, which the compiler must assume may alias them.
template <class Op, int J>
__device__ void store_row(const Op& op, int m, const int (&n)[J], const float (&v)[J], int z) {
  if constexpr (std::is_same<Op, FwdOp>::value) {
    const float bm = op.bias_of(m);
    SQ_UNROLL
    for (int j = 0; j < J; ++j)
      if (n[j] < op.N) op.store_biased(m, n[j], v[j], bm);
  } else {
    if constexpr (std::is_same<Op, DataOp>::value) {
      if (!op.partial) {
        float x[J], old[J];
        SQ_UNROLL
        for (int j = 0; j < J; ++j) {
          const size_t i = size_t(m) * op.N + n[j];
          x[j] = op.relu_x && n[j] < op.N ? op.relu_x[i] : 1.0f;
          old[j] = op.accumulate && n[j] < op.N ? op.dx[i] : 0.0f;
        }
        SQ_UNROLL
        for (int j = 0; j < J; ++j)
          if (n[j] < op.N) op.dx[size_t(m) * op.N + n[j]] = op.out_loaded(v[j], x[j], old[j]);
        return;
      }
    }
    SQ_UNROLL
    for (int j = 0; j < J; ++j)  // the weight gradient, and the input gradient's split-K slices
      if (n[j] < op.N) op.store(m, n[j], v[j], z);
  }
}

// One k of a thread's MT x MT share of a TM x TN tile (the fp32 kernels: v4 here, v8 in
// igemm_async.cuh): its MT rows of A from a (row k of the [k][m] tile) and MT columns of B from b
// (row k of [k][n]), H = MT / 4 quarters of 4 half a tile apart, each one float4 read.
template <int TM, int TN, int MT>
__device__ inline void share_step(const float* a, const float* b, int ty, int tx, float (&acc)[MT][MT]) {
  constexpr int H = MT / 4;
  float av[MT], bv[MT];
  SQ_UNROLL
  for (int h = 0; h < H; ++h) {
    const float4 a4 = *reinterpret_cast<const float4*>(a + h * (TM / H) + ty * 4);
    const float4 b4 = *reinterpret_cast<const float4*>(b + h * (TN / H) + tx * 4);
    av[4 * h] = a4.x, av[4 * h + 1] = a4.y, av[4 * h + 2] = a4.z, av[4 * h + 3] = a4.w;
    bv[4 * h] = b4.x, bv[4 * h + 1] = b4.y, bv[4 * h + 2] = b4.z, bv[4 * h + 3] = b4.w;
  }
  SQ_UNROLL
  for (int i = 0; i < MT; ++i)
    SQ_UNROLL
    for (int j = 0; j < MT; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
}
// The share's outputs through op's epilogue (store_row), a row at a time; z: the split-K slice.
template <int TM, int TN, class Op, int MT>
__device__ inline void store_share(const Op& op, int m0, int n0, int ty, int tx, const float (&acc)[MT][MT], int z) {
  constexpr int H = MT / 4;
  SQ_UNROLL
  for (int i = 0; i < MT; ++i) {
    const int m = m0 + (i / 4) * (TM / H) + ty * 4 + i % 4;
    if (m >= op.M) continue;
    int n[MT];
    SQ_UNROLL
    for (int j = 0; j < MT; ++j) n[j] = n0 + (j / 4) * (TN / H) + tx * 4 + j % 4;
    store_row(op, m, n, acc[i], z);
  }
}

// The fp32 kernel's block tile is TM x TN outputs, and each thread's share MT x MT of them, MT =
// 4 (64x64, 32x128, 16x256) or 8 (128x128, 64x256): the 8x8 share reads 4 floats from shared
// memory per 16 products where the 4x4 share reads 2 per 4, the 4x4 kernel's limit. An 8x8 share
// is two 4-row by two 4-column quarters, half a tile apart, so that a warp's float4 reads of a
// k-row stay contiguous. Each k-step's operand elements pass through registers: with kPrefetch,
// a thread issues its loads of step k + BK before the products of step k, so their latency hides
// behind the arithmetic, and stores them to shared memory after the barrier that ends the
// products (without it, the loads follow that barrier: the v3 schedule, kept for measuring the
// difference).
//
// A thread's place (tx, ty) in the grid of shares: by default a warp covers 32 / TX rows of TX
// shares (2 x 16 in the 64x64 tile); with square_warps (SQUEEZE_IGEMM_WARPS=4x8, opt-in,
// unmeasured) it covers 4 rows of 8, so that each k-row's float4 reads of A and of B touch 64 and
// 128 contiguous bytes, against 32 and 256: fewer shared-memory wavefronts per product if the
// hardware serves a warp's 16-byte reads per 128-byte segment.
template <class Op, int TM, int TN, bool kPrefetch = true>
__global__ void __launch_bounds__(kGemmThreads) igemm_kernel(Op op, int k_chunk, bool square_warps = false) {
  constexpr int MT = TM * TN / kGemmThreads == 64 ? 8 : 4, TX = TN / MT;
  static_assert((TM / MT) % 4 == 0 && TX % 8 == 0, "the 4 x 8 warp layout tiles the block");
  static_assert((TM / MT) * (TN / MT) == kGemmThreads, "one MT x MT share of outputs per thread");
  using St = Staged<Op, TM, TN>;
  __shared__ __align__(16) float As[BK][TM + 4];
  __shared__ __align__(16) float Bs[BK][TN + 4];
  __shared__ Keys<Op, TN> tab;
  SQ_FRESH_SHARED(As);
  SQ_FRESH_SHARED(Bs);
  SQ_FRESH_SHARED(tab);
  const int m0 = blockIdx.y * TM, n0 = blockIdx.x * TN;
  const int kb = blockIdx.z * k_chunk, ke = min(op.Kd, kb + k_chunk);
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int tx = square_warps ? (warp % (TX / 8)) * 8 + lane % 8 : int(threadIdx.x) % TX;
  const int ty = square_warps ? (warp / (TX / 8)) * 4 + lane / 8 : int(threadIdx.x) / TX;
  float acc[MT][MT];
  SQ_UNROLL
  for (int i = 0; i < MT; ++i)
    SQ_UNROLL
    for (int j = 0; j < MT; ++j) acc[i][j] = 0.0f;
  St st;
  st.begin(op, tab, m0, n0, kb, ke);
  int cur = 0;
  for (int k0 = kb; k0 < ke; k0 += BK, cur ^= 1) {
    st.store([&](int mm, int kk, float v) { As[kk][mm] = v; }, [&](int kk, int nn, float v) { Bs[kk][nn] = v; });
    fill_kkeys(op, tab.k[cur ^ 1], k0 + BK, ke);
    __syncthreads();  // the tile of step k0 and the keys of step k0 + BK are visible
    if (kPrefetch && k0 + BK < ke) st.load(op, tab, cur ^ 1, m0, k0 + BK, ke);
    SQ_UNROLL
    for (int kk = 0; kk < BK; ++kk) share_step<TM, TN>(As[kk], Bs[kk], ty, tx, acc);
    __syncthreads();  // every thread is done with the tile before the next is stored
    if (!kPrefetch && k0 + BK < ke) st.load(op, tab, cur ^ 1, m0, k0 + BK, ke);
  }
  store_share<TM, TN>(op, m0, n0, ty, tx, acc, int(blockIdx.z));
}

// wt[c][ko][r][s] = w[ko][c][r][s], element i of w: the input gradient's A operand along k
// (DataOp).
__device__ inline void transpose_weight(const float* w, int K, int C, int RS, size_t i, float* wt) {
  const size_t crs = size_t(C) * RS, ko = i / crs, rem = i - ko * crs, c = rem / RS, rs = rem - c * RS;
  wt[(c * K + ko) * RS + rs] = w[i];
}

// What follows a convolution's weight gradient, in one launch over its K*C*R*S weights (and K
// biases): dw += the slices ws[z] summed in order; with db, db += the slices' row sums of dz
// (rows[z][K], WeightOp::rows) summed in order; with wt, w transposed into wt for the input
// gradient. wt must not overlap ws or rows.
struct WeightSums {
  const float* ws;
  int splits, K, C, RS;
  float* dw;
  const float* rows = nullptr;
  float* db = nullptr;
  const float* w = nullptr;
  float* wt = nullptr;
  SQ_HOST_DEVICE size_t mn() const { return size_t(K) * C * RS; }
  SQ_HOST_DEVICE size_t count() const { return mn() + (db ? size_t(K) : 0); }
};
__global__ void splitk_reduce_kernel(WeightSums a) {
  const size_t mn = a.mn();
  SQ_GRID_STRIDE(i, a.count()) {
    float acc = 0.0f;
    if (i < mn) {
      for (int z = 0; z < a.splits; ++z) acc += a.ws[size_t(z) * mn + i];
      a.dw[i] += acc;
      if (a.wt) transpose_weight(a.w, a.K, a.C, a.RS, i, a.wt);
    } else {
      for (int z = 0; z < a.splits; ++z) acc += a.rows[size_t(z) * a.K + (i - mn)];
      a.db[i - mn] += acc;
    }
  }
}

// The input gradient's split-K slices (op.partial) summed in order, then op's epilogue (DataOp::out:
// onto dx when accumulating, then the ReLU of x's backward).
__global__ void data_splitk_reduce_kernel(DataOp op, int splits) {
  const size_t mn = size_t(op.M) * op.N;
  SQ_GRID_STRIDE(i, mn) {
    float v = op.partial[i];
    for (int z = 1; z < splits; ++z) v += op.partial[size_t(z) * mn + i];
    op.dx[i] = op.out(i, v);
  }
}

// The bias gradient in two fixed-order passes: partial[k][c] = sum of chunk c of dz[k, :] (a
// block per (k, c), four independent loads in flight per thread), then db[k] += the partials of
// row k in order. One block per k alone left most of a large GPU idle on rows of 10^5 to 10^6.
__global__ void bias_partial_kernel(const float* dz, size_t npq, size_t chunk, float* partial) {
  __shared__ float sh[kThreads];
  SQ_FRESH_SHARED(sh);
  const float* row = dz + size_t(blockIdx.x) * npq;
  const size_t b = size_t(blockIdx.y) * chunk, e = b + chunk < npq ? b + chunk : npq;
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  size_t i = b + threadIdx.x;
  for (; i + 3 * kThreads < e; i += 4 * kThreads) {
    SQ_UNROLL
    for (int u = 0; u < 4; ++u) acc[u] += row[i + u * kThreads];
  }
  for (; i < e; i += kThreads) acc[0] += row[i];
  const float total = block_sum((acc[0] + acc[1]) + (acc[2] + acc[3]), sh);
  if (threadIdx.x == 0) partial[size_t(blockIdx.x) * gridDim.y + blockIdx.y] = total;
}

__global__ void bias_finish_kernel(const float* partial, int K, int chunks, float* db) {
  SQ_GRID_STRIDE(k, size_t(K)) {
    float acc = 0.0f;
    for (int c = 0; c < chunks; ++c) acc += partial[k * chunks + c];
    db[k] += acc;
  }
}

namespace wmma = nvcuda::wmma;

// ---- tensor-core variant (TF32 or BF16 operands, fp32 accumulation) --------------------------
// The same block tiles and loaders; operands are rounded to the tensor-core type as they
// enter shared memory, eight warps each own a block of 16x16 accumulator tiles (WMMA), and the
// accumulators pass through shared memory to the op's epilogue. Storage stays fp32 (the master
// weights and activations); only the multiply's inputs are TF32/BF16.
struct Tf32 {
  using Elem = float;
  using Frag = wmma::precision::tf32;
  static constexpr int K = 8, Pad = 4;
  // Rounded once, as it enters shared memory, rather than in each warp's loaded fragments at
  // every step: the fragments load values that are already tf32.
  __device__ static Elem cvt(float v) { return wmma::__float_to_tf32(v); }
};
struct Bf16 {
  using Elem = __nv_bfloat16;
  using Frag = __nv_bfloat16;
  static constexpr int K = 16, Pad = 8;
  __device__ static Elem cvt(float v) { return __float2bfloat16_rn(v); }
};

// Block tile TM x TN (64x64; 128x128 and 64x256 for larger products), eight warps in a 4 x 2
// grid, each owning (TM/4) x (TN/2) outputs as 16x16 accumulator fragments. A warp's fragments
// leave through its own 16x16 staging tile in shared memory to the op's epilogue, one at a time.
template <class Op, class Prec, bool kPrefetch = true, int TM = BM, int TN = BN>
__global__ void __launch_bounds__(kGemmThreads) igemm_tc_kernel(Op op, int k_chunk) {
  using E = typename Prec::Elem;
  constexpr int FM = TM / 4 / 16, FN = TN / 2 / 16, LDA = BK + Prec::Pad, LDB = TN + Prec::Pad, LDC = 16 + 4;
  static_assert(FM >= 1 && FN >= 1 && FM * 64 == TM && FN * 32 == TN, "a 4 x 2 grid of warps of 16x16 fragments");
  __shared__ __align__(32) E As[TM * LDA];  // (m, k) row-major
  __shared__ __align__(32) E Bs[BK * LDB];  // (k, n) row-major
  __shared__ __align__(32) float Cs[kGemmThreads / 32][16 * LDC];
  __shared__ Keys<Op, TN> tab;
  SQ_FRESH_SHARED(As);
  SQ_FRESH_SHARED(Bs);
  SQ_FRESH_SHARED(Cs);
  SQ_FRESH_SHARED(tab);
  const int m0 = blockIdx.y * TM, n0 = blockIdx.x * TN;
  const int kb = blockIdx.z * k_chunk, ke = min(op.Kd, kb + k_chunk);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm = (warp / 2) * (TM / 4), wn = (warp % 2) * (TN / 2);
  wmma::fragment<wmma::accumulator, 16, 16, Prec::K, float> acc[FM][FN];
  SQ_UNROLL
  for (int i = 0; i < FM; ++i)
    SQ_UNROLL
    for (int j = 0; j < FN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  using St = Staged<Op, TM, TN>;
  St st;
  st.begin(op, tab, m0, n0, kb, ke);
  int cur = 0;
  for (int k0 = kb; k0 < ke; k0 += BK, cur ^= 1) {
    st.store([&](int mm, int kk, float v) { As[mm * LDA + kk] = Prec::cvt(v); },
             [&](int kk, int nn, float v) { Bs[kk * LDB + nn] = Prec::cvt(v); });
    fill_kkeys(op, tab.k[cur ^ 1], k0 + BK, ke);
    __syncthreads();
    if (kPrefetch && k0 + BK < ke) st.load(op, tab, cur ^ 1, m0, k0 + BK, ke);
    SQ_UNROLL
    for (int kk = 0; kk < BK; kk += Prec::K) {
      wmma::fragment<wmma::matrix_a, 16, 16, Prec::K, typename Prec::Frag, wmma::row_major> a[FM];
      SQ_UNROLL
      for (int i = 0; i < FM; ++i) {
        wmma::load_matrix_sync(a[i], As + (wm + 16 * i) * LDA + kk, LDA);
      }
      SQ_UNROLL
      for (int j = 0; j < FN; ++j) {
        wmma::fragment<wmma::matrix_b, 16, 16, Prec::K, typename Prec::Frag, wmma::row_major> b;
        wmma::load_matrix_sync(b, Bs + kk * LDB + wn + 16 * j, LDB);
        SQ_UNROLL
        for (int i = 0; i < FM; ++i) wmma::mma_sync(acc[i][j], a[i], b, acc[i][j]);
      }
    }
    __syncthreads();
    if (!kPrefetch && k0 + BK < ke) st.load(op, tab, cur ^ 1, m0, k0 + BK, ke);
  }
  float* c = Cs[warp];
  SQ_UNROLL
  for (int i = 0; i < FM; ++i)
    SQ_UNROLL
    for (int j = 0; j < FN; ++j) {
      wmma::store_matrix_sync(c, acc[i][j], LDC, wmma::mem_row_major);
      __syncwarp();  // the fragment is in the staging tile
      SQ_UNROLL
      for (int e = lane; e < 256; e += 32) {
        const int m = m0 + wm + 16 * i + e / 16, n = n0 + wn + 16 * j + e % 16;
        if (m < op.M && n < op.N) op.store(m, n, c[(e / 16) * LDC + e % 16], blockIdx.z);
      }
      __syncwarp();  // every lane has read it before the next fragment is stored
    }
}

}  // namespace
}  // namespace cuda
}  // namespace sq
