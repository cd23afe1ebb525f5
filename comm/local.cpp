#include "comm/communicator.h"

namespace sq {

namespace {

struct DoneRequest final : CommRequest {
  void wait() override {}
};

class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::unique_ptr<CommRequest> allreduce_async(float*, size_t, ReduceOp) override {
    return std::make_unique<DoneRequest>();
  }
  void allreduce_sum(double*, size_t) override {}
  void broadcast(float*, size_t, int) override {}
  void barrier() override {}
};

}  // namespace

std::unique_ptr<Communicator> make_local_communicator() {
  return std::make_unique<LocalCommunicator>();
}

}  // namespace sq
