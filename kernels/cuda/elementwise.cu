// Element-wise kernels: ReLU backward, bypass add, scaling, the batch's bytes normalised, the
// deterministic sum of squares, and the fused SGD step.
#include "core/error.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/elementwise_kernels.cuh"

namespace sq {
namespace cuda {

void relu_backward(const float* dy, const float* y, float* dz, size_t n, cudaStream_t s) {
  if (n == 0) return;
  relu_backward_kernel<<<blocks_for(n), kThreads, 0, s>>>(dy, y, dz, n);
  SQ_CUDA_LAUNCH("relu_backward");
}

void swap_outer(const float* src, int A, int B, size_t inner, float* dst, bool accumulate,
                cudaStream_t s) {
  const size_t total = size_t(A) * B * inner;
  if (total == 0) return;
  SQ_ASSERT(total < (size_t(1) << 31), "swap_outer of 2^31 or more elements: ", A, "x", B, "x", inner);
  swap_outer_kernel<<<blocks_for(total), kThreads, 0, s>>>(src, A, B, inner, dst, accumulate);
  SQ_CUDA_LAUNCH("swap_outer");
}

void bytes_to_input(const uint8_t* in, size_t per_channel, int C, const float* table, float* out, cudaStream_t s) {
  const size_t total = per_channel * size_t(C);
  if (total == 0) return;
  SQ_ASSERT(total < (size_t(1) << 31), "bytes_to_input of 2^31 or more elements: ", C, "x", per_channel);
  if (per_channel % 4 == 0 && reinterpret_cast<uintptr_t>(in) % 4 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0)
    bytes_to_input4_kernel<<<blocks_for(total / 4), kThreads, 0, s>>>(
        reinterpret_cast<const uint32_t*>(in), unsigned(per_channel), unsigned(total / 4), table,
        reinterpret_cast<float4*>(out));
  else
    bytes_to_input_kernel<<<blocks_for(total), kThreads, 0, s>>>(in, unsigned(per_channel), unsigned(total), table, out);
  SQ_CUDA_LAUNCH("bytes_to_input");
}

void add_inplace(float* y, const float* x, size_t n, cudaStream_t s) {
  if (n == 0) return;
  add_kernel<<<blocks_for(n), kThreads, 0, s>>>(y, x, n);
  SQ_CUDA_LAUNCH("add_inplace");
}

void scale_inplace(float* x, float a, size_t n, cudaStream_t s) {
  if (n == 0) return;
  scale_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, a, n);
  SQ_CUDA_LAUNCH("scale_inplace");
}

size_t sum_of_squares_workspace() { return kSumBlocks; }

void sum_of_squares(const float* x, size_t n, double* out, double* ws, cudaStream_t s) {
  sum_squares_partial<<<kSumBlocks, kThreads, 0, s>>>(x, n, ws);
  SQ_CUDA_LAUNCH("sum_of_squares (partials)");
  sum_partials<<<1, kThreads, 0, s>>>(ws, kSumBlocks, out);
  SQ_CUDA_LAUNCH("sum_of_squares (total)");
}

void sgd_momentum_update(size_t n, float* param, const float* grad, float* velocity, float lr,
                         float momentum, float weight_decay, cudaStream_t s) {
  if (n == 0) return;
  sgd_kernel<<<blocks_for(n), kThreads, 0, s>>>(n, param, grad, velocity, lr, momentum,
                                                weight_decay);
  SQ_CUDA_LAUNCH("sgd_momentum_update");
}

}  // namespace cuda
}  // namespace sq
