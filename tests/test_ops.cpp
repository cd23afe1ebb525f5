// Tests of the CPU ops of kernels/ops.h (except Fire and pooling: test_fire.cpp, test_pool.cpp):
// GEMM, convolution (vs a naive direct convolution and central finite differences in double),
// the chunked im2col path, ReLU, bypass add, dropout, softmax cross-entropy and SGD.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "core/rng.h"
#include "kernels/cpu/conv_internal.h"
#include "kernels/ops.h"
#include "tests/ops_testing.h"

namespace sq {
namespace {

using testing_ops::check_grad;
using testing_ops::expect_close;
using testing_ops::naive_conv_backward;
using testing_ops::naive_conv_forward;
using testing_ops::random_vec;
using testing_ops::ChunkLimitGuard;
using testing_ops::kGuard;
using testing_ops::guarded;
using testing_ops::expect_guard_intact;

// ---- GEMM -----------------------------------------------------------------------------------

template <class T>
void check_gemm(bool ta, bool tb, uint64_t seed) {
  const int M = 7, N = 5, K = 9, pad = 3;
  const int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
  const auto A = random_vec<T>(size_t(ta ? K : M) * lda, seed);
  const auto B = random_vec<T>(size_t(tb ? N : K) * ldb, seed + 1);
  auto C = random_vec<T>(size_t(M) * ldc, seed + 2);
  auto ref = C;
  const T alpha = T(0.75), beta = T(-0.5);
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double acc = 0;
      for (int k = 0; k < K; ++k) {
        const double a = ta ? A[size_t(k) * lda + i] : A[size_t(i) * lda + k];
        const double b = tb ? B[size_t(j) * ldb + k] : B[size_t(k) * ldb + j];
        acc += a * b;
      }
      ref[size_t(i) * ldc + j] = T(alpha * acc + beta * double(C[size_t(i) * ldc + j]));
    }
  gemm<T>(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C.data(), ldc);
  expect_close(C, ref, sizeof(T) == 4 ? 1e-5 : 1e-12, "gemm");  // padding columns untouched too
}

TEST(Gemm, AllTransposesFloatAndDouble) {
  uint64_t seed = 100;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      check_gemm<float>(ta, tb, seed += 10);
      check_gemm<double>(ta, tb, seed += 10);
    }
}

// ---- convolution: forward vs naive ------------------------------------------------------------

ConvGeom geom(int N, int C, int H, int W, int K, int R, int S, int stride, int pad) {
  ConvGeom g;
  g.N = N, g.C = C, g.H = H, g.W = W, g.K = K, g.R = R, g.S = S, g.stride = stride, g.pad = pad;
  return g;
}

// Geometries: 3x3/1 pad 1, 3x3/2 no pad on odd sizes, 7x7/2 (conv1 of v1.0), 3x3/2 pad 1,
// pointwise, 1x1/2 (im2col path), rectangular 5x3 pad 2, 2x2/3 pad 1 (windows in the padding
// only), batch 1 and 3.
std::vector<ConvGeom> test_geoms() {
  return {geom(2, 3, 5, 5, 4, 3, 3, 1, 1), geom(3, 2, 7, 9, 3, 3, 3, 2, 0),
          geom(1, 2, 13, 13, 3, 7, 7, 2, 0), geom(3, 3, 8, 7, 2, 3, 3, 2, 1),
          geom(3, 5, 3, 4, 4, 1, 1, 1, 0), geom(3, 3, 5, 6, 2, 1, 1, 2, 0),
          geom(2, 2, 6, 5, 3, 5, 3, 1, 2), geom(1, 2, 7, 5, 2, 2, 2, 3, 1)};
}

TEST(Conv, ForwardMatchesNaiveFloat) {
  uint64_t seed = 1000;
  for (const ConvGeom& g : test_geoms()) {
    for (int variant = 0; variant < 3; ++variant) {  // bias+relu, bias only, no bias + relu
      const bool relu = variant != 1;
      const bool bias = variant != 2;
      SCOPED_TRACE(testing_ops::describe(g) + " relu=" + std::to_string(relu) +
                   " bias=" + std::to_string(bias));
      const auto x = random_vec<float>(size_t(g.C) * g.N * g.H * g.W, seed++);
      const auto w = random_vec<float>(size_t(g.K) * g.C * g.R * g.S, seed++);
      const auto b = random_vec<float>(g.K, seed++);
      const auto ref = naive_conv_forward<float>(g, x.data(), w.data(), bias ? b.data() : nullptr,
                                                 relu);
      std::vector<float> y = random_vec<float>(size_t(g.K) * g.N * g.P() * g.Q(), seed++);
      auto ws = guarded<float>(conv_workspace(g));
      conv_forward<float>(g, x.data(), w.data(), bias ? b.data() : nullptr, y.data(), relu,
                          ws.data());
      expect_guard_intact(ws, conv_workspace(g));
      expect_close(y, ref, 1e-5, "conv_forward");
      if (relu) {
        size_t pos = 0, neg = 0;  // the test data exercise both sides of the ReLU
        for (float v : ref) (v > 0 ? pos : neg)++;
        EXPECT_GT(pos, 0u);
        EXPECT_GT(neg, 0u);
      }
    }
  }
}

// ---- convolution: backward vs finite differences (double) ------------------------------------

// L = sum(r * conv(x, w) + b) (no ReLU): checks dx, dw, db of conv_backward with dz = r.
void check_conv_fd(const ConvGeom& g, uint64_t seed) {
  SCOPED_TRACE(testing_ops::describe(g));
  const size_t nx = size_t(g.C) * g.N * g.H * g.W, nw = size_t(g.K) * g.C * g.R * g.S;
  const size_t ny = size_t(g.K) * g.N * g.P() * g.Q();
  auto x = random_vec<double>(nx, seed);
  auto w = random_vec<double>(nw, seed + 1);
  auto b = random_vec<double>(g.K, seed + 2);
  const auto r = random_vec<double>(ny, seed + 3);
  std::vector<double> ws(conv_workspace(g) + 1);
  std::vector<double> y(ny);
  auto loss = [&]() {
    conv_forward<double>(g, x.data(), w.data(), b.data(), y.data(), false, ws.data());
    double L = 0;
    for (size_t i = 0; i < ny; ++i) L += r[i] * y[i];
    return L;
  };
  std::vector<double> dx(nx, 7.0), dw(nw, 0.0), db(g.K, 0.0);
  auto wsb = guarded<double>(conv_workspace(g));
  conv_backward<double>(g, x.data(), w.data(), r.data(), dw.data(), db.data(), dx.data(), false,
                        wsb.data());
  expect_guard_intact(wsb, conv_workspace(g));
  check_grad("dx", x, dx, loss);
  check_grad("dw", w, dw, loss);
  check_grad("db", b, db, loss);

  // Accumulate: dx += on top of existing contents; dw and db always +=.
  auto dx_acc = random_vec<double>(nx, seed + 4);
  auto dw_acc = random_vec<double>(nw, seed + 5);
  auto db_acc = random_vec<double>(g.K, seed + 6);
  const auto dx0 = dx_acc, dw0 = dw_acc, db0 = db_acc;
  conv_backward<double>(g, x.data(), w.data(), r.data(), dw_acc.data(), db_acc.data(),
                        dx_acc.data(), true, ws.data());
  for (size_t i = 0; i < nx; ++i) ASSERT_NEAR(dx_acc[i], dx0[i] + dx[i], 1e-12) << "dx acc " << i;
  for (size_t i = 0; i < nw; ++i) ASSERT_NEAR(dw_acc[i], dw0[i] + dw[i], 1e-12) << "dw acc " << i;
  for (int i = 0; i < g.K; ++i) ASSERT_NEAR(db_acc[i], db0[i] + db[i], 1e-12) << "db acc " << i;

  // No input gradient, no bias gradient: dw unchanged in meaning.
  std::vector<double> dw2(nw, 0.0);
  conv_backward<double>(g, x.data(), w.data(), r.data(), dw2.data(), nullptr, nullptr, false,
                        ws.data());
  for (size_t i = 0; i < nw; ++i) ASSERT_NEAR(dw2[i], dw[i], 1e-12) << "dw (dx null) " << i;
}

TEST(Conv, BackwardFiniteDifferencesDouble) {
  uint64_t seed = 2000;
  for (const ConvGeom& g : test_geoms()) check_conv_fd(g, seed += 10);
}

TEST(Conv, BackwardMatchesNaiveFloat) {
  uint64_t seed = 3000;
  for (const ConvGeom& g : test_geoms()) {
    SCOPED_TRACE(testing_ops::describe(g));
    const size_t nx = size_t(g.C) * g.N * g.H * g.W, nw = size_t(g.K) * g.C * g.R * g.S;
    const size_t ny = size_t(g.K) * g.N * g.P() * g.Q();
    const auto x = random_vec<float>(nx, seed++);
    const auto w = random_vec<float>(nw, seed++);
    const auto dz = random_vec<float>(ny, seed++);
    auto dw = random_vec<float>(nw, seed++);
    auto db = random_vec<float>(g.K, seed++);
    auto dw_ref = dw, db_ref = db;
    std::vector<float> dx(nx, 3.0f), dx_ref(nx);
    naive_conv_backward<float>(g, x.data(), w.data(), dz.data(), dx_ref.data(), dw_ref.data(),
                               db_ref.data());
    std::vector<float> ws(conv_workspace(g) + 1);
    conv_backward<float>(g, x.data(), w.data(), dz.data(), dw.data(), db.data(), dx.data(), false,
                         ws.data());
    expect_close(dx, dx_ref, 1e-5, "dx");
    expect_close(dw, dw_ref, 1e-5, "dw");
    expect_close(db, db_ref, 1e-5, "db");
  }
}

// ---- convolution: chunked im2col ---------------------------------------------------------------

TEST(Conv, ChunkedMatchesUnchunkedAndFiniteDifferences) {
  const ConvGeom g = geom(5, 3, 7, 6, 4, 3, 3, 2, 1);  // P=4, Q=3
  const size_t per_image = size_t(g.C) * g.R * g.S * g.P() * g.Q();
  ASSERT_EQ(cpu::conv_chunk_images(g), g.N);  // default limit: one chunk
  ASSERT_EQ(conv_workspace(g), per_image * g.N);

  const size_t nx = size_t(g.C) * g.N * g.H * g.W, nw = size_t(g.K) * g.C * g.R * g.S;
  const size_t ny = size_t(g.K) * g.N * g.P() * g.Q();
  const auto x = random_vec<double>(nx, 41), w = random_vec<double>(nw, 42),
             b = random_vec<double>(g.K, 43), dz = random_vec<double>(ny, 44);
  auto run = [&](std::vector<double>& y, std::vector<double>& dx, std::vector<double>& dw,
                 std::vector<double>& db) {
    auto ws = guarded<double>(conv_workspace(g));
    y.assign(ny, 0.0), dx.assign(nx, 0.0), dw.assign(nw, 0.0), db.assign(g.K, 0.0);
    conv_forward<double>(g, x.data(), w.data(), b.data(), y.data(), true, ws.data());
    conv_backward<double>(g, x.data(), w.data(), dz.data(), dw.data(), db.data(), dx.data(),
                          false, ws.data());
    expect_guard_intact(ws, conv_workspace(g));
  };
  std::vector<double> y0, dx0, dw0, db0;
  run(y0, dx0, dw0, db0);
  for (size_t limit : {per_image * 2 + 5, per_image, size_t(1)}) {  // chunks 2+2+1, 1 each
    ChunkLimitGuard guard(limit);
    const int expect_n = limit >= per_image * 2 ? 2 : 1;
    ASSERT_EQ(cpu::conv_chunk_images(g), expect_n);
    ASSERT_EQ(conv_workspace(g), per_image * expect_n);
    std::vector<double> y1, dx1, dw1, db1;
    run(y1, dx1, dw1, db1);
    expect_close(y1, y0, 1e-12, "y chunked");
    expect_close(dx1, dx0, 1e-12, "dx chunked");
    expect_close(dw1, dw0, 1e-12, "dw chunked");
    expect_close(db1, db0, 1e-12, "db chunked");
  }
  ChunkLimitGuard guard(per_image * 2);
  check_conv_fd(g, 45);
}

TEST(Conv, WorkspaceBoundedByChunkLimit) {
  // conv1 of SqueezeNet v1.0 on a large batch: 147 x 64*109*109 would be 112M elements.
  const ConvGeom g = geom(64, 3, 224, 224, 96, 7, 7, 2, 0);
  EXPECT_LE(conv_workspace(g), cpu::kDefaultConvChunkElems);
  EXPECT_GE(conv_workspace(g), cpu::kDefaultConvChunkElems / 2);
  EXPECT_EQ(conv_workspace(geom(64, 96, 55, 55, 16, 1, 1, 1, 0)), 0u);  // pointwise
  // One image larger than the limit still gets a one-image chunk.
  ChunkLimitGuard guard(10);
  EXPECT_EQ(conv_workspace(g), size_t(147) * 109 * 109);  // P = Q = (224 - 7) / 2 + 1
}

// ---- convolution: operand rounding (--check-layers against the GPU's TF32 and BF16) -----------

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

TEST(Conv, RoundOperandAsTheGpu) {
  const OperandRounding tf = OperandRounding::kTf32, bf = OperandRounding::kBf16;
  const float e10 = std::ldexp(1.0f, -10), e7 = std::ldexp(1.0f, -7);
  // TF32: 10 mantissa bits, the rest cut (toward zero, as mma reads fp32 bits), whatever their value.
  EXPECT_EQ(round_operand(1.0f + e10 / 2, tf), 1.0f);
  EXPECT_EQ(round_operand(-(1.0f + e10 / 2), tf), -1.0f);
  EXPECT_EQ(round_operand(1.0f + e10 + e10 / 2, tf), 1.0f + e10);
  EXPECT_EQ(round_operand(std::nextafter(1.0f + e10, 2.0f), tf), 1.0f + e10);
  EXPECT_EQ(round_operand(std::nextafter(1.0f + e10, 0.0f), tf), 1.0f);
  // BF16: 7 bits, ties to even.
  EXPECT_EQ(round_operand(1.0f + e7 / 2, bf), 1.0f);
  EXPECT_EQ(round_operand(1.0f + e7 + e7 / 2, bf), 1.0f + 2 * e7);
  EXPECT_EQ(round_operand(std::nextafter(1.0f + e7 / 2, 2.0f), bf), 1.0f + e7);
  EXPECT_EQ(round_operand(0.3f, OperandRounding::kNone), 0.3f);
  for (OperandRounding r : {tf, bf}) {
    EXPECT_TRUE(std::isinf(round_operand(INFINITY, r)));
    EXPECT_TRUE(std::isnan(round_operand(NAN, r)));
    // Random values: the dropped bits are zero, and the result is (BF16) the nearer of the two
    // neighbours that keep the mantissa's width, (TF32) the one toward zero.
    const int drop = r == tf ? 13 : 16;
    std::mt19937 rng(9);
    std::uniform_real_distribution<float> u(-3.0f, 3.0f);
    for (int i = 0; i < 2000; ++i) {
      const float v = u(rng), got = round_operand(v, r);
      ASSERT_EQ(bits_of(got) & ((1u << drop) - 1), 0u) << v;
      const float lo = from_bits(bits_of(v) & ~((1u << drop) - 1)), hi = from_bits(bits_of(lo) + (1u << drop));
      if (r == tf)
        ASSERT_EQ(got, lo) << v;
      else
        ASSERT_LE(std::fabs(double(got) - v), std::min(std::fabs(double(lo) - v), std::fabs(double(hi) - v))) << v;
    }
  }
}

// With rounding set, the float convolution equals the double one on rounded x, w and dz (fp32
// sums: 1e-5), its bias gradient is dz's unrounded sums, and it differs from the unrounded
// convolution by about the rounding (so the setting is not ignored). Reset, it is as before.
TEST(Conv, OperandRoundingRoundsEveryProductOperandButNotTheBias) {
  uint64_t seed = 5000;
  for (OperandRounding r : {OperandRounding::kTf32, OperandRounding::kBf16}) {
    for (const ConvGeom& g : {geom(2, 3, 9, 8, 5, 3, 3, 1, 1), geom(3, 6, 5, 5, 4, 1, 1, 1, 0),
                              geom(2, 3, 11, 11, 8, 7, 7, 2, 0)}) {
      SCOPED_TRACE(testing_ops::describe(g) + (r == OperandRounding::kTf32 ? " tf32" : " bf16"));
      const size_t nx = size_t(g.C) * g.N * g.H * g.W, nw = size_t(g.K) * g.C * g.R * g.S;
      const size_t ny = size_t(g.K) * g.N * g.P() * g.Q();
      const auto x = random_vec<float>(nx, seed++), w = random_vec<float>(nw, seed++);
      const auto b = random_vec<float>(g.K, seed++), dz = random_vec<float>(ny, seed++);
      auto rounded = [r](const std::vector<float>& v) {
        std::vector<double> o(v.size());
        for (size_t i = 0; i < v.size(); ++i) o[i] = round_operand(v[i], r);
        return o;
      };
      std::vector<double> yd(ny), dxd(nx), dwd(nw, 0.0), dbd(size_t(g.K), 0.0), bd(b.begin(), b.end());
      std::vector<double> dzd(dz.begin(), dz.end()), wsd(conv_workspace(g) + 1);
      conv_forward<double>(g, rounded(x).data(), rounded(w).data(), bd.data(), yd.data(), false, wsd.data());
      conv_backward<double>(g, rounded(x).data(), rounded(w).data(), rounded(dz).data(), dwd.data(), nullptr,
                            dxd.data(), false, wsd.data());
      conv_backward<double>(g, rounded(x).data(), rounded(w).data(), dzd.data(), std::vector<double>(nw).data(),
                            dbd.data(), nullptr, false, wsd.data());
      auto run = [&](OperandRounding mode, std::vector<float>& y, std::vector<float>& dx, std::vector<float>& dw,
                     std::vector<float>& db) {
        set_conv_operand_rounding(mode);
        std::vector<float> ws(conv_workspace(g) + 1);
        y.assign(ny, 0.0f), dx.assign(nx, 0.0f), dw.assign(nw, 0.0f), db.assign(size_t(g.K), 0.0f);
        conv_forward<float>(g, x.data(), w.data(), b.data(), y.data(), false, ws.data());
        conv_backward<float>(g, x.data(), w.data(), dz.data(), dw.data(), db.data(), dx.data(), false, ws.data());
        set_conv_operand_rounding(OperandRounding::kNone);
      };
      std::vector<float> y, dx, dw, db, y0, dx0, dw0, db0;
      run(r, y, dx, dw, db);
      EXPECT_EQ(conv_operand_rounding(), OperandRounding::kNone);
      expect_close(y, std::vector<float>(yd.begin(), yd.end()), 1e-5, "y");
      expect_close(dx, std::vector<float>(dxd.begin(), dxd.end()), 1e-5, "dx");
      expect_close(dw, std::vector<float>(dwd.begin(), dwd.end()), 1e-5, "dw");
      expect_close(db, std::vector<float>(dbd.begin(), dbd.end()), 1e-5, "db (unrounded dz)");
      run(OperandRounding::kNone, y0, dx0, dw0, db0);
      double d = 0, n = 0;
      for (size_t i = 0; i < ny; ++i) d += std::pow(double(y[i]) - y0[i], 2), n += std::pow(double(y0[i]), 2);
      EXPECT_GT(std::sqrt(d / n), r == OperandRounding::kTf32 ? 5e-5 : 5e-4) << "the rounding is applied";
      EXPECT_EQ(db, db0) << "the bias gradient does not depend on the rounding";
    }
  }
}

// ---- element-wise -------------------------------------------------------------------------------

TEST(Elementwise, ReluBackwardFiniteDifferences) {
  const size_t n = 1000;
  auto z = random_vec<double>(n, 51);
  const auto r = random_vec<double>(n, 52);
  std::vector<double> y(n);
  auto relu = [&]() {
    for (size_t i = 0; i < n; ++i) y[i] = std::max(z[i], 0.0);
  };
  auto loss = [&]() {
    relu();
    double L = 0;
    for (size_t i = 0; i < n; ++i) L += r[i] * y[i];
    return L;
  };
  relu();
  std::vector<double> dz(n, 5.0);
  relu_backward<double>(r.data(), y.data(), dz.data(), n);
  check_grad("relu dz", z, dz, loss);
  // In place (dz aliases dy), float, large enough to run threaded.
  const size_t m = 100000;
  const auto yf = random_vec<float>(m, 53);
  auto dyf = random_vec<float>(m, 54);
  const auto dy0 = dyf;
  relu_backward<float>(dyf.data(), yf.data(), dyf.data(), m);
  for (size_t i = 0; i < m; ++i) ASSERT_EQ(dyf[i], yf[i] > 0 ? dy0[i] : 0.0f) << i;
}

TEST(Elementwise, AddInplace) {
  const size_t m = 100003;
  auto y = random_vec<float>(m, 61);
  const auto x = random_vec<float>(m, 62);
  const auto y0 = y;
  add_inplace<float>(y.data(), x.data(), m);
  for (size_t i = 0; i < m; ++i) ASSERT_EQ(y[i], y0[i] + x[i]) << i;
}

// The threaded copy against the bytes it was given, at sizes around its 4 MiB slices (one
// thread below two slices; a last slice that is not whole cache lines), with 1, 2 and 3 threads;
// the bytes after dst's end are left alone.
TEST(Elementwise, CopyParallelCopiesEveryByteAndNoMore) {
  constexpr size_t kMiB = size_t(1) << 20, kGuard = 4096;
  std::mt19937_64 gen(20261204);
  const int threads0 = omp_get_max_threads();
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    for (size_t bytes : {size_t(0), size_t(1), 4 * kMiB - 1, 8 * kMiB, 8 * kMiB + 13, 13 * kMiB + 4095}) {
      std::vector<unsigned char> src(bytes), dst(bytes + kGuard, 0xA5);
      for (auto& b : src) b = static_cast<unsigned char>(gen());
      copy_parallel(dst.data(), src.data(), bytes);
      EXPECT_EQ(std::memcmp(dst.data(), src.data(), bytes), 0) << bytes << " bytes, " << threads << " threads";
      EXPECT_TRUE(std::all_of(dst.begin() + bytes, dst.end(), [](unsigned char b) { return b == 0xA5; }))
          << "written past the end: " << bytes << " bytes, " << threads << " threads";
    }
  }
  omp_set_num_threads(threads0);
}

// ---- dropout ----------------------------------------------------------------------------------

TEST(Dropout, KeepFractionScaleAndContractMask) {
  const int N = 4, C = 64, HW = 13 * 13 * 10;  // ~430k elements
  const size_t n = size_t(N) * C * HW;
  const auto x = random_vec<float>(n, 71, 0.5, 1.5);  // never zero
  const uint64_t keys[N] = {sample_key(1, RngStream::kDropout, 0, 0),
                            sample_key(1, RngStream::kDropout, 0, 1),
                            sample_key(1, RngStream::kDropout, 0, 2),
                            sample_key(1, RngStream::kDropout, 0, 3)};
  for (float p : {0.5f, 0.3f, 0.9f}) {
    std::vector<float> y(n);
    dropout_forward<float>(N, C, HW, p, keys, x.data(), y.data());
    size_t kept = 0;
    for (int c = 0; c < C; ++c)
      for (int s = 0; s < N; ++s)
        for (int i = 0; i < HW; ++i) {
          const size_t off = (size_t(c) * N + s) * HW + i;
          const bool keep = uniform01(hash_combine(keys[s], uint64_t(c) * HW + i)) >= p;
          ASSERT_EQ(y[off] != 0.0f, keep) << "mask contract at " << off;
          if (keep) {
            ASSERT_NEAR(y[off], x[off] / (1.0f - p), 1e-6f * std::abs(y[off]));
            ++kept;
          }
        }
    const double frac = double(kept) / n;
    EXPECT_NEAR(frac, 1.0 - p, 0.005) << "p=" << p;
  }
}

TEST(Dropout, SameKeysSameMaskDifferentKeysDiffer) {
  const int N = 3, C = 32, HW = 169;
  const size_t n = size_t(N) * C * HW;
  const auto x = random_vec<float>(n, 81, 0.5, 1.5);
  const uint64_t k1[N] = {11, 12, 13}, k2[N] = {21, 22, 23};
  std::vector<float> a(n), b(n), c(n);
  dropout_forward<float>(N, C, HW, 0.5f, k1, x.data(), a.data());
  dropout_forward<float>(N, C, HW, 0.5f, k1, x.data(), b.data());
  dropout_forward<float>(N, C, HW, 0.5f, k2, x.data(), c.data());
  EXPECT_EQ(a, b);
  size_t differ = 0;
  for (size_t i = 0; i < n; ++i) differ += (a[i] != 0) != (c[i] != 0);
  EXPECT_NEAR(double(differ) / n, 0.5, 0.03);  // independent masks disagree half the time

  // Independent of batch composition: sample with key 12 alone gives its slice of the batch.
  const uint64_t k_single[1] = {12};
  std::vector<float> xs(size_t(C) * HW), ys(size_t(C) * HW);
  for (int ch = 0; ch < C; ++ch)
    std::copy_n(&x[(size_t(ch) * N + 1) * HW], HW, &xs[size_t(ch) * HW]);
  dropout_forward<float>(1, C, HW, 0.5f, k_single, xs.data(), ys.data());
  for (int ch = 0; ch < C; ++ch)
    for (int i = 0; i < HW; ++i)
      ASSERT_EQ(ys[size_t(ch) * HW + i], a[(size_t(ch) * N + 1) * HW + i]);
}

TEST(Dropout, BackwardMatchesForwardAndFiniteDifferences) {
  const int N = 2, C = 5, HW = 7;
  const size_t n = size_t(N) * C * HW;
  const uint64_t keys[N] = {sample_key(9, RngStream::kDropout, 3, 17),
                            sample_key(9, RngStream::kDropout, 3, 18)};
  const float p = 0.4f;
  auto x = random_vec<double>(n, 91);
  const auto r = random_vec<double>(n, 92);
  std::vector<double> y(n), dx(n, 1.0);
  auto loss = [&]() {
    dropout_forward<double>(N, C, HW, p, keys, x.data(), y.data());
    double L = 0;
    for (size_t i = 0; i < n; ++i) L += r[i] * y[i];
    return L;
  };
  dropout_backward<double>(N, C, HW, p, keys, r.data(), dx.data());
  check_grad("dropout dx", x, dx, loss);
  loss();
  size_t zeros = 0;
  for (size_t i = 0; i < n; ++i) {
    ASSERT_EQ(dx[i] == 0.0, y[i] == 0.0) << i;  // same mask
    zeros += dx[i] == 0.0;
  }
  EXPECT_GT(zeros, 0u);
  EXPECT_LT(zeros, n);
  // p == 0: identity, in place too.
  auto z = random_vec<double>(n, 93);
  const auto z0 = z;
  dropout_forward<double>(N, C, HW, 0.0f, keys, z.data(), z.data());
  EXPECT_EQ(z, z0);
  std::vector<double> out(n);
  dropout_backward<double>(N, C, HW, 0.0f, keys, z0.data(), out.data());
  EXPECT_EQ(out, z0);
}

// ---- softmax cross-entropy ---------------------------------------------------------------------

TEST(SoftmaxXent, FiniteDifferencesDouble) {
  const int N = 4, K = 10;
  auto z = random_vec<double>(size_t(N) * K, 101, -3, 3);
  const int32_t labels[N] = {3, 0, 9, 5};
  const double scale = 1.0 / 8;
  std::vector<double> dz(size_t(N) * K, 2.0);
  softmax_xent<double>(N, K, z.data(), labels, scale, dz.data(), nullptr);
  auto loss = [&]() { return scale * softmax_xent<double>(N, K, z.data(), labels, 1.0, nullptr, nullptr); };
  check_grad("dlogits", z, dz, loss);
}

TEST(SoftmaxXent, MatchesNaiveAndCountsCorrect) {
  const int N = 37, K = 11;  // odd sizes
  const auto z = random_vec<float>(size_t(N) * K, 111, -4, 4);
  std::vector<int32_t> labels(N);
  std::mt19937 gen(112);
  for (auto& l : labels) l = int32_t(gen() % K);
  double ref = 0;
  int ref_correct = 0;
  for (int n = 0; n < N; ++n) {
    long double s = 0;
    int arg = 0;
    for (int k = 0; k < K; ++k) {
      s += std::exp((long double)z[n * K + k]);
      if (z[n * K + k] > z[n * K + arg]) arg = k;
    }
    ref += double(std::log(s) - (long double)z[n * K + labels[n]]);
    ref_correct += arg == labels[n];
  }
  std::vector<float> dz(size_t(N) * K);
  int correct = -1;
  const double L = softmax_xent<float>(N, K, z.data(), labels.data(), 1.0f / N, dz.data(), &correct);
  EXPECT_NEAR(L, ref, 1e-5 * std::abs(ref));
  EXPECT_EQ(correct, ref_correct);
  for (int n = 0; n < N; ++n) {  // each row of dlogits sums to zero
    double s = 0;
    for (int k = 0; k < K; ++k) s += dz[n * K + k];
    EXPECT_NEAR(s, 0.0, 1e-6);
  }
  // Labels chosen to be the arg-max: all correct.
  std::vector<int32_t> best(N);
  for (int n = 0; n < N; ++n)
    best[n] = int32_t(std::max_element(&z[n * K], &z[n * K] + K) - &z[n * K]);
  softmax_xent<float>(N, K, z.data(), best.data(), 1.0f, nullptr, &correct);
  EXPECT_EQ(correct, N);
  // Tied maxima: the arg-max is the first (as torch.argmax), so only label 1 counts.
  const float tied[4] = {0.5f, 2.0f, 2.0f, -1.0f};
  const int32_t first[1] = {1}, second[1] = {2};
  softmax_xent<float>(1, 4, tied, first, 1.0f, nullptr, &correct);
  EXPECT_EQ(correct, 1);
  softmax_xent<float>(1, 4, tied, second, 1.0f, nullptr, &correct);
  EXPECT_EQ(correct, 0);
}

TEST(SoftmaxXent, StableForHugeLogits) {
  const int N = 2, K = 3;
  const float z[N * K] = {1000.f, 999.f, -1000.f, -5000.f, -5001.f, -4999.f};
  const float shifted[N * K] = {1.f, 0.f, -2000.f, -1.f, -2.f, 0.f};
  const int32_t labels[N] = {1, 2};
  float dz[N * K], dzs[N * K];
  const double L = softmax_xent<float>(N, K, z, labels, 1.0f, dz, nullptr);
  const double Ls = softmax_xent<float>(N, K, shifted, labels, 1.0f, dzs, nullptr);
  ASSERT_TRUE(std::isfinite(L));
  EXPECT_NEAR(L, Ls, 1e-6);
  EXPECT_NEAR(L, std::log(1 + std::exp(1.0)) + std::log(1 + std::exp(-1.0) + std::exp(-2.0)),
              1e-6);
  for (int i = 0; i < N * K; ++i) EXPECT_NEAR(dz[i], dzs[i], 1e-6);
}

// ---- SGD ----------------------------------------------------------------------------------------

TEST(Sgd, MatchesScalarReference) {
  const size_t n = 100001;
  auto param = random_vec<float>(n, 121);
  auto vel = random_vec<float>(n, 122);
  auto p_ref = param;
  auto v_ref = vel;
  const float lr = 0.04f, mom = 0.9f, wd = 2e-4f;
  for (int step = 0; step < 3; ++step) {
    const auto grad = random_vec<float>(n, 123 + step);
    sgd_momentum_update<float>(n, param.data(), grad.data(), vel.data(), lr, mom, wd);
    for (size_t i = 0; i < n; ++i) {
      const double g = double(grad[i]) + double(wd) * double(p_ref[i]);
      const double v = double(mom) * double(v_ref[i]) + g;
      v_ref[i] = float(v);
      p_ref[i] = float(double(p_ref[i]) - double(lr) * v);
    }
  }
  expect_close(vel, v_ref, 1e-5, "velocity");
  expect_close(param, p_ref, 1e-5, "param");
  // Double, one step, exact formula.
  std::vector<double> pd = {1.0, -2.0}, vd = {0.5, 0.0};
  const std::vector<double> gd = {0.25, 3.0};
  sgd_momentum_update<double>(2, pd.data(), gd.data(), vd.data(), 0.1, 0.9, 0.01);
  EXPECT_NEAR(vd[0], 0.9 * 0.5 + 0.25 + 0.01 * 1.0, 1e-15);
  EXPECT_NEAR(vd[1], 3.0 - 0.02, 1e-15);
  EXPECT_NEAR(pd[0], 1.0 - 0.1 * (0.45 + 0.26), 1e-15);
  EXPECT_NEAR(pd[1], -2.0 - 0.1 * 2.98, 1e-15);
}

}  // namespace
}  // namespace sq
