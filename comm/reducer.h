// The gradient reducer, in the manner of PyTorch DDP: the flat gradient buffer is cut into
// buckets in reverse layer order; backward fills gradients back to front, so each bucket is one
// contiguous slice (no copies), and its allreduce starts as soon as backward has produced all of
// its gradients, while the rest of backward computes.
#pragma once
#include <cstddef>
#include <memory>
#include <vector>

#include "comm/communicator.h"
#include "core/params.h"

namespace sq {

struct Bucket {
  size_t begin = 0, end = 0;  // [begin, end) in floats of the flat gradient buffer
};

// Tensor boundaries of a layout: 0, every tensor's end offset (ascending).
std::vector<size_t> tensor_bounds(const ParamLayout& layout);

// Buckets along `bounds` (ascending offsets from 0 to the total), filled from the end of the
// buffer: a bucket closes at the first boundary at which it holds at least cap_floats (a tensor
// larger than the cap is a bucket by itself); the last bucket may be smaller. Bucket 0 is the
// one at the end of the buffer, the first to become ready. cap_floats = 0: one bucket.
std::vector<Bucket> plan_buckets(const std::vector<size_t>& bounds, size_t cap_floats);

class GradReducer {
 public:
  // grads: the flat gradient buffer the plan covers. overlap = false starts every bucket in
  // finish() instead (the no-overlap baseline of the benchmarks).
  GradReducer(Communicator& comm, float* grads, std::vector<Bucket> plan, ReduceOp op,
              bool overlap = true);

  // Backward's readiness hook: every gradient at offsets >= offset is final. Starts each bucket
  // that lies entirely there and lets the communicator make progress.
  void ready(size_t offset);
  // Starts the remaining buckets and waits for all; resets for the next step. Rethrows a
  // collective's failure.
  void finish();

  const std::vector<Bucket>& plan() const { return plan_; }
  double last_wait_seconds() const { return last_wait_s_; }  // finish()'s blocking time

 private:
  void start(size_t i);

  Communicator& comm_;
  float* grads_;
  std::vector<Bucket> plan_;
  ReduceOp op_;
  bool overlap_;
  size_t next_ = 0;  // next bucket to start
  std::vector<CommRequest> pending_;  // capacity: one per bucket, reserved
  double last_wait_s_ = 0;
};

}  // namespace sq
