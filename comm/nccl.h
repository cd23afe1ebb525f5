// NCCL: the gradient allreduce on device buffers, one GPU per rank, bootstrapped over MPI
// (rank 0's ncclGetUniqueId broadcast with MPI_Bcast, then ncclCommInitRank). Built when CMake
// finds CUDA, NCCL and MPI (comm/nccl.cpp); otherwise comm/nccl_none.cpp says so.
#pragma once
#include <memory>
#include <string>

#include "comm/communicator.h"
#include "comm/mpi.h"

namespace sq {

bool nccl_built();

// Why NCCL cannot serve this job on this host ("" when it can): several ranks on one GPU need
// NCCL >= 2.30 with NCCL_MULTI_RANK_GPU_ENABLE=1.
std::string nccl_unusable_reason(const MpiWorld& world, int gpus_on_host);

// Each bucket's allreduce runs on a communication stream, after an event recorded on the
// compute stream (set_compute_stream) when the bucket was started: no host synchronisation to
// start it. Waiting polls the event and ncclCommGetAsyncError; past timeout_s the communicator is
// aborted and the wait throws, naming the rank and the collective. Blocking collectives (metrics,
// broadcast, replica checks) take host buffers and go over MPI.
std::unique_ptr<Communicator> make_nccl_communicator(const MpiWorld& world, int device,
                                                     double timeout_s);

}  // namespace sq
