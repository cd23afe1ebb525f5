// Hopper's warpgroup matrix multiply (wgmma, sm_90a; docs/KERNELS.md, "wgmma"): the four warps
// of a warpgroup (threads 128j .. 128j + 127 of a block) multiply together a 64 x N tile, A from
// their registers and B from shared memory through a matrix descriptor, asynchronously: the
// tensor cores read B and the A registers after the instruction issues, until the thread waits
// for the group holding it.
//
// The sequence a kernel follows (PTX ISA, "Asynchronous Warpgroup Level Matrix Instructions"):
//   cp_async_wait<...>(); fence_proxy_async();  // the copies into B's stage seen by the async proxy
//   __syncthreads();                             // ... and every thread's copies landed
//   wgmma_fence();                               // the A and accumulator registers written before
//   wgmma_tf32<N>(d, a, desc, scale_d); ...      // one or more, d in the same registers
//   wgmma_commit();                              // the wgmmas since the last commit: one group
//   wgmma_wait<0>();                             // before d (or a, or B's stage) is touched again
// wgmma_fence_operands(d) after the wait keeps the compiler from moving accesses of d across it.
//
// Operands (g = lane / 4, t = lane % 4, w = the warp's place in its warpgroup):
//   A, TF32 (m64nNk8): a[0] = A(16w + g, t), a[1] = A(16w + g + 8, t), a[2] = A(16w + g, t + 4),
//     a[3] = A(16w + g + 8, t + 4): mma.m16n8k8's A fragment, warp w taking rows 16w .. 16w + 15.
//   A, BF16 (m64nNk16): a[r] holds two k, the lower in the low half: rows 16w + g (+ 8 for r odd),
//     k 2t, 2t + 1 (+ 8 for r >= 2): mma.m16n8k16's A fragment.
//   B, both: K x N in shared memory, K-major without swizzle (wgmma_desc): element (k, n) at byte
//     (n % 8) * 16 + (n / 8) * sbo + (k % T) * size + (k / T) * lbo of the start, T = 16 / size
//     (4 TF32, 8 BF16): 8 x 16-byte "core matrices" of 8 n by T k, 128 contiguous bytes each.
//   D: d[4i + e] = D(16w + g + 8 (e / 2), 8i + 2t + e % 2), i < N / 8: mma's C fragments along n.
// A TF32 operand is fp32's bits, of which the tensor cores read the upper 19 (as tf32_operand).
//
// Kernel source only, no CUDA runtime: tests/simt_host.h defines the same functions for the CPU,
// from the PTX ISA independently of the kernels (its wgmma reads A's registers and B at the
// thread's wait, the latest the device may, and ends the run on a missing wgmma.fence or
// fence.proxy.async); wgmma_probe.cuh checks that reading on an sm_90 GPU.
#pragma once
#include <cstdint>

#include "kernels/cuda/kernel_util.cuh"  // SQ_UNROLL

namespace sq {
namespace cuda {

// The descriptor of a K-major B without swizzle at shared-memory address `addr` (16-byte aligned):
// lbo the bytes between core matrices adjacent in k, sbo between those adjacent in n (PTX ISA,
// "Matrix Descriptor Format": each field is its value's bits 4..17).
__host__ __device__ inline uint64_t wgmma_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return uint64_t((addr & 0x3FFFFu) >> 4) | uint64_t((lbo & 0x3FFFFu) >> 4) << 16 |
         uint64_t((sbo & 0x3FFFFu) >> 4) << 32;
}

#ifdef __CUDACC__
// wgmma exists only in sm_90a code: elsewhere these trap (conv.cu routes no product to them there).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SQ_WGMMA_ASM(...) asm volatile(__VA_ARGS__)
#else
#define SQ_WGMMA_ASM(...) __trap()
#endif
// Where p lies in the block's shared memory, as descriptors and shared-memory instructions take it.
__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void wgmma_fence() { SQ_WGMMA_ASM("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { SQ_WGMMA_ASM("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most N of the thread's committed wgmma groups are pending.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  SQ_WGMMA_ASM("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Orders this thread's earlier writes of shared memory (st.shared, cp.async once waited for)
// before later reads of it by the async proxy (wgmma's B).
__device__ __forceinline__ void fence_proxy_async() {
  SQ_WGMMA_ASM("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// The accumulators pinned in place: no access of them moves across this point.
template <int R>
__device__ __forceinline__ void wgmma_fence_operands(float (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
// d (+)= A * B over 64 x N x 8 (TF32) or 64 x N x 16 (BF16); scale_d 0: d = A * B.
template <int N>
__device__ void wgmma_tf32(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b, int scale_d);
template <int N>
__device__ void wgmma_bf16(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b, int scale_d);
// The six instantiations' PTX, their operand lists spelled once: the accumulators ("+f", D32, D48
// or D64), their names in the instruction (R32, R48, R64), then A's four registers, scale-d and B's
// descriptor, numbered after them.
#define SQ_WG_F8(i)                                                                                       \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), \
      "+f"(d[i + 7])
#define SQ_WG_D32 SQ_WG_F8(0), SQ_WG_F8(8), SQ_WG_F8(16), SQ_WG_F8(24)
#define SQ_WG_D48 SQ_WG_D32, SQ_WG_F8(32), SQ_WG_F8(40)
#define SQ_WG_D64 SQ_WG_D48, SQ_WG_F8(48), SQ_WG_F8(56)
#define SQ_WG_R32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "               \
                  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define SQ_WG_R48 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "               \
                  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "  \
                  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47}"
#define SQ_WG_R64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "               \
                  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "  \
                  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "  \
                  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
// shape: e.g. "m64n64k8.f32.tf32.tf32"; rest: A's registers, scale-d's and the descriptor's
// numbers ("%32, %33, %34, %35", "%36", "%37"); trans: BF16's imm-trans-b (", 0": K-major).
#define SQ_WGMMA_RS(shape, dregs, dlist, aregs, scale, desc, trans)                                  \
  SQ_WGMMA_ASM("{\n.reg .pred p;\nsetp.ne.b32 p, " scale ", 0;\n"                                 \
               "wgmma.mma_async.sync.aligned." shape " " dregs ", {" aregs "}, " desc ", p, 1, 1" trans \
               ";\n}\n"                                                                            \
               : dlist                                                                              \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(scale_d), "l"(b))
template <>
__device__ __forceinline__ void wgmma_tf32<64>(float (&d)[32], const uint32_t (&a)[4], uint64_t b, int scale_d) {
  SQ_WGMMA_RS("m64n64k8.f32.tf32.tf32", SQ_WG_R32, SQ_WG_D32, "%32, %33, %34, %35", "%36", "%37", "");
}
template <>
__device__ __forceinline__ void wgmma_tf32<96>(float (&d)[48], const uint32_t (&a)[4], uint64_t b, int scale_d) {
  SQ_WGMMA_RS("m64n96k8.f32.tf32.tf32", SQ_WG_R48, SQ_WG_D48, "%48, %49, %50, %51", "%52", "%53", "");
}
template <>
__device__ __forceinline__ void wgmma_tf32<128>(float (&d)[64], const uint32_t (&a)[4], uint64_t b, int scale_d) {
  SQ_WGMMA_RS("m64n128k8.f32.tf32.tf32", SQ_WG_R64, SQ_WG_D64, "%64, %65, %66, %67", "%68", "%69", "");
}
template <>
__device__ __forceinline__ void wgmma_bf16<64>(float (&d)[32], const uint32_t (&a)[4], uint64_t b, int scale_d) {
  SQ_WGMMA_RS("m64n64k16.f32.bf16.bf16", SQ_WG_R32, SQ_WG_D32, "%32, %33, %34, %35", "%36", "%37", ", 0");
}
template <>
__device__ __forceinline__ void wgmma_bf16<96>(float (&d)[48], const uint32_t (&a)[4], uint64_t b, int scale_d) {
  SQ_WGMMA_RS("m64n96k16.f32.bf16.bf16", SQ_WG_R48, SQ_WG_D48, "%48, %49, %50, %51", "%52", "%53", ", 0");
}
template <>
__device__ __forceinline__ void wgmma_bf16<128>(float (&d)[64], const uint32_t (&a)[4], uint64_t b, int scale_d) {
  SQ_WGMMA_RS("m64n128k16.f32.bf16.bf16", SQ_WG_R64, SQ_WG_D64, "%64, %65, %66, %67", "%68", "%69", ", 0");
}
#undef SQ_WGMMA_RS
#undef SQ_WG_R64
#undef SQ_WG_R48
#undef SQ_WG_R32
#undef SQ_WG_D64
#undef SQ_WG_D48
#undef SQ_WG_D32
#undef SQ_WG_F8
#undef SQ_WGMMA_ASM
#endif  // __CUDACC__

// The sequence every wgmma kernel here runs a step (or a group of taps): S wgmmas on the
// accumulators d, A's registers a[s] and B's descriptors desc[s], all made before the call
// (ptxas serialises wgmmas whose input registers are written inside the group, its C7513): the
// fence, the S products in one group, the commit. The thread then waits for the group
// (wgmma_retire) before it writes a, d or B's stage again. (Defined for the emulator too, from
// tests/simt_host.h's primitives.)
template <bool kBf16, int N, int S>
__device__ __forceinline__ void wgmma_issue(float (&d)[N / 2], const uint32_t (&a)[S][4], const uint64_t (&desc)[S]) {
  wgmma_fence_operands(d);
  wgmma_fence();
  SQ_UNROLL
  for (int s = 0; s < S; ++s) {
    if constexpr (kBf16)
      wgmma_bf16<N>(d, a[s], desc[s], 1);
    else
      wgmma_tf32<N>(d, a[s], desc[s], 1);
  }
  wgmma_commit();
}
template <int R>
__device__ __forceinline__ void wgmma_retire(float (&d)[R]) {
  wgmma_wait<0>();
  wgmma_fence_operands(d);
}

}  // namespace cuda
}  // namespace sq
