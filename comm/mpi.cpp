// The MPI backend. Every MPI call is checked (MPI_ERRORS_RETURN on our communicators) and a
// failure becomes sq::Error naming the call, file:line and MPI's own message.
#include <mpi.h>

#include <climits>
#include <cstdlib>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "comm/mpi.h"
#include "core/error.h"

namespace sq {

namespace {

[[noreturn]] void mpi_fail(int rc, const char* call, const char* file, int line) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) len = 0;
  fail(file, ":", line, ": ", call, " failed: ", std::string(msg, size_t(len)));
}

#define SQ_MPI(call)                                            \
  do {                                                          \
    const int rc_ = (call);                                     \
    if (rc_ != MPI_SUCCESS) mpi_fail(rc_, #call, __FILE__, __LINE__); \
  } while (0)

// MPI counts are int: longer buffers go in chunks.
constexpr size_t kMaxCount = size_t(1) << 30;

void scale(float* buf, size_t n, float s) {
  for (size_t i = 0; i < n; ++i) buf[i] *= s;
}

// ---- communication thread: one FIFO of tasks, executed in submission order -----------------

struct Task {
  std::function<void()> fn;
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  std::exception_ptr error;

  void finish(std::exception_ptr e) {
    std::lock_guard<std::mutex> g(m);
    error = e;
    done = true;
    cv.notify_all();
  }
  void wait() {
    std::unique_lock<std::mutex> g(m);
    cv.wait(g, [&] { return done; });
    if (error) std::rethrow_exception(error);
  }
};

struct Worker {
  std::mutex m;
  std::condition_variable cv;
  std::deque<std::shared_ptr<Task>> queue;
  bool stop = false;
  bool busy = false;

  static void loop(std::shared_ptr<Worker> w) {
    for (;;) {
      std::shared_ptr<Task> t;
      {
        std::unique_lock<std::mutex> g(w->m);
        w->cv.wait(g, [&] { return w->stop || !w->queue.empty(); });
        if (w->queue.empty()) return;  // stop requested and nothing left
        t = std::move(w->queue.front());
        w->queue.pop_front();
        w->busy = true;
      }
      std::exception_ptr e;
      try {
        t->fn();
      } catch (...) {
        e = std::current_exception();
      }
      {
        std::lock_guard<std::mutex> g(w->m);
        w->busy = false;
      }
      t->finish(e);
    }
  }
};

struct TaskRequest final : CommRequest {
  std::shared_ptr<Task> task;
  explicit TaskRequest(std::shared_ptr<Task> t) : task(std::move(t)) {}
  void wait() override { task->wait(); }
};

// ---- nonblocking collectives ------------------------------------------------------------------

struct NonblockingRequest final : CommRequest {
  std::vector<MPI_Request> reqs;
  float* buf = nullptr;
  size_t n = 0;
  float post_scale = 1.0f;  // 1/size for kAvg
  bool complete = false;
  std::vector<NonblockingRequest*>* live = nullptr;

  ~NonblockingRequest() override { unlist(); }
  void unlist() {
    if (!live) return;
    for (auto& p : *live)
      if (p == this) {
        p = live->back();
        live->pop_back();
        break;
      }
    live = nullptr;
  }
  bool test() {
    if (complete) return true;
    int flag = 0;
    SQ_MPI(MPI_Testall(int(reqs.size()), reqs.data(), &flag, MPI_STATUSES_IGNORE));
    complete = flag != 0;
    return complete;
  }
  void wait() override {
    if (!complete) SQ_MPI(MPI_Waitall(int(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE));
    complete = true;
    unlist();
    if (post_scale != 1.0f) {
      scale(buf, n, post_scale);
      post_scale = 1.0f;
    }
  }
};

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(MpiProgress progress) : progress_(progress) {
    SQ_MPI(MPI_Comm_dup(MPI_COMM_WORLD, &comm_));
    SQ_MPI(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
    SQ_MPI(MPI_Comm_rank(comm_, &rank_));
    SQ_MPI(MPI_Comm_size(comm_, &size_));
    if (progress_ == MpiProgress::kThread) {
      int level = 0;
      SQ_MPI(MPI_Query_thread(&level));
      if (level < MPI_THREAD_SERIALIZED)
        fail("--mpi-progress thread needs MPI_THREAD_SERIALIZED or better; this MPI library "
             "provides level ", level, ": use --mpi-progress nonblocking");
      worker_ = std::make_shared<Worker>();
      thread_ = std::thread(Worker::loop, worker_);
    }
  }

  ~MpiCommunicator() override {
    if (!thread_.joinable()) return;
    bool idle;
    {
      std::lock_guard<std::mutex> g(worker_->m);
      worker_->stop = true;
      idle = worker_->queue.empty() && !worker_->busy;
      worker_->cv.notify_all();
    }
    // A thread still inside a collective that other ranks will never join (this rank is
    // failing) is left behind: the job is about to be aborted, and joining would hang.
    if (idle)
      thread_.join();
    else
      thread_.detach();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override {
    return progress_ == MpiProgress::kThread ? "mpi (communication thread)"
                                             : "mpi (nonblocking, polled)";
  }

  std::unique_ptr<CommRequest> allreduce_async(float* buf, size_t n, ReduceOp op) override {
    const float post = op == ReduceOp::kAvg ? 1.0f / float(size_) : 1.0f;
    if (progress_ == MpiProgress::kThread) {
      MPI_Comm c = comm_;
      return std::make_unique<TaskRequest>(submit([c, buf, n, post] {
        for (size_t o = 0; o < n; o += kMaxCount)
          SQ_MPI(MPI_Allreduce(MPI_IN_PLACE, buf + o, int(std::min(kMaxCount, n - o)), MPI_FLOAT,
                               MPI_SUM, c));
        if (post != 1.0f) scale(buf, n, post);
      }));
    }
    auto r = std::make_unique<NonblockingRequest>();
    r->buf = buf;
    r->n = n;
    r->post_scale = post;
    for (size_t o = 0; o < n; o += kMaxCount) {
      r->reqs.emplace_back();
      SQ_MPI(MPI_Iallreduce(MPI_IN_PLACE, buf + o, int(std::min(kMaxCount, n - o)), MPI_FLOAT,
                            MPI_SUM, comm_, &r->reqs.back()));
    }
    r->live = &live_;
    live_.push_back(r.get());
    return r;
  }

  void poll() override {
    for (size_t i = 0; i < live_.size(); ++i)
      if (!live_[i]->test()) break;  // one incomplete test drives the progress engine
  }

  void allreduce_sum(double* buf, size_t n) override {
    run([&] { SQ_MPI(MPI_Allreduce(MPI_IN_PLACE, buf, int(n), MPI_DOUBLE, MPI_SUM, comm_)); });
  }
  void broadcast(float* buf, size_t n, int root) override {
    run([&] {
      for (size_t o = 0; o < n; o += kMaxCount)
        SQ_MPI(MPI_Bcast(buf + o, int(std::min(kMaxCount, n - o)), MPI_FLOAT, root, comm_));
    });
  }
  std::vector<uint64_t> allgather(uint64_t value) override {
    std::vector<uint64_t> all(size_t(size_), 0);
    run([&] { SQ_MPI(MPI_Allgather(&value, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, comm_)); });
    return all;
  }
  void barrier() override {
    run([&] { SQ_MPI(MPI_Barrier(comm_)); });
  }

 private:
  std::shared_ptr<Task> submit(std::function<void()> fn) {
    auto t = std::make_shared<Task>();
    t->fn = std::move(fn);
    std::lock_guard<std::mutex> g(worker_->m);
    worker_->queue.push_back(t);
    worker_->cv.notify_one();
    return t;
  }
  // A blocking collective: on the communication thread when there is one, so that it is
  // ordered after the asynchronous collectives issued before it.
  void run(const std::function<void()>& fn) {
    if (progress_ == MpiProgress::kThread)
      submit(fn)->wait();
    else
      fn();
  }

  MpiProgress progress_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  std::shared_ptr<Worker> worker_;
  std::thread thread_;
  std::vector<NonblockingRequest*> live_;
};

}  // namespace

bool mpi_built() { return true; }

MpiWorld mpi_init(int* argc, char*** argv) {
  // Open MPI's blocking collectives busy-poll. The communication thread shares its rank's cores
  // with compute, and spinning there slows backward by more than overlap saves; yielding when
  // idle is measured in docs/BENCHMARKS.md ("Progress"). An explicit setting wins.
  setenv("OMPI_MCA_mpi_yield_when_idle", "1", 0);
  MpiWorld w;
  SQ_MPI(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &w.thread_level));
  SQ_MPI(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  SQ_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &w.rank));
  SQ_MPI(MPI_Comm_size(MPI_COMM_WORLD, &w.size));
  MPI_Comm local;
  SQ_MPI(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, w.rank, MPI_INFO_NULL, &local));
  SQ_MPI(MPI_Comm_rank(local, &w.local_rank));
  SQ_MPI(MPI_Comm_size(local, &w.local_size));
  SQ_MPI(MPI_Comm_free(&local));
  char host[MPI_MAX_PROCESSOR_NAME];
  int len = 0;
  SQ_MPI(MPI_Get_processor_name(host, &len));
  w.host.assign(host, size_t(len));
  return w;
}

bool mpi_active() {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  return init && !fin;
}

void mpi_finalize() {
  if (mpi_active()) MPI_Finalize();
}

void mpi_abort(int code) {
  if (mpi_active()) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

std::unique_ptr<Communicator> make_mpi_communicator(MpiProgress progress) {
  return std::make_unique<MpiCommunicator>(progress);
}

}  // namespace sq
