// Hopper's warpgroup MMA on the device: whether this build's code for the GPU in use has it
// (sm_90a), and the probe that checks wgmma.cuh's operand layouts there (wgmma_probe.cuh).
#include <type_traits>

#include "core/error.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/wgmma_probe.cuh"

namespace sq {
namespace cuda {

namespace {
// 1 where the code the driver loaded for this GPU was built for sm_90a (wgmma), else 0.
__global__ void wgmma_feature_kernel(int* out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  *out = 1;
#else
  *out = 0;
#endif
}

template <bool kBf16, int kN>
void launch_probe(const float* A, const float* B, float* D, int layout, int groups, cudaStream_t s) {
  const size_t smem = size_t(wgmma_probe_k(kBf16)) * kN * (kBf16 ? 2 : 4);
  wgmma_probe_kernel<kBf16, kN><<<1, 128 * groups, smem, s>>>(A, B, D, layout);
  SQ_CUDA_LAUNCH("wgmma_probe_kernel");
}
}  // namespace

bool wgmma_available() {
  static const bool available = [] {
    int* flag = nullptr;
    SQ_CUDA(cudaMalloc(&flag, sizeof(int)));
    wgmma_feature_kernel<<<1, 1>>>(flag);
    SQ_CUDA_LAUNCH("wgmma_feature_kernel");
    int host = 0;
    SQ_CUDA(cudaMemcpy(&host, flag, sizeof(int), cudaMemcpyDeviceToHost));
    SQ_CUDA(cudaFree(flag));
    return host == 1;
  }();
  return available;
}

int wgmma_probe_depth(bool bf16) { return wgmma_probe_k(bf16); }

void wgmma_probe(bool bf16, int n, int layout, int groups, const float* A, const float* B, float* D,
                 cudaStream_t s) {
  SQ_ASSERT(wgmma_available(), "wgmma_probe on a GPU without wgmma code in this build");
  SQ_ASSERT((n == 64 || n == 96 || n == 128) && (layout == 0 || layout == 1) && (groups == 1 || groups == 2),
            "wgmma_probe: N 64, 96 or 128, layout 0 or 1, 1 or 2 warpgroups");
  auto launch = [&](auto kb) {
    constexpr bool kBf16 = decltype(kb)::value;
    if (n == 64) return launch_probe<kBf16, 64>(A, B, D, layout, groups, s);
    if (n == 96) return launch_probe<kBf16, 96>(A, B, D, layout, groups, s);
    launch_probe<kBf16, 128>(A, B, D, layout, groups, s);
  };
  bf16 ? launch(std::true_type{}) : launch(std::false_type{});
}

}  // namespace cuda
}  // namespace sq
