// Collective benchmark in the manner of nccl-tests: in-place float sum allreduce over a sweep of
// sizes, for our MPI backend against the raw MPI call it wraps.
//
//   mpirun -np P build-bench/bench_collectives [--max-bytes N] [--min-bytes N] [--check-only]
//                                              [--json FILE] [--csv FILE] [--target-ms T]
//
// Sizes: 8 B .. --max-bytes (default 256 MiB) by factors of 2 (2 .. 64 Mi floats), plus the named
// gradient sizes "squeezenet1.0 gradients" (1,248,424 floats), "squeezenet1.1 gradients"
// (1,235,496) and "alexnet gradients" (61,100,840) where they fit under --max-bytes.
// Methods (MPI backend; the NCCL backend is not built yet):
//   raw           MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD)
//   thread        our Communicator, MpiProgress::kThread: allreduce_async(...).wait()
//                 (through the communication thread, as the reducer's buckets go)
//   nonblocking   our Communicator, MpiProgress::kNonblocking: allreduce_async(...).wait()
//                 (MPI_Iallreduce + wait)
//
// Correctness (every size, every method, before timing): rank r holds v(i, r) = (7i + 13r) mod 64,
// small integers whose sum over ranks is exact in float; every element is checked on every rank;
// #wrong is the number of wrong elements summed over ranks (MPI_SUM), and "ok" needs 0.
// Timing: 2 warm-up calls per method (the slowest rank's time of the second sets the number of
// reps: enough for about --target-ms per method, at least 5, at most 2000); the methods are
// interleaved rep by rep with rotating order; each timed call: refill the buffer (untimed),
// MPI_Barrier, MPI_Wtime() around the call alone. A rep's time is the maximum over ranks; the
// table shows the median over reps. algbw = bytes / time, busbw = algbw * 2(p-1)/p (nccl-tests'
// allreduce bus bandwidth: the per-link traffic of a ring, comparable to the link's speed).
// --check-only: the correctness pass alone (one call per size and method), exit 1 on any FAIL.
#include "bench/mpi_bench.h"

#ifdef SQUEEZE_HAVE_MPI
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <exception>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "comm/mpi.h"

namespace {

constexpr int kMethods = 3;
const char* const kMethodNames[kMethods] = {"raw MPI_Allreduce", "ours, thread",
                                            "ours, nonblocking"};
const char* const kMethodKeys[kMethods] = {"raw", "thread", "nonblocking"};

struct Size {
  size_t count;      // floats
  std::string name;  // "" for the power-of-two sweep
};

float value(size_t i, int rank) { return float((7 * (i % 64) + 13 * size_t(rank)) % 64); }

using sq::bench::median;

struct Args {
  size_t max_bytes = size_t(256) << 20;
  size_t min_bytes = 8;
  bool check_only = false;
  double target_ms = 50;
  std::string json, csv;
};

[[noreturn]] void usage_exit(int rank, int code) {
  if (rank == 0)
    std::printf(
        "usage: mpirun -np P bench_collectives [--max-bytes N] [--min-bytes N] [--check-only]\n"
        "                                       [--target-ms T] [--json FILE] [--csv FILE]\n");
  sq::mpi_finalize();
  std::exit(code);
}

Args parse(int argc, char** argv, int rank) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    auto is = [&](const char* name) {
      return s == name || s.rfind(std::string(name) + "=", 0) == 0;
    };
    auto val = [&](const std::string& name) -> std::string {
      if (s.rfind(name + "=", 0) == 0) return s.substr(name.size() + 1);
      if (i + 1 >= argc) sq::fail(name, " needs a value");
      return argv[++i];
    };
    if (is("--max-bytes"))
      a.max_bytes = std::stoull(val("--max-bytes"));
    else if (is("--min-bytes"))
      a.min_bytes = std::stoull(val("--min-bytes"));
    else if (is("--target-ms"))
      a.target_ms = std::stod(val("--target-ms"));
    else if (is("--json"))
      a.json = val("--json");
    else if (is("--csv"))
      a.csv = val("--csv");
    else if (s == "--check-only")
      a.check_only = true;
    else if (s == "--help" || s == "-h")
      usage_exit(rank, 0);
    else
      sq::fail("unknown argument '", s, "'");
  }
  if (a.max_bytes < 8 || a.max_bytes > (size_t(1) << 32))
    sq::fail("--max-bytes must be in [8, 4 GiB]");
  if (a.target_ms <= 0) sq::fail("--target-ms must be > 0");
  return a;
}

std::vector<Size> sizes(const Args& a) {
  std::vector<Size> v;
  for (size_t b = 8; b <= a.max_bytes; b *= 2)
    if (b >= a.min_bytes) v.push_back({b / 4, ""});
  const Size named[] = {{1248424, "squeezenet1.0 gradients"},
                        {1235496, "squeezenet1.1 gradients"},
                        {61100840, "alexnet gradients"}};
  for (const Size& s : named)
    if (s.count * 4 <= a.max_bytes && s.count * 4 >= a.min_bytes) v.push_back(s);
  std::stable_sort(v.begin(), v.end(),
                   [](const Size& x, const Size& y) { return x.count < y.count; });
  return v;
}

std::string today() {
  char b[32];
  const std::time_t t = std::time(nullptr);
  std::strftime(b, sizeof b, "%Y-%m-%d", std::gmtime(&t));
  return b;
}

int run(int argc, char** argv) {
  const sq::MpiWorld world = sq::mpi_init(&argc, &argv);
  const Args args = parse(argc, argv, world.rank);
  const bool root = world.rank == 0;
  const int p = world.size;
  auto thread_comm = sq::make_mpi_communicator(sq::MpiProgress::kThread);
  auto nb_comm = sq::make_mpi_communicator(sq::MpiProgress::kNonblocking);

  auto call = [&](int method, float* buf, size_t n) {
    switch (method) {
      case 0:
        if (MPI_Allreduce(MPI_IN_PLACE, buf, int(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD) !=
            MPI_SUCCESS)
          sq::fail("MPI_Allreduce failed");
        break;
      case 1:
        thread_comm->allreduce_async(buf, n, sq::ReduceOp::kSum).wait();
        break;
      default:
        nb_comm->allreduce_async(buf, n, sq::ReduceOp::kSum).wait();
        break;
    }
  };

  char lib[MPI_MAX_LIBRARY_VERSION_STRING];
  int liblen = 0;
  MPI_Get_library_version(lib, &liblen);
  std::string library(lib, size_t(liblen));
  if (const auto nl = library.find_first_of("\n,"); nl != std::string::npos)
    library.resize(nl);

  const std::vector<Size> sz = sizes(args);
  if (root) {
    std::printf("# bench_collectives: allreduce, float sum, in place; %d ranks (%d on this host %s)\n",
                p, world.local_size, world.host.c_str());
    std::printf("# %s; MPI thread level %d; %s\n", library.c_str(), world.thread_level,
                args.check_only ? "correctness pass only (--check-only)"
                                : "time: median over reps of the slowest rank, us");
    std::printf("#\n");
    std::printf("# %10s %10s %5s %5s %-23s", "size", "count", "type", "redop", "name");
    for (int m = 0; m < kMethods; ++m) std::printf(" | %-32s", kMethodNames[m]);
    std::printf(" |\n# %10s %10s %5s %5s %-23s", "(B)", "(elements)", "", "", "");
    for (int m = 0; m < kMethods; ++m)
      std::printf(" | %9s %6s %6s %6s %3s", args.check_only ? "" : "time", "algbw", "busbw",
                  "#wrong", "");
    std::printf(" |\n# %10s %10s %5s %5s %-23s", "", "", "", "", "");
    for (int m = 0; m < kMethods; ++m)
      std::printf(" | %9s %6s %6s %6s %3s", args.check_only ? "" : "(us)", "(GB/s)", "(GB/s)",
                  "", "");
    std::printf(" |\n");
    std::fflush(stdout);
  }

  const size_t max_count = sz.empty() ? 0 : sz.back().count;
  if (max_count > size_t(INT_MAX)) sq::fail("sizes above INT_MAX floats are not supported");
  std::vector<float> buf(max_count), src(max_count);

  nlohmann::json rows = nlohmann::json::array();
  std::string csv = "bytes,count,type,redop,name,method,reps,time_us,min_us,algbw_GBps,busbw_GBps,wrong,ok\n";
  bool all_ok = true;
  double busbw_sum[kMethods] = {0, 0, 0};
  int busbw_n = 0;
  for (const Size& s : sz) {
    const size_t n = s.count;
    const size_t bytes = n * 4;

    // Correctness: every method, every element, every rank.
    long long wrong[kMethods];
    for (int m = 0; m < kMethods; ++m) {
      for (size_t i = 0; i < n; ++i) buf[i] = value(i, world.rank);
      call(m, buf.data(), n);
      long long bad = 0;
      for (size_t i = 0; i < n; ++i) {
        float want = 0;
        for (int r = 0; r < p; ++r) want += value(i, r);
        if (buf[i] != want) {
          if (bad == 0)
            std::fprintf(stderr, "rank %d: %s of %zu floats: element %zu is %.9g, want %.9g\n",
                         world.rank, kMethodNames[m], n, i, double(buf[i]), double(want));
          ++bad;
        }
      }
      MPI_Allreduce(&bad, &wrong[m], 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
      all_ok = all_ok && wrong[m] == 0;
    }

    // Timing, interleaved.
    double med[kMethods] = {0, 0, 0}, mn[kMethods] = {0, 0, 0};
    int reps = 0;
    if (!args.check_only) {
      for (size_t i = 0; i < n; ++i) src[i] = 0.25f * float((i + size_t(world.rank)) % 8);
      auto timed = [&](int m) {
        std::memcpy(buf.data(), src.data(), bytes);
        MPI_Barrier(MPI_COMM_WORLD);
        const double t0 = MPI_Wtime();
        call(m, buf.data(), n);
        return MPI_Wtime() - t0;
      };
      double warm[kMethods], warm_max[kMethods];
      for (int w = 0; w < 2; ++w)
        for (int m = 0; m < kMethods; ++m) warm[m] = timed(m);
      MPI_Allreduce(warm, warm_max, kMethods, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      const double slowest = *std::max_element(warm_max, warm_max + kMethods);
      reps = int(std::clamp(args.target_ms * 1e-3 / std::max(slowest, 1e-7), 5.0, 2000.0));
      std::vector<double> local(size_t(reps) * kMethods), worst(local.size());
      for (int rep = 0; rep < reps; ++rep)
        for (int k = 0; k < kMethods; ++k) {
          const int m = (k + rep) % kMethods;
          local[size_t(rep) * kMethods + m] = timed(m);
        }
      MPI_Allreduce(local.data(), worst.data(), int(local.size()), MPI_DOUBLE, MPI_MAX,
                    MPI_COMM_WORLD);
      for (int m = 0; m < kMethods; ++m) {
        std::vector<double> t;
        for (int rep = 0; rep < reps; ++rep) t.push_back(worst[size_t(rep) * kMethods + m]);
        med[m] = median(t);
        mn[m] = *std::min_element(t.begin(), t.end());
      }
    }

    if (root) {
      std::printf("  %10zu %10zu %5s %5s %-23s", bytes, n, "float", "sum",
                  s.name.empty() ? "-" : s.name.c_str());
      for (int m = 0; m < kMethods; ++m) {
        const double algbw = args.check_only ? 0 : bytes / med[m] * 1e-9;
        const double busbw = algbw * 2.0 * (p - 1) / p;
        if (args.check_only)
          std::printf(" | %9s %6s %6s %6lld %3s", "", "", "", wrong[m], wrong[m] ? "BAD" : "ok");
        else
          std::printf(" | %9.1f %6.2f %6.2f %6lld %3s", med[m] * 1e6, algbw, busbw, wrong[m],
                      wrong[m] ? "BAD" : "ok");
        if (!args.check_only && s.name.empty()) busbw_sum[m] += busbw;
        nlohmann::json row = {{"bytes", bytes},
                              {"count", n},
                              {"type", "float"},
                              {"redop", "sum"},
                              {"name", s.name},
                              {"method", kMethodKeys[m]},
                              {"method_name", kMethodNames[m]},
                              {"backend", "mpi"},
                              {"ranks", p},
                              {"wrong", wrong[m]},
                              {"ok", wrong[m] == 0}};
        if (!args.check_only) {
          row["reps"] = reps;
          row["time_us"] = med[m] * 1e6;
          row["min_us"] = mn[m] * 1e6;
          row["algbw_GBps"] = algbw;
          row["busbw_GBps"] = busbw;
        }
        rows.push_back(row);
        char line[512];
        std::snprintf(line, sizeof line, "%zu,%zu,float,sum,%s,%s,%d,%.3f,%.3f,%.4f,%.4f,%lld,%d\n",
                      bytes, n, s.name.c_str(), kMethodKeys[m], reps, med[m] * 1e6, mn[m] * 1e6,
                      algbw, busbw, wrong[m], wrong[m] == 0 ? 1 : 0);
        csv += line;
      }
      std::printf(" |\n");
      std::fflush(stdout);
    }
    if (s.name.empty()) ++busbw_n;
  }

  if (root) {
    std::printf("# Out of bounds values : %s\n", all_ok ? "0 OK" : "FAIL");
    if (!args.check_only && busbw_n > 0)
      for (int m = 0; m < kMethods; ++m)
        std::printf("# Avg bus bandwidth (power-of-two sizes), %-17s : %.4f GB/s\n",
                    kMethodNames[m], busbw_sum[m] / busbw_n);
    std::printf("#\n");
    std::fflush(stdout);
    const nlohmann::json doc = {{"benchmark", "collectives"},
                                {"collective", "allreduce"},
                                {"backend", "mpi"},
                                {"ranks", p},
                                {"local_ranks", world.local_size},
                                {"host", world.host},
                                {"mpi_library", library},
                                {"date", today()},
                                {"check_only", args.check_only},
                                {"target_ms", args.target_ms},
                                {"all_ok", all_ok},
                                {"rows", rows}};
    if (!args.json.empty()) {
      std::ofstream f(args.json);
      f << doc.dump(1) << "\n";
      if (!f) sq::fail("cannot write ", args.json);
    }
    if (!args.csv.empty()) {
      std::ofstream f(args.csv);
      f << csv;
      if (!f) sq::fail("cannot write ", args.csv);
    }
  }
  thread_comm.reset();
  nb_comm.reset();
  sq::mpi_finalize();
  return all_ok ? 0 : 1;
}

}  // namespace

#endif  // SQUEEZE_HAVE_MPI

SQ_MPI_BENCH_MAIN("bench_collectives")
