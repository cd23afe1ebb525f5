// Collective benchmark in the manner of nccl-tests: in-place float sum allreduce over a sweep of
// sizes, for our MPI and NCCL backends against the raw MPI call the MPI backend wraps.
//
//   mpirun -np P build-bench/bench_collectives [--max-bytes N] [--min-bytes N] [--check-only]
//                                              [--json FILE] [--csv FILE] [--target-ms T]
//
// Sizes: 8 B .. --max-bytes (default 256 MiB) by factors of 2 (2 .. 64 Mi floats), plus the named
// gradient sizes "squeezenet1.0 gradients" (1,248,424 floats), "squeezenet1.1 gradients"
// (1,235,496) and "alexnet gradients" (61,100,840) where they fit under --max-bytes.
// Methods:
//   raw           MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD)
//   thread        our Communicator, MpiProgress::kThread: allreduce_async(...).wait()
//                 (through the communication thread, as the reducer's buckets go)
//   nonblocking   our Communicator, MpiProgress::kNonblocking: allreduce_async(...).wait()
//                 (MPI_Iallreduce + wait)
//   nccl          our NCCL communicator on a device buffer (GPU local rank): allreduce_async(...)
//                 .wait(), which returns once the GPU has finished it; only in a build with NCCL,
//                 and only where every rank has a GPU NCCL accepts (decided by all ranks together,
//                 the reason printed otherwise). Refill and check go through host copies, untimed.
//
// Correctness (every size, every method, before timing): rank r holds v(i, r) = (7i + 13r) mod 64,
// small integers whose sum over ranks is exact in float; every element is checked on every rank;
// #wrong is the number of wrong elements summed over ranks (MPI_SUM), and "ok" needs 0.
// Timing: 2 warm-up calls per method (the slowest rank's time of the second, refill included,
// sets the number of reps: enough for about --target-ms per method, at least 5, at most 2000;
// counting the refill keeps a sweep where the call is far cheaper than refilling its buffer, one
// rank on a GPU, from running 2000 refills of 256 MB); the methods are
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
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "comm/mpi.h"
#ifdef SQUEEZE_HAVE_NCCL
#include <cuda_runtime_api.h>

#include "comm/nccl.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/device_buffer.h"
#endif

namespace {

// One way to allreduce: fill(src, n) loads the inputs (untimed), run(n) is the timed call,
// read(dst, n) fetches the result.
struct Method {
  std::string key, name, backend;
  std::function<void(const float*, size_t)> fill;
  std::function<void(size_t)> run;
  std::function<void(float*, size_t)> read;
};

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
  const size_t max_count_all = sizes(args).empty() ? 0 : sizes(args).back().count;
  std::vector<float> host_buf(max_count_all);
  auto host_fill = [&](const float* src, size_t n) { std::memcpy(host_buf.data(), src, n * 4); };
  auto host_read = [&](float* dst, size_t n) { std::memcpy(dst, host_buf.data(), n * 4); };
  std::vector<Method> methods;
  methods.push_back({"raw", "raw MPI_Allreduce", "mpi", host_fill,
                     [&](size_t n) {
                       if (MPI_Allreduce(MPI_IN_PLACE, host_buf.data(), int(n), MPI_FLOAT, MPI_SUM,
                                         MPI_COMM_WORLD) != MPI_SUCCESS)
                         sq::fail("MPI_Allreduce failed");
                     },
                     host_read});
  methods.push_back({"thread", "ours, thread", "mpi", host_fill,
                     [&](size_t n) {
                       thread_comm->allreduce_async(host_buf.data(), n, sq::ReduceOp::kSum).wait();
                     },
                     host_read});
  methods.push_back({"nonblocking", "ours, nonblocking", "mpi", host_fill,
                     [&](size_t n) {
                       nb_comm->allreduce_async(host_buf.data(), n, sq::ReduceOp::kSum).wait();
                     },
                     host_read});
  std::string nccl_note = "not built (no NCCL, CUDA or MPI found by CMake)";
#ifdef SQUEEZE_HAVE_NCCL
  std::unique_ptr<sq::Communicator> nccl_comm;
  sq::cuda::DeviceBuffer<float> dev_buf;
  cudaStream_t stream = nullptr;
  {
    std::string why;
    const int gpus = sq::cuda::device_count(&why);
    std::string reason = gpus > 0 ? sq::nccl_unusable_reason(world, gpus) : "no GPU (" + why + ")";
    double unusable = reason.empty() ? 0.0 : 1.0;
    thread_comm->allreduce_sum(&unusable, 1);  // all ranks take NCCL, or none does
    if (unusable > 0) {
      nccl_note = "skipped: " + (reason.empty() ? std::string("unusable on another rank") : reason);
    } else {
      nccl_note = "";
      nccl_comm = sq::make_nccl_communicator(world, world.local_rank % gpus, 60.0);
      SQ_CUDA(cudaStreamCreate(&stream));
      nccl_comm->set_compute_stream(stream);
      dev_buf = sq::cuda::DeviceBuffer<float>(std::max<size_t>(max_count_all, 1));
      methods.push_back({"nccl", "ours, NCCL (device buffer)", "nccl",
                         [&](const float* src, size_t n) {
                           SQ_CUDA(cudaMemcpy(dev_buf.get(), src, n * 4, cudaMemcpyHostToDevice));
                         },
                         [&](size_t n) {
                           nccl_comm->allreduce_async(dev_buf.get(), n, sq::ReduceOp::kSum).wait();
                         },
                         [&](float* dst, size_t n) {
                           SQ_CUDA(cudaStreamSynchronize(stream));
                           SQ_CUDA(cudaMemcpy(dst, dev_buf.get(), n * 4, cudaMemcpyDeviceToHost));
                         }});
    }
  }
#endif
  const int kMethods = int(methods.size());

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
    if (!nccl_note.empty()) std::printf("# NCCL method: %s\n", nccl_note.c_str());
    std::printf("# %10s %10s %5s %5s %-23s", "size", "count", "type", "redop", "name");
    for (int m = 0; m < kMethods; ++m) std::printf(" | %-32s", methods[m].name.c_str());
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
  std::vector<float> buf(max_count), src(max_count);  // inputs and results on the host

  nlohmann::json rows = nlohmann::json::array();
  std::string csv = "bytes,count,type,redop,name,method,reps,time_us,min_us,algbw_GBps,busbw_GBps,wrong,ok\n";
  bool all_ok = true;
  std::vector<double> busbw_sum(static_cast<size_t>(kMethods), 0.0);
  int busbw_n = 0;
  for (const Size& s : sz) {
    const size_t n = s.count;
    const size_t bytes = n * 4;

    // Correctness: every method, every element, every rank.
    std::vector<long long> wrong(static_cast<size_t>(kMethods), 0);
    for (int m = 0; m < kMethods; ++m) {
      for (size_t i = 0; i < n; ++i) buf[i] = value(i, world.rank);
      std::fill(buf.begin() + long(n), buf.end(), 0.0f);
      methods[m].fill(buf.data(), n);
      methods[m].run(n);
      std::fill(buf.begin(), buf.begin() + long(n), -1.0f);  // what read() does not write stays wrong
      methods[m].read(buf.data(), n);
      long long bad = 0;
      for (size_t i = 0; i < n; ++i) {
        float want = 0;
        for (int r = 0; r < p; ++r) want += value(i, r);
        if (buf[i] != want) {
          if (bad == 0)
            std::fprintf(stderr, "rank %d: %s of %zu floats: element %zu is %.9g, want %.9g\n",
                         world.rank, methods[m].name.c_str(), n, i, double(buf[i]), double(want));
          ++bad;
        }
      }
      MPI_Allreduce(&bad, &wrong[m], 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
      all_ok = all_ok && wrong[m] == 0;
    }

    // Timing, interleaved.
    std::vector<double> med(static_cast<size_t>(kMethods), 0.0), mn(static_cast<size_t>(kMethods), 0.0);
    int reps = 0;
    if (!args.check_only) {
      for (size_t i = 0; i < n; ++i) src[i] = 0.25f * float((i + size_t(world.rank)) % 8);
      auto timed = [&](int m, double* with_fill = nullptr) {
        const double f0 = MPI_Wtime();
        methods[m].fill(src.data(), n);
        methods[m].read(buf.data(), 0);  // (waits for the device where there is one)
        MPI_Barrier(MPI_COMM_WORLD);
        const double t0 = MPI_Wtime();
        methods[m].run(n);
        const double t1 = MPI_Wtime();
        if (with_fill) *with_fill = t1 - f0;
        return t1 - t0;
      };
      std::vector<double> warm(static_cast<size_t>(kMethods)), warm_max(static_cast<size_t>(kMethods));
      for (int w = 0; w < 2; ++w)
        for (int m = 0; m < kMethods; ++m) timed(m, &warm[m]);
      MPI_Allreduce(warm.data(), warm_max.data(), kMethods, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      const double slowest = *std::max_element(warm_max.begin(), warm_max.end());
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
                              {"method", methods[m].key},
                              {"method_name", methods[m].name},
                              {"backend", methods[m].backend},
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
                      bytes, n, s.name.c_str(), methods[m].key.c_str(), reps, med[m] * 1e6, mn[m] * 1e6,
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
                    methods[m].name.c_str(), busbw_sum[m] / busbw_n);
    std::printf("#\n");
    std::fflush(stdout);
    const nlohmann::json doc = {{"benchmark", "collectives"},
                                {"collective", "allreduce"},
                                {"backends", kMethods > 3 ? "mpi, nccl" : "mpi"},
                                {"nccl", nccl_note.empty() ? std::string("measured") : nccl_note},
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
#ifdef SQUEEZE_HAVE_NCCL
  methods.clear();
  nccl_comm.reset();
  if (stream) cudaStreamDestroy(stream);
#endif
  thread_comm.reset();
  nb_comm.reset();
  sq::mpi_finalize();
  return all_ok ? 0 : 1;
}

}  // namespace

#endif  // SQUEEZE_HAVE_MPI

SQ_MPI_BENCH_MAIN("bench_collectives")
