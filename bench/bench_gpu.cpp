// GPU benchmarks of issue 4 (run by scripts/gpu_check.sh on the lent GPU machine):
//  1. every Fire shape of squeezenet1.0 at batch 128 (3x224x224): forward and forward+backward
//     time of the project's kernels against cuDNN, at fp32 and at TF32 (and own BF16 against
//     cuDNN's BF16 convolutions alone, on BF16 NHWC tensors), with the forward FLOPs and minimal
//     bytes for the notes file's floors;
//     (1b: every convolution, forward, backward, and the backward's weight and bias part alone)
//  2. training steps (forward, loss, backward, fused SGD) of squeezenet1.0 and 1.1 at 224x224
//     and the Fashion-MNIST configuration, batch 128, images/s, for the same variants, and the
//     host time a step spends staging the next batch: as the trainer does, the batch's bytes and
//     their normalisation on the device (prefetch_bytes()), or with --float-batches its floats
//     (prefetch(), the schedule of runs a-d);
//  3. where a training step's time goes, per layer: squeezenet1.0 (3), the Fashion-MNIST
//     configuration (3f) and squeezenet1.1 (3b).
// Timing: CUDA events around each repetition on one stream, 3 warm-up reps, median of --reps.
//   build/bench_gpu [--reps N] [--json FILE] [--sections LIST] [--variants LIST] [--float-batches]
//     (--variants: the columns to run, by name, e.g. "own fp32,cuDNN fp32"; default all)
//   build/bench_gpu --profile CONFIG:MATH    one training step inside cudaProfilerStart/Stop (ncu)
#include <cstdio>

#ifndef SQUEEZE_HAVE_CUDA
int main() {
  std::fprintf(stderr, "bench_gpu: built without CUDA\n");
  return 1;
}
#else
#include <cuda_profiler_api.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_configs.h"
#include "core/config.h"
#include "core/cuda_model.h"
#include "core/data.h"
#include "core/device_step.h"
#include "core/error.h"
#include "core/model.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/device_buffer.h"

namespace {

using namespace sq;

// n values uniform in (-scale, scale)*sqrt(3) (variance scale^2), from a cheap hash: the
// buffers reach 10^8 floats and only need to be non-zero, non-constant data. On the device as
// floats, or as BF16 bits (rounded to nearest even, as the own BF16 operands are) for cuDNN's
// BF16 baseline.
template <class T, class Of>
cuda::DeviceBuffer<T> random_values(size_t n, float scale, Of of) {
  std::vector<T> h(n);
  uint64_t z = 0x9E3779B97F4A7C15ull ^ n;
  for (T& x : h) {
    z ^= z << 13, z ^= z >> 7, z ^= z << 17;  // xorshift64
    x = of(scale * 1.7320508f * (float(z >> 40) * (2.0f / 16777216.0f) - 1.0f));
  }
  return cuda::DeviceBuffer<T>(h);
}
cuda::DeviceBuffer<float> random_buffer(size_t n, float scale = 0.1f) {
  return random_values<float>(n, scale, [](float v) { return v; });
}
cuda::DeviceBuffer<uint16_t> random_bf16(size_t n, float scale = 0.1f) {
  return random_values<uint16_t>(n, scale, [](float v) {
    const float r = round_operand(v, OperandRounding::kBf16);
    uint32_t u;
    std::memcpy(&u, &r, 4);
    return uint16_t(u >> 16);
  });
}

// Median milliseconds of fn over reps, after 3 warm-up calls.
double time_ms(int reps, const std::function<void()>& fn) {
  cudaEvent_t a, b;
  SQ_CUDA(cudaEventCreate(&a));
  SQ_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) fn();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    SQ_CUDA(cudaEventRecord(a));
    fn();
    SQ_CUDA(cudaEventRecord(b));
    SQ_CUDA(cudaEventSynchronize(b));
    float ms = 0;
    SQ_CUDA(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Median host milliseconds of fn over reps (fn waits for its own work), after 3 warm-up calls.
double host_ms(int reps, const std::function<void()>& fn) {
  for (int i = 0; i < 3; ++i) fn();
  SQ_CUDA(cudaDeviceSynchronize());
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  SQ_CUDA(cudaDeviceSynchronize());
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// One training batch of a model and its starting weights, as sections 2 and --profile use them.
// The batch twice: as floats (input), and as the data set's bytes with a normalisation table
// (bytes, table), which the trainer's step takes (train_step picks by float_batches).
struct TrainData {
  std::vector<float> params, mom, input, table;
  std::vector<uint8_t> bytes;
  std::vector<int32_t> labels;
  std::vector<uint64_t> keys;
};
bool float_batches = false;  // --float-batches
TrainData train_data(const ModelConfig& cfg, int N) {
  TrainData d;
  Model host(cfg, 1);
  d.params.resize(host.layout().total);
  d.mom.assign(host.layout().total, 0.0f);
  host.init_params(d.params.data(), "torchvision", 1);
  d.input.resize(size_t(cfg.in_c) * cfg.in_h * cfg.in_w * N);
  std::mt19937 r(3);
  std::normal_distribution<float> nd;
  for (float& v : d.input) v = nd(r);
  d.bytes.resize(d.input.size());
  for (uint8_t& b : d.bytes) b = uint8_t(r() & 255u);
  Normalization norm;
  norm.mean.assign(size_t(cfg.in_c), 0.45f);
  norm.stddev.assign(size_t(cfg.in_c), 0.25f);
  d.table = normalization_table(norm);
  d.labels.resize(N);
  d.keys.resize(N);
  for (int n = 0; n < N; ++n) d.labels[n] = n % cfg.num_classes, d.keys[n] = uint64_t(n) * 7919;
  return d;
}
// The next batch into the step's free slot: its bytes, as the trainer's, or its floats.
void stage(DeviceStep& step, const TrainData& d, int N) {
  if (float_batches)
    step.prefetch(d.input.data(), d.labels.data(), d.keys.data(), N);
  else
    step.prefetch_bytes(d.bytes.data(), d.table.data(), d.labels.data(), d.keys.data(), N);
}
// As the trainer runs a step: the step on the prefetched batch, the next batch's copy to the
// device during it, the SGD update (finish() waits for the step). The host milliseconds of each
// stage() (the batch's copy into pinned memory and the copy's launch) go to *staging: when
// they and the launches outlast the GPU's step, the host bounds the step, not the kernels.
void train_step(DeviceStep& step, const TrainData& d, int N, std::vector<double>* staging = nullptr) {
  double st[2] = {0, 0};
  step.launch(nullptr, d.labels.data(), d.keys.data(), N, 1.0f / N);
  const auto t0 = std::chrono::steady_clock::now();
  stage(step, d, N);
  if (staging)
    staging->push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  step.finish(st);
  step.sgd(0.01f, 0.9f, 2e-4f);
}

// --profile CONFIG:MATH: three steps, then one between cudaProfilerStart and Stop, for a
// profiler that records only that range (ncu --profile-from-start off; gpu_check.sh profile).
int profile_one_step(const std::string& what, int N) {
  const size_t colon = what.find(':');
  const std::string name = what.substr(0, colon), math = colon == std::string::npos ? "fp32" : what.substr(colon + 1);
  if (math != "fp32" && math != "tf32" && math != "bf16")
    fail("--profile ", what, ": the precision must be fp32, tf32 or bf16");
  const ModelConfig cfg = bench::model_config(name);
  cuda::set_conv_impl(cuda::ConvImpl::kOwn);
  cuda::set_conv_math(math == "fp32" ? cuda::ConvMath::kFp32
                      : math == "tf32" ? cuda::ConvMath::kTf32 : cuda::ConvMath::kBf16);
  const TrainData d = train_data(cfg, N);
  auto step = make_cuda_step(cfg, N, 0);
  step->upload(d.params.data(), d.mom.data());
  stage(*step, d, N);
  for (int i = 0; i < 3; ++i) train_step(*step, d, N);
  SQ_CUDA(cudaDeviceSynchronize());
  SQ_CUDA(cudaProfilerStart());
  train_step(*step, d, N);
  SQ_CUDA(cudaDeviceSynchronize());
  SQ_CUDA(cudaProfilerStop());
  std::printf("bench_gpu: profiled one training step of %s, batch %d, own kernels, %s\n",
              name.c_str(), N, math.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 20;
  std::string json_path, sections = "0,1,1b,2,3,3f,3b", profile, only;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--json") && i + 1 < argc) json_path = argv[++i];
    else if (!std::strcmp(argv[i], "--sections") && i + 1 < argc) sections = argv[++i];
    else if (!std::strcmp(argv[i], "--profile") && i + 1 < argc) profile = argv[++i];
    else if (!std::strcmp(argv[i], "--variants") && i + 1 < argc) only = argv[++i];
    else if (!std::strcmp(argv[i], "--float-batches")) float_batches = true;
    else {
      std::fprintf(stderr, "usage: bench_gpu [--reps N] [--json FILE] [--sections 0,1,1b,2,3,3f,3b] "
                           "[--variants 'own fp32,cuDNN fp32,...'] [--float-batches] [--profile squeezenet1.0|squeezenet1.1|fmnist:fp32|tf32|bf16]\n");
      return 2;
    }
  }
  if (!profile.empty()) {
    try {
      cuda::use_device(0);
      return profile_one_step(profile, 128);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "bench_gpu: %s\n", e.what());
      return 1;
    }
  }
  // Sections: 0 ceilings, 1 Fire modules, 1b every convolution, 2 training img/s, 3, 3f, 3b step profiles.
  auto want = [&](const char* name) {
    return ("," + sections + ",").find("," + std::string(name) + ",") != std::string::npos;
  };
  try {
    cuda::use_device(0);
    cudaDeviceProp prop;
    SQ_CUDA(cudaGetDeviceProperties(&prop, 0));
    std::printf("bench_gpu: %s (sm_%d%d), %d reps, median of CUDA-event times\n\n", prop.name,
                prop.major, prop.minor, reps);
    nlohmann::json out = {{"device", prop.name}, {"fire", nlohmann::json::array()},
                          {"train", nlohmann::json::array()}};
    const bool have_cudnn = cuda::cudnn_built();

    // ---- 0. the memory ceilings: device copy (bytes read + written) and pinned host -> device
    if (want("0")) {
      const size_t n = size_t(256) << 20;  // 1 GiB of floats each way
      cuda::DeviceBuffer<float> a(n), b(n);
      SQ_CUDA(cudaMemset(a.get(), 1, n * sizeof(float)));
      const double d2d = time_ms(reps, [&] {
        SQ_CUDA(cudaMemcpyAsync(b.get(), a.get(), n * sizeof(float), cudaMemcpyDeviceToDevice));
      });
      const size_t m = size_t(32) << 20;  // 128 MiB, about a batch of 224x224 images
      cuda::PinnedBuffer<float> h(m);
      std::memset(h.get(), 1, m * sizeof(float));
      const double h2d = time_ms(reps, [&] {
        SQ_CUDA(cudaMemcpyAsync(a.get(), h.get(), m * sizeof(float), cudaMemcpyHostToDevice));
      });
      std::printf("device copy: %.0f GB/s (read + write); pinned host to device: %.1f GB/s\n\n",
                  2.0 * n * sizeof(float) / d2d / 1e6, m * sizeof(float) / h2d / 1e6);
      out["copy_gbs"] = 2.0 * n * sizeof(float) / d2d / 1e6;
      out["h2d_gbs"] = m * sizeof(float) / h2d / 1e6;
    }

    // Variants: (implementation, multiply). cuDNN has no BF16 variant on fp32 tensors: its BF16
    // convolutions take BF16 tensors, timed alone in sections 1 and 1b ("cuDNN bf16", below).
    struct Variant {
      const char* name;
      cuda::ConvImpl impl;
      cuda::ConvMath math;
    };
    std::vector<Variant> variants = {{"own fp32", cuda::ConvImpl::kOwn, cuda::ConvMath::kFp32},
                                     {"own tf32", cuda::ConvImpl::kOwn, cuda::ConvMath::kTf32},
                                     {"own bf16", cuda::ConvImpl::kOwn, cuda::ConvMath::kBf16}};
    if (have_cudnn) {
      variants.insert(variants.begin() + 1, {"cuDNN fp32", cuda::ConvImpl::kCudnn, cuda::ConvMath::kFp32});
      variants.insert(variants.begin() + 3, {"cuDNN tf32", cuda::ConvImpl::kCudnn, cuda::ConvMath::kTf32});
    }
    auto named = [&](const char* name) {
      return only.empty() || ("," + only + ",").find("," + std::string(name) + ",") != std::string::npos;
    };
    // cuDNN's BF16 convolutions on BF16 NHWC tensors (filters K, R, S, C), no bias, ReLU or bias
    // gradient: a lower bound on a cuDNN BF16 layer, the last column of sections 1 and 1b.
    const bool bf16_base = have_cudnn && named("cuDNN bf16");
    if (!only.empty()) {  // --variants: those named, in the usual order
      std::vector<Variant> kept;
      for (const Variant& v : variants)
        if (named(v.name)) kept.push_back(v);
      if (kept.empty() && !bf16_base) {
        std::fprintf(stderr, "bench_gpu: --variants '%s' names none of the variants\n", only.c_str());
        return 2;
      }
      variants = kept;
    }
    auto use = [](const Variant& v) {
      cuda::set_conv_impl(v.impl);
      cuda::set_conv_math(v.math);
    };
    auto header = [&](const char* first, const char* unit, bool with_bf16_base = false) {
      std::printf("| %s |", first);
      for (const Variant& v : variants) std::printf(" %s %s |", v.name, unit);
      if (with_bf16_base) std::printf(" cuDNN bf16 (convolutions alone) %s |", unit);
      std::printf("\n|---|");
      for (size_t i = 0; i < variants.size() + (with_bf16_base ? 1 : 0); ++i) std::printf("---:|");
      std::printf("\n");
    };
    // Runs fn, printing " failed |" and the reason on stderr if it throws.
    auto guarded = [](const std::string& what, const std::function<void()>& fn) {
      try {
        fn();
      } catch (const std::exception& e) {
        std::printf(" failed |");
        std::fprintf(stderr, "bench_gpu: %s: %s\n", what.c_str(), e.what());
      }
    };

    const int N = 128;
    Model plan(preset("squeezenet1.0"), 1);
    // ---- 1. Fire modules of squeezenet1.0 at batch 128 ------------------------------------
    if (want("1")) {
      std::printf("Fire modules, batch %d: forward ms / forward+backward ms (GFLOP forward and "
                  "minimal MB moved in the first column)\n\n", N);
      header("fire: C→S→E1+E3 @ HxW, GFLOP, MB", "fwd / fwd+bwd ms", bf16_base);
      for (const Layer& l : plan.layers()) {
        if (l.kind != LayerKind::kFire) continue;
        FireGeom f = l.fire;
        f.N = N;
        const size_t plane = size_t(N) * f.H * f.W;
        const size_t nx = size_t(f.C) * plane, ns = size_t(f.S) * plane,
                     ny = size_t(f.E1 + f.E3) * plane;
        const size_t o_bs = size_t(f.S) * f.C, o_w1 = o_bs + f.S, o_b1 = o_w1 + size_t(f.E1) * f.S,
                     o_w3 = o_b1 + f.E1, o_b3 = o_w3 + size_t(f.E3) * 9 * f.S, np = o_b3 + f.E3;
        auto x = random_buffer(nx, 1.0f), s = random_buffer(ns), y = random_buffer(ny),
             dy = random_buffer(ny, 1.0f), dx = random_buffer(nx), prm = random_buffer(np),
             grd = random_buffer(np), ws = random_buffer(cuda::fire_workspace(f));
        const float* P = prm.get();
        FireParams<const float> fp{P, P + o_bs, P + o_w1, P + o_b1, P + o_w3, P + o_b3};
        float* G = grd.get();
        FireParams<float> fg{G, G + o_bs, G + o_w1, G + o_b1, G + o_w3, G + o_b3};
        const double macs = double(plane) * (double(f.S) * f.C + double(f.E1) * f.S + 9.0 * f.E3 * f.S);
        const double min_bytes = 4.0 * (nx + 2.0 * ns + ny);  // read x, write and read s, write y
        char shape[128];
        std::snprintf(shape, sizeof shape, "%s: %d→%d→%d+%d @ %dx%d, %.2f, %.0f", l.name.c_str(),
                      f.C, f.S, f.E1, f.E3, f.H, f.W, 2 * macs / 1e9, min_bytes / 1e6);
        std::printf("| %s |", shape);
        nlohmann::json row = {{"layer", l.name}, {"gflop_fwd", 2 * macs / 1e9}, {"min_mb", min_bytes / 1e6}};
        for (const Variant& v : variants) {
          use(v);
          try {
            const double fwd =
                time_ms(reps, [&] { cuda::fire_forward(f, x.get(), fp, s.get(), y.get(), nullptr, ws.get()); });
            const double both = time_ms(reps, [&] {
              cuda::fire_forward(f, x.get(), fp, s.get(), y.get(), nullptr, ws.get());
              cuda::fire_backward(f, x.get(), fp, s.get(), y.get(), dy.get(), fg, dx.get(), false, ws.get(), nullptr);
            });
            std::printf(" %.3f / %.3f |", fwd, both);
            row[std::string(v.name) + " fwd ms"] = fwd;
            row[std::string(v.name) + " fwd+bwd ms"] = both;
          } catch (const std::exception& e) {
            std::printf(" failed |");
            std::fprintf(stderr, "bench_gpu: %s, %s: %s\n", l.name.c_str(), v.name, e.what());
          }
        }
        if (bf16_base) {
          // The Fire's three convolutions in cuDNN BF16: squeeze, then both expands from s into
          // their own tensors (NHWC has no channel slices); backward, both expands' input
          // gradients summed into ds (beta 1 for the second), then the squeeze's. Without the
          // ReLUs' passes, biases or the concatenation.
          guarded(l.name + ", cuDNN bf16", [&] {
            const ConvGeom gs = f.squeeze(), g1 = f.expand1(), g3 = f.expand3();
            const size_t n1 = size_t(f.E1) * plane, n3 = size_t(f.E3) * plane;
            auto bx = random_bf16(nx, 1.0f), bs = random_bf16(ns), by1 = random_bf16(n1), by3 = random_bf16(n3),
                 bdy1 = random_bf16(n1, 1.0f), bdy3 = random_bf16(n3, 1.0f), bds = random_bf16(ns),
                 bdx = random_bf16(nx), bws = random_bf16(size_t(f.S) * f.C), bw1 = random_bf16(size_t(f.E1) * f.S),
                 bw3 = random_bf16(size_t(f.E3) * 9 * f.S), bgs = random_bf16(size_t(f.S) * f.C),
                 bg1 = random_bf16(size_t(f.E1) * f.S), bg3 = random_bf16(size_t(f.E3) * 9 * f.S);
            auto forward = [&] {
              cuda::cudnn_bf16_forward(gs, bx.get(), bws.get(), bs.get(), nullptr);
              cuda::cudnn_bf16_forward(g1, bs.get(), bw1.get(), by1.get(), nullptr);
              cuda::cudnn_bf16_forward(g3, bs.get(), bw3.get(), by3.get(), nullptr);
            };
            const double fwd = time_ms(reps, forward);
            const double both = time_ms(reps, [&] {
              forward();
              cuda::cudnn_bf16_backward(g3, bs.get(), bw3.get(), bdy3.get(), bg3.get(), bds.get(), false, nullptr);
              cuda::cudnn_bf16_backward(g1, bs.get(), bw1.get(), bdy1.get(), bg1.get(), bds.get(), true, nullptr);
              cuda::cudnn_bf16_backward(gs, bx.get(), bws.get(), bds.get(), bgs.get(), bdx.get(), false, nullptr);
            });
            std::printf(" %.3f / %.3f |", fwd, both);
            row["cuDNN bf16 fwd ms"] = fwd;
            row["cuDNN bf16 fwd+bwd ms"] = both;
          });
        }
        std::printf("\n");
        out["fire"].push_back(row);
      }
    }

    // ---- 1b. every convolution of squeezenet1.0 at batch 128, forward and backward apart ------
    if (want("1b")) {
      std::printf("\nConvolutions of squeezenet1.0, batch %d: forward ms / backward ms (weights, bias "
                  "and input gradient) / of that, weights and bias alone\n\n", N);
      header("conv: C→K RxS/stride @ HxW", "fwd / bwd / wts ms", bf16_base);
      out["conv"] = nlohmann::json::array();
      {
        std::vector<std::pair<std::string, ConvGeom>> convs;
        for (const Layer& l : plan.layers()) {
          if (l.kind == LayerKind::kConv) convs.push_back({l.name, l.conv});
          if (l.kind != LayerKind::kFire) continue;
          convs.push_back({l.name + " squeeze", l.fire.squeeze()});
          convs.push_back({l.name + " expand1x1", l.fire.expand1()});
          convs.push_back({l.name + " expand3x3", l.fire.expand3()});
        }
        for (auto [name, g] : convs) {
          g.N = N;
          const size_t nx = size_t(g.C) * N * g.H * g.W, ny = size_t(g.K) * N * g.P() * g.Q(),
                       nw = size_t(g.K) * g.C * g.R * g.S;
          auto x = random_buffer(nx, 1.0f), y = random_buffer(ny), dz = random_buffer(ny, 1.0f),
               dx = random_buffer(nx), w = random_buffer(nw), b = random_buffer(g.K),
               dw = random_buffer(nw), db = random_buffer(g.K),
               ws = random_buffer(std::max(cuda::conv_backward_workspace(g), cuda::conv_forward_workspace(g)));
          std::printf("| %s: %d→%d %dx%d/%d @ %dx%d |", name.c_str(), g.C, g.K, g.R, g.S, g.stride, g.H, g.W);
          nlohmann::json row = {{"conv", name}, {"gflop_fwd", 2.0 * ny * g.C * g.R * g.S / 1e9}};
          for (const Variant& v : variants) {
            use(v);
            try {
              const double fwd = time_ms(reps, [&] {
                cuda::conv_forward(g, x.get(), w.get(), b.get(), y.get(), true, nullptr, ws.get());
              });
              const double bwd = time_ms(reps, [&] {
                cuda::conv_backward(g, x.get(), w.get(), dz.get(), dw.get(), db.get(), dx.get(), false,
                                    ws.get(), nullptr);
              });
              // Without dx: the weight and bias gradients alone (bwd - wts: the input gradient).
              const double wts = time_ms(reps, [&] {
                cuda::conv_backward(g, x.get(), w.get(), dz.get(), dw.get(), db.get(), nullptr, false,
                                    ws.get(), nullptr);
              });
              std::printf(" %.3f / %.3f / %.3f |", fwd, bwd, wts);
              row[std::string(v.name) + " fwd ms"] = fwd;
              row[std::string(v.name) + " bwd ms"] = bwd;
              row[std::string(v.name) + " bwd weights ms"] = wts;
            } catch (const std::exception& e) {
              std::printf(" failed |");
              std::fprintf(stderr, "bench_gpu: %s, %s: %s\n", name.c_str(), v.name, e.what());
            }
          }
          if (bf16_base) {  // the same products on BF16 NHWC tensors; weights alone: no dx
            guarded(name + ", cuDNN bf16", [&] {
              auto bx = random_bf16(nx, 1.0f), bw = random_bf16(nw), by = random_bf16(ny),
                   bdz = random_bf16(ny, 1.0f), bdw = random_bf16(nw), bdx = random_bf16(nx);
              const double fwd = time_ms(reps, [&] { cuda::cudnn_bf16_forward(g, bx.get(), bw.get(), by.get(), nullptr); });
              const double bwd = time_ms(reps, [&] {
                cuda::cudnn_bf16_backward(g, bx.get(), bw.get(), bdz.get(), bdw.get(), bdx.get(), false, nullptr);
              });
              const double wts = time_ms(reps, [&] {
                cuda::cudnn_bf16_backward(g, bx.get(), bw.get(), bdz.get(), bdw.get(), nullptr, false, nullptr);
              });
              std::printf(" %.3f / %.3f / %.3f |", fwd, bwd, wts);
              row["cuDNN bf16 fwd ms"] = fwd;
              row["cuDNN bf16 bwd ms"] = bwd;
              row["cuDNN bf16 bwd weights ms"] = wts;
            });
          }
          std::printf("\n");
          out["conv"].push_back(row);
        }
      }
    }

    // ---- 2. training steps, batch 128 -------------------------------------------------------
    if (want("2")) {
      std::printf("\nTraining step (forward, loss, backward, SGD), batch %d, images/s, the batch from the "
                  "host as %s\n\n", N, float_batches ? "floats (--float-batches)" : "bytes (as the trainer)");
      header("config", "img/s");
      std::vector<std::pair<std::string, ModelConfig>> cfgs = {
          {"squeezenet1.0 224x224", preset("squeezenet1.0")},
          {"squeezenet1.1 224x224", preset("squeezenet1.1")},
          {"fmnist (1.0, small stem, 28x28)", bench::fmnist_config()}};
      std::string staging_line;  // the median prefetch() of each config, printed after the table
      for (const auto& [name, cfg] : cfgs) {
        std::printf("| %s |", name.c_str());
        nlohmann::json row = {{"config", name}};
        const TrainData d = train_data(cfg, N);
        std::vector<double> staged;
        for (const Variant& v : variants) {
          use(v);
          try {
          auto step = make_cuda_step(cfg, N, 0);
          step->upload(d.params.data(), d.mom.data());
          // Host clock per step, as the trainer runs it (train_step).
          stage(*step, d, N);
          std::vector<double> staging;
          const double ms = host_ms(reps, [&] { train_step(*step, d, N, &staging); });
          std::sort(staging.begin(), staging.end());
          const double staging_ms = staging[staging.size() / 2];
          std::printf(" %.0f |", N / (ms / 1e3));
          row[std::string(v.name) + " img/s"] = N / (ms / 1e3);
          row[std::string(v.name) + " staging ms"] = staging_ms;
          staged.push_back(staging_ms);
          } catch (const std::exception& e) {
            std::printf(" failed |");
            std::fprintf(stderr, "bench_gpu: %s, %s: %s\n", name.c_str(), v.name, e.what());
          }
        }
        std::printf("\n");
        out["train"].push_back(row);
        char part[160];
        std::snprintf(part, sizeof part, "%s%s %.2f-%.2f", staging_line.empty() ? "" : "; ", name.c_str(),
                      staged.empty() ? 0.0 : *std::min_element(staged.begin(), staged.end()),
                      staged.empty() ? 0.0 : *std::max_element(staged.begin(), staged.end()));
        staging_line += part;
      }
      std::printf("\nHost ms a step staging the next batch (its %s into pinned memory; median, range over "
                  "the columns): %s\n", float_batches ? "floats" : "bytes", staging_line.c_str());
      out["train batches"] = float_batches ? "floats" : "bytes";
    }

    // ---- 3. where a training step's time goes: per layer, forward and backward ---------------
    // (3: squeezenet1.0 at 224x224; 3f: the Fashion-MNIST configuration)
    auto profile_layers = [&](const char* title, const ModelConfig& cfg, const char* key) {
      std::printf("\n%s training step, batch %d, per layer (ms, median of %d; the first "
                  "backward row includes the loss)\n\n", title, N, reps);
      out[key] = nlohmann::json::array();
      {
        Model host(cfg, 1);
        std::vector<float> params(host.layout().total);
        host.init_params(params.data(), "torchvision", 1);
        cuda::DeviceBuffer<float> P(params), G(params.size()), DL(size_t(N) * cfg.num_classes);
        auto X = random_buffer(size_t(cfg.in_c) * cfg.in_h * cfg.in_w * N, 1.0f);
        std::vector<int32_t> labels(N);
        std::vector<uint64_t> keys(N);
        for (int n = 0; n < N; ++n) labels[n] = n % cfg.num_classes, keys[n] = uint64_t(n) * 7919;
        cuda::DeviceBuffer<int32_t> Y(labels);
        cuda::DeviceBuffer<uint64_t> KEYS(keys);
        cuda::DeviceBuffer<double> R(2), LWS(cuda::softmax_xent_workspace(N));
        std::vector<std::string> names;
        std::vector<std::vector<std::vector<float>>> times;  // [variant][label][rep]
        for (const Variant& v : variants) {
          use(v);
          times.emplace_back();
          try {
            CudaModel m(cfg, N);
            m.set_profiling(true);
            for (int r = 0; r < reps + 3; ++r) {
              const float* logits = m.forward(P.get(), X.get(), N, true, KEYS.get());
              cuda::softmax_xent(N, cfg.num_classes, logits, Y.get(), 1.0f / N, DL.get(), R.get(),
                                 LWS.get(), nullptr);
              m.backward(P.get(), DL.get(), G.get(), N, KEYS.get());
              const auto t = m.layer_times();
              if (r < 3) continue;
              if (names.empty())
                for (const auto& [label, ms] : t) names.push_back(label);
              times.back().resize(t.size());
              for (size_t i = 0; i < t.size(); ++i) times.back()[i].push_back(t[i].second);
            }
          } catch (const std::exception& e) {
            std::fprintf(stderr, "bench_gpu: layer profile, %s: %s\n", v.name, e.what());
          }
        }
        header("layer", "ms");
        std::vector<double> total(variants.size(), 0.0);
        for (size_t i = 0; i < names.size(); ++i) {
          std::printf("| %s |", names[i].c_str());
          nlohmann::json row = {{"layer", names[i]}};
          for (size_t vi = 0; vi < variants.size(); ++vi) {
            if (times[vi].size() <= i) {
              std::printf(" - |");
              continue;
            }
            std::vector<float> t = times[vi][i];
            std::sort(t.begin(), t.end());
            std::printf(" %.3f |", t[t.size() / 2]);
            total[vi] += t[t.size() / 2];
            row[std::string(variants[vi].name) + " ms"] = t[t.size() / 2];
          }
          std::printf("\n");
          out[key].push_back(row);
        }
        std::printf("| sum of medians |");
        for (double t : total) std::printf(" %.3f |", t);
        std::printf("\n");
      }
    };
    if (want("3")) profile_layers("squeezenet1.0", preset("squeezenet1.0"), "layers");
    if (want("3f")) profile_layers("fmnist (1.0, small stem, 28x28)", bench::fmnist_config(), "layers_fmnist");
    if (want("3b")) profile_layers("squeezenet1.1", preset("squeezenet1.1"), "layers_11");

    cuda::set_conv_impl(cuda::ConvImpl::kOwn);
    cuda::set_conv_math(cuda::ConvMath::kFp32);
    if (!json_path.empty()) std::ofstream(json_path) << out.dump(2) << "\n";
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpu: %s\n", e.what());
    return 1;
  }
  return 0;
}
#endif
