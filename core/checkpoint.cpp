// Weight files and checkpoints on top of safetensors. See docs/FORMATS.md.
#include "core/checkpoint.h"

#include <cstring>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "core/error.h"
#include "core/safetensors.h"

namespace sq {

namespace {

constexpr const char* kKindKey = "squeeze.kind";
constexpr const char* kVersionKey = "squeeze.format_version";
constexpr const char* kCheckpointVersion = "1";
constexpr const char* kMomentumPrefix = "momentum.";

std::string quote(const std::string& s) {
  return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

struct Slot {  // one tensor the file must hold, and where its values go
  std::string name;
  const ParamSpec* spec;
  float* dst;
};

// momentum == nullptr: parameters only (a weights file).
std::vector<Slot> slots_for(const ParamLayout& layout, float* params, float* momentum) {
  std::vector<Slot> slots;
  for (const ParamSpec& p : layout.tensors) slots.push_back({p.name, &p, params + p.offset});
  if (momentum != nullptr)
    for (const ParamSpec& p : layout.tensors)
      slots.push_back({kMomentumPrefix + p.name, &p, momentum + p.offset});
  return slots;
}

std::vector<TensorRef> refs_for(const ParamLayout& layout, const float* params,
                                const float* momentum) {
  std::vector<TensorRef> refs;
  for (const ParamSpec& p : layout.tensors) refs.push_back({p.name, p.shape, params + p.offset});
  if (momentum != nullptr)
    for (const ParamSpec& p : layout.tensors)
      refs.push_back({kMomentumPrefix + p.name, p.shape, momentum + p.offset});
  return refs;
}

// Checks that the file holds exactly the slots' tensors with the slots' shapes, then copies.
// Nothing is written to the destination buffers unless the whole file matches.
void fill(const std::string& path, const SafetensorsFile& file, const std::vector<Slot>& slots,
          const char* hint) {
  std::unordered_map<std::string, const Slot*> by_name;
  for (const Slot& s : slots) by_name[s.name] = &s;
  std::unordered_map<std::string, const TensorData*> found;
  for (const TensorData& t : file.tensors) {
    auto it = by_name.find(t.name);
    if (it == by_name.end())
      fail(path, ": unexpected tensor ", quote(t.name), " (shape ", shape_str(t.shape),
           ") is not in the model", hint);
    const ParamSpec& spec = *it->second->spec;
    if (t.shape != spec.shape)
      fail(path, ": tensor ", quote(t.name), " has shape ", shape_str(t.shape),
           " in the file but ", shape_str(spec.shape), " in the model");
    found[t.name] = &t;
  }
  for (const Slot& s : slots)
    if (!found.count(s.name))
      fail(path, ": missing tensor ", quote(s.name), " (shape ", shape_str(s.spec->shape),
           " in the model)");
  for (const Slot& s : slots) {
    const TensorData& t = *found[s.name];
    SQ_ASSERT(t.data.size() == s.spec->count);
    if (s.spec->count > 0) std::memcpy(s.dst, t.data.data(), s.spec->count * sizeof(float));
  }
}

}  // namespace

void export_weights(const std::string& path, const ParamLayout& layout, const float* params,
                    const Metadata& meta) {
  SQ_ASSERT(params != nullptr || layout.total == 0);
  Metadata m = meta;
  m[kKindKey] = "weights";
  write_safetensors(path, refs_for(layout, params, nullptr), m);
}

Metadata import_weights(const std::string& path, const ParamLayout& layout, float* params) {
  return import_weights(read_safetensors(path), path, layout, params);
}

Metadata import_weights(const SafetensorsFile& file, const std::string& path, const ParamLayout& layout,
                        float* params) {
  SQ_ASSERT(params != nullptr || layout.total == 0);
  auto kind = file.metadata.find(kKindKey);
  const char* hint = (kind != file.metadata.end() && kind->second == "checkpoint")
                         ? " (the file is a training checkpoint, not a weights file)"
                         : "";
  fill(path, file, slots_for(layout, params, nullptr), hint);
  return file.metadata;
}

void save_checkpoint(const std::string& path, const ParamLayout& layout, const float* params,
                     const float* momentum, const Metadata& meta) {
  SQ_ASSERT((params != nullptr && momentum != nullptr) || layout.total == 0);
  Metadata m = meta;
  m[kKindKey] = "checkpoint";
  m[kVersionKey] = kCheckpointVersion;
  write_safetensors(path, refs_for(layout, params, momentum), m);
}

Metadata load_checkpoint(const std::string& path, const ParamLayout& layout, float* params,
                         float* momentum) {
  SQ_ASSERT((params != nullptr && momentum != nullptr) || layout.total == 0);
  SafetensorsFile file = read_safetensors(path);
  auto kind = file.metadata.find(kKindKey);
  if (kind == file.metadata.end())
    fail(path, ": not a squeeze checkpoint (no ", kKindKey, " in its metadata)");
  if (kind->second != "checkpoint")
    fail(path, ": not a squeeze checkpoint (", kKindKey, " is ", quote(kind->second), ")");
  auto version = file.metadata.find(kVersionKey);
  if (version == file.metadata.end())
    fail(path, ": checkpoint has no ", kVersionKey);
  if (version->second != kCheckpointVersion)
    fail(path, ": unsupported checkpoint ", kVersionKey, " ", quote(version->second),
         " (this build reads \"", kCheckpointVersion, "\")");
  fill(path, file, slots_for(layout, params, momentum), "");
  return file.metadata;
}

}  // namespace sq
