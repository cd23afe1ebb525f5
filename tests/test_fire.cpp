// Tests of the Fire module (kernels/ops.h): forward against three naive convolutions + ReLU +
// concat, backward against the composition of naive backward pieces, and central finite
// differences in double for the input and every parameter gradient.
#include <gtest/gtest.h>

#include <vector>

#include "kernels/ops.h"
#include "tests/ops_testing.h"

namespace sq {
namespace {

using testing_ops::check_grad;
using testing_ops::ChunkLimitGuard;
using testing_ops::expect_close;
using testing_ops::expect_guard_intact;
using testing_ops::guarded;
using testing_ops::naive_conv_backward;
using testing_ops::naive_conv_forward;
using testing_ops::random_vec;

FireGeom fire_geom(int N, int C, int H, int W, int S, int E1, int E3) {
  FireGeom g;
  g.N = N, g.C = C, g.H = H, g.W = W, g.S = S, g.E1 = E1, g.E3 = E3;
  return g;
}

// Parameter offsets in a flat buffer: ws, bs, w1, b1, w3, b3.
struct Layout {
  size_t ws, bs, w1, b1, w3, b3, total;
  explicit Layout(const FireGeom& g) {
    ws = 0;
    bs = ws + size_t(g.S) * g.C;
    w1 = bs + g.S;
    b1 = w1 + size_t(g.E1) * g.S;
    w3 = b1 + g.E1;
    b3 = w3 + size_t(g.E3) * g.S * 9;
    total = b3 + g.E3;
  }
  template <class T>
  FireParams<T> view(T* p) const {
    return {p + ws, p + bs, p + w1, p + b1, p + w3, p + b3};
  }
};

// Naive reference: (s, y) of the Fire module.
template <class T>
void naive_fire_forward(const FireGeom& g, const Layout& L, const std::vector<T>& x,
                        const std::vector<T>& p, std::vector<T>& s, std::vector<T>& y) {
  s = naive_conv_forward<T>(g.squeeze(), x.data(), &p[L.ws], &p[L.bs], true);
  const auto y1 = naive_conv_forward<T>(g.expand1(), s.data(), &p[L.w1], &p[L.b1], true);
  const auto y3 = naive_conv_forward<T>(g.expand3(), s.data(), &p[L.w3], &p[L.b3], true);
  y = y1;  // channel-major concat: expand1's channels, then expand3's
  y.insert(y.end(), y3.begin(), y3.end());
}

TEST(Fire, ForwardMatchesNaiveConcat) {
  uint64_t seed = 500;
  for (const FireGeom& g : {fire_geom(2, 5, 5, 4, 3, 4, 4), fire_geom(3, 7, 7, 7, 4, 5, 6),
                            fire_geom(1, 3, 1, 1, 2, 2, 3), fire_geom(4, 32, 17, 17, 16, 32, 32)}) {
    const Layout L(g);
    const auto x = random_vec<float>(size_t(g.C) * g.N * g.H * g.W, seed++);
    const auto p = random_vec<float>(L.total, seed++);
    std::vector<float> s_ref, y_ref;
    naive_fire_forward(g, L, x, p, s_ref, y_ref);
    std::vector<float> s(s_ref.size(), 9.f), y(y_ref.size(), 9.f);
    auto ws = guarded<float>(fire_workspace(g));
    fire_forward<float>(g, x.data(), L.view<const float>(p.data()), s.data(), y.data(), ws.data());
    expect_guard_intact(ws, fire_workspace(g));
    expect_close(s, s_ref, 1e-5, "s");
    expect_close(y, y_ref, 1e-5, "y");
  }
}

// Backward against the naive pieces composed by hand: dz = dy * (y > 0) per slice; ds = the
// sum of the two expand backward-data results, masked by s > 0; dx from the squeeze conv.
void check_backward_vs_naive(const FireGeom& g, uint64_t seed, bool accumulate) {
  const Layout L(g);
  const size_t NHW = size_t(g.N) * g.H * g.W;
  const auto x = random_vec<float>(size_t(g.C) * NHW, seed);
  const auto p = random_vec<float>(L.total, seed + 1);
  const auto dy = random_vec<float>(size_t(g.E1 + g.E3) * NHW, seed + 2);
  std::vector<float> s, y;
  naive_fire_forward(g, L, x, p, s, y);

  auto grad_ref = random_vec<float>(L.total, seed + 3);  // parameter gradients accumulate
  auto dx_ref = random_vec<float>(size_t(g.C) * NHW, seed + 4);
  auto grad = grad_ref;
  auto dx = dx_ref;
  if (!accumulate) std::fill(dx_ref.begin(), dx_ref.end(), 0.f);

  std::vector<float> dz(dy.size());
  for (size_t i = 0; i < dz.size(); ++i) dz[i] = y[i] > 0 ? dy[i] : 0.f;
  std::vector<float> ds1(size_t(g.S) * NHW), ds3(ds1.size()), ds(ds1.size()), dxn(dx.size());
  naive_conv_backward<float>(g.expand1(), s.data(), &p[L.w1], dz.data(), ds1.data(),
                             &grad_ref[L.w1], &grad_ref[L.b1]);
  naive_conv_backward<float>(g.expand3(), s.data(), &p[L.w3], dz.data() + g.E1 * NHW, ds3.data(),
                             &grad_ref[L.w3], &grad_ref[L.b3]);
  for (size_t i = 0; i < ds.size(); ++i) ds[i] = s[i] > 0 ? ds1[i] + ds3[i] : 0.f;
  naive_conv_backward<float>(g.squeeze(), x.data(), &p[L.ws], ds.data(), dxn.data(),
                             &grad_ref[L.ws], &grad_ref[L.bs]);
  for (size_t i = 0; i < dx_ref.size(); ++i) dx_ref[i] += dxn[i];

  auto ws = guarded<float>(fire_workspace(g));
  fire_backward<float>(g, x.data(), L.view<const float>(p.data()), s.data(), y.data(), dy.data(),
                       L.view<float>(grad.data()), dx.data(), accumulate, ws.data());
  expect_guard_intact(ws, fire_workspace(g));
  expect_close(dx, dx_ref, 1e-5, "dx");
  expect_close(grad, grad_ref, 1e-4, "param grads");
}

TEST(Fire, BackwardMatchesNaiveComposition) {
  check_backward_vs_naive(fire_geom(2, 5, 5, 4, 3, 4, 4), 600, false);
  check_backward_vs_naive(fire_geom(3, 7, 7, 7, 4, 5, 6), 610, true);
  check_backward_vs_naive(fire_geom(4, 32, 17, 17, 16, 32, 32), 620, false);
}

TEST(Fire, BackwardMatchesNaiveWithChunkedExpand3) {
  const FireGeom g = fire_geom(3, 6, 6, 5, 4, 3, 5);
  ChunkLimitGuard guard(size_t(g.S) * 9 * g.H * g.W * 2);  // 2 images per chunk: 2 + 1
  check_backward_vs_naive(g, 630, true);
}

// pct_3x3 = 0 or 1 gives Fire modules with only one expand branch (E3 = 0 resp. E1 = 0).
TEST(Fire, OneEmptyExpandBranch) {
  uint64_t seed = 640;
  for (const FireGeom& g : {fire_geom(2, 5, 5, 4, 3, 0, 6), fire_geom(2, 5, 5, 4, 3, 6, 0)}) {
    const Layout L(g);
    const auto x = random_vec<float>(size_t(g.C) * g.N * g.H * g.W, seed++);
    const auto p = random_vec<float>(L.total, seed++);
    std::vector<float> s_ref, y_ref;
    naive_fire_forward(g, L, x, p, s_ref, y_ref);
    std::vector<float> s(s_ref.size(), 9.f), y(y_ref.size(), 9.f);
    auto ws = guarded<float>(fire_workspace(g));
    fire_forward<float>(g, x.data(), L.view<const float>(p.data()), s.data(), y.data(), ws.data());
    expect_guard_intact(ws, fire_workspace(g));
    expect_close(y, y_ref, 1e-5, "y");
    check_backward_vs_naive(g, seed++, false);
    check_backward_vs_naive(g, seed++, true);
  }
}

TEST(Fire, FiniteDifferencesDouble) {
  const FireGeom g = fire_geom(2, 5, 5, 4, 3, 4, 4);
  const Layout L(g);
  const size_t NHW = size_t(g.N) * g.H * g.W;
  auto x = random_vec<double>(size_t(g.C) * NHW, 700);
  auto p = random_vec<double>(L.total, 701);
  const auto r = random_vec<double>(size_t(g.E1 + g.E3) * NHW, 702);
  std::vector<double> s(size_t(g.S) * NHW), y(r.size()), ws(fire_workspace(g));
  auto loss = [&]() {
    fire_forward<double>(g, x.data(), L.view<const double>(p.data()), s.data(), y.data(),
                         ws.data());
    double acc = 0;
    for (size_t i = 0; i < y.size(); ++i) acc += r[i] * y[i];
    return acc;
  };
  loss();
  size_t active = 0;
  for (double v : s) active += v > 0;
  ASSERT_GT(active, 0u);  // the gradient reaches the squeeze conv
  ASSERT_LT(active, s.size());

  std::vector<double> grad(L.total, 0.0), dx(x.size(), 4.0);
  fire_backward<double>(g, x.data(), L.view<const double>(p.data()), s.data(), y.data(), r.data(),
                        L.view<double>(grad.data()), dx.data(), false, ws.data());
  check_grad("fire dx", x, dx, loss);
  check_grad("fire params", p, grad, loss);

  // accumulate = true adds to dx; null dx leaves parameter gradients the same.
  auto dx_acc = random_vec<double>(x.size(), 703);
  const auto dx0 = dx_acc;
  std::vector<double> grad2(L.total, 0.0);
  fire_backward<double>(g, x.data(), L.view<const double>(p.data()), s.data(), y.data(), r.data(),
                        L.view<double>(grad2.data()), dx_acc.data(), true, ws.data());
  for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(dx_acc[i], dx0[i] + dx[i], 1e-12) << i;
  std::vector<double> grad3(L.total, 0.0);
  fire_backward<double>(g, x.data(), L.view<const double>(p.data()), s.data(), y.data(), r.data(),
                        L.view<double>(grad3.data()), nullptr, false, ws.data());
  expect_close(grad3, grad, 1e-12, "grads with null dx");
  expect_close(grad2, grad, 1e-12, "grads with accumulate");
}

}  // namespace
}  // namespace sq
