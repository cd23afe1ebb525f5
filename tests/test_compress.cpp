// Deep Compression (core/compress.h, core/huffman.h): the paper's pruning schedule and its kept
// count, magnitude masks against brute force, k-means on data with known clusters, the centroid
// gradient against finite differences, Huffman codes, exact encode/decode, and every class of
// damaged or foreign file refused with a one-line error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <zlib.h>
#include <nlohmann/json.hpp>

#include "core/checkpoint.h"
#include "core/compress.h"
#include "core/error.h"
#include "core/huffman.h"
#include "core/model.h"
#include "core/trainer.h"
#include "comm/communicator.h"
#include "launch/compress.h"

namespace {

using namespace sq;

std::mt19937& rng() {
  static std::mt19937 r(std::random_device{}());
  return r;
}

std::vector<float> random_params(const Model& m) {
  std::vector<float> p(m.layout().total);
  m.init_params(p.data(), "torchvision", rng()());
  std::normal_distribution<float> nd(0.0f, 0.05f);
  for (const ParamSpec& t : m.layout().tensors)  // non-zero biases, so "exact" is tested
    if (t.shape.size() == 1)
      for (size_t i = 0; i < t.count; ++i) p[t.offset + i] = nd(rng());
  return p;
}

ModelConfig tiny_config() {  // a few thousand parameters: every byte of its file can be damaged
  ModelConfig c = preset("squeezenet1.1");
  c.stem = Stem::kSmall;
  c.in_c = 1, c.in_h = 28, c.in_w = 28, c.num_classes = 10;
  c.base_e = 16, c.incr_e = 8, c.bypass = Bypass::kComplex;
  return c;
}

// ---- pruning ----------------------------------------------------------------------------------

TEST(Prune, PaperScheduleKeeps421098OfSqueezeNet10) {
  const Model m(preset("squeezenet1.0"), 1, false);
  ASSERT_EQ(m.layout().total, 1248424u);
  const PruneSchedule s = parse_schedule("paper", m);
  size_t kept = m.layout().total;
  for (const WeightTensor& t : weight_tensors(m)) {
    auto it = s.find(t.name);
    if (it != s.end()) kept -= t.count - kept_count(t.count, it->second);
  }
  EXPECT_EQ(kept, 421098u);  // the paper's Table 1 (biases kept)
  // And the mask built from real weights keeps exactly that many.
  const std::vector<float> p = random_params(m);
  const std::vector<uint8_t> mask = magnitude_mask(m, p.data(), s);
  EXPECT_EQ(size_t(std::count(mask.begin(), mask.end(), uint8_t(1))), 421098u);
}

TEST(Prune, MaskKeepsTheLargestMagnitudesOfEachScheduledTensor) {
  const Model m(tiny_config(), 1, false);
  std::vector<float> p = random_params(m);
  const std::vector<WeightTensor> wt = weight_tensors(m);
  ASSERT_GE(wt.size(), 20u);
  // Ties: planted equal magnitudes of both signs in the first tensor.
  for (size_t i = 0; i < 6; ++i) p[wt[0].offset + i] = (i % 2 ? -0.5f : 0.5f);
  PruneSchedule s;
  for (size_t t = 0; t < wt.size(); t += 2) s[wt[t].name] = 0.1 + 0.8 * double(t) / wt.size();
  const std::vector<uint8_t> mask = magnitude_mask(m, p.data(), s);
  for (size_t t = 0; t < wt.size(); ++t) {
    SCOPED_TRACE(wt[t].name);
    const WeightTensor& w = wt[t];
    auto it = s.find(w.name);
    const size_t keep = it == s.end() ? w.count : kept_count(w.count, it->second);
    // Brute force: element i is kept iff fewer than `keep` elements rank before it, where j ranks
    // before i when |w_j| > |w_i|, or equal and j < i.
    for (size_t i = 0; i < w.count; ++i) {
      size_t before = 0;
      for (size_t j = 0; j < w.count; ++j) {
        const float a = std::fabs(p[w.offset + j]), b = std::fabs(p[w.offset + i]);
        before += a > b || (a == b && j < i);
      }
      ASSERT_EQ(mask[w.offset + i], before < keep ? 1 : 0) << "element " << i;
    }
  }
  for (const ParamSpec& t : m.layout().tensors)  // biases are never pruned
    if (t.shape.size() == 1) {
      for (size_t i = 0; i < t.count; ++i) EXPECT_EQ(mask[t.offset + i], 1);
    }
}

// Pruning in several steps: the kept fraction falls linearly to the target, and a mask computed
// from the previous step's pruned weights lies inside the previous mask.
TEST(Prune, StepsShrinkTheMaskInsideTheLastOne) {
  const Model m(tiny_config(), 1, false);
  const PruneSchedule target = parse_schedule("fire3.expand3x3=0.3,conv10=0.1", m);
  const PruneSchedule s1 = step_schedule(target, 1, 3), s2 = step_schedule(target, 2, 3),
                      s3 = step_schedule(target, 3, 3);
  EXPECT_NEAR(s1.at("conv10"), 0.7, 1e-12);
  EXPECT_NEAR(s2.at("conv10"), 0.4, 1e-12);
  EXPECT_EQ(s3, target);
  std::vector<float> p = random_params(m);
  std::vector<uint8_t> prev(p.size(), 1);
  std::normal_distribution<float> nd(0.0f, 0.01f);
  for (const PruneSchedule& s : {s1, s2, s3}) {
    const std::vector<uint8_t> mask = magnitude_mask(m, p.data(), s);
    for (size_t i = 0; i < p.size(); ++i) ASSERT_LE(mask[i], prev[i]) << "parameter " << i << " came back";
    apply_mask(p.data(), mask);
    for (size_t i = 0; i < p.size(); ++i)  // "retraining": the kept weights move a little
      if (mask[i]) p[i] += nd(rng());
    prev = mask;
  }
  const std::vector<uint8_t> once = magnitude_mask(m, random_params(m).data(), target);
  EXPECT_EQ(std::count(prev.begin(), prev.end(), 1), std::count(once.begin(), once.end(), 1));
}

TEST(Prune, SchedulesAreCheckedAgainstTheModel) {
  const Model m(preset("squeezenet1.0"), 1, false);
  EXPECT_EQ(parse_schedule("fire2.expand3x3=0.5,conv10=0", m).size(), 2u);
  EXPECT_TRUE(parse_schedule("none", m).empty());
  for (const char* bad : {"fire2.expand3x3", "fire22.squeeze=0.5", "conv10=1.5", "conv10=-0.1",
                          "conv10=abc", "conv10=0.5x", "conv10=0.5,conv10=0.4", "conv10=",
                          "conv10=0.2,", ",conv10=0.2", "conv10=0.2,,fire2.expand3x3=0.5"}) {
    SCOPED_TRACE(bad);
    try {
      parse_schedule(bad, m);
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("prune schedule"), std::string::npos) << e.what();
    }
  }
}

// ---- k-means -----------------------------------------------------------------------------------

// Clusters spread over the range, as linear initialisation expects (it starts one centroid in
// each quarter of [min, max]; weight distributions have that shape, and the paper chose the
// linear start for it, to keep the rare large weights).
TEST(KMeans, RecoversWellSeparatedClusters) {
  const std::vector<double> means = {-1.0, -0.1, 0.7, 2.0};
  std::vector<float> x;
  std::vector<int> truth;
  std::normal_distribution<double> nd(0.0, 0.02);
  for (int i = 0; i < 4000; ++i) {
    const int c = int(rng()() % 4);
    x.push_back(float(means[size_t(c)] + nd(rng())));
    truth.push_back(c);
  }
  const KMeans km = kmeans_1d(x.data(), x.size(), 4);
  ASSERT_EQ(km.centroids.size(), 4u);
  std::vector<double> sum(4, 0), cnt(4, 0);
  for (size_t i = 0; i < x.size(); ++i) sum[size_t(truth[i])] += x[i], ++cnt[size_t(truth[i])];
  for (int c = 0; c < 4; ++c) {
    // Every point of true cluster c got the centroid nearest mean c, which is that cluster's
    // sample mean.
    const float want = float(sum[size_t(c)] / cnt[size_t(c)]);
    int code = -1;
    for (size_t i = 0; i < x.size(); ++i)
      if (truth[i] == c) {
        if (code < 0) code = km.codes[i];
        ASSERT_EQ(km.codes[i], code) << "cluster " << c << " split";
      }
    EXPECT_NEAR(km.centroids[size_t(code)], want, 1e-5);
  }
  EXPECT_LT(km.iterations, 100);
}

TEST(KMeans, EndsAtAFixedPointWithLinearInitialisation) {
  std::vector<float> x(20000);
  std::exponential_distribution<float> ex(3.0f);
  for (float& v : x) v = (rng()() % 2 ? 1 : -1) * ex(rng());
  for (int k : {4, 64, 256}) {
    SCOPED_TRACE(k);
    const KMeans km = kmeans_1d(x.data(), x.size(), k);
    // Every value's centroid is a nearest one, and every used centroid is its members' mean.
    std::vector<double> sum(size_t(k), 0), cnt(size_t(k), 0);
    for (size_t i = 0; i < x.size(); ++i) {
      const float own = std::fabs(x[i] - km.centroids[km.codes[i]]);
      for (float c : km.centroids) ASSERT_LE(own, std::fabs(x[i] - c) + 1e-6f);
      sum[km.codes[i]] += x[i], ++cnt[km.codes[i]];
    }
    for (int j = 0; j < k; ++j)
      if (cnt[size_t(j)] > 0) {
        EXPECT_NEAR(km.centroids[size_t(j)], sum[size_t(j)] / cnt[size_t(j)], 1e-5);
      }
  }
  // The linear initialisation: with one iteration the centroids are spread evenly over [min, max].
  const KMeans one = kmeans_1d(x.data(), x.size(), 5, 1);
  const auto [lo, hi] = std::minmax_element(x.begin(), x.end());
  for (int j = 0; j < 5; ++j) EXPECT_NEAR(one.centroids[size_t(j)], *lo + (*hi - *lo) * j / 4.0f, 1e-6);
}

// ---- trained quantization: the centroid gradient -------------------------------------------------

TEST(Quantize, CentroidGradientIsTheSumOfItsMembersGradients) {
  const Model m(tiny_config(), 1, false);
  const std::vector<float> p = random_params(m);
  const std::vector<uint8_t> mask = magnitude_mask(m, p.data(), parse_schedule("fire3.expand3x3=0.4,conv10=0.3", m));
  const CompressedModel cm = quantize(m, p.data(), mask, 4);
  // L(w) = sum_i a_i w_i + b_i w_i^2 / 2 over the flat buffer: dL/dw_i = a_i + b_i w_i.
  std::vector<double> a(p.size()), b(p.size());
  std::normal_distribution<double> nd;
  for (size_t i = 0; i < p.size(); ++i) a[i] = nd(rng()), b[i] = nd(rng());
  auto loss = [&](const std::vector<float>& w) {
    double l = 0;
    for (size_t i = 0; i < w.size(); ++i) l += a[i] * w[i] + 0.5 * b[i] * double(w[i]) * w[i];
    return l;
  };
  const std::vector<float> w = dequantize(cm, m);
  std::vector<float> g(w.size());
  for (size_t i = 0; i < w.size(); ++i) g[i] = float(a[i] + b[i] * w[i]);
  const auto cg = centroid_gradients(cm, m, g.data());
  // Independent reference: central differences of L in each centroid (L is quadratic: exact up to
  // rounding), for a few centroids of a few tensors.
  for (size_t t : {size_t(0), size_t(3), cm.weights.size() - 1}) {
    for (size_t k = 0; k < cm.weights[t].codebook.size(); k += 5) {
      CompressedModel up = cm, down = cm;
      const float h = 1e-2f;
      up.weights[t].codebook[k] += h;
      down.weights[t].codebook[k] -= h;
      const double fd = (loss(dequantize(up, m)) - loss(dequantize(down, m))) /
                        double(up.weights[t].codebook[k] - down.weights[t].codebook[k]);
      EXPECT_NEAR(cg[t][k], fd, 1e-3 * (1 + std::fabs(fd))) << "tensor " << t << " centroid " << k;
    }
  }
}

// One step of trained quantization, against its definition: each centroid moves by -lr times the
// sum of its members' gradients (first step: no momentum yet), and the weights follow.
TEST(Quantize, OneConstrainedStepMovesEachCentroidBySummedGradients) {
  const Model m(tiny_config(), 1, false);
  const std::vector<float> p0 = random_params(m);
  const std::vector<uint8_t> mask = magnitude_mask(m, p0.data(), parse_schedule("conv10=0.5", m));
  CompressedModel cm = quantize(m, p0.data(), mask, 3);
  const CompressedModel before = cm;
  std::vector<float> p = dequantize(cm, m), mom(p.size(), 1.0f), g(p.size());
  std::normal_distribution<float> nd;
  for (float& x : g) x = nd(rng());
  QuantizedConstraint qc(cm, m, 0.9);
  const double lr = 0.01;
  qc.after_update(p.data(), mom.data(), g.data(), lr);
  const std::vector<WeightTensor> wt = weight_tensors(m);
  for (size_t t = 0; t < wt.size(); ++t) {
    std::vector<double> sum(before.weights[t].codebook.size(), 0.0);
    for (size_t j = 0; j < before.weights[t].positions.size(); ++j)
      sum[before.weights[t].codes[j]] += g[wt[t].offset + before.weights[t].positions[j]];
    for (size_t k = 0; k < sum.size(); ++k)
      EXPECT_NEAR(cm.weights[t].codebook[k], before.weights[t].codebook[k] - lr * sum[k], 1e-6)
          << wt[t].name << " centroid " << k;
  }
  const std::vector<float> w = dequantize(cm, m);
  for (const WeightTensor& t : wt)
    for (size_t i = 0; i < t.count; ++i) ASSERT_EQ(p[t.offset + i], w[t.offset + i]) << t.name << " " << i;
}

// Retraining on real Fashion-MNIST: pruned weights stay exactly zero through masked training, and
// through codebook fine-tuning every weight stays one of its tensor's 2^bits centroids.
TEST(Retrain, MasksAndCodebooksSurviveTraining) {
  const char* dir = "/usr/share/datasets/fashion-mnist";
  if (!std::ifstream(std::string(dir) + "/train-images-idx3-ubyte.gz")) GTEST_SKIP() << "no Fashion-MNIST in " << dir;
  TrainConfig c;
  c.data_dir = dir;
  c.model = tiny_config();
  c.stem = "small";
  c.epochs = 1, c.batch = 32, c.train_limit = 256, c.test_limit = 64;
  c.schedule.lr = 0.01;
  RunOptions o;
  o.quiet = true;
  auto comm = make_local_communicator();
  const std::vector<float> dense = train(c, o, *comm).params;
  const Model m(c.model, 1, false);
  const std::vector<uint8_t> mask = magnitude_mask(m, dense.data(), paper_schedule());
  std::vector<float> pruned = dense;
  apply_mask(pruned.data(), mask);
  MaskConstraint mc(mask);
  o.initial_params = &pruned;
  o.constraint = &mc;
  const std::vector<float> retrained = train(c, o, *comm).params;
  size_t moved = 0;
  for (size_t i = 0; i < mask.size(); ++i) {
    if (!mask[i]) {
      ASSERT_EQ(retrained[i], 0.0f) << "pruned parameter " << i;
    }
    moved += mask[i] && retrained[i] != pruned[i];
  }
  EXPECT_GT(moved, mask.size() / 4) << "retraining moved too few kept weights";
  CompressedModel cm = quantize(m, retrained.data(), mask, 3);
  const CompressedModel start = cm;
  const std::vector<float> q = dequantize(cm, m);
  QuantizedConstraint qc(cm, m, c.momentum);
  o.initial_params = &q;
  o.constraint = &qc;
  const std::vector<float> tuned = train(c, o, *comm).params;
  qc.finish(tuned.data());
  EXPECT_EQ(dequantize(cm, m), tuned);  // weights from the codebooks, biases as trained
  size_t changed = 0;
  for (size_t t = 0; t < cm.weights.size(); ++t) changed += cm.weights[t].codebook != start.weights[t].codebook;
  EXPECT_EQ(changed, cm.weights.size()) << "some codebooks did not train";
}

// The issue's end-to-end check, at test size: a squeezenet1.0 with a quarter of the Fire widths
// trained on 12,000 Fashion-MNIST images, half of every expand3x3 and of conv10 pruned and the
// rest quantized to 6 bits, one epoch of retraining after each stage, keeps its test accuracy
// (2,000 images) within 2 points of the dense model's (about two standard errors of an accuracy
// near 0.8 on 2,000 images); and the file it is written to decodes to the trained model. (The
// paper's schedule, made for the full widths, cost this quarter-width model 3.9 points with this
// little retraining: 0.758 -> 0.719, 2026-11-26; the full model's figures are in
// docs/COMPRESSION.md.)
TEST(Retrain, CompressedModelKeepsItsAccuracyOnFashionMnist) {
  const char* dir = "/usr/share/datasets/fashion-mnist";
  if (!std::ifstream(std::string(dir) + "/train-images-idx3-ubyte.gz")) GTEST_SKIP() << "no Fashion-MNIST in " << dir;
  TrainConfig c;
  c.data_dir = dir;
  c.model = preset("squeezenet1.0");
  c.model.base_e = 32, c.model.incr_e = 32;
  c.stem = "small";
  c.epochs = 3, c.batch = 64, c.train_limit = 12000, c.test_limit = 2000;
  // A warm-up of 100 steps (of 564): without it the dense accuracy depended on the thread count,
  // through the order of the sums (1 to 3 threads: 0.70, 0.76, 0.56, the last failing below).
  // With it: 0.752, 0.738, 0.742, 0.752 at 1 to 4 threads, compressed within 0.014 of it.
  c.schedule.warmup = 100;
  RunOptions o;
  o.quiet = true;
  auto comm = make_local_communicator();
  const TrainResult dense = train(c, o, *comm);
  const double dense_acc = dense.epochs.back().test_acc;
  ASSERT_GT(dense_acc, 0.6) << "the dense model did not learn";
  const Model m(dense.model, 1, false);
  PruneSchedule half;
  for (int f = 2; f <= 9; ++f) half["fire" + std::to_string(f) + ".expand3x3"] = 0.5;
  half["conv10"] = 0.5;
  const std::vector<uint8_t> mask = magnitude_mask(m, dense.params.data(), half);
  std::vector<float> pruned = dense.params;
  apply_mask(pruned.data(), mask);
  TrainConfig r = c;
  r.model = dense.model;
  r.epochs = 1, r.schedule.lr = 0.005;
  MaskConstraint mc(mask);
  o.initial_params = &pruned;
  o.constraint = &mc;
  const TrainResult rt = train(r, o, *comm);
  const std::vector<float>& retrained = rt.params;
  std::printf("pruned and retrained: %.4f\n", rt.epochs.back().test_acc);
  CompressedModel cm = quantize(m, retrained.data(), mask, 6);
  const std::vector<float> q = dequantize(cm, m);
  QuantizedConstraint qc(cm, m, r.momentum);
  o.initial_params = &q;
  o.constraint = &qc;
  const TrainResult tuned = train(r, o, *comm);
  qc.finish(tuned.params.data());
  const double compressed_acc = tuned.epochs.back().test_acc;
  std::printf("dense %.4f, pruned + 6-bit quantized %.4f\n", dense_acc, compressed_acc);
  EXPECT_GE(compressed_acc, dense_acc - 0.02);
  // Through the file: the decoded model is the trained one, bit for bit.
  const std::vector<uint8_t> file = encode_compressed(cm);
  EXPECT_EQ(dequantize(decode_compressed(file.data(), file.size(), "mem"), m), tuned.params);
}

// ---- Huffman -------------------------------------------------------------------------------------

TEST(Huffman, RoundTripsAndRespectsTheLengthLimit) {
  for (int trial = 0; trial < 6; ++trial) {
    SCOPED_TRACE(trial);
    const size_t n = trial < 3 ? 257 : 65;
    std::vector<uint64_t> f(n, 0);
    if (trial == 2) {  // Fibonacci frequencies: unbounded lengths would reach 40 and more
      uint64_t x = 1, y = 1;
      for (size_t s = 0; s < 45; ++s) f[s] = x, std::swap(x, y), y += x;
    } else if (trial == 5) {
      f[7] = 1000;  // a lone symbol
    } else {
      std::geometric_distribution<int> geo(0.08);
      for (int i = 0; i < 20000; ++i) ++f[size_t(std::min<int>(geo(rng()), int(n) - 1))];
    }
    const std::vector<uint8_t> len = huffman_lengths(f);
    double kraft = 0;
    for (size_t s = 0; s < n; ++s) {
      EXPECT_EQ(len[s] > 0, f[s] > 0) << "symbol " << s;
      EXPECT_LE(len[s], kMaxCodeLength);
      if (len[s]) kraft += std::ldexp(1.0, -len[s]);
    }
    EXPECT_LE(kraft, 1.0 + 1e-12);
    std::vector<int> msg;
    for (size_t s = 0; s < n; ++s)
      for (uint64_t i = 0; i < std::min<uint64_t>(f[s], 50); ++i) msg.push_back(int(s));
    std::shuffle(msg.begin(), msg.end(), rng());
    HuffmanEncoder enc(len);
    BitWriter w;
    for (int s : msg) enc.put(w, s);
    HuffmanDecoder dec(len, "test");
    BitReader r(w.bytes().data(), w.bits(), "test");
    for (int s : msg) ASSERT_EQ(dec.get(r), s);
    EXPECT_EQ(r.position(), w.bits());
    EXPECT_THROW(dec.get(r), Error);  // past the end
  }
  // An unbounded optimum where it fits: mean length within one bit of the entropy.
  std::vector<uint64_t> f = {400, 200, 100, 50, 25, 12, 6, 3, 2, 1, 1};
  const std::vector<uint8_t> len = huffman_lengths(f);
  double total = 0, bits = 0, h = 0;
  for (uint64_t x : f) total += double(x);
  for (size_t s = 0; s < f.size(); ++s) bits += double(f[s]) * len[s], h -= f[s] / total * std::log2(f[s] / total);
  EXPECT_LT(bits / total, h + 1);
  EXPECT_THROW(HuffmanDecoder({1, 1, 1}, "x"), Error);  // oversubscribed
  EXPECT_THROW(HuffmanDecoder({0, 0}, "x"), Error);     // empty
  EXPECT_THROW(HuffmanDecoder({16, 1}, "x"), Error);    // too long
}

// ---- the file --------------------------------------------------------------------------------------

void expect_same(const CompressedModel& a, const CompressedModel& b) {
  ASSERT_EQ(a.weights.size(), b.weights.size());
  for (size_t t = 0; t < a.weights.size(); ++t) {
    EXPECT_EQ(a.weights[t].positions, b.weights[t].positions) << t;
    EXPECT_EQ(a.weights[t].codes, b.weights[t].codes) << t;
    EXPECT_EQ(a.weights[t].codebook, b.weights[t].codebook) << t;
  }
  EXPECT_EQ(a.exact, b.exact);
  EXPECT_EQ(a.index_bits, b.index_bits);
  EXPECT_EQ(a.norm_mean, b.norm_mean);
  EXPECT_EQ(a.norm_std, b.norm_std);
}

TEST(CompressedFile, EncodeDecodeIsExact) {
  struct Case {
    ModelConfig cfg;
    std::string schedule;
    int bits, index_bits;
  };
  ModelConfig fm = preset("squeezenet1.0");
  fm.stem = Stem::kSmall, fm.in_c = 1, fm.in_h = fm.in_w = 28, fm.num_classes = 10;
  const Case cases[] = {{preset("squeezenet1.0"), "paper", 8, 8},
                        {preset("squeezenet1.0"), "paper", 6, 8},
                        {fm, "paper", 2, 3},  // narrow indices: many filler entries
                        {tiny_config(), "none", 5, 1},
                        {tiny_config(), "conv10=0,fire2.squeeze=0.01", 3, 12}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.schedule + " bits " + std::to_string(c.bits) + " index " + std::to_string(c.index_bits));
    const Model m(c.cfg, 1, false);
    const std::vector<float> p = random_params(m);
    const std::vector<uint8_t> mask = magnitude_mask(m, p.data(), parse_schedule(c.schedule, m));
    CompressedModel cm = quantize(m, p.data(), mask, c.bits, c.index_bits);
    if (c.cfg.in_c == 1) cm.norm_mean = {0.3f}, cm.norm_std = {0.35f};
    EncodeReport rep;
    const std::vector<uint8_t> file = encode_compressed(cm, &rep);
    EXPECT_EQ(rep.total_bytes, file.size());
    size_t sum = rep.header_bytes + rep.exact_bytes;
    for (const SectionSize& s : rep.tensors) sum += s.total();
    EXPECT_EQ(sum, file.size());
    const CompressedModel back = decode_compressed(file.data(), file.size(), "mem");
    expect_same(cm, back);
    const std::vector<float> w = dequantize(back, m);
    // Pruned weights are exactly zero; kept ones are a centroid of their tensor's codebook.
    for (size_t i = 0; i < w.size(); ++i)
      if (!mask[i]) {
        ASSERT_EQ(w[i], 0.0f);
      }
    EXPECT_EQ(w, dequantize(cm, m));
  }
}

// Every prefix, a flipped byte at every position (with the checksum left alone, and recomputed so
// that the structural checks are reached), and foreign inputs: all refused with sq::Error.
TEST(CompressedFile, EveryCorruptionIsRefused) {
  const Model m(tiny_config(), 1, false);
  const std::vector<float> p = random_params(m);
  CompressedModel cm =
      quantize(m, p.data(), magnitude_mask(m, p.data(), parse_schedule("conv10=0.3", m)), 3, 2);
  cm.norm_mean = {0.25f}, cm.norm_std = {0.5f};
  const std::vector<uint8_t> good = encode_compressed(cm);
  ASSERT_LT(good.size(), 200000u);
  auto refused = [&](const std::vector<uint8_t>& b, const std::string& what) {
    try {
      decode_compressed(b.data(), b.size(), "damaged.sqz");
      return false;
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind("damaged.sqz: ", 0), 0u) << what << ": " << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << what;
      return true;
    }
  };
  for (size_t n = 0; n < good.size(); ++n) {
    std::vector<uint8_t> b(good.begin(), good.begin() + long(n));
    ASSERT_TRUE(refused(b, "truncated at " + std::to_string(n)));
  }
  auto fix_crc = [](std::vector<uint8_t>& b) {
    const uint32_t c = uint32_t(crc32(crc32(0L, Z_NULL, 0), b.data(), uInt(b.size() - 4)));
    std::memcpy(b.data() + b.size() - 4, &c, 4);
  };
  size_t structural = 0;
  for (size_t i = 0; i + 4 < good.size(); ++i) {
    std::vector<uint8_t> b = good;
    b[i] ^= uint8_t(1u << (i % 8));
    ASSERT_TRUE(refused(b, "flip at " + std::to_string(i)));  // the checksum
    fix_crc(b);
    try {  // past the checksum: refused, or decoded to a different but valid model; never a crash
      decode_compressed(b.data(), b.size(), "damaged.sqz");
    } catch (const Error&) {
      ++structural;
    }
  }
  EXPECT_GT(structural, 0u);
  // Targeted damage to each structural field, checksum recomputed: all refused. Offsets: magic 8,
  // version 2, model configuration 47, normalization 1 + 8 (57: one channel), index bits 1 (66),
  // tensor count 2 (67); the first tensor's section at 69: bits (69), kept (70), entries (74),
  // codebook of 8 floats (78), code lengths 9 nibbles (110), gap lengths 4 nibbles (115), stream
  // lengths (117, 121).
  ASSERT_EQ(good[57], 1);
  ASSERT_EQ(good[69], 3);
  auto with = [&](size_t off, const std::vector<uint8_t>& bytes) {
    std::vector<uint8_t> b = good;
    std::copy(bytes.begin(), bytes.end(), b.begin() + long(off));
    fix_crc(b);
    return b;
  };
  auto le32 = [&](size_t off, int64_t delta) {
    uint32_t v;
    std::memcpy(&v, good.data() + off, 4);
    v = uint32_t(int64_t(v) + delta);
    std::vector<uint8_t> b(4);
    std::memcpy(b.data(), &v, 4);
    return with(off, b);
  };
  EXPECT_TRUE(refused(with(10, {7}), "unknown architecture"));
  EXPECT_TRUE(refused(with(57, {2}), "normalization of 2 channels"));
  EXPECT_TRUE(refused(with(62, {0, 0, 0, 0x80}), "normalization deviation -0"));
  EXPECT_TRUE(refused(le32(13, 1), "another class count"));
  EXPECT_TRUE(refused(with(66, {0}), "index bits 0"));
  EXPECT_TRUE(refused(with(66, {13}), "index bits 13"));
  EXPECT_TRUE(refused(with(67, {99, 0}), "tensor count"));
  EXPECT_TRUE(refused(with(69, {9}), "code width 9"));
  EXPECT_TRUE(refused(with(69, {1}), "code width 1"));
  EXPECT_TRUE(refused(le32(70, 1), "one more kept weight"));
  EXPECT_TRUE(refused(le32(70, -1), "one kept weight fewer"));
  EXPECT_TRUE(refused(le32(74, 1), "one more entry"));
  EXPECT_TRUE(refused(le32(74, -1), "one entry fewer"));
  EXPECT_TRUE(refused(le32(74, 1 << 30), "entries beyond the tensor"));
  EXPECT_TRUE(refused(with(78, {0, 0, 0x80, 0x7f}), "infinite centroid"));
  EXPECT_TRUE(refused(with(110, {0x11, 0x11, 0x11, 0x11, 0x10}), "oversubscribed code lengths"));
  EXPECT_TRUE(refused(with(110, {0, 0, 0, 0, 0}), "empty code table"));
  EXPECT_TRUE(refused(with(115, {0x11, 0x11}), "oversubscribed gap lengths"));
  EXPECT_TRUE(refused(le32(117, 8), "code stream claims 8 bits more"));
  EXPECT_TRUE(refused(le32(121, -1), "gap stream a bit short"));
  EXPECT_TRUE(refused(le32(117, 1 << 30), "code stream past the end"));
  // One bit more in a stream whose last byte has room for it: only the trailing-bits check sees
  // it. Sections follow each other from offset 60; a stream length sits 48 bytes into its
  // section (bits 3, index bits 2).
  EncodeReport rep;
  encode_compressed(cm, &rep);
  size_t start = 69, field = 0;
  for (const SectionSize& sec : rep.tensors) {
    for (size_t off : {start + 48, start + 52}) {
      uint32_t nbits;
      std::memcpy(&nbits, good.data() + off, 4);
      if (nbits % 8 != 0 && field == 0) field = off;
    }
    start += sec.total();
  }
  ASSERT_NE(field, 0u) << "every stream ends on a byte boundary";
  EXPECT_TRUE(refused(le32(field, 1), "a trailing bit"));
  std::vector<uint8_t> extra = good;
  extra.insert(extra.end() - 4, 0);
  fix_crc(extra);
  EXPECT_TRUE(refused(extra, "a byte too many"));
  std::vector<uint8_t> version = good;
  version[8] = 2;
  fix_crc(version);
  EXPECT_TRUE(refused(version, "version 2"));
  const std::string safetensors = "\x10\0\0\0\0\0\0\0{\"a\":1}         ";
  EXPECT_TRUE(refused(std::vector<uint8_t>(safetensors.begin(), safetensors.end()), "foreign"));
  EXPECT_TRUE(refused({}, "empty"));
}

TEST(CompressedFile, WrittenAtomicallyAndRecognised) {
  const Model m(tiny_config(), 1, false);
  const std::vector<float> p = random_params(m);
  const CompressedModel cm = quantize(m, p.data(), std::vector<uint8_t>(p.size(), 1), 8);
  char tmpl[] = "/tmp/sq_test_compress_XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string path = std::string(tmpl) + "/m.sqz";
  write_compressed(path, cm);
  EXPECT_TRUE(is_compressed_file(path));
  expect_same(cm, read_compressed(path));
  EXPECT_FALSE(is_compressed_file(std::string(tmpl) + "/absent"));
  EXPECT_THROW(read_compressed(std::string(tmpl) + "/absent"), Error);
  std::remove(path.c_str());
  ::rmdir(tmpl);
}

// squeeze compress through the binary: a run without data writes a file that decodes to the
// paper's kept counts, and bad input is a one-line error naming it, with a non-zero exit.
TEST(Cli, CompressWritesAFileAndRefusesBadInput) {
  char tmpl[] = "/tmp/sq_test_compress_cli_XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl, weights = dir + "/w.safetensors", out = dir + "/m.sqz";
  const Model m(tiny_config(), 1, false);
  const std::vector<float> p = random_params(m);
  export_weights(weights, m.layout(), p.data(), {{"squeeze.model", to_json(tiny_config()).dump()}});
  auto run = [&](const std::string& args, std::string* err) {
    const std::string errfile = dir + "/err.txt";
    const int status = std::system((std::string(SQUEEZE_BINARY) + " " + args + " > /dev/null 2> " + errfile).c_str());
    std::ifstream f(errfile);
    err->assign(std::istreambuf_iterator<char>(f), {});
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  std::string err;
  ASSERT_EQ(run("compress --weights " + weights + " --out " + out + " --bits 4", &err), 0) << err;
  const CompressedModel cm = read_compressed(out);
  const std::vector<uint8_t> mask = magnitude_mask(m, p.data(), paper_schedule());
  EXPECT_EQ(cm.bits, 4);
  const std::vector<float> q = dequantize(cm, m);
  for (size_t i = 0; i < q.size(); ++i) {
    if (!mask[i]) {
      ASSERT_EQ(q[i], 0.0f) << "parameter " << i << " was pruned";
    }
  }
  const std::string base = "compress --weights " + weights + " --out " + dir + "/bad.sqz ";
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"--bits 9", "--bits"},
      {"--index-bits 0", "--index-bits"},
      {"--prune fire99.squeeze=0.5", "fire99.squeeze"},
      {"--retrain-epochs 1", "--dataset"},
      {"--device tpu", "--device"},
      {"--device cuda", "--dataset"},
      {"--prune-steps 2", "--retrain-epochs"},
      {"--lr inf", "--lr"},
  };
  for (const auto& [args, needle] : bad) {
    EXPECT_NE(run(base + args, &err), 0) << args;
    EXPECT_NE(err.find(needle), std::string::npos) << args << ": " << err;
    EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << args << ": " << err;
  }
  EXPECT_NE(run("compress --weights " + dir + "/absent.safetensors --out " + dir + "/bad.sqz", &err), 0);
  EXPECT_NE(err.find("absent.safetensors"), std::string::npos) << err;
  EXPECT_NE(run("compress --weights " + out + " --out " + dir + "/bad.sqz", &err), 0);
  EXPECT_NE(err.find("already a compressed model"), std::string::npos) << err;
  std::ifstream bad_file(dir + "/bad.sqz");
  EXPECT_FALSE(bad_file.good()) << "a refused run wrote its output";
  std::system(("rm -rf '" + dir + "'").c_str());
}

// The input is never the casualty of a slip: --out naming the --weights file (by any path) is
// refused and the weights stay as they were; an output directory that does not exist is refused
// before the work (retraining can take hours), not when the result is written.
TEST(Cli, CompressNeverOverwritesItsInput) {
  char tmpl[] = "/tmp/sq_test_compress_self_XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl, weights = dir + "/w.safetensors", errfile = dir + "/err.txt";
  const Model m(tiny_config(), 1, false);
  const std::vector<float> p = random_params(m);
  export_weights(weights, m.layout(), p.data(), {{"squeeze.model", to_json(tiny_config()).dump()}});
  auto bytes = [](const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  };
  const std::string before = bytes(weights);
  auto run = [&](const std::string& args, std::string* err) {
    const int status = std::system((std::string(SQUEEZE_BINARY) + " " + args + " > /dev/null 2> " + errfile).c_str());
    *err = bytes(errfile);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  std::string err;
  for (const std::string& out : {weights, dir + "/../" + dir.substr(5) + "/w.safetensors"}) {
    EXPECT_NE(run("compress --weights " + weights + " --out " + out, &err), 0) << out;
    EXPECT_NE(err.find("is the --weights file"), std::string::npos) << err;
    EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
    EXPECT_EQ(bytes(weights), before) << "the weights were overwritten through " << out;
  }
  EXPECT_NE(run("compress --weights " + weights + " --out " + dir + "/absent/m.sqz", &err), 0);
  EXPECT_NE(err.find(dir + "/absent/m.sqz: cannot write into " + dir + "/absent"), std::string::npos) << err;
  std::system(("rm -rf '" + dir + "'").c_str());
}

// Weight files' metadata (squeeze.model, squeeze.normalization) is checked when the file is
// described, and a fault names the file and the field: never a bare nlohmann message, an internal
// assertion, or a zero standard deviation dividing every input.
TEST(WeightsFile, DamagedMetadataIsRefusedNamingTheFile) {
  char tmpl[] = "/tmp/sq_test_weights_meta_XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string path = std::string(tmpl) + "/w.safetensors";
  const Model m(tiny_config(), 1, false);
  const std::vector<float> p = random_params(m);
  const nlohmann::json model = to_json(tiny_config());
  auto refusal = [&] {  // describe_weights(path)'s error, or ""
    try {
      describe_weights(path);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  auto describe = [&](const std::string& model_meta, const std::string& norm_meta) {
    Metadata meta = {{"squeeze.model", model_meta}};
    if (!norm_meta.empty()) meta["squeeze.normalization"] = norm_meta;
    export_weights(path, m.layout(), p.data(), meta);
    return refusal();
  };
  auto expect_refused = [&](const std::string& model_meta, const std::string& norm_meta,
                            const std::string& word) {
    const std::string err = describe(model_meta, norm_meta);
    EXPECT_EQ(err.rfind(path + ": ", 0), 0u) << err;
    EXPECT_NE(err.find(word), std::string::npos) << err;
  };
  EXPECT_EQ(describe(model.dump(), R"({"mean": [0.3], "std": [0.2]})"), "");  // the control
  nlohmann::json j = model;
  expect_refused("{bad", "", "squeeze.model");
  j["classes"] = 2.5;
  expect_refused(j.dump(), "", "\"classes\"");
  j = model;
  j["base_e"] = 32;  // a model other than the one whose tensors the file holds
  expect_refused(j.dump(), "", "parameters");
  expect_refused(model.dump(), "{bad", "squeeze.normalization");
  expect_refused(model.dump(), R"({"mean": [0.3], "std": [0]})", "\"std\"");
  expect_refused(model.dump(), R"({"mean": [0.3, 0.1], "std": [0.2, 0.2]})", "\"mean\"");
  expect_refused(model.dump(), R"({"mean": "x", "std": [0.2]})", "\"mean\"");
  expect_refused(model.dump(), R"({"std": [0.2]})", "\"mean\"");
  // A training checkpoint (parameters and momentum, twice the values) is named as one, before its
  // metadata is checked against its tensors.
  const std::vector<float> v(p.size(), 0.5f);
  save_checkpoint(path, m.layout(), p.data(), v.data(), {{"squeeze.model", model.dump()}});
  const std::string err = refusal();
  EXPECT_EQ(err.rfind(path + ": ", 0), 0u) << err;
  EXPECT_NE(err.find("training checkpoint, not a weights file"), std::string::npos) << err;
  std::system(("rm -rf '" + std::string(tmpl) + "'").c_str());
}

}  // namespace
