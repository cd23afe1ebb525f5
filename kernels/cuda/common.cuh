// Shared by the .cu files: launch geometry and the kernels' error checks.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/cuda_ops.h"

namespace sq {
namespace cuda {

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n elements (capped: the loop covers the rest).
inline unsigned blocks_for(size_t n, int threads = kThreads) {
  const size_t b = (n + size_t(threads) - 1) / size_t(threads);
  return unsigned(b < 65535 * 8 ? (b == 0 ? 1 : b) : 65535 * 8);
}

#define SQ_GRID_STRIDE(i, n)                                                            \
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n);               \
       i += size_t(blockDim.x) * gridDim.x)

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
