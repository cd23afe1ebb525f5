// Allreduce throughput: our Communicator's in-place float sum against the raw MPI call it wraps,
// for the gradient buffers of SqueezeNet 1.0 (1,248,424 floats) and AlexNet (61,100,840 floats).
//
//   mpirun -np 2 build-bench/bench_allreduce [--reps N] [--warmup N] [--json FILE]
//
// Methods, timed in the same run and interleaved rep by rep (the order rotates every rep):
//   raw          MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD)
//   thread       Communicator::allreduce(buf, n, kSum) with MpiProgress::kThread (the blocking
//                call: run on the calling thread when the communication thread is idle)
//   thread, async  allreduce_async(...).wait() with kThread: through the communication thread,
//                as the reducer's buckets go (the hand-off's cost is in this row)
//   nonblocking  allreduce_async(...).wait() with MpiProgress::kNonblocking (MPI_Iallreduce +
//                MPI_Waitall)
//   raw MPI_Iallreduce  MPI_Iallreduce + MPI_Waitall on MPI_COMM_WORLD: the nonblocking mode's
//                own baseline (Open MPI implements it with a different algorithm, libnbc)
// Each timed call: refill the buffer (untimed, so every call reduces the same finite values),
// MPI_Barrier, t = MPI_Wtime() around the call alone. A rep's time is the maximum over ranks;
// the table shows the median and the minimum over reps, the algorithm bandwidth
// (4n bytes / median) and the ratios of medians to raw MPI_Allreduce and raw MPI_Iallreduce
// (goal for ours: <= 1.05 against raw MPI_Allreduce; the nonblocking mode is also shown against
// the raw nonblocking call, which separates our wrapper's cost from the MPI library's).
// Correctness, once per size and method before timing: rank r holds small integers
// v(i, r) = (7i + 13r) mod 251, whose sum over ranks is exact in float; every element is checked
// on every rank, and a method is "ok" only if it is on all ranks.
// Rank 0 prints a markdown table; --json FILE also writes the rows as JSON.
#include "bench/mpi_bench.h"

#ifdef SQUEEZE_HAVE_MPI
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "comm/mpi.h"

namespace {

constexpr size_t kSizes[] = {1248424, 61100840};
const char* const kSizeNames[] = {"squeezenet1.0", "alexnet"};
constexpr int kMethods = 5;
const char* const kMethodNames[kMethods] = {"raw MPI_Allreduce", "ours, thread",
                                            "ours, thread, async", "ours, nonblocking",
                                            "raw MPI_Iallreduce"};

float value(size_t i, int rank) { return float((7 * (i % 251) + 13 * size_t(rank)) % 251); }

using sq::bench::median;

struct Args {
  int reps = 20;
  int warmup = 2;
  std::string json;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    auto val = [&](const std::string& name) -> std::string {
      if (s.rfind(name + "=", 0) == 0) return s.substr(name.size() + 1);
      if (i + 1 >= argc) sq::fail(name, " needs a value");
      return argv[++i];
    };
    if (s == "--reps" || s.rfind("--reps=", 0) == 0)
      a.reps = std::stoi(val("--reps"));
    else if (s == "--warmup" || s.rfind("--warmup=", 0) == 0)
      a.warmup = std::stoi(val("--warmup"));
    else if (s == "--json" || s.rfind("--json=", 0) == 0)
      a.json = val("--json");
    else if (s == "--help" || s == "-h") {
      int r = 0;
      MPI_Comm_rank(MPI_COMM_WORLD, &r);
      if (r == 0)
        std::printf("usage: mpirun -np P bench_allreduce [--reps N] [--warmup N] [--json FILE]\n");
      sq::mpi_finalize();
      std::exit(0);
    } else
      sq::fail("unknown argument '", s, "'");
  }
  if (a.reps < 1 || a.warmup < 0) sq::fail("--reps must be >= 1 and --warmup >= 0");
  return a;
}

int run(int argc, char** argv) {
  const sq::MpiWorld world = sq::mpi_init(&argc, &argv);
  const Args args = parse(argc, argv);
  const bool root = world.rank == 0;
  auto thread_comm = sq::make_mpi_communicator(sq::MpiProgress::kThread);
  auto nb_comm = sq::make_mpi_communicator(sq::MpiProgress::kNonblocking);

  auto call = [&](int method, float* buf, size_t n) {
    switch (method) {
      case 0:
        for (size_t o = 0; o < n; o += size_t(1) << 30) {  // counts are int (never here)
          const int c = int(std::min(size_t(1) << 30, n - o));
          if (MPI_Allreduce(MPI_IN_PLACE, buf + o, c, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD) !=
              MPI_SUCCESS)
            sq::fail("MPI_Allreduce failed");
        }
        break;
      case 1:
        thread_comm->allreduce(buf, n, sq::ReduceOp::kSum);
        break;
      case 2:
        thread_comm->allreduce_async(buf, n, sq::ReduceOp::kSum).wait();
        break;
      case 3:
        nb_comm->allreduce_async(buf, n, sq::ReduceOp::kSum).wait();
        break;
      default: {
        std::vector<MPI_Request> reqs;
        for (size_t o = 0; o < n; o += size_t(1) << 30) {
          const int c = int(std::min(size_t(1) << 30, n - o));
          reqs.emplace_back();
          if (MPI_Iallreduce(MPI_IN_PLACE, buf + o, c, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD,
                             &reqs.back()) != MPI_SUCCESS)
            sq::fail("MPI_Iallreduce failed");
        }
        if (MPI_Waitall(int(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE) != MPI_SUCCESS)
          sq::fail("MPI_Waitall failed");
        break;
      }
    }
  };

  if (root) {
    std::printf(
        "bench_allreduce: %d ranks (%d on this host %s), MPI thread level %d, %d reps "
        "(+%d warm-up), order of methods rotating per rep\n",
        world.size, world.local_size, world.host.c_str(), world.thread_level, args.reps,
        args.warmup);
    std::fflush(stdout);
  }

  nlohmann::json rows = nlohmann::json::array();
  std::vector<std::string> lines;
  bool all_ok = true;
  for (size_t si = 0; si < std::size(kSizes); ++si) {
    const size_t n = kSizes[si];
    std::vector<float> buf(n);

    // Correctness: every method, every element, every rank.
    int ok[kMethods];
    for (int m = 0; m < kMethods; ++m) {
      for (size_t i = 0; i < n; ++i) buf[i] = value(i, world.rank);
      call(m, buf.data(), n);
      int good = 1;
      for (size_t i = 0; i < n && good; ++i) {
        double want = 0;
        for (int r = 0; r < world.size; ++r) want += value(i, r);
        if (double(buf[i]) != want) {
          std::fprintf(stderr, "rank %d: %s of %zu floats: element %zu is %.9g, want %.9g\n",
                       world.rank, kMethodNames[m], n, i, double(buf[i]), want);
          good = 0;
        }
      }
      MPI_Allreduce(&good, &ok[m], 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
      all_ok = all_ok && ok[m];
    }

    // Timing, interleaved.
    std::vector<std::vector<double>> t(kMethods);
    for (int rep = -args.warmup; rep < args.reps; ++rep) {
      double local[kMethods], worst[kMethods];
      for (int k = 0; k < kMethods; ++k) {
        const int m = (k + (rep + args.warmup)) % kMethods;
        std::fill(buf.begin(), buf.end(), 0.25f * float(world.rank + 1));
        MPI_Barrier(MPI_COMM_WORLD);
        const double t0 = MPI_Wtime();
        call(m, buf.data(), n);
        local[m] = MPI_Wtime() - t0;
      }
      MPI_Allreduce(local, worst, kMethods, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      if (rep >= 0)
        for (int m = 0; m < kMethods; ++m) t[m].push_back(worst[m]);
    }

    const double raw_med = median(t[0]), iraw_med = median(t[kMethods - 1]);
    for (int m = 0; m < kMethods; ++m) {
      const double med = median(t[m]);
      const double mn = *std::min_element(t[m].begin(), t[m].end());
      const double ratio = med / raw_med, iratio = med / iraw_med;
      char line[512];
      std::snprintf(
          line, sizeof line,
          "| %-13s | %10zu | %6.1f | %-18s | %9.3f | %9.3f | %5.2f | %5.3f | %5.3f | %-4s |",
          kSizeNames[si], n, n * 4.0 / 1048576.0, kMethodNames[m], med * 1e3, mn * 1e3,
          n * 4.0 / med * 1e-9, ratio, iratio, ok[m] ? "ok" : "FAIL");
      lines.push_back(line);
      rows.push_back({{"buffer", kSizeNames[si]},
                      {"floats", n},
                      {"method", kMethodNames[m]},
                      {"median_ms", med * 1e3},
                      {"min_ms", mn * 1e3},
                      {"algbw_GBps", n * 4.0 / med * 1e-9},
                      {"ratio_vs_raw", ratio},
                      {"ratio_vs_raw_iallreduce", iratio},
                      {"correct", bool(ok[m])},
                      {"reps", args.reps},
                      {"ranks", world.size},
                      {"times_ms", [&] {
                         std::vector<double> v;
                         for (double x : t[m]) v.push_back(x * 1e3);
                         return v;
                       }()}});
    }
  }

  if (root) {
    std::printf(
        "\n| buffer        |     floats |    MiB | method             | median ms |    min ms "
        "|  GB/s | / Allreduce | / Iallreduce | correct |\n");
    std::printf(
        "|---------------|-----------:|-------:|--------------------|----------:|----------:"
        "|------:|------:|------:|------|\n");
    for (const auto& l : lines) std::printf("%s\n", l.c_str());
    std::printf(
        "\nms: per rep, the slowest rank's time of the call alone (after a barrier); median "
        "and min over reps. GB/s: 4n bytes / median.\n/ Allreduce, / Iallreduce: ratio of "
        "medians to raw MPI_Allreduce and to raw MPI_Iallreduce+MPI_Waitall (goal for "
        "ours: <= 1.05 against the raw call of the same kind).\n");
    std::fflush(stdout);
    if (!args.json.empty()) {
      std::ofstream f(args.json);
      f << nlohmann::json{{"benchmark", "allreduce"}, {"ranks", world.size}, {"rows", rows}}.dump(1)
        << "\n";
      if (!f) sq::fail("cannot write ", args.json);
    }
  }
  thread_comm.reset();
  nb_comm.reset();
  sq::mpi_finalize();
  return all_ok ? 0 : 1;
}

}  // namespace

#endif  // SQUEEZE_HAVE_MPI

SQ_MPI_BENCH_MAIN("bench_allreduce")
