// Deep Compression's retraining on the device (core/compress.h's MaskConstraint and
// QuantizedConstraint): the mask over the flat buffers, and the trained-quantization step, with
// each centroid's gradient summed in a fixed order (one block per centroid, a fixed tree), so a
// run gives the same bits every time.
#include "kernels/cuda/common.cuh"

namespace sq {
namespace cuda {

namespace {

__global__ void apply_mask_kernel(float* x, const uint8_t* mask, size_t n) {
  SQ_GRID_STRIDE(i, n) if (!mask[i]) x[i] = 0.0f;
}

// Block g: the centroid g's members members[start[g] .. start[g+1]), their gradients summed in
// double, rounded to float (as the CPU's centroid_gradients), then SGD with momentum in double.
__global__ void centroid_sgd_kernel(const int32_t* start, const int32_t* members, const float* grads,
                                    float* codebook, double* velocity, double lr, double momentum) {
  __shared__ double sh[kThreads];
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

__global__ void write_shared_weights_kernel(size_t n, const int32_t* centroid_of, const float* codebook,
                                            float* params, float* momentum) {
  SQ_GRID_STRIDE(i, n) {
    const int32_t c = centroid_of[i];
    if (c == kNotShared) continue;
    params[i] = c >= 0 ? codebook[c] : 0.0f;
    momentum[i] = 0.0f;
  }
}

}  // namespace

void apply_mask(float* x, const uint8_t* mask, size_t n, cudaStream_t s) {
  if (n == 0) return;
  apply_mask_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, mask, n);
  SQ_CUDA_LAUNCH("apply_mask");
}

void centroid_sgd(int centroids, const int32_t* start, const int32_t* members, const float* grads,
                  float* codebook, double* velocity, double lr, double momentum, cudaStream_t s) {
  if (centroids == 0) return;
  centroid_sgd_kernel<<<unsigned(centroids), kThreads, 0, s>>>(start, members, grads, codebook, velocity, lr,
                                                               momentum);
  SQ_CUDA_LAUNCH("centroid_sgd");
}

void write_shared_weights(size_t n, const int32_t* centroid_of, const float* codebook, float* params,
                          float* momentum, cudaStream_t s) {
  if (n == 0) return;
  write_shared_weights_kernel<<<blocks_for(n), kThreads, 0, s>>>(n, centroid_of, codebook, params, momentum);
  SQ_CUDA_LAUNCH("write_shared_weights");
}

}  // namespace cuda
}  // namespace sq
