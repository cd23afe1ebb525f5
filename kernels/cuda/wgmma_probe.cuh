// The wgmma probe: one block multiplies D (64 G x N) = A (64 G x K) * B (K x N) with wgmma, G
// warpgroups each taking 64 rows, and nothing else. It checks the project's reading of wgmma's
// operand layouts (wgmma.cuh), where a convolution kernel would only show a wrong product:
// tests/test_kernels_on_cpu.cpp runs it under the emulator (tests/simt_host.h), and on an sm_90 GPU
// tests/test_cuda_ops.cpp runs the same source on the device (wgmma.cu), each against the double
// product. If the device disagrees, the emulator's wgmma and this header share the misreading.
//
// A and B row-major fp32 in global memory, already TF32 or BF16 values (so that how the tensor
// cores treat the bits they drop does not enter). B goes into shared memory K-major without swizzle:
// TF32 by 4-byte cp.async (so the proxy fence after the copies' wait is exercised), BF16 as packed
// pairs by plain stores. Its core matrices are placed by `layout`: 0 puts a row of them along k
// side by side (lbo 128 bytes, sbo K/T core matrices), 1 a column of them along n (sbo 128, lbo N/8
// core matrices), so that lbo and sbo both take two values. Every k-step's A registers are loaded
// first, then one fence and the wgmmas, two to a committed group, the first with scale-d 0 on
// accumulators that hold NaN. K = wgmma_probe_k; dynamic shared memory: K * N * size bytes.
#pragma once
#include <cstdint>

#include "kernels/cuda/kernel_util.cuh"
#include "kernels/cuda/mma_device.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace sq {
namespace cuda {
namespace {

// K: four k-steps of 8 (TF32) or 16 (BF16).
__host__ __device__ constexpr int wgmma_probe_k(bool bf16) { return bf16 ? 64 : 32; }

template <bool kBf16, int kN>
__global__ void __launch_bounds__(256) wgmma_probe_kernel(const float* A, const float* B, float* D,
                                                          int layout) {
  SQ_DYNAMIC_SHARED(float, sm);
  constexpr int size = kBf16 ? 2 : 4, T = 16 / size, KS = kBf16 ? 16 : 8, K = wgmma_probe_k(kBf16);
  const int threads = int(blockDim.x), tid = int(threadIdx.x);
  const uint32_t lbo = layout == 0 ? 128u : uint32_t(kN / 8) * 128u;
  const uint32_t sbo = layout == 0 ? uint32_t(K / T) * 128u : 128u;
  char* base = reinterpret_cast<char*>(sm);
  auto at = [&](int k, int n) {  // B(k, n)'s byte in the stage
    return base + (n % 8) * 16 + (n / 8) * sbo + (k % T) * size + (k / T) * lbo;
  };
  if (kBf16) {
    for (int i = tid; i < K / 2 * kN; i += threads) {
      const int k = 2 * (i / kN), n = i % kN;
      *reinterpret_cast<uint32_t*>(at(k, n)) = pack_bf16x2(B[k * kN + n], B[(k + 1) * kN + n]);
    }
  } else {
    for (int i = tid; i < K * kN; i += threads) {
      const int k = i / kN, n = i % kN;
      cp_async4(reinterpret_cast<float*>(at(k, n)), B + i, true);
    }
    cp_async_commit();
    cp_async_wait<0>();
  }
  fence_proxy_async();
  __syncthreads();

  const int w = tid % 128 / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int r0 = 64 * (tid / 128) + 16 * w + g;  // the thread's first row of A and D
  uint32_t a[K / KS][4];
  SQ_UNROLL
  for (int s = 0; s < K / KS; ++s) {
    const float* row = A + size_t(r0) * K + s * KS;
    if (kBf16) {
      for (int r = 0; r < 4; ++r) {
        const float* p = row + (r % 2) * 8 * K + (r / 2) * 8 + 2 * t;
        a[s][r] = pack_bf16x2(p[0], p[1]);
      }
    } else {
      for (int r = 0; r < 4; ++r) a[s][r] = tf32_operand(row[(r % 2) * 8 * K + (r / 2) * 4 + t]);
    }
  }
  float d[kN / 2];
  SQ_UNROLL
  for (int i = 0; i < kN / 2; ++i) d[i] = __uint_as_float(0x7fc00000u);  // NaN: scale-d 0 ignores it
  wgmma_fence();
  SQ_UNROLL
  for (int s = 0; s < K / KS; ++s) {
    const uint64_t desc = wgmma_desc(smem_address(at(s * KS, 0)), lbo, sbo);
    if (kBf16)
      wgmma_bf16<kN>(d, a[s], desc, s > 0);
    else
      wgmma_tf32<kN>(d, a[s], desc, s > 0);
    if (s % 2 == 1 || s == K / KS - 1) wgmma_commit();
  }
  wgmma_wait<0>();
  wgmma_fence_operands(d);
  SQ_UNROLL
  for (int i = 0; i < kN / 8; ++i)
    for (int e = 0; e < 4; ++e) D[size_t(r0 + 8 * (e / 2)) * kN + 8 * i + 2 * t + e % 2] = d[4 * i + e];
}

}  // namespace
}  // namespace cuda
}  // namespace sq
