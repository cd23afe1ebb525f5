#include "comm/reducer.h"

#include <chrono>

#include "core/error.h"

namespace sq {

std::vector<size_t> tensor_bounds(const ParamLayout& layout) {
  std::vector<size_t> b{0};
  for (const ParamSpec& p : layout.tensors) b.push_back(p.offset + p.count);
  return b;
}

std::vector<Bucket> plan_buckets(const std::vector<size_t>& bounds, size_t cap_floats) {
  SQ_ASSERT(!bounds.empty() && bounds.front() == 0, "bounds must start at 0");
  for (size_t i = 1; i < bounds.size(); ++i)
    SQ_ASSERT(bounds[i] >= bounds[i - 1], "bounds must ascend");
  std::vector<Bucket> plan;
  const size_t total = bounds.back();
  if (total == 0) return plan;
  size_t end = total;
  for (size_t i = bounds.size() - 1; i-- > 0;) {
    const size_t b = bounds[i];
    if (b == 0 || (cap_floats > 0 && end - b >= cap_floats)) {
      if (b < end) plan.push_back({b, end});
      end = b;
    }
  }
  return plan;
}

GradReducer::GradReducer(Communicator& comm, float* grads, std::vector<Bucket> plan, ReduceOp op,
                         bool overlap)
    : comm_(comm), grads_(grads), plan_(std::move(plan)), op_(op), overlap_(overlap) {
  pending_.reserve(plan_.size());
}

void GradReducer::start(size_t i) {
  const Bucket& b = plan_[i];
  pending_.push_back(comm_.allreduce_async(grads_ + b.begin, b.end - b.begin, op_));
}

void GradReducer::ready(size_t offset) {
  if (!overlap_) return;
  if (next_ < plan_.size() && plan_[next_].begin >= offset) {
    comm_.group_begin();
    while (next_ < plan_.size() && plan_[next_].begin >= offset) start(next_++);
    comm_.group_end();
  }
  comm_.poll();
}

void GradReducer::finish() {
  if (next_ < plan_.size()) {
    comm_.group_begin();
    while (next_ < plan_.size()) start(next_++);
    comm_.group_end();
  }
  const auto t0 = std::chrono::steady_clock::now();
  for (CommRequest& r : pending_) r.wait();
  last_wait_s_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  pending_.clear();
  next_ = 0;
}

}  // namespace sq
