#include "launch/job.h"

#include <omp.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <thread>

#include "core/error.h"

namespace sq {

LaunchEnv detect_launch_env() {
  static const char* const kSizeVars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE",
                                          "PMIX_SIZE"};
  LaunchEnv e;
  for (const char* v : kSizeVars)
    if (const char* s = std::getenv(v)) {
      e.launcher = v;
      e.size = std::atoi(s);
      return e;
    }
  if (std::getenv("PMIX_RANK")) {
    e.launcher = "PMIX_RANK";
    e.size = 0;
  }
  return e;
}

Job start_job(int* argc, char*** argv) {
  Job job;
  const LaunchEnv env = detect_launch_env();
  if (env.launcher.empty() || (!mpi_built() && env.size == 1)) {
    char host[256] = {0};
    if (gethostname(host, sizeof host - 1) == 0) job.world.host = host;
    return job;
  }
  if (!mpi_built())
    fail("launched by an MPI launcher (", env.launcher, "=", env.size,
         ") but this squeeze was built without MPI; install libopenmpi-dev and rebuild");
  job.world = mpi_init(argc, argv);
  job.mpi = true;
  return job;
}

std::unique_ptr<Communicator> make_job_communicator(const Job& job, MpiProgress progress) {
  if (!job.mpi) return make_local_communicator();
  return make_mpi_communicator(progress);
}

int default_threads(const Job& job) {
  if (std::getenv("OMP_NUM_THREADS")) return omp_get_max_threads();
  const int procs = omp_get_num_procs();  // respects the launcher's binding
  if (!job.mpi || job.world.local_size <= 1) return procs;
  const int hw = int(std::thread::hardware_concurrency());
  return std::max(1, std::min(procs, hw / job.world.local_size));
}

void end_job(const Job& job) {
  if (job.mpi) mpi_finalize();
}

void fail_job(const Job& job, const std::string& message) {
  if (job.mpi)
    std::fprintf(stderr, "squeeze: error on rank %d of %d (host %s): %s\n", job.rank(), job.size(),
                 job.world.host.c_str(), message.c_str());
  else
    std::fprintf(stderr, "squeeze: error: %s\n", message.c_str());
  std::fflush(stderr);
  if (job.mpi) mpi_abort(1);
  std::exit(1);
}

}  // namespace sq
