#include "core/config.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace sq {

void ModelConfig::validate() const {
  if (num_classes < 1) fail("--classes must be at least 1, got ", num_classes);
  if (in_c < 1 || in_c > 64) fail("input channels must be in [1, 64], got ", in_c);
  if (in_h < 1 || in_w < 1 || in_h > 4096 || in_w > 4096)
    fail("input size must be in [1, 4096] per side, got ", in_h, "x", in_w);
  if (base_e < 1) fail("--base-e must be at least 1, got ", base_e);
  if (incr_e < 0) fail("--incr-e must not be negative, got ", incr_e);
  if (!(pct_3x3 >= 0.0 && pct_3x3 <= 1.0)) fail("--pct-3x3 must be in [0, 1], got ", pct_3x3);
  if (freq < 1) fail("--freq must be at least 1, got ", freq);
  if (!(sr > 0.0 && sr <= 1.0)) fail("--sr must be in (0, 1], got ", sr);
  if (!(dropout >= 0.0 && dropout < 1.0)) fail("--dropout must be in [0, 1), got ", dropout);
  auto fires = fire_channels(*this);
  for (size_t i = 0; i < fires.size(); ++i)
    if (fires[i].s < 1)
      fail("--sr ", sr, " gives fire", i + 2, " no squeeze filters (round(SR*e) = 0)");
}

std::vector<FireChannels> fire_channels(const ModelConfig& c) {
  std::vector<FireChannels> out;
  for (int i = 0; i < 8; ++i) {
    int e = c.base_e + c.incr_e * (i / c.freq);
    int e3 = static_cast<int>(std::lround(c.pct_3x3 * e));
    int s = static_cast<int>(std::lround(c.sr * e));
    out.push_back({s, e - e3, e3});
  }
  return out;
}

ModelConfig preset(const std::string& name) {
  ModelConfig c;
  if (name == "squeezenet1.0" || name == "squeezenet1_0" || name == "1.0") {
    c.arch = Arch::kV10;
  } else if (name == "squeezenet1.1" || name == "squeezenet1_1" || name == "1.1") {
    c.arch = Arch::kV11;
  } else {
    fail("unknown model '", name, "' (known: squeezenet1.0, squeezenet1.1)");
  }
  return c;
}

std::string arch_name(Arch a) { return a == Arch::kV10 ? "squeezenet1.0" : "squeezenet1.1"; }
std::string stem_name(Stem s) { return s == Stem::kImageNet ? "imagenet" : "small"; }
std::string bypass_name(Bypass b) {
  return b == Bypass::kNone ? "none" : b == Bypass::kSimple ? "simple" : "complex";
}
Stem parse_stem(const std::string& s) {
  if (s == "imagenet") return Stem::kImageNet;
  if (s == "small") return Stem::kSmall;
  fail("unknown stem '", s, "' (known: imagenet, small)");
}
Bypass parse_bypass(const std::string& s) {
  if (s == "none") return Bypass::kNone;
  if (s == "simple") return Bypass::kSimple;
  if (s == "complex") return Bypass::kComplex;
  fail("unknown bypass '", s, "' (known: none, simple, complex)");
}

nlohmann::json to_json(const ModelConfig& c) {
  return {{"model", arch_name(c.arch)}, {"stem", stem_name(c.stem)},
          {"bypass", bypass_name(c.bypass)}, {"classes", c.num_classes},
          {"input", {c.in_c, c.in_h, c.in_w}}, {"base_e", c.base_e}, {"incr_e", c.incr_e},
          {"pct_3x3", c.pct_3x3}, {"freq", c.freq}, {"sr", c.sr}, {"dropout", c.dropout}};
}

ModelConfig model_config_from_json(const nlohmann::json& j) {
  ModelConfig c;
  try {
    c = preset(j.at("model").get<std::string>());
    c.stem = parse_stem(j.at("stem").get<std::string>());
    c.bypass = parse_bypass(j.at("bypass").get<std::string>());
    c.num_classes = j.at("classes").get<int>();
    auto in = j.at("input").get<std::vector<int>>();
    if (in.size() != 3) fail("model config: input must have 3 entries");
    c.in_c = in[0];
    c.in_h = in[1];
    c.in_w = in[2];
    c.base_e = j.at("base_e").get<int>();
    c.incr_e = j.at("incr_e").get<int>();
    c.pct_3x3 = j.at("pct_3x3").get<double>();
    c.freq = j.at("freq").get<int>();
    c.sr = j.at("sr").get<double>();
    c.dropout = j.at("dropout").get<double>();
  } catch (const nlohmann::json::exception& e) {
    fail("model config: ", e.what());
  }
  c.validate();
  return c;
}

}  // namespace sq
