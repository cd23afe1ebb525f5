// Element-wise kernels: ReLU backward, bypass add, scaling, the deterministic sum of squares,
// and the fused SGD step.
#include "kernels/cuda/common.cuh"

namespace sq {
namespace cuda {

namespace {

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
  double acc = 0;
  SQ_GRID_STRIDE(i, n) acc += double(x[i]) * double(x[i]);
  const double total = block_sum(acc, sh);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

__global__ void sum_partials(const double* partial, int m, double* out) {
  __shared__ double sh[kThreads];
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

}  // namespace

void relu_backward(const float* dy, const float* y, float* dz, size_t n, cudaStream_t s) {
  if (n == 0) return;
  relu_backward_kernel<<<blocks_for(n), kThreads, 0, s>>>(dy, y, dz, n);
  SQ_CUDA_LAUNCH("relu_backward");
}

namespace {
__global__ void swap_outer_kernel(const float* src, int A, int B, size_t inner, float* dst,
                                  bool accumulate) {
  const size_t total = size_t(A) * B * inner;
  SQ_GRID_STRIDE(i, total) {  // i runs over dst (b, a, j): the writes are coalesced
    const size_t j = i % inner, ba = i / inner;
    const size_t a = ba % A, b = ba / A;
    const float v = src[(a * B + b) * inner + j];
    dst[i] = accumulate ? dst[i] + v : v;
  }
}
}  // namespace

void swap_outer(const float* src, int A, int B, size_t inner, float* dst, bool accumulate,
                cudaStream_t s) {
  const size_t total = size_t(A) * B * inner;
  if (total == 0) return;
  swap_outer_kernel<<<blocks_for(total), kThreads, 0, s>>>(src, A, B, inner, dst, accumulate);
  SQ_CUDA_LAUNCH("swap_outer");
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
