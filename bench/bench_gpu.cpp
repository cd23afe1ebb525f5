// GPU benchmarks of issue 4 (run by scripts/gpu_check.sh on the lent GPU machine):
//  1. every Fire shape of squeezenet1.0 at batch 128 (3x224x224): forward and forward+backward
//     time of the project's kernels against cuDNN (fp32 both), with achieved GB/s of the
//     minimal traffic and TFLOP/s, for the notes file's floors;
//  2. training steps (forward, loss, backward, fused SGD) of squeezenet1.0 and 1.1 at 224x224
//     and the Fashion-MNIST configuration, batch 128, images/s, own and cuDNN convolutions.
// Timing: CUDA events around each repetition on one stream, 3 warm-up reps, median of --reps.
//   build/bench_gpu [--reps N] [--json FILE]
#include <cstdio>

#ifndef SQUEEZE_HAVE_CUDA
int main() {
  std::fprintf(stderr, "bench_gpu: built without CUDA\n");
  return 1;
}
#else
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/device_step.h"
#include "core/error.h"
#include "core/model.h"
#include "kernels/cuda/cuda_ops.h"

namespace {

using namespace sq;

struct Buf {
  float* p = nullptr;
  explicit Buf(size_t n, float scale = 0.1f) {
    SQ_CUDA(cudaMalloc(reinterpret_cast<void**>(&p), std::max<size_t>(n, 1) * sizeof(float)));
    std::vector<float> h(n);
    std::mt19937 r{uint32_t(n)};
    std::normal_distribution<float> nd(0.0f, scale);
    for (float& x : h) x = nd(r);
    SQ_CUDA(cudaMemcpy(p, h.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  }
  ~Buf() { cudaFree(p); }
};

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

ModelConfig fmnist_config() {
  ModelConfig c = preset("squeezenet1.0");
  c.stem = Stem::kSmall;
  c.in_c = 1, c.in_h = 28, c.in_w = 28, c.num_classes = 10;
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 20;
  std::string json_path;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--json") && i + 1 < argc) json_path = argv[++i];
    else { std::fprintf(stderr, "usage: bench_gpu [--reps N] [--json FILE]\n"); return 2; }
  }
  try {
    cuda::use_device(0);
    cudaDeviceProp prop;
    SQ_CUDA(cudaGetDeviceProperties(&prop, 0));
    std::printf("bench_gpu: %s (sm_%d%d), %d reps, median; fp32 without TF32 on both sides\n\n",
                prop.name, prop.major, prop.minor, reps);
    nlohmann::json out = {{"device", prop.name}, {"fire", nlohmann::json::array()},
                          {"train", nlohmann::json::array()}};
    const bool have_cudnn = cuda::cudnn_built();

    // ---- 1. Fire modules of squeezenet1.0 at batch 128 ------------------------------------
    const int N = 128;
    Model plan(preset("squeezenet1.0"), 1);
    std::printf("| fire (batch %d) | C→S→E1+E3 @ HxW | GFLOP fwd | MB min traffic | own fwd ms | "
                "cuDNN fwd ms | own fwd+bwd ms | cuDNN fwd+bwd ms | own/cuDNN (fwd+bwd) |\n"
                "|---|---|---:|---:|---:|---:|---:|---:|---:|\n", N);
    for (const Layer& l : plan.layers()) {
      if (l.kind != LayerKind::kFire) continue;
      FireGeom f = l.fire;
      f.N = N;
      const size_t plane = size_t(N) * f.H * f.W;
      const size_t nx = size_t(f.C) * plane, ns = size_t(f.S) * plane,
                   ny = size_t(f.E1 + f.E3) * plane;
      const size_t np = size_t(f.S) * (f.C + 1) + size_t(f.E1) * (f.S + 1) + size_t(f.E3) * (9 * f.S + 1);
      Buf x(nx, 1.0f), s(ns), y(ny), dy(ny, 1.0f), dx(nx), prm(np), grd(np);
      Buf ws(cuda::fire_workspace(f));
      float* P = prm.p;
      FireParams<const float> fp{P, P + size_t(f.S) * f.C, P + size_t(f.S) * (f.C + 1),
                                 P + size_t(f.S) * (f.C + 1) + size_t(f.E1) * f.S,
                                 P + size_t(f.S) * (f.C + 1) + size_t(f.E1) * (f.S + 1),
                                 P + size_t(f.S) * (f.C + 1) + size_t(f.E1) * (f.S + 1) + size_t(f.E3) * 9 * f.S};
      float* G = grd.p;
      FireParams<float> fg{G, G + (fp.bs - P), G + (fp.w1 - P), G + (fp.b1 - P), G + (fp.w3 - P),
                           G + (fp.b3 - P)};
      const double macs = double(plane) * (double(f.S) * f.C + double(f.E1) * f.S + 9.0 * f.E3 * f.S);
      const double min_bytes = 4.0 * (nx + 2.0 * ns + ny);  // read x, write and read s, write y
      double t[2][2] = {{0, 0}, {0, 0}};
      for (int impl = 0; impl < (have_cudnn ? 2 : 1); ++impl) {
        cuda::set_conv_impl(impl ? cuda::ConvImpl::kCudnn : cuda::ConvImpl::kOwn);
        t[impl][0] = time_ms(reps, [&] { cuda::fire_forward(f, x.p, fp, s.p, y.p, nullptr); });
        t[impl][1] = time_ms(reps, [&] {
          cuda::fire_forward(f, x.p, fp, s.p, y.p, nullptr);
          cuda::fire_backward(f, x.p, fp, s.p, y.p, dy.p, fg, dx.p, false, ws.p, nullptr);
        });
      }
      cuda::set_conv_impl(cuda::ConvImpl::kOwn);
      char shape[96];
      std::snprintf(shape, sizeof shape, "%d→%d→%d+%d @ %dx%d", f.C, f.S, f.E1, f.E3, f.H, f.W);
      std::printf("| %s | %s | %.2f | %.1f | %.3f | %.3f | %.3f | %.3f | %.2f |\n", l.name.c_str(),
                  shape, 2 * macs / 1e9, min_bytes / 1e6, t[0][0], t[1][0], t[0][1], t[1][1],
                  t[1][1] > 0 ? t[0][1] / t[1][1] : 0.0);
      out["fire"].push_back({{"layer", l.name}, {"shape", shape}, {"gflop_fwd", 2 * macs / 1e9},
                             {"min_mb", min_bytes / 1e6}, {"own_fwd_ms", t[0][0]},
                             {"cudnn_fwd_ms", t[1][0]}, {"own_fwdbwd_ms", t[0][1]},
                             {"cudnn_fwdbwd_ms", t[1][1]}});
    }

    // ---- 2. training steps, batch 128 -------------------------------------------------------
    std::printf("\n| training step (batch %d) | own img/s | cuDNN img/s |\n|---|---:|---:|\n", N);
    std::vector<std::pair<std::string, ModelConfig>> cfgs = {
        {"squeezenet1.0 224x224", preset("squeezenet1.0")},
        {"squeezenet1.1 224x224", preset("squeezenet1.1")},
        {"fmnist (1.0, small stem, 28x28)", fmnist_config()}};
    for (const auto& [name, cfg] : cfgs) {
      double ips[2] = {0, 0};
      for (int impl = 0; impl < (have_cudnn ? 2 : 1); ++impl) {
        cuda::set_conv_impl(impl ? cuda::ConvImpl::kCudnn : cuda::ConvImpl::kOwn);
        auto step = make_cuda_step(cfg, N, 0);
        Model host(cfg, 1);
        std::vector<float> params(host.layout().total), mom(host.layout().total, 0.0f);
        host.init_params(params.data(), "torchvision", 1);
        step->upload(params.data(), mom.data());
        std::vector<float> input(size_t(cfg.in_c) * cfg.in_h * cfg.in_w * N);
        std::mt19937 r(3);
        std::normal_distribution<float> nd;
        for (float& v : input) v = nd(r);
        std::vector<int32_t> labels(N);
        std::vector<uint64_t> keys(N);
        for (int n = 0; n < N; ++n) labels[n] = n % cfg.num_classes, keys[n] = uint64_t(n) * 7919;
        const double ms = time_ms(reps, [&] {
          double st[2] = {0, 0};
          step->forward_backward(input.data(), labels.data(), keys.data(), N, 1.0f / N, st);
          step->sgd(0.01f, 0.9f, 2e-4f);
        });
        ips[impl] = N / (ms / 1e3);
      }
      cuda::set_conv_impl(cuda::ConvImpl::kOwn);
      std::printf("| %s | %.0f | %.0f |\n", name.c_str(), ips[0], ips[1]);
      out["train"].push_back({{"config", name}, {"own_img_s", ips[0]}, {"cudnn_img_s", ips[1]}});
    }
    if (!json_path.empty()) std::ofstream(json_path) << out.dump(2) << "\n";
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpu: %s\n", e.what());
    return 1;
  }
  return 0;
}
#endif
