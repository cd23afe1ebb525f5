// The MPI backend. Every MPI call is checked (MPI_ERRORS_RETURN on our communicators) and a
// failure becomes sq::Error naming the call, file:line and MPI's own message.
#include <mpi.h>

#include <climits>
#include <cstdlib>
#include <condition_variable>
#include <deque>
#include <exception>
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

// ---- the communicator ---------------------------------------------------------------------
// Requests live in a pool of slots that grows to the number of collectives in flight and is then
// reused: a steady-state training step allocates nothing here.

enum class Op { kAllreduce, kSumDoubles, kBcast, kAllgather, kBarrier };

struct Slot {
  // What to do (thread mode: read by the communication thread).
  Op op = Op::kBarrier;
  float* buf = nullptr;
  double* dbuf = nullptr;
  size_t n = 0;
  float post = 1.0f;  // 1/size for kAvg
  int root = 0;
  uint64_t value = 0;
  uint64_t* out = nullptr;
  // State.
  bool in_use = false;
  bool done = false;
  std::exception_ptr error;
  std::vector<MPI_Request> reqs;  // nonblocking mode; capacity kept across uses
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
      state_ = std::make_shared<Shared>();
      state_->comm = comm_;
      thread_ = std::thread(worker_loop, state_);
    } else {
      state_ = std::make_shared<Shared>();
    }
  }

  ~MpiCommunicator() override {
    if (!thread_.joinable()) return;
    bool idle;
    {
      std::lock_guard<std::mutex> g(state_->m);
      state_->stop = true;
      idle = state_->queue_count == 0 && !state_->busy;
      state_->work.notify_all();
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

  CommRequest allreduce_async(float* buf, size_t n, ReduceOp op) override {
    const float post = op == ReduceOp::kAvg ? 1.0f / float(size_) : 1.0f;
    if (progress_ == MpiProgress::kThread) {
      const uint32_t id = submit([&](Slot& t) {
        t.op = Op::kAllreduce;
        t.buf = buf;
        t.n = n;
        t.post = post;
      });
      return CommRequest(this, id);
    }
    Shared& st = *state_;
    const uint32_t id = st.acquire();
    Slot& t = *st.slots[id];
    t.buf = buf;
    t.n = n;
    t.post = post;
    t.reqs.clear();
    for (size_t o = 0; o < n; o += kMaxCount) {
      t.reqs.emplace_back();
      SQ_MPI(MPI_Iallreduce(MPI_IN_PLACE, buf + o, int(std::min(kMaxCount, n - o)), MPI_FLOAT,
                            MPI_SUM, comm_, &t.reqs.back()));
    }
    st.live.push_back(id);
    return CommRequest(this, id);
  }

  void allreduce(float* buf, size_t n, ReduceOp op) override {
    const float post = op == ReduceOp::kAvg ? 1.0f / float(size_) : 1.0f;
    run([&](Slot& t) {
      t.op = Op::kAllreduce;
      t.buf = buf;
      t.n = n;
      t.post = post;
    });
  }

  void poll() override {
    if (progress_ != MpiProgress::kNonblocking) return;
    Shared& st = *state_;
    for (uint32_t id : st.live) {  // one incomplete test drives the progress engine
      Slot& t = *st.slots[id];
      if (t.done) continue;
      int flag = 0;
      SQ_MPI(MPI_Testall(int(t.reqs.size()), t.reqs.data(), &flag, MPI_STATUSES_IGNORE));
      if (!flag) break;
      t.done = true;
    }
  }

  void allreduce_sum(double* buf, size_t n) override {
    run([&](Slot& t) {
      t.op = Op::kSumDoubles;
      t.dbuf = buf;
      t.n = n;
    });
  }
  void broadcast(float* buf, size_t n, int root) override {
    run([&](Slot& t) {
      t.op = Op::kBcast;
      t.buf = buf;
      t.n = n;
      t.root = root;
    });
  }
  std::vector<uint64_t> allgather(uint64_t value) override {
    std::vector<uint64_t> all(size_t(size_), 0);
    run([&](Slot& t) {
      t.op = Op::kAllgather;
      t.value = value;
      t.out = all.data();
    });
    return all;
  }
  void barrier() override {
    run([&](Slot& t) { t.op = Op::kBarrier; });
  }

 protected:
  void wait_slot(uint32_t id) override {
    Shared& st = *state_;
    if (progress_ == MpiProgress::kThread) {
      std::exception_ptr e;
      {
        std::unique_lock<std::mutex> g(st.m);
        Slot& t = *st.slots[id];
        st.finished.wait(g, [&] { return t.done; });
        e = t.error;
        st.release(id);
      }
      if (e) std::rethrow_exception(e);
      return;
    }
    Slot& t = *st.slots[id];
    if (!t.done) SQ_MPI(MPI_Waitall(int(t.reqs.size()), t.reqs.data(), MPI_STATUSES_IGNORE));
    if (t.post != 1.0f) scale(t.buf, t.n, t.post);
    for (size_t i = 0; i < st.live.size(); ++i)
      if (st.live[i] == id) {
        st.live.erase(st.live.begin() + std::ptrdiff_t(i));  // no reallocation
        break;
      }
    st.release(id);
  }

 private:
  // State shared with the communication thread (which outlives a detached communicator).
  struct Shared {
    std::mutex m;
    std::condition_variable work, finished;
    std::vector<std::unique_ptr<Slot>> slots;
    std::vector<uint32_t> free;   // capacity = slots.size()
    std::vector<uint32_t> queue;  // ring of slot ids (thread mode)
    size_t queue_head = 0, queue_count = 0;
    std::vector<uint32_t> live;   // started nonblocking slots, in start order
    bool stop = false, busy = false;
    MPI_Comm comm = MPI_COMM_NULL;

    uint32_t acquire() {  // (thread mode: under m)
      if (free.empty()) {
        slots.push_back(std::make_unique<Slot>());
        free.reserve(slots.size());
        live.reserve(slots.size());
        return uint32_t(slots.size() - 1);
      }
      const uint32_t id = free.back();
      free.pop_back();
      Slot& t = *slots[id];
      t.in_use = true;
      t.done = false;
      t.error = nullptr;
      return id;
    }
    void release(uint32_t id) {
      slots[id]->in_use = false;
      free.push_back(id);
    }
    void push(uint32_t id) {  // under m
      if (queue_count == queue.size()) {  // grow the ring, keeping its order
        std::vector<uint32_t> bigger(std::max<size_t>(16, 2 * queue.size()));
        for (size_t i = 0; i < queue_count; ++i) bigger[i] = queue[(queue_head + i) % queue.size()];
        queue.swap(bigger);
        queue_head = 0;
      }
      queue[(queue_head + queue_count) % queue.size()] = id;
      ++queue_count;
    }
  };

  template <class Fill>
  uint32_t submit(Fill fill) {
    Shared& st = *state_;
    std::lock_guard<std::mutex> g(st.m);
    const uint32_t id = st.acquire();
    Slot& t = *st.slots[id];
    t.in_use = true;
    t.done = false;
    t.error = nullptr;
    fill(t);
    st.push(id);
    st.work.notify_one();
    return id;
  }

  // A blocking collective. With a communication thread that has collectives queued or in
  // flight, it queues behind them (the order must be the same on every rank); with the thread
  // idle, it runs here, saving the hand-off (tens of microseconds: 5 % of a 1 ms allreduce).
  // Only this thread submits, so the thread stays idle meanwhile: calls never overlap.
  template <class Fill>
  void run(Fill fill) {
    if (progress_ == MpiProgress::kThread) {
      bool idle;
      {
        std::lock_guard<std::mutex> g(state_->m);
        idle = state_->queue_count == 0 && !state_->busy;
      }
      if (!idle) {
        wait_slot(submit(fill));
        return;
      }
    }
    Slot t;
    fill(t);
    execute(t, comm_);
  }

  static void execute(Slot& t, MPI_Comm c) {
    switch (t.op) {
      case Op::kAllreduce:
        for (size_t o = 0; o < t.n; o += kMaxCount)
          SQ_MPI(MPI_Allreduce(MPI_IN_PLACE, t.buf + o, int(std::min(kMaxCount, t.n - o)),
                               MPI_FLOAT, MPI_SUM, c));
        if (t.post != 1.0f) scale(t.buf, t.n, t.post);
        break;
      case Op::kSumDoubles:
        SQ_MPI(MPI_Allreduce(MPI_IN_PLACE, t.dbuf, int(t.n), MPI_DOUBLE, MPI_SUM, c));
        break;
      case Op::kBcast:
        for (size_t o = 0; o < t.n; o += kMaxCount)
          SQ_MPI(MPI_Bcast(t.buf + o, int(std::min(kMaxCount, t.n - o)), MPI_FLOAT, t.root, c));
        break;
      case Op::kAllgather:
        SQ_MPI(MPI_Allgather(&t.value, 1, MPI_UINT64_T, t.out, 1, MPI_UINT64_T, c));
        break;
      case Op::kBarrier:
        SQ_MPI(MPI_Barrier(c));
        break;
    }
  }

  static void worker_loop(std::shared_ptr<Shared> st) {
    for (;;) {
      Slot* t;
      {
        std::unique_lock<std::mutex> g(st->m);
        st->work.wait(g, [&] { return st->stop || st->queue_count > 0; });
        if (st->queue_count == 0) return;  // stop requested and nothing left
        t = st->slots[st->queue[st->queue_head]].get();
        st->queue_head = (st->queue_head + 1) % st->queue.size();
        --st->queue_count;
        st->busy = true;
      }
      std::exception_ptr e;
      try {
        execute(*t, st->comm);
      } catch (...) {
        e = std::current_exception();
      }
      {
        std::lock_guard<std::mutex> g(st->m);
        st->busy = false;
        t->error = e;
        t->done = true;
      }
      st->finished.notify_all();
    }
  }

  MpiProgress progress_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  std::shared_ptr<Shared> state_;
  std::thread thread_;
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
