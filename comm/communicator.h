// The communicator: collectives over the ranks of a data-parallel job. Asynchronous (a request
// to wait on) so the gradient reducer can overlap them with backward. This issue ships the
// world-size-1 backend, which completes everything at once; MPI and NCCL backends implement the
// same interface, so core/ never needs #ifdefs.
#pragma once
#include <cstddef>
#include <memory>

namespace sq {

enum class ReduceOp { kSum, kAvg };

class CommRequest {
 public:
  virtual ~CommRequest() = default;
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In-place allreduce of n floats; the buffer must stay untouched until wait() returns.
  virtual std::unique_ptr<CommRequest> allreduce_async(float* buf, size_t n, ReduceOp op) = 0;
  // Blocking in-place sum of a few doubles (metrics: loss sums, correct counts).
  virtual void allreduce_sum(double* buf, size_t n) = 0;
  virtual void broadcast(float* buf, size_t n, int root) = 0;
  virtual void barrier() = 0;

  void allreduce(float* buf, size_t n, ReduceOp op) { allreduce_async(buf, n, op)->wait(); }
};

// Rank 0 of 1: every collective is the identity.
std::unique_ptr<Communicator> make_local_communicator();

}  // namespace sq
