// The kernels of Deep Compression's retraining on the device (launched by kernels/cuda/
// compress.cu; the lists they read are built by core/compress.h's centroid_lists()). Kernel source
// only: tests/test_kernels_on_cpu.cpp runs it on the CPU under tests/simt_host.h.
#pragma once
#include <cstdint>

#include "kernels/cuda/kernel_util.cuh"

namespace sq {
namespace cuda {
namespace {  // one copy per translation unit (compress.cu; the CPU test)

__global__ void apply_mask_kernel(float* x, const uint8_t* mask, size_t n) {
  SQ_GRID_STRIDE(i, n) if (!mask[i]) x[i] = 0.0f;
}

// Block g: the centroid g's members members[start[g] .. start[g+1]), their gradients summed in
// double in a fixed order (thread strides, then block_sum's tree), rounded to float as the CPU's
// centroid_gradients; then SGD with momentum in double. Needs kThreads threads per block.
__global__ void centroid_sgd_kernel(const int32_t* start, const int32_t* members, const float* grads,
                                    float* codebook, double* velocity, double lr, double momentum) {
  __shared__ double sh[kThreads];
  SQ_FRESH_SHARED(sh);
  const int g = blockIdx.x;
  double acc = 0;
  for (int j = start[g] + int(threadIdx.x); j < start[g + 1]; j += blockDim.x) acc += double(grads[members[j]]);
  const double sum = block_sum(acc, sh);
  if (threadIdx.x == 0) {
    const double v = momentum * velocity[g] + double(float(sum));
    velocity[g] = v;
    codebook[g] = float(double(codebook[g]) - lr * v);
  }
}

// centroid_of[i]: a centroid (params[i] = codebook[c]), -1 (a pruned weight: 0), or below -1 (not
// a shared weight, left alone); the momentum of every shared or pruned weight is zeroed.
__global__ void write_shared_weights_kernel(size_t n, const int32_t* centroid_of, const float* codebook,
                                            float* params, float* momentum) {
  SQ_GRID_STRIDE(i, n) {
    const int32_t c = centroid_of[i];
    if (c < -1) continue;
    params[i] = c >= 0 ? codebook[c] : 0.0f;
    momentum[i] = 0.0f;
  }
}

}  // namespace
}  // namespace cuda
}  // namespace sq
