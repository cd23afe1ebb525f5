// Inverted dropout with the CPU op's counter-based masks: element e = c*HW + hw of sample n is
// kept iff uniform01(hash_combine(sample_keys[n], e)) >= p.
#include "core/error.h"
#include "core/rng.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/dropout_kernels.cuh"

namespace sq {
namespace cuda {

namespace {

void apply(int N, int C, int HW, float p, const uint64_t* keys, const float* in, float* out,
           cudaStream_t s, const char* what, const float* relu_x = nullptr) {
  SQ_ASSERT(p >= 0.0f && p < 1.0f, "dropout p must be in [0, 1), got ", p);
  const size_t total = size_t(C) * N * HW;
  if (total == 0) return;
  if (p == 0.0f) {
    if (relu_x)
      relu_backward(in, relu_x, out, total, s);
    else if (in != out)
      SQ_CUDA(cudaMemcpyAsync(out, in, total * sizeof(float), cudaMemcpyDeviceToDevice, s));
    return;
  }
  SQ_ASSERT(keys != nullptr, "dropout: sample keys required");
  SQ_ASSERT(total < (size_t(1) << 31), "dropout over 2^31 or more elements: ", N, "x", C, "x", HW);
  const float scale = 1.0f / (1.0f - p);
  if (HW >= 32)  // a warp a plane, N * C warps
    dropout_plane_kernel<<<blocks_for(size_t(N) * C * 32), kThreads, 0, s>>>(N, C, HW, p, scale, keys, in, out, relu_x);
  else
    dropout_kernel<<<blocks_for(total), kThreads, 0, s>>>(N, C, HW, p, scale, keys, in, out, relu_x);
  SQ_CUDA_LAUNCH(what);
}

}  // namespace

void dropout_forward(int N, int C, int HW, float p, const uint64_t* sample_keys, const float* x,
                     float* y, cudaStream_t s) {
  apply(N, C, HW, p, sample_keys, x, y, s, "dropout_forward");
}

void dropout_backward(int N, int C, int HW, float p, const uint64_t* sample_keys,
                      const float* dy, float* dx, cudaStream_t s, const float* relu_x) {
  apply(N, C, HW, p, sample_keys, dy, dx, s, "dropout_backward", relu_x);
}

void dropout_backward_relu_from_output(size_t n, float p, const float* y, const float* dy, float* dx,
                                       cudaStream_t s) {
  SQ_ASSERT(p >= 0.0f && p < 1.0f, "dropout p must be in [0, 1), got ", p);
  if (n == 0) return;
  // (p = 0: y = x, and dx = x > 0 ? dy * 1 : 0 is relu_backward's dx bit for bit.)
  dropout_backward_from_output_kernel<<<blocks_for(n), kThreads, 0, s>>>(n, 1.0f / (1.0f - p), y, dy, dx);
  SQ_CUDA_LAUNCH("dropout_backward (from the output)");
}

}  // namespace cuda
}  // namespace sq
