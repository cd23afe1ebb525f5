// Every CUDA kernel against the CPU op (the reference, in double where rounding matters) on fresh
// random inputs, at every shape squeezenet1.0, squeezenet1.1 and the small-image configuration
// use, with odd batch sizes. Skips, saying why, when there is no GPU or no CUDA in the build.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "comm/communicator.h"
#include "core/compress.h"
#include "core/config.h"
#include "core/data.h"
#include "core/error.h"
#include "core/model.h"
#include "core/rng.h"
#include "core/trainer.h"
#include "kernels/ops.h"
#include "tests/ops_testing.h"

#ifdef SQUEEZE_HAVE_CUDA
#include "core/cuda_model.h"
#include "core/device_step.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/device_buffer.h"
#endif

using namespace sq;

#ifndef SQUEEZE_HAVE_CUDA

TEST(CudaOps, Skipped) { GTEST_SKIP() << "built without CUDA (no nvcc found by CMake)"; }

#else

namespace {

// Skips the test when no GPU can be used, with the runtime's reason.
#define REQUIRE_GPU()                                                          \
  do {                                                                         \
    std::string why_;                                                          \
    if (cuda::device_count(&why_) == 0) GTEST_SKIP() << "no GPU: " << why_;    \
    cuda::use_device(0);                                                       \
  } while (0)

template <class T>
using Dev = cuda::DeviceBuffer<T>;

std::mt19937& rng() {
  static std::mt19937 r(20261126);
  return r;
}
std::vector<float> randn(size_t n, float scale = 1.0f) {
  return testing_ops::normal_vec(n, rng(), scale);
}
std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// GPU float result against the double reference: norm-wise relative error and the largest
// element error relative to the reference's largest magnitude.
void expect_close(const std::vector<float>& got, const std::vector<double>& ref, double tol,
                  const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  double d2 = 0, r2 = 0, dmax = 0, rmax = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = double(got[i]) - ref[i];
    ASSERT_FALSE(std::isnan(got[i])) << what << ": NaN at " << i;
    d2 += d * d;
    r2 += ref[i] * ref[i];
    dmax = std::max(dmax, std::abs(d));
    rmax = std::max(rmax, std::abs(ref[i]));
  }
  const double rel = r2 > 0 ? std::sqrt(d2 / r2) : std::sqrt(d2);
  EXPECT_LE(rel, tol) << what << ": norm-relative error";
  EXPECT_LE(dmax, 10 * tol * std::max(rmax, 1e-30)) << what << ": largest element error";
}

void expect_equal(const std::vector<float>& got, const std::vector<float>& ref,
                  const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < ref.size(); ++i)
    if (std::memcmp(&got[i], &ref[i], sizeof(float)) != 0 && !(got[i] == ref[i]))
      if (bad++ == 0) first = i;
  EXPECT_EQ(bad, 0u) << what << ": first difference at " << first << ": " << got[first]
                     << " vs " << ref[first];
}

// The shapes the model family uses, from the models themselves.
struct Shapes {
  std::vector<std::pair<std::string, ConvGeom>> convs;
  std::vector<std::pair<std::string, FireGeom>> fires;
  std::vector<std::pair<std::string, PoolGeom>> pools;
  std::vector<std::tuple<std::string, int, int, int>> avgpools;  // name, N, C, HW
  std::vector<std::tuple<std::string, int, int>> losses;         // name, N, K
};

Shapes model_shapes() {
  Shapes sh;
  std::set<std::string> seen;
  auto add_model = [&](const std::string& tag, ModelConfig c, int N) {
    Model m(c, N);
    for (const Layer& l : m.layers()) {
      const std::string name = tag + " " + l.name + " N=" + std::to_string(N);
      auto once = [&](const std::string& key) { return seen.insert(key).second; };
      if (l.kind == LayerKind::kConv) {
        ConvGeom g = l.conv;
        g.N = N;
        sh.convs.push_back({name, g});
      } else if (l.kind == LayerKind::kFire) {
        FireGeom f = l.fire;
        f.N = N;
        sh.fires.push_back({name, f});
        if (l.bypass == Bypass::kComplex) {
          ConvGeom g = l.bypass_conv;
          g.N = N;
          sh.convs.push_back({name + " bypass", g});
        }
      } else if (l.kind == LayerKind::kMaxPool) {
        PoolGeom g = l.pool;
        g.N = N;
        sh.pools.push_back({name, g});
      } else if (l.kind == LayerKind::kAvgPool) {
        const ActShape& a = m.acts()[l.in];
        if (once("avg" + std::to_string(N) + std::to_string(a.c) + std::to_string(a.h)))
          sh.avgpools.push_back({name, N, a.c, a.h * a.w});
      }
    }
    sh.losses.push_back({tag, N, c.num_classes});
  };
  for (int N : {1, 3}) {
    add_model("squeezenet1.0", preset("squeezenet1.0"), N);
    add_model("squeezenet1.1", preset("squeezenet1.1"), N);
  }
  // conv1 of both models at batch 4 as well: dz's rows are 16-byte aligned there (N P Q a multiple
  // of 4), so on sm_90a the TF32 weight gradient takes the wgmma row kernel, which the odd batches
  // above leave to the row kernel.
  for (const char* tag : {"squeezenet1.0", "squeezenet1.1"}) {
    const Model m(preset(tag), 4);
    for (const Layer& l : m.layers())
      if (l.kind == LayerKind::kConv) {
        ConvGeom g = l.conv;
        g.N = 4;
        sh.convs.push_back({std::string(tag) + " " + l.name + " N=4", g});
        break;
      }
  }
  ModelConfig small = preset("squeezenet1.0");
  small.stem = Stem::kSmall;
  small.in_c = 1, small.in_h = 28, small.in_w = 28, small.num_classes = 10;
  small.bypass = Bypass::kComplex;
  for (int N : {5, 32}) add_model("fmnist complex", small, N);
  ModelConfig cifar = preset("squeezenet1.1");
  cifar.stem = Stem::kSmall;
  cifar.in_c = 3, cifar.in_h = 32, cifar.in_w = 32, cifar.num_classes = 10;
  add_model("cifar10 1.1", cifar, 7);
  return sh;
}

const Shapes& shapes() {
  static const Shapes s = model_shapes();
  return s;
}

constexpr double kTol = 2e-5;  // fp32 sums of up to ~1e5 terms against the double reference

// Every test starts with the own fp32 convolution, whatever an earlier test left after a failure.
struct ResetConvMode : ::testing::EmptyTestEventListener {
  void OnTestStart(const ::testing::TestInfo&) override {
    cuda::set_conv_impl(cuda::ConvImpl::kOwn);
    cuda::set_conv_math(cuda::ConvMath::kFp32);
  }
};
const bool g_reset_registered = [] {
  ::testing::UnitTest::GetInstance()->listeners().Append(new ResetConvMode);
  return true;
}();

}  // namespace

// The wgmma probe (kernels/cuda/wgmma_probe.cuh) on the device: the same cases the emulator runs in
// SimtHost.WgmmaProbeGivesTheProduct (test_kernels_on_cpu), against the double product. This is
// what says the project reads wgmma's operand layouts (wgmma.cuh) as the hardware does; if it
// fails, the emulator's wgmma (tests/simt_host.h) shares the misreading and no kernel built on
// wgmma.cuh may be trusted.
TEST(CudaOps, WgmmaProbeGivesTheProduct) {
  REQUIRE_GPU();
  if (!cuda::wgmma_available()) GTEST_SKIP() << "no wgmma in this build's code for this GPU (sm_90a only)";
  for (bool bf16 : {false, true})
    for (int n : {64, 96, 128})
      for (int layout : {0, 1})
        for (int groups : {1, 2}) {
          const int K = cuda::wgmma_probe_depth(bf16);
          const testing_ops::WgmmaProbeCase c = testing_ops::wgmma_probe_case(bf16, 64 * groups, K, n, rng());
          Dev<float> A(c.A), B(c.B), D(size_t(64 * groups) * size_t(n));
          cuda::wgmma_probe(bf16, n, layout, groups, A.get(), B.get(), D.get(), nullptr);
          SQ_CUDA(cudaDeviceSynchronize());
          testing_ops::expect_wgmma_probe(D.download(), c, n,
                                          std::string(bf16 ? "BF16" : "TF32") + " N " + std::to_string(n) + ", layout " +
                                              std::to_string(layout) + ", " + std::to_string(groups) + " warpgroup(s)");
        }
}

TEST(CudaOps, Convolution) {
  REQUIRE_GPU();
  for (const auto& [name, g] : shapes().convs) {
    SCOPED_TRACE(name);
    const size_t nx = size_t(g.C) * g.N * g.H * g.W, nw = size_t(g.K) * g.C * g.R * g.S;
    const size_t ny = size_t(g.K) * g.N * g.P() * g.Q();
    const std::vector<float> x = randn(nx), w = randn(nw, 0.1f), b = randn(g.K, 0.1f);
    const std::vector<float> dz = randn(ny), dw0 = randn(nw), db0 = randn(g.K), dx0 = randn(nx);
    // CPU reference in double.
    std::vector<double> yd(ny), ws(conv_workspace(g) + 1);
    conv_forward<double>(g, to_double(x).data(), to_double(w).data(), to_double(b).data(),
                         yd.data(), true, ws.data());
    std::vector<double> dwd = to_double(dw0), dbd = to_double(db0), dxd = to_double(dx0);
    conv_backward<double>(g, to_double(x).data(), to_double(w).data(), to_double(dz).data(),
                          dwd.data(), dbd.data(), dxd.data(), /*accumulate=*/true, ws.data());
    // GPU.
    Dev<float> X(x), Wt(w), B(b), Y(ny), DZ(dz), DW(dw0), DB(db0), DX(dx0);
    Dev<float> WS(cuda::conv_backward_workspace(g));
    cuda::conv_forward(g, X.get(), Wt.get(), B.get(), Y.get(), true, nullptr);
    cuda::conv_backward(g, X.get(), Wt.get(), DZ.get(), DW.get(), DB.get(), DX.get(), true, WS.get(), nullptr);
    expect_close(Y.download(), yd, kTol, "forward (bias, ReLU)");
    expect_close(DW.download(), dwd, kTol, "weight gradient (accumulated)");
    expect_close(DB.download(), dbd, kTol, "bias gradient (accumulated)");
    expect_close(DX.download(), dxd, kTol, "input gradient (accumulated)");
    // Written (not accumulated) input gradient, no bias, no ReLU.
    std::vector<double> yd2(ny), dxd2(nx), dwd2(nw, 0.0);
    conv_forward<double>(g, to_double(x).data(), to_double(w).data(), nullptr, yd2.data(), false,
                         ws.data());
    conv_backward<double>(g, to_double(x).data(), to_double(w).data(), to_double(dz).data(),
                          dwd2.data(), nullptr, dxd2.data(), false, ws.data());
    Dev<float> Y2(ny), DX2(nx), DW2(std::vector<float>(nw, 0.0f));
    cuda::conv_forward(g, X.get(), Wt.get(), nullptr, Y2.get(), false, nullptr);
    cuda::conv_backward(g, X.get(), Wt.get(), DZ.get(), DW2.get(), nullptr, DX2.get(), false, WS.get(), nullptr);
    expect_close(Y2.download(), yd2, kTol, "forward (no bias, no ReLU)");
    expect_close(DX2.download(), dxd2, kTol, "input gradient (written)");
    expect_close(DW2.download(), dwd2, kTol, "weight gradient (from zero)");
  }
}

// cuDNN, the second oracle: the same convolutions, forward and both backward products.
TEST(CudaOps, CudnnAgreesWithTheOwnConvolution) {
  REQUIRE_GPU();
  if (!cuda::cudnn_built()) GTEST_SKIP() << "built without cuDNN";
  for (const auto& [name, g] : shapes().convs) {
    SCOPED_TRACE(name);
    const size_t nx = size_t(g.C) * g.N * g.H * g.W, nw = size_t(g.K) * g.C * g.R * g.S;
    const size_t ny = size_t(g.K) * g.N * g.P() * g.Q();
    const std::vector<float> x = randn(nx), w = randn(nw, 0.1f), b = randn(g.K, 0.1f);
    const std::vector<float> dz = randn(ny), dw0 = randn(nw), db0 = randn(g.K), dx0 = randn(nx);
    std::vector<std::vector<float>> out[2];
    try {  // a shape cuDNN refuses fails here, named, and the others still run
      for (int impl = 0; impl < 2; ++impl) {
        cuda::set_conv_impl(impl ? cuda::ConvImpl::kCudnn : cuda::ConvImpl::kOwn);
        Dev<float> X(x), Wt(w), B(b), Y(ny), DZ(dz), DW(dw0), DB(db0), DX(dx0);
        Dev<float> WS(cuda::conv_backward_workspace(g));
        cuda::conv_forward(g, X.get(), Wt.get(), B.get(), Y.get(), true, nullptr);
        cuda::conv_backward(g, X.get(), Wt.get(), DZ.get(), DW.get(), DB.get(), DX.get(), impl == 1, WS.get(), nullptr);
        out[impl] = {Y.download(), DW.download(), DB.download(), DX.download()};
      }
    } catch (const Error& e) {
      cuda::set_conv_impl(cuda::ConvImpl::kOwn);
      ADD_FAILURE() << e.what();
      continue;
    }
    cuda::set_conv_impl(cuda::ConvImpl::kOwn);
    // Own: dx written; cuDNN: dx accumulated onto dx0. Bring the own result to the same sum.
    for (size_t i = 0; i < nx; ++i) out[0][3][i] += dx0[i];
    const char* what[4] = {"forward", "weight gradient", "bias gradient", "input gradient"};
    for (int k = 0; k < 4; ++k) expect_close(out[1][k], to_double(out[0][k]), kTol, what[k]);
  }
}

// cuDNN after the stream of an earlier call is gone (a training step's stream dies with the
// step): a new geometry's algorithm search must not run on the dead stream. Seen on the H200 as
// INTERNAL_ERROR from every search of the next configuration, and once as a crash.
TEST(CudaOps, CudnnOutlivesTheStreamsItRanOn) {
  REQUIRE_GPU();
  if (!cuda::cudnn_built()) GTEST_SKIP() << "built without cuDNN";
  cuda::set_conv_impl(cuda::ConvImpl::kCudnn);
  for (int round = 0; round < 2; ++round) {
    ConvGeom g{3 + round, 8, 12, 12, 16, 3, 3, 1, 1};  // a new geometry each round
    const size_t nx = size_t(g.C) * g.N * g.H * g.W, nw = size_t(g.K) * g.C * g.R * g.S;
    const size_t ny = size_t(g.K) * g.N * g.P() * g.Q();
    Dev<float> X(randn(nx)), Wt(randn(nw, 0.1f)), Y(ny), DZ(randn(ny)), DW(nw), DX(nx);
    cudaStream_t st;
    SQ_CUDA(cudaStreamCreate(&st));
    cuda::conv_forward(g, X.get(), Wt.get(), nullptr, Y.get(), false, st);
    cuda::conv_backward(g, X.get(), Wt.get(), DZ.get(), DW.get(), nullptr, DX.get(), false, nullptr, st);
    SQ_CUDA(cudaStreamSynchronize(st));
    SQ_CUDA(cudaStreamDestroy(st));
  }
  cuda::set_conv_impl(cuda::ConvImpl::kOwn);
}

// cuDNN's BF16 baseline (bench_gpu's "cuDNN bf16" column) computes the convolution it is timed
// as: on BF16 NHWC tensors, against the double reference on the same BF16 operands. Its outputs
// are BF16 (2^-9 relative each), summed in fp32: 5e-3 norm-wise.
uint16_t bf16_bits(float v) {
  const float r = round_operand(v, OperandRounding::kBf16);
  uint32_t u;
  std::memcpy(&u, &r, 4);
  return uint16_t(u >> 16);
}
float bf16_value(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float v;
  std::memcpy(&v, &u, 4);
  return v;
}
// fn(channel-major index, NHWC index) of every element of a (C, N, HW) tensor: the layouts'
// conversions, channel-major floats to NHWC BF16 bits and back.
template <class Fn>
void each_cnhw_nhwc(int C, int N, int HW, Fn fn) {
  for (int c = 0; c < C; ++c)
    for (int n = 0; n < N; ++n)
      for (int i = 0; i < HW; ++i) fn((size_t(c) * N + n) * HW + i, (size_t(n) * HW + i) * C + c);
}
std::vector<uint16_t> cnhw_to_nhwc_bf16(const std::vector<float>& v, int C, int N, int HW) {
  std::vector<uint16_t> out(v.size());
  each_cnhw_nhwc(C, N, HW, [&](size_t cm, size_t nhwc) { out[nhwc] = bf16_bits(v[cm]); });
  return out;
}
std::vector<float> nhwc_bf16_to_cnhw(const std::vector<uint16_t>& v, int C, int N, int HW) {
  std::vector<float> out(v.size());
  each_cnhw_nhwc(C, N, HW, [&](size_t cm, size_t nhwc) { out[cm] = bf16_value(v[nhwc]); });
  return out;
}

TEST(CudaOps, CudnnBf16BaselineComputesTheConvolution) {
  REQUIRE_GPU();
  if (!cuda::cudnn_built()) GTEST_SKIP() << "built without cuDNN";
  constexpr double kBf16Out = 5e-3;
  for (const auto& [name, g] : shapes().convs) {
    SCOPED_TRACE(name);
    const int HW = g.H * g.W, PQ = g.P() * g.Q(), RS = g.R * g.S;
    const size_t nx = size_t(g.C) * g.N * HW, nw = size_t(g.K) * g.C * RS, ny = size_t(g.K) * g.N * PQ;
    auto rounded = [](std::vector<float> v) {
      for (float& e : v) e = round_operand(e, OperandRounding::kBf16);
      return v;
    };
    const std::vector<float> x = rounded(randn(nx)), w = rounded(randn(nw, 0.1f)), dz = rounded(randn(ny)),
                             dx0 = rounded(randn(nx));
    std::vector<double> yd(ny), dwd(nw, 0.0), dxd = to_double(dx0), ws(conv_workspace(g) + 1);
    conv_forward<double>(g, to_double(x).data(), to_double(w).data(), nullptr, yd.data(), false, ws.data());
    conv_backward<double>(g, to_double(x).data(), to_double(w).data(), to_double(dz).data(), dwd.data(),
                          nullptr, dxd.data(), /*accumulate=*/true, ws.data());
    // (K, C, R, S) as (K, C, RS, 1) reordered to (K, RS, C): a filter is an "image" of C channels.
    std::vector<uint16_t> wk(nw);
    for (int k = 0; k < g.K; ++k)
      for (int c = 0; c < g.C; ++c)
        for (int rs = 0; rs < RS; ++rs) wk[(size_t(k) * RS + rs) * g.C + c] = bf16_bits(w[(size_t(k) * g.C + c) * RS + rs]);
    Dev<uint16_t> X(cnhw_to_nhwc_bf16(x, g.C, g.N, HW)), Wt(wk), Y(ny), DZ(cnhw_to_nhwc_bf16(dz, g.K, g.N, PQ)),
        DW(nw), DX(cnhw_to_nhwc_bf16(dx0, g.C, g.N, HW));
    try {
      cuda::cudnn_bf16_forward(g, X.get(), Wt.get(), Y.get(), nullptr);
      cuda::cudnn_bf16_backward(g, X.get(), Wt.get(), DZ.get(), DW.get(), DX.get(), /*accumulate=*/true, nullptr);
    } catch (const Error& e) {
      // cuDNN may have no BF16 algorithm for a stem of 1 or 3 channels (the benchmark then says
      // "failed" there); every channel count of 8k must run. Any other error fails the shape.
      const bool refused = std::string(e.what()).find("cuDNN has no BF16") != std::string::npos;
      if (refused && (g.C % 8 || g.K % 8)) {
        std::printf("  (%s: %s)\n", name.c_str(), e.what());
      } else {
        ADD_FAILURE() << e.what();
      }
      continue;
    }
    expect_close(nhwc_bf16_to_cnhw(Y.download(), g.K, g.N, PQ), yd, kBf16Out, "forward");
    expect_close(nhwc_bf16_to_cnhw(DX.download(), g.C, g.N, HW), dxd, kBf16Out, "input gradient (accumulated)");
    const std::vector<uint16_t> dwk = DW.download();
    std::vector<float> dw(nw);
    for (int k = 0; k < g.K; ++k)
      for (int c = 0; c < g.C; ++c)
        for (int rs = 0; rs < RS; ++rs) dw[(size_t(k) * g.C + c) * RS + rs] = bf16_value(dwk[(size_t(k) * RS + rs) * g.C + c]);
    expect_close(dw, dwd, kBf16Out, "weight gradient");
  }
}

// The tensor-core multiply (TF32 / BF16 operands, fp32 accumulation) against the double
// reference, with the operand rounding's expected error: about 2^-11 (TF32) and 2^-8 (BF16)
// relative per product, so 3e-3 and 2e-2 norm-wise. The bias gradient, dz's row sums inside the
// weight gradient's mma kernel (fp32 as copied, not rounded), is held to the fp32 tolerance,
// accumulated onto random values as the training step does.
void expect_tensor_core_conv_close(const std::vector<std::pair<std::string, ConvGeom>>& convs) {
  for (auto [math, tol] : {std::pair<cuda::ConvMath, double>{cuda::ConvMath::kTf32, 3e-3},
                           {cuda::ConvMath::kBf16, 2e-2}}) {
    cuda::set_conv_math(math);
    for (const auto& [name, g] : convs) {
      SCOPED_TRACE(name + (math == cuda::ConvMath::kTf32 ? " tf32" : " bf16"));
      const size_t nx = size_t(g.C) * g.N * g.H * g.W, nw = size_t(g.K) * g.C * g.R * g.S;
      const size_t ny = size_t(g.K) * g.N * g.P() * g.Q();
      const std::vector<float> x = randn(nx), w = randn(nw, 0.1f), dz = randn(ny), db0 = randn(g.K);
      std::vector<double> yd(ny), dwd(nw, 0.0), dbd = to_double(db0), dxd(nx), ws(conv_workspace(g) + 1);
      conv_forward<double>(g, to_double(x).data(), to_double(w).data(), nullptr, yd.data(), false,
                           ws.data());
      conv_backward<double>(g, to_double(x).data(), to_double(w).data(), to_double(dz).data(),
                            dwd.data(), dbd.data(), dxd.data(), false, ws.data());
      Dev<float> X(x), Wt(w), Y(ny), DZ(dz), DW(std::vector<float>(nw, 0.0f)), DB(db0), DX(nx);
      Dev<float> WS(std::max(cuda::conv_backward_workspace(g), cuda::conv_forward_workspace(g)));
      cuda::conv_forward(g, X.get(), Wt.get(), nullptr, Y.get(), false, nullptr, WS.get());
      cuda::conv_backward(g, X.get(), Wt.get(), DZ.get(), DW.get(), DB.get(), DX.get(), false, WS.get(), nullptr);
      expect_close(Y.download(), yd, tol, "forward");
      expect_close(DW.download(), dwd, tol, "weight gradient");
      expect_close(DB.download(), dbd, kTol, "bias gradient (accumulated, fp32 sums)");
      expect_close(DX.download(), dxd, tol, "input gradient");
    }
  }
  cuda::set_conv_math(cuda::ConvMath::kFp32);
}

// Every convolution shape of the models.
TEST(CudaOps, TensorCoreConvolution) {
  REQUIRE_GPU();
  expect_tensor_core_conv_close(shapes().convs);
}

// Small convolutions whose products take each of the mma kernel's six tiles (by igemm_mma.cuh's
// mma_tile), each of the window kernel's three (win_tile), both of the weight gradient's window
// tiles (winw_tile) and the row kernel: the 3x3 16 -> 128 over 162 pixels (not a multiple of 4: no window) takes
// 128x64 (forward, weights) and 16x128 (data), the 1x1 32 -> 48 takes 64x128 (forward), 32x128
// (data) and 64x64 (weights), the 1x1 384 -> 512 over 512 pixels the one-block 128x128 (all three,
// on GPUs that allow it: sm_80, sm_90); over 324 pixels, the 3x3 16 -> 64 takes the window's 64x128
// (forward) and 16x256 (data, in 2 split-K slices), the 3x3 32 -> 32 its 32x256 (both), their
// weight gradients 64 rows, the 3x3 16 -> 128's 128 rows; the three stride-2 first convolutions
// take the row kernel's forward with 3, 2 and 1 fragments a warp row (rows_fm), and at batch 4 the
// 7x7's weight gradient the wgmma row kernel's three warpgroups (Kd a multiple of 4), at batch 36 the
// 3x3's its one warpgroup in more slices than SMs (288 rows: over conv.cu's workspace for the row
// kernel's 256). Where wgmma is
// available (sm_90a), the window products and weight gradients take the wgmma window kernels
// instead (TensorCoreProductsTakeTheirKernels), the 1x1 384 -> 512's forward and input gradient
// the wgmma kernel, and the first convolutions' forwards the wgmma row kernel (96 and 64 filters).
// Small enough for compute-sanitizer's racecheck (gpu_check.sh
// sanitize), which the model shapes are not.
TEST(CudaOps, TensorCoreConvolutionEveryTileSmall) {
  REQUIRE_GPU();
  expect_tensor_core_conv_close({{"3x3 16->128", ConvGeom{2, 16, 9, 9, 128, 3, 3, 1, 1}},
                                 {"1x1 32->48", ConvGeom{3, 32, 7, 7, 48, 1, 1, 1, 0}},
                                 {"1x1 384->512, wide", ConvGeom{2, 384, 16, 16, 512, 1, 1, 1, 0}},
                                 {"3x3 16->64, window", ConvGeom{4, 16, 9, 9, 64, 3, 3, 1, 1}},
                                 {"3x3 32->32, window", ConvGeom{4, 32, 9, 9, 32, 3, 3, 1, 1}},
                                 {"3x3 16->128, window", ConvGeom{4, 16, 9, 9, 128, 3, 3, 1, 1}},
                                 {"7x7/2 3->96, rows", ConvGeom{2, 3, 23, 23, 96, 7, 7, 2, 0}},
                                 {"7x7/2 3->96, rows, batch 4", ConvGeom{4, 3, 23, 23, 96, 7, 7, 2, 0}},
                                 {"3x3/2 3->64, rows", ConvGeom{3, 3, 17, 17, 64, 3, 3, 2, 0}},
                                 {"3x3/2 3->64, rows, batch 36", ConvGeom{36, 3, 17, 17, 64, 3, 3, 2, 0}},
                                 {"5x5/2 1->16, rows", ConvGeom{2, 1, 12, 16, 16, 5, 5, 2, 0}}});
}

// The products of the small convolutions above take the kernels and tiles their comment names:
// conv.cu's route and tile rules, read back from its route log (log_conv_routes) after one TF32
// forward (with scratch, and again without) and backward each.
TEST(CudaOps, TensorCoreProductsTakeTheirKernels) {
  REQUIRE_GPU();
  FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  cuda::log_conv_routes(f);
  cuda::set_conv_math(cuda::ConvMath::kTf32);
  for (const ConvGeom& g : {ConvGeom{2, 16, 9, 9, 128, 3, 3, 1, 1}, ConvGeom{4, 16, 9, 9, 64, 3, 3, 1, 1},
                            ConvGeom{4, 32, 9, 9, 32, 3, 3, 1, 1}, ConvGeom{4, 16, 9, 9, 128, 3, 3, 1, 1},
                            ConvGeom{2, 3, 23, 23, 96, 7, 7, 2, 0}, ConvGeom{4, 3, 23, 23, 96, 7, 7, 2, 0},
                            ConvGeom{36, 3, 17, 17, 64, 3, 3, 2, 0}, ConvGeom{2, 384, 16, 16, 512, 1, 1, 1, 0}}) {
    const size_t nx = size_t(g.C) * g.N * g.H * g.W, nw = size_t(g.K) * g.C * g.R * g.S;
    const size_t ny = size_t(g.K) * g.N * g.P() * g.Q();
    Dev<float> X(randn(nx)), Wt(randn(nw, 0.1f)), Y(ny), DZ(randn(ny)), DW(nw), DB(size_t(g.K)), DX(nx);
    Dev<float> WS(std::max(cuda::conv_backward_workspace(g), cuda::conv_forward_workspace(g)));
    cuda::conv_forward(g, X.get(), Wt.get(), nullptr, Y.get(), false, nullptr, WS.get());
    cuda::conv_forward(g, X.get(), Wt.get(), nullptr, Y.get(), false, nullptr);  // (no scratch)
    cuda::conv_backward(g, X.get(), Wt.get(), DZ.get(), DW.get(), DB.get(), DX.get(), false, WS.get(), nullptr);
    if (g.N == 4 && g.R == 7) {  // the 7x7 at batch 4 in BF16 too: its weight gradient's kernel
      cuda::set_conv_math(cuda::ConvMath::kBf16);
      cuda::conv_backward(g, X.get(), Wt.get(), DZ.get(), DW.get(), DB.get(), DX.get(), false, WS.get(), nullptr);
      cuda::set_conv_math(cuda::ConvMath::kTf32);
    }
  }
  cuda::log_conv_routes(nullptr);  // (the lines are written as the launches are made)
  cuda::set_conv_math(cuda::ConvMath::kFp32);
  // The one-block 128x128 tile where the GPU allows a block its 160 KB (igemm_mma.cuh's
  // kMmaWideSmem: sm_80, sm_90), else 128x64; conv1's forward on the row kernel where a block may
  // have more than 99 KB (sm_86, sm_89: its resident weights alone pass that, test_igemm's
  // WindowAndRowKernelsTakeOnlyWhatTheGpuAllowsABlock), else on the mma kernel.
  // (The GPU's limit, or SQUEEZE_SMEM_OPTIN's: gpu_check.sh's `older` phase runs this test as on
  // sm_80 and sm_86.)
  const size_t optin = cuda::conv_smem_limit();
  const std::string wide = optin >= 160 * 1024 ? "tile 128x128," : "tile 128x64,";
  // The plain 1x1's forward and input gradient on wgmma where the GPU's code has it (sm_90a), and
  // conv1's forward on the wgmma row kernel (96 filters by 128 columns).
  const bool wg = cuda::conv_uses_wgmma();
  const std::string conv1 = wg                  ? "wgmma row kernel, tile 96x128,"
                            : optin > 99 * 1024 ? "row kernel, tile 96x224,"
                                                : "mma kernel, tile 128x64,";
  const std::string plain = wg ? "wgmma kernel, tile 128x128," : "mma kernel, " + wide;
  // The 3x3 window products' forward (given scratch) and input gradient on wgmma there too (128
  // rows where M passes 64, else 64), and their weight gradient (128 filters where they divide K,
  // else 64).
  auto wgwin = [&](const std::string& win, int tm) {
    return wg ? "wgmma window kernel, tile " + std::to_string(tm) + "x128," : "window kernel, tile " + win + ",";
  };
  std::string log;
  std::rewind(f);
  for (int c; (c = std::fgetc(f)) != EOF;) log += char(c);
  std::fclose(f);
  const std::string want[] = {
      // 162 pixels, not a multiple of 4: no window.
      "forward of 16->128 3x3 stride 1 pad 1 at 9x9, batch 2, TF32: mma kernel, tile 128x64,",
      "input gradient of 16->128 3x3 stride 1 pad 1 at 9x9, batch 2, TF32: mma kernel, tile 16x128,",
      "weight gradient of 16->128 3x3 stride 1 pad 1 at 9x9, batch 2, TF32: mma kernel, tile 128x64,",
      "forward of 16->64 3x3 stride 1 pad 1 at 9x9, batch 4, TF32: " + wgwin("64x128", 64),
      "forward of 16->64 3x3 stride 1 pad 1 at 9x9, batch 4, TF32: window kernel, tile 64x128,",  // (no scratch)
      "input gradient of 16->64 3x3 stride 1 pad 1 at 9x9, batch 4, TF32: " + wgwin("16x256", 64),
      "weight gradient of 16->64 3x3 stride 1 pad 1 at 9x9, batch 4, TF32: " + wgwin("64x144", 64),
      "forward of 32->32 3x3 stride 1 pad 1 at 9x9, batch 4, TF32: " + wgwin("32x256", 64),
      "forward of 32->32 3x3 stride 1 pad 1 at 9x9, batch 4, TF32: window kernel, tile 32x256,",
      "input gradient of 32->32 3x3 stride 1 pad 1 at 9x9, batch 4, TF32: " + wgwin("32x256", 64),
      "forward of 16->128 3x3 stride 1 pad 1 at 9x9, batch 4, TF32: " + wgwin("64x128", 128),
      "weight gradient of 16->128 3x3 stride 1 pad 1 at 9x9, batch 4, TF32: " + wgwin("128x144", 128),
      "forward of 3->96 7x7 stride 2 pad 0 at 23x23, batch 2, TF32: " + conv1,
      "weight gradient of 3->96 7x7 stride 2 pad 0 at 23x23, batch 2, TF32: row kernel,",
      // Batch 4: dz's rows (324 pixels) 16-byte aligned, so wgmma takes the weight gradient (96
      // filters by three warpgroups of taps).
      "weight gradient of 3->96 7x7 stride 2 pad 0 at 23x23, batch 4, TF32: " +
          std::string(wg ? "wgmma row kernel, tile 96x192," : "row kernel,"),
      // In BF16 too (TF32's wgmma on BF16-rounded operands).
      "weight gradient of 3->96 7x7 stride 2 pad 0 at 23x23, batch 4, BF16: " +
          std::string(wg ? "wgmma row kernel, tile 96x192," : "row kernel,"),
      // Dense and large in all three dimensions: the one-block tile (sm_80, sm_90), or wgmma.
      "forward of 384->512 1x1 stride 1 pad 0 at 16x16, batch 2, TF32: " + plain,
      "input gradient of 384->512 1x1 stride 1 pad 0 at 16x16, batch 2, TF32: " + plain,
      "weight gradient of 384->512 1x1 stride 1 pad 0 at 16x16, batch 2, TF32: " +
          (wg ? "wgmma (dz as registers) kernel, tile 128x128," : "mma kernel, " + wide),
  };
  for (const std::string& w : want) EXPECT_NE(log.find(w), std::string::npos) << "no line with \"" << w << "\" in:\n" << log;
  // squeezenet1.1's conv1 in small (one warpgroup of 27 taps, 288 output rows): the wgmma weight
  // gradient's slices as many as the SMs hold at once, at least two an SM (wgrowsw_slices), not
  // the row kernel's one (4 warps an SM).
  if (wg) {
    const std::string w1 = "weight gradient of 3->64 3x3 stride 2 pad 0 at 17x17, batch 36, TF32: "
                           "wgmma row kernel, tile 64x64, grid ";
    const size_t at = log.find(w1);
    ASSERT_NE(at, std::string::npos) << "no line with \"" << w1 << "\" in:\n" << log;
    int sms = 0;
    SQ_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    const int slices = std::atoi(log.c_str() + at + w1.size());
    EXPECT_GE(slices, std::min(288, 2 * sms)) << log.substr(at, 200);
    EXPECT_LE(slices, 288) << log.substr(at, 200);
  }
}

TEST(CudaOps, FireModule) {
  REQUIRE_GPU();
  for (const auto& [name, f] : shapes().fires) {
    SCOPED_TRACE(name);
    const size_t plane = size_t(f.N) * f.H * f.W;
    const size_t nx = size_t(f.C) * plane, ns = size_t(f.S) * plane;
    const size_t ny = size_t(f.E1 + f.E3) * plane;
    const size_t sizes[6] = {size_t(f.S) * f.C, size_t(f.S), size_t(f.E1) * f.S, size_t(f.E1),
                             size_t(f.E3) * f.S * 9, size_t(f.E3)};
    std::vector<std::vector<float>> pv(6), gv(6);
    for (int i = 0; i < 6; ++i) {
      pv[i] = randn(sizes[i], i % 2 ? 0.1f : 0.2f);
      gv[i] = randn(sizes[i]);
    }
    const std::vector<float> x = randn(nx), dy = randn(ny), dx0 = randn(nx);
    // CPU reference in double.
    std::vector<std::vector<double>> pd(6), gd(6);
    for (int i = 0; i < 6; ++i) pd[i] = to_double(pv[i]), gd[i] = to_double(gv[i]);
    FireParams<const double> P{pd[0].data(), pd[1].data(), pd[2].data(),
                               pd[3].data(), pd[4].data(), pd[5].data()};
    FireParams<double> G{gd[0].data(), gd[1].data(), gd[2].data(),
                         gd[3].data(), gd[4].data(), gd[5].data()};
    std::vector<double> sd(ns), yd(ny), dxd = to_double(dx0), ws(fire_workspace(f) + 1);
    const std::vector<double> xd = to_double(x);
    fire_forward<double>(f, xd.data(), P, sd.data(), yd.data(), ws.data());
    // GPU.
    std::vector<std::unique_ptr<Dev<float>>> dp, dg;
    for (int i = 0; i < 6; ++i) {
      dp.push_back(std::make_unique<Dev<float>>(pv[i]));
      dg.push_back(std::make_unique<Dev<float>>(gv[i]));
    }
    FireParams<const float> dP{dp[0]->get(), dp[1]->get(), dp[2]->get(), dp[3]->get(), dp[4]->get(), dp[5]->get()};
    FireParams<float> dG{dg[0]->get(), dg[1]->get(), dg[2]->get(), dg[3]->get(), dg[4]->get(), dg[5]->get()};
    Dev<float> X(x), S(ns), Y(ny), DY(dy), DX(dx0), WS(cuda::fire_workspace(f));
    cuda::fire_forward(f, X.get(), dP, S.get(), Y.get(), nullptr, WS.get());
    const std::vector<float> s_gpu = S.download(), y_gpu = Y.download();
    expect_close(s_gpu, sd, kTol, "squeeze output");
    expect_close(y_gpu, yd, kTol, "expand output (both slices)");
    // The reference backward takes the GPU's own forward outputs, so that both apply the same
    // ReLU masks (an output within rounding of 0 may be positive on one side only).
    fire_backward<double>(f, xd.data(), P, to_double(s_gpu).data(), to_double(y_gpu).data(),
                          to_double(dy).data(), G, dxd.data(), true, ws.data());
    cuda::fire_backward(f, X.get(), dP, S.get(), Y.get(), DY.get(), dG, DX.get(), true, WS.get(), nullptr);
    const char* names[6] = {"squeeze w", "squeeze b", "expand1x1 w", "expand1x1 b",
                            "expand3x3 w", "expand3x3 b"};
    for (int i = 0; i < 6; ++i) expect_close(dg[i]->download(), gd[i], 1e-4, names[i]);
    expect_close(DX.download(), dxd, 1e-4, "input gradient (accumulated)");
  }
}

TEST(CudaOps, MaxPoolMatchesTheCpuBitForBit) {
  REQUIRE_GPU();
  for (const auto& [name, g] : shapes().pools) {
    SCOPED_TRACE(name);
    const size_t nx = size_t(g.C) * g.N * g.H * g.W, ny = size_t(g.C) * g.N * g.P() * g.Q();
    std::vector<float> x = randn(nx);
    for (float& v : x) v -= 1.0f;  // windows with no positive element too (the ReLU mask below)
    // Ties and NaNs: quantise some values so windows hold equal maxima; plant a few NaNs.
    for (size_t i = 0; i < nx; i += 3) x[i] = std::round(x[i]);
    for (size_t i = 17; i < nx; i += 9973) x[i] = std::nanf("");
    const std::vector<float> dy = randn(ny);
    std::vector<float> y(ny), dx(nx);
    maxpool_forward<float>(g, x.data(), y.data());
    maxpool_backward<float>(g, x.data(), dy.data(), dx.data());
    Dev<float> X(x), Y(ny), Y2(ny), DY(dy), DX(nx);
    Dev<uint8_t> ARG(ny);
    cuda::maxpool_forward(g, X.get(), Y.get(), ARG.get(), nullptr);
    cuda::maxpool_forward(g, X.get(), Y2.get(), nullptr, nullptr);  // evaluation: no indices
    cuda::maxpool_backward(g, ARG.get(), DY.get(), DX.get(), nullptr);
    expect_equal(Y.download(), y, "forward");
    expect_equal(Y2.download(), y, "forward without indices");
    expect_equal(DX.download(), dx, "backward");
    // With the ReLU whose output is x applied in the same pass (the mask from the argmax bytes).
    std::vector<float> dxr(nx);
    relu_backward<float>(dx.data(), x.data(), dxr.data(), nx);
    cuda::maxpool_backward(g, ARG.get(), DY.get(), DX.get(), nullptr, true);
    expect_equal(DX.download(), dxr, "backward with the ReLU of its input");
  }
}

// Small max-pools that take each of pool.cu's band-kernel forms: planes larger than the staging
// buffer (bands of output rows), several planes an item, one plane an item; with and without
// padding. Fast enough for compute-sanitizer's racecheck (gpu_check.sh sanitize).
TEST(CudaOps, MaxPoolSmallTakesEveryBandForm) {
  REQUIRE_GPU();
  for (const PoolGeom& g : {PoolGeom{1, 2, 109, 109, 3, 2, 0, true}, PoolGeom{1, 3, 83, 80, 3, 2, 1, true},
                            PoolGeom{64, 80, 13, 13, 3, 2, 0, true}, PoolGeom{2, 3, 13, 13, 3, 2, 0, true},
                            PoolGeom{2, 2, 9, 10, 2, 2, 0, false}}) {
    SCOPED_TRACE(std::to_string(g.N) + "x" + std::to_string(g.C) + "x" + std::to_string(g.H) + "x" +
                 std::to_string(g.W) + " k" + std::to_string(g.k) + " pad " + std::to_string(g.pad));
    const size_t nx = size_t(g.C) * g.N * g.H * g.W, ny = size_t(g.C) * g.N * g.P() * g.Q();
    std::vector<float> x = randn(nx);
    for (float& v : x) v -= 1.0f;
    for (size_t i = 0; i < nx; i += 3) x[i] = std::round(x[i]);
    const std::vector<float> dy = randn(ny);
    std::vector<float> y(ny), dx(nx), dxr(nx);
    maxpool_forward<float>(g, x.data(), y.data());
    maxpool_backward<float>(g, x.data(), dy.data(), dx.data());
    relu_backward<float>(dx.data(), x.data(), dxr.data(), nx);
    Dev<float> X(x), Y(ny), DY(dy), DX(nx);
    Dev<uint8_t> ARG(ny);
    cuda::maxpool_forward(g, X.get(), Y.get(), ARG.get(), nullptr);
    cuda::maxpool_backward(g, ARG.get(), DY.get(), DX.get(), nullptr);
    expect_equal(Y.download(), y, "forward");
    expect_equal(DX.download(), dx, "backward");
    cuda::maxpool_backward(g, ARG.get(), DY.get(), DX.get(), nullptr, true);
    expect_equal(DX.download(), dxr, "backward with the ReLU of its input");
  }
}

TEST(CudaOps, AvgPoolDropoutElementwiseMatchTheCpuBitForBit) {
  REQUIRE_GPU();
  for (const auto& [name, N, C, HW] : shapes().avgpools) {
    SCOPED_TRACE(name);
    const std::vector<float> x = randn(size_t(C) * N * HW), dy = randn(size_t(N) * C);
    std::vector<float> y(size_t(N) * C), dx(x.size());
    avgpool_forward<float>(N, C, HW, x.data(), y.data());
    avgpool_backward<float>(N, C, HW, dy.data(), dx.data());
    Dev<float> X(x), Y(y.size()), DY(dy), DX(dx.size());
    cuda::avgpool_forward(N, C, HW, X.get(), Y.get(), nullptr);
    cuda::avgpool_backward(N, C, HW, DY.get(), DX.get(), nullptr);
    expect_equal(Y.download(), y, "avgpool forward");
    expect_equal(DX.download(), dx, "avgpool backward");
  }
  // Dropout at conv10's input shapes (512 channels) with per-sample keys.
  for (auto [N, HW] : {std::pair<int, int>{3, 169}, {5, 9}, {32, 9}}) {
    const int C = 512;
    std::vector<uint64_t> keys(N);
    for (int n = 0; n < N; ++n) keys[n] = sample_key(7, RngStream::kDropout, 2, uint64_t(100 + n));
    const std::vector<float> x = randn(size_t(C) * N * HW);
    for (float p : {0.0f, 0.5f, 0.3f}) {
      std::vector<float> y(x.size()), dx(x.size());
      dropout_forward<float>(N, C, HW, p, keys.data(), x.data(), y.data());
      dropout_backward<float>(N, C, HW, p, keys.data(), x.data(), dx.data());
      Dev<uint64_t> K(keys);
      Dev<float> X(x), Y(x.size()), DX(x.size());
      cuda::dropout_forward(N, C, HW, p, K.get(), X.get(), Y.get(), nullptr);
      cuda::dropout_backward(N, C, HW, p, K.get(), X.get(), DX.get(), nullptr);
      expect_equal(Y.download(), y, "dropout forward p=" + std::to_string(p));
      expect_equal(DX.download(), dx, "dropout backward p=" + std::to_string(p));
    }
  }
  // ReLU backward, bypass add, scale, SGD: exact; sum of squares: to double rounding.
  const size_t n = 1248424;
  const std::vector<float> a = randn(n), b = randn(n), c = randn(n);
  std::vector<float> z(n), s = a, p = a, v = b;
  relu_backward<float>(b.data(), a.data(), z.data(), n);
  add_inplace<float>(s.data(), c.data(), n);
  sgd_momentum_update<float>(n, p.data(), c.data(), v.data(), 0.04f, 0.9f, 2e-4f);
  Dev<float> A(a), B(b), C(c), Z(n), S(a), P(a), V(b), Q(a);
  cuda::relu_backward(B.get(), A.get(), Z.get(), n, nullptr);
  cuda::add_inplace(S.get(), C.get(), n, nullptr);
  cuda::scale_inplace(Q.get(), 0.375f, n, nullptr);
  cuda::sgd_momentum_update(n, P.get(), C.get(), V.get(), 0.04f, 0.9f, 2e-4f, nullptr);
  expect_equal(Z.download(), z, "relu_backward");
  expect_equal(S.download(), s, "add_inplace");
  std::vector<float> q = a;
  scale_inplace<float>(q.data(), 0.375f, n);
  expect_equal(Q.download(), q, "scale_inplace");
  expect_equal(P.download(), p, "sgd parameters");
  expect_equal(V.download(), v, "sgd momentum");
  Dev<double> OUT(1), WS(cuda::sum_of_squares_workspace());
  cuda::sum_of_squares(A.get(), n, OUT.get(), WS.get(), nullptr);
  const double want = sum_of_squares<float>(a.data(), n);
  EXPECT_NEAR(OUT.download()[0], want, 1e-12 * want);
}

TEST(CudaOps, SoftmaxCrossEntropy) {
  REQUIRE_GPU();
  for (const auto& [name, N, K] : shapes().losses) {
    SCOPED_TRACE(name + " N=" + std::to_string(N));
    std::vector<float> z = randn(size_t(N) * K, 3.0f);
    std::vector<int32_t> labels(N);
    for (int n = 0; n < N; ++n) labels[n] = int32_t(rng()() % unsigned(K));
    if (N > 1) z[size_t(K) + 3] = z[size_t(K) + 5] = 50.0f;  // a tie: the first maximum wins
    std::vector<float> d(z.size());
    int correct = 0;
    const double loss = softmax_xent<float>(N, K, z.data(), labels.data(), 1.0f / 7, d.data(),
                                            &correct);
    Dev<float> Z(z), D(z.size());
    Dev<int32_t> L(labels);
    Dev<double> R(2), WS(cuda::softmax_xent_workspace(N));
    cuda::softmax_xent(N, K, Z.get(), L.get(), 1.0f / 7, D.get(), R.get(), WS.get(), nullptr);
    const std::vector<double> r = R.download();
    EXPECT_NEAR(r[0], loss, 1e-12 * std::abs(loss));
    EXPECT_EQ(r[1], double(correct));
    expect_close(D.download(), to_double(d), 1e-6, "dlogits");
  }
}

// The whole model, layer by layer (--check-layers' function), on every configuration.
TEST(CudaModel, EveryLayerMatchesTheCpuModel) {
  REQUIRE_GPU();
  std::vector<std::pair<ModelConfig, int>> cases;
  cases.push_back({preset("squeezenet1.0"), 2});
  cases.push_back({preset("squeezenet1.1"), 3});
  ModelConfig small = preset("squeezenet1.0");
  small.stem = Stem::kSmall;
  small.in_c = 1, small.in_h = 28, small.in_w = 28, small.num_classes = 10;
  for (Bypass b : {Bypass::kNone, Bypass::kSimple, Bypass::kComplex}) {
    small.bypass = b;
    cases.push_back({small, 33});
  }
  for (const auto& [cfg, N] : cases) {
    SCOPED_TRACE(arch_name(cfg.arch) + " bypass " + bypass_name(cfg.bypass));
    for (const LayerCheck& r : check_layers(cfg, N, 5))  // (fp32: bound 1e-4)
      EXPECT_TRUE(r.ok) << r.layer << ": forward " << r.forward_err << ", param grad "
                        << r.backward_err;
  }
}

namespace {
// squeezenet1.1 with the small stem on 1x28x28 and 10 classes: the small model of the step tests.
ModelConfig small_11() {
  ModelConfig cfg = preset("squeezenet1.1");
  cfg.stem = Stem::kSmall;
  cfg.in_c = 1, cfg.in_h = 28, cfg.in_w = 28, cfg.num_classes = 10;
  return cfg;
}
}  // namespace

// Several SGD steps on the GPU (model, loss, fused update) against the same steps on the CPU.
TEST(CudaModel, TrainingStepsFollowTheCpu) {
  REQUIRE_GPU();
  const ModelConfig cfg = small_11();
  const int N = 17, K = 10, steps = 4;
  Model cpu(cfg, N);
  CudaModel gpu(cfg, N);
  const size_t T = cpu.layout().total;
  std::vector<float> p(T), v(T, 0.0f), g(T);
  cpu.init_params(p.data(), "torchvision", 9);
  Dev<float> P(p), V(v), G(T), DL(size_t(N) * K);
  Dev<double> R(2), LWS(cuda::softmax_xent_workspace(N));
  std::vector<float> dl(size_t(N) * K);
  for (int step = 0; step < steps; ++step) {
    const std::vector<float> x = randn(size_t(N) * 28 * 28);
    std::vector<int32_t> y(N);
    std::vector<uint64_t> keys(N);
    for (int n = 0; n < N; ++n) {
      y[n] = int32_t(rng()() % K);
      keys[n] = sample_key(3, RngStream::kDropout, uint64_t(step), uint64_t(n));
    }
    std::fill(g.begin(), g.end(), 0.0f);
    const float* logits = cpu.forward(p.data(), x.data(), N, true, keys.data());
    const double loss = softmax_xent<float>(N, K, logits, y.data(), 1.0f / N, dl.data(), nullptr);
    cpu.backward(p.data(), dl.data(), g.data(), N, keys.data());
    sgd_momentum_update<float>(T, p.data(), g.data(), v.data(), 0.05f, 0.9f, 2e-4f);

    Dev<float> X(x);
    Dev<int32_t> Y(y);
    Dev<uint64_t> KEYS(keys);
    SQ_CUDA(cudaMemset(G.get(), 0, T * sizeof(float)));
    const float* gl = gpu.forward(P.get(), X.get(), N, true, KEYS.get());
    cuda::softmax_xent(N, K, gl, Y.get(), 1.0f / N, DL.get(), R.get(), LWS.get(), nullptr);
    // The backward on the CPU's activations and loss gradient, as --check-layers does: where two
    // values of a max-pool window lie within rounding of each other, the sides' forwards would
    // route the gradient to different inputs (a discontinuity, not a kernel error).
    for (size_t id = 0; id < cpu.acts().size(); ++id) gpu.load_activation(int(id), cpu.activation(int(id)));
    DL.upload(dl.data());
    gpu.backward(P.get(), DL.get(), G.get(), N, KEYS.get());
    cuda::sgd_momentum_update(T, P.get(), G.get(), V.get(), 0.05f, 0.9f, 2e-4f, nullptr);
    EXPECT_NEAR(R.download()[0], loss, 1e-4 * loss) << "loss of step " << step;
  }
  expect_close(P.download(), to_double(p), 1e-4, "parameters after the steps");
  expect_close(V.download(), to_double(v), 1e-4, "momentum after the steps");
}

// The two CudaStep tests compare two schedules of the same steps bit for bit. Their data come
// from generators of their own, so that a --gtest_filter (which changes what rng() has drawn
// before them) cannot change their steps, and their learning rate is gentle: at 0.05 one draw in
// about thirty of random inputs and labels drove these steps to NaN by the fifth (run d, where
// NaN == NaN failed the comparison of two identical runs; docs/BENCHMARKS.md).
constexpr unsigned kStepSeed = 20261204;
constexpr float kStepLr = 0.01f;

// The step replayed as CUDA graphs (one per slot, batch and loss scale) against the step
// launched kernel by kernel: the same losses and parameters, bit for bit, over steps that
// alternate the staging slots, a smaller last batch (a second graph), an evaluation in between
// and a precision switch (a graph captured under fp32 must not serve tf32).
TEST(CudaStep, GraphReplayGivesTheSameStepsBitForBit) {
  REQUIRE_GPU();
  const ModelConfig cfg = small_11();
  const int N = 13, steps = 7;
  const size_t per = 28 * 28;
  std::mt19937 gen(kStepSeed);
  Model host(cfg, 1);
  std::vector<float> p(host.layout().total), v(p.size(), 0.0f);
  host.init_params(p.data(), "torchvision", 5);
  auto eager = make_cuda_step(cfg, N, 0), graphed = make_cuda_step(cfg, N, 0);
  eager->use_graphs(false);
  graphed->use_graphs(true);
  eager->upload(p.data(), v.data());
  graphed->upload(p.data(), v.data());
  for (int s = 0; s < steps; ++s) {
    const int n = s == steps - 1 ? 6 : N;  // the last batch is smaller
    if (s == 4) cuda::set_conv_math(cuda::ConvMath::kTf32);
    const std::vector<float> x = testing_ops::normal_vec(per * size_t(n), gen);
    std::vector<int32_t> y(n);
    std::vector<uint64_t> k(n);
    for (int i = 0; i < n; ++i) y[i] = int32_t(gen() % 10), k[i] = gen();
    double a[2] = {0, 0}, b[2] = {0, 0};
    eager->forward_backward(x.data(), y.data(), k.data(), n, 1.0f / float(n), a);
    eager->sgd(kStepLr, 0.9f, 2e-4f);
    graphed->forward_backward(x.data(), y.data(), k.data(), n, 1.0f / float(n), b);
    graphed->sgd(kStepLr, 0.9f, 2e-4f);
    ASSERT_TRUE(std::isfinite(a[0])) << "the steps diverged at step " << s << ": nothing left to compare";
    EXPECT_EQ(a[0], b[0]) << "loss of step " << s;
    EXPECT_EQ(a[1], b[1]) << "correct of step " << s;
    if (s == 2) {
      double ea[2] = {0, 0}, eb[2] = {0, 0};
      eager->evaluate_batch(x.data(), y.data(), n, ea);
      graphed->evaluate_batch(x.data(), y.data(), n, eb);
      EXPECT_EQ(ea[0], eb[0]);
    }
  }
  cuda::set_conv_math(cuda::ConvMath::kFp32);
  std::vector<float> pa(p.size()), pb(p.size());
  eager->download(pa.data(), nullptr);
  graphed->download(pb.data(), nullptr);
  expect_equal(pb, pa, "parameters after the steps");
  EXPECT_NE(pa, p) << "the steps changed nothing";
}

// The pipelined step (the next batch prefetched on the copy stream while a step runs, an
// evaluation in between) computes exactly what the plain step computes on the same batches, and
// prefetch() has copied the batch out before it returns (the host buffer is poisoned after).
TEST(CudaStep, PrefetchedBatchesGiveTheSameStepsBitForBit) {
  REQUIRE_GPU();
  const ModelConfig cfg = small_11();
  const int N = 13, steps = 5;
  const size_t per = 28 * 28;
  std::mt19937 gen(kStepSeed + 1);
  Model host(cfg, 1);
  std::vector<float> p(host.layout().total), v(p.size(), 0.0f);
  host.init_params(p.data(), "torchvision", 4);
  std::vector<std::vector<float>> xs;
  std::vector<std::vector<int32_t>> ys;
  std::vector<std::vector<uint64_t>> ks;
  for (int s = 0; s < steps; ++s) {
    xs.push_back(testing_ops::normal_vec(per * N, gen));
    ys.emplace_back(N);
    ks.emplace_back(N);
    for (int n = 0; n < N; ++n) ys[s][n] = int32_t(gen() % 10), ks[s][n] = gen();
  }
  auto plain = make_cuda_step(cfg, N, 0), piped = make_cuda_step(cfg, N, 0);
  plain->upload(p.data(), v.data());
  piped->upload(p.data(), v.data());
  std::vector<float> buf(per * N);
  std::vector<int32_t> lab(N);
  std::vector<uint64_t> key(N);
  auto fill = [&](int s) {
    buf = xs[s], lab = ys[s], key = ks[s];
  };
  auto poison = [&] {
    std::fill(buf.begin(), buf.end(), std::nanf(""));
    std::fill(lab.begin(), lab.end(), -1);
    std::fill(key.begin(), key.end(), 0);
  };
  fill(0);
  piped->prefetch(buf.data(), lab.data(), key.data(), N);
  poison();
  for (int s = 0; s < steps; ++s) {
    double a[2] = {0, 0}, b[2] = {0, 0};
    plain->forward_backward(xs[s].data(), ys[s].data(), ks[s].data(), N, 1.0f / N, a);
    plain->sgd(kStepLr, 0.9f, 2e-4f);
    piped->launch(nullptr, nullptr, nullptr, N, 1.0f / N);
    if (s + 1 < steps) {
      fill(s + 1);
      piped->prefetch(buf.data(), lab.data(), key.data(), N);
      poison();
    }
    piped->finish(b);
    piped->sgd(kStepLr, 0.9f, 2e-4f);
    ASSERT_TRUE(std::isfinite(a[0])) << "the steps diverged at step " << s << ": nothing left to compare";
    EXPECT_EQ(a[0], b[0]) << "loss of step " << s;
    EXPECT_EQ(a[1], b[1]) << "correct of step " << s;
    if (s == 2) {  // an evaluation between steps leaves the prefetched batch alone
      double ea[2] = {0, 0}, eb[2] = {0, 0};
      plain->evaluate_batch(xs[0].data(), ys[0].data(), N, ea);
      piped->evaluate_batch(xs[0].data(), ys[0].data(), N, eb);
      EXPECT_EQ(ea[0], eb[0]);
    }
  }
  std::vector<float> pa(p.size()), pb(p.size());
  plain->download(pa.data(), nullptr);
  piped->download(pb.data(), nullptr);
  expect_equal(pb, pa, "parameters after the steps");
  EXPECT_NE(pa, p) << "the steps changed nothing";
  EXPECT_THROW(piped->launch(nullptr, nullptr, nullptr, N, 1.0f / N), Error);  // none prefetched
}

// The trainer's batches: the data set's bytes (prefetch_bytes), normalised on the device, train
// exactly as their floats through the normalisation table do (prefetch), on three channels whose
// tables differ, so that a channel taken for another shows. The kernel alone, too, where a
// channel's elements are a multiple of 4 (four a thread) and where they are not (one).
TEST(CudaStep, ByteBatchesTrainAsTheirFloats) {
  REQUIRE_GPU();
  Normalization norm;
  norm.mean = {0.2f, 0.5f, 0.7f};
  norm.stddev = {0.3f, 0.2f, 0.25f};
  const std::vector<float> table = normalization_table(norm);
  std::mt19937 gen(kStepSeed + 2);
  auto random_bytes = [&](size_t n) {
    std::vector<uint8_t> b(n);
    for (uint8_t& e : b) e = uint8_t(gen() & 255u);
    return b;
  };
  auto through_table = [&](const std::vector<uint8_t>& b, size_t per_channel) {
    std::vector<float> x(b.size());
    for (size_t j = 0; j < b.size(); ++j) x[j] = table[j / per_channel * 256 + b[j]];
    return x;
  };
  for (size_t per_channel : {size_t(316), size_t(315)}) {
    const std::vector<uint8_t> b = random_bytes(3 * per_channel);
    Dev<uint8_t> B(b);
    Dev<float> T(table), X(b.size());
    cuda::bytes_to_input(B.get(), per_channel, 3, T.get(), X.get(), nullptr);
    expect_equal(X.download(), through_table(b, per_channel), "bytes to input");
  }

  ModelConfig cfg = small_11();
  cfg.in_c = 3, cfg.in_h = 32, cfg.in_w = 32;
  const int N = 13, steps = 3;
  const size_t per_channel = size_t(N) * 32 * 32;
  Model host(cfg, 1);
  std::vector<float> p(host.layout().total), v(p.size(), 0.0f);
  host.init_params(p.data(), "torchvision", 5);
  auto floats = make_cuda_step(cfg, N, 0), bytes = make_cuda_step(cfg, N, 0);
  floats->upload(p.data(), v.data());
  bytes->upload(p.data(), v.data());
  for (int s = 0; s < steps; ++s) {
    const std::vector<uint8_t> b = random_bytes(3 * per_channel);
    const std::vector<float> x = through_table(b, per_channel);
    std::vector<int32_t> y(N);
    std::vector<uint64_t> k(N);
    for (int n = 0; n < N; ++n) y[n] = int32_t(gen() % 10), k[n] = gen();
    double a[2] = {0, 0}, c[2] = {0, 0};
    floats->forward_backward(x.data(), y.data(), k.data(), N, 1.0f / N, a);
    floats->sgd(kStepLr, 0.9f, 2e-4f);
    bytes->prefetch_bytes(b.data(), table.data(), y.data(), k.data(), N);
    bytes->launch(nullptr, nullptr, nullptr, N, 1.0f / N);
    bytes->finish(c);
    bytes->sgd(kStepLr, 0.9f, 2e-4f);
    ASSERT_TRUE(std::isfinite(a[0])) << "the steps diverged at step " << s << ": nothing left to compare";
    EXPECT_EQ(a[0], c[0]) << "loss of step " << s;
    EXPECT_EQ(a[1], c[1]) << "correct of step " << s;
  }
  std::vector<float> pa(p.size()), pb(p.size());
  floats->download(pa.data(), nullptr);
  bytes->download(pb.data(), nullptr);
  expect_equal(pb, pa, "parameters after the steps");
  EXPECT_NE(pa, p) << "the steps changed nothing";
}

// One epoch of a narrow squeezenet1.0 on 200 Fashion-MNIST images, batch 32, a low learning rate
// (tests/mpi/test_mpi.cpp explains why); false when the data set is not in c->data_dir
// (SQUEEZE_FASHION_MNIST: where scripts/gpu_check.sh unpacked it on the GPU machine).
bool small_fashion_run(TrainConfig* c) {
  const char* env = std::getenv("SQUEEZE_FASHION_MNIST");
  c->data_dir = env ? env : "/usr/share/datasets/fashion-mnist";
  struct stat st;
  if (::stat((c->data_dir + "/train-images-idx3-ubyte.gz").c_str(), &st) != 0) return false;
  c->model = preset("squeezenet1.0");
  c->model.base_e = 32;
  c->model.incr_e = 32;
  c->epochs = 1;
  c->batch = 32;
  c->schedule.lr = 0.002;
  c->train_limit = 200;
  c->test_limit = 200;
  return true;
}

// squeeze train --device cuda against the CPU trainer: one epoch of real Fashion-MNIST with the
// default recipe (LSUV, dropout, augmentation, clipping), a low learning rate as in the
// multi-rank equivalence test (tests/mpi/test_mpi.cpp explains why).
TEST(CudaTrainer, OneEpochFollowsTheCpuTrainer) {
  REQUIRE_GPU();
  TrainConfig c;
  if (!small_fashion_run(&c)) GTEST_SKIP() << "Fashion-MNIST not found in " << c.data_dir;
  c.augment.crop_pad = 2;
  c.augment.hflip = true;
  RunOptions o;
  o.quiet = true;
  auto comm = make_local_communicator();
  const TrainResult cpu = train(c, o, *comm);
  o.cuda = true;
  const TrainResult gpu = train(c, o, *comm);
  ASSERT_EQ(gpu.steps, cpu.steps);
  expect_close(gpu.params, to_double(cpu.params), 1e-4, "parameters after one epoch");
  EXPECT_NEAR(gpu.epochs[0].train_loss, cpu.epochs[0].train_loss, 1e-4 * cpu.epochs[0].train_loss);
  EXPECT_NEAR(gpu.epochs[0].test_acc, cpu.epochs[0].test_acc, 1.0 / 200 + 1e-12);
}

// Deep Compression's retraining constraints on the device against the CPU's: the mask exactly,
// and three steps of trained quantization (momentum 0.9, fresh random gradients each step) to
// the rounding of the centroid sums, which run in another order. Each weight stays exactly one
// of its tensor's centroids, and finish() brings the device codebooks back.
TEST(CudaCompress, ConstraintsMatchTheCpuConstraints) {
  REQUIRE_GPU();
  ModelConfig mc = preset("squeezenet1.0");
  mc.base_e = 32, mc.incr_e = 32, mc.num_classes = 10;
  const Model m(mc, 1, false);
  const size_t n = m.layout().total;
  const std::vector<float> p0 = randn(n, 0.05f);
  const std::vector<uint8_t> mask = magnitude_mask(m, p0.data(), paper_schedule());
  cudaStream_t s;
  SQ_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  {
    std::vector<float> g = randn(n), p = p0, v = randn(n);
    Dev<float> dg(g), dp(p), dv(v);
    MaskConstraint host(mask), dev(mask);
    host.on_gradient(g.data());
    host.after_update(p.data(), v.data(), g.data(), 0.01);
    dev.on_gradient_device(dg.get(), s);
    dev.after_update_device(dp.get(), dv.get(), dg.get(), 0.01, s);
    SQ_CUDA(cudaStreamSynchronize(s));
    expect_equal(dg.download(), g, "masked gradient");
    expect_equal(dp.download(), p, "masked parameters");
    expect_equal(dv.download(), v, "masked momentum");
  }
  CompressedModel cm_host = quantize(m, p0.data(), mask, 5);
  CompressedModel cm_dev = cm_host;
  std::vector<float> p = dequantize(cm_host, m), v = randn(n);
  Dev<float> dp(p), dv(v), dg(n);
  QuantizedConstraint host(cm_host, m, 0.9), dev(cm_dev, m, 0.9);
  for (int step = 0; step < 3; ++step) {
    const std::vector<float> g = randn(n);
    SQ_CUDA(cudaStreamSynchronize(s));  // the last step has read dg
    dg.upload(g.data());
    host.after_update(p.data(), v.data(), g.data(), 0.01);
    dev.on_gradient_device(dg.get(), s);
    dev.after_update_device(dp.get(), dv.get(), dg.get(), 0.01, s);
  }
  SQ_CUDA(cudaStreamSynchronize(s));
  const std::vector<float> p_dev = dp.download(), v_dev = dv.download();
  dev.finish(p_dev.data());
  host.finish(p.data());
  for (size_t t = 0; t < cm_host.weights.size(); ++t)
    expect_close(cm_dev.weights[t].codebook, to_double(cm_host.weights[t].codebook), 1e-6,
                 "codebook of tensor " + std::to_string(t));
  expect_equal(p_dev, dequantize(cm_dev, m), "device weights against the device codebooks");
  expect_close(p_dev, to_double(p), 1e-6, "parameters after three steps");
  expect_equal(v_dev, v, "momentum (zero for weights, untouched for biases)");
  SQ_CUDA(cudaStreamDestroy(s));
}

// squeeze compress's retraining on the GPU against the CPU: one epoch with the pruning mask, then
// one with 4-bit codebooks, from the same trained weights; pruned weights stay exactly zero and
// the tuned weights are exactly the trained codebooks.
TEST(CudaTrainer, CompressionRetrainingFollowsTheCpu) {
  REQUIRE_GPU();
  TrainConfig c;
  if (!small_fashion_run(&c)) GTEST_SKIP() << "Fashion-MNIST not found in " << c.data_dir;
  RunOptions o;
  o.quiet = true;
  auto comm = make_local_communicator();
  const TrainResult dense = train(c, o, *comm);
  const Model m(dense.model, 1, false);
  const std::vector<uint8_t> mask = magnitude_mask(m, dense.params.data(), paper_schedule());
  std::vector<float> pruned = dense.params;
  apply_mask(pruned.data(), mask);
  o.initial_params = &pruned;
  MaskConstraint mask_cpu(mask), mask_gpu(mask);
  o.constraint = &mask_cpu;
  const TrainResult cpu = train(c, o, *comm);
  o.cuda = true;
  o.constraint = &mask_gpu;
  const TrainResult gpu = train(c, o, *comm);
  expect_close(gpu.params, to_double(cpu.params), 1e-4, "parameters after masked retraining");
  for (size_t i = 0; i < mask.size(); ++i) {
    if (!mask[i]) {
      ASSERT_EQ(gpu.params[i], 0.0f) << "pruned parameter " << i;
    }
  }
  CompressedModel cm_cpu = quantize(m, cpu.params.data(), mask, 4), cm_gpu = cm_cpu;
  const CompressedModel start = cm_cpu;
  const std::vector<float> q = dequantize(cm_cpu, m);
  QuantizedConstraint q_cpu(cm_cpu, m, c.momentum), q_gpu(cm_gpu, m, c.momentum);
  o.initial_params = &q;
  o.cuda = false;
  o.constraint = &q_cpu;
  const TrainResult tuned_cpu = train(c, o, *comm);
  o.cuda = true;
  o.constraint = &q_gpu;
  const TrainResult tuned_gpu = train(c, o, *comm);
  q_cpu.finish(tuned_cpu.params.data());
  q_gpu.finish(tuned_gpu.params.data());
  expect_equal(tuned_gpu.params, dequantize(cm_gpu, m), "GPU-tuned parameters against their codebooks");
  expect_close(tuned_gpu.params, to_double(tuned_cpu.params), 1e-4, "parameters after codebook tuning");
  size_t changed = 0;
  for (size_t t = 0; t < cm_gpu.weights.size(); ++t) {
    changed += cm_gpu.weights[t].codebook != start.weights[t].codebook;
    expect_close(cm_gpu.weights[t].codebook, to_double(cm_cpu.weights[t].codebook), 1e-4,
                 "codebook of tensor " + std::to_string(t));
  }
  EXPECT_EQ(changed, cm_gpu.weights.size()) << "some codebooks did not train on the GPU";
}

TEST(CudaOps, NoGpuIsAClearError) {
  std::string why;
  if (cuda::device_count(&why) > 0) GTEST_SKIP() << "a GPU is present";
  try {
    cuda::use_device(0);
    ADD_FAILURE() << "use_device without a GPU did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no usable GPU"), std::string::npos) << e.what();
  }
}

#endif  // SQUEEZE_HAVE_CUDA
