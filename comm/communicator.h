// The communicator: collectives over the ranks of a data-parallel job. Asynchronous (a request
// to wait on) so the gradient reducer can overlap them with backward. Backends: world size 1
// (everything completes at once, no MPI calls) and MPI (comm/mpi.h); NCCL implements the same
// interface, so core/ never needs #ifdefs.
//
// Contract, as for MPI: every rank issues the same collectives in the same order; a buffer
// handed to an asynchronous collective stays untouched until its request's wait() returns.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sq {

enum class ReduceOp { kSum, kAvg };

class Communicator;

// A handle to an outstanding asynchronous collective: a slot in its communicator's pool of
// requests, so that starting and waiting allocate nothing once the pool has grown to the
// number of collectives in flight. Move-only; wait() exactly once (a handle destroyed unwaited
// keeps its slot busy until the communicator goes).
class CommRequest {
 public:
  CommRequest() = default;  // already complete
  CommRequest(Communicator* comm, uint32_t slot) : comm_(comm), slot_(slot) {}
  CommRequest(CommRequest&& o) noexcept : comm_(o.comm_), slot_(o.slot_) { o.comm_ = nullptr; }
  CommRequest& operator=(CommRequest&& o) noexcept {
    comm_ = o.comm_;
    slot_ = o.slot_;
    o.comm_ = nullptr;
    return *this;
  }
  CommRequest(const CommRequest&) = delete;
  CommRequest& operator=(const CommRequest&) = delete;
  // Blocks until the collective is complete; rethrows its failure as sq::Error.
  inline void wait();

 private:
  Communicator* comm_ = nullptr;
  uint32_t slot_ = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;  // "local", "mpi (communication thread)", ...
  // In-place allreduce of n floats.
  virtual CommRequest allreduce_async(float* buf, size_t n, ReduceOp op) = 0;
  // Blocking in-place sum of a few doubles (metrics: loss sums, correct counts).
  virtual void allreduce_sum(double* buf, size_t n) = 0;
  virtual void broadcast(float* buf, size_t n, int root) = 0;
  // Every rank's value, indexed by rank (replica checksums).
  virtual std::vector<uint64_t> allgather(uint64_t value) = 0;
  virtual void barrier() = 0;
  // Lets a backend without a progress thread advance its outstanding collectives; the reducer
  // calls it between layers of backward. A no-op where progress is automatic.
  virtual void poll() {}
  // Collectives started between group_begin and group_end may be fused by the backend (NCCL
  // groups); the reducer brackets the buckets that become ready together.
  virtual void group_begin() {}
  virtual void group_end() {}
  // True when allreduce_async takes device buffers (NCCL); its blocking collectives still take
  // host buffers. set_compute_stream: the stream whose work an allreduce must follow (a
  // cudaStream_t, opaque here so that core/ needs no CUDA headers).
  virtual bool device_buffers() const { return false; }
  virtual void set_compute_stream(void* /*stream*/) {}

  // Blocking allreduce (a backend may run it on the calling thread when nothing is in flight).
  virtual void allreduce(float* buf, size_t n, ReduceOp op) { allreduce_async(buf, n, op).wait(); }

 protected:
  friend class CommRequest;
  // Completes the request in `slot` (only backends that hand out slots are asked).
  virtual void wait_slot(uint32_t slot) = 0;
};

void CommRequest::wait() {
  if (!comm_) return;
  Communicator* c = comm_;
  comm_ = nullptr;
  c->wait_slot(slot_);
}

// Rank 0 of 1: every collective is the identity.
std::unique_ptr<Communicator> make_local_communicator();

// A 64-bit checksum of a float buffer's bytes (order-sensitive), for replica agreement.
uint64_t checksum(const float* x, size_t n);

// Gathers every rank's checksum of `params` and throws sq::Error naming the first rank that
// disagrees with rank 0 and `when` ("at start", "after step 100").
void verify_replicas(Communicator& comm, const float* params, size_t n, const std::string& when);

}  // namespace sq
