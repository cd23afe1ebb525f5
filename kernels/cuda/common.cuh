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

}  // namespace cuda
}  // namespace sq
