// A build without NCCL (or without CUDA or MPI): GPU jobs use the MPI backend through host memory.
#include "comm/nccl.h"
#include "core/error.h"

namespace sq {

bool nccl_built() { return false; }
std::string nccl_unusable_reason(const MpiWorld&, int) {
  return "this squeeze was built without NCCL";
}
std::unique_ptr<Communicator> make_nccl_communicator(const MpiWorld&, int, double) {
  fail("this squeeze was built without NCCL");
}

}  // namespace sq
