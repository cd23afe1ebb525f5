// The NCCL backend (see comm/nccl.h). Every CUDA and NCCL call is checked; a failure names the
// call, file:line and, for collectives, the rank and the buffer.
#include "comm/nccl.h"

#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "core/error.h"
#include "kernels/cuda/cuda_ops.h"

namespace sq {

namespace {

void check_nccl(ncclResult_t r, const char* what, const char* file, int line) {
  if (r != ncclSuccess && r != ncclInProgress)
    fail(file, ":", line, ": ", what, ": ", ncclGetErrorString(r));
}
#define SQ_NCCL(call) check_nccl((call), #call, __FILE__, __LINE__)

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(const MpiWorld& w, int device, double timeout_s)
      : host_(make_mpi_communicator(MpiProgress::kThread)), rank_(w.rank), size_(w.size),
        host_name_(w.host), timeout_s_(timeout_s) {
    SQ_CUDA(cudaSetDevice(device));
    ncclUniqueId id;
    if (rank_ == 0) SQ_NCCL(ncclGetUniqueId(&id));
    if (MPI_Bcast(&id, int(sizeof id), MPI_BYTE, 0, MPI_COMM_WORLD) != MPI_SUCCESS)
      fail("MPI_Bcast of the NCCL unique id failed");
    SQ_NCCL(ncclCommInitRank(&nccl_, size_, id, rank_));
    SQ_CUDA(cudaStreamCreateWithFlags(&comm_stream_, cudaStreamNonBlocking));
  }

  ~NcclCommunicator() override {
    for (auto& s : slots_) {
      cudaEventDestroy(s->ready);
      cudaEventDestroy(s->done);
    }
    if (comm_stream_) cudaStreamDestroy(comm_stream_);
    if (nccl_ && !aborted_) ncclCommDestroy(nccl_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "nccl " + std::to_string(NCCL_MAJOR) + "." +
                                              std::to_string(NCCL_MINOR); }
  bool device_buffers() const override { return true; }
  void set_compute_stream(void* stream) override { compute_ = static_cast<cudaStream_t>(stream); }

  CommRequest allreduce_async(float* buf, size_t n, ReduceOp op) override {
    const uint32_t id = acquire();
    Slot& s = *slots_[id];
    s.buf = buf;
    s.n = n;
    s.op = op == ReduceOp::kAvg ? ncclAvg : ncclSum;
    if (in_group_)
      grouped_.push_back(id);  // launched together at group_end
    else
      launch(&id, 1);
    return CommRequest(this, id);
  }

  void group_begin() override { in_group_ = true; }
  void group_end() override {
    in_group_ = false;
    if (!grouped_.empty()) launch(grouped_.data(), grouped_.size());
    grouped_.clear();
  }

  // Host buffers: metrics, the start-up broadcast, replica checksums.
  void allreduce_sum(double* buf, size_t n) override { host_->allreduce_sum(buf, n); }
  void broadcast(float* buf, size_t n, int root) override { host_->broadcast(buf, n, root); }
  std::vector<uint64_t> allgather(uint64_t value) override { return host_->allgather(value); }
  void barrier() override { host_->barrier(); }

 protected:
  void wait_slot(uint32_t id) override {
    Slot& s = *slots_[id];
    const auto t0 = std::chrono::steady_clock::now();
    for (;;) {
      const cudaError_t e = cudaEventQuery(s.done);
      if (e == cudaSuccess) break;
      if (e != cudaErrorNotReady) SQ_CUDA(e);
      ncclResult_t async = ncclSuccess;
      SQ_NCCL(ncclCommGetAsyncError(nccl_, &async));
      if (async != ncclSuccess && async != ncclInProgress) {
        abort();
        fail("NCCL allreduce of ", s.n, " floats failed on rank ", rank_, " (host ", host_name_,
             "): ", ncclGetErrorString(async));
      }
      const double waited =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (waited > timeout_s_) {
        abort();
        fail("NCCL allreduce of ", s.n, " floats timed out after ", timeout_s_, " s on rank ",
             rank_, " (host ", host_name_, "); communicator aborted (--nccl-timeout)");
      }
      // Spin for the first 2 ms, then poll every 50 us: a sleep oversleeps by the kernel's timer
      // slack (about 50 us), and with a 20 us sleep from the start one rank's allreduce of 32 B
      // took 76 us on the H200.
      if (waited < 2e-3)
        std::this_thread::yield();
      else
        std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    // Later work on the compute stream (the optimizer) follows the collective, GPU-side.
    SQ_CUDA(cudaStreamWaitEvent(compute_, s.done, 0));
    free_.push_back(id);
  }

 private:
  struct Slot {
    cudaEvent_t ready = nullptr, done = nullptr;
    float* buf = nullptr;
    size_t n = 0;
    ncclRedOp_t op = ncclSum;
  };

  uint32_t acquire() {
    if (!free_.empty()) {
      const uint32_t id = free_.back();
      free_.pop_back();
      return id;
    }
    auto s = std::make_unique<Slot>();
    SQ_CUDA(cudaEventCreateWithFlags(&s->ready, cudaEventDisableTiming));
    SQ_CUDA(cudaEventCreateWithFlags(&s->done, cudaEventDisableTiming));
    slots_.push_back(std::move(s));
    free_.reserve(slots_.size());
    grouped_.reserve(slots_.size());
    return uint32_t(slots_.size() - 1);
  }

  // The buckets' gradients are complete once the compute stream reaches this point: the
  // communication stream waits for that, then runs the (grouped) allreduces.
  void launch(const uint32_t* ids, size_t k) {
    Slot& first = *slots_[ids[0]];
    SQ_CUDA(cudaEventRecord(first.ready, compute_));
    SQ_CUDA(cudaStreamWaitEvent(comm_stream_, first.ready, 0));
    SQ_NCCL(ncclGroupStart());
    for (size_t i = 0; i < k; ++i) {
      Slot& s = *slots_[ids[i]];
      SQ_NCCL(ncclAllReduce(s.buf, s.buf, s.n, ncclFloat, s.op, nccl_, comm_stream_));
    }
    SQ_NCCL(ncclGroupEnd());
    for (size_t i = 0; i < k; ++i) SQ_CUDA(cudaEventRecord(slots_[ids[i]]->done, comm_stream_));
  }

  void abort() {
    if (!aborted_) ncclCommAbort(nccl_);
    aborted_ = true;
  }

  std::unique_ptr<Communicator> host_;
  int rank_, size_;
  std::string host_name_;
  double timeout_s_;
  ncclComm_t nccl_ = nullptr;
  cudaStream_t comm_stream_ = nullptr, compute_ = nullptr;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::vector<uint32_t> free_, grouped_;
  bool in_group_ = false, aborted_ = false;
};

}  // namespace

bool nccl_built() { return true; }

std::string nccl_unusable_reason(const MpiWorld& w, int gpus_on_host) {
  if (gpus_on_host <= 0) return "no GPU on host " + w.host;
  if (w.local_size <= gpus_on_host) return "";
  // The library loaded at run time decides, not the header the build saw.
  int version = 0;
  if (ncclGetVersion(&version) != ncclSuccess) version = NCCL_VERSION_CODE;
  const char* multi = std::getenv("NCCL_MULTI_RANK_GPU_ENABLE");
  const bool allowed = version >= NCCL_VERSION(2, 30, 0) && multi && !std::strcmp(multi, "1");
  if (allowed) return "";
  return std::to_string(w.local_size) + " ranks share " + std::to_string(gpus_on_host) +
         " GPU(s) on host " + w.host + ", which NCCL " + std::to_string(version / 10000) + "." +
         std::to_string(version / 100 % 100) +
         " refuses (from 2.30 only with NCCL_MULTI_RANK_GPU_ENABLE=1)";
}

std::unique_ptr<Communicator> make_nccl_communicator(const MpiWorld& world, int device,
                                                     double timeout_s) {
  return std::make_unique<NcclCommunicator>(world, device, timeout_s);
}

}  // namespace sq
