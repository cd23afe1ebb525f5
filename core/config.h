// Model configuration: the SqueezeNet family of the paper's design space.
//  - arch 1.0: conv1 96x7x7/2, max-pools after conv1, fire4, fire8 (torchvision squeezenet1_0)
//  - arch 1.1: conv1 64x3x3/2, max-pools after conv1, fire3, fire5 (torchvision squeezenet1_1)
//  - the eight Fire modules from the paper's metaparameters (base_e, incr_e, pct_3x3, freq, SR)
//  - bypass: none | simple (identity around fire3,5,7,9) | complex (simple + 1x1 conv around
//    fire2,4,6,8)
//  - stem: imagenet (as above) | small (conv1 3x3 stride 1 pad 1, for 28-32 px inputs)
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "nlohmann/json_fwd.hpp"

namespace sq {

enum class Arch { kV10, kV11 };
enum class Stem { kImageNet, kSmall };
enum class Bypass { kNone, kSimple, kComplex };

struct ModelConfig {
  Arch arch = Arch::kV10;
  Stem stem = Stem::kImageNet;
  Bypass bypass = Bypass::kNone;
  int num_classes = 1000;
  int in_c = 3, in_h = 224, in_w = 224;
  // The paper's metaparameters; the defaults reproduce SqueezeNet 1.0 (and 1.1's Fire modules).
  int base_e = 128;
  int incr_e = 128;
  double pct_3x3 = 0.5;
  int freq = 2;
  double sr = 0.125;
  double dropout = 0.5;

  // Throws sq::Error naming the first bad field (before any work starts).
  void validate() const;
};

struct FireChannels {
  int s, e1, e3;  // squeeze, expand1x1, expand3x3
};

// e_i = base_e + incr_e * floor(i / freq); e3 = round(pct_3x3 * e_i); e1 = e_i - e3;
// s = round(SR * e_i), for i = 0..7 (fire2 .. fire9). Rounding is half away from zero.
std::vector<FireChannels> fire_channels(const ModelConfig& c);

// "squeezenet1.0" | "squeezenet1.1" -> defaults for that preset (1000 classes, 3x224x224).
ModelConfig preset(const std::string& name);
std::string arch_name(Arch a);  // "squeezenet1.0" | "squeezenet1.1"
std::string stem_name(Stem s);
std::string bypass_name(Bypass b);
Stem parse_stem(const std::string& s);
Bypass parse_bypass(const std::string& s);

nlohmann::json to_json(const ModelConfig& c);
ModelConfig model_config_from_json(const nlohmann::json& j);  // validates

// Fields of a JSON object read from a file, each checked for its type and range before use
// (nlohmann's get<int> truncates 2.5 and wraps 1e20 without a word). A fault throws sq::Error
// naming the key: "\"epochs\" must be an integer in [...], got 2.5".
const nlohmann::json& json_field(const nlohmann::json& j, const char* key);
int64_t json_integer(const nlohmann::json& j, const char* key);
int json_int(const nlohmann::json& j, const char* key);  // an integer in int's range
uint64_t json_unsigned(const nlohmann::json& j, const char* key);
double json_number(const nlohmann::json& j, const char* key);
std::string json_string(const nlohmann::json& j, const char* key);
bool json_bool(const nlohmann::json& j, const char* key);

}  // namespace sq
