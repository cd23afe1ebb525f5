// The model configurations the benchmarks name: torchvision's presets, and "fmnist", the model
// `squeeze train` builds for Fashion-MNIST (squeezenet1.0 with the small stem on 1x28x28, 10
// classes).
#pragma once
#include <string>

#include "core/config.h"

namespace sq::bench {

inline ModelConfig fmnist_config() {
  ModelConfig c = preset("squeezenet1.0");
  c.stem = Stem::kSmall;
  c.in_c = 1;
  c.in_h = c.in_w = 28;
  c.num_classes = 10;
  return c;
}

// "fmnist" or a preset's name (preset() throws for an unknown one).
inline ModelConfig model_config(const std::string& name) {
  return name == "fmnist" ? fmnist_config() : preset(name);
}

}  // namespace sq::bench
