#include "core/params.h"

#include "core/error.h"

namespace sq {

size_t ParamLayout::add(const std::string& name, std::vector<int64_t> shape) {
  SQ_ASSERT(find(name) == nullptr, "duplicate parameter ", name);
  ParamSpec p;
  p.name = name;
  p.count = 1;
  for (int64_t d : shape) {
    SQ_ASSERT(d > 0, "parameter ", name, " has a non-positive dimension");
    p.count *= static_cast<size_t>(d);
  }
  p.shape = std::move(shape);
  p.offset = total;
  total += p.count;
  tensors.push_back(std::move(p));
  return tensors.back().offset;
}

const ParamSpec* ParamLayout::find(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

}  // namespace sq
