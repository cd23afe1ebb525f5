// The device side of the tensor-core kernels' primitives: asynchronous copies into shared memory,
// ldmatrix, the TF32 and BF16 operand conversions and mma.sync (igemm_mma.cuh, igemm_win.cuh,
// igemm_rows.cuh, wgmma_probe.cuh). tests/simt_host.h defines the same functions for the CPU, from
// the PTX ISA, so that the kernels built on them run under the emulator.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#include <cuda_bf16.h>
#endif

namespace sq {
namespace cuda {
namespace {

#ifdef __CUDACC__
#define SQ_DYNAMIC_SHARED(T, name) extern __shared__ __align__(16) T name[]

// A 4-byte asynchronous copy into shared memory; valid false: 4 zero bytes, src not read.
__device__ __forceinline__ void cp_async4(float* dst, const float* src, bool valid) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 4 : 0)
               : "memory");
}
// A 16-byte asynchronous copy of 4 floats, the first `valid` of them read, the rest zero-filled;
// dst and src 16-byte aligned.
__device__ __forceinline__ void cp_async16(float* dst, const float* src, int valid) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(4 * valid) : "memory");
}
// The 16-byte copy, all 4 floats or none: read false writes 16 zero bytes and reads nothing, the
// instruction then given `safe` (an address inside a tensor) rather than src, which may point
// outside every allocation: the PTX ISA says an ignored source is not read, not that its address
// goes untranslated. The zero-fill predicate form (ignore-src): where the byte count is a
// run-time value (cp_async16), ptxas also offsets the source by it, about 5 instructions a copy.
__device__ __forceinline__ void cp_async16_if(float* dst, const float* src, bool read, const float* safe) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile(
      "{\n.reg .pred p;\nsetp.eq.u32 p, %2, 0;\ncp.async.cg.shared.global [%0], [%1], 16, p;\n}\n" ::"r"(d),
      "l"(read ? src : safe), "r"(static_cast<unsigned>(read))
      : "memory");
}
// A 16-byte load of 4 floats from global memory (16-byte aligned), where a kernel needs them in
// registers (BF16's converted copies); the emulator checks it against the readable tensors.
__device__ __forceinline__ float4 load16(const float* src) { return *reinterpret_cast<const float4*>(src); }
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Four 8x8 matrices of 16-bit elements from shared memory (sm_75+): lanes 8j .. 8j + 7 give the
// addresses of matrix j's rows (16 bytes each, 16-byte aligned), and lane i receives in register j
// the 32-bit word i % 4 of matrix j's row i / 4. A TF32 A fragment is four such matrices of
// 32-bit words (MmaTf32::load_a).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const float* row) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
// Waits until at most N of this thread's committed groups are pending.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
// Two floats as bfloat16, lo in the low half (the lower k of a fragment register).
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
__device__ __forceinline__ uint32_t tf32_bits(float v) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(v));
  return r;
}
// A TF32 operand as the kernels pass it: fp32's own bits, of which mma reads the upper 19, so the
// 13 dropped bits round toward zero, as in the Hopper matrix products that take fp32 straight from
// shared memory. cvt.rna (tf32_bits) costs three instructions an element in the SASS (FSETP, IADD,
// LOP3), a chain in front of each mma: 72 of the 112 instructions of a 32x64 warp tile's 8-deep
// k-step (docs/KERNELS.md, "TF32 operands truncated"). 3xTF32's split keeps cvt.rna.
__device__ __forceinline__ uint32_t tf32_operand(float v) { return __float_as_uint(v); }
// d += a * b over a 16 x 8 x 16 (BF16) or 16 x 8 x 8 (TF32) tile, fp32 accumulation.
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void mma_tf32_1688(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

}  // namespace
}  // namespace cuda
}  // namespace sq
