// Inverted dropout with counter-based masks: element e of sample n is kept iff
// uniform01(hash_combine(sample_keys[n], e)) >= p, where e = c*HW + hw is the element's offset
// within the sample in NCHW order. Nothing is stored; backward recomputes the mask.
#include <algorithm>
#include <cstdint>

#include "core/error.h"
#include "core/rng.h"
#include "kernels/ops.h"

namespace sq {

namespace {

using i64 = int64_t;

// out = in * mask * scale over the (C, N, HW) tensor; identity when p == 0.
template <class T>
void apply_mask(int N, int C, int HW, float p, const uint64_t* keys, const T* in, T* out) {
  SQ_ASSERT(p >= 0.0f && p < 1.0f, "dropout p must be in [0, 1), got ", p);
  const i64 total = i64(N) * C * HW;
  if (p == 0.0f) {
    if (in != out) std::copy(in, in + total, out);
    return;
  }
  SQ_ASSERT(keys != nullptr, "dropout: sample keys required");
  const T scale = T(1) / (T(1) - T(p));
#pragma omp parallel for collapse(2) schedule(static) if (total > 4096)
  for (int c = 0; c < C; ++c) {
    for (int n = 0; n < N; ++n) {
      const i64 off = (i64(c) * N + n) * HW;
      const uint64_t key = keys[n];
      const uint64_t e0 = uint64_t(c) * uint64_t(HW);
      const T* ip = in + off;
      T* op = out + off;
      for (int i = 0; i < HW; ++i) {
        const bool keep = uniform01(hash_combine(key, e0 + uint64_t(i))) >= p;
        op[i] = keep ? ip[i] * scale : T(0);
      }
    }
  }
}

}  // namespace

template <class T>
void dropout_forward(int N, int C, int HW, float p, const uint64_t* sample_keys, const T* x, T* y) {
  apply_mask(N, C, HW, p, sample_keys, x, y);
}

template <class T>
void dropout_backward(int N, int C, int HW, float p, const uint64_t* sample_keys, const T* dy,
                      T* dx) {
  apply_mask(N, C, HW, p, sample_keys, dy, dx);
}

#define SQ_INSTANTIATE(T)                                                                   \
  template void dropout_forward<T>(int, int, int, float, const uint64_t*, const T*, T*);    \
  template void dropout_backward<T>(int, int, int, float, const uint64_t*, const T*, T*);
SQ_INSTANTIATE(float)
SQ_INSTANTIATE(double)
#undef SQ_INSTANTIATE

}  // namespace sq
