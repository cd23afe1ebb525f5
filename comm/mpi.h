// MPI: process start-up for jobs launched by mpirun, and the MPI backend of the Communicator.
// Built from comm/mpi.cpp when CMake finds MPI (SQUEEZE_HAVE_MPI); otherwise comm/mpi_none.cpp
// provides the same functions, which say that this build has no MPI.
#pragma once
#include <memory>
#include <string>

#include "comm/communicator.h"
#include "core/error.h"

namespace sq {

bool mpi_built();  // this build links MPI

struct MpiWorld {
  int rank = 0, size = 1;
  int local_rank = 0, local_size = 1;  // among the ranks on this host
  std::string host;
  int thread_level = 0;  // MPI_THREAD_* that the library provides
};

// MPI_Init_thread (asking for MPI_THREAD_MULTIPLE), errors returned rather than fatal, and the
// job's shape. Throws sq::Error when MPI is missing or fails.
MpiWorld mpi_init(int* argc, char*** argv);
bool mpi_active();  // initialised and not finalised
void mpi_finalize();
// Ends the whole job: MPI_Abort on MPI_COMM_WORLD (the runtime kills every rank).
[[noreturn]] void mpi_abort(int code);

// How asynchronous collectives make progress while backward computes:
//  thread      - a communication thread issues blocking collectives in FIFO order;
//  nonblocking - MPI_Iallreduce, advanced by Communicator::poll() between layers of backward.
enum class MpiProgress { kThread, kNonblocking };
inline MpiProgress parse_mpi_progress(const std::string& s) {
  if (s == "thread") return MpiProgress::kThread;
  if (s == "nonblocking") return MpiProgress::kNonblocking;
  fail("unknown --mpi-progress '", s, "' (known: thread, nonblocking)");
}

// A communicator over a duplicate of MPI_COMM_WORLD (after mpi_init).
std::unique_ptr<Communicator> make_mpi_communicator(MpiProgress progress);

}  // namespace sq
