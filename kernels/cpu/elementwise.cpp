// Element-wise ops: ReLU backward, the bypass add, the two passes of gradient clipping, and a
// threaded copy.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

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
void copy_parallel(void* dst, const void* src, size_t bytes) {
  constexpr size_t kSlice = size_t(4) << 20;
  const int parts = int(std::min<size_t>(size_t(omp_get_max_threads()), bytes / kSlice));
  if (parts <= 1) {
    if (bytes) std::memcpy(dst, src, bytes);
    return;
  }
  const size_t per = (bytes / parts + 63) / 64 * 64;  // whole cache lines a slice
#pragma omp parallel for schedule(static) num_threads(parts)
  for (int i = 0; i < parts; ++i) {
    const size_t lo = std::min(bytes, per * size_t(i)), hi = i == parts - 1 ? bytes : std::min(bytes, lo + per);
    std::memcpy(static_cast<char*>(dst) + lo, static_cast<const char*>(src) + lo, hi - lo);
  }
}

template void add_inplace<float>(float*, const float*, size_t);
template void add_inplace<double>(double*, const double*, size_t);

}  // namespace sq
