// The Fire module: squeeze 1x1 + ReLU, then expand 1x1 + ReLU and expand 3x3 (pad 1) + ReLU
// written straight into their channel slices of the concatenated output (channel-major: the
// slice of channels [E1, E1 + E3) of y is the contiguous block starting at y + E1*N*H*W).
#include <algorithm>

#include "core/error.h"
#include "kernels/ops.h"

namespace sq {

namespace {
// Backward workspace layout, in elements: [ ds: S*NHW | dz: (E1+E3)*NHW | conv scratch ].
size_t nhw(const FireGeom& g) { return size_t(g.N) * g.H * g.W; }
}  // namespace

size_t fire_workspace(const FireGeom& g) {
  const size_t conv_ws = std::max(conv_workspace(g.expand3()),
                                  std::max(conv_workspace(g.squeeze()), conv_workspace(g.expand1())));
  const size_t backward = size_t(g.S + g.E1 + g.E3) * nhw(g) + conv_ws;
  return std::max(conv_ws, backward);  // forward needs only the conv scratch
}

template <class T>
void fire_forward(const FireGeom& g, const T* x, FireParams<const T> p, T* s, T* y, T* ws) {
  SQ_ASSERT(g.S > 0 && g.E1 >= 0 && g.E3 >= 0 && g.E1 + g.E3 > 0, "bad fire geometry");
  conv_forward<T>(g.squeeze(), x, p.ws, p.bs, s, true, ws);
  // pct_3x3 = 0 or 1 leaves one expand branch empty (E1 = 0 or E3 = 0): skip it.
  if (g.E1 > 0) conv_forward<T>(g.expand1(), s, p.w1, p.b1, y, true, ws);
  if (g.E3 > 0) conv_forward<T>(g.expand3(), s, p.w3, p.b3, y + size_t(g.E1) * nhw(g), true, ws);
}

template <class T>
void fire_backward(const FireGeom& g, const T* x, FireParams<const T> p, const T* s,
                   const T* y, const T* dy, FireParams<T> grad, T* dx, bool accumulate, T* ws) {
  SQ_ASSERT(g.S > 0 && g.E1 >= 0 && g.E3 >= 0 && g.E1 + g.E3 > 0, "bad fire geometry");
  const size_t NHW = nhw(g);
  T* ds = ws;
  T* dz = ds + size_t(g.S) * NHW;  // ReLU-masked dy, both expand slices
  T* conv_ws = dz + size_t(g.E1 + g.E3) * NHW;

  relu_backward<T>(dy, y, dz, size_t(g.E1 + g.E3) * NHW);
  // Contract: the squeeze output's gradient is the sum of the two expand backward-data results
  // (s feeds both expand convolutions): expand1 WRITES ds, expand3 ADDS to it (or writes it
  // when there is no expand1 branch).
  if (g.E1 > 0)
    conv_backward<T>(g.expand1(), s, p.w1, dz, grad.w1, grad.b1, ds, /*accumulate=*/false,
                     conv_ws);
  if (g.E3 > 0)
    conv_backward<T>(g.expand3(), s, p.w3, dz + size_t(g.E1) * NHW, grad.w3, grad.b3, ds,
                     /*accumulate=*/g.E1 > 0, conv_ws);
  relu_backward<T>(ds, s, ds, size_t(g.S) * NHW);  // through the squeeze ReLU
  conv_backward<T>(g.squeeze(), x, p.ws, ds, grad.ws, grad.bs, dx, accumulate, conv_ws);
}

#define SQ_INSTANTIATE(T)                                                                      \
  template void fire_forward<T>(const FireGeom&, const T*, FireParams<const T>, T*, T*, T*);   \
  template void fire_backward<T>(const FireGeom&, const T*, FireParams<const T>, const T*,     \
                                 const T*, const T*, FireParams<T>, T*, bool, T*);
SQ_INSTANTIATE(float)
SQ_INSTANTIATE(double)
#undef SQ_INSTANTIATE

}  // namespace sq
