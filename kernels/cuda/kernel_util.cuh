// Device helpers of the kernels that need no CUDA runtime header, so kernel sources built on them
// also compile for the CPU under tests/simt_host.h (the tests that run kernels without a GPU).
#pragma once
#include <cstddef>

// A loop the GPU compiler unrolls (its arrays then stay in registers); nothing on the CPU.
#ifdef __CUDACC__
#define SQ_UNROLL _Pragma("unroll")
#else
#define SQ_UNROLL
#endif

// After each static __shared__ declaration of a kernel: nothing on the GPU. Under
// tests/simt_host.h the variable is filled with 0xFF bytes (NaN floats, -1 integers) at every
// block's start, as the device's shared memory holds nothing of a previous block, so a read
// before the block has written shows in the result rather than a previous block's value.
#ifndef SQ_FRESH_SHARED
#define SQ_FRESH_SHARED(var)
#endif

namespace sq {
namespace cuda {

constexpr int kThreads = 256;

#define SQ_GRID_STRIDE(i, n)                                                            \
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n);               \
       i += size_t(blockDim.x) * gridDim.x)

// A warp a plane: cn over [0, planes) by the grid's warps, lane the thread's place in its warp
// (blockDim.x a multiple of 32).
#define SQ_WARP_PLANES(cn, lane, planes)                                                           \
  for (unsigned lane = threadIdx.x % 32, cn = (blockIdx.x * blockDim.x + threadIdx.x) / 32;       \
       cn < (planes); cn += gridDim.x * (blockDim.x / 32))

// The sum of every thread's v over the block, in a fixed tree order (deterministic), returned to
// every thread. sh: blockDim.x elements of shared memory; blockDim.x a power of two.
template <class T>
__device__ T block_sum(T v, T* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (unsigned w = blockDim.x / 2; w > 0; w /= 2) {
    if (threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
    __syncthreads();
  }
  const T total = sh[0];
  __syncthreads();  // sh may be reused at once
  return total;
}

}  // namespace cuda
}  // namespace sq
