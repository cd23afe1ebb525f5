// The index arithmetic of the GPU's implicit-GEMM convolution (kernels/cuda/igemm_ops.h), run on
// the CPU: the three operand loaders multiplied out in a plain loop must reproduce the CPU
// convolution's forward, weight gradient and input gradient (in double) for kernels, strides and
// paddings of every kind; and the fp32 tile kernel itself, run on the CPU thread by thread
// (tests/simt_host.h). Runs everywhere, GPU or not; test_cuda_ops checks the kernels on a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <random>
#include <vector>

// The kernels' source and their operands (float2 in the epilogues), compiled for the CPU after
// simt_host.h.
#include "tests/simt_host.h"
#include "kernels/cuda/igemm_ops.h"
#include "kernels/cuda/igemm_kernel.cuh"
#include "kernels/cuda/igemm_async.cuh"
#include "kernels/cuda/igemm_mma.cuh"
#include "kernels/cuda/igemm_win.cuh"
#include "kernels/cuda/igemm_rows.cuh"
#include "kernels/cuda/igemm_wg.cuh"
#include "kernels/cuda/igemm_wgwin.cuh"
#include "kernels/cuda/igemm_wgwinw.cuh"
#include "kernels/cuda/igemm_wgw.cuh"
#include "kernels/cuda/igemm_wgrows.cuh"
#include "kernels/cuda/igemm_wgrowsw.cuh"
#include "kernels/cuda/pool_index.h"
#include "kernels/ops.h"
#include "core/model.h"

using namespace sq;

namespace {

// C = A * B through the loaders, with the k and n keys made once each as the kernels' are, then
// the op's epilogue. B is read at b_key (nullptr in the padding), which must lie inside src, the
// tensor B comes from, and b_value must give the same element; a key past either edge must match
// nothing. In a plain 1x1 product (no padding) b_dense must name b_key's element everywhere.
template <class Op>
void multiply(const Op& op, const std::vector<float>& src) {
  std::vector<cuda::Key> ks, ns;
  for (int k = 0; k < op.Kd; ++k) ks.push_back(op.kkey(k));
  for (int n = 0; n < op.N; ++n) ns.push_back(op.nkey(n));
  long outside = 0, unlike = 0, undense = 0;
  if (cuda::plain_1x1(op.g))
    for (int n = 0; n < op.N; ++n)
      for (int k = 0; k < op.Kd; ++k) undense += op.b_dense(k, n) != op.b_key(ks[size_t(k)], ns[size_t(n)]);
  EXPECT_EQ(0, undense) << "b_dense differs from b_key";
  for (int m = 0; m < op.M; ++m)
    for (int n = 0; n < op.N; ++n) {
      float acc = 0;
      for (int k = 0; k < op.Kd; ++k) {
        const float* p = op.b_key(ks[size_t(k)], ns[size_t(n)]);
        if (p && (p < src.data() || p >= src.data() + src.size())) {
          ++outside;
          continue;
        }
        const float v = p ? *p : 0.0f, bv = op.b_value(ks[size_t(k)], ns[size_t(n)]);
        unlike += std::memcmp(&v, &bv, sizeof v) != 0;
        acc += *op.a_ptr(m, k) * v;
      }
      op.store(m, n, acc, 0);
    }
  EXPECT_EQ(0, outside) << "B addresses outside the tensor";
  EXPECT_EQ(0, unlike) << "b_value differs from the element at b_key";
  for (int k = 0; k < op.Kd; ++k)
    EXPECT_EQ(nullptr, op.b_key(ks[size_t(k)], cuda::Key{0, Op::kNNone})) << "k " << k << " against an n past the edge";
  for (int n = 0; n < op.N; ++n)
    EXPECT_EQ(nullptr, op.b_key(cuda::Key{0, Op::kKNone}, ns[size_t(n)])) << "n " << n << " against a k past the edge";
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

namespace {

// A convolution on fresh random data with its CPU reference (in double) and the three loaders.
struct Case {
  ConvGeom cg;
  cuda::Geo g;
  std::vector<float> x, w, b, dz;
  std::vector<float> wt;  // w transposed to (C, K, R, S): the input gradient's A (DataOp)
  std::vector<double> y_ref, dw_ref, dx_ref;
  Case(const ConvGeom& c, std::mt19937& rng) : cg(c) {
    std::normal_distribution<float> nd;
    const int P = cg.P(), Q = cg.Q();
    g = {cg.N, cg.C, cg.H, cg.W, cg.K, cg.R, cg.S, cg.stride, cg.pad, P, Q};
    x.resize(size_t(cg.C) * cg.N * cg.H * cg.W);
    w.resize(size_t(cg.K) * cg.C * cg.R * cg.S);
    b.resize(size_t(cg.K));
    dz.resize(size_t(cg.K) * cg.N * P * Q);
    for (auto* v : {&x, &w, &b, &dz})
      for (float& e : *v) e = nd(rng);
    reference();
  }
  // wt from w, and the references from x, w, b and dz.
  void reference() {
    const int RS = cg.R * cg.S;
    wt.resize(w.size());
    for (int ko = 0; ko < cg.K; ++ko)
      for (int c = 0; c < cg.C; ++c)
        for (int rs = 0; rs < RS; ++rs)
          wt[(size_t(c) * cg.K + ko) * RS + rs] = w[(size_t(ko) * cg.C + c) * RS + rs];
    const std::vector<double> xd(x.begin(), x.end()), wd(w.begin(), w.end()),
        bd(b.begin(), b.end()), dzd(dz.begin(), dz.end());
    y_ref.resize(dz.size());
    dw_ref.assign(w.size(), 0.0);
    dx_ref.resize(x.size());
    std::vector<double> db_ref(b.size(), 0.0), ws(conv_workspace(cg) + 1);
    conv_forward<double>(cg, xd.data(), wd.data(), bd.data(), y_ref.data(), true, ws.data());
    conv_backward<double>(cg, xd.data(), wd.data(), dzd.data(), dw_ref.data(), db_ref.data(),
                          dx_ref.data(), false, ws.data());
  }
  int npq() const { return g.N * g.P * g.Q; }
  int crs() const { return g.C * g.R * g.S; }
  // The operands, the memory the kernels' copies may read (simt::Readable).
  std::vector<simt::ReadableRun> readable() const {
    return {{x.data(), x.size()}, {w.data(), w.size()}, {wt.data(), wt.size()}, {dz.data(), dz.size()}};
  }
  cuda::FwdOp fwd(float* y) const { return {g, x.data(), w.data(), b.data(), y, true, g.K, npq(), crs()}; }
  cuda::WeightOp wgt(float* ws) const { return {g, x.data(), dz.data(), ws, g.K, crs(), npq()}; }
  cuda::DataOp data(float* dx) const {
    return {g, wt.data(), dz.data(), dx, false, g.C, g.N * g.H * g.W, g.K * g.R * g.S};
  }
  std::string name() const {
    return "C" + std::to_string(cg.C) + " H" + std::to_string(cg.H) + " K" + std::to_string(cg.K) +
           " R" + std::to_string(cg.R) + " stride " + std::to_string(cg.stride) + " pad " +
           std::to_string(cg.pad);
  }
};

const ConvGeom kCases[] = {
    {2, 3, 23, 23, 8, 7, 7, 2, 0},  // conv1 of squeezenet1.0
    {3, 3, 17, 17, 5, 3, 3, 2, 0},  // conv1 of squeezenet1.1
    {2, 4, 9, 9, 6, 3, 3, 1, 1},    // expand 3x3
    {3, 7, 6, 5, 4, 1, 1, 1, 0},    // 1x1, H != W
    {2, 5, 7, 7, 3, 1, 1, 2, 0},    // 1x1 at stride 2
    {2, 3, 5, 6, 4, 1, 1, 1, 1},    // 1x1 with padding
    {2, 3, 11, 8, 5, 5, 3, 3, 2},   // odd kernel, stride 3, padding 2
    {1, 2, 4, 4, 3, 3, 3, 2, 1},    // padding larger than what stride covers
    {2, 70, 9, 9, 80, 3, 3, 1, 1},  // more rows and columns than half an 8x8-share tile
    {3, 12, 7, 4, 20, 1, 1, 1, 0},  // 1x1 with planes of 4k floats: the mma kernel's 16-byte copies
};

}  // namespace

TEST(ImplicitGemm, LoadersReproduceTheCpuConvolution) {
  std::mt19937 rng(3);
  for (const ConvGeom& cg : kCases) {
    const Case c(cg, rng);
    SCOPED_TRACE(c.name());
    std::vector<float> y(c.y_ref.size()), dw(c.dw_ref.size()), dx(c.dx_ref.size());
    multiply(c.fwd(y.data()), c.x);
    multiply(c.wgt(dw.data()), c.x);
    multiply(c.data(dx.data()), c.dz);
    EXPECT_LT(rel(y, c.y_ref), 1e-6) << "forward";
    EXPECT_LT(rel(dw, c.dw_ref), 1e-6) << "weight gradient";
    EXPECT_LT(rel(dx, c.dx_ref), 1e-6) << "input gradient";
    // conv.cu's transposition of w for the input gradient (in splitk_reduce_kernel, beside the
    // sum of the weight gradient's slices) gives the layout DataOp reads (c.wt, with which the
    // input gradient above matched the reference), in both thread orders, and the sum beside it
    // still adds the slice onto dw.
    for (bool reverse : {false, true}) {
      std::vector<float> wt(c.w.size(), NAN), slice(c.w.size()), dw1(c.w.size(), 1.0f);
      for (size_t i = 0; i < slice.size(); ++i) slice[i] = float(i % 7);
      cuda::WeightSums sums{slice.data(), 1, cg.K, cg.C, cg.R * cg.S, dw1.data()};
      sums.w = c.w.data(), sums.wt = wt.data();
      ASSERT_TRUE(simt::run({2, 1, 1}, cuda::kThreads, [&] { cuda::splitk_reduce_kernel(sums); }, reverse));
      EXPECT_EQ(0, std::memcmp(wt.data(), c.wt.data(), wt.size() * sizeof(float))) << "transposed weights";
      long wrong = 0;
      for (size_t i = 0; i < dw1.size(); ++i) wrong += dw1[i] != 1.0f + slice[i];
      EXPECT_EQ(0, wrong) << "the slice's sum beside the transposition";
    }
  }
}

namespace {

// The GPU's fp32 tile kernel (kernels/cuda/igemm_kernel.cuh) on the CPU (tests/simt_host.h): the
// grid as conv.cu launches it, split-K slices summed in order as its reduction does.
template <int TM, int TN, bool kPrefetch, class Op>
void run_tile_kernel(const Op& op, int splits, bool reverse, bool square_warps) {
  const int chunk = (op.Kd + splits - 1) / splits;
  const SimtDim3 grid{unsigned((op.N + TN - 1) / TN), unsigned((op.M + TM - 1) / TM), unsigned(splits)};
  const std::function<void()> body = [&] { cuda::igemm_kernel<Op, TM, TN, kPrefetch>(op, chunk, square_warps); };
  ASSERT_TRUE(simt::run(grid, cuda::kGemmThreads, body, reverse)) << "threads disagree on barriers";
}

// The input gradient of op in `splits` split-K slices (DataOp::partial, filled with NaN first so
// that a slice element left unwritten shows) through run(op, splits), then conv.cu's
// data_splitk_reduce_kernel, which applies op's epilogue onto op.dx.
template <class Run>
void data_in_slices(cuda::DataOp op, int splits, Run run, bool reverse = false) {
  std::vector<float> part(size_t(splits) * size_t(op.M) * size_t(op.N), NAN);
  cuda::DataOp sliced = op;
  sliced.partial = part.data();
  run(sliced, splits);
  ASSERT_TRUE(simt::run({2, 1, 1}, cuda::kThreads, [&] { cuda::data_splitk_reduce_kernel(sliced, splits); }, reverse));
}

// The fp32 8x8-share kernel on cp.async stages (kernels/cuda/igemm_async.cuh, v8), the grid and
// dynamic shared memory as conv.cu launches it.
template <int TM, int TN, class Op>
void run_async_kernel(const Op& op, int splits, bool reverse) {
  using Sh = cuda::AsyncShape<TM, TN>;
  static_assert(Sh::kSmemBytes <= simt::kDynamicSharedFloats * sizeof(float), "the stages fit the emulator");
  const int chunk = (op.Kd + splits - 1) / splits;
  const SimtDim3 grid{unsigned((op.N + TN - 1) / TN), unsigned((op.M + TM - 1) / TM), unsigned(splits)};
  const std::function<void()> body = [&] { cuda::igemm_async_kernel<Op, TM, TN>(op, chunk); };
  ASSERT_TRUE(simt::run(grid, cuda::kGemmThreads, body, reverse, Sh::kSmemBytes)) << "threads disagree on barriers";
}

// The three fp32 products of c through run(op, splits) against the double reference: forward,
// input gradient whole and in 3 split-K slices, weight gradient in 1 and 3 slices (summed by
// conv.cu's fixed-order reduction).
template <class Run>
void check_fp32_products(const Case& c, bool reverse, Run run) {
  std::vector<float> y(c.y_ref.size(), NAN), dx(c.dx_ref.size(), NAN);
  run(c.fwd(y.data()), 1);
  EXPECT_LT(rel(y, c.y_ref), 1e-6) << "forward";
  run(c.data(dx.data()), 1);
  EXPECT_LT(rel(dx, c.dx_ref), 1e-6) << "input gradient";
  std::fill(dx.begin(), dx.end(), NAN);
  data_in_slices(c.data(dx.data()), 3, [&](const cuda::DataOp& op, int splits) { run(op, splits); }, reverse);
  EXPECT_LT(rel(dx, c.dx_ref), 1e-6) << "input gradient, 3 slices";
  for (int splits : {1, 3}) {  // the slices, then conv.cu's fixed-order sum of them into dw
    std::vector<float> ws(size_t(splits) * c.dw_ref.size(), NAN), dw(c.dw_ref.size(), 0.0f);
    run(c.wgt(ws.data()), splits);
    const cuda::WeightSums sums{ws.data(), splits, c.g.K, c.g.C, c.g.R * c.g.S, dw.data()};
    ASSERT_TRUE(simt::run({2, 1, 1}, cuda::kThreads, [&] { cuda::splitk_reduce_kernel(sums); }, reverse));
    EXPECT_LT(rel(dw, c.dw_ref), 1e-6) << "weight gradient, " << splits << " slice(s)";
  }
}

template <int TM, int TN, bool kPrefetch>
void check_tiles(const Case& c, bool reverse, bool square_warps = false) {
  SCOPED_TRACE("tile " + std::to_string(TM) + "x" + std::to_string(TN) + (kPrefetch ? ", prefetch" : "") +
               (reverse ? ", reverse" : "") + (square_warps ? ", 4x8 warps" : ""));
  check_fp32_products(c, reverse, [&](const auto& op, int splits) {
    run_tile_kernel<TM, TN, kPrefetch>(op, splits, reverse, square_warps);
  });
}

template <int TM, int TN>
void check_async(const Case& c, bool reverse) {
  const simt::Readable readable(c.readable());
  SCOPED_TRACE("async tile " + std::to_string(TM) + "x" + std::to_string(TN) + (reverse ? ", reverse" : ""));
  check_fp32_products(c, reverse, [&](const auto& op, int splits) { run_async_kernel<TM, TN>(op, splits, reverse); });
}

// The bias gradient's two passes (a block per row and chunk, then the chunks of each row in
// order, added onto db) against sums in double.
void check_bias(const Case& c, int chunks, bool reverse) {
  const int K = c.g.K, npq = c.npq();
  const size_t chunk = (size_t(npq) + size_t(chunks) - 1) / size_t(chunks);
  std::vector<float> partial(size_t(K) * size_t(chunks), NAN), db(size_t(K), 1.0f);
  ASSERT_TRUE(simt::run({unsigned(K), unsigned(chunks), 1}, cuda::kThreads,
                        [&] { cuda::bias_partial_kernel(c.dz.data(), size_t(npq), chunk, partial.data()); }, reverse));
  ASSERT_TRUE(simt::run({1, 1, 1}, cuda::kThreads,
                        [&] { cuda::bias_finish_kernel(partial.data(), K, chunks, db.data()); }, reverse));
  for (int k = 0; k < K; ++k) {
    double want = 1.0;
    for (int j = 0; j < npq; ++j) want += c.dz[size_t(k) * size_t(npq) + size_t(j)];
    EXPECT_NEAR(db[size_t(k)], want, 1e-5 * (1.0 + std::fabs(want))) << "bias " << k << ", " << chunks << " chunk(s)";
  }
}

// A tensor-core kernel's three products, each through run(op, splits): the forward, the input
// gradient whole and in 3 split-K slices (data_in_slices), and the weight gradient in 2 slices
// (summed here), against the double reference at tolerance tol, and visibly rounded.
template <class Run>
void check_rounded_products(const Case& c, double tol, Run run, bool rounds = true) {
  std::vector<float> y(c.y_ref.size(), NAN), dx(c.dx_ref.size(), NAN), dx3(c.dx_ref.size(), NAN);
  std::vector<float> ws(2 * c.dw_ref.size(), NAN), dw(c.dw_ref.size(), 0.0f);
  run(c.fwd(y.data()), 1);
  run(c.data(dx.data()), 1);
  data_in_slices(c.data(dx3.data()), 3, run);
  run(c.wgt(ws.data()), 2);
  for (size_t i = 0; i < dw.size(); ++i) dw[i] = ws[i] + ws[dw.size() + i];
  EXPECT_LT(rel(y, c.y_ref), tol) << "forward";
  EXPECT_LT(rel(dx, c.dx_ref), tol) << "input gradient";
  EXPECT_LT(rel(dx3, c.dx_ref), tol) << "input gradient, 3 slices";
  EXPECT_LT(rel(dw, c.dw_ref), tol) << "weight gradient";
  if (rounds) {
    EXPECT_GT(rel(y, c.y_ref), 1e-7) << "the operands were not rounded";
  }
}

// The tensor-core kernel (a TM x TN tile), with tf32 or bfloat16 operands as tests/simt_host.h rounds
// them, against the same reference at test_cuda_ops' tolerances for these precisions.
template <class Prec, bool kPrefetch, int TM = cuda::BM, int TN = cuda::BN>
void check_tensor_core(const Case& c, double tol) {
  for (bool reverse : {false, true}) {
    SCOPED_TRACE("tile " + std::to_string(TM) + "x" + std::to_string(TN) + (reverse ? ", reverse" : ""));
    auto run = [reverse](const auto& op, int splits) {
      using Op = std::decay_t<decltype(op)>;
      const int chunk = (op.Kd + splits - 1) / splits;
      const SimtDim3 grid{unsigned((op.N + TN - 1) / TN), unsigned((op.M + TM - 1) / TM), unsigned(splits)};
      const std::function<void()> body = [&] { cuda::igemm_tc_kernel<Op, Prec, kPrefetch, TM, TN>(op, chunk); };
      ASSERT_TRUE(simt::run(grid, cuda::kGemmThreads, body, reverse)) << "threads disagree on barriers";
    };
    check_rounded_products(c, tol, run);
  }
}

}  // namespace

// The tile kernel itself, every tile shape, threads resumed in both orders (a missing barrier
// around the shared operand keys gives a wrong product in one of them), with the split-K sum
// and the bias gradient.
TEST(ImplicitGemm, TileKernelOnTheCpuReproducesTheCpuConvolution) {
  std::mt19937 rng(5);
  for (const ConvGeom& cg : kCases) {
    const Case c(cg, rng);
    SCOPED_TRACE(c.name());
    for (bool reverse : {false, true}) {
      check_tiles<64, 64, true>(c, reverse);
      check_tiles<32, 128, true>(c, reverse);
      check_tiles<16, 256, true>(c, reverse);
      check_tiles<64, 64, false>(c, reverse);
      check_tiles<16, 256, false>(c, reverse);
      check_tiles<128, 128, true>(c, reverse);
      check_tiles<64, 256, true>(c, reverse);
      check_tiles<128, 128, false>(c, reverse);
      check_tiles<64, 64, true>(c, reverse, true);
      check_tiles<32, 128, true>(c, reverse, true);
      check_tiles<16, 256, true>(c, reverse, true);
      check_async<128, 128>(c, reverse);
      check_async<64, 256>(c, reverse);
      check_bias(c, 1, reverse);
      check_bias(c, 3, reverse);
    }
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

TEST(ImplicitGemm, TensorCoreKernelOnTheCpuReproducesTheCpuConvolution) {
  std::mt19937 rng(7);
  for (const ConvGeom& cg : kCases) {
    const Case c(cg, rng);
    SCOPED_TRACE(c.name());
    {
      SCOPED_TRACE("tf32");
      check_tensor_core<cuda::Tf32, true>(c, 3e-3);
      check_tensor_core<cuda::Tf32, true, 128, 128>(c, 3e-3);
      check_tensor_core<cuda::Tf32, true, 64, 256>(c, 3e-3);
    }
    {
      SCOPED_TRACE("bf16");
      check_tensor_core<cuda::Bf16, true>(c, 2e-2);
      check_tensor_core<cuda::Bf16, true, 128, 128>(c, 2e-2);
    }
    {
      SCOPED_TRACE("tf32, prefetch off");
      check_tensor_core<cuda::Tf32, false>(c, 3e-3);
    }
  }
}

namespace {

// The mma kernel on one op, its grid, slices and 16-byte copies as conv.cu launches it (resident:
// as in check_mma below), threads resumed in the given order; true where the blocks took several
// tiles.
template <class Prec, int TM, int TN, int WM, class Op>
bool run_mma(const Op& op, int splits, bool reverse, int resident) {
  static_assert(cuda::MmaShape<Op, Prec, TM, TN, WM>::kSmemBytes <= simt::kDynamicSharedFloats * sizeof(float),
                "the stages fit the emulator's dynamic shared memory");
  const int chunk = cuda::mma_chunk(op.Kd, splits);
  const cuda::MmaVec vec = cuda::mma_vec(op);
  const cuda::MmaGrid mg = cuda::mma_grid(op.M, op.N, TM, TN, Op::kBAlongK, chunk, splits, resident, 1 << 30);
  const SimtDim3 grid{unsigned(mg.blocks), 1, unsigned(splits)};
  const std::function<void()> body = [&] { cuda::igemm_mma_kernel<Op, Prec, TM, TN, WM>(op, chunk, vec, mg.tiles); };
  EXPECT_TRUE(simt::run(grid, cuda::kGemmThreads, body, reverse, cuda::MmaShape<Op, Prec, TM, TN, WM>::kSmemBytes))
      << "threads disagree on barriers";
  return mg.blocks < mg.tiles;
}

// The mma kernel (kernels/cuda/igemm_mma.cuh, v7) with one tile and precision, its grid, slices
// and 16-byte copies as conv.cu launches it, threads resumed in the given order. resident > 0:
// the persistent grid (mma_grid) of that many blocks wherever it applies, here at any depth (conv.cu
// keeps it to products of at most 8 k-steps); *persistent counts the launches whose blocks took
// several tiles.
template <class Prec, int TM, int TN, int WM>
void check_mma(const Case& c, double tol, bool reverse, int resident = 0, int* persistent = nullptr) {
  constexpr bool rounds = !Prec::kSplit;
  // Every copy reads inside the operands (check_rounded_products may round copies of them: those
  // are declared where it makes them).
  const simt::Readable readable(c.readable());
  SCOPED_TRACE("mma tile " + std::to_string(TM) + "x" + std::to_string(TN) + (reverse ? ", reverse" : "") +
               (resident ? ", " + std::to_string(resident) + " resident block(s)" : ""));
  auto run = [reverse, resident, persistent](const auto& op, int splits) {
    using Op = std::decay_t<decltype(op)>;
    if (run_mma<Prec, TM, TN, WM, Op>(op, splits, reverse, resident) && persistent) ++*persistent;
  };
  check_rounded_products(c, tol, run, rounds);
  // The bias gradient folded into the weight gradient (WeightOp::rows: dz's row sums per slice,
  // from the first column tile's blocks, fp32 as copied), summed with the slices by
  // splitk_reduce_kernel onto db = 1, against sums in double.
  for (int splits : {1, 3}) {
    const int K = c.g.K, npq = c.npq();
    std::vector<float> ws(size_t(splits) * c.dw_ref.size(), NAN), rows(size_t(splits) * size_t(K), NAN);
    std::vector<float> dw(c.dw_ref.size(), 0.0f), db(size_t(K), 1.0f);
    cuda::WeightOp op = c.wgt(ws.data());
    op.rows = rows.data();
    run(op, splits);
    ASSERT_TRUE(simt::run({2, 1, 1}, cuda::kThreads, [&] {
      cuda::WeightSums sums{ws.data(), splits, K, c.g.C, c.g.R * c.g.S, dw.data()};
      sums.rows = rows.data(), sums.db = db.data();
      cuda::splitk_reduce_kernel(sums);
    }, reverse));
    EXPECT_LT(rel(dw, c.dw_ref), tol) << "weight gradient beside the bias, " << splits << " slice(s)";
    for (int k = 0; k < K; ++k) {
      double want = 1.0;
      for (int j = 0; j < npq; ++j) want += c.dz[size_t(k) * size_t(npq) + size_t(j)];
      EXPECT_NEAR(db[size_t(k)], want, 1e-5 * (1.0 + std::fabs(want))) << "bias " << k << ", " << splits << " slice(s)";
    }
  }
}

}  // namespace

// The cp.async + mma.sync kernel on the CPU: tests/simt_host.h performs each copy only when its
// thread waits for it and exchanges fragments between the lanes by the PTX layouts, so a wrong
// fragment index, stage, key buffer, wait depth or barrier gives a wrong product. Every tile
// conv.cu's rule picks, both precisions (3 and 4 pipeline stages among them), and threads resumed
// in reverse order for one tile of each precision (the emulation costs about 0.2 s a tile and case).
TEST(ImplicitGemm, MmaKernelOnTheCpuReproducesTheCpuConvolution) {
  std::mt19937 rng(11);
  int vector_cases = 0, paired = 0, unpaired = 0, persistent = 0;
  for (const ConvGeom& cg : kCases) {
    const Case c(cg, rng);
    SCOPED_TRACE(c.name());
    // The 16-byte copies: both operands of the 1x1 case with 4k-float planes (x: 3*7*4 = 84 per
    // channel), the forward's weights wherever C*R*S is a multiple of 4, and the input
    // gradient's transposed weights wherever K*R*S is (the 1x1 case and the 3x3 70 -> 80).
    std::vector<float> none;
    const cuda::MmaVec f = cuda::mma_vec(c.fwd(none.data())), d = cuda::mma_vec(c.data(none.data())),
                       w = cuda::mma_vec(c.wgt(none.data()));
    if (f.a && f.b && d.a && d.b && w.a && w.b) ++vector_cases;
    for (bool pair : {f.pair, d.pair, w.pair}) ++(pair ? paired : unpaired);
    {
      SCOPED_TRACE("bf16");
      check_mma<cuda::MmaBf16, 64, 128, 2>(c, 2e-2, false);
      check_mma<cuda::MmaBf16, 64, 128, 2>(c, 2e-2, true);
      check_mma<cuda::MmaBf16, 32, 128, 2>(c, 2e-2, false);
      check_mma<cuda::MmaBf16, 16, 128, 1>(c, 2e-2, false);
      check_mma<cuda::MmaBf16, 64, 64, 4>(c, 2e-2, false);
      check_mma<cuda::MmaBf16, 128, 64, 4>(c, 2e-2, false);
      check_mma<cuda::MmaBf16, 128, 128, 2>(c, 2e-2, false);
    }
    {
      SCOPED_TRACE("tf32");
      check_mma<cuda::MmaTf32, 64, 128, 2>(c, 3e-3, false);
      check_mma<cuda::MmaTf32, 32, 128, 2>(c, 3e-3, false);
      check_mma<cuda::MmaTf32, 16, 128, 1>(c, 3e-3, false);
      check_mma<cuda::MmaTf32, 64, 64, 4>(c, 3e-3, false);
      check_mma<cuda::MmaTf32, 64, 64, 4>(c, 3e-3, true);
      check_mma<cuda::MmaTf32, 128, 64, 4>(c, 3e-3, false);
      check_mma<cuda::MmaTf32, 128, 128, 2>(c, 3e-3, true);
    }
    {
      // Blocks that take several tiles: one pipeline through all of their k-steps, the outputs of
      // each tile stored as its last step is multiplied (1 block: every tile; 2: uneven shares).
      SCOPED_TRACE("persistent blocks");
      check_mma<cuda::MmaBf16, 64, 128, 2>(c, 2e-2, false, 1, &persistent);
      check_mma<cuda::MmaBf16, 64, 64, 4>(c, 2e-2, true, 2, &persistent);
      check_mma<cuda::MmaTf32, 128, 64, 4>(c, 3e-3, false, 2, &persistent);
      check_mma<cuda::MmaTf32, 16, 128, 1>(c, 3e-3, false, 1, &persistent);
    }
  }
  EXPECT_GT(persistent, 20) << "launches whose blocks took several tiles";
  EXPECT_EQ(vector_cases, 1) << "the 1x1 case takes the 16-byte copies for every operand that allows them";
  // The 8-byte output stores (even rows: every forward here) and the single ones (odd rows: the
  // input gradient at 3 x 17 x 17, the weight gradients of 3 x 7 x 7 and 3 x 3 x 3 filters).
  EXPECT_GT(paired, 10) << "products stored in pairs";
  EXPECT_GT(unpaired, 2) << "products stored one output at a time";
}

// Whole tiles and whole k-steps of a plain 1x1 product, which the mma kernel copies through row
// pointers (its dense_copies) where the others go through keys and bounds: the 1x1 136 -> 144 over
// 2 x 10 x 13 pixels has whole and partial tiles of every size in all three products (M 144, 136,
// 144; N 260, 260, 136; 136, 144 and 260 deep: 4, 4 and 8 whole 32-deep steps, then a partial
// one). Every tile, both precisions and 3xTF32, threads in both orders, persistent blocks, against
// the double reference.
TEST(ImplicitGemm, MmaKernelCopiesWholeTilesOfPlainProductsThroughRowPointers) {
  std::mt19937 rng(17);
  const Case c(ConvGeom{2, 136, 10, 13, 144, 1, 1, 1, 0}, rng);
  std::vector<float> none;
  for (const cuda::MmaVec v :
       {cuda::mma_vec(c.fwd(none.data())), cuda::mma_vec(c.data(none.data())), cuda::mma_vec(c.wgt(none.data()))})
    ASSERT_TRUE(v.a && v.b && v.dense) << "both operands dense in every product";
  check_mma<cuda::MmaTf32, 128, 128, 2>(c, 3e-3, false);
  check_mma<cuda::MmaTf32, 128, 128, 2>(c, 3e-3, true);
  check_mma<cuda::MmaBf16, 128, 128, 2>(c, 2e-2, false);
  check_mma<cuda::MmaTf32, 128, 64, 4>(c, 3e-3, true);
  check_mma<cuda::MmaBf16, 64, 128, 2>(c, 2e-2, false);
  check_mma<cuda::MmaTf32, 64, 64, 4>(c, 3e-3, false);
  check_mma<cuda::MmaTf32, 32, 128, 2>(c, 3e-3, false);
  check_mma<cuda::MmaBf16, 16, 128, 1>(c, 2e-2, true);
  check_mma<cuda::MmaTf32x3, 64, 64, 4>(c, 1e-6, false);
  int persistent = 0;
  check_mma<cuda::MmaTf32, 128, 64, 4>(c, 3e-3, false, 2, &persistent);
  check_mma<cuda::MmaBf16, 128, 128, 2>(c, 2e-2, true, 1, &persistent);
  EXPECT_GE(persistent, 4) << "launches whose blocks took several tiles";
}

// The tile rule (igemm_mma.cuh's mma_tile): the one-block 128 x 128 tile takes dense products
// (both operands copied 16 bytes at a time, as conv.cu's mma_vec finds them) of at least 256 rows
// and columns, more than 256 deep, where the GPU allows its stages. Over every convolution of
// both models at batch 128 that is exactly conv10's three products, which take 128 x 64 without
// it; no other product's tile changes (fire8's and fire9's expand 3x3 would pass the sizes, but
// gather their B).
TEST(ImplicitGemm, MmaTileTakesTheWideTileForConv10Only) {
  int wide = 0;
  for (const char* name : {"squeezenet1.0", "squeezenet1.1"}) {
    Model m(preset(name), 1);  // (its geometry; the batch is set below)
    for (const Layer& l : m.layers()) {
      std::vector<ConvGeom> convs;
      if (l.kind == LayerKind::kConv) convs = {l.conv};
      if (l.kind == LayerKind::kFire) convs = {l.fire.squeeze(), l.fire.expand1(), l.fire.expand3()};
      for (ConvGeom g : convs) {
        g.N = 128;
        const int npq = g.N * g.P() * g.Q(), crs = g.C * g.R * g.S;
        const cuda::Geo geo{g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad, g.P(), g.Q()};
        const float* none = nullptr;  // (aligned: conv.cu's tensors are)
        struct Product {
          const char* what;
          int M, N, Kd;
          bool b_along_k;
          cuda::MmaVec vec;
        };
        const cuda::FwdOp fop{geo, none, none, none, nullptr, false, g.K, npq, crs};
        const cuda::DataOp dop{geo, none, none, nullptr, false, g.C, g.N * g.H * g.W, g.K * g.R * g.S};
        const cuda::WeightOp wop{geo, none, none, nullptr, g.K, crs, npq};
        for (const Product& p : {Product{"forward", fop.M, fop.N, fop.Kd, false, cuda::mma_vec(fop)},
                                 Product{"input gradient", dop.M, dop.N, dop.Kd, false, cuda::mma_vec(dop)},
                                 Product{"weight gradient", wop.M, wop.N, wop.Kd, true, cuda::mma_vec(wop)}}) {
          SCOPED_TRACE(std::string(name) + " " + l.name + " " + p.what);
          const bool dense = p.vec.dense;
          const cuda::MmaTileSize on = cuda::mma_tile(p.M, p.N, p.Kd, p.b_along_k, dense, true);
          const cuda::MmaTileSize off = cuda::mma_tile(p.M, p.N, p.Kd, p.b_along_k, dense, false);
          EXPECT_NE(off.m * off.n, 128 * 128) << "the wide tile only where the GPU allows it";
          if (l.name == "conv10") {
            ++wide;
            EXPECT_EQ(on.m, 128);
            EXPECT_EQ(on.n, 128);
            EXPECT_EQ(off.m, 128);
            EXPECT_EQ(off.n, 64);
          } else {
            EXPECT_EQ(on.m, off.m);
            EXPECT_EQ(on.n, off.n);
          }
        }
      }
    }
  }
  EXPECT_EQ(wide, 6) << "conv10's three products in each model";
  // test_cuda_ops' small wide case, 1x1 384 -> 512 over 512 pixels: all three products.
  for (const auto& [M, N, Kd, along_k] : {std::tuple{512, 512, 384, false}, std::tuple{384, 512, 512, false},
                                           std::tuple{512, 384, 512, true}}) {
    const cuda::MmaTileSize t = cuda::mma_tile(M, N, Kd, along_k, true, true);
    EXPECT_EQ(t.m * t.n, 128 * 128) << M << " x " << N << ", " << Kd << " deep";
  }
  // 256 deep or a gathered operand: the two-block tiles.
  EXPECT_EQ(cuda::mma_tile(512, 512, 256, false, true, true).n, 64);
  EXPECT_EQ(cuda::mma_tile(512, 512, 384, false, false, true).n, 64);
}

// conv.cu's grid for the mma kernel (mma_grid): persistent blocks only for a whole product (one
// slice) of at most kPersistSteps 32-deep steps, whose B does not run along k, with more tiles than
// the GPU holds blocks; a block a tile otherwise.
TEST(ImplicitGemm, MmaGridPersistsOnlyShortWholeProducts) {
  const int resident = 264;  // two blocks on each of an H200's 132 SMs
  // conv1's forward at batch 128: 96 x 1,520,768 outputs in 128 x 64 tiles, 147 deep.
  const cuda::MmaGrid conv1 = cuda::mma_grid(96, 1520768, 128, 64, false, cuda::mma_chunk(147, 1), 1, resident);
  EXPECT_EQ(conv1.tiles, 23762);
  EXPECT_EQ(conv1.blocks, resident);
  // 8 steps persist, 9 do not; the weight gradient, a split-K launch and a small product never.
  EXPECT_EQ(cuda::mma_grid(64, 100000, 64, 128, false, 256, 1, resident).blocks, resident);
  EXPECT_EQ(cuda::mma_grid(64, 100000, 64, 128, false, 257, 1, resident).blocks, 782);
  EXPECT_EQ(cuda::mma_grid(64, 100000, 64, 64, true, 64, 1, resident).blocks, 1563);
  EXPECT_EQ(cuda::mma_grid(64, 100000, 64, 128, false, 64, 2, resident).blocks, 782);
  EXPECT_EQ(cuda::mma_grid(64, 100, 64, 128, false, 64, 1, resident).blocks, 1);
  EXPECT_EQ(cuda::mma_grid(64, 100000, 64, 128, false, 64, 1, 0).blocks, 782) << "SQUEEZE_IGEMM_PERSIST=0";
}

// The input gradient's ReLU epilogue (the Fire's ds: the second expand's product added onto the
// first's, then the squeeze ReLU's backward, x > 0 ? dx : 0, in the store): through the plain loop
// and the fp32, WMMA and mma kernels, and through split-K slices whose reduction applies it, onto
// a random earlier dx, against the reference. Masking
// before the sum, or not at all, leaves d0 or the sum where x <= 0.
TEST(ImplicitGemm, InputGradientEpilogueAddsThenAppliesTheReluOfX) {
  std::mt19937 rng(13);
  for (const ConvGeom& cg : {kCases[2], kCases[8], kCases[9]}) {
    const Case c(cg, rng);
    SCOPED_TRACE(c.name());
    std::normal_distribution<float> nd;
    std::vector<float> d0(c.dx_ref.size());
    for (float& v : d0) v = nd(rng);
    std::vector<double> want(d0.size());
    size_t masked = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      want[i] = c.x[i] > 0.0f ? double(d0[i]) + c.dx_ref[i] : 0.0;
      masked += !(c.x[i] > 0.0f);
    }
    ASSERT_GT(masked, want.size() / 4) << "the mask must matter";
    auto op_onto = [&](std::vector<float>& dx) {
      dx = d0;
      cuda::DataOp op = c.data(dx.data());
      op.accumulate = true;
      op.relu_x = c.x.data();
      return op;
    };
    std::vector<float> dx;
    multiply(op_onto(dx), c.dz);
    EXPECT_LT(rel(dx, want), 1e-6) << "plain loop";
    {
      const cuda::DataOp op = op_onto(dx);
      ASSERT_TRUE(simt::run({unsigned((op.N + 63) / 64), unsigned((op.M + 63) / 64), 1}, cuda::kGemmThreads,
                            [&] { cuda::igemm_kernel<cuda::DataOp, 64, 64>(op, op.Kd); }));
      EXPECT_LT(rel(dx, want), 1e-6) << "fp32 tile kernel";
    }
    {
      const cuda::DataOp op = op_onto(dx);
      ASSERT_TRUE(simt::run({unsigned((op.N + 63) / 64), unsigned((op.M + 63) / 64), 1}, cuda::kGemmThreads,
                            [&] { cuda::igemm_tc_kernel<cuda::DataOp, cuda::Tf32>(op, op.Kd); }));
      EXPECT_LT(rel(dx, want), 3e-3) << "WMMA kernel, tf32";
    }
    auto mma = [](const cuda::DataOp& op, int splits) {
      const int chunk = cuda::mma_chunk(op.Kd, splits);
      const int tiles = ((op.N + 127) / 128) * ((op.M + 63) / 64);
      ASSERT_TRUE(simt::run({unsigned(tiles), 1, unsigned(splits)}, cuda::kGemmThreads, [&] {
        cuda::igemm_mma_kernel<cuda::DataOp, cuda::MmaBf16, 64, 128, 2>(op, chunk, cuda::mma_vec(op), tiles);
      }, false, cuda::MmaShape<cuda::DataOp, cuda::MmaBf16, 64, 128, 2>::kSmemBytes));
    };
    mma(op_onto(dx), 1);
    EXPECT_LT(rel(dx, want), 2e-2) << "mma kernel, bf16";
    // In split-K slices, the epilogue applied by the reduction (conv.cu's data_splits).
    data_in_slices(op_onto(dx), 3, [](const cuda::DataOp& op, int splits) {
      run_tile_kernel<64, 64, true>(op, splits, false, false);
    });
    EXPECT_LT(rel(dx, want), 1e-6) << "fp32 tile kernel, 3 slices";
    data_in_slices(op_onto(dx), 3, mma);
    EXPECT_LT(rel(dx, want), 2e-2) << "mma kernel, bf16, 3 slices";
  }
}

namespace {

// The operand as the kernels round it: TF32 cut toward zero (they pass fp32 bits, of which mma
// reads the upper 19: tests/simt_host.h's tf32_value), BF16 to nearest even (pack_bf16x2).
template <class Prec>
float rounded(float v) {
  if (Prec::K == 8) return simt::tf32_value(tf32_operand(v));
  return simt_to_float(__float2bfloat16_rn(v));
}
// The case with x, w and dz rounded so, and its references from them: what a kernel that rounds
// its operands must match to fp32's accumulation error.
template <class Prec>
Case rounded_case(const Case& c) {
  Case r = c;
  for (auto* v : {&r.x, &r.w, &r.dz})
    for (float& e : *v) e = rounded<Prec>(e);
  r.reference();
  return r;
}

// A weight gradient's split-K slices ws (and, with bias, its row sums of dz: rows) summed by
// conv.cu's splitk_reduce_kernel into dw (and onto db = 1), against the reference on rounded
// operands r (1e-5) and visibly rounded; the bias against double sums of c's dz.
void expect_weight_slices(const Case& c, const Case& r, std::vector<float>& ws, std::vector<float>& rows,
                          int slices, bool bias, bool reverse, double tol = 1e-5, bool rounds = true) {
  const int K = c.g.K, npq = c.npq();
  std::vector<float> dw(c.dw_ref.size(), 0.0f), db(size_t(K), 1.0f);
  ASSERT_TRUE(simt::run({2, 1, 1}, cuda::kThreads, [&] {
    cuda::WeightSums sums{ws.data(), slices, K, c.g.C, c.g.R * c.g.S, dw.data()};
    if (bias) sums.rows = rows.data(), sums.db = db.data();
    cuda::splitk_reduce_kernel(sums);
  }, reverse));
  EXPECT_LT(rel(dw, r.dw_ref), tol) << "weight gradient";
  if (rounds) {
    EXPECT_GT(rel(dw, c.dw_ref), 1e-7) << "the operands were not rounded";
  }
  if (!bias) return;
  for (int k = 0; k < K; ++k) {
    double want = 1.0;
    for (int j = 0; j < npq; ++j) want += c.dz[size_t(k) * size_t(npq) + size_t(j)];
    EXPECT_NEAR(db[size_t(k)], want, 1e-5 * (1.0 + std::fabs(want))) << "bias " << k;
  }
}

// The wgmma kernel (kernels/cuda/igemm_wg.cuh) on one op, its grid and split-K chunks as conv.cu's
// launch_wg makes them, threads resumed in the given order.
template <bool kBf16, int TM, class Op>
void run_wg(const Op& op, int splits, bool reverse) {
  using Sh = cuda::WgShape<kBf16, TM>;
  static_assert(Sh::kSmemBytes <= simt::kDynamicSharedFloats * sizeof(float), "the stages fit the emulator");
  ASSERT_TRUE(cuda::mma_vec(op).dense);
  const int chunk = cuda::mma_chunk(op.Kd, splits);
  const SimtDim3 grid{unsigned((op.N + 127) / 128), unsigned((op.M + TM - 1) / TM), unsigned(splits)};
  ASSERT_TRUE(simt::run(grid, cuda::kWgThreads, [&] { cuda::igemm_wg_kernel<Op, kBf16, TM>(op, chunk); }, reverse,
                        Sh::kSmemBytes))
      << "threads disagree on barriers";
}

// One tile and precision: the forward and the input gradient (whole, in 3 split-K slices summed by
// data_splitk_reduce_kernel, and onto an earlier dx under the ReLU of x) against the double
// reference on operands rounded as the kernel rounds them (r: TF32 or BF16), to fp32's
// accumulation error.
template <bool kBf16, int TM>
void check_wg(const Case& c, const Case& r, bool reverse) {
  const simt::Readable readable(c.readable());
  SCOPED_TRACE(std::string("wgmma tile ") + (kBf16 ? "BF16 " : "TF32 ") + std::to_string(TM) + "x128" +
               (reverse ? ", reverse" : ""));
  std::vector<float> y(c.y_ref.size(), NAN), dx(c.dx_ref.size(), NAN), dx3(c.dx_ref.size(), NAN);
  run_wg<kBf16, TM>(c.fwd(y.data()), 1, reverse);
  EXPECT_LT(rel(y, r.y_ref), 1e-5) << "forward";
  EXPECT_GT(rel(y, c.y_ref), 1e-7) << "the operands were not rounded";
  run_wg<kBf16, TM>(c.data(dx.data()), 1, reverse);
  EXPECT_LT(rel(dx, r.dx_ref), 1e-5) << "input gradient";
  data_in_slices(c.data(dx3.data()), 3, [&](const cuda::DataOp& op, int splits) { run_wg<kBf16, TM>(op, splits, reverse); },
                 reverse);
  EXPECT_LT(rel(dx3, r.dx_ref), 1e-5) << "input gradient, 3 slices";
  // dx = relu'(x) * (old dx + the product): the Fire's squeeze input gradient.
  std::vector<float> old(c.dx_ref.size()), acc(c.dx_ref.size());
  for (size_t i = 0; i < old.size(); ++i) old[i] = acc[i] = float(i % 7) - 3.0f;
  cuda::DataOp op = c.data(acc.data());
  op.accumulate = true;
  op.relu_x = c.x.data();
  run_wg<kBf16, TM>(op, 1, reverse);
  std::vector<double> want(old.size());
  for (size_t i = 0; i < want.size(); ++i) want[i] = c.x[i] > 0.0f ? old[i] + r.dx_ref[i] : 0.0;
  EXPECT_LT(rel(acc, want), 1e-5) << "input gradient onto dx, under the ReLU of x";
}

// The window kernel (kernels/cuda/igemm_win.cuh) on one op, its grid as conv.cu launches it
// (resident > 0: that many persistent blocks; splits > 1: a block a tile and that many slices of
// whole chunks), threads resumed in the given order.
template <class Prec, int TM, int TN, int WM, class Op>
void run_win(const Op& op, bool reverse, int resident, int splits = 1) {
  ASSERT_TRUE(cuda::win_fits(op));
  const size_t smem = cuda::win_smem_bytes<Prec, TM, TN, WM>(op.g.W);
  const int tiles = ((op.M + TM - 1) / TM) * ((op.N + TN - 1) / TN);
  const int blocks = resident > 0 && splits == 1 ? std::min(tiles, resident) : tiles;
  const int ldw = cuda::win_ld(TN, op.g.W, Prec::K == 16);
  const int slice_chunks = cuda::win_slice_chunks(cuda::Win<Op>::channels(op), splits);
  const cuda::MmaVec vec = cuda::mma_vec(op);
  ASSERT_TRUE(simt::run({unsigned(blocks), 1, unsigned(splits)}, cuda::kGemmThreads,
                        [&] { cuda::igemm_win_kernel<Op, Prec, TM, TN, WM>(op, ldw, vec, tiles, slice_chunks); },
                        reverse, smem))
      << "threads disagree on barriers";
}

// A window product's forward and input gradient through run(op, splits) (a FwdOp or a DataOp;
// splits > 1 for the input gradient's split-K slices) against the double reference of the same
// convolution on operands rounded as the kernel rounds them (r), to fp32's accumulation error: the
// input gradient whole, in 3 split-K slices of whole chunks summed (and the epilogue applied) by
// data_splitk_reduce_kernel (3 slices of 1, 2 or 5 chunks leave some empty (zeros) and give others
// 2), and onto an earlier dx under the ReLU of x (the Fire's ds epilogue).
template <class Run>
void check_window_products(const Case& c, const Case& r, bool reverse, bool rounds, double tol, Run run) {
  const simt::Readable readable(c.readable());
  std::vector<float> y(c.y_ref.size(), NAN), dx(c.dx_ref.size(), NAN);
  run(c.fwd(y.data()), 1);
  EXPECT_LT(rel(y, r.y_ref), tol) << "forward";
  if (rounds) {
    EXPECT_GT(rel(y, c.y_ref), 1e-7) << "the operands were not rounded";
  }
  run(c.data(dx.data()), 1);
  EXPECT_LT(rel(dx, r.dx_ref), tol) << "input gradient";
  std::fill(dx.begin(), dx.end(), NAN);
  data_in_slices(c.data(dx.data()), 3, [&](const cuda::DataOp& op, int splits) { run(op, splits); }, reverse);
  EXPECT_LT(rel(dx, r.dx_ref), tol) << "input gradient, 3 slices";
  std::vector<float> d0(dx.size()), dx2(dx.size());
  std::vector<double> want(dx.size());
  for (size_t i = 0; i < dx.size(); ++i) {
    d0[i] = float(i % 5) - 2.0f;
    want[i] = c.x[i] > 0.0f ? d0[i] + r.dx_ref[i] : 0.0;
  }
  dx2 = d0;
  cuda::DataOp onto = c.data(dx2.data());
  onto.accumulate = true, onto.relu_x = c.x.data();
  run(onto, 1);
  EXPECT_LT(rel(dx2, want), tol) << "input gradient added onto dx under the ReLU of x";
}

// One tile and precision of the window kernel (resident > 0: persistent blocks).
template <class Prec, int TM, int TN, int WM>
void check_win(const Case& c, const Case& r, bool reverse, int resident, double tol = 1e-5) {
  SCOPED_TRACE("window tile " + std::to_string(TM) + "x" + std::to_string(TN) + (reverse ? ", reverse" : "") +
               (resident ? ", " + std::to_string(resident) + " resident block(s)" : ""));
  // (MmaTf32x3 does not round: r is c)
  check_window_products(c, r, reverse, !Prec::kSplit, tol, [&](const auto& op, int splits) {
    run_win<Prec, TM, TN, WM>(op, reverse, resident, splits);
  });
}

// The window kernels' geometries (N, C, H, W, K): pixel runs of 4k floats, channels in chunks of
// 16; several images and rows a tile, H != W, M under a tile and over one, 1 to 5 chunks. W = 0
// mod 4 puts a tile's window 3 floats past a multiple of 4, the most its start can be rounded down
// (win_pieces' + 3); at W = 12 the first 128-pixel tile ends inside an image, where its last pixel
// reads the window's end. For the weight gradient (64-pixel chunks): 468 pixels (7 chunks and a
// part), 168 pixels over 48 channels (3 channel tiles), 60 pixels (one partial chunk; 3 slices
// leave two empty) over 80 rows (two row tiles of 64, the second partial).
const ConvGeom kWinCases[] = {
    {4, 16, 9, 13, 32, 3, 3, 1, 1},  // 468 pixels: tiles that start mid-row and mid-image
    {2, 48, 7, 12, 16, 3, 3, 1, 1},  // forward 3 chunks; input gradient of 48 rows, 1 chunk
    {3, 32, 5, 4, 80, 3, 3, 1, 1},   // forward 80 rows; input gradient 5 chunks
};

template <class Prec>
void check_win_cases(int& chunked, int& misaligned_a) {
  std::mt19937 rng(17);
  for (const ConvGeom& cg : kWinCases) {
    const Case c(cg, rng), r = rounded_case<Prec>(c);
    SCOPED_TRACE(c.name());
    chunked += cg.C / cuda::kWinC > 1 || cg.K / cuda::kWinC > 1;
    check_win<Prec, 64, 128, 2>(c, r, false, 0);
    check_win<Prec, 32, 256, 1>(c, r, false, 0);
    check_win<Prec, 16, 256, 1>(c, r, true, 0);
    check_win<Prec, 64, 128, 2>(c, r, true, 1);
    check_win<Prec, 16, 256, 1>(c, r, false, 2);
    // A's rows not 16-byte aligned: 4-byte copies.
    std::vector<float> w1(c.w.size() + 1), wt1(c.wt.size() + 1), y(c.y_ref.size(), NAN), dx(c.dx_ref.size(), NAN);
    std::copy(c.w.begin(), c.w.end(), w1.begin() + 1);
    std::copy(c.wt.begin(), c.wt.end(), wt1.begin() + 1);
    cuda::FwdOp f = c.fwd(y.data());
    cuda::DataOp d = c.data(dx.data());
    f.w = w1.data() + 1, d.wt = wt1.data() + 1;
    misaligned_a += !cuda::mma_vec(f).a && !cuda::mma_vec(d).a;
    run_win<Prec, 32, 256, 1>(f, false, 0);
    run_win<Prec, 64, 128, 2>(d, false, 2);
    EXPECT_LT(rel(y, r.y_ref), 1e-5) << "forward, A 4 bytes at a time";
    EXPECT_LT(rel(dx, r.dx_ref), 1e-5) << "input gradient, A 4 bytes at a time";
  }
}

}  // namespace

// The plain 1x1 products' forward and input gradient on wgmma (igemm_wg.cuh), the emulator's wgmma
// checked against the device by the probe (CudaOps.WgmmaProbeGivesTheProduct): both tiles and
// both precisions on two products, threads in both orders. 136 -> 144 over 2 x 10 x 13 pixels: M 144 and 136 (two row
// tiles of 128, the second partial; three of 64), N 260 (three pixel tiles, the last of 4 pixels),
// 136 and 144 deep (four whole 32-deep steps and a partial one: both fragment register sets, the
// pipeline's whole depth), 3 slices of 64, 64 and 16. 40 -> 16 over 2 x 6 x 6: M 16 and 40 (one
// partial tile), 40 and 16 deep (one step and a partial one; one partial step, and 3 slices of
// which two are empty and store zeros).
TEST(ImplicitGemm, WgmmaKernelReproducesThePlain1x1Products) {
  std::mt19937 rng(29);
  for (const ConvGeom& cg : {ConvGeom{2, 136, 10, 13, 144, 1, 1, 1, 0}, ConvGeom{2, 40, 6, 6, 16, 1, 1, 1, 0}}) {
    const Case c(cg, rng);
    const Case r = rounded_case<cuda::MmaTf32>(c), rb = rounded_case<cuda::MmaBf16>(c);
    SCOPED_TRACE(c.name());
    check_wg<false, 128>(c, r, false);
    check_wg<false, 64>(c, r, true);
    check_wg<true, 128>(c, rb, true);
    check_wg<true, 64>(c, rb, false);
  }
}

namespace {

// The wgmma window kernel (kernels/cuda/igemm_wgwin.cuh) on one op: A rewritten with its taps
// outermost by reorder_taps_kernel, then the kernel on conv.cu's grid (splits > 1: slices of whole
// 16-channel chunks), threads resumed in the given order. The rewritten A joins the memory the
// copies may read.
template <bool kBf16, int TM, class Op>
void run_wgwin(const Op& op, int splits, bool reverse) {
  ASSERT_TRUE(cuda::win_fits(op) && cuda::wgwin_fits(op.g));
  const int channels = cuda::Win<Op>::channels(op);
  std::vector<uint32_t> ar(size_t(op.M) * 9 * size_t(channels / (kBf16 ? 2 : 1)), 0x7FC00000u);
  const cuda::TapsOp top{cuda::Win<Op>::a(op), op.M, channels, kBf16, ar.data()};
  ASSERT_EQ(size_t(top.words()), ar.size());
  ASSERT_TRUE(simt::run({unsigned((top.words() + 255) / 256), 1, 1}, 256, [&] { cuda::reorder_taps_kernel(top); },
                        reverse));
  std::vector<simt::ReadableRun>& runs = simt::readable_runs();
  const size_t declared = runs.size();
  if (declared) runs.push_back({reinterpret_cast<const float*>(ar.data()), ar.size()});
  const SimtDim3 grid{unsigned((op.N + 127) / 128), unsigned((op.M + TM - 1) / TM), unsigned(splits)};
  const int ldw = cuda::wgwin_ld(op.g.W, kBf16), slice_chunks = cuda::win_slice_chunks(channels, splits);
  const bool ok = simt::run(
      grid, cuda::kWgThreads, [&] { cuda::igemm_wgwin_kernel<Op, kBf16, TM>(op, ar.data(), ldw, slice_chunks); },
      reverse, cuda::wgwin_smem_bytes<kBf16, TM>(op.g.W));
  runs.resize(declared);
  ASSERT_TRUE(ok) << "threads disagree on barriers";
}

template <bool kBf16, int TM>
void check_wgwin(const Case& c, const Case& r, bool reverse) {
  SCOPED_TRACE(std::string("wgmma window tile ") + (kBf16 ? "BF16 " : "TF32 ") + std::to_string(TM) + "x128" +
               (reverse ? ", reverse" : ""));
  check_window_products(c, r, reverse, true, 1e-5,
                        [&](const auto& op, int splits) { run_wgwin<kBf16, TM>(op, splits, reverse); });
}

}  // namespace

// The expand 3x3's forward and input gradient on wgmma (igemm_wgwin.cuh): both tiles and both
// precisions, threads in both orders, on the window kernel's geometries and 32 -> 144 over 2 x 8 x
// 8 (one whole 128-pixel tile; M 144: two row tiles of 128, the second partial, three of 64; the
// input gradient 9 chunks deep, 3 slices of 3).
TEST(ImplicitGemm, WgmmaWindowKernelReproducesTheExpand3x3Products) {
  std::mt19937 rng(31);
  std::vector<ConvGeom> cases(std::begin(kWinCases), std::end(kWinCases));
  cases.push_back({2, 32, 8, 8, 144, 3, 3, 1, 1});
  for (const ConvGeom& cg : cases) {
    const Case c(cg, rng);
    const Case r = rounded_case<cuda::MmaTf32>(c), rb = rounded_case<cuda::MmaBf16>(c);
    SCOPED_TRACE(c.name());
    check_wgwin<false, 128>(c, r, false);
    check_wgwin<false, 64>(c, r, true);
    check_wgwin<true, 128>(c, rb, true);
    check_wgwin<true, 64>(c, rb, false);
  }
}

// The window kernel on the CPU: the expand 3x3's forward and input gradient as nine shifted 1x1
// products over a window of the input in shared memory. tests/simt_host.h performs each copy only
// when its thread waits and fills shared memory with NaN, so a window too short, a wrong shift or
// tap bit, a stage read early or a wrong fragment gives a wrong product; the reference rounds the
// operands as the kernel does, so a tap or a channel off by one cannot hide in the rounding.
TEST(ImplicitGemm, WindowKernelOnTheCpuReproducesTheCpuConvolution) {
  int chunked = 0, misaligned_a = 0;
  {
    SCOPED_TRACE("tf32");
    check_win_cases<cuda::MmaTf32>(chunked, misaligned_a);
  }
  {
    SCOPED_TRACE("bf16");
    check_win_cases<cuda::MmaBf16>(chunked, misaligned_a);
  }
  EXPECT_EQ(chunked, 6) << "products of several 16-channel chunks";
  EXPECT_EQ(misaligned_a, 6) << "A's 4-byte copies";
}

namespace {

// The weight gradient's window kernel (igemm_win.cuh, igemm_winw_kernel) on one op, its grid and
// split-K slices of whole chunks as conv.cu launches it, threads resumed in the given order.
template <class Prec, int TM>
void run_winw(const cuda::WeightOp& op, int splits, bool reverse) {
  ASSERT_TRUE(cuda::win_fits(op));
  const int tiles = (op.M + TM - 1) / TM * (op.g.C / cuda::kWinC);
  const int ldw = cuda::winw_ld(op.g.W), slice = cuda::winw_slice_pixels(op.Kd, splits);
  ASSERT_TRUE(simt::run({unsigned(tiles), 1, unsigned(splits)}, cuda::kGemmThreads,
                        [&] { cuda::igemm_winw_kernel<Prec, TM>(op, ldw, slice); }, reverse,
                        cuda::winw_smem_bytes<Prec, TM>(op.g.W)))
      << "threads disagree on barriers";
}

// A weight-gradient kernel's split-K slices through run(op) (ws filled with NaN first, so that an
// output left unwritten shows), summed by conv.cu's splitk_reduce_kernel into dw, against the
// double reference on operands rounded as the kernel rounds them (r), to fp32's accumulation
// error; with bias, the rows of dz summed beside them onto db = 1 (fp32 as copied, unrounded)
// against sums in double (expect_weight_slices). Every weight-gradient kernel's test goes through it.
template <class Run>
void check_weight_kernel(const Case& c, const Case& r, int splits, bool reverse, bool bias, Run run,
                         double tol = 1e-5, bool rounds = true) {
  const simt::Readable readable(c.readable());
  std::vector<float> ws(size_t(splits) * c.dw_ref.size(), NAN), rows(size_t(splits) * size_t(c.g.K), NAN);
  cuda::WeightOp op = c.wgt(ws.data());
  if (bias) op.rows = rows.data();
  run(op);
  if (::testing::Test::HasFatalFailure()) return;  // (run's own ASSERTs)
  expect_weight_slices(c, r, ws, rows, splits, bias, reverse, tol, rounds);
}

// One tile, precision and slicing of the window kernel's weight gradient.
template <class Prec, int TM>
void check_winw(const Case& c, const Case& r, int splits, bool reverse, bool bias, double tol = 1e-5) {
  SCOPED_TRACE("weight-gradient window, " + std::to_string(TM) + " rows, " + std::to_string(splits) +
               " slice(s)" + (reverse ? ", reverse" : "") + (bias ? ", bias" : ""));
  check_weight_kernel(c, r, splits, reverse, bias, [&](const cuda::WeightOp& op) { run_winw<Prec, TM>(op, splits, reverse); },
                      tol, !Prec::kSplit);
}

template <class Prec>
void check_winw_cases(int& sliced_empty) {
  std::mt19937 rng(19);
  for (const ConvGeom& cg : kWinCases) {
    const Case c(cg, rng), r = rounded_case<Prec>(c);
    SCOPED_TRACE(c.name());
    sliced_empty += cuda::winw_slice_pixels(c.npq(), 3) * 2 >= c.npq();
    check_winw<Prec, 64>(c, r, 1, false, true);
    check_winw<Prec, 64>(c, r, 3, true, false);
    check_winw<Prec, 128>(c, r, 1, true, false);
    check_winw<Prec, 128>(c, r, 3, false, true);
  }
}

}  // namespace

// The weight gradient's window kernel on the CPU: dW as the products of dz's chunks of 64 pixels
// with the nine shifted windows of x, in both precisions, both tiles, whole and in split-K slices,
// with the bias's row sums. The emulator fills shared memory with NaN and performs a copy only
// when its thread waits, and the reference rounds the operands as the kernel does: a tap's shift,
// a tap bit, a channel or a pixel off by one gives a wrong product.
TEST(ImplicitGemm, WindowKernelOnTheCpuReproducesTheWeightGradient) {
  int sliced_empty = 0;
  {
    SCOPED_TRACE("tf32");
    check_winw_cases<cuda::MmaTf32>(sliced_empty);
  }
  {
    SCOPED_TRACE("bf16");
    check_winw_cases<cuda::MmaBf16>(sliced_empty);
  }
  EXPECT_EQ(sliced_empty, 2) << "3 slices of which some are empty";
}

namespace {

// The wgmma window weight gradient (igemm_wgwinw.cuh) on one op, its grid and split-K slices as
// conv.cu launches it (the window kernel's slices), threads resumed in the given order; then as
// check_winw, the slices summed and against the reference on rounded operands.
template <bool kBf16, int TN>
void check_wgwinw(const Case& c, const Case& r, int splits, bool reverse, bool bias) {
  SCOPED_TRACE(std::string("wgmma weight-gradient window, ") + (kBf16 ? "BF16, " : "TF32, ") + std::to_string(TN) +
               " filters, " + std::to_string(splits) + " slice(s)" + (reverse ? ", reverse" : "") + (bias ? ", bias" : ""));
  check_weight_kernel(c, r, splits, reverse, bias, [&](const cuda::WeightOp& op) {
    ASSERT_TRUE(cuda::win_fits(op) && cuda::wgwinw_fits(op.g));
    const int rtiles = (9 * op.g.C + 127) / 128, tiles = rtiles * ((op.M + TN - 1) / TN);
    const int ldw = cuda::wgwinw_ld(op.g.W, kBf16), slice = cuda::winw_slice_pixels(op.Kd, splits);
    ASSERT_TRUE(simt::run({unsigned(tiles), 1, unsigned(splits)}, cuda::kWgThreads,
                          [&] { cuda::igemm_wgwinw_kernel<kBf16, TN>(op, ldw, slice); }, reverse,
                          cuda::wgwinw_smem_bytes<kBf16, TN>(op.g.W)))
        << "threads disagree on barriers";
  });
}

}  // namespace

// The expand 3x3's weight gradient on wgmma: the window kernel's geometries (C 16, 48, 32: 2, 4
// and 3 row tiles of 128 columns of dW, the last partial and, at C = 16, its second warpgroup
// idle; K 32, 16, 80: one filter tile of 64 partial, two at 80), 3 slices of which some are
// empty, and 48 -> 128 over 2 x 6 x 6 (a filter tile of 128; 72 pixels: 3 steps, the last
// partial); TF32 and BF16, both tiles, with and without the bias's row sums, threads in both
// orders.
TEST(ImplicitGemm, WgmmaWindowKernelReproducesTheWeightGradient) {
  std::mt19937 rng(37);
  std::vector<ConvGeom> cases(std::begin(kWinCases), std::end(kWinCases));
  cases.push_back({2, 48, 6, 6, 128, 3, 3, 1, 1});
  for (const ConvGeom& cg : cases) {
    const Case c(cg, rng);
    const Case r = rounded_case<cuda::MmaTf32>(c), rb = rounded_case<cuda::MmaBf16>(c);
    SCOPED_TRACE(c.name());
    check_wgwinw<false, 64>(c, r, 1, false, true);
    check_wgwinw<false, 128>(c, r, 3, true, false);
    check_wgwinw<true, 64>(c, rb, 3, true, true);
    check_wgwinw<true, 128>(c, rb, 1, false, false);
  }
}

namespace {

// The 1x1 weight gradient on wgmma (igemm_wgw.cuh) on one op, its grid and split-K slices as
// conv.cu's launch_wgw makes them, threads resumed in the given order; then as check_winw.
template <bool kBf16, int TN, bool kXRows>
void check_wgw(const Case& c, const Case& r, int splits, bool reverse, bool bias) {
  SCOPED_TRACE(std::string("wgmma 1x1 weight gradient, ") + (kBf16 ? "BF16, " : "TF32, ") +
               (kXRows ? "x" : "dz") + " as registers, " + std::to_string(TN) + " columns, " + std::to_string(splits) +
               " slice(s)" + (reverse ? ", reverse" : "") + (bias ? ", bias" : ""));
  check_weight_kernel(c, r, splits, reverse, bias, [&](const cuda::WeightOp& op) {
    ASSERT_TRUE(cuda::mma_vec(op).dense);
    ASSERT_EQ(cuda::wgw_x_rows(op), kXRows);
    ASSERT_EQ(cuda::wgw_tile(op), TN);
    const int rcount = kXRows ? op.N : op.M, qcount = kXRows ? op.M : op.N, chunk = cuda::mma_chunk(op.Kd, splits);
    const SimtDim3 grid{unsigned((rcount + 127) / 128), unsigned((qcount + TN - 1) / TN), unsigned(splits)};
    ASSERT_TRUE(simt::run(grid, cuda::kWgThreads, [&] { cuda::igemm_wgw_kernel<kBf16, TN, kXRows>(op, chunk); },
                          reverse, cuda::WgwShape<kBf16, TN>::kSmemBytes))
        << "threads disagree on barriers";
  });
}

template <bool kBf16, int TN, bool kXRows>
void check_wgw_case(const ConvGeom& cg, std::mt19937& rng) {
  const Case c(cg, rng);
  const Case r = rounded_case<std::conditional_t<kBf16, cuda::MmaBf16, cuda::MmaTf32>>(c);
  SCOPED_TRACE(c.name());
  check_wgw<kBf16, TN, kXRows>(c, r, 1, false, true);
  check_wgw<kBf16, TN, kXRows>(c, r, 3, true, true);
  check_wgw<kBf16, TN, kXRows>(c, r, 3, false, false);
}

}  // namespace

// The plain 1x1 weight gradient on wgmma, both sides as the register operand, both column tiles,
// both precisions: 136 -> 40 over 2 x 10 x 13 (x's 136 channels as registers, two row tiles, the
// second partial; 40 filters in a column tile of 64; 260 pixels: 8 whole steps and a partial one;
// 3 slices of 96, 96 and 68), 24 -> 144 over 2 x 6 x 6 (dz's 144 filters as registers; 24
// channels; 72 pixels, slices of 32, 32 and 8), 136 -> 200 over 1 x 4 x 8 and 200 -> 72 over 1 x 4
// x 4 (128-column tiles, two of them at 136; 32 and 16 pixels, so two or all three slices past
// the first empty, storing zeros); with and without the bias's row sums, threads in both orders.
TEST(ImplicitGemm, WgmmaKernelReproducesThe1x1WeightGradient) {
  std::mt19937 rng(41);
  check_wgw_case<false, 64, true>({2, 136, 10, 13, 40, 1, 1, 1, 0}, rng);
  check_wgw_case<true, 64, true>({2, 136, 10, 13, 40, 1, 1, 1, 0}, rng);
  check_wgw_case<false, 64, false>({2, 24, 6, 6, 144, 1, 1, 1, 0}, rng);
  check_wgw_case<true, 64, false>({2, 24, 6, 6, 144, 1, 1, 1, 0}, rng);
  check_wgw_case<false, 128, false>({1, 136, 4, 8, 200, 1, 1, 1, 0}, rng);
  check_wgw_case<true, 128, false>({1, 136, 4, 8, 200, 1, 1, 1, 0}, rng);
  check_wgw_case<false, 128, true>({1, 200, 4, 4, 72, 1, 1, 1, 0}, rng);
  check_wgw_case<true, 128, true>({1, 200, 4, 4, 72, 1, 1, 1, 0}, rng);
}

// The weight gradient's slices through the window kernel (winw_splits): about 512 blocks (two
// waves of two blocks on an H200's 132 SMs), slices of at least 4 chunks of 64 pixels, at most 256
// slices; slices of whole chunks (winw_slice_pixels) that cover the pixels, few of them past the
// end (empty) from the rounding.
TEST(ImplicitGemm, WindowWeightGradientSlicesFillTheGpu) {
  auto geo = [](int N, int C, int H, int K) { return cuda::Geo{N, C, H, H, K, 3, 3, 1, 1, H, H}; };
  // fire8 of squeezenet1.0 at batch 128: 8 tiles of 128 x 144 (conv.cu's fp32-tile rule gave 28
  // slices, 224 blocks).
  EXPECT_EQ(cuda::winw_splits(geo(128, 64, 27, 256), 512), 64);
  EXPECT_EQ(cuda::winw_splits(geo(128, 16, 54, 64), 512), 256) << "fire2: one tile, at most 256 slices";
  EXPECT_EQ(cuda::winw_splits(geo(128, 64, 13, 256), 512), 64) << "fire9";
  EXPECT_EQ(cuda::winw_splits(geo(128, 16, 3, 64), 512), 4) << "1,152 pixels: slices of 4 chunks";
  EXPECT_EQ(cuda::winw_splits(geo(1, 16, 3, 64), 512), 1) << "9 pixels";
  const int fires[][3] = {{16, 64, 54}, {32, 128, 54}, {32, 128, 27}, {48, 192, 27}, {64, 256, 27},
                          {64, 256, 13}, {16, 64, 55}, {32, 128, 55}, {48, 192, 13}, {64, 256, 7}};
  for (const auto& f : fires)
    for (int N : {128, 32, 4}) {
      const cuda::Geo g = geo(N, f[0], f[2], f[1]);
      const int kd = N * f[2] * f[2], z = cuda::winw_splits(g, 512), slice = cuda::winw_slice_pixels(kd, z);
      const int tm = cuda::winw_tile(f[1]), tiles = (f[1] + tm - 1) / tm * (f[0] / cuda::kWinC);
      SCOPED_TRACE("S " + std::to_string(f[0]) + " at " + std::to_string(f[2]) + ", N " + std::to_string(N));
      EXPECT_LE(z, 256);
      EXPECT_TRUE(tiles * z >= 512 || z == 256 || z == std::max(1, kd / 256)) << tiles << " tiles, " << z;
      EXPECT_TRUE(slice >= 256 || z == 1) << slice << " pixels a slice";
      EXPECT_EQ(slice % cuda::kWinP, 0);
      EXPECT_GE(slice * z, kd) << "the slices cover the pixels";
      const int used = (kd + slice - 1) / slice;  // (the rest are past the end: zeros)
      EXPECT_GE(4 * used, 3 * z) << "a quarter of the slices or more empty";
    }
}

namespace {

// The row kernel (igemm_rows.cuh) on one forward with `blocks` persistent blocks (0: a block a
// tile), threads resumed in the given order.
template <class Prec, int FM>
void run_rows(const cuda::FwdOp& op, int blocks, bool reverse) {
  ASSERT_TRUE(cuda::rows_fits(op));
  ASSERT_EQ(cuda::rows_fm(op.M), FM);
  const cuda::RowsLayout l = cuda::rows_layout(op.g, Prec::K == 16);
  const int tiles = cuda::rows_tiles(op.g);
  const int grid = blocks > 0 ? std::min(blocks, tiles) : tiles;
  ASSERT_TRUE(simt::run({unsigned(grid), 1, 1}, cuda::kGemmThreads,
                        [&] { cuda::igemm_rows_kernel<Prec, FM>(op, l); }, reverse,
                        cuda::rows_smem_bytes<Prec, FM>(op.g)))
      << "threads disagree on barriers";
}

// The wgmma row kernel (igemm_wgrows.cuh), the same way.
template <bool kBf16, int TN>
void run_wgrows(const cuda::FwdOp& op, int blocks, bool reverse) {
  ASSERT_TRUE(cuda::wgrows_fits(op));
  ASSERT_EQ(cuda::wgrows_tn(op.M), TN);
  const cuda::WgRowsLayout l = cuda::wgrows_layout(op.g, TN, kBf16);
  const int tiles = cuda::wgrows_tiles(op.g);
  const int grid = blocks > 0 ? std::min(blocks, tiles) : tiles;
  ASSERT_TRUE(simt::run({unsigned(grid), 1, 1}, cuda::kWgThreads,
                        [&] { cuda::igemm_wgrows_kernel<kBf16, TN>(op, l); }, reverse,
                        cuda::wgrows_smem_bytes<kBf16, TN>(op.g)))
      << "threads disagree on barriers";
}

// A first-convolution forward through run(op, blocks, reverse) with a block a tile, one persistent
// block (threads resumed in reverse) and two, against the reference on rounded operands r.
template <class Run>
void check_row_forward(const Case& c, const Case& r, Run run) {
  const simt::Readable readable(c.readable());
  for (int blocks : {0, 1, 2}) {
    const bool reverse = blocks == 1;
    SCOPED_TRACE(std::to_string(blocks) + " block(s)" + (reverse ? ", reverse" : ""));
    std::vector<float> y(c.y_ref.size(), NAN);
    run(c.fwd(y.data()), blocks, reverse);
    EXPECT_LT(rel(y, r.y_ref), 1e-5) << "forward";
    EXPECT_GT(rel(y, c.y_ref), 1e-7) << "the operands were not rounded";
  }
}
template <class Prec, int FM>
void check_rows(const Case& c, const Case& r) {
  check_row_forward(c, r, [](const cuda::FwdOp& op, int blocks, bool reverse) { run_rows<Prec, FM>(op, blocks, reverse); });
}
template <bool kBf16, int TN>
void check_wgrows(const Case& c, const Case& r) {
  SCOPED_TRACE("wgmma row kernel, " + std::to_string(TN) + " filters");
  check_row_forward(c, r, [](const cuda::FwdOp& op, int blocks, bool reverse) { run_wgrows<kBf16, TN>(op, blocks, reverse); });
}

// The row kernel's weight gradient with Z split-K slices (ranges of consecutive output rows), summed by
// splitk_reduce_kernel; with bias, the rows of dz beside them onto db = 1.
template <class Prec, int FM, int FN>
void check_rowsw(const Case& c, const Case& r, int slices, bool reverse, bool bias) {
  const simt::Readable readable(c.readable());
  SCOPED_TRACE("weight gradient, " + std::to_string(slices) + " slice(s)" + (reverse ? ", reverse" : "") +
               (bias ? ", bias" : ""));
  const int K = c.g.K;
  std::vector<float> ws(size_t(slices) * c.dw_ref.size(), NAN), rows(size_t(slices) * size_t(K), NAN);
  cuda::WeightOp op = c.wgt(ws.data());
  if (bias) op.rows = rows.data();
  ASSERT_TRUE(cuda::rows_fits(op));
  ASSERT_EQ(cuda::rowsw_fm(K), FM);
  ASSERT_EQ(cuda::rowsw_fn(c.g), FN);
  const cuda::RowswLayout l = cuda::rowsw_layout(c.g, 16 * FM, Prec::K == 16);
  ASSERT_TRUE(simt::run({unsigned(slices), unsigned(cuda::rowsw_mtiles(K)), 1}, cuda::kGemmThreads,
                        [&] { cuda::igemm_rowsw_kernel<Prec, FM, FN>(op, l); }, reverse,
                        cuda::rowsw_smem_bytes<Prec, FM, FN>(c.g)))
      << "threads disagree on barriers";
  expect_weight_slices(c, r, ws, rows, slices, bias, reverse);
}

// The wgmma row kernel's weight gradient (igemm_wgrowsw.cuh; BF16 as TF32 products of rounded
// operands), the same way.
template <int TN, int WG, bool kBf16>
void check_wgrowsw(const Case& c, const Case& r, int slices, bool reverse, bool bias) {
  const simt::Readable readable(c.readable());
  SCOPED_TRACE("wgmma weight gradient, " + std::to_string(TN) + " filters, " + std::to_string(WG) +
               " warpgroup(s), " + std::to_string(slices) + " slice(s)" + (reverse ? ", reverse" : "") +
               (bias ? ", bias" : ""));
  const int K = c.g.K;
  std::vector<float> ws(size_t(slices) * c.dw_ref.size(), NAN), rows(size_t(slices) * size_t(K), NAN);
  cuda::WeightOp op = c.wgt(ws.data());
  if (bias) op.rows = rows.data();
  ASSERT_TRUE(cuda::wgrowsw_fits(op));
  ASSERT_EQ(cuda::wgrowsw_tn(K), TN);
  ASSERT_EQ(cuda::wgrowsw_wg(c.g), WG);
  const cuda::WgRowswLayout l = cuda::wgrowsw_layout(c.g, TN);
  ASSERT_TRUE(simt::run({unsigned(slices), 1, 1}, 128 * WG, [&] { cuda::igemm_wgrowsw_kernel<TN, WG, kBf16>(op, l); },
                        reverse, cuda::wgrowsw_smem_bytes<TN>(c.g)))
      << "threads disagree on barriers";
  expect_weight_slices(c, r, ws, rows, slices, bias, reverse);
}
// The row kernels' weight-gradient slicings, check(slices, reverse, bias): 1 slice with the bias,
// 3 in reverse without, and two slices past the last row (zeros) with it.
template <class Check>
void each_row_slicing(const Case& c, Check check) {
  check(1, false, true);
  check(3, true, false);
  check(c.g.N * c.g.P + 2, false, true);
}
template <int TN, int WG, bool kBf16>
void check_wgrowsw_slicings(const Case& c, const Case& r) {
  each_row_slicing(c, [&](int z, bool reverse, bool bias) { check_wgrowsw<TN, WG, kBf16>(c, r, z, reverse, bias); });
}
// Where it takes the case (dz's rows aligned but for the pixel offset): its tile.
template <bool kBf16>
void check_wgrowsw_case(const Case& c, const Case& r, int* taken) {
  if (!cuda::wgrowsw_fits(c.wgt(nullptr))) return;
  const int tn = cuda::wgrowsw_tn(c.g.K), wg = cuda::wgrowsw_wg(c.g);
  if (tn == 96 && wg == 3) check_wgrowsw_slicings<96, 3, kBf16>(c, r);
  else if (tn == 96 && wg == 2) check_wgrowsw_slicings<96, 2, kBf16>(c, r);
  else if (tn == 64 && wg == 1) check_wgrowsw_slicings<64, 1, kBf16>(c, r);
  else ADD_FAILURE() << "no wgmma weight-gradient tile for TN " << tn << ", " << wg << " warpgroups";
  ++*taken;
}

template <class Prec, int FM, int FN>
void check_rowsw_slicings(const Case& c, const Case& r) {
  each_row_slicing(c, [&](int z, bool reverse, bool bias) { check_rowsw<Prec, FM, FN>(c, r, z, reverse, bias); });
}

template <class Prec>
void check_rows_cases(int* weight_tiles, int* wgrows, int* wgrowsw) {
  std::mt19937 rng(23);
  // Stride 2, no padding: squeezenet1.0's conv1 (7x7, 3 channels) and 1.1's (3x3) on small
  // images; rows of Q = 112 (the tile's width) at 96 filters (3 fragments a warp row); W odd and
  // H != W, filters not a multiple of 16 (rows past M); one channel at 5x5; P odd (a tile's second
  // row past the image); rows of 111 under 64 filters (the stores' path without row tests).
  const ConvGeom cases[] = {
      {2, 3, 23, 23, 8, 7, 7, 2, 0},
      {3, 3, 17, 17, 5, 3, 3, 2, 0},
      {1, 3, 40, 229, 96, 7, 7, 2, 0},
      {2, 3, 30, 31, 40, 3, 3, 2, 0},
      {2, 1, 12, 16, 16, 5, 5, 2, 0},
      {1, 3, 8, 223, 64, 3, 3, 2, 0},  // Q = 111: full rows of filters, the last fragment partial
  };
  for (const ConvGeom& cg : cases) {
    const Case c(cg, rng), r = rounded_case<Prec>(c);
    SCOPED_TRACE(c.name());
    constexpr bool kBf16 = Prec::K == 16;
    if (cuda::wgrows_tn(cg.K) == 96)
      check_wgrows<kBf16, 96>(c, r);
    else
      check_wgrows<kBf16, 64>(c, r);
    ++*wgrows;
    switch (cuda::rows_fm(cg.K)) {
      case 1: check_rows<Prec, 1>(c, r); break;
      case 2: check_rows<Prec, 2>(c, r); break;
      default: check_rows<Prec, 3>(c, r); break;
    }
    const int fm = cuda::rowsw_fm(cg.K), fn = cuda::rowsw_fn(c.g);
    if (fm == 3 && fn == 3) check_rowsw_slicings<Prec, 3, 3>(c, r);
    else if (fm == 2 && fn == 3) check_rowsw_slicings<Prec, 2, 3>(c, r);
    else if (fm == 2 && fn == 2) check_rowsw_slicings<Prec, 2, 2>(c, r);
    else if (fm == 2 && fn == 1) check_rowsw_slicings<Prec, 2, 1>(c, r);
    else ADD_FAILURE() << "no weight-gradient tile for FM " << fm << ", FN " << fn;
    ++*weight_tiles;
    check_wgrowsw_case<kBf16>(c, r, wgrowsw);
  }
  // The wgmma row kernel alone: 72 filters under its 96 (rows past M), and rows of 128 outputs
  // (its tile's width; the row kernel takes at most 112).
  // The wgmma weight gradient alone: 98 taps (two warpgroups) under 72 filters of its 96.
  {
    const Case c(ConvGeom{2, 2, 15, 21, 72, 7, 7, 2, 0}, rng), r = rounded_case<Prec>(c);
    SCOPED_TRACE(c.name());
    check_wgrowsw_case<Prec::K == 16>(c, r, wgrowsw);
  }
  for (const ConvGeom& cg : {ConvGeom{2, 3, 19, 27, 72, 7, 7, 2, 0}, ConvGeom{1, 2, 9, 257, 24, 3, 3, 2, 0}}) {
    const Case c(cg, rng), r = rounded_case<Prec>(c);
    SCOPED_TRACE(c.name());
    if (cg.K == 72) {
      check_wgrows<Prec::K == 16, 96>(c, r);
      // Without bias or ReLU (the layer's bias absent, as the GPU tests' convolutions run it): the
      // stores of negative sums and the bias of 0, on 2 persistent blocks.
      const simt::Readable readable(c.readable());
      std::vector<float> y(c.y_ref.size(), NAN);
      cuda::FwdOp op = c.fwd(y.data());
      op.b = nullptr, op.relu = false;
      run_wgrows<Prec::K == 16, 96>(op, 2, false);
      std::vector<double> want(y.size()), ws(conv_workspace(cg) + 1);
      const std::vector<double> xd(r.x.begin(), r.x.end()), wd(r.w.begin(), r.w.end());
      conv_forward<double>(cg, xd.data(), wd.data(), nullptr, want.data(), false, ws.data());
      EXPECT_LT(rel(y, want), 1e-5) << "forward without bias or ReLU";
      EXPECT_TRUE(std::any_of(y.begin(), y.end(), [](float v) { return v < 0.0f; })) << "no ReLU: negative outputs";
    } else {
      EXPECT_FALSE(cuda::rows_fits(c.fwd(nullptr)));
      check_wgrows<Prec::K == 16, 64>(c, r);
    }
    ++*wgrows;
  }
}

}  // namespace

// The row kernels on the CPU: the first convolution's forward (stride 2, no padding) with w
// resident and reordered, two output rows of input split by column parity a tile, persistent
// blocks over the tiles; and its weight gradient, an output row of dz and its input rows a tile,
// in split-K slices of consecutive output rows (some empty; x's rows in a ring, dz's copied 16
// bytes at a time where Kd is a multiple of 4, by 4 otherwise), with the bias's row sums. The emulator fills
// shared memory with NaN and performs a copy only when its thread waits; the reference rounds x,
// w and dz as the kernels do.
TEST(ImplicitGemm, RowKernelOnTheCpuReproducesTheFirstConvolution) {
  int weight_tiles = 0, wgrows = 0, wgrowsw = 0;
  {
    SCOPED_TRACE("tf32");
    check_rows_cases<cuda::MmaTf32>(&weight_tiles, &wgrows, &wgrowsw);
  }
  {
    SCOPED_TRACE("bf16");
    check_rows_cases<cuda::MmaBf16>(&weight_tiles, &wgrows, &wgrowsw);
  }
  EXPECT_EQ(weight_tiles, 12);
  EXPECT_EQ(wgrows, 16);
  EXPECT_EQ(wgrowsw, 10);  // (the cases whose Kd is a multiple of 4, in TF32 and BF16)
}

// Which forwards the row kernel takes (rows_fits): the first convolution of squeezenet1.0 and 1.1
// at 224² at any batch, not the Fashion-MNIST stem (stride 1) nor what its tile or stages cannot hold.
TEST(ImplicitGemm, RowKernelTakesTheFirstConvolutions) {
  auto fwd = [](int N, int C, int H, int K, int R, int stride, int pad) {
    const int P = (H + 2 * pad - R) / stride + 1;
    return cuda::FwdOp{cuda::Geo{N, C, H, H, K, R, R, stride, pad, P, P}, nullptr, nullptr, nullptr, nullptr,
                       true, K, N * P * P, C * R * R};
  };
  EXPECT_TRUE(cuda::rows_fits(fwd(128, 3, 224, 96, 7, 2, 0))) << "squeezenet1.0's conv1";
  EXPECT_TRUE(cuda::rows_fits(fwd(7, 3, 224, 96, 7, 2, 0))) << "squeezenet1.0's conv1, batch 7";
  EXPECT_TRUE(cuda::rows_fits(fwd(128, 3, 224, 64, 3, 2, 0))) << "squeezenet1.1's conv1";
  EXPECT_FALSE(cuda::rows_fits(fwd(128, 1, 28, 64, 3, 1, 1))) << "stride 1";
  EXPECT_FALSE(cuda::rows_fits(fwd(128, 3, 224, 96, 7, 2, 1))) << "padding";
  EXPECT_FALSE(cuda::rows_fits(fwd(128, 3, 224, 97, 7, 2, 0))) << "97 filters";
  EXPECT_FALSE(cuda::rows_fits(fwd(128, 3, 235, 96, 7, 2, 0))) << "rows of 115 outputs";
  EXPECT_FALSE(cuda::rows_fits(fwd(128, 3, 224, 96, 9, 2, 0))) << "9x9";
  EXPECT_FALSE(cuda::rows_fits(fwd(128, 16, 64, 64, 3, 2, 0))) << "16 channels: A and the rows do not fit";
  EXPECT_FALSE(cuda::rows_fits(fwd(128, 96, 55, 64, 1, 2, 0))) << "a 1x1 at stride 2 over 96 channels";
  // The wgmma row kernel: the same, but rows of up to 128 outputs.
  EXPECT_TRUE(cuda::wgrows_fits(fwd(128, 3, 224, 96, 7, 2, 0))) << "wgmma: squeezenet1.0's conv1";
  EXPECT_TRUE(cuda::wgrows_fits(fwd(7, 3, 224, 96, 7, 2, 0))) << "wgmma: squeezenet1.0's conv1, batch 7";
  EXPECT_TRUE(cuda::wgrows_fits(fwd(128, 3, 224, 64, 3, 2, 0))) << "wgmma: squeezenet1.1's conv1";
  EXPECT_TRUE(cuda::wgrows_fits(fwd(128, 3, 235, 96, 7, 2, 0))) << "wgmma: rows of 115 outputs";
  EXPECT_TRUE(cuda::wgrows_fits(fwd(2, 3, 261, 96, 7, 2, 0))) << "wgmma: rows of 128 outputs";
  EXPECT_FALSE(cuda::wgrows_fits(fwd(2, 3, 263, 96, 7, 2, 0))) << "wgmma: rows of 129 outputs";
  EXPECT_FALSE(cuda::wgrows_fits(fwd(128, 1, 28, 64, 3, 1, 1))) << "wgmma: stride 1";
  EXPECT_FALSE(cuda::wgrows_fits(fwd(128, 3, 224, 96, 7, 2, 1))) << "wgmma: padding";
  EXPECT_FALSE(cuda::wgrows_fits(fwd(128, 3, 224, 97, 7, 2, 0))) << "wgmma: 97 filters";
  EXPECT_FALSE(cuda::wgrows_fits(fwd(128, 3, 224, 96, 9, 2, 0))) << "wgmma: 9x9";
  EXPECT_FALSE(cuda::wgrows_fits(fwd(128, 16, 64, 64, 7, 2, 0))) << "wgmma: 16 channels at 7x7: the rows do not fit";
  auto wgt = [&](int N, int C, int H, int K, int R, int stride, int pad) {
    const cuda::FwdOp f = fwd(N, C, H, K, R, stride, pad);
    return cuda::WeightOp{f.g, nullptr, nullptr, nullptr, K, f.Kd, f.N};
  };
  EXPECT_TRUE(cuda::rows_fits(wgt(128, 3, 224, 96, 7, 2, 0))) << "squeezenet1.0's conv1, weight gradient";
  EXPECT_TRUE(cuda::rows_fits(wgt(128, 3, 224, 64, 3, 2, 0))) << "squeezenet1.1's conv1, weight gradient";
  EXPECT_FALSE(cuda::rows_fits(wgt(128, 1, 28, 64, 3, 1, 1))) << "weight gradient at stride 1";
  EXPECT_FALSE(cuda::rows_fits(wgt(128, 3, 235, 96, 7, 2, 0))) << "weight gradient over rows of 115";
  EXPECT_FALSE(cuda::rows_fits(wgt(128, 4, 224, 96, 7, 2, 0))) << "196 taps";
  // Its slices: a block a slice and filter tile, as many as resident, at most 256, one row each.
  const cuda::Geo g10 = wgt(128, 3, 224, 96, 7, 2, 0).g;
  EXPECT_EQ(cuda::rowsw_mtiles(96), 2);
  EXPECT_EQ(cuda::rowsw_slices(g10, 264), 132);
  EXPECT_EQ(cuda::rowsw_slices(g10, 1000), 256);
  EXPECT_EQ(cuda::rowsw_slices(wgt(1, 3, 23, 96, 7, 2, 0).g, 264), 9) << "9 output rows";
  // The wgmma weight gradient's (TF32): a block a slice over all filters, as many as resident
  // (conv.cu's occupancy query), at most 512, one row each. An SM of sm_90's 228 KB (1 KB a block
  // reserved) holds one block of conv1 of squeezenet1.0 (three warpgroups) and two of 1.1's (one
  // warpgroup), so 1.1's gets twice the slices of the row kernel's 132.
  const cuda::Geo g11 = wgt(128, 3, 224, 64, 3, 2, 0).g;
  EXPECT_TRUE(cuda::wgrowsw_geometry_fits(g10, 96));
  EXPECT_TRUE(cuda::wgrowsw_geometry_fits(g11, 64));
  EXPECT_FALSE(cuda::wgrowsw_geometry_fits(g10, 97)) << "97 filters";
  EXPECT_FALSE(cuda::wgrowsw_geometry_fits(wgt(128, 4, 224, 96, 7, 2, 0).g, 96)) << "196 taps";
  EXPECT_EQ(cuda::wgrowsw_wg(g10), 3);
  EXPECT_EQ(cuda::wgrowsw_wg(g11), 1);
  constexpr size_t sm90 = 228 * 1024, reserved = 1024;
  EXPECT_EQ(sm90 / (cuda::wgrowsw_smem_bytes<96>(g10) + reserved), 1u) << cuda::wgrowsw_smem_bytes<96>(g10);
  EXPECT_EQ(sm90 / (cuda::wgrowsw_smem_bytes<64>(g11) + reserved), 2u) << cuda::wgrowsw_smem_bytes<64>(g11);
  EXPECT_EQ(cuda::wgrowsw_slices(g11, 2 * 132), 264);
  EXPECT_EQ(cuda::wgrowsw_slices(g11, 1000), 512);
  EXPECT_EQ(cuda::wgrowsw_slices(g11, 0), 1);
  EXPECT_EQ(cuda::wgrowsw_slices(wgt(1, 3, 23, 96, 7, 2, 0).g, 264), 9) << "9 output rows";
}

// Which products the window kernel takes (win_fits): the expand 3x3's forward and input gradient
// at every Fire shape of squeezenet1.0 and 1.1 at batch 128 and at an odd batch, and nothing else.
TEST(ImplicitGemm, WindowKernelTakesTheExpand3x3Products) {
  std::vector<float> buf(8);
  const float* aligned = buf.data();  // (a std::vector's 16-byte aligned start)
  ASSERT_EQ(reinterpret_cast<uintptr_t>(aligned) % 16, 0u);
  auto geo = [](int N, int C, int H, int K, int R, int stride, int pad) {
    const int P = (H + 2 * pad - R) / stride + 1;
    return cuda::Geo{N, C, H, H, K, R, R, stride, pad, P, P};
  };
  auto wgt = [](const cuda::Geo& g, const float* x, const float* dz) {
    return cuda::WeightOp{g, x, dz, nullptr, g.K, g.C * g.R * g.S, g.N * g.P * g.Q};
  };
  // (S, E3, size) of every Fire module: squeezenet1.0 at 54, 27, 13; squeezenet1.1 at 55, 27, 13.
  const int fires[][3] = {{16, 64, 54}, {32, 128, 54}, {32, 128, 27}, {48, 192, 27}, {64, 256, 27},
                          {64, 256, 13}, {16, 64, 55}, {32, 128, 55}, {48, 192, 13}};
  for (const auto& f : fires)
    for (int N : {128, 4, 7}) {
      const cuda::Geo g = geo(N, f[0], f[2], f[1], 3, 1, 1);
      const int n = N * f[2] * f[2];
      const bool whole = n % 4 == 0;  // (odd planes at an odd batch: 4-byte pieces, the mma kernel)
      EXPECT_EQ(cuda::win_fits(g, f[0], n, aligned), whole) << "forward, S " << f[0] << " at " << f[2] << ", N " << N;
      EXPECT_EQ(cuda::win_fits(g, f[1], n, aligned), whole) << "input gradient, E3 " << f[1] << " at " << f[2];
      EXPECT_FALSE(cuda::win_fits(g, f[0], n, aligned + 1)) << "a window operand not 16-byte aligned";
      EXPECT_EQ(cuda::win_fits(wgt(g, aligned, aligned)), whole) << "weight gradient, S " << f[0] << " at " << f[2];
      EXPECT_FALSE(cuda::win_fits(wgt(g, aligned + 1, aligned))) << "weight gradient, x not 16-byte aligned";
      EXPECT_FALSE(cuda::win_fits(wgt(g, aligned, aligned + 1))) << "weight gradient, dz not 16-byte aligned";
    }
  EXPECT_FALSE(cuda::win_fits(geo(128, 3, 224, 96, 7, 2, 0), 3, 128 * 109 * 109, aligned)) << "conv1";
  EXPECT_FALSE(cuda::win_fits(geo(128, 64, 27, 256, 1, 1, 0), 64, 128 * 729, aligned)) << "a 1x1";
  EXPECT_FALSE(cuda::win_fits(geo(128, 8, 27, 16, 3, 1, 1), 8, 128 * 729, aligned)) << "8 channels";
  EXPECT_FALSE(cuda::win_fits(geo(128, 16, 27, 16, 3, 2, 1), 16, 128 * 196, aligned)) << "stride 2";
  EXPECT_FALSE(cuda::win_fits(wgt(geo(128, 3, 224, 96, 7, 2, 0), aligned, aligned))) << "conv1's weight gradient";
  EXPECT_FALSE(cuda::win_fits(wgt(geo(128, 64, 27, 256, 1, 1, 0), aligned, aligned))) << "a 1x1 weight gradient";
  EXPECT_FALSE(cuda::win_fits(wgt(geo(128, 8, 27, 16, 3, 1, 1), aligned, aligned))) << "8 channels' weight gradient";
  EXPECT_FALSE(cuda::win_fits(wgt(geo(128, 16, 27, 16, 3, 2, 1), aligned, aligned))) << "a stride-2 weight gradient";
  // The stages of every tile fit two blocks an SM up to rows of 79; not at 80.
  EXPECT_TRUE(cuda::win_fits(geo(128, 16, 79, 64, 3, 1, 1), 16, 128 * 79 * 79, aligned));
  EXPECT_FALSE(cuda::win_fits(geo(128, 16, 80, 64, 3, 1, 1), 16, 128 * 80 * 80, aligned));
  // The weight gradient's stages (64 pixels a chunk) fit rows up to 127.
  EXPECT_TRUE(cuda::win_fits(wgt(geo(8, 16, 127, 64, 3, 1, 1), aligned, aligned)));
  EXPECT_FALSE(cuda::win_fits(wgt(geo(8, 16, 128, 64, 3, 1, 1), aligned, aligned)));
}

// On a GPU that allows a block less shared memory than kWinSmem and kRowsSmem (sm_86 and sm_89:
// 99 KB, running sm_80's code), conv.cu passes its limit: the window and row kernels then take only
// the products whose stages fit, and the mma kernel's gathers the rest. Every stage size is
// recomputed here from the kernels' own layouts, for every tile and both precisions.
TEST(ImplicitGemm, WindowAndRowKernelsTakeOnlyWhatTheGpuAllowsABlock) {
  const size_t sm86 = 99 * 1024;
  std::vector<float> buf(8);
  const float* aligned = buf.data();
  auto geo = [](int N, int C, int H, int K, int R, int stride, int pad) {
    const int P = (H + 2 * pad - R) / stride + 1;
    return cuda::Geo{N, C, H, H, K, R, R, stride, pad, P, P};
  };
  // The largest stages over the tiles and precisions a kernel may launch with, at rows of W.
  auto win_bytes = [](int W) {
    size_t most = 0;
    cuda::for_each_win_tile([&](auto t) {
      using T = decltype(t);
      most = std::max({most, cuda::win_smem_bytes<cuda::MmaTf32, T::m, T::n, T::wm>(W),
                       cuda::win_smem_bytes<cuda::MmaBf16, T::m, T::n, T::wm>(W)});
    });
    return most;
  };
  auto winw_bytes = [](int W) {
    size_t most = 0;
    cuda::for_each_winw_tile([&](auto tm) {
      constexpr int TM = decltype(tm)::value;
      most = std::max({most, cuda::winw_smem_bytes<cuda::MmaTf32, TM>(W), cuda::winw_smem_bytes<cuda::MmaBf16, TM>(W)});
    });
    return most;
  };
  for (int W = 3; W <= 130; ++W) {
    const cuda::Geo g = geo(4, 16, W, 64, 3, 1, 1);
    const int n = 4 * W * W;
    for (size_t limit : {cuda::kWinSmem, sm86}) {
      SCOPED_TRACE("rows of " + std::to_string(W) + ", limit " + std::to_string(limit));
      EXPECT_EQ(cuda::win_fits(g, 16, n, aligned, limit), win_bytes(W) <= limit);
      EXPECT_EQ(cuda::win_fits(cuda::WeightOp{g, aligned, aligned, nullptr, 64, 144, n}, limit),
                winw_bytes(W) <= limit);
    }
  }
  // The model's products at 99 KB: the expand 3x3's forward and input gradient at 27 and 13 still
  // through windows (rows up to 31), not at 54 or 55; every weight gradient (rows up to 63).
  EXPECT_TRUE(cuda::win_fits(geo(128, 64, 27, 256, 3, 1, 1), 64, 128 * 729, aligned, sm86));
  EXPECT_TRUE(cuda::win_fits(geo(128, 16, 31, 64, 3, 1, 1), 16, 128 * 961, aligned, sm86));
  EXPECT_FALSE(cuda::win_fits(geo(128, 16, 32, 64, 3, 1, 1), 16, 128 * 1024, aligned, sm86));
  EXPECT_FALSE(cuda::win_fits(geo(128, 16, 54, 64, 3, 1, 1), 16, 128 * 54 * 54, aligned, sm86));
  const cuda::Geo g55 = geo(128, 16, 55, 64, 3, 1, 1);
  EXPECT_TRUE(cuda::win_fits(cuda::WeightOp{g55, aligned, aligned, nullptr, 64, 144, 128 * 55 * 55}, sm86));
  EXPECT_TRUE(cuda::winw_geometry_fits(geo(4, 16, 63, 64, 3, 1, 1), sm86));
  EXPECT_FALSE(cuda::winw_geometry_fits(geo(4, 16, 64, 64, 3, 1, 1), sm86));
  // conv1: squeezenet1.0's forward (111 KB in TF32) through the mma kernel at 99 KB; its weight
  // gradient (94 KB) and squeezenet1.1's 3x3 (36 and 50 KB) still through the row kernels.
  auto fwd = [&](int C, int K, int R) {
    const cuda::Geo g = geo(128, C, 224, K, R, 2, 0);
    return cuda::FwdOp{g, nullptr, nullptr, nullptr, nullptr, true, K, 128 * g.P * g.Q, C * R * R};
  };
  auto rows_bytes = [](const cuda::FwdOp& op, bool bf16) {
    return size_t(cuda::rows_layout(op.g, bf16).floats(32 * cuda::rows_fm(op.g.K))) * sizeof(float);
  };
  for (const cuda::FwdOp& op : {fwd(3, 96, 7), fwd(3, 64, 3)})
    for (size_t limit : {cuda::kRowsSmem, sm86}) {
      SCOPED_TRACE(std::to_string(op.g.R) + "x" + std::to_string(op.g.R) + ", limit " + std::to_string(limit));
      EXPECT_EQ(cuda::rows_fits(op, limit), std::max(rows_bytes(op, false), rows_bytes(op, true)) <= limit);
      const cuda::WeightOp w{op.g, nullptr, nullptr, nullptr, op.M, op.Kd, op.N};
      const int tm = 16 * cuda::rowsw_fm(op.M);
      const size_t wbytes = sizeof(float) * size_t(std::max(cuda::rowsw_layout(op.g, tm, false).floats(),
                                                            cuda::rowsw_layout(op.g, tm, true).floats()));
      EXPECT_EQ(cuda::rows_fits(w, limit), wbytes <= limit) << "weight gradient";
    }
  EXPECT_TRUE(cuda::rows_fits(fwd(3, 96, 7))) << "squeezenet1.0's conv1 at kRowsSmem";
  EXPECT_FALSE(cuda::rows_fits(fwd(3, 96, 7), sm86)) << "squeezenet1.0's conv1 at 99 KB";
  EXPECT_TRUE(cuda::rows_fits(fwd(3, 64, 3), sm86)) << "squeezenet1.1's conv1 at 99 KB";
  EXPECT_TRUE(cuda::rows_fits(cuda::WeightOp{fwd(3, 96, 7).g, nullptr, nullptr, nullptr, 96, 147, 128 * 109 * 109}, sm86))
      << "squeezenet1.0's conv1 weight gradient at 99 KB";
  // test_cuda_ops' small first convolution (7x7/2 3 -> 96 at 23x23, batch 2): its forward's
  // resident weights alone pass 99 KB, so TensorCoreProductsTakeTheirKernels expects it on the mma
  // kernel there and on the row kernel where a block may have more; its weight gradient fits both.
  const cuda::Geo small = geo(2, 3, 23, 96, 7, 2, 0);
  const int small_npq = 2 * small.P * small.Q;
  const cuda::FwdOp small_fwd{small, nullptr, nullptr, nullptr, nullptr, true, 96, small_npq, 147};
  EXPECT_TRUE(cuda::rows_fits(small_fwd));
  EXPECT_FALSE(cuda::rows_fits(small_fwd, sm86));
  EXPECT_TRUE(cuda::rows_fits(cuda::WeightOp{small, nullptr, nullptr, nullptr, 96, 147, small_npq}, sm86));
}

// SQUEEZE_SMEM_OPTIN (smem_optin_capped): a cap from 99 KB to the GPU's own limit is the limit the
// rules above are given instead of the GPU's; anything else is refused, in one line that names
// the variable.
TEST(ImplicitGemm, SharedMemoryCapOnlyLowersTheGpusLimit) {
  const size_t h100 = 227 * 1024, sm86 = 99 * 1024;
  EXPECT_EQ(cuda::smem_optin_capped(h100, nullptr), h100);
  EXPECT_EQ(cuda::smem_optin_capped(h100, "101376"), sm86);
  EXPECT_EQ(cuda::smem_optin_capped(h100, "166912"), size_t(163 * 1024));
  EXPECT_EQ(cuda::smem_optin_capped(h100, "232448"), h100);
  EXPECT_EQ(cuda::smem_optin_capped(sm86, "101376"), sm86);
  for (const char* bad : {"", "101375", "232449", "99K", " 101376", "+101376", "-1", "101376 ", "1e6",
                          "0x18c00", "18446744073709551616"}) {
    SCOPED_TRACE(std::string("'") + bad + "'");
    try {
      cuda::smem_optin_capped(h100, bad);
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("SQUEEZE_SMEM_OPTIN: '" + std::string(bad) + "'"), std::string::npos) << what;
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    }
  }
}

// fp32 on the tensor cores (SQUEEZE_IGEMM_3XTF32=1; igemm_mma.cuh, MmaTf32x3): the mma and window
// kernels with each operand split into two TF32 parts and three products a multiply, on the CPU,
// in the tiles conv.cu gives that precision (takes_tile: one 16-row fragment row a warp),
// held to the fp32 tile kernel's bound (check_tiles: 1e-6 relative to the double reference on the
// operands as given), on every case of the two kernels' own tests, all three products, slices and
// bias included. The emulator's mma reads only a TF32 operand's upper 19 bits, as the tensor
// cores do, so the small parts must be there. On the deepest case, the error must be within 1.25x
// the fp32 tile kernel's own on the same products (adding all three products straight onto the
// accumulator, 1.7x, fails that), and plain TF32's 100x above it.
TEST(ImplicitGemm, ThreeTf32ProductsKeepFp32Accuracy) {
  std::mt19937 rng(23);
  int i = 0;
  for (const ConvGeom& cg : kCases) {  // (the tiles in turn: 3xTF32 changes only the fragments)
    const Case c(cg, rng);
    SCOPED_TRACE(c.name());
    if (i % 3 == 0) check_mma<cuda::MmaTf32x3, 64, 64, 4>(c, 1e-6, false);
    if (i % 3 == 1) check_mma<cuda::MmaTf32x3, 32, 128, 2>(c, 1e-6, true);
    if (i++ % 3 == 2) check_mma<cuda::MmaTf32x3, 16, 128, 1>(c, 1e-6, false, 2);
  }
  for (const ConvGeom& cg : kWinCases) {
    const Case c(cg, rng);
    SCOPED_TRACE(c.name());
    check_win<cuda::MmaTf32x3, 16, 256, 1>(c, c, false, 0, 1e-6);
    check_win<cuda::MmaTf32x3, 16, 256, 1>(c, c, true, 2, 1e-6);
    check_winw<cuda::MmaTf32x3, 64>(c, c, 3, false, true, 1e-6);
    check_winw<cuda::MmaTf32x3, 64>(c, c, 1, true, false, 1e-6);
  }
  // 70 -> 80 channels 3x3: the forward 630 deep, the weight gradient 162.
  const Case c(kCases[8], rng);
  std::vector<float> y3(c.y_ref.size(), NAN), y32(y3), yt(y3), w3(c.dw_ref.size(), NAN), w32(w3), wtf(w3);
  run_mma<cuda::MmaTf32x3, 32, 128, 2>(c.fwd(y3.data()), 1, false, 0);
  run_mma<cuda::MmaTf32, 32, 128, 2>(c.fwd(yt.data()), 1, false, 0);
  run_tile_kernel<64, 64, true>(c.fwd(y32.data()), 1, false, false);
  run_mma<cuda::MmaTf32x3, 64, 64, 4>(c.wgt(w3.data()), 1, false, 0);
  run_mma<cuda::MmaTf32, 64, 64, 4>(c.wgt(wtf.data()), 1, false, 0);
  run_tile_kernel<64, 64, true>(c.wgt(w32.data()), 1, false, false);
  const double f3 = rel(y3, c.y_ref), f32 = rel(y32, c.y_ref), ft = rel(yt, c.y_ref);
  const double g3 = rel(w3, c.dw_ref), g32 = rel(w32, c.dw_ref), gt = rel(wtf, c.dw_ref);
  std::printf("relative error, forward: 3xTF32 %.3g, fp32 %.3g, TF32 %.3g; weight gradient: %.3g, %.3g, %.3g\n",
              f3, f32, ft, g3, g32, gt);
  EXPECT_LT(f3, 1.25 * f32) << "forward against the fp32 kernel";
  EXPECT_LT(g3, 1.25 * g32) << "weight gradient against the fp32 kernel";
  EXPECT_GT(ft, 100 * f3) << "plain TF32";
  EXPECT_GT(gt, 100 * g3) << "plain TF32";
}
