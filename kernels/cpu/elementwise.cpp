// Element-wise ops: ReLU backward, the bypass add, and the two passes of gradient clipping.
#include <cstdint>

#include "kernels/ops.h"

namespace sq {

namespace {
constexpr int64_t kParallelMin = 1 << 15;  // below this, threading costs more than it saves
}

template <class T>
void relu_backward(const T* dy, const T* y, T* dz, size_t n) {
  const int64_t m = static_cast<int64_t>(n);
#pragma omp parallel for simd schedule(static) if (m > kParallelMin)
  for (int64_t i = 0; i < m; ++i) dz[i] = y[i] > T(0) ? dy[i] : T(0);
}

template <class T>
void add_inplace(T* y, const T* x, size_t n) {
  const int64_t m = static_cast<int64_t>(n);
#pragma omp parallel for simd schedule(static) if (m > kParallelMin)
  for (int64_t i = 0; i < m; ++i) y[i] += x[i];
}

template <class T>
double sum_of_squares(const T* x, size_t n) {
  const int64_t m = static_cast<int64_t>(n);
  double acc = 0;
#pragma omp parallel for simd schedule(static) reduction(+ : acc) if (m > kParallelMin)
  for (int64_t i = 0; i < m; ++i) acc += double(x[i]) * double(x[i]);
  return acc;
}

template <class T>
void scale_inplace(T* x, T s, size_t n) {
  const int64_t m = static_cast<int64_t>(n);
#pragma omp parallel for simd schedule(static) if (m > kParallelMin)
  for (int64_t i = 0; i < m; ++i) x[i] *= s;
}

template double sum_of_squares<float>(const float*, size_t);
template double sum_of_squares<double>(const double*, size_t);
template void scale_inplace<float>(float*, float, size_t);
template void scale_inplace<double>(double*, double, size_t);
template void relu_backward<float>(const float*, const float*, float*, size_t);
template void relu_backward<double>(const double*, const double*, double*, size_t);
template void add_inplace<float>(float*, const float*, size_t);
template void add_inplace<double>(double*, const double*, size_t);

}  // namespace sq
