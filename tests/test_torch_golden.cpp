// The whole model against PyTorch: torchvision's squeezenet1_0 and squeezenet1_1, forward and
// backward, from the golden fixture tests/fixtures/torch_golden.json. PyTorch is not needed to
// build or run this test; tests/fixtures/make_torch_golden.py (run with a Python that has torch
// and torchvision, e.g. Debian's /usr/bin/python3) regenerates the fixture. See that script for
// why the formulas are what they are.
//
// Parameters and input are not stored: both sides compute them from the same formula, bit for
// bit (an integer hash, then exact float64 steps, then one rounding to float32):
//   unit(s, t, i) = 2 * (splitmix64_mix(((s << 56) ^ (t << 32) ^ i) + GOLDEN) >> 11) * 2^-53 - 1
//   weight[t][i]  = float(sqrt(6 / fan_in) * unit(1, t, i)), bias[t][i] = float(0.1 * unit(1, t, i))
//   input (NCHW)  = float(unit(2, 0, j)), label[n] = n % classes
// with t the tensor's index in torchvision's state_dict order, which is our ParamLayout order
// (the test checks names and shapes first). torchvision runs in eval mode (dropout off); our
// model runs with dropout = 0 so forward(train=true) and backward skip it too. Loss: mean
// cross-entropy over the batch, so dlogits = softmax_xent(..., grad_scale = 1/N).
//
// Precision: the reference is torchvision in float64 on the float32-rounded parameters and
// input, and the comparison runs OUR model in double too (BasicModel<double>: the same layer
// code and the same templated ops as the float model that trains). Both sides then compute the
// same function to ~1e-13, every max-pool and ReLU decision agrees, and the tolerance can be
// tight. (In float32, max-pool windows whose top two values are a few ulps apart pick different
// winners under different summation orders and move upstream gradients by up to 1% with neither
// side wrong; see make_torch_golden.py.) The float model is checked forward against the same
// reference, where such flips do not matter.
//
// What is compared, for each model:
//   - every layer's output shape (a pool with floor instead of ceil rounding fails here first,
//     and by name: the 3x65x69 input makes every pool's floor and ceil sizes differ);
//   - the N x 10 logits and the loss (double and float model);
//   - for EVERY parameter tensor: the gradient's L2 norm and its dot product with the probe
//     vector cos(0.13 i + t); for tensors of at most full_grad_max elements (all biases, several
//     early weights) the whole gradient, element by element (double model).
//
// Tolerances. Double: kTol = 1e-8 on every measure (the fixture stores 10 significant digits,
// <= 5e-10 relative; double summation-order noise is ~1e-13): logits as |ours - ref| / max|ref
// logit|; the loss and gradient norms relative; the probe as |ours - ref| / (|ref| + |g_ref|
// rms(probe)) (a dot product with a fixed vector is known to the accuracy of g times the
// probe's scale, not relative to itself, which can be ~0 by cancellation); full gradients as
// |g - g_ref|_2 / |g_ref|_2 and per element |g_i - ref_i| / (|ref_i| + rms(g_ref)). Float
// forward: kF32Tol = 1e-5 (torchvision's own float32 run is off by <= ~5e-7, stored in the
// fixture and printed beside ours). A real bug -- a floor-rounded pool, swapped expand channels,
// a transposed kernel, a missing bias -- moves the results by O(1) relative.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/model.h"
#include "kernels/ops.h"

using namespace sq;
using nlohmann::json;

namespace {

constexpr double kTol = 1e-8;     // double model against the float64 reference
constexpr double kF32Tol = 1e-5;  // float model's forward against the same reference

const std::string kFixture = std::string(SQUEEZE_SOURCE_DIR) + "/tests/fixtures/torch_golden.json";

// The fixture's formula (see make_torch_golden.py); every step is exact or one IEEE rounding,
// so parameters and input are bit-identical to the Python side.
uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
double unit(uint64_t stream, uint64_t t, uint64_t i) {
  const uint64_t key = (stream << 56) ^ (t << 32) ^ i;
  const double u = double(mix(key + 0x9E3779B97F4A7C15ull) >> 11) * 0x1.0p-53;
  return 2.0 * u - 1.0;
}

template <class T>
void fill_params(const ParamLayout& layout, T* params) {
  for (size_t t = 0; t < layout.tensors.size(); ++t) {
    const ParamSpec& p = layout.tensors[t];
    const double scale = p.shape.size() == 1
                             ? 0.1
                             : std::sqrt(6.0 / double(int64_t(p.count) / p.shape[0]));
    for (size_t i = 0; i < p.count; ++i)
      params[p.offset + i] = T(float(scale * unit(1, t, i)));  // float32-rounded, as in torch
  }
}

// The NCHW formula input, float32-rounded, transposed to our channel-major (C, N, H, W).
template <class T>
std::vector<T> make_input(int N, int C, int H, int W) {
  std::vector<T> x(size_t(N) * C * H * W);
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c)
      for (int hw = 0; hw < H * W; ++hw) {
        const uint64_t j = (uint64_t(n) * C + c) * uint64_t(H * W) + hw;  // NCHW offset
        x[(size_t(c) * N + n) * size_t(H * W) + hw] = T(float(unit(2, 0, j)));
      }
  return x;
}

double probe(size_t t, size_t i) { return std::cos(0.13 * double(i) + double(t)); }

json load_fixture() {
  std::ifstream f(kFixture);
  if (!f) throw std::runtime_error("cannot open " + kFixture);
  return json::parse(f);
}

const json& fixture() {
  static const json j = load_fixture();
  return j;
}

const json& model_entry(const std::string& name) {
  for (const json& m : fixture().at("models"))
    if (m.at("name") == name) return m;
  throw std::runtime_error("model " + name + " not in " + kFixture);
}

class TorchGolden : public ::testing::TestWithParam<std::string> {};

// Forward with dropout off, then the mean cross-entropy; returns the loss, fills dlogits.
template <class T>
double run_forward(BasicModel<T>& model, const std::vector<T>& params, const std::vector<T>& input,
                   const std::vector<int32_t>& labels, std::vector<T>& logits_out,
                   std::vector<T>& dlogits) {
  const int N = int(labels.size()), K = model.config().num_classes;
  std::vector<uint64_t> keys(N, 0);  // unused: dropout is 0
  const T* logits = model.forward(params.data(), input.data(), N, true, keys.data());
  logits_out.assign(logits, logits + size_t(N) * K);
  dlogits.assign(size_t(N) * K, T(0));
  return softmax_xent(N, K, logits, labels.data(), T(1) / T(N), dlogits.data(), nullptr) / N;
}

// max |ours - ref| / max |ref| over the logits, with a per-logit EXPECT at tol.
template <class T>
double logit_error(const std::vector<T>& ours, const json& ref, int N, int K, double tol,
                   const char* what) {
  double scale = 0, worst = 0;
  for (int n = 0; n < N; ++n)
    for (int k = 0; k < K; ++k) scale = std::max(scale, std::abs(ref[n].at(k).get<double>()));
  EXPECT_GT(scale, 0.0);
  for (int n = 0; n < N; ++n)
    for (int k = 0; k < K; ++k) {
      const double r = ref[n].at(k), o = double(ours[size_t(n) * K + k]);
      const double e = std::abs(o - r) / scale;
      worst = std::max(worst, e);
      EXPECT_LE(e, tol) << what << " logit [" << n << "][" << k << "]: ours " << o << ", torch "
                        << r;
    }
  return worst;
}

}  // namespace

TEST_P(TorchGolden, ForwardAndBackwardMatchTorchvision) {
  const json& fx = fixture();
  const json& ref = model_entry(GetParam());
  const int N = fx.at("batch");
  const int K = fx.at("classes");
  const auto in = fx.at("input").get<std::vector<int>>();
  const size_t full_max = fx.at("full_grad_max");
  ASSERT_EQ(fx.at("seed").get<int>(), 0);  // the C++ formula has no seed term

  ModelConfig cfg = preset(GetParam());
  cfg.num_classes = K;
  cfg.in_c = in[0];
  cfg.in_h = in[1];
  cfg.in_w = in[2];
  cfg.dropout = 0.0;  // torchvision in eval mode
  BasicModel<double> model(cfg, N);

  // Layer output shapes, by torchvision module name.
  std::map<std::string, std::vector<int>> ours;
  for (const Layer& l : model.layers()) {
    const ActShape& a = model.acts()[l.out];
    ours[l.key] = {a.c, a.h, a.w};
  }
  for (const json& s : ref.at("layer_shapes")) {
    const std::string key = s.at(0);
    ASSERT_TRUE(ours.count(key)) << "no layer " << key;
    ASSERT_EQ(ours[key], s.at(1).get<std::vector<int>>()) << "output shape of " << key;
  }

  // Same tensors, same order: the formula's t means the same tensor on both sides.
  const ParamLayout& layout = model.layout();
  const json& refp = ref.at("params");
  ASSERT_EQ(layout.tensors.size(), refp.size());
  for (size_t t = 0; t < refp.size(); ++t) {
    ASSERT_EQ(layout.tensors[t].name, refp[t].at("name").get<std::string>()) << "tensor " << t;
    ASSERT_EQ(layout.tensors[t].shape, refp[t].at("shape").get<std::vector<int64_t>>())
        << layout.tensors[t].name;
  }

  std::vector<int32_t> labels(N);
  for (int n = 0; n < N; ++n) labels[n] = n % K;
  const json& ref_logits = ref.at("logits");
  ASSERT_EQ(ref_logits.size(), size_t(N));
  const double ref_loss = ref.at("loss");

  // The float model, forward only.
  double err_logits32, err_loss32;
  {
    Model model32(cfg, N);
    std::vector<float> params(layout.total), logits, dlogits;
    fill_params(layout, params.data());
    const double loss = run_forward(model32, params, make_input<float>(N, cfg.in_c, cfg.in_h, cfg.in_w),
                                    labels, logits, dlogits);
    err_logits32 = logit_error(logits, ref_logits, N, K, kF32Tol, "float model");
    err_loss32 = std::abs(loss - ref_loss) / std::abs(ref_loss);
    EXPECT_LE(err_loss32, kF32Tol) << "float model loss: ours " << loss << ", torch " << ref_loss;
  }

  // The double model, forward and backward.
  std::vector<double> params(layout.total), grads(layout.total, 0.0), logits, dlogits;
  fill_params(layout, params.data());
  const double loss = run_forward(model, params, make_input<double>(N, cfg.in_c, cfg.in_h, cfg.in_w),
                                  labels, logits, dlogits);
  const double err_logits = logit_error(logits, ref_logits, N, K, kTol, "double model");
  const double err_loss = std::abs(loss - ref_loss) / std::abs(ref_loss);
  EXPECT_LE(err_loss, kTol) << "loss: ours " << loss << ", torch " << ref_loss;
  std::vector<uint64_t> keys(N, 0);
  model.backward(params.data(), dlogits.data(), grads.data(), N, keys.data());

  // SQUEEZE_GOLDEN_VERBOSE=1 prints every tensor's errors (to find the first wrong layer).
  const bool verbose = std::getenv("SQUEEZE_GOLDEN_VERBOSE") != nullptr;
  double err_norm = 0, err_probe = 0, err_full = 0, err_elem = 0;
  size_t full_tensors = 0;
  for (size_t t = 0; t < refp.size(); ++t) {
    const ParamSpec& p = layout.tensors[t];
    const json& r = refp[t];
    const double* g = grads.data() + p.offset;
    double sq = 0, dot = 0, probe_sq = 0;
    for (size_t i = 0; i < p.count; ++i) {
      const double pr = probe(t, i);
      sq += g[i] * g[i];
      dot += g[i] * pr;
      probe_sq += pr * pr;
    }
    const double norm = std::sqrt(sq);
    const double ref_norm = r.at("grad_norm"), ref_dot = r.at("grad_probe");
    ASSERT_GT(ref_norm, 0.0) << p.name;
    const double e_norm = std::abs(norm - ref_norm) / ref_norm;
    const double probe_rms = std::sqrt(probe_sq / double(p.count));
    const double e_probe = std::abs(dot - ref_dot) / (std::abs(ref_dot) + ref_norm * probe_rms);
    err_norm = std::max(err_norm, e_norm);
    err_probe = std::max(err_probe, e_probe);
    EXPECT_LE(e_norm, kTol) << p.name << " gradient norm: ours " << norm << ", torch " << ref_norm;
    EXPECT_LE(e_probe, kTol) << p.name << " gradient . probe: ours " << dot << ", torch "
                             << ref_dot;

    if (p.count <= full_max) {
      ASSERT_TRUE(r.contains("grad")) << p.name;
      const json& rg = r.at("grad");
      ASSERT_EQ(rg.size(), p.count) << p.name;
      ++full_tensors;
      const double rms = ref_norm / std::sqrt(double(p.count));
      double diff_sq = 0, worst = 0;
      size_t worst_i = 0;
      for (size_t i = 0; i < p.count; ++i) {
        const double ri = rg[i];
        const double d = g[i] - ri;
        diff_sq += d * d;
        const double e = std::abs(d) / (std::abs(ri) + rms);
        if (e > worst) worst = e, worst_i = i;
      }
      const double e_full = std::sqrt(diff_sq) / ref_norm;
      err_full = std::max(err_full, e_full);
      err_elem = std::max(err_elem, worst);
      EXPECT_LE(e_full, kTol) << p.name << " gradient: |ours - torch| / |torch| = " << e_full;
      EXPECT_LE(worst, kTol) << p.name << " gradient element " << worst_i << ": ours "
                             << g[worst_i] << ", torch " << rg[worst_i].get<double>();
    }
    if (verbose)
      std::printf("  %-32s norm %9.2e  probe %9.2e\n", p.name.c_str(), e_norm, e_probe);
  }
  EXPECT_GT(full_tensors, 0u);

  const json& tf = ref.at("torch_f32_error");
  std::printf(
      "%s: measured max errors (tolerance)\n"
      "  double model: logits (per logit / max|logit|) %9.2e (%g)\n"
      "                loss (relative)                 %9.2e (%g)\n"
      "                gradient norms (relative)       %9.2e (%g)\n"
      "                gradient . probe                %9.2e (%g)\n"
      "                full gradients, L2 (%2zu tensors) %9.2e (%g)\n"
      "                full gradients, per element     %9.2e (%g)\n"
      "  float model:  logits                          %9.2e (%g)  torchvision float32: %9.2e\n"
      "                loss                            %9.2e (%g)  torchvision float32: %9.2e\n",
      GetParam().c_str(), err_logits, kTol, err_loss, kTol, err_norm, kTol, err_probe, kTol,
      full_tensors, err_full, kTol, err_elem, kTol, err_logits32, kF32Tol,
      tf.at("logits").get<double>(), err_loss32, kF32Tol, tf.at("loss").get<double>());
}

INSTANTIATE_TEST_SUITE_P(Models, TorchGolden,
                         ::testing::Values("squeezenet1.0", "squeezenet1.1"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string s = info.param;  // "squeezenet1.0" -> "squeezenet1_0"
                           std::replace(s.begin(), s.end(), '.', '_');
                           return s;
                         });
