// The communication layer without MPI: the bucket plan, the reducer's timing against backward
// (each bucket starts as soon as, and not before, its gradients are final), replica checksums,
// the fault-injection flag. Multi-rank behaviour is tested under mpiexec (tests/mpi/).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>

#include "comm/communicator.h"
#include "comm/reducer.h"
#include "core/config.h"
#include "core/error.h"
#include "core/model.h"
#include "core/trainer.h"

using namespace sq;

namespace {

// A one-rank communicator that records what the reducer asks of it: each allreduce's slice,
// a copy of its contents at the moment it was started, and how many poll() calls came before.
class RecordingComm final : public Communicator {
 public:
  struct Call {
    float* buf;
    size_t n;
    std::vector<float> at_start;
    int polls_before;
  };
  std::vector<Call> calls;
  std::vector<uint64_t> gathered;  // what allgather answers (one entry per pretend rank)
  int polls = 0;

  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "recording"; }
  CommRequest allreduce_async(float* buf, size_t n, ReduceOp) override {
    calls.push_back({buf, n, std::vector<float>(buf, buf + n), polls});
    return CommRequest();
  }
  void allreduce_sum(double*, size_t) override {}
  void broadcast(float*, size_t, int) override {}
  std::vector<uint64_t> allgather(uint64_t v) override {
    std::vector<uint64_t> r = gathered;
    r[0] = v;
    return r;
  }
  void barrier() override {}
  void poll() override { ++polls; }

 protected:
  void wait_slot(uint32_t) override {}
};

void expect_exact_cover(const std::vector<Bucket>& plan, const std::vector<size_t>& bounds,
                        size_t cap) {
  const size_t total = bounds.back();
  std::vector<int> covered(total, 0);
  for (size_t i = 0; i < plan.size(); ++i) {
    const Bucket& b = plan[i];
    ASSERT_LT(b.begin, b.end);
    for (size_t k = b.begin; k < b.end; ++k) ++covered[k];
    EXPECT_TRUE(std::binary_search(bounds.begin(), bounds.end(), b.begin)) << "bucket " << i;
    EXPECT_TRUE(std::binary_search(bounds.begin(), bounds.end(), b.end)) << "bucket " << i;
    if (i > 0) {
      EXPECT_EQ(plan[i].end, plan[i - 1].begin) << "buckets run back to front";
    }
    if (cap > 0 && i + 1 < plan.size()) {
      EXPECT_GE(b.end - b.begin, cap) << "only the last (front) bucket may be under the cap";
      // It closed at the first boundary that reached the cap: one tensor less is under it.
      auto it = std::upper_bound(bounds.begin(), bounds.end(), b.begin);
      EXPECT_LT(b.end - *it, cap) << "bucket " << i << " is larger than it needs to be";
    }
  }
  for (size_t k = 0; k < total; ++k) ASSERT_EQ(covered[k], 1) << "float " << k;
  if (total > 0) {
    EXPECT_EQ(plan.front().end, total);
    EXPECT_EQ(plan.back().begin, 0u);
  }
}

}  // namespace

TEST(BucketPlan, CoversEveryGradientExactlyOnce) {
  std::vector<ModelConfig> models;
  models.push_back(preset("squeezenet1.0"));
  models.push_back(preset("squeezenet1.1"));
  ModelConfig cx = preset("squeezenet1.0");
  cx.bypass = Bypass::kComplex;
  cx.stem = Stem::kSmall;
  cx.in_c = 1, cx.in_h = 28, cx.in_w = 28, cx.num_classes = 10;
  models.push_back(cx);
  for (const ModelConfig& mc : models) {
    Model m(mc, 1);
    const std::vector<size_t> bounds = tensor_bounds(m.layout());
    ASSERT_EQ(bounds.size(), m.layout().tensors.size() + 1);
    for (double mib : {0.0, 0.01, 0.25, 1.0, 4.0, 100.0}) {
      SCOPED_TRACE(arch_name(mc.arch) + " bypass " + bypass_name(mc.bypass) + " cap " +
                   std::to_string(mib) + " MiB");
      const size_t cap = size_t(mib * 1048576 / 4);
      const std::vector<Bucket> plan = plan_buckets(bounds, cap);
      expect_exact_cover(plan, bounds, cap);
      if (cap == 0 || cap >= m.layout().total) {
        EXPECT_EQ(plan.size(), 1u);
      }
    }
  }
  // Random boundaries, including empty tensors (repeated offsets).
  std::mt19937 rng(7);
  for (int t = 0; t < 200; ++t) {
    std::vector<size_t> b{0};
    const int k = 1 + int(rng() % 40);
    for (int i = 0; i < k; ++i) b.push_back(b.back() + rng() % 1000);
    const size_t cap = rng() % 3000;
    SCOPED_TRACE("trial " + std::to_string(t));
    expect_exact_cover(plan_buckets(b, cap), b, cap);
  }
  EXPECT_TRUE(plan_buckets({0}, 10).empty());
}

// A real backward with the reducer's hook: every bucket must be started after the last write to
// its slice (its contents at start equal the final gradient) and, all but the front one, before
// backward ends (overlap); the communicator is polled between layers. With overlap off, nothing
// starts before finish().
TEST(GradReducer, StartsEachBucketAsSoonAsItsGradientsAreFinal) {
  ModelConfig mc = preset("squeezenet1.1");
  mc.stem = Stem::kSmall;
  mc.in_c = 1, mc.in_h = 28, mc.in_w = 28, mc.num_classes = 10;
  mc.dropout = 0;
  const int N = 3;
  Model m(mc, N);
  std::vector<float> params(m.layout().total), grads(m.layout().total);
  m.init_params(params.data(), "torchvision", 3);
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  std::vector<float> x(size_t(N) * 28 * 28);
  for (float& v : x) v = nd(rng);
  std::vector<float> dlogits(size_t(N) * 10);
  for (float& v : dlogits) v = nd(rng);
  m.forward(params.data(), x.data(), N, true, nullptr);

  for (bool overlap : {true, false}) {
    SCOPED_TRACE(overlap ? "overlap" : "no overlap");
    RecordingComm comm;
    GradReducer red(comm, grads.data(), plan_buckets(tensor_bounds(m.layout()), 20000),
                    ReduceOp::kSum, overlap);
    ASSERT_GE(red.plan().size(), 4u);
    std::fill(grads.begin(), grads.end(), 0.0f);
    std::vector<size_t> offsets;  // what backward announced, in order
    m.backward(params.data(), dlogits.data(), grads.data(), N, nullptr, [&](size_t off) {
      offsets.push_back(off);
      red.ready(off);
    });
    const int layers_with_params = int(offsets.size());
    const size_t started_in_backward = comm.calls.size();
    const int polls_in_backward = comm.polls;
    red.finish();
    ASSERT_EQ(comm.calls.size(), red.plan().size());
    for (size_t i = 0; i < comm.calls.size(); ++i) {
      const Bucket& b = red.plan()[i];
      EXPECT_EQ(comm.calls[i].buf, grads.data() + b.begin) << "bucket " << i << " out of order";
      EXPECT_EQ(comm.calls[i].n, b.end - b.begin);
      EXPECT_EQ(0, std::memcmp(comm.calls[i].at_start.data(), grads.data() + b.begin,
                               sizeof(float) * (b.end - b.begin)))
          << "bucket " << i << " started before its gradients were final";
    }
    if (overlap) {
      EXPECT_EQ(polls_in_backward, layers_with_params);
      EXPECT_EQ(started_in_backward, red.plan().size());
      // Not late either: bucket i starts in the very ready() call that first covers it (the
      // call's poll comes after its starts, so polls_before is that call's index).
      for (size_t i = 0; i < comm.calls.size(); ++i) {
        const size_t first = size_t(std::find_if(offsets.begin(), offsets.end(), [&](size_t o) {
                                      return o <= red.plan()[i].begin;
                                    }) - offsets.begin());
        EXPECT_EQ(size_t(comm.calls[i].polls_before), first) << "bucket " << i;
      }
    } else {
      EXPECT_EQ(started_in_backward, 0u);
    }
  }
}

TEST(Replicas, ChecksumSeesEveryBitAndDisagreementNamesTheRank) {
  std::vector<float> p(1000);
  for (size_t i = 0; i < p.size(); ++i) p[i] = float(i) * 0.25f - 7.0f;
  const uint64_t h = checksum(p.data(), p.size());
  EXPECT_EQ(h, checksum(p.data(), p.size()));
  for (size_t i : {size_t(0), size_t(517), size_t(999)}) {
    std::vector<float> q = p;
    uint32_t bits;
    std::memcpy(&bits, &q[i], 4);
    bits ^= 1u;  // one ulp
    std::memcpy(&q[i], &bits, 4);
    EXPECT_NE(h, checksum(q.data(), q.size())) << "flip at " << i;
  }
  std::vector<float> swapped = p;
  std::swap(swapped[1], swapped[2]);
  EXPECT_NE(h, checksum(swapped.data(), swapped.size()));

  RecordingComm comm;
  comm.gathered = {0, h, h};
  EXPECT_NO_THROW(verify_replicas(comm, p.data(), p.size(), "at start"));
  comm.gathered = {0, h, h ^ 1, h};
  try {
    verify_replicas(comm, p.data(), p.size(), "after step 7");
    ADD_FAILURE() << "a disagreeing rank was not reported";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank 2"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("after step 7"), std::string::npos) << e.what();
  }
}

TEST(FaultInjection, ParsesAndRefusesMalformedSpecs) {
  FaultInjection f = parse_fault("1:3:kill");
  EXPECT_EQ(f.rank, 1);
  EXPECT_EQ(f.step, 3);
  EXPECT_EQ(f.kind, FaultInjection::Kind::kKill);
  for (const char* bad : {"", "1:3", "x:3:throw", "-1:3:throw", "1:-2:throw", "1:3:explode"})
    EXPECT_THROW(parse_fault(bad), Error) << bad;
}
