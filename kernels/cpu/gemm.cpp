// GEMM on OpenBLAS (Debian's OpenMP build, so BLAS threads and our loops share one pool).
#include <cblas.h>

#include <cstddef>

#include "core/error.h"
#include "kernels/ops.h"

namespace sq {

namespace {

inline CBLAS_TRANSPOSE tr(bool t) { return t ? CblasTrans : CblasNoTrans; }

// C = beta * C for the degenerate K == 0 case (BLAS implementations differ on it).
template <class T>
void scale_c(int M, int N, T beta, T* C, int ldc) {
  for (int i = 0; i < M; ++i) {
    T* row = C + static_cast<size_t>(i) * ldc;
    if (beta == T(0)) {
      for (int j = 0; j < N; ++j) row[j] = T(0);
    } else {
      for (int j = 0; j < N; ++j) row[j] *= beta;
    }
  }
}

}  // namespace

template <>
void gemm<float>(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                 int lda, const float* B, int ldb, float beta, float* C, int ldc) {
  SQ_ASSERT(M >= 0 && N >= 0 && K >= 0, "gemm: negative size");
  if (M == 0 || N == 0) return;
  if (K == 0) return scale_c(M, N, beta, C, ldc);
  cblas_sgemm(CblasRowMajor, tr(trans_a), tr(trans_b), M, N, K, alpha, A, lda, B, ldb, beta, C,
              ldc);
}

template <>
void gemm<double>(bool trans_a, bool trans_b, int M, int N, int K, double alpha, const double* A,
                  int lda, const double* B, int ldb, double beta, double* C, int ldc) {
  SQ_ASSERT(M >= 0 && N >= 0 && K >= 0, "gemm: negative size");
  if (M == 0 || N == 0) return;
  if (K == 0) return scale_c(M, N, beta, C, ldc);
  cblas_dgemm(CblasRowMajor, tr(trans_a), tr(trans_b), M, N, K, alpha, A, lda, B, ldb, beta, C,
              ldc);
}

}  // namespace sq
