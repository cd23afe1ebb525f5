// Data-parallel overhead of a real training step: the trainer's step with the gradient reducer
// (comm/reducer.h) at p ranks, against the same step with the same per-rank batch and no
// communication, on random data.
//
//   mpirun -np 2 build-bench/bench_ddp --config fmnist|squeezenet1.0|squeezenet1.1
//       --local-batch B [--steps N] [--warmup N] [--bucket-mib X] [--threads T]
//       [--sweep-buckets 0,0.25,0.5,1,2,4,8] [--no-alexnet] [--json FILE]
//
// One step = forward(train) + softmax_xent + zero grads + backward (with the reducer's hook) +
// reducer.finish() + sgd_momentum_update, as in core/trainer.cpp. Modes, all timed in the same
// run and interleaved step by step (the order rotates every step):
//   compute               no reducer, no hook: the single-process step (the reference)
//   ddp/<grad>/<progress>/<overlap>
//     grad      squeezenet: the model's own gradient (T floats), buckets over its tensor
//                 boundaries (plan_buckets(tensor_bounds(layout), cap));
//               alexnet: a separate buffer of 61,100,840 floats (AlexNet's gradient) cut at
//                 uniform boundaries every 64Ki floats (256 KiB) and bucketed with the same cap; the model's
//                 hook offset o (of T) becomes floor(o * 61100840 / T) in it, so its buckets
//                 become ready at the same fractions of backward. The model's own gradient is
//                 not reduced in this variant (the buffer holds zeros, which reduce at the same
//                 speed as anything else, and is never re-zeroed, so the step has no extra
//                 compute: only the communication differs from the compute-only step).
//     progress  thread (MpiProgress::kThread) or nonblocking (MpiProgress::kNonblocking)
//     overlap   overlap (GradReducer overlap=true: buckets start from backward's hook) or
//               after (overlap=false: every bucket starts in finish(), after backward)
//   bare/<grad>/<how>     the allreduce alone, no compute: one call on the whole buffer
//                         (Communicator::allreduce, thread progress), or the bucketed reducer
//                         (overlap=false, finish() only)
// Timing: MPI_Barrier, then MPI_Wtime around the step; a step's time is the maximum over ranks.
// Per mode: median and min over steps (ms/step), overhead = median/median(compute) - 1,
// exposed communication = median - median(compute) (and "paired": the median over rounds of the
// difference to the compute-only step of the same round, robust to drifting load), finish wait =
// blocking time in reducer.finish() (per step the min and the max over ranks, median over steps:
// the rank that arrives last waits for the communication only, the others also for it), in hook =
// time inside reducer.ready() during backward (with nonblocking progress this includes the
// MPI_Testall polls, in which libnbc does its copies and sums on the compute thread; max over
// ranks), and the share of the allreduce hidden by overlap = (T_after - T_overlap) /
// (T_after - T_compute), T_after being the same gradient and progress mode without overlap:
// 1 = all communication hidden, 0 = none. It is clamped to [0, 1] (noise, or an overlap that
// slows backward down by more than it hides, push it out: then the raw value is shown too) and
// not given when T_after - T_compute is below 2% of T_compute (no measurable communication).
// Correctness: during warm-up each DDP mode's reduced gradient must agree bitwise across ranks
// (the inputs differ per rank, so it could not without the allreduce); the AlexNet buffer is
// filled with rank+1 for one warm-up step and must then hold p(p+1)/2 everywhere.
//
// --sweep-buckets LIST: instead of the modes above, compute-only against ddp/squeezenet/thread/
// overlap at each bucket cap in LIST (MiB; 0 = one bucket), with the bare bucketed allreduce of
// SqueezeNet's and of the AlexNet-sized gradient at the same cap (communication alone, precise
// where the step's noise is not), to choose the default cap, and ddp/squeezenet/thread/after at
// --bucket-mib as the reference of every row's hidden share.
// --threads: OpenMP/OpenBLAS threads per rank; default: cores / ranks on this host (at least 1).
#include "bench/mpi_bench.h"

#ifdef SQUEEZE_HAVE_MPI
#include <mpi.h>
#include <sched.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_configs.h"
#include "bench/ddp_args.h"
#include "comm/communicator.h"
#include "comm/mpi.h"
#include "comm/reducer.h"
#include "core/config.h"
#include "core/error.h"
#include "core/model.h"
#include "core/rng.h"
#include "kernels/ops.h"
#include "launch/threads.h"

namespace {

using sq::bench::kAlexNetFloats;
using sq::bench::kLr;
using sq::bench::kMomentum;
using sq::bench::kWeightDecay;

[[noreturn]] void usage_exit() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  if (r == 0)
    std::printf(
        "usage: mpirun -np P bench_ddp --config fmnist|squeezenet1.0|squeezenet1.1 --local-batch "
        "B\n"
        "       [--steps N] [--warmup N] [--bucket-mib X] [--threads T]\n"
        "       [--sweep-buckets 0,0.25,...] [--no-alexnet] [--json FILE]\n");
  sq::mpi_finalize();
  std::exit(0);
}

size_t cap_floats(double mib) { return size_t(mib * 1048576.0 / 4); }

using sq::bench::median;

struct Mode {
  enum Kind { kCompute, kDdp, kBareCall, kBareBuckets } kind = kCompute;
  std::string name, grad = "-", progress = "-", overlap = "-";
  double cap_mib = 0;
  sq::Communicator* comm = nullptr;
  std::unique_ptr<sq::GradReducer> reducer;
  float* buf = nullptr;  // kBareCall
  size_t n = 0;
  bool big = false;                    // the AlexNet-sized buffer
  std::vector<double> step_s, wait_s;  // this rank's, then (after the run) the max over ranks
  std::vector<double> wait_min_s;      // (after the run) the min over ranks of wait_s
  std::vector<double> hook_s;          // time inside the reducer's ready() hook; then max
};

int run(int argc, char** argv) {
  const sq::MpiWorld world = sq::mpi_init(&argc, &argv);
  const sq::bench::DdpArgs args = sq::bench::parse_ddp_args(argc, argv, {}, true);
  if (args.help) usage_exit();
  const bool root = world.rank == 0;
  const int p = world.size;

  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const int threads =
      args.threads >= 0 ? args.threads : std::max(1, int(cores) / std::max(1, world.local_size));
  sq::set_threads(threads);
  cpu_set_t aff;
  CPU_ZERO(&aff);
  const int affinity = sched_getaffinity(0, sizeof aff, &aff) == 0 ? CPU_COUNT(&aff) : -1;

  auto thread_comm = sq::make_mpi_communicator(sq::MpiProgress::kThread);
  auto nb_comm = sq::make_mpi_communicator(sq::MpiProgress::kNonblocking);

  // ---- the step's state (as bench/bench_step.cpp), per rank different data ----------------
  const sq::ModelConfig cfg = sq::bench::model_config(args.config);
  const int N = args.local_batch, K = cfg.num_classes;
  sq::Model model(cfg, N);
  const size_t T = model.layout().total;
  std::vector<float> params(T), grads(T, 0.0f), momentum(T, 0.0f);
  model.init_params(params.data(), "torchvision", 42);  // identical on every rank
  sq::bench::RankBatch batch = sq::bench::random_batch(cfg, N, world.rank);
  std::vector<float>& input = batch.input;
  std::vector<int32_t>& labels = batch.labels;
  std::vector<uint64_t>& keys = batch.keys;
  std::vector<float> dlogits(size_t(K) * N);
  std::vector<float> big;
  const bool use_big = args.alexnet;
  if (use_big) big.assign(kAlexNetFloats, 0.0f);
  const std::vector<size_t> big_bounds = sq::bench::alexnet_bounds();
  const std::vector<size_t> sq_bounds = sq::tensor_bounds(model.layout());

  // ---- modes ---------------------------------------------------------------------------------
  std::vector<std::unique_ptr<Mode>> modes;
  auto add_compute = [&] {
    auto m = std::make_unique<Mode>();
    m->name = "compute only";
    modes.push_back(std::move(m));
  };
  auto add_ddp = [&](bool on_big, sq::MpiProgress prog, bool overlap, double cap_mib) {
    auto m = std::make_unique<Mode>();
    m->kind = Mode::kDdp;
    m->big = on_big;
    m->grad = on_big ? "alexnet" : "squeezenet";
    m->progress = prog == sq::MpiProgress::kThread ? "thread" : "nonblocking";
    m->overlap = overlap ? "overlap" : "after";
    m->cap_mib = cap_mib;
    m->comm = prog == sq::MpiProgress::kThread ? thread_comm.get() : nb_comm.get();
    m->reducer = std::make_unique<sq::GradReducer>(
        *m->comm, on_big ? big.data() : grads.data(),
        sq::plan_buckets(on_big ? big_bounds : sq_bounds, cap_floats(cap_mib)), sq::ReduceOp::kSum,
        overlap);
    m->name = "ddp " + m->grad + " " + m->progress + " " + m->overlap;
    modes.push_back(std::move(m));
  };
  auto add_bare = [&](bool on_big, bool bucketed, double cap_mib) {
    auto m = std::make_unique<Mode>();
    m->kind = bucketed ? Mode::kBareBuckets : Mode::kBareCall;
    m->big = on_big;
    m->grad = on_big ? "alexnet" : "squeezenet";
    m->progress = "thread";
    m->comm = thread_comm.get();
    m->buf = on_big ? big.data() : grads.data();
    m->n = on_big ? big.size() : grads.size();
    m->cap_mib = bucketed ? cap_mib : 0;
    if (bucketed)
      m->reducer = std::make_unique<sq::GradReducer>(
          *m->comm, m->buf,
          sq::plan_buckets(on_big ? big_bounds : sq_bounds, cap_floats(cap_mib)),
          sq::ReduceOp::kSum, false);
    m->name = "bare allreduce " + m->grad + (bucketed ? " bucketed" : " one call");
    modes.push_back(std::move(m));
  };

  add_compute();
  if (!args.sweep.empty()) {
    for (double c : args.sweep) {
      char b[48];
      std::snprintf(b, sizeof b, " (cap %g MiB)", c);
      add_ddp(false, sq::MpiProgress::kThread, true, c);
      modes.back()->name += b;
      // The communication alone at this cap: precise where the step's noise is not.
      add_bare(false, true, c);
      modes.back()->name += b;
      if (args.alexnet) {
        add_bare(true, true, c);
        modes.back()->name += b;
      }
    }
    // The no-overlap reference for the hidden share, at --bucket-mib.
    add_ddp(false, sq::MpiProgress::kThread, false, args.bucket_mib);
  } else {
    for (bool on_big : {false, true}) {
      if (on_big && !use_big) continue;
      add_ddp(on_big, sq::MpiProgress::kThread, true, args.bucket_mib);
      add_ddp(on_big, sq::MpiProgress::kNonblocking, true, args.bucket_mib);
      add_ddp(on_big, sq::MpiProgress::kThread, false, args.bucket_mib);
      add_ddp(on_big, sq::MpiProgress::kNonblocking, false, args.bucket_mib);
      add_bare(on_big, false, 0);
      add_bare(on_big, true, args.bucket_mib);
    }
  }

  // ---- one timed unit of each mode ------------------------------------------------------------
  uint64_t step_no = 0;
  const float grad_scale = 1.0f / float(N * p);  // the trainer's 1/global batch, summed
  auto run_mode = [&](Mode& m, double* wait, double* hook) {
    *wait = 0;
    *hook = 0;
    if (m.kind == Mode::kBareCall) {
      m.comm->allreduce(m.buf, m.n, sq::ReduceOp::kSum);
      return;
    }
    if (m.kind == Mode::kBareBuckets) {
      m.reducer->finish();
      *wait = m.reducer->last_wait_seconds();
      return;
    }
    for (int i = 0; i < N; ++i) keys[i] = sq::sample_key(7, sq::RngStream::kDropout, step_no, i);
    ++step_no;
    const float* logits = model.forward(params.data(), input.data(), N, true, keys.data());
    sq::softmax_xent(N, K, logits, labels.data(), grad_scale, dlogits.data(),
                     static_cast<int*>(nullptr));
    std::fill(grads.begin(), grads.end(), 0.0f);
    if (m.kind == Mode::kCompute) {
      model.backward(params.data(), dlogits.data(), grads.data(), N, keys.data());
    } else if (!m.big) {
      sq::GradReducer& r = *m.reducer;
      model.backward(params.data(), dlogits.data(), grads.data(), N, keys.data(),
                     [&r, hook](size_t o) {
                       const double t0 = MPI_Wtime();
                       r.ready(o);
                       *hook += MPI_Wtime() - t0;
                     });
    } else {
      sq::GradReducer& r = *m.reducer;
      model.backward(params.data(), dlogits.data(), grads.data(), N, keys.data(),
                     [&r, hook, T](size_t o) {
                       const double t0 = MPI_Wtime();
                       r.ready(size_t(uint64_t(o) * kAlexNetFloats / T));
                       *hook += MPI_Wtime() - t0;
                     });
    }
    if (m.reducer) {
      m.reducer->finish();
      *wait = m.reducer->last_wait_seconds();
    }
    sq::sgd_momentum_update(T, params.data(), grads.data(), momentum.data(), kLr, kMomentum,
                            kWeightDecay);
  };

  if (root) {
    std::printf(
        "bench_ddp: %s, %d ranks (%d on host %s), local batch %d (global %d), "
        "%zu parameters, %d OpenMP thread(s)/rank, %d CPU(s) in rank 0's affinity mask "
        "of %u, MPI thread level %d\n",
        args.config.c_str(), p, world.local_size, world.host.c_str(), N, N * p, T, threads,
        affinity, cores, world.thread_level);
    std::printf("bucket cap %g MiB: squeezenet %zu buckets", args.bucket_mib,
                sq::plan_buckets(sq_bounds, cap_floats(args.bucket_mib)).size());
    if (use_big)
      std::printf(", alexnet (%zu floats) %zu buckets", kAlexNetFloats,
                  sq::plan_buckets(big_bounds, cap_floats(args.bucket_mib)).size());
    std::printf("; %d timed steps per mode after %d warm-up, %zu modes interleaved\n", args.steps,
                args.warmup, modes.size());
    std::fflush(stdout);
  }

  // ---- warm-up, with the correctness checks in its first round --------------------------------
  auto agree = [&](const float* x, size_t n) { return sq::bench::same_on_all_ranks(x, n); };
  bool all_ok = true;
  std::vector<std::string> check_lines;
  for (int w = 0; w < args.warmup; ++w) {
    for (auto& mp : modes) {
      Mode& m = *mp;
      const bool check = w == 0 && m.kind == Mode::kDdp;
      if (check && m.big) std::fill(big.begin(), big.end(), float(world.rank + 1));
      MPI_Barrier(MPI_COMM_WORLD);
      double wait, hook;
      run_mode(m, &wait, &hook);
      if (!check) continue;
      int good;
      if (m.big) {
        const float want = float(p * (p + 1) / 2);
        good = std::all_of(big.begin(), big.end(), [&](float v) { return v == want; });
        std::fill(big.begin(), big.end(), 0.0f);
      } else {
        good = agree(grads.data(), T);
      }
      int all_good = 0;
      MPI_Allreduce(&good, &all_good, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
      all_ok = all_ok && all_good;
      check_lines.push_back(m.name + ": " +
                            (all_good ? "ok"
                             : m.big  ? "FAIL (wrong sums)"
                                      : "FAIL (ranks' gradients differ)"));
    }
  }
  if (root) {
    std::printf("correctness (first warm-up step): ");
    for (size_t i = 0; i < check_lines.size(); ++i)
      std::printf("%s%s", i ? "; " : "", check_lines[i].c_str());
    std::printf("\n");
    std::fflush(stdout);
  }

  // ---- timed steps, interleaved ---------------------------------------------------------------
  for (int s = 0; s < args.steps; ++s) {
    for (size_t k = 0; k < modes.size(); ++k) {
      Mode& m = *modes[(k + size_t(s)) % modes.size()];
      double wait, hook;
      MPI_Barrier(MPI_COMM_WORLD);
      const double t0 = MPI_Wtime();
      run_mode(m, &wait, &hook);
      m.step_s.push_back(MPI_Wtime() - t0);
      m.wait_s.push_back(wait);
      m.hook_s.push_back(hook);
    }
  }
  for (auto& m : modes) {
    MPI_Allreduce(MPI_IN_PLACE, m->step_s.data(), args.steps, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    m->wait_min_s.resize(m->wait_s.size());
    MPI_Allreduce(m->wait_s.data(), m->wait_min_s.data(), args.steps, MPI_DOUBLE, MPI_MIN,
                  MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, m->wait_s.data(), args.steps, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, m->hook_s.data(), args.steps, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  }

  // ---- report --------------------------------------------------------------------------------
  const double tc = median(modes[0]->step_s);
  auto find = [&](const std::string& grad, const std::string& prog, const std::string& ov,
                  double cap) -> const Mode* {
    for (auto& m : modes)
      if (m->kind == Mode::kDdp && m->grad == grad && m->progress == prog && m->overlap == ov &&
          (m->cap_mib == cap || !args.sweep.empty()))
        return m.get();
    return nullptr;
  };
  nlohmann::json rows = nlohmann::json::array();
  if (root) {
    const bool sweep = !args.sweep.empty();
    std::printf(
        "\n| mode | bucket MiB | buckets | ms/step (median) | min | overhead | exposed ms "
        "| paired exposed ms | finish wait ms (min / max rank) | in hook ms "
        "| hidden by overlap |\n");
    std::printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for (auto& mp : modes) {
      const Mode& m = *mp;
      const double med = median(m.step_s);
      const double mn = *std::min_element(m.step_s.begin(), m.step_s.end());
      const double wait = median(m.wait_s), wait_min = median(m.wait_min_s);
      const double hook_ms = median(m.hook_s) * 1e3;
      const bool bare = m.kind == Mode::kBareCall || m.kind == Mode::kBareBuckets;
      const bool step = !bare;
      std::string hidden = "";
      double hidden_raw = NAN;
      if (m.kind == Mode::kDdp && m.overlap == "overlap") {
        if (const Mode* after = find(m.grad, m.progress, "after", m.cap_mib)) {
          const double ta = median(after->step_s);
          char b[96];
          if (ta - tc < 0.02 * tc) {
            std::snprintf(b, sizeof b, "n/a (T_after - T_compute = %.2f ms)", (ta - tc) * 1e3);
          } else {
            hidden_raw = (ta - med) / (ta - tc);
            const double h = std::min(1.0, std::max(0.0, hidden_raw));
            if (h != hidden_raw)
              std::snprintf(b, sizeof b, "%.0f%% (raw %.0f%%)", 100 * h, 100 * hidden_raw);
            else
              std::snprintf(b, sizeof b, "%.0f%%", 100 * h);
          }
          hidden = b;
        }
      }
      const size_t nb = m.reducer ? m.reducer->plan().size() : (m.kind == Mode::kBareCall);
      char cap[32] = "-";
      if (m.kind != Mode::kCompute && m.kind != Mode::kBareCall)
        std::snprintf(cap, sizeof cap, "%g", m.cap_mib);
      char over[32] = "", exposed[32] = "", paired[32] = "", waitc[48] = "", hookc[32] = "";
      double paired_ms = NAN;
      if (step && m.kind != Mode::kCompute) {
        std::snprintf(over, sizeof over, "%+.1f%%", 100 * (med / tc - 1));
        std::snprintf(exposed, sizeof exposed, "%.2f", (med - tc) * 1e3);
        std::vector<double> d;
        for (size_t i = 0; i < m.step_s.size(); ++i) d.push_back(m.step_s[i] - modes[0]->step_s[i]);
        paired_ms = median(d) * 1e3;
        std::snprintf(paired, sizeof paired, "%.2f", paired_ms);
      }
      if (m.reducer) std::snprintf(waitc, sizeof waitc, "%.2f / %.2f", wait_min * 1e3, wait * 1e3);
      if (m.kind == Mode::kDdp) std::snprintf(hookc, sizeof hookc, "%.2f", hook_ms);
      std::printf("| %s | %s | %zu | %.2f | %.2f | %s | %s | %s | %s | %s | %s |\n", m.name.c_str(),
                  cap, m.kind == Mode::kCompute ? size_t(0) : nb, med * 1e3, mn * 1e3, over,
                  exposed, paired, waitc, hookc, hidden.c_str());
      nlohmann::json r = {{"mode", m.name},
                          {"kind", m.kind == Mode::kCompute ? "compute"
                                   : m.kind == Mode::kDdp   ? "ddp"
                                                            : "bare"},
                          {"gradient", m.grad},
                          {"progress", m.progress},
                          {"overlap", m.overlap},
                          {"bucket_mib", m.cap_mib},
                          {"buckets", nb},
                          {"median_ms", med * 1e3},
                          {"min_ms", mn * 1e3},
                          {"finish_wait_max_rank_ms", wait * 1e3},
                          {"finish_wait_min_rank_ms", wait_min * 1e3},
                          {"in_hook_max_rank_ms", hook_ms}};
      std::vector<double> ms;
      for (double x : m.step_s) ms.push_back(x * 1e3);
      r["times_ms"] = ms;
      if (step && m.kind != Mode::kCompute) {
        r["overhead_pct"] = 100 * (med / tc - 1);
        r["exposed_ms"] = (med - tc) * 1e3;
        r["paired_exposed_ms"] = paired_ms;
      }
      if (!std::isnan(hidden_raw)) r["hidden_share_raw"] = hidden_raw;
      rows.push_back(r);
    }
    std::printf(
        "\nms/step: per step the slowest rank's time (after a barrier), median and min over %d "
        "steps;%s overhead and exposed ms against the compute-only median (%.2f ms); paired "
        "exposed: "
        "median over steps of (this mode's step - the compute-only step of the same round), "
        "robust to load that drifts during the run; finish "
        "wait: blocking time in reducer.finish(), per step the min and the max over ranks, median "
        "over steps (max - min is mostly the ranks' compute imbalance); in hook: time inside "
        "reducer.ready() during backward (starting buckets, and with nonblocking progress the "
        "MPI_Testall polls, which do libnbc's copies and sums on the compute thread), per step "
        "the max over ranks, median over steps; hidden by "
        "overlap = (T_after - T_overlap) / (T_after - T_compute), same gradient and progress "
        "mode, clamped to [0, 100%%].\n",
        args.steps,
        sweep ? " sweep: squeezenet gradient, thread progress, hidden share against the one "
                "no-overlap row;"
              : "",
        tc * 1e3);
    std::fflush(stdout);
    if (!args.json.empty()) {
      nlohmann::json j = {{"benchmark", "ddp"},
                          {"config", args.config},
                          {"ranks", p},
                          {"local_batch", N},
                          {"threads_per_rank", threads},
                          {"parameters", T},
                          {"bucket_mib", args.bucket_mib},
                          {"steps", args.steps},
                          {"correct", all_ok},
                          {"rows", rows}};
      std::ofstream f(args.json);
      f << j.dump(1) << "\n";
      if (!f) sq::fail("cannot write ", args.json);
    }
  }

  modes.clear();
  thread_comm.reset();
  nb_comm.reset();
  sq::mpi_finalize();
  return all_ok ? 0 : 1;
}

}  // namespace

#endif  // SQUEEZE_HAVE_MPI

SQ_MPI_BENCH_MAIN("bench_ddp")
