// Process start-up: is this process one rank of an mpirun job, or a single process? Rank, world
// size, local rank, host; the communicator; thread count per rank; and turning any rank's
// failure into a whole-job exit (never a hang in a collective).
#pragma once
#include <memory>
#include <string>

#include "comm/communicator.h"
#include "comm/mpi.h"

namespace sq {

// What the environment says about the launcher, before any MPI call: Open MPI
// (OMPI_COMM_WORLD_SIZE), PMIx (PMIX_RANK), MPICH/Hydra and Slurm PMI (PMI_SIZE), MVAPICH2
// (MV2_COMM_WORLD_SIZE). `launcher` is empty for a plain process.
struct LaunchEnv {
  std::string launcher;  // the variable that identified it
  int size = 1;          // world size it announces (0: unknown)
};
LaunchEnv detect_launch_env();

struct Job {
  bool mpi = false;  // MPI is initialised (launched by mpirun)
  MpiWorld world;    // rank 0 of 1 on this host for a single process
  int rank() const { return world.rank; }
  int size() const { return world.size; }
  bool root() const { return world.rank == 0; }
};

// Initialises MPI when launched by mpirun (throws sq::Error if this build has no MPI and the
// job has more than one rank); a single process makes no MPI call.
Job start_job(int* argc, char*** argv);

// The job's communicator: MPI when launched by mpirun, else the world-size-1 one.
std::unique_ptr<Communicator> make_job_communicator(const Job& job, MpiProgress progress);

// --threads 0: all cores of a single process; under mpirun, the host's cores shared among the
// ranks on it (OMP_NUM_THREADS, if set, wins).
int default_threads(const Job& job);

// Normal end: MPI_Finalize when initialised.
void end_job(const Job& job);

// Prints "squeeze: error[ on rank R of N (host H)]: message" to stderr and ends the whole job
// with exit status 1: MPI_Abort under mpirun, so that no rank waits forever in a collective.
[[noreturn]] void fail_job(const Job& job, const std::string& message);

}  // namespace sq
