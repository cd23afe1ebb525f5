// `squeeze compress`: Deep Compression of trained weights (core/compress.h) into a compressed
// model file, with the per-layer table of the paper's Table 1, the size after each stage and,
// given a data set, the accuracy after each stage.
#pragma once
#include <string>

#include "comm/communicator.h"
#include "core/compress.h"
#include "core/data.h"

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
  double lr = 0.002;           // retraining: poly schedule from this rate, batch 128
};

int run_compress(const CompressOptions& o, Communicator& comm);

// The model configuration, normalization and parameters of a weight file, compressed or not.
struct LoadedWeights {
  ModelConfig config;
  bool has_config = false, has_norm = false;
  Normalization norm;
  std::vector<float> params;  // filled by load_weights_for() once the config is known
  bool compressed = false;
};
// Reads the configuration (and normalization) of `path`: safetensors metadata or the
// compressed file's header.
LoadedWeights describe_weights(const std::string& path);
// The flat parameters of `path` for `model` (dequantized for a compressed file).
std::vector<float> load_weights_for(const std::string& path, const Model& model);

}  // namespace sq
