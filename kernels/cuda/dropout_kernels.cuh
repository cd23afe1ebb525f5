// The dropout kernel (launched by kernels/cuda/dropout.cu). Kernel source only: the CPU tests run
// it under tests/simt_host.h.
#pragma once
#include <cstdint>

#include "core/rng.h"
#include "kernels/cuda/kernel_util.cuh"

namespace sq {
namespace cuda {
namespace {  // one copy per translation unit (the .cu file; the CPU tests)

// relu_x (the backward only, may be null): the layer input is a ReLU's output, and out also goes
// through that ReLU's backward, out = relu_x > 0 ? out : 0 (docs/KERNELS.md, "ReLU backwards").
// Fewer than 2^31 elements (dropout.cu checks): an element's (c, n, hw) by 32-bit divisions, where
// four 64-bit ones made the kernel instruction-bound (0.07 ms in run c for 0.02 of bytes).
// Element i, number e of its sample (key): in[i] scaled where the mask keeps it (and relu_x > 0).
__device__ inline void dropout_element(size_t i, uint64_t key, uint64_t e, float p, float scale, const float* in,
                                       float* out, const float* relu_x) {
  const bool keep = uniform01(hash_combine(key, e)) >= p;
  out[i] = keep && (!relu_x || relu_x[i] > 0.0f) ? __fmul_rn(in[i], scale) : 0.0f;
}
__global__ void dropout_kernel(int N, int C, int HW, float p, float scale, const uint64_t* keys,
                               const float* in, float* out, const float* relu_x = nullptr) {
  const size_t total = size_t(C) * N * HW;
  SQ_GRID_STRIDE(i, total) {
    const unsigned cn = unsigned(i) / unsigned(HW), hw = unsigned(i) - cn * unsigned(HW);
    const unsigned c = cn / unsigned(N), n = cn - c * unsigned(N);
    dropout_element(i, keys[n], uint64_t(c) * uint64_t(HW) + uint64_t(hw), p, scale, in, out, relu_x);
  }
}

// The same a warp a plane (c, n) for planes of at least 32 elements (13 x 13 at 224²): the plane's
// (c, n), its sample's key and its first element's index once a warp, where dropout_kernel divides
// twice an element; the hash, the same, stays. blockDim.x a multiple of 32.
__global__ void dropout_plane_kernel(int N, int C, int HW, float p, float scale, const uint64_t* keys,
                                     const float* in, float* out, const float* relu_x = nullptr) {
  SQ_WARP_PLANES(cn, lane, unsigned(C) * unsigned(N)) {
    const unsigned c = cn / unsigned(N), n = cn - c * unsigned(N);
    const uint64_t key = keys[n], e0 = uint64_t(c) * uint64_t(HW);
    const size_t base = size_t(cn) * unsigned(HW);
    for (unsigned hw = lane; hw < unsigned(HW); hw += 32)
      dropout_element(base + hw, key, e0 + hw, p, scale, in, out, relu_x);
  }
}

// The backward where the dropout's input x is a ReLU's output (x >= 0, or NaN), from the forward's
// output y instead of the masks: dx = y > 0 ? dy * scale : 0. y = x * scale > 0 exactly where the
// mask kept an element and x > 0 (scale >= 1, so no positive x rounds to 0; NaN > 0 is false on
// both sides), so this is bit for bit dropout_kernel's backward with relu_x = x, without its hash
// (two 64-bit mixes an element: run d timed that backward at 0.075 ms for 0.03 of bytes) and
// without the divisions of an element's (c, n, hw).
__global__ void dropout_backward_from_output_kernel(size_t n, float scale, const float* y, const float* dy,
                                                    float* dx) {
  SQ_GRID_STRIDE(i, n) { dx[i] = y[i] > 0.0f ? __fmul_rn(dy[i], scale) : 0.0f; }
}

}  // namespace
}  // namespace cuda
}  // namespace sq
