// The network: a layer table derived from a ModelConfig, the parameter layout (one flat buffer,
// tensors as named views in forward order), an activation plan (one arena, sized once for the
// largest batch), and forward/backward over them. Device-agnostic in shape; today it calls the
// CPU ops of kernels/ops.h.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/params.h"
#include "kernels/ops.h"

namespace sq {

enum class LayerKind { kConv, kMaxPool, kFire, kDropout, kAvgPool };

struct Layer {
  LayerKind kind;
  std::string name;    // "conv1", "pool1", "fire2", ..., "dropout", "conv10", "avgpool"
  std::string key;     // torchvision module prefix: "features.0", "features.3", "classifier.1"
  int in = -1, out = -1;  // activation ids (per-sample shapes in Model::acts)
  // kConv (conv1, conv10: always followed by ReLU)
  ConvGeom conv;
  size_t w = 0, b = 0;  // parameter offsets
  // kFire
  FireGeom fire;
  int squeeze_act = -1;  // s: (S, N, H, W)
  size_t ws = 0, bs = 0, w1 = 0, b1 = 0, w3 = 0, b3 = 0;
  Bypass bypass = Bypass::kNone;  // around this fire: none, identity (kSimple) or 1x1 conv (kComplex)
  int fire_act = -1;              // with a bypass: the fire's own output, before the add
  ConvGeom bypass_conv;
  size_t bw = 0, bb = 0;
  // kMaxPool
  PoolGeom pool;
  // bookkeeping for `squeeze info` (per sample)
  int64_t params = 0;
  int64_t macs = 0;
  size_t param_begin = 0, param_end = 0;  // this layer's slice of the flat buffer
};

struct ActShape {
  int c = 0, h = 0, w = 0;
  int64_t per_sample() const { return int64_t(c) * h * w; }
};

// T = float trains; T = double is the reference precision of the tests (same code, same ops).
template <class T>
class BasicModel {
 public:
  // Plans parameters and activations for batches of up to max_batch samples. Without
  // `allocate`, only the layer table and the parameter layout (no activation memory: forward and
  // backward must not be called), for reading files of models of any size.
  BasicModel(const ModelConfig& cfg, int max_batch, bool allocate = true);

  const ModelConfig& config() const { return cfg_; }
  const ParamLayout& layout() const { return layout_; }
  const std::vector<Layer>& layers() const { return layers_; }
  const std::vector<ActShape>& acts() const { return acts_; }
  int max_batch() const { return max_batch_; }
  // Activation `id` of the last forward ((C, N, H, W) channel-major, N of that forward).
  const T* activation(int id) const { return arena_.data() + act_offset_[id]; }
  size_t arena_bytes() const;  // activations + gradients + workspace, bytes

  // Fills params (layout().total values). "torchvision": kaiming-uniform convs, zero biases;
  // "xavier": Caffe's xavier filler (uniform +-sqrt(3/fan_in)), zero biases; both: conv10
  // ~ N(0, 0.01). Draws are keyed by (seed, tensor), independent of anything else.
  void init_params(T* params, const std::string& scheme, uint64_t seed) const;

  // Layer-sequential unit-variance rescaling (LSUV, Mishkin & Matas 2016) after init_params:
  // in forward order, each conv's weights and biases are scaled until the mean square of its
  // ReLU output on `input` (N samples) is `target` (0.5: a pre-activation of unit variance).
  // Data-dependent; conv10 included, so the initial logits are O(1) instead of O(0.01).
  // Data-parallel: each rank passes its share of the batch (N may be 0) and `allreduce_sum`, which
  // sums the per-rank statistics, so every rank applies the same scales.
  void lsuv_rescale(T* params, const T* input, int N, double target = 0.5,
                    const std::function<void(double*, size_t)>& allreduce_sum = {});

  // input (in_c, N, in_h, in_w) channel-major. train: dropout active with per-sample keys
  // dropout_keys[N]. Returns logits (N, num_classes), valid until the next forward.
  const T* forward(const T* params, const T* input, int N, bool train,
                       const uint64_t* dropout_keys);

  // After forward(train=true) with the same N: dlogits (N, num_classes) -> grads += dL/dparams.
  // on_ready(offset): called as soon as every gradient at flat offsets >= offset is final
  // (gradients complete back to front, so offset only decreases) — the reducer's hook.
  void backward(const T* params, const T* dlogits, T* grads, int N,
                const uint64_t* dropout_keys, const std::function<void(size_t)>& on_ready = {});

 private:
  T* act(int id) { return arena_.data() + act_offset_[id]; }
  void plan(bool allocate);

  ModelConfig cfg_;
  int max_batch_;
  ParamLayout layout_;
  std::vector<Layer> layers_;
  std::vector<ActShape> acts_;
  std::vector<size_t> act_offset_;  // in floats, into arena_ (sized for max_batch)
  std::vector<T> arena_;        // all activations
  std::vector<T> grad_a_, grad_b_;  // ping-pong activation gradients
  std::vector<T> ws_;               // op workspace
  int n_ = 0;                           // batch of the last forward
};

using Model = BasicModel<float>;
extern template class BasicModel<float>;
extern template class BasicModel<double>;

// For each layer: whether the layer after it applies the backward of the ReLU on its output, in
// its own input gradient's pass (CudaModel's backward), so that the layer skips that pass. Where:
// the layer is a convolution (always followed by ReLU) or a Fire module without a bypass (its
// output is the expands' ReLU), its output is read by the next layer alone, and that layer's input
// gradient is final when written: a pool, dropout, a convolution, or a Fire module without a
// bypass (a bypass adds a second term afterwards).
std::vector<char> relu_backward_by_next(const std::vector<Layer>& layers);

// --check-layers' bound on each layer's relative error, forward and parameter gradient, GPU
// against CPU: 1e-4 in fp32 (kNone); with the CPU rounding its convolutions' operands as the GPU's
// TF32 (1e-2) or BF16 (5e-2). docs/KERNELS.md ("--check-layers in TF32 and BF16") measures what
// rounding alone gives; Model.CheckLayersToleranceHoldsForRoundingAlone keeps it below the bound.
double check_layers_tolerance(OperandRounding r);

// Throws sq::Error "<what> need N GiB, more than the M GiB of memory available" when `bytes`
// exceed the memory available: /proc/meminfo's MemAvailable, or less where the process's cgroup
// limits it (cgroup_memory_available). A request that large is refused with a std::bad_alloc
// that names nothing or, with overcommit, granted and then ended by the kernel's OOM killer.
void require_memory(double bytes, const std::string& what);

// What the memory cgroups of this process still let it allocate, in bytes: over its cgroup and
// each ancestor that has a limit, the smallest of limit - (usage - inactive file pages), the
// file pages being cache the kernel reclaims first. cgroup v2 (memory.max, memory.current,
// memory.stat's inactive_file) and v1 (memory.limit_in_bytes, memory.usage_in_bytes,
// total_inactive_file) alike. Infinity where no cgroup is limited or none is readable: in a
// container, MemAvailable is the host's, and only the cgroup says what the container may use.
// The paths are parameters for the tests.
double cgroup_memory_available(const std::string& self_cgroup = "/proc/self/cgroup",
                               const std::string& cgroup_root = "/sys/fs/cgroup");

// Per-layer table like the paper's Table 1 (for `squeeze info`).
template <class T>
std::string model_table(const BasicModel<T>& m);
template <class T>
int64_t total_macs(const BasicModel<T>& m);

}  // namespace sq
