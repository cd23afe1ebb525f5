// Shared helpers of the op tests (test_ops.cpp, test_fire.cpp, test_pool.cpp; the random data of
// test_cuda_ops.cpp and test_kernels_on_cpu.cpp): random data, naive reference convolutions, a
// central finite-difference gradient checker and workspace guards. The naive code here is deliberately independent of kernels/cpu (direct loops).
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/conv_internal.h"
#include "kernels/ops.h"

namespace sq::testing_ops {

// Uniform in [lo, hi), never exactly zero.
template <class T>
std::vector<T> random_vec(size_t n, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937_64 gen(seed * 0x9E3779B97F4A7C15ull + 12345);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<T> v(n);
  for (auto& e : v) {
    do e = static_cast<T>(dist(gen));
    while (e == T(0));
  }
  return v;
}

// Normal with standard deviation `scale`, drawn from gen in order.
template <class Gen>
std::vector<float> normal_vec(size_t n, Gen& gen, float scale = 1.0f) {
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = nd(gen);
  return v;
}

inline std::string describe(const ConvGeom& g) {
  return "N" + std::to_string(g.N) + " C" + std::to_string(g.C) + " " + std::to_string(g.H) +
         "x" + std::to_string(g.W) + " K" + std::to_string(g.K) + " " + std::to_string(g.R) + "x" +
         std::to_string(g.S) + "/" + std::to_string(g.stride) + " pad" + std::to_string(g.pad);
}

// |a - b| <= tol * max(1, |b|) element-wise; reports the first few failures.
template <class T>
void expect_close(const std::vector<T>& a, const std::vector<T>& b, double tol, const char* what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  int failures = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(double(a[i]) - double(b[i]));
    if (!(d <= tol * std::max(1.0, std::abs(double(b[i]))))) {
      ADD_FAILURE() << what << "[" << i << "]: " << a[i] << " vs " << b[i];
      if (++failures >= 5) return;
    }
  }
}

// Direct convolution: 7 nested loops, (C, N, H, W) in, (K, N, P, Q) out.
template <class T>
std::vector<T> naive_conv_forward(const ConvGeom& g, const T* x, const T* w, const T* b,
                                  bool relu) {
  const int P = g.P(), Q = g.Q();
  std::vector<T> y(size_t(g.K) * g.N * P * Q);
  for (int k = 0; k < g.K; ++k)
    for (int n = 0; n < g.N; ++n)
      for (int p = 0; p < P; ++p)
        for (int q = 0; q < Q; ++q) {
          double acc = b ? double(b[k]) : 0.0;
          for (int c = 0; c < g.C; ++c)
            for (int r = 0; r < g.R; ++r)
              for (int s = 0; s < g.S; ++s) {
                const int h = p * g.stride - g.pad + r, wi = q * g.stride - g.pad + s;
                if (h < 0 || h >= g.H || wi < 0 || wi >= g.W) continue;
                acc += double(w[((size_t(k) * g.C + c) * g.R + r) * g.S + s]) *
                       double(x[((size_t(c) * g.N + n) * g.H + h) * g.W + wi]);
              }
          if (relu && acc < 0) acc = 0;
          y[((size_t(k) * g.N + n) * P + p) * Q + q] = static_cast<T>(acc);
        }
  return y;
}

// Direct backward: dx = (written), dw +=, db += (each may be null).
template <class T>
void naive_conv_backward(const ConvGeom& g, const T* x, const T* w, const T* dz, T* dx, T* dw,
                         T* db) {
  const int P = g.P(), Q = g.Q();
  std::vector<double> dxa(size_t(g.C) * g.N * g.H * g.W, 0.0);
  std::vector<double> dwa(size_t(g.K) * g.C * g.R * g.S, 0.0);
  for (int k = 0; k < g.K; ++k)
    for (int n = 0; n < g.N; ++n)
      for (int p = 0; p < P; ++p)
        for (int q = 0; q < Q; ++q) {
          const double d = double(dz[((size_t(k) * g.N + n) * P + p) * Q + q]);
          if (db) db[k] += static_cast<T>(d);
          for (int c = 0; c < g.C; ++c)
            for (int r = 0; r < g.R; ++r)
              for (int s = 0; s < g.S; ++s) {
                const int h = p * g.stride - g.pad + r, wi = q * g.stride - g.pad + s;
                if (h < 0 || h >= g.H || wi < 0 || wi >= g.W) continue;
                const size_t iw = ((size_t(k) * g.C + c) * g.R + r) * g.S + s;
                const size_t ix = ((size_t(c) * g.N + n) * g.H + h) * g.W + wi;
                dwa[iw] += d * double(x[ix]);
                dxa[ix] += d * double(w[iw]);
              }
        }
  if (dx)
    for (size_t i = 0; i < dxa.size(); ++i) dx[i] = static_cast<T>(dxa[i]);
  if (dw)
    for (size_t i = 0; i < dwa.size(); ++i) dw[i] += static_cast<T>(dwa[i]);
}

// Central finite differences of loss() w.r.t. v (perturbed in place and restored) against the
// analytic gradient. Checks every element up to max_checks, else an evenly strided subset.
template <class F>
void check_grad(const char* what, std::vector<double>& v, const std::vector<double>& analytic,
                F&& loss, double eps = 1e-6, double tol = 1e-6, size_t max_checks = 600) {
  ASSERT_EQ(v.size(), analytic.size()) << what;
  const size_t step = std::max<size_t>(1, v.size() / max_checks);
  int failures = 0;
  double max_abs = 0;
  for (size_t i = (v.size() > max_checks ? 1 : 0); i < v.size(); i += step) {
    const double v0 = v[i];
    v[i] = v0 + eps;
    const double lp = loss();
    v[i] = v0 - eps;
    const double lm = loss();
    v[i] = v0;
    const double num = (lp - lm) / (2 * eps);
    max_abs = std::max(max_abs, std::abs(num));
    if (!(std::abs(num - analytic[i]) <= tol * std::max(1.0, std::abs(num)))) {
      ADD_FAILURE() << what << "[" << i << "]: finite difference " << num << " vs analytic "
                    << analytic[i];
      if (++failures >= 5) return;
    }
  }
  EXPECT_GT(max_abs, 1e-3) << what << ": gradient is trivially zero, the check proves nothing";
}

// A workspace with a sentinel tail to catch writes past the size the op declared.
constexpr size_t kGuard = 64;
template <class T>
std::vector<T> guarded(size_t n) {
  std::vector<T> v(n + kGuard, T(-12345.25));
  return v;
}
template <class T>
void expect_guard_intact(const std::vector<T>& v, size_t n) {
  for (size_t i = n; i < v.size(); ++i)
    if (v[i] != T(-12345.25)) {
      ADD_FAILURE() << "workspace overrun at element " << i << " of a declared " << n;
      return;
    }
}

// Sets the im2col chunk limit for a scope.
struct ChunkLimitGuard {
  size_t saved;
  explicit ChunkLimitGuard(size_t limit) : saved(cpu::conv_chunk_limit()) {
    cpu::set_conv_chunk_limit(limit);
  }
  ~ChunkLimitGuard() { cpu::set_conv_chunk_limit(saved); }
  ChunkLimitGuard(const ChunkLimitGuard&) = delete;
  ChunkLimitGuard& operator=(const ChunkLimitGuard&) = delete;
};

// A wgmma probe case (kernels/cuda/wgmma_probe.cuh), run under the emulator and on an sm_90 GPU:
// A (rows x K) and B (K x n) row-major, normal values made exact TF32 (the low 13 bits cleared) or
// BF16 (rounded to nearest even), and their double product with, for each element, the sum of
// |a b| over k (the bound of its fp32 accumulation error).
struct WgmmaProbeCase {
  std::vector<float> A, B;
  std::vector<double> product, magnitude;
};
template <class Gen>
WgmmaProbeCase wgmma_probe_case(bool bf16, int rows, int K, int n, Gen& gen) {
  auto exact = [bf16](float v) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    u = bf16 ? (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u : u & 0xFFFFE000u;
    std::memcpy(&v, &u, 4);
    return v;
  };
  WgmmaProbeCase c{normal_vec(size_t(rows) * K, gen), normal_vec(size_t(K) * n, gen), {}, {}};
  for (float& v : c.A) v = exact(v);
  for (float& v : c.B) v = exact(v);
  c.product.assign(size_t(rows) * n, 0.0);
  c.magnitude.assign(size_t(rows) * n, 0.0);
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < n; ++j)
      for (int k = 0; k < K; ++k) {
        const double p = double(c.A[size_t(r) * K + k]) * c.B[size_t(k) * n + j];
        c.product[size_t(r) * n + j] += p;
        c.magnitude[size_t(r) * n + j] += std::abs(p);
      }
  return c;
}
// Every element of D within 2^-20 of its |a b| sum of the product (fp32 accumulation of K terms);
// reports the first few that are not.
inline void expect_wgmma_probe(const std::vector<float>& D, const WgmmaProbeCase& c, int n, const std::string& what) {
  ASSERT_EQ(D.size(), c.product.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < D.size() && bad < 5; ++i)
    if (!(std::abs(D[i] - c.product[i]) <= 0x1p-20 * c.magnitude[i])) {
      ADD_FAILURE() << what << ": D(" << i / size_t(n) << ", " << i % size_t(n) << ") = " << D[i] << ", expected "
                    << c.product[i];
      ++bad;
    }
}

}  // namespace sq::testing_ops
