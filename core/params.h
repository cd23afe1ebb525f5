// The parameter layout: every tensor of the model is a named view into one flat buffer, in
// forward order, named by torchvision's state_dict key. Gradients and momentum use the same
// layout, so one memset zeroes all gradients, one allreduce averages them, and a bucket of the
// gradient reducer is one contiguous slice.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace sq {

struct ParamSpec {
  std::string name;            // torchvision state_dict key, e.g. "features.3.squeeze.weight"
  std::vector<int64_t> shape;  // e.g. {16, 96, 1, 1}
  size_t offset = 0;           // in floats, into the flat buffer
  size_t count = 0;            // product of shape
};

struct ParamLayout {
  std::vector<ParamSpec> tensors;  // forward order
  size_t total = 0;                // floats in the flat buffer

  // Appends a tensor after the last one and returns its offset.
  size_t add(const std::string& name, std::vector<int64_t> shape);
  const ParamSpec* find(const std::string& name) const;  // null if absent
};

}  // namespace sq
