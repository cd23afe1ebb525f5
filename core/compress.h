// Deep Compression (Han et al., 2016) of a SqueezeNet: magnitude pruning with masks, trained
// quantization by per-layer k-means weight sharing, and the compressed model file (sparse
// relative indices, a codebook per layer, Huffman-coded weight codes and index gaps, exact
// biases). The format is specified in docs/FORMATS.md ("Compressed models").
//
// The compressible tensors are the convolution weights (conv1, each Fire's squeeze, expand1x1
// and expand3x3, a complex bypass's 1x1, conv10), named "conv1", "fire2.squeeze", ...; every
// other parameter (the biases) is stored exactly.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/model.h"
#include "core/trainer.h"

namespace sq {

// A compressible tensor: its short name and its slice of the flat parameter buffer.
struct WeightTensor {
  std::string name;  // "conv1", "fire2.squeeze", "fire2.expand1x1", "fire2.expand3x3", "fire2.bypass", "conv10"
  size_t offset = 0, count = 0;
};
std::vector<WeightTensor> weight_tensors(const Model& plan);  // in parameter-layout order

// Kept fraction per weight tensor (absent: 1, everything kept).
using PruneSchedule = std::map<std::string, double>;
// The paper's Table 1: expand3x3 33 % (fire2-7) and 30 % (fire8-9); 50 % for fire6 expand1x1,
// fire7 squeeze, fire8 expand1x1, fire9 squeeze; conv10 20 %; everything else kept.
PruneSchedule paper_schedule();
// "paper", "none", or comma-separated NAME=FRACTION entries (applied on top of none); names and
// fractions are checked against the model (throws sq::Error naming the bad entry).
PruneSchedule parse_schedule(const std::string& spec, const Model& plan);
// Step `step` of `steps` (1-based) of pruning in several steps: each tensor's pruned fraction
// grows linearly to its target (kept 1 - (1 - f) * step / steps); the last step is the schedule.
PruneSchedule step_schedule(const PruneSchedule& target, int step, int steps);
// Number of weights a tensor of `count` keeps at `fraction` (rounded up, as the paper's count).
size_t kept_count(size_t count, double fraction);

// Per-parameter mask (1 kept, 0 pruned) over the flat buffer: in each scheduled tensor the
// largest-magnitude weights are kept (ties: the lower index); other parameters are all kept.
std::vector<uint8_t> magnitude_mask(const Model& plan, const float* params,
                                    const PruneSchedule& schedule);
void apply_mask(float* values, const std::vector<uint8_t>& mask);  // zeroes the pruned entries

// One-dimensional k-means with linear initialisation: k centroids evenly spaced over
// [min, max], Lloyd iterations until no assignment changes (a fixed point: every value at a
// nearest centroid, every used centroid the mean of its values), or max_iter assignment passes
// (the codes then nearest to the last centroids). An empty cluster keeps its centroid.
// Deterministic.
struct KMeans {
  std::vector<float> centroids;  // ascending
  std::vector<uint16_t> codes;   // per value, index into centroids
  int iterations = 0;
};
KMeans kmeans_1d(const float* values, size_t n, int k, int max_iter = 1000);

// A weight tensor after pruning and weight sharing.
struct QuantizedTensor {
  std::vector<uint32_t> positions;  // ascending indices (within the tensor) of the kept weights
  std::vector<uint16_t> codes;      // per kept weight
  std::vector<float> codebook;      // 2^bits centroids
};

struct CompressedModel {
  ModelConfig config;
  std::vector<float> norm_mean, norm_std;  // the input normalization per channel (may be empty)
  int bits = 8;                          // code width of the weight codebooks (2..8)
  int index_bits = 8;                    // width of the relative index (1..12)
  std::vector<QuantizedTensor> weights;  // one per weight_tensors(), same order
  std::vector<float> exact;              // every other parameter, in layout order
};

// Quantizes the weights the mask keeps: per tensor, k-means with 2^bits centroids over its kept
// weights (pruned weights stay zero and out of the codebook).
CompressedModel quantize(const Model& plan, const float* params, const std::vector<uint8_t>& mask,
                         int bits, int index_bits = 8);
// The flat parameter buffer the compressed model stands for (pruned weights zero, kept weights
// their centroid, the rest exact).
std::vector<float> dequantize(const CompressedModel& cm, const Model& plan);
// Trained quantization: for each tensor, the gradient of each centroid is the sum of the
// gradients of the weights assigned to it (grads: the flat gradient buffer). One vector per
// tensor, as codebook.
std::vector<std::vector<float>> centroid_gradients(const CompressedModel& cm, const Model& plan,
                                                   const float* grads);

// The codebooks and their members as flat lists, for the GPU's trained quantization
// (kernels/cuda/compress_kernels.cuh): centroid g of the tensors' concatenated codebooks has the
// members members[start[g] .. start[g+1]), flat parameter indices in ascending order;
// centroid_of[i] is parameter i's centroid, -1 for a pruned weight, kNotShared outside the weight
// tensors (biases).
constexpr int32_t kNotShared = -2;
struct CentroidLists {
  std::vector<size_t> book_offset;  // per tensor, its first centroid
  std::vector<float> codebook;      // concatenated
  std::vector<int32_t> start, members, centroid_of;
};
CentroidLists centroid_lists(const CompressedModel& cm, const Model& plan);

// Pruned retraining: the gradient, the parameters and the momentum of pruned weights are held at
// zero (with zero momentum and zero weight, weight decay cannot move them either). On a GPU the
// mask is copied to the device at the first step (core/cuda_compress.cpp).
class MaskConstraint : public ParamConstraint {
 public:
  explicit MaskConstraint(std::vector<uint8_t> mask) : mask_(std::move(mask)) {}
  void on_gradient(float* grads) override { apply_mask(grads, mask_); }
  void after_update(float* params, float* momentum, const float*, double) override {
    apply_mask(params, mask_);
    apply_mask(momentum, mask_);
  }
  void on_gradient_device(float* grads, void* stream) override;
  void after_update_device(float* params, float* momentum, const float* grads, double lr,
                           void* stream) override;

 private:
  struct Device;
  void apply_device(float* x, void* stream);  // copies the mask to the device on first use
  std::vector<uint8_t> mask_;
  std::shared_ptr<Device> dev_;
};

// Trained quantization: the weights are shared through cm's codebooks. After each step every
// centroid moves by SGD with momentum on the sum of its members' gradients (the step's update of
// the weights themselves is discarded), and the weight tensors are rewritten from the codebooks;
// biases train as usual. finish() brings the trained codebooks into cm (from the device, after
// training on a GPU) and copies the trained biases (`params`, the trained flat buffer) into it.
class QuantizedConstraint : public ParamConstraint {
 public:
  QuantizedConstraint(CompressedModel& cm, const Model& plan, double momentum);
  void on_gradient(float*) override {}
  void after_update(float* params, float* momentum, const float* grads, double lr) override;
  void on_gradient_device(float*, void*) override {}
  void after_update_device(float* params, float* momentum, const float* grads, double lr,
                           void* stream) override;
  void finish(const float* params);

 private:
  struct Device;  // the codebooks, velocities and member lists on the GPU (core/cuda_compress.cpp)
  void finish_device();  // codebooks and velocities back from the GPU; drops dev_
  CompressedModel& cm_;
  std::vector<WeightTensor> wt_;
  const Model& plan_;
  double momentum_;
  std::vector<std::vector<double>> velocity_;  // per tensor, per centroid
  std::shared_ptr<Device> dev_;
};

// Bytes of one tensor's section in the file, by part.
struct SectionSize {
  std::string name;
  size_t params = 0, kept = 0, entries = 0;  // entries: kept weights plus filler entries
  size_t codebook_bytes = 0, table_bytes = 0, code_bytes = 0, index_bytes = 0;
  size_t total() const { return codebook_bytes + table_bytes + code_bytes + index_bytes; }
};
struct EncodeReport {
  std::vector<SectionSize> tensors;
  size_t exact_bytes = 0, header_bytes = 0, total_bytes = 0;
};

std::vector<uint8_t> encode_compressed(const CompressedModel& cm, EncodeReport* report = nullptr);
// Validates everything (lengths, indices, codes, tables, checksum); what: names the input in
// errors ("<what>: ...").
CompressedModel decode_compressed(const uint8_t* data, size_t size, const std::string& what);

void write_compressed(const std::string& path, const CompressedModel& cm, EncodeReport* report = nullptr);
CompressedModel read_compressed(const std::string& path);
bool is_compressed_file(const std::string& path);  // starts with the format's magic

}  // namespace sq
