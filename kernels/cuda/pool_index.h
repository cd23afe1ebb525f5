// Which pooling windows contain input row (or column) h: the range [*lo, *hi] of window indices
// p with p*stride - pad <= h < p*stride - pad + k, clipped to [0, P). Host and device code: the
// GPU max-pool backward gathers over it; tests/test_igemm.cpp checks it exhaustively on the CPU.
#pragma once
#include "core/rng.h"  // SQ_HOST_DEVICE

namespace sq {
namespace cuda {

SQ_HOST_DEVICE inline void windows_containing(int h, int k, int stride, int pad, int P, int* lo,
                                              int* hi) {
  // Smallest p with p*stride > h + pad - k, i.e. floor((h + pad - k) / stride) + 1 (C division
  // truncates toward zero, which is the floor whenever the numerator below is >= 0, and any
  // negative numerator means p = 0 is the answer anyway).
  const int a = (h + pad - k + stride) / stride;
  const int b = (h + pad) / stride;
  *lo = a > 0 ? a : 0;
  *hi = b < P - 1 ? b : P - 1;
}

}  // namespace cuda
}  // namespace sq
