// The element-wise kernels (launched by kernels/cuda/elementwise.cu). Kernel source only: the CPU
// tests run it under tests/simt_host.h.
#pragma once
#include <cstddef>

#include "kernels/cuda/kernel_util.cuh"

namespace sq {
namespace cuda {
namespace {  // one copy per translation unit (the .cu file; the CPU tests)

__global__ void relu_backward_kernel(const float* dy, const float* y, float* dz, size_t n) {
  SQ_GRID_STRIDE(i, n) dz[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

__global__ void add_kernel(float* y, const float* x, size_t n) {
  SQ_GRID_STRIDE(i, n) y[i] += x[i];
}

__global__ void scale_kernel(float* x, float a, size_t n) {
  SQ_GRID_STRIDE(i, n) x[i] *= a;
}

constexpr int kSumBlocks = 256;

// Block b sums elements b, b + B*T, ... in a fixed order per thread, then a fixed tree.
__global__ void sum_squares_partial(const float* x, size_t n, double* partial) {
  __shared__ double sh[kThreads];
  SQ_FRESH_SHARED(sh);
  double acc = 0;
  SQ_GRID_STRIDE(i, n) acc += double(x[i]) * double(x[i]);
  const double total = block_sum(acc, sh);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

__global__ void sum_partials(const double* partial, int m, double* out) {
  __shared__ double sh[kThreads];
  SQ_FRESH_SHARED(sh);
  double acc = 0;
  for (int i = threadIdx.x; i < m; i += blockDim.x) acc += partial[i];
  const double total = block_sum(acc, sh);
  if (threadIdx.x == 0) *out = total;
}

__global__ void sgd_kernel(size_t n, float* param, const float* grad, float* velocity, float lr,
                           float momentum, float weight_decay) {
  SQ_GRID_STRIDE(i, n) {
    // The CPU op's arithmetic, unfused (no FMA contraction), so both give the same bits.
    const float g = __fadd_rn(grad[i], __fmul_rn(weight_decay, param[i]));
    const float v = __fadd_rn(__fmul_rn(momentum, velocity[i]), g);
    velocity[i] = v;
    param[i] = __fsub_rn(param[i], __fmul_rn(lr, v));
  }
}

// Fewer than 2^31 elements (elementwise.cu checks): the indices by 32-bit divisions (four 64-bit
// ones an element made it instruction-bound; it stages cuDNN's NCHW copies, inside the baseline's
// timings).
__global__ void swap_outer_kernel(const float* src, int A, int B, size_t inner, float* dst,
                                  bool accumulate) {
  const size_t total = size_t(A) * B * inner;
  const unsigned in = unsigned(inner);
  SQ_GRID_STRIDE(i, total) {  // i runs over dst (b, a, j): the writes are coalesced
    const unsigned ba = unsigned(i) / in, j = unsigned(i) - ba * in;
    const unsigned b = ba / unsigned(A), a = ba - b * unsigned(A);
    const float v = src[(size_t(a) * B + b) * inner + j];
    dst[i] = accumulate ? dst[i] + v : v;
  }
}

}  // namespace
}  // namespace cuda
}  // namespace sq
