// Weight files and training checkpoints, both safetensors with torchvision's key names.
//  - weights: one F32 tensor per parameter ("features.0.weight", ...), readable by PyTorch's
//    safetensors loader as a state_dict.
//  - checkpoint: the same tensors, plus "momentum.<key>" for each, plus string metadata the
//    trainer fills with everything resume needs (step, epoch, config, seed ...).
// Both carry "squeeze.crc32" (CRC-32 of the data section, hex) in __metadata__; the readers
// verify it when present, so a flipped bit is refused rather than trained on.
#pragma once
#include <map>
#include <string>

#include "core/params.h"
#include "core/safetensors.h"

namespace sq {

using Metadata = std::map<std::string, std::string>;

void export_weights(const std::string& path, const ParamLayout& layout, const float* params,
                    const Metadata& meta = {});
// Fills params (layout.total floats). Every tensor of the layout must be present with exactly its
// shape; a missing, extra or misshapen tensor is an error naming it. Returns the file's metadata.
Metadata import_weights(const std::string& path, const ParamLayout& layout, float* params);
// The same from a file already read (path: for messages).
Metadata import_weights(const SafetensorsFile& file, const std::string& path, const ParamLayout& layout,
                        float* params);

void save_checkpoint(const std::string& path, const ParamLayout& layout, const float* params,
                     const float* momentum, const Metadata& meta);
// Fills params and momentum; the file must be a squeeze checkpoint ("squeeze.kind" ==
// "checkpoint") for exactly this layout. Returns its metadata.
Metadata load_checkpoint(const std::string& path, const ParamLayout& layout, float* params,
                         float* momentum);

}  // namespace sq
