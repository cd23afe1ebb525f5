// Tests of max pooling (PyTorch's ceil_mode shapes, values, first-maximum routing) and global
// average pooling.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <ostream>
#include <vector>

#include "kernels/ops.h"
#include "tests/ops_testing.h"

namespace sq {

// Test names as "N x C x H x W, k/stride/pad".
void PrintTo(const PoolGeom& g, std::ostream* os) {
  *os << g.N << "x" << g.C << "x" << g.H << "x" << g.W << ", k" << g.k << " s" << g.stride << " p" << g.pad
      << (g.ceil_mode ? " ceil" : " floor");
}

namespace {

using testing_ops::check_grad;
using testing_ops::expect_close;
using testing_ops::random_vec;

PoolGeom pool_geom(int N, int C, int H, int W, int k, int stride, int pad, bool ceil_mode = true) {
  PoolGeom g;
  g.N = N, g.C = C, g.H = H, g.W = W, g.k = k, g.stride = stride, g.pad = pad;
  g.ceil_mode = ceil_mode;
  return g;
}

TEST(MaxPool, OutputShapesFollowPyTorchCeilMode) {
  // 3x3/2 ceil mode, the sizes of SqueezeNet v1.0 and v1.1 and a few more.
  const int cases[][2] = {{109, 54}, {111, 55}, {55, 27}, {54, 27}, {56, 28},
                          {27, 13},  {13, 6},   {7, 3},   {4, 2},   {3, 1}};
  for (auto& c : cases) {
    const PoolGeom g = pool_geom(1, 1, c[0], c[0], 3, 2, 0);
    EXPECT_EQ(g.P(), c[1]) << "H=" << c[0];
    EXPECT_EQ(g.Q(), c[1]) << "W=" << c[0];
  }
  const PoolGeom rect = pool_geom(1, 1, 54, 13, 3, 2, 0);
  EXPECT_EQ(rect.P(), 27);
  EXPECT_EQ(rect.Q(), 6);
  EXPECT_EQ(pool_geom(1, 1, 54, 54, 3, 2, 0, false).P(), 26);  // floor mode
  EXPECT_EQ(pool_geom(1, 1, 55, 55, 3, 2, 0, false).P(), 27);
  // Padded, the last-window drop rule triggers: H=5, k2/2 pad 1: ceil(5/2)+1 = 4, but the
  // 4th window would start at 3*2-1 = 5, in the right padding (3*2 >= 5+1): dropped -> 3.
  EXPECT_EQ(pool_geom(1, 1, 5, 5, 2, 2, 1).P(), 3);
  EXPECT_EQ(pool_geom(1, 1, 5, 5, 2, 2, 1, false).P(), 3);
  // H=3, k2/2 pad 1: ceil(3/2)+1 = 3, 3rd window starts at 3 (padding): dropped -> 2.
  EXPECT_EQ(pool_geom(1, 1, 3, 3, 2, 2, 1).P(), 2);
  // H=1, k4/3 pad 2: ceil(1/3)+1 = 2, 2nd window starts at 1 (padding): dropped -> 1.
  EXPECT_EQ(pool_geom(1, 1, 1, 1, 4, 3, 2).P(), 1);
  // Padded without the drop: H=6, k3/2 pad 1: ceil(5/2)+1 = 4, last window starts at 5 < 6.
  EXPECT_EQ(pool_geom(1, 1, 6, 6, 3, 2, 1).P(), 4);
  EXPECT_EQ(pool_geom(1, 1, 6, 6, 3, 2, 1, false).P(), 3);
  EXPECT_EQ(pool_geom(1, 1, 7, 7, 3, 3, 1).P(), 3);  // ceil(6/3)+1 = 3, starts at 5
  EXPECT_EQ(pool_geom(1, 1, 2, 2, 2, 2, 1).P(), 2);  // ceil(2/2)+1 = 2, starts at 1
}

// Naive max over the clipped window.
template <class T>
std::vector<T> naive_maxpool(const PoolGeom& g, const std::vector<T>& x) {
  const int P = g.P(), Q = g.Q();
  std::vector<T> y(size_t(g.C) * g.N * P * Q);
  for (int c = 0; c < g.C; ++c)
    for (int n = 0; n < g.N; ++n)
      for (int p = 0; p < P; ++p)
        for (int q = 0; q < Q; ++q) {
          T m = -std::numeric_limits<T>::infinity();
          for (int i = 0; i < g.k; ++i)
            for (int j = 0; j < g.k; ++j) {
              const int h = p * g.stride - g.pad + i, w = q * g.stride - g.pad + j;
              if (h >= 0 && h < g.H && w >= 0 && w < g.W)
                m = std::max(m, x[((size_t(c) * g.N + n) * g.H + h) * g.W + w]);
            }
          y[((size_t(c) * g.N + n) * P + p) * Q + q] = m;
        }
  return y;
}

// Planes with output rows of at most 16 (and at most 1024 outputs) go through the window table
// (pool.cpp's kTableRow), the others through the row path; both are covered, with clipped
// windows (ceil mode, padding).
std::vector<PoolGeom> pool_cases() {
  return {pool_geom(2, 3, 13, 13, 3, 2, 0), pool_geom(3, 2, 54, 11, 3, 2, 0),
          pool_geom(1, 2, 5, 6, 2, 2, 1),   pool_geom(2, 2, 6, 7, 3, 2, 1),
          pool_geom(2, 3, 9, 8, 3, 2, 1, false), pool_geom(1, 1, 7, 7, 3, 3, 1),
          // the Fashion-MNIST model's three pools (table; 28 and 14: ceil-mode last column and
          // row), squeezenet1.0's pool1 plane (rows: vectorised interior, ceil-mode last column
          // and row), stride 1 with padding (table at 13 columns, rows at 37), and rows wider
          // than one 256-column piece
          pool_geom(2, 2, 28, 28, 3, 2, 0), pool_geom(1, 2, 14, 14, 3, 2, 0),
          pool_geom(1, 2, 7, 7, 3, 2, 0), pool_geom(2, 1, 111, 111, 3, 2, 0),
          pool_geom(1, 2, 10, 13, 3, 1, 1), pool_geom(1, 1, 40, 37, 3, 1, 1),
          pool_geom(1, 1, 3, 530, 3, 2, 1), pool_geom(1, 1, 9, 530, 3, 2, 1)};
}

TEST(MaxPool, ForwardMatchesNaive) {
  uint64_t seed = 800;
  for (const PoolGeom& g : pool_cases()) {
    const auto x = random_vec<float>(size_t(g.C) * g.N * g.H * g.W, seed++);
    std::vector<float> y(size_t(g.C) * g.N * g.P() * g.Q(), 7.f);
    maxpool_forward<float>(g, x.data(), y.data());
    expect_close(y, naive_maxpool(g, x), 0.0, "maxpool");
  }
}

TEST(MaxPool, BackwardFiniteDifferencesDouble) {
  uint64_t seed = 900;
  for (const PoolGeom& g : pool_cases()) {
    auto x = random_vec<double>(size_t(g.C) * g.N * g.H * g.W, seed++);
    const size_t ny = size_t(g.C) * g.N * g.P() * g.Q();
    const auto r = random_vec<double>(ny, seed++);
    std::vector<double> y(ny), dx(x.size(), 3.0);
    auto loss = [&]() {
      maxpool_forward<double>(g, x.data(), y.data());
      double L = 0;
      for (size_t i = 0; i < ny; ++i) L += r[i] * y[i];
      return L;
    };
    maxpool_backward<double>(g, x.data(), r.data(), dx.data());
    check_grad("maxpool dx", x, dx, loss);
  }
}

class MaxPoolTies : public ::testing::TestWithParam<PoolGeom> {};

TEST_P(MaxPoolTies, RouteToFirstMaximum) {
  // All-equal planes: each window's gradient goes to its first (top-left, clipped) element.
  const PoolGeom g = GetParam();
  const int P = g.P(), Q = g.Q();
  std::vector<float> x(size_t(g.C) * g.N * g.H * g.W, 0.5f);
  const auto dy = random_vec<float>(size_t(g.C) * g.N * P * Q, 950);
  std::vector<float> dx(x.size(), 1.f), ref(x.size(), 0.f);
  for (int plane = 0; plane < g.C * g.N; ++plane)
    for (int p = 0; p < P; ++p)
      for (int q = 0; q < Q; ++q) {
        const int h = std::max(p * g.stride - g.pad, 0), w = std::max(q * g.stride - g.pad, 0);
        ref[(size_t(plane) * g.H + h) * g.W + w] += dy[(size_t(plane) * P + p) * Q + q];
      }
  maxpool_backward<float>(g, x.data(), dy.data(), dx.data());
  expect_close(dx, ref, 1e-6, "tied maxpool dx");
}
// Table (7x6 and 28x28, padded and ceil-clipped) and rows (75x75 padded).
INSTANTIATE_TEST_SUITE_P(Paths, MaxPoolTies,
                         ::testing::Values(pool_geom(2, 2, 7, 6, 3, 2, 1), pool_geom(1, 2, 28, 28, 3, 2, 0),
                                           pool_geom(1, 1, 75, 75, 3, 2, 1)));

TEST(MaxPool, TieInsideOneWindowGoesToTheEarlierElement) {
  // A tie inside one window between a later and an earlier element: the earlier one wins.
  const PoolGeom g1 = pool_geom(1, 1, 3, 3, 3, 2, 0);
  const std::vector<float> x1 = {0, 2, 1, 2, 0, 2, 1, 1, 2};
  const std::vector<float> dy1 = {5.f};
  std::vector<float> dx1(9, -1.f);
  maxpool_backward<float>(g1, x1.data(), dy1.data(), dx1.data());
  EXPECT_EQ(dx1, (std::vector<float>{0, 5, 0, 0, 0, 0, 0, 0, 0}));
}

class MaxPoolNaN : public ::testing::TestWithParam<PoolGeom> {};

TEST_P(MaxPoolNaN, WinsAndRoutesToTheFirstNaN) {
  // As PyTorch's CPU kernel: a window holding a NaN outputs NaN, and its gradient goes to the
  // window's first NaN in row-major order; otherwise to the first maximum. Checked against a
  // scalar reference with NaNs sprinkled in, on planes through the table and through the rows.
  const PoolGeom g = GetParam();
  const int P = g.P(), Q = g.Q();
  auto x = random_vec<float>(size_t(g.C) * g.N * g.H * g.W, 990);
  for (size_t i = 0; i < x.size(); i += 37) x[i] = std::numeric_limits<float>::quiet_NaN();
  const auto dy = random_vec<float>(size_t(g.C) * g.N * P * Q, 991);
  std::vector<float> y(dy.size()), dx(x.size(), 9.f), ref_dx(x.size(), 0.f);
  maxpool_forward<float>(g, x.data(), y.data());
  maxpool_backward<float>(g, x.data(), dy.data(), dx.data());
  int nan_windows = 0;
  for (int plane = 0; plane < g.C * g.N; ++plane)
    for (int p = 0; p < P; ++p)
      for (int q = 0; q < Q; ++q) {
        size_t best_i = 0;
        float best = -std::numeric_limits<float>::infinity();
        bool found_nan = false;
        for (int i = 0; i < g.k && !found_nan; ++i)
          for (int j = 0; j < g.k && !found_nan; ++j) {
            const int h = p * g.stride + i, w = q * g.stride + j;
            if (h >= g.H || w >= g.W) continue;
            const size_t at = (size_t(plane) * g.H + h) * g.W + w;
            if (std::isnan(x[at])) found_nan = true, best_i = at, best = x[at];
            else if (x[at] > best || (i == 0 && j == 0)) best = x[at], best_i = at;
          }
        const size_t o = (size_t(plane) * P + p) * Q + q;
        if (found_nan) {
          ++nan_windows;
          EXPECT_TRUE(std::isnan(y[o])) << "window " << plane << "," << p << "," << q;
        } else {
          EXPECT_EQ(y[o], best) << "window " << plane << "," << p << "," << q;
        }
        ref_dx[best_i] += dy[o];
      }
  EXPECT_GT(nan_windows, 20);
  expect_close(dx, ref_dx, 1e-6, "maxpool dx with NaNs");
}
// 28x28 (ceil-clipped last column and row): the table; 57x57 and 75x75: the rows.
INSTANTIATE_TEST_SUITE_P(Paths, MaxPoolNaN,
                         ::testing::Values(pool_geom(1, 2, 57, 57, 3, 2, 0), pool_geom(2, 2, 28, 28, 3, 2, 0),
                                           pool_geom(1, 2, 75, 75, 3, 2, 0)));

TEST(AvgPool, ForwardNaiveAndBackwardFiniteDifferences) {
  const int N = 3, C = 5, HW = 13;
  auto x = random_vec<double>(size_t(C) * N * HW, 960);
  std::vector<double> y(size_t(N) * C);
  avgpool_forward<double>(N, C, HW, x.data(), y.data());
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) {
      double s = 0;
      for (int i = 0; i < HW; ++i) s += x[(size_t(c) * N + n) * HW + i];
      EXPECT_NEAR(y[size_t(n) * C + c], s / HW, 1e-14);  // batch-major output
    }
  const auto r = random_vec<double>(y.size(), 961);
  std::vector<double> dx(x.size(), 2.0);
  avgpool_backward<double>(N, C, HW, r.data(), dx.data());
  auto loss = [&]() {
    avgpool_forward<double>(N, C, HW, x.data(), y.data());
    double L = 0;
    for (size_t i = 0; i < y.size(); ++i) L += r[i] * y[i];
    return L;
  };
  check_grad("avgpool dx", x, dx, loss, 1e-6, 1e-6, 600);
}

TEST(AvgPool, FloatLargeThreaded) {
  const int N = 16, C = 1000, HW = 169;
  const auto x = random_vec<float>(size_t(C) * N * HW, 970);
  std::vector<float> y(size_t(N) * C);
  avgpool_forward<float>(N, C, HW, x.data(), y.data());
  for (int n = 0; n < N; n += 5)
    for (int c = 0; c < C; c += 37) {
      double s = 0;
      for (int i = 0; i < HW; ++i) s += x[(size_t(c) * N + n) * HW + i];
      EXPECT_NEAR(y[size_t(n) * C + c], s / HW, 1e-6);
    }
}

}  // namespace
}  // namespace sq
