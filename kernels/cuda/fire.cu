// The Fire module on the GPU, composed from the implicit-GEMM convolutions: the expands write
// their channel slices of the output directly (no concat pass), and the squeeze output's
// gradient is the expand 1x1's backward-data result plus the expand 3x3's, summed in place by the
// second product's epilogue, which also applies the squeeze ReLU's backward (no separate pass).
#include <algorithm>

#include "kernels/cuda/common.cuh"

namespace sq {
namespace cuda {

namespace {
size_t nhw(const FireGeom& g) { return size_t(g.N) * g.H * g.W; }
}  // namespace

size_t fire_workspace(const FireGeom& g) {
  // dz of the expands (E1 + E3 planes), ds of the squeeze (S planes), the conv scratch.
  size_t conv = conv_backward_workspace(g.squeeze());
  if (g.E1 > 0) conv = std::max(conv, conv_backward_workspace(g.expand1()));
  if (g.E3 > 0) conv = std::max(conv, conv_backward_workspace(g.expand3()));
  const size_t fwd = g.E3 > 0 ? conv_forward_workspace(g.expand3()) : 0;
  return std::max(size_t(g.E1 + g.E3 + g.S) * nhw(g) + conv, fwd);
}

void fire_forward(const FireGeom& g, const float* x, FireParams<const float> p, float* s,
                  float* y, cudaStream_t st, float* ws) {
  conv_forward(g.squeeze(), x, p.ws, p.bs, s, true, st);
  if (g.E1 > 0) conv_forward(g.expand1(), s, p.w1, p.b1, y, true, st);
  if (g.E3 > 0) conv_forward(g.expand3(), s, p.w3, p.b3, y + size_t(g.E1) * nhw(g), true, st, ws);
}

void fire_backward(const FireGeom& g, const float* x, FireParams<const float> p, const float* s,
                   const float* y, const float* dy, FireParams<float> grad, float* dx,
                   bool accumulate, float* ws, cudaStream_t st, bool dy_relu_done, bool relu_x) {
  const size_t plane = nhw(g);
  float* dzw = ws;                                    // (E1 + E3, N, H, W)
  float* ds = dzw + size_t(g.E1 + g.E3) * plane;      // (S, N, H, W)
  float* conv_ws = ds + size_t(g.S) * plane;
  if (!dy_relu_done) relu_backward(dy, y, dzw, size_t(g.E1 + g.E3) * plane, st);
  const float* dz = dy_relu_done ? dy : dzw;
  // ds: the expand 1x1's input gradient, then the expand 3x3's added in its epilogue, which also
  // applies the squeeze ReLU's backward (s > 0); the expand 1x1's does when it is alone.
  if (g.E1 > 0)
    conv_backward(g.expand1(), s, p.w1, dz, grad.w1, grad.b1, ds, false, conv_ws, st, g.E3 == 0);
  if (g.E3 > 0)
    conv_backward(g.expand3(), s, p.w3, dz + size_t(g.E1) * plane, grad.w3, grad.b3, ds, g.E1 > 0,
                  conv_ws, st, true);
  conv_backward(g.squeeze(), x, p.ws, ds, grad.ws, grad.bs, dx, accumulate, conv_ws, st, relu_x);
}

}  // namespace cuda
}  // namespace sq
