// GPU kernel sources run on the CPU (tests/simt_host.h: a fiber per thread, barriers as
// switches), against the CPU code they stand in for, so they are checked on machines without a
// GPU: pooling, dropout, the loss, the element-wise kernels and SGD against the CPU ops (bit for
// bit where the GPU test demands it), and Deep Compression's retraining kernels against
// MaskConstraint and QuantizedConstraint, with the lists of centroid_lists(). Launch shapes as in
// the .cu files where a kernel depends on them. (The convolution's tile kernels run the same way
// in tests/test_igemm.cpp.) Each kernel runs with its threads in order and in reverse.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "core/compress.h"
#include "core/config.h"
#include "core/model.h"
#include "tests/ops_testing.h"
#include "tests/simt_host.h"
#include "kernels/cuda/compress_kernels.cuh"
#include "kernels/cuda/dropout_kernels.cuh"
#include "kernels/cuda/elementwise_kernels.cuh"
#include "kernels/cuda/loss_kernels.cuh"
#include "kernels/cuda/pool_kernels.cuh"
#include "kernels/cuda/wgmma_probe.cuh"
#include "core/rng.h"
#include "kernels/ops.h"

using namespace sq;

namespace {

std::mt19937& rng() {
  static std::mt19937 r(std::random_device{}());
  return r;
}
std::vector<float> randn(size_t n, float scale = 1.0f) {
  return testing_ops::normal_vec(n, rng(), scale);
}
// A ReLU's output (about half zeros): the mask of the backwards that apply the previous layer's
// ReLU in their own pass.
std::vector<float> relu_of(std::vector<float> v) {
  for (float& e : v) e = e > 0.0f ? e : 0.0f;
  return v;
}

ModelConfig small_model() {  // every kind of weight tensor, a few thousand parameters each
  ModelConfig c = preset("squeezenet1.1");
  c.stem = Stem::kSmall;
  c.in_c = 1, c.in_h = 28, c.in_w = 28, c.num_classes = 10;
  c.base_e = 16, c.incr_e = 8, c.bypass = Bypass::kComplex;
  return c;
}

void run(unsigned blocks, const std::function<void()>& kernel, bool reverse, int threads = cuda::kThreads) {
  ASSERT_TRUE(simt::run({blocks, 1, 1}, threads, kernel, reverse)) << "threads disagree on barriers";
}

void expect_same_bits(const std::vector<float>& got, const std::vector<float>& want, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < want.size(); ++i)
    if (!(got[i] == want[i] || (std::isnan(got[i]) && std::isnan(want[i]))))
      FAIL() << what << ": first difference at " << i << ": " << got[i] << " vs " << want[i];
}

// Runs a 64-thread (two-warp) kernel that writes out[t] for every thread; true if out equals want.
bool gives(const std::function<void()>& kernel, bool reverse, std::vector<float>& out, const std::vector<float>& want) {
  std::fill(out.begin(), out.end(), -1.0f);
  return simt::run({1, 1, 1}, 64, kernel, reverse, 64 * sizeof(float)) && out == want;
}

}  // namespace

// The emulator itself: a launch gets the dynamic shared memory it asks for and no more. An access
// past it ends the run, as on the device (where conv.cu passes *_smem_bytes; the kernel tests pass
// the same functions' bytes, so a kernel whose layout outgrows its launch's count fails here).
TEST(SimtHost, AnAccessPastTheLaunchsDynamicSharedMemoryEndsTheRun) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  std::vector<float> out(64, -1.0f);
  auto touch = [&](int past) {
    return [&, past] {
      SQ_DYNAMIC_SHARED(float, s);
      const int t = int(threadIdx.x);
      s[t + past] = float(t);
      out[size_t(t)] = s[t + past];
    };
  };
  ASSERT_TRUE(simt::run({2, 1, 1}, 64, touch(0), false, 64 * sizeof(float)));
  for (int t = 0; t < 64; ++t) ASSERT_EQ(out[size_t(t)], float(t));
  EXPECT_DEATH(simt::run({1, 1, 1}, 64, touch(1), false, 64 * sizeof(float)), "past the launch's dynamic shared memory");
  EXPECT_DEATH(simt::run({1, 1, 1}, 64, touch(0), false, 60 * sizeof(float)), "past the launch's dynamic shared memory");
  EXPECT_DEATH(simt::run({1, 1, 1}, 64, touch(0), false), "past the launch's dynamic shared memory");
}

// With the test's tensors declared readable (simt::Readable), an asynchronous copy or a 16-byte
// load that reads a float outside them ends the run, one of a 16-byte copy's four included; a
// zero-filled element is not read.
TEST(SimtHost, ACopyFromOutsideTheDeclaredTensorsEndsTheRun) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  std::vector<float> b(68, 2.0f), out(64);
  // Threads 0, 4, ..., 60 copy b's floats [t + shift, t + shift + 4), the first `valid` of them.
  auto copy = [&](int shift, int valid) {
    return [&, shift, valid] {
      SQ_DYNAMIC_SHARED(float, s);
      const int t = int(threadIdx.x);
      if (t % 4 == 0) cp_async16(s + t, b.data() + t + shift, valid);
      cp_async_commit();
      cp_async_wait<0>();
      out[size_t(t)] = s[t];
    };
  };
  {
    const simt::Readable readable({{b.data(), 64}});
    ASSERT_TRUE(simt::run({1, 1, 1}, 64, copy(0, 4), false, 64 * sizeof(float)));
    for (float v : out) ASSERT_EQ(v, 2.0f);
    ASSERT_TRUE(simt::run({1, 1, 1}, 64, copy(4, 0), false, 64 * sizeof(float))) << "zero-filled, not read";
    for (float v : out) ASSERT_EQ(v, 0.0f);
    EXPECT_DEATH(simt::run({1, 1, 1}, 64, copy(4, 4), false, 64 * sizeof(float)), "outside the tensors");
    EXPECT_DEATH(simt::run({1, 1, 1}, 64, copy(4, 1), false, 64 * sizeof(float)), "outside the tensors");
  }
  {
    const simt::Readable readable({{b.data(), 63}});
    EXPECT_DEATH(simt::run({1, 1, 1}, 64, copy(0, 4), false, 64 * sizeof(float)), "outside the tensors");
  }
  // The whole-or-nothing copy (cp_async16_if) and the load into registers (load16) alike.
  const simt::Readable readable({{b.data(), 64}});
  auto copy_if = [&](int shift, bool read) {
    return [&, shift, read] {
      SQ_DYNAMIC_SHARED(float, s);
      const int t = int(threadIdx.x);
      if (t % 4 == 0) cp_async16_if(s + t, b.data() + t + shift, read, b.data());
      cp_async_commit();
      cp_async_wait<0>();
      out[size_t(t)] = s[t];
    };
  };
  ASSERT_TRUE(simt::run({1, 1, 1}, 64, copy_if(4, false), false, 64 * sizeof(float))) << "zero-filled, not read";
  for (float v : out) ASSERT_EQ(v, 0.0f);
  EXPECT_DEATH(simt::run({1, 1, 1}, 64, copy_if(4, true), false, 64 * sizeof(float)), "outside the tensors");
  auto load = [&](int shift) {
    return [&, shift] {
      const int t = int(threadIdx.x);
      if (t % 4 == 0) {
        const float4 v = load16(b.data() + t + shift);
        out[size_t(t)] = v.x + v.y + v.z + v.w;
      }
    };
  };
  ASSERT_TRUE(simt::run({1, 1, 1}, 64, load(0)));
  EXPECT_EQ(out[60], 8.0f);
  EXPECT_DEATH(simt::run({1, 1, 1}, 64, load(4)), "outside the tensors");
}

// The emulator itself: a kernel whose warps share memory without the barrier between must give a
// wrong result in one of the two runs, and the same kernel with the barrier the right one in both.
// Between block barriers the warps run one after another (__syncwarp and mma.sync order a warp's
// lanes only; between those, the lanes run one after another too), and asynchronous copies land
// at their wait in the forward run, at issue in reverse.
TEST(SimtHost, ExposesMissingBarriersInOneOfTheTwoOrders) {
  std::vector<float> out(64), src(64, 2.0f), other(64), neighbour(64), ones(64, 1.0f);
  for (int t = 0; t < 64; ++t) other[size_t(t)] = float((t + 32) % 64), neighbour[size_t(t)] = float(t ^ 1);
  // A plain store read by the other warp (read after write).
  auto stores = [&](bool sync) {
    return [&, sync] {
      SQ_DYNAMIC_SHARED(float, s);
      const int t = int(threadIdx.x);
      s[t] = float(t);
      if (sync) __syncthreads();
      out[size_t(t)] = s[(t + 32) % 64];
    };
  };
  // A warp barrier orders its own lanes, not the other warp; without it, not even its own lanes.
  auto warp_sync = [&](int partner_xor, bool sync = true) {
    return [&, partner_xor, sync] {
      SQ_DYNAMIC_SHARED(float, s);
      const int t = int(threadIdx.x);
      s[t] = float(t);
      if (sync) __syncwarp();
      out[size_t(t)] = s[t ^ partner_xor];
    };
  };
  // An asynchronous copy read by the other warp after the copying thread's wait (read after write).
  auto copy_then_read = [&](bool sync) {
    return [&, sync] {
      SQ_DYNAMIC_SHARED(float, s);
      const int t = int(threadIdx.x);
      cp_async4(s + t, src.data() + t, true);
      cp_async_commit();
      cp_async_wait<0>();
      if (sync) __syncthreads();
      out[size_t(t)] = s[(t + 32) % 64] - 1.0f;
    };
  };
  // An asynchronous copy into what the other warp has yet to read (write after read), waited for
  // after the next barrier, as a pipeline fills the stage just used with a later step.
  auto read_then_copy = [&](bool sync) {
    return [&, sync] {
      SQ_DYNAMIC_SHARED(float, s);
      const int t = int(threadIdx.x);
      s[t] = 1.0f;
      __syncthreads();
      const float v = s[(t + 32) % 64];
      if (sync) __syncthreads();
      cp_async4(s + t, src.data() + t, true);
      cp_async_commit();
      __syncthreads();
      cp_async_wait<0>();
      out[size_t(t)] = v;
    };
  };
  struct Case {
    const char* what;
    std::function<void()> right, racing;  // the kernel, and the kernel without its barrier
    const std::vector<float>&right_out, &racing_out;  // what each gives without a race
  };
  const Case cases[] = {
      {"store, then the other warp's load", stores(true), stores(false), other, other},
      {"__syncwarp, then a load of its own warp, or of the other", warp_sync(1), warp_sync(32), neighbour, other},
      {"store, then a load of another lane of the warp", warp_sync(1), warp_sync(1, false), neighbour, neighbour},
      {"cp.async, then the other warp's load", copy_then_read(true), copy_then_read(false), ones, ones},
      {"load, then the other warp's cp.async", read_then_copy(true), read_then_copy(false), ones, ones},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    EXPECT_TRUE(gives(c.right, false, out, c.right_out)) << "forward";
    EXPECT_TRUE(gives(c.right, true, out, c.right_out)) << "reverse";
    EXPECT_FALSE(gives(c.racing, false, out, c.racing_out) && gives(c.racing, true, out, c.racing_out))
        << "the missing barrier went unseen in both orders";
  }
}

// ldmatrix.x4 as the PTX ISA describes it (the TF32 A fragments of the mma, window and row kernels
// rely on it): lanes 8j .. 8j + 7 give matrix j's row addresses, lane i receives in register j the
// 32-bit word i % 4 of matrix j's row i / 4. Rows 16 bytes each, scattered (two matrices
// interleaved, a gap between rows), two warps with their own matrices, and two loads in a row
// (the emulator's alternating slots), each word its own value.
TEST(SimtHost, LdmatrixGivesEachLaneItsWordsOfThePtxLayout) {
  constexpr int kWarps = 2, kLoads = 2, kPitch = 12;  // words between a matrix's rows
  // Word w of row r of matrix j of load l of warp v: where it sits, and its value.
  auto at = [](int v, int l, int j, int r, int w) { return ((v * kLoads + l) * 2 + j / 2) * 8 * kPitch * 2 + r * kPitch * 2 + (j % 2) * 4 + w; };
  auto value = [](int v, int l, int j, int r, int w) { return uint32_t(100000 * v + 10000 * l + 1000 * j + 10 * r + w); };
  const int words = kWarps * kLoads * 2 * 8 * kPitch * 2;
  std::vector<uint32_t> got(size_t(kWarps) * 32 * kLoads * 4, 0u);
  ASSERT_TRUE(simt::run({1, 1, 1}, 32 * kWarps, [&] {
    SQ_DYNAMIC_SHARED(float, s);
    const int t = int(threadIdx.x), v = t / 32, lane = t % 32;
    for (int i = t; i < words; i += 32 * kWarps) s[i] = 0.0f;
    __syncthreads();
    for (int l = 0; l < kLoads; ++l)
      for (int j = 0; j < 4; ++j)
        for (int r = 0; r < 8; ++r)
          for (int w = 0; w < 4; ++w)
            if (t == 0)
              for (int vv = 0; vv < kWarps; ++vv) {
                const uint32_t x = value(vv, l, j, r, w);
                std::memcpy(&s[at(vv, l, j, r, w)], &x, 4);
              }
    __syncthreads();
    for (int l = 0; l < kLoads; ++l) {
      uint32_t reg[4];
      ldmatrix_x4(reg, s + at(v, l, lane / 8, lane % 8, 0));
      for (int j = 0; j < 4; ++j) got[(size_t(t) * kLoads + size_t(l)) * 4 + size_t(j)] = reg[j];
    }
  }, false, size_t(words) * sizeof(float)));
  for (int t = 0; t < 32 * kWarps; ++t)
    for (int l = 0; l < kLoads; ++l)
      for (int j = 0; j < 4; ++j) {
        const int v = t / 32, lane = t % 32;
        EXPECT_EQ(got[(size_t(t) * kLoads + size_t(l)) * 4 + size_t(j)], value(v, l, j, lane / 4, lane % 4))
            << "thread " << t << ", load " << l << ", register " << j;
      }
}

// wgmma as the emulator does it (tests/simt_host.h, from the PTX ISA), through the probe kernel
// (kernels/cuda/wgmma_probe.cuh) that test_cuda_ops runs on an sm_90 GPU: TF32 and BF16, N 64 and
// 128, B's core matrices along k and along n (two values of each descriptor offset), one and two
// warpgroups, threads in both orders (the product at the wait and at issue), against the double
// product. The device's answer to the same probe is what says the emulator reads the ISA right.
TEST(SimtHost, WgmmaProbeGivesTheProduct) {
  for (bool bf16 : {false, true})
    for (int n : {64, 96, 128})
      for (int layout : {0, 1})
        for (int groups : {1, 2})
          for (bool reverse : {false, true}) {
            const int K = cuda::wgmma_probe_k(bf16);
            const testing_ops::WgmmaProbeCase c = testing_ops::wgmma_probe_case(bf16, 64 * groups, K, n, rng());
            std::vector<float> D(size_t(64 * groups) * size_t(n), 0.0f);
            const std::string what = std::string(bf16 ? "BF16" : "TF32") + " N " + std::to_string(n) + ", layout " +
                                     std::to_string(layout) + ", " + std::to_string(groups) + " warpgroup(s)" +
                                     (reverse ? ", reverse" : "");
            const float *A = c.A.data(), *B = c.B.data();
            float* out = D.data();
            ASSERT_TRUE(simt::run({1, 1, 1}, 128 * groups, [&] {
              if (bf16) {
                n == 64   ? cuda::wgmma_probe_kernel<true, 64>(A, B, out, layout)
                : n == 96 ? cuda::wgmma_probe_kernel<true, 96>(A, B, out, layout)
                          : cuda::wgmma_probe_kernel<true, 128>(A, B, out, layout);
              } else {
                n == 64   ? cuda::wgmma_probe_kernel<false, 64>(A, B, out, layout)
                : n == 96 ? cuda::wgmma_probe_kernel<false, 96>(A, B, out, layout)
                          : cuda::wgmma_probe_kernel<false, 128>(A, B, out, layout);
              }
            }, reverse, size_t(K) * size_t(n) * (bf16 ? 2 : 4))) << what;
            testing_ops::expect_wgmma_probe(D, c, n, what);
          }
}

// What the emulator's wgmma refuses or exposes, on one warpgroup's 64 x 8 x 8 TF32 product of ones
// (B's one core-matrix pair at the start of the dynamic shared memory). Each lane's d[0] goes to
// out. The emulator performs a wgmma at its wait, so accumulators read before the wait, or a B stage
// or A register written between issue and wait, give a wrong result in both orders; and it refuses
// a B written by plain stores with no fence.proxy.async between them and the wgmma.
struct WgmmaMisuse {
  bool fence = true, proxy_fence = true, wait = true, read_before_wait = false, overwrite_before_wait = false;
  bool again_without_fence = false;  // a second wgmma after the wait, without a fence of its own
  bool a_written_before_wait = false;
  bool b_stored = false;  // B written by plain stores (the generic proxy), not copied
  int unfenced_warp = -1;  // a warp that skips the fence.proxy.async
};
std::vector<float> run_wgmma(const WgmmaMisuse& m, bool reverse) {
  std::vector<float> out(128, -1.0f);
  alignas(16) static const float ones[64] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                                             1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                                             1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
  float* o = out.data();
  const bool ran = simt::run({1, 1, 1}, 128, [&] {
    SQ_DYNAMIC_SHARED(float, sm);
    const int t = int(threadIdx.x);
    if (m.b_stored) {
      if (t < 64) sm[t] = ones[t];
    } else {
      if (t < 16) cp_async16(sm + 4 * t, ones + 4 * t, 4);  // B: 64 ones
      cp_async_commit();
      cp_async_wait<0>();
    }
    if (m.proxy_fence && t / 32 != m.unfenced_warp) fence_proxy_async();
    __syncthreads();
    const uint32_t one = 0x3f800000u;
    uint32_t a[4] = {one, one, one, one};
    float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (m.fence) wgmma_fence();
    wgmma_tf32<8>(d, a, cuda::wgmma_desc(smem_address(sm), 128, 256), 0);
    wgmma_commit();
    if (m.read_before_wait) o[t] = d[0];
    if (m.a_written_before_wait) a[0] = a[1] = a[2] = a[3] = 0x40000000u;  // 2.0
    if (m.overwrite_before_wait) {
      __syncthreads();
      if (t < 64) sm[t] = 2.0f;
    }
    if (m.wait) wgmma_wait<0>();
    if (m.again_without_fence) {
      wgmma_tf32<8>(d, a, cuda::wgmma_desc(smem_address(sm), 128, 256), 1);
      wgmma_commit();
      wgmma_wait<0>();
    }
    if (!m.read_before_wait) o[t] = d[0];
  }, reverse, 64 * sizeof(float));
  EXPECT_TRUE(ran);
  return out;
}

TEST(SimtHost, WgmmaRefusesAMissingFenceAndExposesEarlyAccesses) {
  EXPECT_EQ(run_wgmma({}, false), std::vector<float>(128, 8.0f));  // 8 products of ones
  EXPECT_EQ(run_wgmma({}, true), std::vector<float>(128, 8.0f));
  WgmmaMisuse m;
  m.fence = false;
  EXPECT_DEATH(run_wgmma(m, false), "without a wgmma.fence");
  m = {};
  m.proxy_fence = false;
  EXPECT_DEATH(run_wgmma(m, false), "without a fence.proxy.async");
  // B through plain stores: fenced, the product; without the fence, refused (the async proxy need
  // not see them), in both orders.
  m = {};
  m.b_stored = true;
  EXPECT_EQ(run_wgmma(m, false), std::vector<float>(128, 8.0f));
  EXPECT_EQ(run_wgmma(m, true), std::vector<float>(128, 8.0f));
  m.proxy_fence = false;
  EXPECT_DEATH(run_wgmma(m, false), "plain stores wrote with no fence.proxy.async");
  EXPECT_DEATH(run_wgmma(m, true), "plain stores wrote with no fence.proxy.async");
  // A warp's stores want a fence of its own: warp 1 stored half of B, warp 3 nothing.
  m = {};
  m.b_stored = true;
  m.unfenced_warp = 1;
  EXPECT_DEATH(run_wgmma(m, false), "plain stores wrote with no fence.proxy.async");
  EXPECT_DEATH(run_wgmma(m, true), "plain stores wrote with no fence.proxy.async");
  m.unfenced_warp = 3;
  EXPECT_EQ(run_wgmma(m, false), std::vector<float>(128, 8.0f));
  m = {};
  m.wait = false;
  EXPECT_DEATH(run_wgmma(m, false), "did not wait for");
  m = {};
  m.again_without_fence = true;
  EXPECT_DEATH(run_wgmma(m, false), "without a wgmma.fence");
  const std::vector<float> right(128, 8.0f);
  for (bool reverse : {false, true}) {
    m = {};
    m.read_before_wait = true;
    EXPECT_NE(run_wgmma(m, reverse), right) << "an accumulator read before the wait went unseen";
    m = {};
    m.overwrite_before_wait = true;
    EXPECT_NE(run_wgmma(m, reverse), right) << "B overwritten before the wait went unseen";
    m = {};
    m.a_written_before_wait = true;
    EXPECT_NE(run_wgmma(m, reverse), right) << "A's registers written before the wait went unseen";
  }
}

// Static shared memory holds nothing of a previous block (SQ_FRESH_SHARED): a read before the
// block's own write gives NaN, where the emulator's function-static variable would otherwise still
// hold the previous block's value.
TEST(SimtHost, StaticSharedMemoryStartsEmptyInEveryBlock) {
  std::vector<float> out(3, 0.0f);
  const std::function<void()> kernel = [&] {
    __shared__ float v;
    SQ_FRESH_SHARED(v);
    if (blockIdx.x == 0 && threadIdx.x == 0) v = 7.0f;  // only the first block writes it
    __syncthreads();
    if (threadIdx.x == 0) out[blockIdx.x] = v;
  };
  for (bool reverse : {false, true}) {
    ASSERT_TRUE(simt::run({3, 1, 1}, 64, kernel, reverse));
    EXPECT_EQ(out[0], 7.0f);
    EXPECT_TRUE(std::isnan(out[1]) && std::isnan(out[2])) << "a later block read " << out[1] << ", " << out[2];
  }
}

TEST(CompressKernelsOnCpu, MaskKernelMatchesMaskConstraint) {
  const Model m(small_model(), 1, false);
  const size_t n = m.layout().total;
  const std::vector<float> p0 = randn(n, 0.05f);
  const std::vector<uint8_t> mask = magnitude_mask(m, p0.data(), paper_schedule());
  std::vector<float> g = randn(n), p = p0, v = randn(n);
  std::vector<float> gk = g, pk = p, vk = v;
  MaskConstraint mc(mask);
  mc.on_gradient(g.data());
  mc.after_update(p.data(), v.data(), g.data(), 0.01);
  for (float* x : {gk.data(), pk.data(), vk.data()})  // 3 blocks: the grid-stride loop wraps
    run(3, [&] { cuda::apply_mask_kernel(x, mask.data(), n); }, false);
  EXPECT_EQ(gk, g);
  EXPECT_EQ(pk, p);
  EXPECT_EQ(vk, v);
  EXPECT_NE(std::count(pk.begin(), pk.end(), 0.0f), 0);
}

// The lists: every kept weight once, under its centroid, in ascending order; pruned weights -1,
// biases kNotShared. Then three steps of trained quantization with momentum, the kernels (threads
// in both orders) against QuantizedConstraint::after_update.
TEST(CompressKernelsOnCpu, CodebookKernelsMatchQuantizedConstraint) {
  const Model m(small_model(), 1, false);
  const size_t n = m.layout().total;
  const std::vector<float> p0 = randn(n, 0.05f);
  const std::vector<uint8_t> mask = magnitude_mask(m, p0.data(), paper_schedule());
  CompressedModel cm = quantize(m, p0.data(), mask, 3);
  const CentroidLists L = centroid_lists(cm, m);
  const std::vector<WeightTensor> wt = weight_tensors(m);
  size_t kept = 0;
  for (size_t t = 0; t < wt.size(); ++t) {
    const QuantizedTensor& q = cm.weights[t];
    kept += q.positions.size();
    for (size_t j = 0; j < q.positions.size(); ++j)
      ASSERT_EQ(L.centroid_of[wt[t].offset + q.positions[j]], int32_t(L.book_offset[t] + q.codes[j]));
  }
  ASSERT_EQ(L.members.size(), kept);
  ASSERT_EQ(L.start.size(), L.codebook.size() + 1);
  for (size_t g = 0; g + 1 < L.start.size(); ++g)
    for (int32_t j = L.start[g]; j < L.start[g + 1]; ++j) {
      ASSERT_EQ(L.centroid_of[size_t(L.members[size_t(j)])], int32_t(g));
      if (j > L.start[g]) {
        ASSERT_LT(L.members[size_t(j) - 1], L.members[size_t(j)]);
      }
    }
  size_t biases = 0, pruned = 0;
  for (size_t i = 0; i < n; ++i) biases += L.centroid_of[i] == kNotShared, pruned += L.centroid_of[i] == -1;
  EXPECT_EQ(biases + pruned + kept, n);
  size_t weights = 0;
  for (const WeightTensor& t : wt) weights += t.count;
  EXPECT_EQ(pruned + kept, weights);

  for (bool reverse : {false, true}) {
    SCOPED_TRACE(reverse ? "threads in reverse order" : "threads in order");
    CompressedModel host_cm = cm;
    QuantizedConstraint qc(host_cm, m, 0.9);
    std::vector<float> p = dequantize(cm, m), v = randn(n);
    std::vector<float> pk = p, vk = v, book = L.codebook;
    std::vector<double> vel(book.size(), 0.0);
    const int centroids = int(book.size());
    for (int step = 0; step < 3; ++step) {
      const std::vector<float> g = randn(n);
      const double lr = 0.01 * (step + 1);
      qc.after_update(p.data(), v.data(), g.data(), lr);
      run(unsigned(centroids), [&] {
        cuda::centroid_sgd_kernel(L.start.data(), L.members.data(), g.data(), book.data(), vel.data(), lr, 0.9);
      }, reverse);
      run(5, [&] { cuda::write_shared_weights_kernel(n, L.centroid_of.data(), book.data(), pk.data(), vk.data()); },
          reverse);
    }
    for (size_t t = 0; t < wt.size(); ++t)
      for (size_t k = 0; k < host_cm.weights[t].codebook.size(); ++k)
        EXPECT_NEAR(book[L.book_offset[t] + k], host_cm.weights[t].codebook[k],
                    1e-6 * (1 + std::fabs(host_cm.weights[t].codebook[k])))
            << wt[t].name << " centroid " << k;
    const std::vector<float> p_start = dequantize(cm, m);
    for (size_t i = 0; i < n; ++i) {
      const int32_t c = L.centroid_of[i];
      ASSERT_EQ(pk[i], c >= 0 ? book[size_t(c)] : c == -1 ? 0.0f : p_start[i]) << "parameter " << i;
      ASSERT_NEAR(pk[i], p[i], 1e-6 * (1 + std::fabs(p[i]))) << "parameter " << i;
    }
    EXPECT_EQ(vk, v);  // zero for weights, untouched for biases
  }
}

// Max-pool with ties and NaNs (the first maximum wins; a NaN wins), its argmax bytes, and the
// gather backward; the global average pool. Every pooling of the model family (k 3, stride 2,
// ceil) and padded ones.
TEST(KernelsOnCpu, PoolsMatchTheCpuOpsBitForBit) {
  for (bool reverse : {false, true}) {
    for (const PoolGeom& g : {PoolGeom{2, 3, 13, 13, 3, 2, 0, true}, PoolGeom{3, 2, 14, 11, 3, 2, 0, true},
                              PoolGeom{2, 2, 9, 9, 3, 2, 1, true}, PoolGeom{2, 2, 10, 7, 3, 2, 1, false},
                              PoolGeom{1, 3, 8, 8, 2, 2, 0, false}}) {
      SCOPED_TRACE("H " + std::to_string(g.H) + " W " + std::to_string(g.W) + " pad " + std::to_string(g.pad) +
                   (reverse ? ", reverse" : ""));
      const size_t nx = size_t(g.C) * g.N * g.H * g.W, ny = size_t(g.C) * g.N * g.P() * g.Q();
      std::vector<float> x = randn(nx);
      for (float& v : x) v -= 1.0f;  // a fifth to a half of the windows with no positive element
      for (size_t i = 0; i < nx; i += 3) x[i] = std::round(x[i]);  // ties
      for (size_t i = 17; i < nx; i += 101) x[i] = std::nanf("");
      const std::vector<float> dy = randn(ny);
      std::vector<float> y(ny), dx(nx);
      maxpool_forward<float>(g, x.data(), y.data());
      maxpool_backward<float>(g, x.data(), dy.data(), dx.data());
      const cuda::PoolArgs a{g.N, g.C, g.H, g.W, g.k, g.stride, g.pad, g.P(), g.Q()};
      std::vector<float> yk(ny, -1.0f), dxk(nx, -1.0f);
      std::vector<uint8_t> arg(ny, 255);
      // Grids smaller than the work, as pool.cu's are for large tensors: both loops stride. The
      // generic kernels, then (for k 3, stride 2) the ones pool.cu uses for that window: the
      // forward with the window as constants, the backward over 2x2 cells of the input.
      for (bool special : {false, true}) {
        if (special && !(g.k == 3 && g.stride == 2)) continue;
        SCOPED_TRACE(special ? "k 3, stride 2 kernels" : "generic kernels");
        std::fill(yk.begin(), yk.end(), -1.0f);
        std::fill(arg.begin(), arg.end(), uint8_t(255));
        ASSERT_TRUE(simt::run({2, 1, 1}, 32, [&] {
          if (special)
            cuda::maxpool_forward_kernel<3, 2>(a, x.data(), yk.data(), arg.data());
          else
            cuda::maxpool_forward_kernel(a, x.data(), yk.data(), arg.data());
        }, reverse));
        auto backward = [&](bool relu_in) {
          std::fill(dxk.begin(), dxk.end(), -1.0f);
          return simt::run({3, 2, 1}, 32, [&] {
            if (special)
              cuda::maxpool_backward_k3s2_kernel(a, arg.data(), dy.data(), dxk.data(), relu_in);
            else
              cuda::maxpool_backward_kernel(a, arg.data(), dy.data(), dxk.data(), relu_in);
          }, reverse);
        };
        ASSERT_TRUE(backward(false));
        expect_same_bits(yk, y, "max-pool forward");
        expect_same_bits(dxk, dx, "max-pool backward");
        // The windows whose maximum is not positive, flagged in their argmax bytes: both kinds.
        size_t flagged = 0;
        for (size_t i = 0; i < ny; ++i) {
          flagged += (arg[i] & cuda::kNotPositive) != 0;
          ASSERT_EQ((arg[i] & cuda::kNotPositive) != 0, !(y[i] > 0.0f)) << "argmax byte " << i;
        }
        EXPECT_GT(flagged, ny / 10);
        EXPECT_LT(flagged, ny - ny / 10);
        // With the previous layer's ReLU applied in the same pass: its output is the pool's input,
        // the mask x > 0, which the kernel takes from the argmax bytes.
        std::vector<float> dxr = dx;
        relu_backward<float>(dx.data(), x.data(), dxr.data(), nx);
        ASSERT_TRUE(backward(true));
        expect_same_bits(dxk, dxr, "max-pool backward with the ReLU of its input");

        // The band kernels (pool.cu's default), with staging buffers of several sizes: all the
        // planes an item; two planes an item (the last item short where the planes are odd); a
        // band of output rows an item (a plane larger than the buffer: the forward only), as
        // many rows as fit and one row a band. Two warps, two blocks striding over the items.
        const int plane = g.H * g.W, pplane = g.P() * g.Q();
        for (int cap : {cuda::kPoolBandFloats, 2 * plane + 7, plane - 1, g.k * g.W + g.W - 1}) {
          SCOPED_TRACE("band kernels, staging " + std::to_string(cap) + " floats");
          const cuda::PoolBand bf = cuda::pool_band_forward(a, cap);
          ASSERT_TRUE(bf.ok);
          ASSERT_EQ(bf.whole, plane <= cap);
          // The staged rows of every item fit the buffer, and the items cover every output.
          if (!bf.whole) {
            ASSERT_LE(((bf.rows - 1) * g.stride + g.k) * g.W, cap);
            ASSERT_EQ(bf.bands, (g.P() + bf.rows - 1) / bf.rows);
          } else {
            ASSERT_LE(bf.planes * plane, cap);
          }
          std::fill(yk.begin(), yk.end(), -1.0f);
          std::fill(arg.begin(), arg.end(), uint8_t(255));
          ASSERT_TRUE(simt::run({2, 1, 1}, 64, [&] {
            if (special)
              cuda::maxpool_forward_band_kernel<3, 2>(a, bf, x.data(), yk.data(), arg.data());
            else
              cuda::maxpool_forward_band_kernel(a, bf, x.data(), yk.data(), arg.data());
          }, reverse));
          expect_same_bits(yk, y, "band max-pool forward");
          for (size_t i = 0; i < ny; ++i)
            ASSERT_EQ((arg[i] & cuda::kNotPositive) != 0, !(y[i] > 0.0f)) << "band argmax byte " << i;
          const cuda::PoolBand bb = cuda::pool_band_backward(a, cap);
          ASSERT_EQ(bb.ok, pplane <= cap);
          if (!bb.ok) continue;
          ASSERT_LE(bb.planes * pplane, cap);
          for (bool relu_in : {false, true}) {
            std::fill(dxk.begin(), dxk.end(), -1.0f);
            ASSERT_TRUE(simt::run({2, 1, 1}, 64, [&] {
              if (special)
                cuda::maxpool_backward_band_kernel<3, 2>(a, bb, arg.data(), dy.data(), dxk.data(), relu_in);
              else
                cuda::maxpool_backward_band_kernel(a, bb, arg.data(), dy.data(), dxk.data(), relu_in);
            }, reverse));
            expect_same_bits(dxk, relu_in ? dxr : dx, relu_in ? "band max-pool backward with the ReLU" : "band max-pool backward");
          }
        }
      }
    }
    // Planes of 13 (one pass of a warp's lanes, some idle) and 45 elements (two passes; 39 planes,
    // more than a staged block takes).
    for (const auto& shape : {std::tuple<int, int, int>{3, 5, 13}, {3, 13, 45}}) {
      const int N = std::get<0>(shape), C = std::get<1>(shape), HW = std::get<2>(shape);
      SCOPED_TRACE("average pool over " + std::to_string(HW));
      const std::vector<float> x = randn(size_t(C) * N * HW), dy = randn(size_t(N) * C);
      std::vector<float> y(size_t(N) * C), dx(x.size()), yk(y.size()), dxk(dx.size());
      avgpool_forward<float>(N, C, HW, x.data(), y.data());
      avgpool_backward<float>(N, C, HW, dy.data(), dx.data());
      run(1, [&] { cuda::avgpool_forward_kernel(N, C, HW, x.data(), yk.data()); }, reverse);
      run(2, [&] { cuda::avgpool_backward_kernel(N, C, HW, dy.data(), dxk.data()); }, reverse);
      expect_same_bits(yk, y, "average-pool forward");
      // Staged in shared memory, 32 planes a block: one block over all the planes, then blocks
      // of 64 threads that stride (the second shape has more than 32 planes).
      std::fill(yk.begin(), yk.end(), -1.0f);
      run(1, [&] { cuda::avgpool_forward_staged_kernel(N, C, HW, x.data(), yk.data()); }, reverse);
      expect_same_bits(yk, y, "average-pool forward, staged");
      std::fill(yk.begin(), yk.end(), -1.0f);
      run(1, [&] { cuda::avgpool_forward_staged_kernel(N, C, HW, x.data(), yk.data()); }, reverse, 64);
      expect_same_bits(yk, y, "average-pool forward, staged, one block striding");
      expect_same_bits(dxk, dx, "average-pool backward");
      const std::vector<float> relu_out = relu_of(randn(x.size()));
      relu_backward<float>(dx.data(), relu_out.data(), dx.data(), dx.size());
      run(2, [&] { cuda::avgpool_backward_kernel(N, C, HW, dy.data(), dxk.data(), relu_out.data()); }, reverse);
      expect_same_bits(dxk, dx, "average-pool backward with the ReLU of its input");
      // Two warps striding over the planes.
      std::fill(dxk.begin(), dxk.end(), -1.0f);
      run(1, [&] { cuda::avgpool_backward_kernel(N, C, HW, dy.data(), dxk.data(), relu_out.data()); }, reverse, 64);
      expect_same_bits(dxk, dx, "average-pool backward, two warps");
    }
  }
}

// Dropout's masks from the per-sample keys, the element-wise kernels, the channel-major <-> NCHW
// swap, SGD (bit for bit), and the two-pass sum of squares (to double rounding).
TEST(KernelsOnCpu, DropoutElementwiseAndSgdMatchTheCpuOps) {
  for (bool reverse : {false, true}) {
    const int N = 3, C = 7, HW = 9;
    std::vector<uint64_t> keys(N);
    for (int n = 0; n < N; ++n) keys[size_t(n)] = sample_key(7, RngStream::kDropout, 2, uint64_t(100 + n));
    const std::vector<float> x = randn(size_t(C) * N * HW);
    const float p = 0.3f;
    std::vector<float> y(x.size()), yk(x.size());
    dropout_forward<float>(N, C, HW, p, keys.data(), x.data(), y.data());
    run(2, [&] { cuda::dropout_kernel(N, C, HW, p, 1.0f / (1.0f - p), keys.data(), x.data(), yk.data()); }, reverse);
    expect_same_bits(yk, y, "dropout");
    {  // a warp a plane (dropout.cu's kernel for planes of 32 or more): planes of 45, so each
       // warp's lanes take two passes, in one block of two warps striding over the 21 planes,
       // then in two blocks; forward, and backward with the ReLU of its input
      const int HW2 = 45;
      const std::vector<float> x2 = randn(size_t(C) * N * HW2), dy2 = randn(x2.size()),
                               relu2 = relu_of(randn(x2.size()));
      std::vector<float> y2(x2.size()), dx2(x2.size()), y2k(x2.size(), -1.0f), dx2k(x2.size(), -1.0f);
      dropout_forward<float>(N, C, HW2, p, keys.data(), x2.data(), y2.data());
      dropout_backward<float>(N, C, HW2, p, keys.data(), dy2.data(), dx2.data());
      relu_backward<float>(dx2.data(), relu2.data(), dx2.data(), dx2.size());
      run(1, [&] { cuda::dropout_plane_kernel(N, C, HW2, p, 1.0f / (1.0f - p), keys.data(), x2.data(), y2k.data()); },
          reverse, 64);
      expect_same_bits(y2k, y2, "dropout, a warp a plane");
      run(2, [&] {
        cuda::dropout_plane_kernel(N, C, HW2, p, 1.0f / (1.0f - p), keys.data(), dy2.data(), dx2k.data(), relu2.data());
      }, reverse);
      expect_same_bits(dx2k, dx2, "dropout backward with the ReLU of its input, a warp a plane");
    }
    EXPECT_GT(std::count(y.begin(), y.end(), 0.0f), 0);
    {  // the backward with the previous layer's ReLU applied in the same pass: dropout's
       // backward, then relu_backward with that ReLU's output as the mask
      const std::vector<float> dy = randn(x.size()), relu_out = relu_of(randn(x.size()));
      std::vector<float> dx(x.size()), dxk(x.size());
      dropout_backward<float>(N, C, HW, p, keys.data(), dy.data(), dx.data());
      relu_backward<float>(dx.data(), relu_out.data(), dx.data(), dx.size());
      run(2, [&] { cuda::dropout_kernel(N, C, HW, p, 1.0f / (1.0f - p), keys.data(), dy.data(), dxk.data(), relu_out.data()); },
          reverse);
      expect_same_bits(dxk, dx, "dropout backward with the ReLU of its input");
      // The same from the forward's output on that ReLU output (with NaNs, infinities and the
      // smallest positive values among x), without the masks or x.
      std::vector<float> xr = relu_out;
      xr[1] = std::nanf(""), xr[2] = INFINITY, xr[3] = std::numeric_limits<float>::denorm_min(), xr[4] = 0.0f;
      std::vector<float> yr(x.size()), dxr(x.size()), dxo(x.size(), -1.0f);
      dropout_forward<float>(N, C, HW, p, keys.data(), xr.data(), yr.data());
      dropout_backward<float>(N, C, HW, p, keys.data(), dy.data(), dxr.data());
      relu_backward<float>(dxr.data(), xr.data(), dxr.data(), dxr.size());
      run(2, [&] { cuda::dropout_backward_from_output_kernel(x.size(), 1.0f / (1.0f - p), yr.data(), dy.data(), dxo.data()); },
          reverse);
      expect_same_bits(dxo, dxr, "dropout backward from its output, on a ReLU's output");
      EXPECT_GT(std::count(dxo.begin(), dxo.end(), 0.0f), int(x.size() / 4));  // dropped and x <= 0
    }

    const size_t n = 5000;
    const std::vector<float> a = randn(n), b = randn(n), c = randn(n);
    std::vector<float> z(n), s = a, q = a, pp = a, v = b;
    relu_backward<float>(b.data(), a.data(), z.data(), n);
    add_inplace<float>(s.data(), c.data(), n);
    scale_inplace<float>(q.data(), 0.375f, n);
    sgd_momentum_update<float>(n, pp.data(), c.data(), v.data(), 0.04f, 0.9f, 2e-4f);
    std::vector<float> zk(n), sk = a, qk = a, pk = a, vk = b;
    run(2, [&] { cuda::relu_backward_kernel(b.data(), a.data(), zk.data(), n); }, reverse);
    run(3, [&] { cuda::add_kernel(sk.data(), c.data(), n); }, reverse);
    run(1, [&] { cuda::scale_kernel(qk.data(), 0.375f, n); }, reverse);
    run(2, [&] { cuda::sgd_kernel(n, pk.data(), c.data(), vk.data(), 0.04f, 0.9f, 2e-4f); }, reverse);
    expect_same_bits(zk, z, "relu_backward");
    expect_same_bits(sk, s, "add");
    expect_same_bits(qk, q, "scale");
    expect_same_bits(pk, pp, "sgd parameters");
    expect_same_bits(vk, v, "sgd momentum");

    std::vector<double> partial(cuda::kSumBlocks), out(1);
    run(unsigned(cuda::kSumBlocks), [&] { cuda::sum_squares_partial(a.data(), n, partial.data()); }, reverse);
    run(1, [&] { cuda::sum_partials(partial.data(), cuda::kSumBlocks, out.data()); }, reverse);
    const double want = sum_of_squares<float>(a.data(), n);
    EXPECT_NEAR(out[0], want, 1e-12 * want);

    // (A, B, inner) -> (B, A, inner), and added onto what is there.
    const int A = 3, B = 4;
    const size_t inner = 5;
    const std::vector<float> src = randn(size_t(A) * B * inner), base = randn(src.size());
    std::vector<float> dst(src.size()), acc = base;
    run(1, [&] { cuda::swap_outer_kernel(src.data(), A, B, inner, dst.data(), false); }, reverse);
    run(1, [&] { cuda::swap_outer_kernel(src.data(), A, B, inner, acc.data(), true); }, reverse);
    for (int ai = 0; ai < A; ++ai)
      for (int bi = 0; bi < B; ++bi)
        for (size_t j = 0; j < inner; ++j) {
          const size_t from = (size_t(ai) * B + bi) * inner + j, to = (size_t(bi) * A + ai) * inner + j;
          ASSERT_EQ(dst[to], src[from]);
          ASSERT_EQ(acc[to], base[to] + src[from]);
        }
  }
}

// A batch's bytes through the normalisation table (the GPU step's copy stream runs it on a batch
// of assemble_batch_bytes): element i is table[channel * 256 + byte], bit for bit, the quad kernel
// where a channel holds a multiple of 4 elements (its bytes unpacked low first), the byte kernel
// elsewhere; few blocks, so that the grid strides.
TEST(KernelsOnCpu, BytesToInputIsTheNormalisationTable) {
  const int C = 3;
  const std::vector<float> table = randn(size_t(C) * 256);
  for (bool reverse : {false, true})
    for (size_t per_channel : {size_t(5 * 28 * 28), size_t(3 * 7 * 5)}) {
      const size_t total = per_channel * C;
      std::vector<uint8_t> in(total);
      for (uint8_t& b : in) b = uint8_t(rng()() & 255u);
      in[0] = 0, in[1] = 255, in[total - 1] = 255;
      std::vector<float> want(total), got(total, std::nanf(""));
      for (size_t i = 0; i < total; ++i) want[i] = table[i / per_channel * 256 + in[i]];
      if (per_channel % 4 == 0) {
        std::vector<uint32_t> quads(total / 4);
        std::memcpy(quads.data(), in.data(), total);
        std::vector<float4> out(total / 4);
        run(2, [&] {
          cuda::bytes_to_input4_kernel(quads.data(), unsigned(per_channel), unsigned(total / 4), table.data(), out.data());
        }, reverse);
        std::memcpy(got.data(), out.data(), total * sizeof(float));
      } else {
        run(3, [&] { cuda::bytes_to_input_kernel(in.data(), unsigned(per_channel), unsigned(total), table.data(), got.data()); },
            reverse);
      }
      expect_same_bits(got, want, per_channel % 4 == 0 ? "bytes to input, four a thread" : "bytes to input");
    }
}

// Softmax cross-entropy with the launch of kernels/cuda/loss.cu (a block of kLossThreads per
// sample, one thread summing): loss and hits against the CPU op, a tie won by the first maximum,
// class counts below and above the block's width.
TEST(KernelsOnCpu, SoftmaxCrossEntropyMatchesTheCpuOp) {
  for (bool reverse : {false, true})
    for (int K : {10, 1000}) {
      SCOPED_TRACE("K " + std::to_string(K) + (reverse ? ", reverse" : ""));
      const int N = 5;
      std::vector<float> z = randn(size_t(N) * K, 3.0f);
      std::vector<int32_t> labels(N);
      for (int n = 0; n < N; ++n) labels[size_t(n)] = int32_t(rng()() % unsigned(K));
      z[size_t(K) + 3] = z[size_t(K) + 5] = 50.0f;  // a tie in sample 1
      labels[1] = 3;
      std::vector<float> d(z.size()), dk(z.size());
      int correct = 0;
      const double loss = softmax_xent<float>(N, K, z.data(), labels.data(), 1.0f / 7, d.data(), &correct);
      std::vector<double> ws(2 * size_t(N)), r(2);
      run(unsigned(N), [&] { cuda::xent_kernel(K, z.data(), labels.data(), 1.0f / 7, dk.data(), ws.data()); },
          reverse, cuda::kLossThreads);
      run(1, [&] { cuda::xent_sum_kernel(N, ws.data(), r.data()); }, reverse, 32);
      EXPECT_NEAR(r[0], loss, 1e-12 * std::abs(loss));
      EXPECT_EQ(r[1], double(correct));
      EXPECT_GE(correct, 1);  // the tie went to the label
      for (size_t i = 0; i < d.size(); ++i) ASSERT_NEAR(dk[i], d[i], 1e-6 * (1e-3 + std::fabs(d[i]))) << i;
    }
  // The sum over several of its chunks (600 samples: 256, 256, 88), in sample order bit for bit.
  for (bool reverse : {false, true}) {
    const int N = 600;
    std::vector<double> ws(2 * size_t(N)), r(2, -1.0);
    for (size_t i = 0; i < ws.size(); ++i) ws[i] = i % 2 ? double(rng()() % 2) : std::exp(double(randn(1)[0]) * 20.0);
    double loss = 0, hits = 0;
    for (int n = 0; n < N; ++n) loss += ws[2 * size_t(n)], hits += ws[2 * size_t(n) + 1];
    run(1, [&] { cuda::xent_sum_kernel(N, ws.data(), r.data()); }, reverse, 64);
    EXPECT_EQ(r[0], loss);
    EXPECT_EQ(r[1], hits);
  }
}

