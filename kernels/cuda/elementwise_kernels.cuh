// The element-wise kernels (launched by kernels/cuda/elementwise.cu). Kernel source only: the CPU
// tests run it under tests/simt_host.h.
#pragma once
#include <cstddef>
#include <cstdint>

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

// The batch's bytes (C, N, H, W) to the model's input through the normalisation table (core/data.h,
// normalization_table): out[i] = table[(i / per_channel) * 256 + in[i]], per_channel = N H W
// elements a channel; the floats of the host's assemble_batch, bit for bit. Fewer than 2^31
// elements (elementwise.cu checks).
__global__ void bytes_to_input_kernel(const uint8_t* in, unsigned per_channel, unsigned total, const float* table,
                                      float* out) {
  SQ_GRID_STRIDE(i, total) out[i] = table[unsigned(i) / per_channel * 256u + in[i]];
}
// Four bytes a thread, where per_channel is a multiple of 4 (a quad never straddles two
// channels): one 4-byte load, one 16-byte store. Byte e of a quad is its (8e)-th to (8e+7)-th
// bits (little-endian, as the host and the GPU store it).
__global__ void bytes_to_input4_kernel(const uint32_t* in, unsigned per_channel, unsigned quads, const float* table,
                                       float4* out) {
  SQ_GRID_STRIDE(q, quads) {
    const uint32_t b = in[q];
    const float* t = table + unsigned(q) * 4u / per_channel * 256u;
    float4 v;
    v.x = t[b & 255u], v.y = t[(b >> 8) & 255u], v.z = t[(b >> 16) & 255u], v.w = t[b >> 24];
    out[q] = v;
  }
}

}  // namespace
}  // namespace cuda
}  // namespace sq
