#include "core/config.h"

#include <cmath>
#include <limits>
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

namespace {

std::string shown(const nlohmann::json& v) {
  return v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// v as an integer in [lo, hi] (0 <= hi), or an error naming it `what`.
int64_t integer_in(const nlohmann::json& v, const std::string& what, int64_t lo, int64_t hi) {
  bool ok = false;
  int64_t x = 0;
  if (v.is_number_unsigned()) {
    ok = v.get<uint64_t>() <= uint64_t(hi);
    if (ok) x = int64_t(v.get<uint64_t>());
  } else if (v.is_number_integer()) {
    x = v.get<int64_t>();
    ok = true;
  }
  if (!ok || x < lo || x > hi) fail(what, " must be an integer in [", lo, ", ", hi, "], got ", shown(v));
  return x;
}

int int_in(const nlohmann::json& v, const std::string& what) {
  return int(integer_in(v, what, std::numeric_limits<int>::min(), std::numeric_limits<int>::max()));
}

}  // namespace

const nlohmann::json& json_field(const nlohmann::json& j, const char* key) {
  if (!j.is_object()) fail("expected a JSON object, got ", shown(j));
  auto it = j.find(key);
  if (it == j.end()) fail("\"", key, "\" is missing");
  return *it;
}

int64_t json_integer(const nlohmann::json& j, const char* key) {
  return integer_in(json_field(j, key), str("\"", key, "\""), std::numeric_limits<int64_t>::min(),
                    std::numeric_limits<int64_t>::max());
}

int json_int(const nlohmann::json& j, const char* key) { return int_in(json_field(j, key), str("\"", key, "\"")); }

uint64_t json_unsigned(const nlohmann::json& j, const char* key) {
  const nlohmann::json& v = json_field(j, key);
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return uint64_t(v.get<int64_t>());
  fail("\"", key, "\" must be an integer in [0, 18446744073709551615], got ", shown(v));
}

double json_number(const nlohmann::json& j, const char* key) {
  const nlohmann::json& v = json_field(j, key);
  if (!v.is_number()) fail("\"", key, "\" must be a number, got ", shown(v));
  return v.get<double>();
}

std::string json_string(const nlohmann::json& j, const char* key) {
  const nlohmann::json& v = json_field(j, key);
  if (!v.is_string()) fail("\"", key, "\" must be a string, got ", shown(v));
  return v.get<std::string>();
}

bool json_bool(const nlohmann::json& j, const char* key) {
  const nlohmann::json& v = json_field(j, key);
  if (!v.is_boolean()) fail("\"", key, "\" must be true or false, got ", shown(v));
  return v.get<bool>();
}

ModelConfig model_config_from_json(const nlohmann::json& j) {
  ModelConfig c;
  try {
    c = preset(json_string(j, "model"));
    c.stem = parse_stem(json_string(j, "stem"));
    c.bypass = parse_bypass(json_string(j, "bypass"));
    c.num_classes = json_int(j, "classes");
    const nlohmann::json& in = json_field(j, "input");
    if (!in.is_array() || in.size() != 3)
      fail("\"input\" must be [channels, height, width], got ", shown(in));
    c.in_c = int_in(in[0], "input channels");
    c.in_h = int_in(in[1], "input height");
    c.in_w = int_in(in[2], "input width");
    c.base_e = json_int(j, "base_e");
    c.incr_e = json_int(j, "incr_e");
    c.pct_3x3 = json_number(j, "pct_3x3");
    c.freq = json_int(j, "freq");
    c.sr = json_number(j, "sr");
    c.dropout = json_number(j, "dropout");
    c.validate();
  } catch (const Error& e) {
    fail("model config: ", e.what());
  }
  return c;
}

}  // namespace sq
