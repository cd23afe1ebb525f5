// Deep Compression's retraining on the device (core/compress.h's MaskConstraint and
// QuantizedConstraint): the launches of compress_kernels.cuh. Each centroid's gradient is summed
// in a fixed order (one block per centroid, a fixed tree), so a run gives the same bits every time.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/compress_kernels.cuh"

namespace sq {
namespace cuda {

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
