// Training-step throughput: one full step of the trainer's inner loop on the CPU,
//   forward(train) + softmax_xent + zero grads + backward + sgd_momentum_update,
// for squeezenet1.0 and squeezenet1.1 at 3x224x224 (1000 classes) and the Fashion-MNIST
// configuration (squeezenet1.0, small stem, 1x28x28, 10 classes). Reports items_per_second =
// images/s (real time: the step runs on all threads). Random input and labels, fixed for the run;
// everything is allocated before the timed loop. bench/pytorch_step.py times the same step in
// PyTorch and bench/compare_step.sh runs both side by side.
//
// Options (ours; every other argument goes to Google Benchmark):
//   --threads=N        threads for OpenMP and OpenBLAS (also env SQ_THREADS; 0 or unset: all cores)
//   --batch=N          batch size (also env SQ_BENCH_BATCH; default 16)
//   --profile          print a per-layer / per-op time breakdown per configuration instead of
//                      running the benchmarks (also env SQ_BENCH_PROFILE=1)
//   --profile_steps=N  timed steps for the breakdown (default 5, after 2 warm-up steps)
//   --profile_config=S only these configurations (comma-separated names, e.g. squeezenet1.0)
//
// Benchmark names: step/<config>/b<batch>, config in {squeezenet1.0, squeezenet1.1, fmnist};
// maxpool/<config>/<pool layer>/b<batch>: one max-pool layer's forward and backward;
// host_batch/<floats|bytes>/<c>x<hw>/b<batch>: the host's share of a GPU step, the next batch
// assembled and staged, as floats or as the data set's bytes.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_configs.h"
#include "core/config.h"
#include "core/data.h"
#include "core/model.h"
#include "core/rng.h"
#include "kernels/cpu/conv_internal.h"
#include "kernels/ops.h"
#include "launch/threads.h"

namespace {

using sq::Bypass;
using sq::Layer;
using sq::LayerKind;
using sq::Model;
using sq::ModelConfig;
using sq::PoolGeom;
using Clock = std::chrono::steady_clock;

constexpr float kLr = 0.01f, kMomentum = 0.9f, kWeightDecay = 2e-4f;

struct BenchConfig {
  std::string name;
  ModelConfig model;
};

std::vector<BenchConfig> bench_configs() {
  std::vector<BenchConfig> v;
  v.push_back({"squeezenet1.0", sq::preset("squeezenet1.0")});
  v.push_back({"squeezenet1.1", sq::preset("squeezenet1.1")});
  v.push_back({"fmnist", sq::bench::fmnist_config()});
  return v;
}

// Everything one step touches, allocated once.
struct StepState {
  Model model;
  int N;
  int K;
  std::vector<float> params, grads, momentum, input, dlogits;
  std::vector<int32_t> labels;
  std::vector<uint64_t> keys;
  uint64_t step = 0;
  double last_loss = 0;

  StepState(const ModelConfig& cfg, int batch)
      : model(cfg, batch), N(batch), K(cfg.num_classes) {
    const size_t P = model.layout().total;
    params.resize(P);
    grads.assign(P, 0.0f);
    momentum.assign(P, 0.0f);
    model.init_params(params.data(), "torchvision", 42);
    std::mt19937 rng(1234);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    input.resize(size_t(cfg.in_c) * cfg.in_h * cfg.in_w * batch);
    for (float& x : input) x = nd(rng);
    std::uniform_int_distribution<int> ud(0, K - 1);
    labels.resize(batch);
    for (int32_t& l : labels) l = ud(rng);
    keys.resize(batch);
    dlogits.resize(size_t(K) * batch);
  }

  // One training step, exactly as core/trainer.cpp does it for a single rank.
  void run_step() {
    for (int i = 0; i < N; ++i) keys[i] = sq::sample_key(7, sq::RngStream::kDropout, step, i);
    ++step;
    const float* logits = model.forward(params.data(), input.data(), N, true, keys.data());
    last_loss = sq::softmax_xent(N, K, logits, labels.data(), 1.0f / float(N), dlogits.data(),
                                 static_cast<int*>(nullptr));
    std::fill(grads.begin(), grads.end(), 0.0f);
    model.backward(params.data(), dlogits.data(), grads.data(), N, keys.data());
    sq::sgd_momentum_update(params.size(), params.data(), grads.data(), momentum.data(), kLr,
                            kMomentum, kWeightDecay);
  }
};

int g_batch = 16;
int g_threads = 0;

// One state per configuration, kept across Google Benchmark's repeated calls of the function
// (so warm-up and allocation happen once per configuration).
StepState& state_for(const BenchConfig& c) {
  static std::map<std::string, std::unique_ptr<StepState>> states;
  auto& s = states[c.name];
  if (!s) {
    s = std::make_unique<StepState>(c.model, g_batch);
    for (int i = 0; i < 2; ++i) s->run_step();  // warm-up: first touch, BLAS buffers
  }
  return *s;
}

void BM_Step(benchmark::State& state, BenchConfig cfg) {
  StepState& s = state_for(cfg);
  for (auto _ : state) {
    s.run_step();
    benchmark::DoNotOptimize(s.params.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(int64_t(state.iterations()) * s.N);
  state.counters["batch"] = s.N;
  state.counters["threads"] = sq::threads();
  state.counters["loss"] = s.last_loss / s.N;  // mean loss of the last step (sanity: finite)
  state.SetLabel(sq::arch_name(cfg.model.arch) + " " + sq::stem_name(cfg.model.stem) + " " +
                 std::to_string(cfg.model.in_c) + "x" + std::to_string(cfg.model.in_h) + "x" +
                 std::to_string(cfg.model.in_w) + " classes " +
                 std::to_string(cfg.model.num_classes));
}

// One max-pool layer of a configuration, forward then backward, on random input of the step's
// batch (the two pool paths of kernels/cpu/pool.cpp: the window table for planes of at most 1024
// outputs, the row path above).
void BM_MaxPool(benchmark::State& state, sq::PoolGeom g) {
  const size_t nx = size_t(g.C) * g.N * g.H * g.W, ny = size_t(g.C) * g.N * g.P() * g.Q();
  std::vector<float> x(nx), dx(nx), y(ny), dy(ny);
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  for (float& v : x) v = nd(rng);
  for (float& v : dy) v = nd(rng);
  for (auto _ : state) {
    sq::maxpool_forward(g, x.data(), y.data());
    sq::maxpool_backward(g, x.data(), dy.data(), dx.data());
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(int64_t(state.iterations()) * g.N);
  state.SetLabel(std::to_string(g.C) + "x" + std::to_string(g.N) + "x" + std::to_string(g.H) + "x" +
                 std::to_string(g.W) + " -> " + std::to_string(g.P()) + "x" + std::to_string(g.Q()));
}

// The host's share of a GPU training step: the next batch assembled (crop 4, flip) from a data set
// of 256 images in memory and copied into a staging buffer (the pinned slot of DeviceStep), as
// floats (assemble_batch + prefetch(): the schedule until session 22) or as the data set's bytes
// (assemble_batch_bytes + prefetch_bytes(): the trainer's since), whose normalisation the GPU does.
void BM_HostBatch(benchmark::State& state, int c, int hw, bool bytes) {
  sq::Dataset d;
  d.name = "synthetic", d.n = 256, d.c = c, d.h = hw, d.w = hw, d.num_classes = 10;
  d.images.resize(size_t(d.n) * c * hw * hw);
  std::mt19937 rng(5);
  for (uint8_t& p : d.images) p = uint8_t(rng() & 255u);
  d.labels.assign(size_t(d.n), 1);
  const sq::Normalization norm = sq::compute_normalization(d);
  sq::Augment aug;
  aug.crop_pad = 4, aug.hflip = true;
  const int N = g_batch;
  std::vector<int64_t> idx(static_cast<size_t>(N));
  for (int i = 0; i < N; ++i) idx[size_t(i)] = int64_t(rng() % uint32_t(d.n));
  const size_t n = size_t(N) * c * hw * hw;
  std::vector<float> f(bytes ? 0 : n), fs(bytes ? 0 : n);
  std::vector<uint8_t> b(bytes ? n : 0), bs(bytes ? n : 0);
  std::vector<int32_t> labels(static_cast<size_t>(N));
  int64_t epoch = 0;
  for (auto _ : state) {
    if (bytes) {
      sq::assemble_batch_bytes(d, idx.data(), N, aug, 1, epoch, b.data(), labels.data());
      sq::copy_parallel(bs.data(), b.data(), n);
    } else {
      sq::assemble_batch(d, idx.data(), N, norm, aug, 1, epoch, f.data(), labels.data());
      sq::copy_parallel(fs.data(), f.data(), n * sizeof(float));
    }
    ++epoch;  // other draws each time
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(int64_t(state.iterations()) * N);
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(n * (bytes ? 1 : sizeof(float))));
  state.counters["threads"] = sq::threads();
}

// ---- profile: the same step, op by op --------------------------------------------------------
// Replays Model::forward/backward layer by layer on our own buffers (mirroring core/model.cpp
// and kernels/cpu/fire.cpp), timing each op, and times the GEMMs of each convolution on their
// own (same shapes, same BLAS calls) so that conv time splits into GEMM and the rest (im2col,
// col2im, bias, ReLU). The replay's gradients are checked against Model::backward's.

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

struct Timer {
  std::map<std::string, double> ms;  // key -> total ms
  std::vector<std::string> order;
  template <class F>
  void time(const std::string& key, F&& f) {
    auto t0 = Clock::now();
    f();
    double dt = ms_since(t0);
    if (!ms.count(key)) order.push_back(key);
    ms[key] += dt;
  }
};

// The GEMMs of conv_forward / conv_backward for geometry g, on scratch buffers.
struct GemmOnly {
  std::vector<float> a, b, c;
  void fwd(const sq::ConvGeom& g) {
    const int64_t PQ = int64_t(g.P()) * g.Q(), NPQ = g.N * PQ;
    const int CRS = g.C * g.R * g.S;
    const int chunk = g.is_pointwise() ? g.N : sq::cpu::conv_chunk_images(g);
    ensure(size_t(g.K) * CRS, size_t(CRS) * chunk * PQ, size_t(g.K) * NPQ);
    for (int n0 = 0; n0 < g.N; n0 += chunk) {
      const int nb = std::min(chunk, g.N - n0);
      const int64_t cols = nb * PQ;
      sq::gemm<float>(false, false, g.K, int(cols), CRS, 1.0f, a.data(), CRS, b.data(), int(cols),
                      0.0f, c.data() + n0 * PQ, int(NPQ));
    }
  }
  void bwd(const sq::ConvGeom& g, bool dx) {
    const int64_t PQ = int64_t(g.P()) * g.Q(), NPQ = g.N * PQ;
    const int CRS = g.C * g.R * g.S;
    const int chunk = g.is_pointwise() ? g.N : sq::cpu::conv_chunk_images(g);
    ensure(size_t(g.K) * CRS, size_t(CRS) * chunk * PQ, size_t(g.K) * NPQ);
    for (int n0 = 0; n0 < g.N; n0 += chunk) {
      const int nb = std::min(chunk, g.N - n0);
      const int64_t cols = nb * PQ;
      // dW += dz (K x cols) * col^T; dcol = W^T * dz
      sq::gemm<float>(false, true, g.K, CRS, int(cols), 1.0f, c.data() + n0 * PQ, int(NPQ),
                      b.data(), int(cols), 1.0f, a.data(), CRS);
      if (dx)
        sq::gemm<float>(true, false, CRS, int(cols), g.K, 1.0f, a.data(), CRS,
                        c.data() + n0 * PQ, int(NPQ), 0.0f, b.data(), int(cols));
    }
  }
  void ensure(size_t na, size_t nb, size_t nc) {
    if (a.size() < na) a.assign(na, 0.01f);
    if (b.size() < nb) b.assign(nb, 0.01f);
    if (c.size() < nc) c.assign(nc, 0.01f);
  }
};

double conv_flops(const sq::ConvGeom& g) {  // forward FLOPs (2 per MAC)
  return 2.0 * g.N * double(g.K) * g.C * g.R * g.S * g.P() * g.Q();
}

void profile_config(const BenchConfig& cfg, int steps) {
  const int N = g_batch;
  StepState s(cfg.model, N);
  Model& m = s.model;
  const auto& L = m.layers();
  const auto& A = m.acts();

  // Own activation buffers (one per activation id), gradient ping-pong, workspace.
  std::vector<std::vector<float>> act(A.size());
  size_t largest = 0, wsz = 1;
  for (size_t i = 0; i < A.size(); ++i) {
    act[i].assign(size_t(A[i].per_sample()) * N, 0.0f);
    largest = std::max(largest, act[i].size());
  }
  for (const auto& l : L) {
    if (l.kind == LayerKind::kConv) {
      sq::ConvGeom g = l.conv;
      g.N = N;
      wsz = std::max(wsz, sq::conv_workspace(g));
    } else if (l.kind == LayerKind::kFire) {
      sq::FireGeom f = l.fire;
      f.N = N;
      wsz = std::max(wsz, sq::fire_workspace(f));
      if (l.bypass == Bypass::kComplex) {
        sq::ConvGeom g = l.bypass_conv;
        g.N = N;
        wsz = std::max(wsz, sq::conv_workspace(g));
      }
    }
  }
  std::vector<float> ga(largest), gb(largest), ws(wsz), grads2(s.grads.size());
  GemmOnly gemm_only;

  Timer t;  // keys: "<layer>|<op>"
  std::vector<float>& params = s.params;
  const float* P = params.data();

  auto replay_step = [&](bool timed_gemms) {
    for (int i = 0; i < N; ++i) s.keys[i] = sq::sample_key(7, sq::RngStream::kDropout, s.step, i);
    ++s.step;
    std::memcpy(act[0].data(), s.input.data(), sizeof(float) * act[0].size());
    // forward
    for (const auto& l : L) {
      const auto& ain = A[l.in];
      const size_t n_in = size_t(ain.per_sample()) * N;
      float* x = act[l.in].data();
      switch (l.kind) {
        case LayerKind::kConv: {
          sq::ConvGeom g = l.conv;
          g.N = N;
          t.time(l.name + "|fwd", [&] {
            sq::conv_forward(g, x, P + l.w, P + l.b, act[l.out].data(), true, ws.data());
          });
          if (timed_gemms) t.time(l.name + "|fwd gemm", [&] { gemm_only.fwd(g); });
          break;
        }
        case LayerKind::kMaxPool: {
          sq::PoolGeom g = l.pool;
          g.N = N;
          t.time(l.name + "|fwd", [&] { sq::maxpool_forward(g, x, act[l.out].data()); });
          break;
        }
        case LayerKind::kFire: {
          sq::FireGeom f = l.fire;
          f.N = N;
          const size_t NHW = size_t(N) * f.H * f.W;
          float* y = l.bypass == Bypass::kNone ? act[l.out].data() : act[l.fire_act].data();
          float* sa = act[l.squeeze_act].data();
          t.time(l.name + "|fwd squeeze", [&] {
            sq::conv_forward(f.squeeze(), x, P + l.ws, P + l.bs, sa, true, ws.data());
          });
          t.time(l.name + "|fwd expand1", [&] {
            sq::conv_forward(f.expand1(), sa, P + l.w1, P + l.b1, y, true, ws.data());
          });
          t.time(l.name + "|fwd expand3", [&] {
            sq::conv_forward(f.expand3(), sa, P + l.w3, P + l.b3, y + size_t(f.E1) * NHW, true,
                             ws.data());
          });
          if (timed_gemms) {
            t.time(l.name + "|fwd gemm", [&] {
              gemm_only.fwd(f.squeeze());
              gemm_only.fwd(f.expand1());
              gemm_only.fwd(f.expand3());
            });
          }
          if (l.bypass == Bypass::kSimple) {
            t.time(l.name + "|fwd bypass", [&] {
              std::memcpy(act[l.out].data(), x, sizeof(float) * n_in);
              sq::add_inplace(act[l.out].data(), y, n_in);
            });
          } else if (l.bypass == Bypass::kComplex) {
            sq::ConvGeom g = l.bypass_conv;
            g.N = N;
            t.time(l.name + "|fwd bypass", [&] {
              sq::conv_forward(g, x, P + l.bw, P + l.bb, act[l.out].data(), false, ws.data());
              sq::add_inplace(act[l.out].data(), y, size_t(A[l.out].per_sample()) * N);
            });
          }
          break;
        }
        case LayerKind::kDropout:
          t.time(l.name + "|fwd", [&] {
            if (cfg.model.dropout > 0.0)
              sq::dropout_forward(N, ain.c, ain.h * ain.w, float(cfg.model.dropout),
                                  s.keys.data(), x, act[l.out].data());
            else
              std::memcpy(act[l.out].data(), x, sizeof(float) * n_in);
          });
          break;
        case LayerKind::kAvgPool:
          t.time(l.name + "|fwd", [&] {
            sq::avgpool_forward(N, ain.c, ain.h * ain.w, x, act[l.out].data());
          });
          break;
      }
    }
    const float* logits = act[L.back().out].data();
    t.time("loss|softmax_xent", [&] {
      s.last_loss = sq::softmax_xent(N, s.K, logits, s.labels.data(), 1.0f / float(N),
                                     s.dlogits.data(), static_cast<int*>(nullptr));
    });
    t.time("step|zero grads", [&] { std::fill(grads2.begin(), grads2.end(), 0.0f); });
    // backward
    float* G = grads2.data();
    float* dcur = ga.data();
    float* dprev = gb.data();
    std::memcpy(dcur, s.dlogits.data(), sizeof(float) * size_t(s.K) * N);
    for (size_t li = L.size(); li-- > 0;) {
      const auto& l = L[li];
      const auto& ain = A[l.in];
      const size_t n_in = size_t(ain.per_sample()) * N;
      const float* x = act[l.in].data();
      const bool first = li == 0;
      switch (l.kind) {
        case LayerKind::kAvgPool:
          t.time(l.name + "|bwd", [&] { sq::avgpool_backward(N, ain.c, ain.h * ain.w, dcur, dprev); });
          break;
        case LayerKind::kConv: {
          sq::ConvGeom g = l.conv;
          g.N = N;
          t.time(l.name + "|bwd relu", [&] {
            sq::relu_backward(dcur, act[l.out].data(), dcur, size_t(A[l.out].per_sample()) * N);
          });
          t.time(l.name + "|bwd", [&] {
            sq::conv_backward(g, x, P + l.w, dcur, G + l.w, G + l.b, first ? nullptr : dprev,
                              false, ws.data());
          });
          if (timed_gemms) t.time(l.name + "|bwd gemm", [&] { gemm_only.bwd(g, !first); });
          break;
        }
        case LayerKind::kDropout:
          t.time(l.name + "|bwd", [&] {
            if (cfg.model.dropout > 0.0)
              sq::dropout_backward(N, ain.c, ain.h * ain.w, float(cfg.model.dropout),
                                   s.keys.data(), dcur, dprev);
            else
              std::memcpy(dprev, dcur, sizeof(float) * n_in);
          });
          break;
        case LayerKind::kMaxPool: {
          sq::PoolGeom g = l.pool;
          g.N = N;
          t.time(l.name + "|bwd", [&] { sq::maxpool_backward(g, x, dcur, dprev); });
          break;
        }
        case LayerKind::kFire: {
          // fire_backward, op by op (kernels/cpu/fire.cpp).
          sq::FireGeom f = l.fire;
          f.N = N;
          const size_t NHW = size_t(N) * f.H * f.W;
          const float* y = l.bypass == Bypass::kNone ? act[l.out].data() : act[l.fire_act].data();
          const float* sa = act[l.squeeze_act].data();
          float* ds = ws.data();
          float* dz = ds + size_t(f.S) * NHW;
          float* cws = dz + size_t(f.E1 + f.E3) * NHW;
          t.time(l.name + "|bwd relu", [&] {
            sq::relu_backward(dcur, y, dz, size_t(f.E1 + f.E3) * NHW);
          });
          t.time(l.name + "|bwd expand1", [&] {
            sq::conv_backward(f.expand1(), sa, P + l.w1, dz, G + l.w1, G + l.b1, ds, false, cws);
          });
          t.time(l.name + "|bwd expand3", [&] {
            sq::conv_backward(f.expand3(), sa, P + l.w3, dz + size_t(f.E1) * NHW, G + l.w3,
                              G + l.b3, ds, true, cws);
          });
          t.time(l.name + "|bwd relu", [&] { sq::relu_backward(ds, sa, ds, size_t(f.S) * NHW); });
          t.time(l.name + "|bwd squeeze", [&] {
            sq::conv_backward(f.squeeze(), x, P + l.ws, ds, G + l.ws, G + l.bs, dprev, false, cws);
          });
          if (timed_gemms) {
            t.time(l.name + "|bwd gemm", [&] {
              gemm_only.bwd(f.expand1(), true);
              gemm_only.bwd(f.expand3(), true);
              gemm_only.bwd(f.squeeze(), true);
            });
          }
          if (l.bypass == Bypass::kSimple) {
            t.time(l.name + "|bwd bypass", [&] { sq::add_inplace(dprev, dcur, n_in); });
          } else if (l.bypass == Bypass::kComplex) {
            sq::ConvGeom g = l.bypass_conv;
            g.N = N;
            t.time(l.name + "|bwd bypass", [&] {
              sq::conv_backward(g, x, P + l.bw, dcur, G + l.bw, G + l.bb, dprev, true, ws.data());
            });
          }
          break;
        }
      }
      std::swap(dcur, dprev);
    }
    t.time("step|sgd", [&] {
      sq::sgd_momentum_update(params.size(), params.data(), grads2.data(), s.momentum.data(), kLr,
                              kMomentum, kWeightDecay);
    });
  };

  // 1. Correctness of the replay: same params, same keys -> same gradients as Model::backward.
  {
    const uint64_t step0 = s.step;
    std::vector<float> p0 = params, v0 = s.momentum;
    for (int i = 0; i < N; ++i) s.keys[i] = sq::sample_key(7, sq::RngStream::kDropout, step0, i);
    const float* logits = m.forward(P, s.input.data(), N, true, s.keys.data());
    sq::softmax_xent(N, s.K, logits, s.labels.data(), 1.0f / float(N), s.dlogits.data(),
                     static_cast<int*>(nullptr));
    std::fill(s.grads.begin(), s.grads.end(), 0.0f);
    m.backward(P, s.dlogits.data(), s.grads.data(), N, s.keys.data());
    replay_step(false);  // uses keys of step0, then updates params: restore afterwards
    double max_abs = 0, max_ref = 0;
    for (size_t i = 0; i < grads2.size(); ++i) {
      max_abs = std::max(max_abs, double(std::fabs(grads2[i] - s.grads[i])));
      max_ref = std::max(max_ref, double(std::fabs(s.grads[i])));
    }
    params = p0;
    s.momentum = v0;
    std::printf("replay check: max |grad(replay) - grad(Model)| = %.3g (max |grad| %.3g)\n",
                max_abs, max_ref);
  }

  // 2. Whole-model timings (what the benchmark times), then the op-by-op replay.
  for (int i = 0; i < 2; ++i) s.run_step();
  double whole_step = 0, whole_fwd = 0, whole_bwd = 0;
  for (int i = 0; i < steps; ++i) {
    for (int k = 0; k < N; ++k) s.keys[k] = sq::sample_key(7, sq::RngStream::kDropout, s.step, k);
    ++s.step;
    auto t0 = Clock::now();
    const float* logits = m.forward(P, s.input.data(), N, true, s.keys.data());
    whole_fwd += ms_since(t0);
    sq::softmax_xent(N, s.K, logits, s.labels.data(), 1.0f / float(N), s.dlogits.data(),
                     static_cast<int*>(nullptr));
    std::fill(s.grads.begin(), s.grads.end(), 0.0f);
    auto t1 = Clock::now();
    m.backward(P, s.dlogits.data(), s.grads.data(), N, s.keys.data());
    whole_bwd += ms_since(t1);
    sq::sgd_momentum_update(params.size(), params.data(), s.grads.data(), s.momentum.data(), kLr,
                            kMomentum, kWeightDecay);
    whole_step += ms_since(t0);
  }
  whole_step /= steps;
  whole_fwd /= steps;
  whole_bwd /= steps;

  replay_step(true);  // warm-up of the replay and of the GEMM-only buffers
  t.ms.clear();
  t.order.clear();
  for (int i = 0; i < steps; ++i) replay_step(true);
  for (auto& kv : t.ms) kv.second /= steps;

  std::printf("\n== %s, batch %d, %d threads: whole step %.2f ms (%.1f img/s): Model::forward "
              "%.2f ms, Model::backward %.2f ms, rest %.2f ms (mean of %d steps)\n",
              cfg.name.c_str(), N, sq::threads(), whole_step, 1e3 * N / whole_step, whole_fwd,
              whole_bwd, whole_step - whole_fwd - whole_bwd, steps);

  // Per layer: forward, backward (each split into ops), and the GEMM-only time of its convs.
  auto get = [&](const std::string& k) { return t.ms.count(k) ? t.ms.at(k) : 0.0; };
  std::printf("%-8s %9s %9s %9s %9s %9s %9s %7s %8s  %s\n", "layer", "fwd ms", "(gemm)", "bwd ms",
              "(gemm)", "total", "non-gemm", "% step", "GFLOP/s", "ops (ms)");
  double replay_total = 0;  // the replayed step: every op but the GEMM-only runs
  for (const auto& kv : t.ms)
    if (kv.first.find("gemm") == std::string::npos) replay_total += kv.second;
  double sum_total = 0, sum_gemm = 0, conv_flop = 0;
  std::map<std::string, double> by_kind;
  for (const auto& l : L) {
    double fwd = 0, bwd = 0;
    std::string ops;
    for (const auto& key : t.order) {
      const auto bar = key.find('|');
      if (key.substr(0, bar) != l.name) continue;
      const std::string op = key.substr(bar + 1);
      if (op.find("gemm") != std::string::npos) continue;
      const double v = get(key);
      if (op.rfind("fwd", 0) == 0) fwd += v; else bwd += v;
      char buf[64];
      std::snprintf(buf, sizeof buf, "%s %.2f; ", op.c_str(), v);
      ops += buf;
    }
    const double fg = get(l.name + "|fwd gemm"), bg = get(l.name + "|bwd gemm");
    double flop = 0;  // fwd + bwd (dW and, except for conv1, dX)
    if (l.kind == LayerKind::kConv) {
      sq::ConvGeom g = l.conv;
      g.N = N;
      flop = conv_flops(g) * (&l == &L.front() ? 2 : 3);
    } else if (l.kind == LayerKind::kFire) {
      sq::FireGeom f = l.fire;
      f.N = N;
      flop = 3 * (conv_flops(f.squeeze()) + conv_flops(f.expand1()) + conv_flops(f.expand3()));
    }
    conv_flop += flop;
    const double tot = fwd + bwd;
    sum_total += tot;
    sum_gemm += fg + bg;
    std::string kind = l.kind == LayerKind::kFire      ? "fire modules"
                       : l.kind == LayerKind::kMaxPool ? "max-pools"
                                                       : l.name;
    by_kind[kind] += tot;
    std::printf("%-8s %9.2f %9.2f %9.2f %9.2f %9.2f %9.2f %6.1f%% %8.1f  %s\n", l.name.c_str(), fwd,
                fg, bwd, bg, tot, flop > 0 ? tot - fg - bg : 0.0, 100 * tot / replay_total,
                flop > 0 ? flop / tot * 1e-6 : 0.0, ops.c_str());
  }
  const double loss = get("loss|softmax_xent"), zero = get("step|zero grads"), sgd = get("step|sgd");
  sum_total += loss + zero + sgd;
  std::printf("%-8s %9.2f  softmax_xent\n", "loss", loss);
  std::printf("%-8s %9.2f  zero grads %.2f, sgd_momentum_update %.2f (%zu params)\n", "step",
              zero + sgd, zero, sgd, params.size());
  std::printf("replayed step %.2f ms (vs %.2f whole); conv GEMMs alone %.2f ms = %.0f%% "
              "(%.1f GFLOP/step, %.1f GFLOP/s in GEMM, %.1f GFLOP/s overall)\n",
              sum_total, whole_step, sum_gemm, 100 * sum_gemm / sum_total, conv_flop * 1e-9,
              conv_flop / sum_gemm * 1e-6, conv_flop / sum_total * 1e-6);
  std::printf("by kind:");
  for (const auto& kv : by_kind)
    std::printf("  %s %.2f ms (%.0f%%)", kv.first.c_str(), kv.second, 100 * kv.second / sum_total);
  std::printf("  loss+zero+sgd %.2f ms (%.0f%%)\n", loss + zero + sgd,
              100 * (loss + zero + sgd) / sum_total);
  // Non-GEMM work by op type, summed over layers.
  std::map<std::string, double> by_op;
  for (const auto& kv : t.ms) {
    const std::string op = kv.first.substr(kv.first.find('|') + 1);
    by_op[op] += kv.second;
  }
  std::printf("by op:");
  for (const auto& kv : by_op) std::printf("  %s %.2f", kv.first.c_str(), kv.second);
  std::printf("  (\"gemm\" rows are separate GEMM-only runs, not part of the step)\n");
  std::fflush(stdout);
}

bool take_flag(std::vector<char*>& args, const std::string& name, std::string* value) {
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string a = args[i];
    if (a == name || a.rfind(name + "=", 0) == 0) {
      if (value) *value = a.size() > name.size() ? a.substr(name.size() + 1) : "1";
      args.erase(args.begin() + long(i));
      return true;
    }
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> args(argv, argv + argc);
  std::string v;
  if (const char* e = std::getenv("SQ_THREADS")) g_threads = std::atoi(e);
  if (take_flag(args, "--threads", &v)) g_threads = std::stoi(v);
  if (const char* e = std::getenv("SQ_BENCH_BATCH")) g_batch = std::atoi(e);
  if (take_flag(args, "--batch", &v)) g_batch = std::stoi(v);
  bool profile = false;
  if (const char* e = std::getenv("SQ_BENCH_PROFILE")) profile = std::atoi(e) != 0;
  if (take_flag(args, "--profile", nullptr)) profile = true;
  int profile_steps = 5;
  if (take_flag(args, "--profile_steps", &v)) profile_steps = std::max(1, std::stoi(v));
  std::string only;
  if (take_flag(args, "--profile_config", &v)) only = "," + v + ",";
  if (g_batch < 1) {
    std::fprintf(stderr, "batch must be >= 1\n");
    return 2;
  }
  try {
    sq::set_threads(g_threads);
    if (profile) {
      for (const auto& c : bench_configs())
        if (only.empty() || only.find("," + c.name + ",") != std::string::npos)
          profile_config(c, profile_steps);
      return 0;
    }
    for (const auto& c : bench_configs()) {
      benchmark::RegisterBenchmark(("step/" + c.name + "/b" + std::to_string(g_batch)).c_str(),
                                   BM_Step, c)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
    for (const auto& c : bench_configs()) {
      const Model plan(c.model, 1, false);
      for (const Layer& l : plan.layers()) {
        if (l.kind != LayerKind::kMaxPool) continue;
        PoolGeom g = l.pool;
        g.N = g_batch;
        benchmark::RegisterBenchmark(
            ("maxpool/" + c.name + "/" + l.name + "/b" + std::to_string(g_batch)).c_str(), BM_MaxPool, g)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
      }
    }
    for (const auto& [c, hw] : {std::pair<int, int>{3, 224}, std::pair<int, int>{1, 28}})
      for (bool bytes : {false, true})
        benchmark::RegisterBenchmark(("host_batch/" + std::string(bytes ? "bytes" : "floats") + "/" +
                                      std::to_string(c) + "x" + std::to_string(hw) + "/b" + std::to_string(g_batch))
                                         .c_str(),
                                     BM_HostBatch, c, hw, bytes)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
    int n = int(args.size());
    benchmark::Initialize(&n, args.data());
    if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_step: %s\n", e.what());
    return 1;
  }
  return 0;
}
