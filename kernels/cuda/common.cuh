// Shared by the .cu files: launch geometry and the kernels' error checks (the runtime-free
// helpers are in kernel_util.cuh).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/kernel_util.cuh"

namespace sq {
namespace cuda {

// Blocks for a grid-stride loop over n elements (capped: the loop covers the rest).
inline unsigned blocks_for(size_t n, int threads = kThreads) {
  const size_t b = (n + size_t(threads) - 1) / size_t(threads);
  return unsigned(b < 65535 * 8 ? (b == 0 ? 1 : b) : 65535 * 8);
}

}  // namespace cuda
}  // namespace sq
