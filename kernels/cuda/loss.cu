// Softmax cross-entropy: one block per sample (max, sum of exponentials in double, gradient),
// per-sample loss and hit into a workspace, then one block sums them in order (staged in shared
// memory a chunk at a time).
#include "core/error.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/loss_kernels.cuh"

namespace sq {
namespace cuda {

size_t softmax_xent_workspace(int N) { return 2 * size_t(N > 0 ? N : 1); }

void softmax_xent(int N, int K, const float* logits, const int32_t* labels, float grad_scale,
                  float* dlogits, double* result, double* ws, cudaStream_t s) {
  SQ_ASSERT(N >= 0 && K > 0, "softmax_xent: bad shape N=", N, " K=", K);
  if (N > 0) {
    xent_kernel<<<N, kLossThreads, 0, s>>>(K, logits, labels, grad_scale, dlogits, ws);
    SQ_CUDA_LAUNCH("softmax_xent");
  }
  xent_sum_kernel<<<1, kThreads, 0, s>>>(N, ws, result);
  SQ_CUDA_LAUNCH("softmax_xent (sum)");
}

}  // namespace cuda
}  // namespace sq
