#include <cstdio>
#include <cstring>

#include "comm/communicator.h"
#include "core/error.h"

namespace sq {

namespace {

class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "local"; }
  CommRequest allreduce_async(float*, size_t, ReduceOp) override { return CommRequest(); }
  void allreduce_sum(double*, size_t) override {}
  void broadcast(float*, size_t, int) override {}
  std::vector<uint64_t> allgather(uint64_t value) override { return {value}; }
  void barrier() override {}

 protected:
  void wait_slot(uint32_t) override {}
};

}  // namespace

std::unique_ptr<Communicator> make_local_communicator() {
  return std::make_unique<LocalCommunicator>();
}

uint64_t checksum(const float* x, size_t n) {
  // Word-wise FNV-1a over the bit patterns, folded with a final avalanche (splitmix64's).
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, sizeof bits);
    h = (h ^ bits) * 0x100000001b3ull;
  }
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  return h ^ (h >> 31);
}

void verify_replicas(Communicator& comm, const float* params, size_t n, const std::string& when) {
  const std::vector<uint64_t> all = comm.allgather(checksum(params, n));
  auto hex = [](uint64_t v) {
    char b[20];
    std::snprintf(b, sizeof b, "%016llx", (unsigned long long)v);
    return std::string(b);
  };
  for (size_t r = 1; r < all.size(); ++r)
    if (all[r] != all[0])
      fail("replicas disagree ", when, ": parameter checksum of rank ", r, " is ", hex(all[r]),
           ", rank 0 has ", hex(all[0]), " (", n, " floats)");
}

}  // namespace sq
