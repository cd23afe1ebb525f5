// Softmax cross-entropy, numerically stable (max subtracted), accumulated in double.
#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "kernels/ops.h"

namespace sq {

template <class T>
double softmax_xent(int N, int K, const T* logits, const int32_t* labels, T grad_scale,
                    T* dlogits, int* correct) {
  SQ_ASSERT(N >= 0 && K > 0, "softmax_xent: bad shape N=", N, " K=", K);
  for (int n = 0; n < N; ++n)
    SQ_ASSERT(labels[n] >= 0 && labels[n] < K, "label ", labels[n], " of sample ", n,
              " is outside [0, ", K, ")");
  double loss = 0;
  int right = 0;
#pragma omp parallel for schedule(static) reduction(+ : loss, right) if (int64_t(N) * K > 16384)
  for (int n = 0; n < N; ++n) {
    const T* z = logits + int64_t(n) * K;
    int arg = 0;
    T m = z[0];
    for (int k = 1; k < K; ++k)
      if (z[k] > m) m = z[k], arg = k;  // first maximum
    double sum = 0;
    for (int k = 0; k < K; ++k) sum += std::exp(double(z[k]) - double(m));
    const int y = labels[n];
    loss += std::log(sum) - (double(z[y]) - double(m));
    right += arg == y;
    if (dlogits) {
      T* d = dlogits + int64_t(n) * K;
      const double inv = 1.0 / sum;
      for (int k = 0; k < K; ++k) {
        const double prob = std::exp(double(z[k]) - double(m)) * inv;
        d[k] = static_cast<T>((prob - (k == y ? 1.0 : 0.0)) * double(grad_scale));
      }
    }
  }
  if (correct) *correct = right;
  return loss;
}

template double softmax_xent<float>(int, int, const float*, const int32_t*, float, float*, int*);
template double softmax_xent<double>(int, int, const double*, const int32_t*, double, double*,
                                     int*);

}  // namespace sq
