// The index arithmetic of the GPU's implicit-GEMM convolution (kernels/cuda/igemm_ops.h), run on
// the CPU: the three operand loaders multiplied out in a plain loop must reproduce the CPU
// convolution's forward, weight gradient and input gradient (in double) for kernels, strides and
// paddings of every kind. Runs everywhere, GPU or not; the kernel's tiling is checked on a GPU
// by test_cuda_ops.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/cuda/igemm_ops.h"
#include "kernels/cuda/pool_index.h"
#include "kernels/ops.h"

using namespace sq;

namespace {

// C = A * B through the loaders, with the k and n descriptions made once each as the kernel's
// tables are, then the op's epilogue.
template <class Op>
void multiply(const Op& op) {
  std::vector<typename Op::KEnt> ks;
  std::vector<typename Op::NEnt> ns;
  for (int k = 0; k < op.Kd; ++k) ks.push_back(op.kent(k));
  for (int n = 0; n < op.N; ++n) ns.push_back(op.nent(n));
  for (int m = 0; m < op.M; ++m)
    for (int n = 0; n < op.N; ++n) {
      float acc = 0;
      for (int k = 0; k < op.Kd; ++k) acc += op.a(m, k, ks[size_t(k)]) * op.bval(ks[size_t(k)], ns[size_t(n)]);
      op.store(m, n, acc, 0);
    }
}

double rel(const std::vector<float>& got, const std::vector<double>& ref) {
  double d = 0, r = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    d += (got[i] - ref[i]) * (got[i] - ref[i]);
    r += ref[i] * ref[i];
  }
  return std::sqrt(d / r);
}

}  // namespace

TEST(ImplicitGemm, LoadersReproduceTheCpuConvolution) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  const ConvGeom cases[] = {
      {2, 3, 23, 23, 8, 7, 7, 2, 0},  // conv1 of squeezenet1.0
      {3, 3, 17, 17, 5, 3, 3, 2, 0},  // conv1 of squeezenet1.1
      {2, 4, 9, 9, 6, 3, 3, 1, 1},    // expand 3x3
      {3, 7, 6, 5, 4, 1, 1, 1, 0},    // 1x1, H != W (the pointwise path)
      {2, 5, 7, 7, 3, 1, 1, 2, 0},    // 1x1 at stride 2 (not pointwise)
      {2, 3, 5, 6, 4, 1, 1, 1, 1},    // 1x1 with padding (not pointwise)
      {2, 3, 11, 8, 5, 5, 3, 3, 2},   // odd kernel, stride 3, padding 2
      {1, 2, 4, 4, 3, 3, 3, 2, 1},    // padding larger than what stride covers
  };
  for (const ConvGeom& cg : cases) {
    SCOPED_TRACE("C" + std::to_string(cg.C) + " H" + std::to_string(cg.H) + " K" +
                 std::to_string(cg.K) + " R" + std::to_string(cg.R) + " stride " +
                 std::to_string(cg.stride) + " pad " + std::to_string(cg.pad));
    const int P = cg.P(), Q = cg.Q();
    const size_t nx = size_t(cg.C) * cg.N * cg.H * cg.W, nw = size_t(cg.K) * cg.C * cg.R * cg.S;
    const size_t ny = size_t(cg.K) * cg.N * P * Q;
    std::vector<float> x(nx), w(nw), b(cg.K), dz(ny);
    for (auto* v : {&x, &w, &b, &dz})
      for (float& e : *v) e = nd(rng);
    const std::vector<double> xd(x.begin(), x.end()), wd(w.begin(), w.end()),
        bd(b.begin(), b.end()), dzd(dz.begin(), dz.end());
    std::vector<double> y_ref(ny), dw_ref(nw, 0.0), db_ref(cg.K, 0.0), dx_ref(nx);
    std::vector<double> ws(conv_workspace(cg) + 1);
    conv_forward<double>(cg, xd.data(), wd.data(), bd.data(), y_ref.data(), true, ws.data());
    conv_backward<double>(cg, xd.data(), wd.data(), dzd.data(), dw_ref.data(), db_ref.data(),
                          dx_ref.data(), false, ws.data());

    const cuda::Geo g{cg.N, cg.C, cg.H, cg.W, cg.K, cg.R, cg.S, cg.stride, cg.pad, P, Q};
    std::vector<float> y(ny), dw(nw), dx(nx);
    multiply(cuda::FwdOp{g, x.data(), w.data(), b.data(), y.data(), true, cg.K, cg.N * P * Q,
                         cg.C * cg.R * cg.S});
    multiply(cuda::WeightOp{g, x.data(), dz.data(), dw.data(), cg.K, cg.C * cg.R * cg.S,
                            cg.N * P * Q});
    multiply(cuda::DataOp{g, w.data(), dz.data(), dx.data(), false, cg.C, cg.N * cg.H * cg.W,
                          cg.K * cg.R * cg.S});
    EXPECT_LT(rel(y, y_ref), 1e-6) << "forward";
    EXPECT_LT(rel(dw, dw_ref), 1e-6) << "weight gradient";
    EXPECT_LT(rel(dx, dx_ref), 1e-6) << "input gradient";
  }
}

// The GPU max-pool backward's gather range against brute force, for every pooling SqueezeNet
// and its variants could use (k 2..5, stride 1..3, padding up to k/2, ceil and floor rounding).
TEST(PoolIndex, WindowsContainingEveryInputRow) {
  for (int k = 2; k <= 5; ++k)
    for (int stride = 1; stride <= 3; ++stride)
      for (int pad = 0; 2 * pad <= k; ++pad)
        for (int H = k; H <= 20; ++H)
          for (bool ceil_mode : {true, false}) {
            PoolGeom g;
            g.N = 1, g.C = 1, g.H = H, g.W = H, g.k = k, g.stride = stride, g.pad = pad;
            g.ceil_mode = ceil_mode;
            const int P = g.P();
            for (int h = 0; h < H; ++h) {
              int lo = 0, hi = 0;
              cuda::windows_containing(h, k, stride, pad, P, &lo, &hi);
              for (int p = 0; p < P; ++p) {
                const bool inside = p * stride - pad <= h && h < p * stride - pad + k;
                ASSERT_EQ(inside, lo <= p && p <= hi)
                    << "k " << k << " stride " << stride << " pad " << pad << " H " << H << " h "
                    << h << " p " << p;
              }
            }
          }
}
