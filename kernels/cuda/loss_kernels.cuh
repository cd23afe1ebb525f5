// The softmax cross-entropy kernels (launched by kernels/cuda/loss.cu). Kernel source only: the
// CPU tests run it under tests/simt_host.h.
#pragma once
#include <cmath>
#include <cstdint>

#include "kernels/cuda/kernel_util.cuh"

namespace sq {
namespace cuda {
namespace {  // one copy per translation unit (the .cu file; the CPU tests)

constexpr int kLossThreads = 128;

__global__ void xent_kernel(int K, const float* logits, const int32_t* labels, float grad_scale,
                            float* dlogits, double* per_sample) {
  const int n = blockIdx.x;
  const float* z = logits + size_t(n) * K;
  __shared__ float sm[kLossThreads];
  __shared__ int sa[kLossThreads];
  __shared__ double sd[kLossThreads];
  SQ_FRESH_SHARED(sm);
  SQ_FRESH_SHARED(sa);
  SQ_FRESH_SHARED(sd);
  // First maximum: per thread over its strided elements, then a tree keeping the lower index.
  float m = -INFINITY;
  int arg = K;
  for (int k = threadIdx.x; k < K; k += blockDim.x)
    if (z[k] > m || arg == K) m = z[k], arg = k;
  sm[threadIdx.x] = m;
  sa[threadIdx.x] = arg;
  __syncthreads();
  for (int w = kLossThreads / 2; w > 0; w /= 2) {
    if (int(threadIdx.x) < w) {
      const float mo = sm[threadIdx.x + w];
      const int ao = sa[threadIdx.x + w];
      if (ao < K && (sa[threadIdx.x] == K || mo > sm[threadIdx.x] ||
                     (mo == sm[threadIdx.x] && ao < sa[threadIdx.x]))) {
        sm[threadIdx.x] = mo;
        sa[threadIdx.x] = ao;
      }
    }
    __syncthreads();
  }
  const float mx = sm[0];
  const int amax = sa[0];
  __syncthreads();
  double acc = 0;
  for (int k = threadIdx.x; k < K; k += blockDim.x) acc += exp(double(z[k]) - double(mx));
  const double sum = block_sum(acc, sd);
  const int y = labels[n];
  if (threadIdx.x == 0) {
    per_sample[2 * size_t(n)] = log(sum) - (double(z[y]) - double(mx));
    per_sample[2 * size_t(n) + 1] = amax == y ? 1.0 : 0.0;
  }
  if (dlogits) {
    float* d = dlogits + size_t(n) * K;
    const double inv = 1.0 / sum;
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
      const double prob = exp(double(z[k]) - double(mx)) * inv;
      d[k] = float((prob - (k == y ? 1.0 : 0.0)) * double(grad_scale));
    }
  }
}

// The per-sample (loss, hit) pairs summed in sample order by one block: its threads stage a chunk
// of pairs in shared memory with whole-line loads, then thread 0 adds them in order. (One thread
// reading them from global memory waited a load's latency every few samples.)
constexpr int kSumChunk = 512;  // doubles: 256 samples a chunk
__global__ void xent_sum_kernel(int N, const double* per_sample, double* result) {
  __shared__ double chunk[kSumChunk];
  SQ_FRESH_SHARED(chunk);
  double loss = 0, hits = 0;
  for (size_t s0 = 0; s0 < 2 * size_t(N); s0 += kSumChunk) {
    const int m = int(2 * size_t(N) - s0 < size_t(kSumChunk) ? 2 * size_t(N) - s0 : size_t(kSumChunk));
    for (int i = int(threadIdx.x); i < m; i += int(blockDim.x)) chunk[i] = per_sample[s0 + size_t(i)];
    __syncthreads();
    if (threadIdx.x == 0)
      for (int i = 0; i < m; i += 2) loss += chunk[i], hits += chunk[i + 1];
    __syncthreads();  // the chunk is staged again
  }
  if (threadIdx.x == 0) result[0] = loss, result[1] = hits;
}

}  // namespace
}  // namespace cuda
}  // namespace sq
