// Data-parallel overhead of the real GPU training step (docs/COMMUNICATION.md, issue 5): the
// trainer's device step with its gradient reducer at p ranks, one GPU per rank, against the same
// step with no communication, on random data. The GPU counterpart of bench_ddp.
//
//   mpirun -np P build/bench_ddp_gpu [--config fmnist|squeezenet1.0|squeezenet1.1]
//       [--local-batch B] [--steps N] [--warmup N] [--bucket-mib X] [--no-alexnet] [--json FILE]
//
// One step = DeviceStep::launch (forward, loss, backward with the reducer's readiness hook, on the
// batch prefetched during the last step) + the next batch's prefetch + the reducer's finish +
// DeviceStep::finish + sgd, as core/trainer.cpp runs it.
// Modes, interleaved step by step (the order rotates every step):
//   compute only                  no reducer: the single-GPU step (the reference)
//   ddp <grad> nccl <overlap>     NCCL (when every rank can use it), device buffers:
//     grad     squeezenet: the model's own gradient, in the trainer's buckets;
//              alexnet: a device buffer of 61,100,840 floats (AlexNet's gradient) in uniform
//                "tensors" of 64Ki floats, bucketed with the same cap, its buckets made ready at
//                the same fractions of backward as the model's (hook offset o of T becomes
//                o * 61100840 / T); the model's own gradient is then not reduced
//     overlap  overlap (buckets start from backward's hook) or after (all in finish())
//   ddp squeezenet mpi-staged     ranks that cannot all use NCCL (e.g. several ranks on one GPU
//                                 before NCCL 2.30): the gradient through pinned host memory
//                                 over MPI after backward, as the trainer does then
// Timing: MPI_Barrier, then MPI_Wtime around the step (finish waits for the GPU); a step's time
// is the maximum over ranks. Per mode: median and min (ms/step); exposed communication = median -
// median(compute), and "paired": the median over rounds of the difference to the compute-only
// step of the same round.
// Correctness, in the first warm-up round: each DDP mode's reduced gradient agrees bitwise across
// ranks (the inputs differ per rank, so it could not without the allreduce); the AlexNet buffer,
// filled with rank + 1 before that step, holds p(p+1)/2 everywhere after it.
#include "bench/mpi_bench.h"

#if defined(SQUEEZE_HAVE_MPI) && defined(SQUEEZE_HAVE_CUDA)
#include <cuda_runtime_api.h>
#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/bench_configs.h"
#include "bench/ddp_args.h"
#include "comm/communicator.h"
#include "comm/mpi.h"
#include "comm/reducer.h"
#include "core/config.h"
#include "core/device_step.h"
#include "core/error.h"
#include "core/model.h"
#include "core/rng.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/device_buffer.h"
#ifdef SQUEEZE_HAVE_NCCL
#include "comm/nccl.h"
#endif

namespace {

using sq::bench::kAlexNetFloats;
using sq::bench::kLr;
using sq::bench::kMomentum;
using sq::bench::kWeightDecay;

struct Mode {
  std::string name;
  bool compute_only = false, big = false, staged = false, overlap = false;
  std::unique_ptr<sq::GradReducer> reducer;
  std::vector<double> step_s;  // this rank's, then the max over ranks
};

int run(int argc, char** argv) {
  const sq::MpiWorld world = sq::mpi_init(&argc, &argv);
  sq::bench::DdpArgs defaults;
  defaults.local_batch = 128, defaults.steps = 20, defaults.warmup = 3;
  const sq::bench::DdpArgs args = sq::bench::parse_ddp_args(argc, argv, defaults, false);
  if (args.help) {
    if (world.rank == 0) std::printf("usage: see the header of bench/bench_ddp_gpu.cpp\n");
    sq::mpi_finalize();
    return 0;
  }
  const bool root = world.rank == 0;
  const int p = world.size;

  std::string why;
  const int gpus = sq::cuda::device_count(&why);
  if (gpus < 1) sq::fail("needs a GPU on every rank: ", why);
  const int gpu = world.local_rank % gpus;
  auto mpi_comm = sq::make_mpi_communicator(sq::MpiProgress::kThread);

  // NCCL when every rank can use it (decided together), as launch/main.cpp does.
  std::unique_ptr<sq::Communicator> nccl_comm;
  std::string nccl_note = "not built with NCCL";
#ifdef SQUEEZE_HAVE_NCCL
  {
    const std::string reason = sq::nccl_unusable_reason(world, gpus);
    double unusable = reason.empty() ? 0.0 : 1.0;
    mpi_comm->allreduce_sum(&unusable, 1);
    if (unusable == 0.0) {
      nccl_comm = sq::make_nccl_communicator(world, gpu, 60.0);
      nccl_note.clear();
    } else {
      nccl_note = reason.empty() ? std::string("another rank cannot use it") : reason;
    }
  }
#endif

  const sq::ModelConfig cfg = sq::bench::model_config(args.config);
  const int N = args.local_batch;
  sq::Model host(cfg, 1);
  const size_t T = host.layout().total;
  std::vector<float> params(T), momentum(T, 0.0f);
  host.init_params(params.data(), "torchvision", 42);  // identical on every rank
  std::unique_ptr<sq::DeviceStep> step = sq::make_cuda_step(cfg, N, gpu);
  // Every mode launches kernel by kernel: the NCCL modes' readiness hook rules out the CUDA graph
  // (the default for a step without one), so a graphed compute-only step would put the graph's
  // gain (run d: 1-3 % at 224², 7-10 % on Fashion-MNIST) into the communication's exposed time.
  step->use_graphs(false);
  step->upload(params.data(), momentum.data());
  if (nccl_comm) nccl_comm->set_compute_stream(step->stream());

  sq::bench::RankBatch batch = sq::bench::random_batch(cfg, N, world.rank);
  std::vector<float>& input = batch.input;
  std::vector<int32_t>& labels = batch.labels;
  std::vector<uint64_t>& keys = batch.keys;
  step->prefetch(input.data(), labels.data(), keys.data(), N);  // the first step's batch

  const size_t cap = size_t(args.bucket_mib * 1048576.0 / 4);
  const std::vector<size_t> sq_bounds = sq::tensor_bounds(host.layout());
  const std::vector<size_t> big_bounds = sq::bench::alexnet_bounds();
  sq::cuda::DeviceBuffer<float> big;
  if (nccl_comm && args.alexnet) {
    big = sq::cuda::DeviceBuffer<float>(kAlexNetFloats);
    SQ_CUDA(cudaMemset(big.get(), 0, kAlexNetFloats * sizeof(float)));
    SQ_CUDA(cudaDeviceSynchronize());
  }

  std::vector<std::unique_ptr<Mode>> modes;
  {
    auto m = std::make_unique<Mode>();
    m->name = "compute only";
    m->compute_only = true;
    modes.push_back(std::move(m));
  }
  if (nccl_comm) {
    for (bool on_big : {false, true}) {
      if (on_big && !args.alexnet) continue;
      for (bool overlap : {true, false}) {
        auto m = std::make_unique<Mode>();
        m->big = on_big;
        m->overlap = overlap;
        m->reducer = std::make_unique<sq::GradReducer>(
            *nccl_comm, on_big ? big.get() : step->device_grads(),
            sq::plan_buckets(on_big ? big_bounds : sq_bounds, cap), sq::ReduceOp::kSum, overlap);
        m->name = std::string("ddp ") + (on_big ? "alexnet" : "squeezenet") + " nccl " +
                  (overlap ? "overlap" : "after");
        modes.push_back(std::move(m));
      }
    }
  } else if (p > 1) {
    auto m = std::make_unique<Mode>();
    m->staged = true;
    m->reducer = std::make_unique<sq::GradReducer>(*mpi_comm, step->host_staging(),
                                                   sq::plan_buckets(sq_bounds, cap),
                                                   sq::ReduceOp::kSum, false);
    m->name = "ddp squeezenet mpi-staged after";
    modes.push_back(std::move(m));
  }

  const float grad_scale = 1.0f / float(N * p);
  auto run_mode = [&](Mode& m) {
    double stats[2] = {0, 0};
    std::function<void(size_t)> hook;
    if (m.reducer && !m.staged) {
      sq::GradReducer& r = *m.reducer;
      if (m.big)
        hook = [&r, T](size_t o) { r.ready(size_t(uint64_t(o) * kAlexNetFloats / T)); };
      else
        hook = [&r](size_t o) { r.ready(o); };
    }
    // As core/trainer.cpp: the step on the prefetched batch, the next batch's copy-out and
    // host-to-device copy while it runs (launching with the host batch instead put a 77 MB
    // pageable copy into every squeezenet1.0 step: 50 ms a step against bench_gpu's 38).
    step->launch(nullptr, labels.data(), keys.data(), N, grad_scale, hook);
    step->prefetch(input.data(), labels.data(), keys.data(), N);
    if (m.reducer && !m.staged) m.reducer->finish();
    step->finish(stats);
    if (m.staged)
      step->reduce_through_host(step->host_staging(), [&](float*) { m.reducer->finish(); });
    step->sgd(kLr, kMomentum, kWeightDecay);
  };

  if (root) {
    std::printf(
        "bench_ddp_gpu: %s, %d ranks (%d on host %s), GPU %d of %d "
        "(%s), local batch %d "
        "(global %d), %zu parameters, bucket cap %g MiB; NCCL: %s; %d "
        "timed steps per mode "
        "after %d warm-up, %zu modes interleaved\n",
        args.config.c_str(), p, world.local_size, world.host.c_str(), gpu, gpus,
        step->name().c_str(), N, N * p, T, args.bucket_mib, nccl_comm ? "used" : nccl_note.c_str(),
        args.steps, args.warmup, modes.size());
    std::fflush(stdout);
  }

  // ---- warm-up; its first round checks that the reduction happened ---------------------------
  auto agree = [&](const float* dev, size_t n) {
    std::vector<float> h(n);
    SQ_CUDA(cudaStreamSynchronize(static_cast<cudaStream_t>(step->stream())));
    SQ_CUDA(cudaMemcpy(h.data(), dev, n * sizeof(float), cudaMemcpyDeviceToHost));
    return sq::bench::same_on_all_ranks(h.data(), n);
  };
  bool all_ok = true;
  for (int w = 0; w < args.warmup; ++w)
    for (auto& m : modes) {
      if (w == 0 && m->big) {
        const std::vector<float> fill(kAlexNetFloats, float(world.rank + 1));
        SQ_CUDA(cudaMemcpy(big.get(), fill.data(), kAlexNetFloats * sizeof(float),
                           cudaMemcpyHostToDevice));
        // (the legacy stream's copy and memset do not order the non-blocking streams' work)
        SQ_CUDA(cudaDeviceSynchronize());
      }
      run_mode(*m);
      if (w > 0 || m->compute_only) continue;
      bool ok = true;
      if (m->big) {
        std::vector<float> h(kAlexNetFloats);
        SQ_CUDA(cudaStreamSynchronize(static_cast<cudaStream_t>(step->stream())));
        SQ_CUDA(cudaMemcpy(h.data(), big.get(), kAlexNetFloats * sizeof(float),
                           cudaMemcpyDeviceToHost));
        const float want = float(p) * float(p + 1) / 2.0f;
        ok = std::all_of(h.begin(), h.end(), [&](float v) { return v == want; });
        int mine = ok ? 1 : 0, all = 0;
        MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
        ok = all == 1;
        SQ_CUDA(cudaMemset(big.get(), 0, kAlexNetFloats * sizeof(float)));
        SQ_CUDA(cudaDeviceSynchronize());
      } else if (p > 1) {
        ok = agree(step->device_grads(), T);
      }
      if (!ok && root)
        std::fprintf(stderr, "bench_ddp_gpu: %s: the reduced gradient is wrong\n", m->name.c_str());
      all_ok = all_ok && ok;
    }

  // ---- timed rounds, interleaved, rotating order --------------------------------------------
  const size_t M = modes.size();
  for (int s = 0; s < args.steps; ++s)
    for (size_t k = 0; k < M; ++k) {
      Mode& m = *modes[(k + size_t(s)) % M];
      MPI_Barrier(MPI_COMM_WORLD);
      const double t0 = MPI_Wtime();
      run_mode(m);
      m.step_s.push_back(MPI_Wtime() - t0);
    }
  for (auto& m : modes) {
    std::vector<double> worst(m->step_s.size());
    MPI_Allreduce(m->step_s.data(), worst.data(), int(worst.size()), MPI_DOUBLE, MPI_MAX,
                  MPI_COMM_WORLD);
    m->step_s = worst;
  }

  if (root) {
    using sq::bench::median;
    const std::vector<double>& tc = modes[0]->step_s;
    const double tc_med = median(tc);
    std::printf(
        "\n| mode | median ms/step | min ms/step | img/s (all ranks) | "
        "exposed ms | "
        "exposed ms, paired |\n|---|---:|---:|---:|---:|---:|\n");
    nlohmann::json rows = nlohmann::json::array();
    for (auto& m : modes) {
      std::vector<double> diff;
      for (size_t s = 0; s < m->step_s.size(); ++s) diff.push_back(m->step_s[s] - tc[s]);
      const double med = median(m->step_s),
                   mn = *std::min_element(m->step_s.begin(), m->step_s.end());
      const double exposed = med - tc_med, paired = median(diff);
      std::printf("| %s | %.3f | %.3f | %.0f | %.3f | %.3f |\n", m->name.c_str(), med * 1e3,
                  mn * 1e3, double(N) * p / med, exposed * 1e3, paired * 1e3);
      rows.push_back({{"mode", m->name},
                      {"median_ms", med * 1e3},
                      {"min_ms", mn * 1e3},
                      {"exposed_ms", exposed * 1e3},
                      {"exposed_paired_ms", paired * 1e3}});
    }
    std::printf(
        "\ncorrectness (reduced gradients agree across ranks; AlexNet "
        "buffer = p(p+1)/2): "
        "%s\n",
        all_ok ? "ok" : "FAILED");
    if (!args.json.empty()) {
      const nlohmann::json j = {{"benchmark", "ddp_gpu"},
                                {"config", args.config},
                                {"ranks", p},
                                {"local_batch", N},
                                {"gpu", step->name()},
                                {"nccl", nccl_comm ? "used" : nccl_note},
                                {"parameters", T},
                                {"bucket_mib", args.bucket_mib},
                                {"steps", args.steps},
                                {"correct", all_ok},
                                {"rows", rows}};
      std::ofstream f(args.json);
      f << j.dump(1) << "\n";
      if (!f) sq::fail("cannot write ", args.json);
    }
    std::fflush(stdout);
  }

  modes.clear();
  big = sq::cuda::DeviceBuffer<float>();
  step.reset();
  nccl_comm.reset();
  mpi_comm.reset();
  sq::mpi_finalize();
  return all_ok ? 0 : 1;
}

}  // namespace

SQ_MPI_BENCH_MAIN("bench_ddp_gpu")
#else
#include <cstdio>
int main() {
  std::printf("bench_ddp_gpu: built without MPI or CUDA\n");
  return 1;
}
#endif
