// The MPI entry points of a build without MPI: every one is a clear error.
#include <cstdlib>

#include "comm/mpi.h"
#include "core/error.h"

namespace sq {

namespace {
[[noreturn]] void no_mpi() {
  fail("this squeeze was built without MPI; install libopenmpi-dev and rebuild to run under mpirun");
}
}  // namespace

bool mpi_built() { return false; }
MpiWorld mpi_init(int*, char***) { no_mpi(); }
bool mpi_active() { return false; }
void mpi_finalize() {}
void mpi_abort(int code) { std::exit(code); }
std::unique_ptr<Communicator> make_mpi_communicator(MpiProgress) { no_mpi(); }

}  // namespace sq
