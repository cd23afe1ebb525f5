// `squeeze compress`: Deep Compression of trained weights (core/compress.h) into a compressed
// model file, with the per-layer table of the paper's Table 1, the size after each stage and,
// given a data set, the accuracy after each stage.
#pragma once
#include <optional>
#include <string>

#include "comm/communicator.h"
#include "core/compress.h"
#include "core/data.h"
#include "core/safetensors.h"

namespace sq {

struct CompressOptions {
  std::string weights;         // safetensors weights (or checkpoint) written by squeeze train
  std::string out;             // the compressed model file
  std::string prune = "paper";  // paper | none | NAME=FRACTION,...
  int bits = 8, index_bits = 8;
  std::string dataset;         // empty: no accuracy figures (and no retraining)
  std::string data_dir;
  int batch = 256;             // evaluation batch
  int retrain_epochs = 0;      // after pruning, and again after quantization (needs dataset)
  int prune_steps = 1;         // prune in this many steps, retraining after each
  double lr = 0.002;           // retraining: poly schedule from this rate
  int retrain_batch = 128;     // retraining's global batch (divisible by the world size)
  bool cuda = false;           // retrain and evaluate on GPU `gpu`
  int gpu = 0;
};

int run_compress(const CompressOptions& o, Communicator& comm);

// The model configuration, normalization and parameters of a weight file, compressed or not.
struct LoadedWeights {
  ModelConfig config;
  bool has_config = false, has_norm = false;
  Normalization norm;
  std::optional<CompressedModel> compressed;  // the decoded file, when it is a compressed model
  std::optional<SafetensorsFile> file;         // the file read, when it is safetensors
};
// Reads the configuration (and normalization) of `path`: safetensors metadata, or the compressed
// file; the file is read once and kept (`file` or `compressed`) for load_weights_for.
LoadedWeights describe_weights(const std::string& path);
// The flat parameters of `path` (described by lw) for `model` (dequantized for a compressed file).
std::vector<float> load_weights_for(const LoadedWeights& lw, const std::string& path, const Model& model);
// Throws sq::Error (naming `what`) unless the model's input shape and classes are the data set's.
void check_model_fits(const std::string& what, const ModelConfig& c, const Dataset& test);

}  // namespace sq
