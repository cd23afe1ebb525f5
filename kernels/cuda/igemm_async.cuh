// The fp32 tile kernel on the mma kernel's pipeline, v8 (opt-in, SQUEEZE_IGEMM_ASYNC=1;
// docs/KERNELS.md): 8x8 outputs a thread (the 128x128 and 64x256 tiles of v5), their operands
// copied by cp.async into a ring of shared-memory stages rather than through registers.
//
// Why: v4's 4x4 shares read two float4 from shared memory for 16 FMAs, and its products ran at
// about 55 % of the fp32 rate (fire8's expand 3x3: 28 TFLOP/s in run d, where cuDNN's Winograd
// makes fire8 1.08x faster than ours). v5's 8x8 shares read four for 64, but took 169-209
// registers a thread: one block of 8 warps an SM, too few to hide the operand gathers' latency,
// and they lost (run b). Here the gathers' latency hides behind the stages in flight instead of
// behind other blocks, and no register holds an operand between its load and its store: the
// kernel is built for two blocks an SM (__launch_bounds__(256, 2), 128 registers).
//
// - kStages stages of 16-deep k-steps, A stored [k][m] and B [k][n] (rows 4 floats longer than
//   the tile, 16-byte aligned), so that a thread's 8 rows and 8 columns of a k are two float4
//   reads each (the quarters of igemm_kernel's 8x8 share, half a tile apart).
// - Every element is a 4-byte cp.async at the address igemm_ops.h's keys give it (zero-filled in
//   the padding and past the edges), neighbouring threads on neighbouring addresses of the
//   operand in memory: along k for A (the shared-memory side then strided by a row: a 4-way bank
//   conflict on the copies, against the float4 reads' 16 a step of the products), along n for B,
//   or along k where B runs along k (the weight gradient).
// - The k keys of the steps, one buffer a step in flight plus one, filled a step ahead by one
//   group of 16 threads, as the mma kernel does; one barrier a step.
//
// Kernel source only, no CUDA runtime: tests/test_igemm.cpp runs it on the CPU under
// tests/simt_host.h (copies land when their thread waits for their group, so a missing wait or
// barrier gives a wrong product there).
#pragma once

#include "kernels/cuda/igemm_kernel.cuh"
#include "kernels/cuda/igemm_mma.cuh"

namespace sq {
namespace cuda {
namespace {

template <int TM, int TN>
struct AsyncShape {
  static constexpr int KB = 16, kStages = 4, MT = 8, TX = TN / MT;
  static_assert((TM / MT) * TX == kGemmThreads && (TM / MT) % 4 == 0 && TX % 8 == 0, "one 8x8 share a thread");
  static constexpr int LDA = TM + 4, LDB = TN + 4;  // [k][m], [k][n]
  static constexpr int kAFloats = KB * LDA, kStageFloats = kAFloats + KB * LDB;
  static_assert(kAFloats % 4 == 0 && kStageFloats % 4 == 0, "16-byte aligned tiles");
  static constexpr size_t kSmemBytes = size_t(kStages) * kStageFloats * sizeof(float);
  static_assert(kSmemBytes <= kMinSmemOptin, "stages that every GPU of the build allows a block");
  static constexpr int RA = TM * KB / kGemmThreads, RB = KB * TN / kGemmThreads;
  static_assert(RA * kGemmThreads == TM * KB && RB * kGemmThreads == KB * TN, "whole copies per thread");
};

// Grid: x the column tiles, y the row tiles, z the split-K slices of k_chunk each (as igemm_kernel).
template <class Op, int TM, int TN>
__global__ void __launch_bounds__(kGemmThreads, 2) igemm_async_kernel(Op op, int k_chunk) {
  using Sh = AsyncShape<TM, TN>;
  constexpr int KB = Sh::KB, NS = Sh::kStages, NK = NS + 1, MT = Sh::MT, TX = Sh::TX;
  constexpr int LDA = Sh::LDA, LDB = Sh::LDB;
  SQ_DYNAMIC_SHARED(float, smem);
  __shared__ Keys<Op, TN, KB, NK> tab;
  SQ_FRESH_SHARED(tab);
  static_assert(Sh::kSmemBytes + sizeof(tab) <= kMinSmemOptin, "stages and keys that every GPU of the build allows a block");
  const int m0 = int(blockIdx.y) * TM, n0 = int(blockIdx.x) * TN;
  const int kb = int(blockIdx.z) * k_chunk, ke = min(op.Kd, kb + k_chunk);
  const int steps = ke > kb ? (ke - kb + KB - 1) / KB : 0;
  const int tx = int(threadIdx.x) % TX, ty = int(threadIdx.x) / TX;
  // A's copies: KB threads along a row's k, kARows rows a pass.
  constexpr int kARows = kGemmThreads / KB;
  const int a_row = int(threadIdx.x) / KB, a_k = int(threadIdx.x) % KB;

  // A thread's B elements lie in one column (its key for the whole kernel) or, where B runs along
  // k, at one k of each step (its key read once a step).
  static_assert(kGemmThreads % TN == 0 && kGemmThreads % KB == 0, "a thread's B elements share their column, or their k");
  const int fixed_b = Op::kBAlongK ? int(threadIdx.x) % KB : int(threadIdx.x) % TN;
  const Key col = Op::kBAlongK ? Key{0, Op::kNNone} : column_key(op, n0 + fixed_b);

  // Step j's copies into stage j % NS, its k keys in buffer j % NK (an empty group past the last
  // step keeps the count of groups per iteration fixed).
  auto issue = [&](int j) {
    if (j < steps) {
      const int k0 = kb + j * KB, buf = j % NK;
      float* As = smem + (j % NS) * Sh::kStageFloats;
      float* Bs = As + Sh::kAFloats;
      {  // thread (a_row, a_k) of each pass of kARows rows, a row's pointer a pass (a_ptr's rows
         // are Kd apart)
        const int k = k0 + a_k;
        const float* a = op.a_ptr(m0 + a_row, k);
        SQ_UNROLL
        for (int r = 0; r < Sh::RA; ++r) {
          const int mm = a_row + r * kARows;
          const bool in = m0 + mm < op.M && k < ke;
          cp_async4(As + a_k * LDA + mm, in ? a : op.any(), in);
          a += size_t(kARows) * op.Kd;
        }
      }
      const Key fk = Op::kBAlongK ? tab.k[buf][fixed_b] : col;
      SQ_UNROLL
      for (int r = 0; r < Sh::RB; ++r) {
        const int l = int(threadIdx.x) + r * kGemmThreads;
        const int kk = Op::kBAlongK ? l % KB : l / TN, nn = Op::kBAlongK ? l / KB : l % TN;
        const float* e = Op::kBAlongK ? op.b_key(fk, tab.n[nn]) : op.b_key(tab.k[buf][kk], fk);
        cp_async4(Bs + kk * LDB + nn, e ? e : op.any(), e != nullptr);
      }
    }
    cp_async_commit();
  };

  fill_nkeys(op, tab, n0);
  static_assert(NS * KB <= kGemmThreads, "a group of KB threads per step's keys");
  for (int j = 0; j < NS; ++j) fill_kkeys(op, tab.k[j], kb + j * KB, j < steps ? ke : kb, j * KB);
  __syncthreads();  // the column keys and the first NS steps' k keys
  for (int j = 0; j < NS - 1; ++j) issue(j);

  float acc[MT][MT];
  SQ_UNROLL
  for (int i = 0; i < MT; ++i)
    SQ_UNROLL
    for (int j = 0; j < MT; ++j) acc[i][j] = 0.0f;

  for (int i = 0; i < steps; ++i) {
    cp_async_wait<NS - 2>();  // this thread's copies of step i have landed
    __syncthreads();  // every thread's copies of step i; every thread done with step i - 1's stage;
                      // step i + NS - 1's keys
    issue(i + NS - 1);  // into the stage step i - 1 used
    // Step i + NS's keys, by threads (i % 16) * 16 .., into the buffer of step i - 1 (last read
    // when step i - 1 was issued, NS - 1 barriers ago).
    fill_kkeys(op, tab.k[(i + NS) % NK], kb + (i + NS) * KB, i + NS < steps ? ke : kb,
               (i % (kGemmThreads / KB)) * KB);
    const float* As = smem + (i % NS) * Sh::kStageFloats;
    const float* Bs = As + Sh::kAFloats;
    SQ_UNROLL
    for (int kk = 0; kk < KB; ++kk) share_step<TM, TN>(As + kk * LDA, Bs + kk * LDB, ty, tx, acc);
  }
  cp_async_wait<0>();  // (only empty groups remain)
  store_share<TM, TN>(op, m0, n0, ty, tx, acc, int(blockIdx.z));
}

}  // namespace
}  // namespace cuda
}  // namespace sq
