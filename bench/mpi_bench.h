// Shared by the hand-timed MPI benchmarks (bench_allreduce, bench_collectives, bench_ddp): the
// median of a sample, and main(): run the benchmark, turn an exception into one line and a
// whole-job abort; in a build without MPI, say so and exit 1.
#pragma once
#include <algorithm>
#include <cstdio>
#include <exception>
#include <vector>

#ifdef SQUEEZE_HAVE_MPI
#include <mpi.h>

#include <cstdint>

#include "comm/communicator.h"
#include "comm/mpi.h"
#endif

namespace sq::bench {

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

#ifdef SQUEEZE_HAVE_MPI
// Whether x[0..n) is bitwise the same on every rank (a checksum compared over MPI_COMM_WORLD).
inline bool same_on_all_ranks(const float* x, size_t n) {
  const uint64_t c = checksum(x, n);
  int p = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &p);
  std::vector<uint64_t> all(static_cast<size_t>(p));
  MPI_Allgather(&c, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD);
  return std::all_of(all.begin(), all.end(), [&](uint64_t v) { return v == all[0]; });
}
#endif

}  // namespace sq::bench

// main() of a benchmark `name` whose body is `int run(int argc, char** argv)` (under MPI).
#ifdef SQUEEZE_HAVE_MPI
#define SQ_MPI_BENCH_MAIN(name)                                   \
  int main(int argc, char** argv) {                               \
    try {                                                         \
      return run(argc, argv);                                     \
    } catch (const std::exception& e) {                           \
      std::fprintf(stderr, name ": %s\n", e.what());              \
      sq::mpi_abort(1);                                           \
    }                                                             \
  }
#else
#define SQ_MPI_BENCH_MAIN(name)                      \
  int main() {                                       \
    std::printf(name ": built without MPI\n");       \
    return 1;                                        \
  }
#endif
