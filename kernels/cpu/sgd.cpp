// SGD with momentum and L2 weight decay, PyTorch semantics, one fused pass.
#include <cstddef>
#include <cstdint>

#include "kernels/ops.h"

namespace sq {

template <class T>
void sgd_momentum_update(size_t n, T* param, const T* grad, T* velocity, T lr, T momentum,
                         T weight_decay) {
  const int64_t m = static_cast<int64_t>(n);
#pragma omp parallel for simd schedule(static) if (m > 32768)
  for (int64_t i = 0; i < m; ++i) {
    const T g = grad[i] + weight_decay * param[i];
    const T v = momentum * velocity[i] + g;
    velocity[i] = v;
    param[i] -= lr * v;
  }
}

template void sgd_momentum_update<float>(size_t, float*, const float*, float*, float, float, float);
template void sgd_momentum_update<double>(size_t, double*, const double*, double*, double, double,
                                          double);

}  // namespace sq
