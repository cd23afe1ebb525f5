// The model family against the reference facts of ../shared/DESIGN.md: parameter counts per
// layer and in total, conv MACs, torchvision key names, the flat layout, and config validation.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>

#include "core/config.h"
#include "core/error.h"
#include "core/model.h"
#include "core/rng.h"

using namespace sq;

namespace {

int64_t count_params(const ModelConfig& c) { return int64_t(Model(c, 1).layout().total); }

std::map<std::string, int64_t> per_layer(const Model& m) {
  std::map<std::string, int64_t> out;
  for (const Layer& l : m.layers()) out[l.name] = l.params;
  return out;
}

}  // namespace

TEST(Model, SqueezeNet10ParameterCountsPerLayer) {
  Model m(preset("squeezenet1.0"), 1);
  auto p = per_layer(m);
  EXPECT_EQ(p["conv1"], 14208);
  EXPECT_EQ(p["fire2"], 11920);
  EXPECT_EQ(p["fire3"], 12432);
  EXPECT_EQ(p["fire4"], 45344);
  EXPECT_EQ(p["fire5"], 49440);
  EXPECT_EQ(p["fire6"], 104880);
  EXPECT_EQ(p["fire7"], 111024);
  EXPECT_EQ(p["fire8"], 188992);
  EXPECT_EQ(p["fire9"], 197184);
  EXPECT_EQ(p["conv10"], 513000);
  EXPECT_EQ(m.layout().total, 1248424u);
}

TEST(Model, SqueezeNet10Shapes) {
  Model m(preset("squeezenet1.0"), 1);
  std::map<std::string, std::string> shape;
  for (const Layer& l : m.layers()) {
    const ActShape& a = m.acts()[l.out];
    shape[l.name] = str(a.c, "x", a.h, "x", a.w);
  }
  EXPECT_EQ(shape["conv1"], "96x109x109");
  EXPECT_EQ(shape["pool1"], "96x54x54");
  EXPECT_EQ(shape["fire4"], "256x54x54");
  EXPECT_EQ(shape["pool2"], "256x27x27");
  EXPECT_EQ(shape["fire8"], "512x27x27");
  EXPECT_EQ(shape["pool3"], "512x13x13");
  EXPECT_EQ(shape["fire9"], "512x13x13");
  EXPECT_EQ(shape["conv10"], "1000x13x13");
}

TEST(Model, TotalsAndMacs) {
  EXPECT_EQ(count_params(preset("squeezenet1.1")), 1235496);
  EXPECT_EQ(total_macs(Model(preset("squeezenet1.0"), 1)), 818924576);
  EXPECT_EQ(total_macs(Model(preset("squeezenet1.1"), 1)), 349151936);
}

TEST(Model, MetaparameterSweep) {
  ModelConfig c = preset("squeezenet1.0");
  const std::pair<double, int64_t> sr_counts[] = {
      {0.25, 1967080}, {0.5, 3404392}, {0.75, 4841704}, {1.0, 6279016}};
  for (auto [sr, expected] : sr_counts) {
    c.sr = sr;
    EXPECT_EQ(count_params(c), expected) << "SR " << sr;
  }
  c.sr = 0.5;
  c.pct_3x3 = 0.25;
  EXPECT_EQ(count_params(c), 2421352);
}

TEST(Model, FireChannelsFollowTheFormula) {
  ModelConfig c = preset("squeezenet1.0");
  c.base_e = 64;
  c.incr_e = 32;
  c.freq = 3;
  c.pct_3x3 = 0.75;
  c.sr = 0.25;
  auto f = fire_channels(c);
  ASSERT_EQ(f.size(), 8u);
  for (int i = 0; i < 8; ++i) {
    int e = 64 + 32 * (i / 3);
    EXPECT_EQ(f[i].e3, int(std::lround(0.75 * e)));
    EXPECT_EQ(f[i].e1 + f[i].e3, e);
    EXPECT_EQ(f[i].s, int(std::lround(0.25 * e)));
  }
}

TEST(Model, BypassVariants) {
  ModelConfig c = preset("squeezenet1.0");
  c.bypass = Bypass::kSimple;
  EXPECT_EQ(count_params(c), 1248424);
  c.bypass = Bypass::kComplex;
  EXPECT_EQ(count_params(c), 1589672);
  Model m(c, 1);
  EXPECT_NE(m.layout().find("features.3.bypass.weight"), nullptr);   // fire2
  EXPECT_EQ(m.layout().find("features.4.bypass.weight"), nullptr);   // fire3: identity
}

// Which layers' output ReLU has its backward applied by the layer after them (CudaModel's
// backward): every convolution and Fire module of the plain models; with a bypass, not the Fire
// modules that have one (their output is a sum) nor those feeding one (that gradient gets the
// bypass's term after the next layer's pass).
TEST(Model, ReluBackwardAppliedByTheNextLayer) {
  auto fused = [](ModelConfig c) {
    const Model m(c, 1, false);
    const std::vector<char> f = relu_backward_by_next(m.layers());
    EXPECT_EQ(f.size(), m.layers().size());
    std::string names;
    for (size_t i = 0; i < f.size(); ++i)
      if (f[i]) names += (names.empty() ? "" : " ") + m.layers()[i].name;
    return names;
  };
  const std::string all = "conv1 fire2 fire3 fire4 fire5 fire6 fire7 fire8 fire9 conv10";
  EXPECT_EQ(fused(preset("squeezenet1.0")), all);
  EXPECT_EQ(fused(preset("squeezenet1.1")), all);
  ModelConfig small = preset("squeezenet1.0");
  small.stem = Stem::kSmall, small.in_c = 1, small.in_h = small.in_w = 28, small.num_classes = 10;
  EXPECT_EQ(fused(small), all);
  ModelConfig c = preset("squeezenet1.0");
  c.bypass = Bypass::kSimple;
  EXPECT_EQ(fused(c), "conv1 fire4 fire8 conv10");
  c.bypass = Bypass::kComplex;
  EXPECT_EQ(fused(c), "conv1 conv10");
}

TEST(Model, TorchvisionKeysInForwardOrderAndContiguous) {
  Model m(preset("squeezenet1.0"), 1);
  const auto& t = m.layout().tensors;
  ASSERT_EQ(t.size(), 52u);  // conv1, 8 fires x 3 convs, conv10: 26 convs x (weight, bias)
  EXPECT_EQ(t.front().name, "features.0.weight");
  EXPECT_EQ(t[2].name, "features.3.squeeze.weight");
  EXPECT_EQ(t[4].name, "features.3.expand1x1.weight");
  EXPECT_EQ(t[6].name, "features.3.expand3x3.weight");
  EXPECT_EQ(t.back().name, "classifier.1.bias");
  EXPECT_NE(m.layout().find("features.12.expand3x3.weight"), nullptr);  // fire9 in 1.0
  size_t off = 0;
  for (const auto& p : t) {
    EXPECT_EQ(p.offset, off) << p.name;
    off += p.count;
  }
  EXPECT_EQ(off, m.layout().total);
  Model m11(preset("squeezenet1.1"), 1);
  EXPECT_NE(m11.layout().find("features.12.squeeze.weight"), nullptr);
  EXPECT_EQ(m11.layout().find("features.3.squeeze.weight")->shape,
            (std::vector<int64_t>{16, 64, 1, 1}));
}

TEST(Model, SmallStemFitsFashionMnist) {
  ModelConfig c = preset("squeezenet1.0");
  c.stem = Stem::kSmall;
  c.in_c = 1;
  c.in_h = c.in_w = 28;
  c.num_classes = 10;
  Model m(c, 2);
  const ActShape& out = m.acts()[m.layers().back().out];
  EXPECT_EQ(out.c, 10);
  EXPECT_EQ(m.acts()[m.layers()[0].out].h, 28);  // 3x3 stride 1 pad 1 keeps the size
  EXPECT_EQ(m.layout().find("features.0.weight")->shape, (std::vector<int64_t>{96, 1, 3, 3}));
}

TEST(Model, BadConfigsAreRefusedWithTheirName) {
  auto expect_error = [](ModelConfig c, const std::string& word) {
    try {
      Model m(c, 1);
      FAIL() << "accepted a bad config; expected an error mentioning " << word;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(word), std::string::npos) << e.what();
    }
  };
  ModelConfig c = preset("squeezenet1.0");
  c.sr = 0.0;
  expect_error(c, "--sr");
  c = preset("squeezenet1.0");
  c.sr = 1.5;
  expect_error(c, "--sr");
  c = preset("squeezenet1.0");
  c.pct_3x3 = -0.1;
  expect_error(c, "--pct-3x3");
  c = preset("squeezenet1.0");
  c.pct_3x3 = 1.01;
  expect_error(c, "--pct-3x3");
  c = preset("squeezenet1.0");
  c.in_h = c.in_w = 8;  // too small for the ImageNet stem
  expect_error(c, "too small");
  c = preset("squeezenet1.0");
  c.num_classes = 0;
  expect_error(c, "classes");
  EXPECT_THROW(preset("squeezenet2.0"), Error);
  EXPECT_THROW(Model(preset("squeezenet1.0"), 0), Error);
}

// A model config read from a file (weights' and checkpoints' metadata): each field is checked for
// its type and range and a fault names the field; nothing is truncated (2.5 classes as 2) or
// wrapped (1e20 as INT_MIN).
TEST(Model, ConfigFromJsonChecksEveryFieldNamingIt) {
  const nlohmann::json good = to_json(preset("squeezenet1.1"));
  EXPECT_EQ(to_json(model_config_from_json(good)), good);
  auto expect_error = [&](const char* key, const nlohmann::json& v, const std::string& word) {
    nlohmann::json j = good;
    if (v.is_discarded())
      j.erase(key);
    else
      j[key] = v;
    try {
      model_config_from_json(j);
      FAIL() << "accepted " << key << " = " << v.dump() << "; expected an error mentioning " << word;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(word), std::string::npos) << e.what();
    }
  };
  expect_error("classes", 2.5, "\"classes\"");
  expect_error("classes", "10", "\"classes\"");
  expect_error("base_e", 1e20, "\"base_e\"");
  expect_error("base_e", 4294967296ll, "\"base_e\"");
  expect_error("model", 5, "\"model\"");
  expect_error("input", {1, 28}, "\"input\"");
  expect_error("input", {1, 28.5, 28}, "input height");
  expect_error("sr", nlohmann::json(nlohmann::json::value_t::discarded), "\"sr\"");
  expect_error("sr", 3, "--sr");
}

// An activation plan larger than the machine's memory is refused by name before the arena is
// touched (it used to end in std::bad_alloc, or under overcommit in the OOM killer).
TEST(Model, AnActivationPlanBeyondMemoryIsRefusedNamingTheBatch) {
  try {
    Model m(preset("squeezenet1.0"), 1 << 20);  // about 6 TB of activations
    FAIL() << "planned " << m.arena_bytes() << " bytes of activations";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("a batch of 1048576"), std::string::npos) << e.what();
  }
  const Model plan(preset("squeezenet1.0"), 1 << 20, false);  // the layer table alone is fine
  EXPECT_EQ(plan.layout().total, 1248424u);
}

TEST(Model, InitSchemesHaveTheirScales) {
  Model m(preset("squeezenet1.0"), 1);
  std::vector<float> p(m.layout().total);
  for (const char* scheme : {"torchvision", "xavier"}) {
    m.init_params(p.data(), scheme, 7);
    const ParamSpec* w = m.layout().find("features.5.expand3x3.weight");  // fan_in 32*9
    double bound = std::string(scheme) == "torchvision" ? std::sqrt(6.0 / 288) : std::sqrt(3.0 / 288);
    double sumsq = 0;
    float maxabs = 0;
    for (size_t i = 0; i < w->count; ++i) {
      sumsq += double(p[w->offset + i]) * p[w->offset + i];
      maxabs = std::max(maxabs, std::abs(p[w->offset + i]));
    }
    EXPECT_LE(maxabs, bound);
    EXPECT_GT(maxabs, 0.95 * bound);
    EXPECT_NEAR(std::sqrt(sumsq / w->count), bound / std::sqrt(3.0), 0.02 * bound) << scheme;
    const ParamSpec* c10 = m.layout().find("classifier.1.weight");
    double s2 = 0;
    for (size_t i = 0; i < c10->count; ++i) s2 += double(p[c10->offset + i]) * p[c10->offset + i];
    EXPECT_NEAR(std::sqrt(s2 / c10->count), 0.01, 0.0005);
    const ParamSpec* b = m.layout().find("features.5.expand3x3.bias");
    for (size_t i = 0; i < b->count; ++i) EXPECT_EQ(p[b->offset + i], 0.0f);
  }
  EXPECT_THROW(m.init_params(p.data(), "he", 1), Error);
}

TEST(Model, LsuvGivesEveryConvItsTargetMeanSquare) {
  // After --init lsuv every conv's ReLU output (conv1, each squeeze and expand, conv10) has mean
  // square 0.5 on the batch it was fitted on; the torchvision init it starts from does not.
  for (Bypass bypass : {Bypass::kNone, Bypass::kSimple}) {
    ModelConfig c = preset("squeezenet1.0");
    c.stem = Stem::kSmall;
    c.in_c = 1, c.in_h = c.in_w = 28, c.num_classes = 10, c.bypass = bypass;
    const int N = 6;
    Model m(c, N);
    std::vector<float> p(m.layout().total), x(size_t(N) * 28 * 28);
    SplitMix rng(99);
    for (float& v : x) v = float(rng.normal());
    m.init_params(p.data(), "torchvision", 3);
    auto mean_squares = [&]() {
      std::vector<std::pair<std::string, double>> out;
      m.forward(p.data(), x.data(), N, false, nullptr);
      auto ms = [&](const std::string& name, int act, size_t off, size_t len) {
        const float* a = m.activation(act) + off;
        double s = 0;
        for (size_t i = 0; i < len; ++i) s += double(a[i]) * a[i];
        out.emplace_back(name, s / double(len));
      };
      for (const Layer& l : m.layers()) {
        if (l.kind == LayerKind::kConv) ms(l.name, l.out, 0, size_t(m.acts()[l.out].per_sample()) * N);
        if (l.kind != LayerKind::kFire) continue;
        const size_t plane = size_t(l.fire.H) * l.fire.W * N;
        const int y = l.bypass == Bypass::kNone ? l.out : l.fire_act;
        ms(l.name + ".squeeze", l.squeeze_act, 0, l.fire.S * plane);
        ms(l.name + ".expand1x1", y, 0, l.fire.E1 * plane);
        ms(l.name + ".expand3x3", y, l.fire.E1 * plane, l.fire.E3 * plane);
      }
      return out;
    };
    const auto before = mean_squares();
    ASSERT_EQ(before.size(), 26u);  // conv1, 8 x 3 fire convs, conv10
    double worst = 0;  // the plain init is far from the target somewhere
    for (const auto& [name, v] : before) worst = std::max(worst, std::abs(std::log(v / 0.5)));
    EXPECT_GT(worst, std::log(2.0));
    m.lsuv_rescale(p.data(), x.data(), N);
    for (const auto& [name, v] : mean_squares()) EXPECT_NEAR(v, 0.5, 0.5 * 0.03) << name;
  }
}

// --check-layers in TF32 and BF16 (check_layers_tolerance): the CPU rounds its convolutions'
// operands as the GPU does, so the two sides differ by the order of their fp32 sums and the
// roundings that order flips. Stand-in for that: two CPU runs, the second's input, parameters and
// logit gradient perturbed by 1e-6 relative (GPU and CPU differed by at most 8.2e-7 in fp32,
// run c). Forward: whole models, as the check runs them (the flips compound from layer to layer);
// parameter gradients: on the same activations, as the check gives the GPU the CPU's. Every
// layer must stay a factor 3 below the bound; a bound at the fp32 one (1e-4) fails.
TEST(Model, CheckLayersToleranceHoldsForRoundingAlone) {
  const ModelConfig cfg = preset("squeezenet1.0");
  const int N = 2, K = cfg.num_classes;
  for (OperandRounding r : {OperandRounding::kTf32, OperandRounding::kBf16}) {
    SCOPED_TRACE(r == OperandRounding::kTf32 ? "tf32" : "bf16");
    set_conv_operand_rounding(r);
    Model a(cfg, N), b(cfg, N);
    const size_t P = a.layout().total;
    std::vector<float> p(P), x(size_t(cfg.in_c) * N * cfg.in_h * cfg.in_w);
    a.init_params(p.data(), "torchvision", 5);
    SplitMix rng(17);
    for (float& v : x) v = float(rng.normal());
    auto perturbed = [&](std::vector<float> v) {
      for (float& e : v) e *= float(1.0 + 1e-6 * rng.normal());
      return v;
    };
    const std::vector<float> p2 = perturbed(p), x2 = perturbed(x);
    std::vector<uint64_t> keys(N);
    std::vector<int32_t> labels(N);
    for (int n = 0; n < N; ++n)
      keys[size_t(n)] = sample_key(5, RngStream::kDropout, 0, uint64_t(n)), labels[size_t(n)] = n;
    auto rel = [](const float* got, const float* ref, size_t n) {
      double d = 0, q = 0;
      for (size_t i = 0; i < n; ++i) d += std::pow(double(got[i]) - ref[i], 2), q += double(ref[i]) * ref[i];
      return std::sqrt(d / q);
    };
    const double bound = check_layers_tolerance(r) / 3;
    const float* logits = a.forward(p.data(), x.data(), N, true, keys.data());
    b.forward(p2.data(), x2.data(), N, true, keys.data());
    double worst_fwd = 0, worst_grad = 0;
    for (const Layer& l : a.layers()) {
      const size_t n = size_t(a.acts()[size_t(l.out)].per_sample()) * N;
      const double e = rel(b.activation(l.out), a.activation(l.out), n);
      EXPECT_LT(e, bound) << l.name << " forward";
      worst_fwd = std::max(worst_fwd, e);
    }
    std::vector<float> dl(size_t(K) * N), ga(P, 0.0f), gb(P, 0.0f);
    softmax_xent(N, K, logits, labels.data(), 1.0f / N, dl.data(), static_cast<int*>(nullptr));
    const std::vector<float> dl2 = perturbed(dl);
    a.backward(p.data(), dl.data(), ga.data(), N, keys.data());
    b.forward(p.data(), x.data(), N, true, keys.data());  // the same activations as a's
    b.backward(p2.data(), dl2.data(), gb.data(), N, keys.data());
    for (const Layer& l : a.layers()) {
      if (l.param_end == l.param_begin) continue;
      const double e = rel(gb.data() + l.param_begin, ga.data() + l.param_begin, l.param_end - l.param_begin);
      EXPECT_LT(e, bound) << l.name << " parameter gradient";
      worst_grad = std::max(worst_grad, e);
    }
    set_conv_operand_rounding(OperandRounding::kNone);
    // The rounding shows: its flips compound far past the fp32 bound in the forward.
    EXPECT_GT(worst_fwd, check_layers_tolerance(OperandRounding::kNone)) << "rounding alone";
    std::printf("%s: worst forward %.2e, worst parameter gradient %.2e (bound %.0e)\n",
                r == OperandRounding::kTf32 ? "tf32" : "bf16", worst_fwd, worst_grad, check_layers_tolerance(r));
  }
}
