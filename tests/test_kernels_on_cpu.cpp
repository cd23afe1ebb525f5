// GPU kernel sources run on the CPU (tests/simt_host.h: a fiber per thread, barriers as
// switches), against the CPU code they stand in for, so they are checked on machines without a
// GPU: Deep Compression's retraining kernels (kernels/cuda/compress_kernels.cuh) against
// MaskConstraint and QuantizedConstraint, with the lists of centroid_lists(). (The convolution's
// tile kernel runs the same way in tests/test_igemm.cpp.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "core/compress.h"
#include "core/config.h"
#include "core/model.h"
#include "tests/simt_host.h"
#include "kernels/cuda/compress_kernels.cuh"

using namespace sq;

namespace {

std::mt19937& rng() {
  static std::mt19937 r(std::random_device{}());
  return r;
}
std::vector<float> randn(size_t n, float scale = 1.0f) {
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = nd(rng());
  return v;
}

ModelConfig small_model() {  // every kind of weight tensor, a few thousand parameters each
  ModelConfig c = preset("squeezenet1.1");
  c.stem = Stem::kSmall;
  c.in_c = 1, c.in_h = 28, c.in_w = 28, c.num_classes = 10;
  c.base_e = 16, c.incr_e = 8, c.bypass = Bypass::kComplex;
  return c;
}

void run(unsigned blocks, const std::function<void()>& kernel, bool reverse) {
  ASSERT_TRUE(simt::run({blocks, 1, 1}, cuda::kThreads, kernel, reverse)) << "threads disagree on barriers";
}

}  // namespace

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
