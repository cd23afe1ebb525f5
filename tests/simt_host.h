// Runs CUDA kernel source on the CPU, for tests on machines without a GPU: the kernel's block
// executes one at a time, each of its threads a fiber (ucontext) with its own stack. Barriers
// switch back to the scheduler. Between two __syncthreads() the warps run one after another, each
// to the barrier (a warp's __syncwarp() and mma.sync synchronise its lanes only), so every access
// of one warp comes before, or in reverse order after, every access of another: a missing barrier
// between two warps' accesses of the same shared memory shows as a wrong result in one of the two
// orders, and run() takes forward or reverse. __shared__ variables become function-static (one
// copy shared by the block's threads, as on the device).
// Supports what the project's kernels use: threadIdx, blockIdx, blockDim, gridDim, float2, float4, uint4,
// min, max, isnan, fmaf, exp, log, __fadd_rn/__fmul_rn/__fsub_rn, bfloat16, WMMA, and the mma
// kernel's asynchronous copies, dynamic shared memory (exactly the launch's bytes, an access past
// them a fault), mma.sync, ldmatrix and Hopper's wgmma (below). Include it before the kernel source.
#pragma once
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>
#include <utility>
#include <cstdlib>
#include <functional>
#include <memory>
#include <vector>

struct SimtDim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline SimtDim3 threadIdx, blockIdx, blockDim, gridDim;
// Aligned as on the device, so that a vector access through a misaligned pointer (a fault there)
// is one for -fsanitize=alignment here.
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
using std::isnan;
// Correctly rounded single operations, never contracted into a fused multiply-add.
inline float __fadd_rn(float a, float b) {
  volatile float r = a + b;
  return r;
}
inline float __fmul_rn(float a, float b) {
  volatile float r = a * b;
  return r;
}
inline float __fsub_rn(float a, float b) {
  volatile float r = a - b;
  return r;
}

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __syncthreads() ::simt::barrier()
#define __syncwarp() ::simt::warp_barrier()

// bfloat16 and WMMA, as the tensor-core kernel uses them. A fragment holds its whole tile in every
// thread (the device's distribution over a warp's threads is unspecified, and the kernel only
// loads, multiplies and stores whole fragments), so each thread of a warp computes the warp's
// product; mma accumulates in float, in k order.
struct __nv_bfloat16 {
  uint16_t bits;
};
inline __nv_bfloat16 __float2bfloat16_rn(float f) {  // round to nearest even (no NaNs here)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return {uint16_t(u >> 16)};
}
inline float simt_to_float(float v) { return v; }
inline float simt_to_float(__nv_bfloat16 v) {
  const uint32_t u = uint32_t(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static constexpr int rows = std::is_same<Use, matrix_b>::value ? K : M;
  static constexpr int cols = std::is_same<Use, matrix_a>::value ? K : N;
  static constexpr int num_elements = rows * cols;
  using elem = typename std::conditional<std::is_same<T, precision::tf32>::value, float, T>::type;
  elem x[rows * cols];
};
template <class F>
void fill_fragment(F& f, float v) {
  for (auto& e : f.x) e = v;
}
template <class F, class E>
void load_matrix_sync(F& f, const E* p, unsigned ldm) {
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c) f.x[r * F::cols + c] = p[size_t(r) * ldm + size_t(c)];
}
template <class F>
void store_matrix_sync(float* p, const F& f, unsigned ldm, layout_t) {
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c) p[size_t(r) * ldm + size_t(c)] = f.x[r * F::cols + c];
}
template <class D, class A, class B, class C>
void mma_sync(D& d, const A& a, const B& b, const C& c) {
  float out[D::num_elements];
  for (int i = 0; i < D::rows; ++i)
    for (int j = 0; j < D::cols; ++j) {
      float acc = c.x[i * D::cols + j];
      for (int k = 0; k < A::cols; ++k)
        acc += simt_to_float(a.x[i * A::cols + k]) * simt_to_float(b.x[k * B::cols + j]);
      out[i * D::cols + j] = acc;
    }
  for (int e = 0; e < D::num_elements; ++e) d.x[e] = out[e];
}
inline float __float_to_tf32(float f) {  // 10 mantissa bits, round to nearest even
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0xFFFu + ((u >> 13) & 1u);
  u &= 0xFFFFE000u;
  std::memcpy(&f, &u, 4);
  return f;
}
}  // namespace wmma
}  // namespace nvcuda

namespace simt {

// A thread's asynchronous copies: the open group, and the committed groups oldest first.
struct AsyncCopy {
  float* dst;
  const float* src;
  bool valid;
};
struct ThreadAsync {
  std::vector<AsyncCopy> open;
  std::vector<std::vector<AsyncCopy>> committed;
};
// What a lane brings to a warp's mma: its A and B fragment registers; to an ldmatrix, its row's
// address.
struct MmaOperands {
  uint32_t a[4], b[2];
  const float* row;
};

// One wgmma.mma_async of a warpgroup: where each of its 128 threads keeps A's registers and its
// accumulators (both read when a warp's part of the op is performed, at the warp's wait), the
// operation, which must be the same in every thread, and which warps' parts are done.
struct WgmmaOp {
  bool bf16 = false, done[4] = {};
  int n = 0, scale_d = 0, arrived = 0;
  uint64_t desc = 0;
  const uint32_t* a[128] = {};
  float* d[128] = {};
};
// A thread's wgmma state: whether it fenced its registers (wgmma.fence) since it last waited, whether
// copies landed since its last fence.proxy.async, its ops not yet committed, and its committed
// groups oldest first.
struct ThreadWgmma {
  bool fenced = false, landed = false;
  int issued = 0;  // its wgmma.mma_async so far: the index of its next one in its warpgroup's list
  std::vector<WgmmaOp*> open;
  std::vector<std::vector<WgmmaOp*>> committed;
};

struct Scheduler {
  ucontext_t main;
  std::vector<ucontext_t> ctx;
  std::vector<std::vector<char>> stacks;
  std::vector<char> state;  // per thread: a ThreadState
  int cur = 0;
  const std::function<void()>* body = nullptr;
  std::vector<ThreadAsync> async;          // per thread
  std::vector<MmaOperands> mma_slots[2];   // per thread, alternating between consecutive mmas
  std::vector<int> mma_count;              // per thread
  float* dynamic_shared = nullptr;         // the launch's dynamic shared memory (DynamicShared)
  std::vector<std::pair<void*, size_t>> statics;  // the __shared__ variables seen (SQ_FRESH_SHARED)
  bool eager_copies = false;               // cp.async lands at issue (else at its wait)
  std::vector<ThreadWgmma> wgmma;          // per thread
  std::vector<std::vector<std::unique_ptr<WgmmaOp>>> wg_ops;  // per warpgroup, in issue order
  // Plain stores to shared memory (the generic proxy), which wgmma's B (the async proxy) may read
  // only after a fence.proxy.async (look_at_shared): the dynamic shared memory's words as last
  // looked at, copies' landings applied as they land; for each word a look found changed, the warp
  // that stored it (1 + its index; 0: fenced or never stored); the fences since the last look (all
  // by the warp running: a look follows every stretch of a warp); and whether the block looks at
  // all (from its first wgmma.fence or fence.proxy.async: kernels without wgmma pay nothing).
  std::vector<uint32_t> seen;
  std::vector<int16_t> unfenced;
  int fences = 0;
  bool watching = false;
};
inline Scheduler& sched() {
  static Scheduler s;
  return s;
}
// Where a thread stands when it hands control back to the scheduler.
enum ThreadState : char { kRunning, kAtWarpBarrier, kAtGroupBarrier, kAtBlockBarrier, kDone };
inline void wait_at(ThreadState where) {
  Scheduler& s = sched();
  s.state[size_t(s.cur)] = where;
  swapcontext(&s.ctx[size_t(s.cur)], &s.main);
}
inline void barrier() { wait_at(kAtBlockBarrier); }       // __syncthreads()
inline void warp_barrier() { wait_at(kAtWarpBarrier); }   // __syncwarp(), and inside mma.sync
inline void group_barrier() { wait_at(kAtGroupBarrier); } // inside wgmma: its warpgroup's threads

// A static __shared__ variable (kernel_util.cuh's SQ_FRESH_SHARED, after its declaration): filled
// with 0xFF bytes when first seen, and again at every block's start (run), so that a read before
// the block's own write gives NaN (or -1), not what a previous block left.
inline void fresh_shared(void* p, size_t bytes) {
  Scheduler& s = sched();
  for (const auto& v : s.statics)
    if (v.first == p) return;
  s.statics.emplace_back(p, bytes);
  std::memset(p, 0xFF, bytes);
}

// Dynamic shared memory: at most 256 KiB, filled with NaN at every block's start (a read of what no
// copy wrote shows up in the result). A launch gets the bytes it asks for (run's dynamic_bytes,
// rounded up to 16), placed right before an inaccessible page: an access past them ends the test
// run with a message, as the device faults on an access past the block's shared memory.
constexpr size_t kDynamicSharedFloats = 64 * 1024;
struct DynamicShared {
  char* arena = nullptr;  // kDynamicSharedFloats floats, then the guard page
  size_t page = 0;
  char* end() const { return arena + kDynamicSharedFloats * sizeof(float); }
};
inline DynamicShared& dynamic_arena() {
  static DynamicShared d;
  return d;
}
inline void on_guard_fault(int sig, siginfo_t* info, void*) {
  const DynamicShared& d = dynamic_arena();
  const char* at = static_cast<const char*>(info->si_addr);
  if (at >= d.end() && at < d.end() + d.page) {
    static const char msg[] = "simt: access past the launch's dynamic shared memory (run's dynamic_bytes)\n";
    (void)!write(2, msg, sizeof msg - 1);
    std::abort();
  }
  signal(sig, SIG_DFL);  // any other fault: the default action when the access repeats
}
// The launch's dynamic shared memory, NaN-filled: `bytes` (rounded up to 16) ending at the guard.
inline float* dynamic_shared_for(size_t bytes) {
  DynamicShared& d = dynamic_arena();
  if (!d.arena) {
    d.page = size_t(sysconf(_SC_PAGESIZE));
    void* m = mmap(nullptr, kDynamicSharedFloats * sizeof(float) + d.page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED || mprotect(static_cast<char*>(m) + kDynamicSharedFloats * sizeof(float), d.page, PROT_NONE)) {
      std::fprintf(stderr, "simt: cannot map the dynamic shared memory and its guard page\n");
      std::abort();
    }
    d.arena = static_cast<char*>(m);
    struct sigaction sa {};
    sa.sa_sigaction = on_guard_fault;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &sa, nullptr);
  }
  if (bytes > kDynamicSharedFloats * sizeof(float)) {
    std::fprintf(stderr, "simt: %zu bytes of dynamic shared memory asked for, %zu available\n", bytes,
                 kDynamicSharedFloats * sizeof(float));
    std::abort();
  }
  float* all = reinterpret_cast<float*>(d.arena);
  for (size_t i = 0; i < kDynamicSharedFloats; ++i) all[i] = NAN;
  return reinterpret_cast<float*>(d.end() - (bytes + 15) / 16 * 16);
}
template <class T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(sched().dynamic_shared);
}
// The arena's word of a shared-memory address (its whole 4-byte word for a BF16 half), or -1.
inline long shared_word(const void* p) {
  const char* c = static_cast<const char*>(p);
  const DynamicShared& d = dynamic_arena();
  return d.arena && c >= d.arena && c < d.end() ? long((c - d.arena) / 4) : -1;
}
// A block's start: the launch's words as filled (NaN), none unfenced (the words before them are
// never looked at).
inline void reset_shared_watch() {
  Scheduler& s = sched();
  const long first = shared_word(s.dynamic_shared);
  s.seen.resize(kDynamicSharedFloats), s.unfenced.resize(kDynamicSharedFloats);
  if (first >= 0) {
    const uint32_t* all = reinterpret_cast<const uint32_t*>(dynamic_arena().arena);
    std::copy(all + first, all + kDynamicSharedFloats, s.seen.begin() + first);
    std::fill(s.unfenced.begin() + first, s.unfenced.end(), int16_t(0));
  }
  s.fences = 0;
  s.watching = false;
}
// A copy landed at dst: its word as the async side sees it (cp.async has its own fence rule, the
// thread's `landed`), so that the next look does not take it for a plain store.
inline void copy_landed(const float* dst) {
  const long w = shared_word(dst);
  if (w >= 0) std::memcpy(&sched().seen[size_t(w)], dst, 4);
}
// A look after warp `warp` ran: each word of the launch's dynamic shared memory that changed since
// the last look was written by that warp's plain stores, unfenced; if the warp ran a
// fence.proxy.async meanwhile, every word it stored is fenced (its lanes are not told apart, nor
// whether a store came before or after the fence: a fence missing in one lane while another of its
// warp fenced goes unseen, one missing in a whole warp does not).
inline void look_at_shared(int warp) {
  Scheduler& s = sched();
  const long first = shared_word(s.dynamic_shared);
  if (first < 0) return;
  const uint32_t* all = reinterpret_cast<const uint32_t*>(dynamic_arena().arena);
  const int16_t me = int16_t(warp + 1);
  for (size_t i = size_t(first); i < size_t(kDynamicSharedFloats); ++i) {
    if (all[i] != s.seen[i]) s.seen[i] = all[i], s.unfenced[i] = me;
    if (s.fences > 0 && s.unfenced[i] == me) s.unfenced[i] = 0;
  }
  s.fences = 0;
}
inline void entry() {
  Scheduler& s = sched();
  (*s.body)();
  s.state[size_t(s.cur)] = kDone;  // returning resumes uc_link: the scheduler
}

// Runs the live threads [lo, hi) of one warp until each has reached a block or warpgroup barrier or
// its end, releasing the warp's barriers as all of its live lanes reach them. Returns false if the
// lanes disagree (some at a warp barrier while others wait at another barrier or have ended).
inline bool run_warp(int lo, int hi, bool reverse) {
  Scheduler& s = sched();
  for (;;) {
    int at_warp = 0;
    for (int i = lo; i < hi; ++i) {
      const int t = reverse ? hi - 1 - (i - lo) : i;
      if (s.state[size_t(t)] != kRunning) continue;
      s.cur = t;
      threadIdx = {unsigned(t), 0, 0};
      swapcontext(&s.main, &s.ctx[size_t(t)]);
    }
    for (int t = lo; t < hi; ++t) at_warp += s.state[size_t(t)] == kAtWarpBarrier;
    if (at_warp == 0) return true;
    if (at_warp != hi - lo) return false;  // (some lanes at a block barrier or ended)
    for (int t = lo; t < hi; ++t) s.state[size_t(t)] = kRunning;
  }
}

// Thread t's fiber, at the start of the kernel. (Its own function: getcontext returns twice, which
// GCC warns about for the caller's loop variables.)
__attribute__((noinline)) inline void start_thread(int t) {
  Scheduler& s = sched();
  s.stacks[size_t(t)].resize(256 * 1024);
  getcontext(&s.ctx[size_t(t)]);
  s.ctx[size_t(t)].uc_stack.ss_sp = s.stacks[size_t(t)].data();
  s.ctx[size_t(t)].uc_stack.ss_size = s.stacks[size_t(t)].size();
  s.ctx[size_t(t)].uc_link = &s.main;
  makecontext(&s.ctx[size_t(t)], entry, 0);
  s.state[size_t(t)] = kRunning;
}

// Runs body (the kernel call) for every block of `grid` with `threads` threads per block. Forward:
// the warps of each stretch between block barriers in order, and asynchronous copies landing as
// late as the device allows (at their wait), which exposes a read before the wait or the barrier
// after it. Reverse: the warps in reverse order, and copies landing at issue, as early as allowed,
// which exposes a copy into a stage that another warp has yet to read (no barrier between).
// dynamic_bytes: the launch's dynamic shared memory, as conv.cu passes it. Returns false if the
// threads of a block disagreed on the number of barriers.
inline bool run(SimtDim3 grid, int threads, const std::function<void()>& body, bool reverse = false,
                size_t dynamic_bytes = 0) {
  Scheduler& s = sched();
  s.eager_copies = reverse;
  s.ctx.resize(size_t(threads));
  s.stacks.resize(size_t(threads));
  s.state.resize(size_t(threads));  // (set for each block below)
  s.body = &body;
  gridDim = grid;
  blockDim = {unsigned(threads), 1, 1};
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = {bx, by, bz};
        s.async.assign(size_t(threads), ThreadAsync{});
        for (auto& slots : s.mma_slots) slots.assign(size_t(threads), MmaOperands{});
        s.mma_count.assign(size_t(threads), 0);
        s.wgmma.assign(size_t(threads), ThreadWgmma{});
        s.wg_ops.clear();
        s.wg_ops.resize(size_t(threads + 127) / 128);
        s.dynamic_shared = dynamic_shared_for(dynamic_bytes);
        reset_shared_watch();
        for (const auto& v : s.statics) std::memset(v.first, 0xFF, v.second);
        for (int t = 0; t < threads; ++t) start_thread(t);
        const int warps = (threads + 31) / 32;
        for (;;) {  // one stretch: every warp in turn runs to the next block barrier or its end
          for (int i = 0; i < warps; ++i) {
            const int w = reverse ? warps - 1 - i : i;
            if (!run_warp(32 * w, min(threads, 32 * w + 32), reverse)) return false;
            if (s.watching) look_at_shared(w);  // (what warp w did until it stopped)
          }
          // A warpgroup whose threads all stand at its wgmma barrier goes on; part of one there
          // while the rest wait elsewhere or have ended is a hang on the device.
          bool released = false, stuck = false;
          for (int g = 0; 128 * g < threads; ++g) {
            int at = 0;
            for (int t = 128 * g; t < min(threads, 128 * g + 128); ++t) at += s.state[size_t(t)] == kAtGroupBarrier;
            if (at == 128) {
              for (int t = 128 * g; t < 128 * g + 128; ++t) s.state[size_t(t)] = kRunning;
              released = true;
            } else if (at > 0) {
              stuck = true;
            }
          }
          if (released) continue;
          if (stuck) return false;
          int finished = 0;
          for (int t = 0; t < threads; ++t) finished += s.state[size_t(t)] == kDone;
          if (finished == threads) {
            for (const ThreadWgmma& w : s.wgmma)
              if (!w.open.empty() || !w.committed.empty()) {
                std::fprintf(stderr, "simt: a thread ended with wgmma operations it did not wait for\n");
                std::abort();
              }
            break;
          }
          if (finished != 0) return false;  // some threads ended while others wait at a barrier
          for (int t = 0; t < threads; ++t) s.state[size_t(t)] = kRunning;
        }
      }
  return true;
}

// The global memory a test declares readable (its tensors, as [first, first + count) runs of
// floats): while a Readable scope is open, a cp.async that reads a float outside all of them ends
// the run. On the device such a read may fault or read another tensor; here the heap would hand
// back some value, which a product discards when it lands outside the output (a tile's rows past
// M, say), so only this check sees it.
struct ReadableRun {
  const float* first;
  size_t count;
};
inline std::vector<ReadableRun>& readable_runs() {
  static std::vector<ReadableRun> runs;
  return runs;
}
struct Readable {
  explicit Readable(std::vector<ReadableRun> runs) { readable_runs() = std::move(runs); }
  ~Readable() { readable_runs().clear(); }
  Readable(const Readable&) = delete;
  Readable& operator=(const Readable&) = delete;
};
inline void check_readable(const float* src) {
  const std::vector<ReadableRun>& runs = readable_runs();
  if (runs.empty()) return;
  for (const ReadableRun& r : runs)
    if (src >= r.first && src < r.first + r.count) return;
  std::fprintf(stderr, "simt: cp.async or load16 reads a float outside the tensors the test declared readable\n");
  std::abort();
}

}  // namespace simt

#define SQ_DYNAMIC_SHARED(T, name) T* name = ::simt::dynamic_shared<T>()
#define SQ_FRESH_SHARED(var) ::simt::fresh_shared(&(var), sizeof(var))

// cp.async: in a forward run a copy is recorded when issued and performed only when its thread
// waits for its group (the latest the device may perform it), so reading a stage before waiting for
// it, or before the barrier after the other threads' waits, reads stale data. In a reverse run it is
// performed at issue (the earliest). valid false: zero-fill, src not read.
inline void cp_async4(float* dst, const float* src, bool valid) {
  if (valid) simt::check_readable(src);
  simt::Scheduler& s = simt::sched();
  if (s.eager_copies)
    *dst = valid ? *src : 0.0f, simt::copy_landed(dst);
  else
    s.async[size_t(s.cur)].open.push_back({dst, src, valid});
}
// The 16-byte copy: 4 floats, the first `valid` read and the rest zero-filled. Both addresses must
// be 16-byte aligned (the device faults otherwise): a misaligned one ends the test run here.
inline void cp_async16(float* dst, const float* src, int valid) {
  if (reinterpret_cast<uintptr_t>(dst) % 16 || reinterpret_cast<uintptr_t>(src) % 16 || valid < 0 || valid > 4) {
    std::fprintf(stderr, "simt: cp_async16 with a misaligned address or %d valid floats\n", valid);
    std::abort();
  }
  for (int i = 0; i < 4; ++i) cp_async4(dst + i, src + i, i < valid);
}
// All 4 floats or none (read false: 16 zero bytes, src not read, so it may point anywhere; the
// address the device is given then, safe, must lie inside a declared tensor).
inline void cp_async16_if(float* dst, const float* src, bool read, const float* safe) {
  if (reinterpret_cast<uintptr_t>(dst) % 16 || (read && reinterpret_cast<uintptr_t>(src) % 16)) {
    std::fprintf(stderr, "simt: cp_async16_if with a misaligned address\n");
    std::abort();
  }
  if (!read) simt::check_readable(safe);
  for (int i = 0; i < 4; ++i) cp_async4(dst + i, read ? src + i : nullptr, read);
}
// A 16-byte load into registers: checked as a copy's read is (simt::Readable), and aligned.
inline float4 load16(const float* src) {
  if (reinterpret_cast<uintptr_t>(src) % 16) {
    std::fprintf(stderr, "simt: load16 from a misaligned address\n");
    std::abort();
  }
  for (int i = 0; i < 4; ++i) simt::check_readable(src + i);
  return float4{src[0], src[1], src[2], src[3]};
}
inline void cp_async_commit() {
  simt::ThreadAsync& a = simt::sched().async[size_t(simt::sched().cur)];
  a.committed.push_back(std::move(a.open));
  a.open.clear();
}
template <int N>
void cp_async_wait() {
  simt::ThreadAsync& a = simt::sched().async[size_t(simt::sched().cur)];
  simt::sched().wgmma[size_t(simt::sched().cur)].landed = true;  // (wgmma's B wants a proxy fence)
  while (a.committed.size() > size_t(N)) {
    for (const simt::AsyncCopy& c : a.committed.front()) *c.dst = c.valid ? *c.src : 0.0f, simt::copy_landed(c.dst);
    a.committed.erase(a.committed.begin());
  }
}

inline uint32_t pack_bf16x2(float lo, float hi) {
  return uint32_t(__float2bfloat16_rn(lo).bits) | (uint32_t(__float2bfloat16_rn(hi).bits) << 16);
}
inline float __uint_as_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t tf32_bits(float v) {
  const float r = nvcuda::wmma::__float_to_tf32(v);
  uint32_t u;
  std::memcpy(&u, &r, 4);
  return u;
}
inline uint32_t tf32_operand(float v) {  // fp32's bits; mma_tf32_1688 reads the upper 19
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return u;
}

namespace simt {
inline float bf16_half(uint32_t reg, int hi) { return simt_to_float(__nv_bfloat16{uint16_t(hi ? reg >> 16 : reg)}); }
// A TF32 operand's value: the tensor cores read its upper 19 bits only, so a kernel that passes
// unrounded fp32 gets TF32 here too, not fp32's precision.
inline float tf32_value(uint32_t reg) { return __uint_as_float(reg & 0xffffe000u); }
// The warp's mma, written from the PTX ISA's fragment tables independently of the kernel: every
// lane deposits its registers, a barrier, then each lane computes its own four outputs (row
// g + 8 (e / 2), column 2t + e % 2 for e = 0..3) from the 32 deposits, summing k in order in float.
// The deposits alternate between two slot arrays, so the next mma's deposits never overwrite what
// a slower lane is still reading (the barrier of that next mma orders them).
//   BF16 m16n8k16: A(r, k) is in lane 4 (r % 8) + (k % 8) / 2, register (r >= 8) + 2 (k >= 8), half
//   k % 2; B(k, n) in lane 4n + (k % 8) / 2, register (k >= 8), half k % 2.
//   TF32 m16n8k8: A(r, k) in lane 4 (r % 8) + k % 4, register (r >= 8) + 2 (k >= 4); B(k, n) in
//   lane 4n + k % 4, register (k >= 4).
template <bool kBf16>
void warp_mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  Scheduler& s = sched();
  const int me = s.cur, base = me / 32 * 32, lane = me % 32, g = lane / 4, t = lane % 4;
  std::vector<MmaOperands>& slot = s.mma_slots[s.mma_count[size_t(me)]++ % 2];
  for (int i = 0; i < 4; ++i) slot[size_t(me)].a[i] = a[i];
  for (int i = 0; i < 2; ++i) slot[size_t(me)].b[i] = b[i];
  warp_barrier();
  const int K = kBf16 ? 16 : 8;
  for (int e = 0; e < 4; ++e) {
    const int r = g + 8 * (e / 2), n = 2 * t + e % 2;
    float acc = d[e];
    for (int k = 0; k < K; ++k) {
      float av, bv;
      if (kBf16) {
        av = bf16_half(slot[size_t(base + 4 * (r % 8) + (k % 8) / 2)].a[(r >= 8) + 2 * (k >= 8)], k % 2);
        bv = bf16_half(slot[size_t(base + 4 * n + (k % 8) / 2)].b[k >= 8], k % 2);
      } else {
        av = tf32_value(slot[size_t(base + 4 * (r % 8) + k % 4)].a[(r >= 8) + 2 * (k >= 4)]);
        bv = tf32_value(slot[size_t(base + 4 * n + k % 4)].b[k >= 4]);
      }
      acc += av * bv;
    }
    d[e] = acc;
  }
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16, written from the PTX ISA independently of the kernels:
// four 8x8 matrices of 16-bit elements, lanes 8j .. 8j + 7 giving the addresses of matrix j's rows
// 0..7 (16 bytes each, 16-byte aligned); lane i receives in register j elements 2 (i % 4) and
// 2 (i % 4) + 1 of matrix j's row i / 4, the lower in the low half: the 32-bit word i % 4 of that
// row. The lanes deposit their addresses in the mma's alternating slots (the same argument holds:
// every lane passes the same sequence of warp-wide operations), a barrier, then each lane reads.
inline void ldmatrix_x4(uint32_t (&r)[4], const float* row) {
  if (reinterpret_cast<uintptr_t>(row) % 16) {
    std::fprintf(stderr, "simt: ldmatrix with a misaligned row address\n");
    std::abort();
  }
  Scheduler& s = sched();
  const int me = s.cur, base = me / 32 * 32, lane = me % 32;
  std::vector<MmaOperands>& slot = s.mma_slots[s.mma_count[size_t(me)]++ % 2];
  slot[size_t(me)].row = row;
  warp_barrier();
  for (int j = 0; j < 4; ++j) std::memcpy(&r[j], slot[size_t(base + 8 * j + lane / 4)].row + lane % 4, 4);
}

// wgmma (sm_90a), written from the PTX ISA ("Asynchronous Warpgroup Level Matrix Instructions")
// independently of the kernels. Every thread of the warpgroup deposits where its A registers and
// its accumulators live, a warpgroup barrier, then the op stands issued. A warp's part of the op
// (its 16 rows of D, from its 16 rows of A and all of B) is performed when the warp waits for the
// op's group (wgmma.wait_group is .sync.aligned: the warp's lanes wait together, a warp barrier
// here, after which the part is complete), the latest the device may read the operands, in both
// orders of a run. So A's registers or a B stage written after the issue and before the warp's
// wait, or accumulators read before it, give a wrong result (and in reverse runs, where copies
// land at issue, a copy into a stage that an op in flight still reads); a lane may rewrite its A
// registers once its own wait returns, as another warp's part may still be in flight. Each
// thread's outputs:
// D(16w + g + 8 (e / 2), 8i + 2t + e % 2) in d[4i + e], summing k in order in float.
//   A, TF32 m64nNk8: A(m, k) in the thread of warp m / 16, lane 4 (m % 8) + k % 4, register
//     (m % 16 >= 8) + 2 (k >= 4) (CUTLASS's ALayout_64x8; mma.m16n8k8's A per warp).
//   A, BF16 m64nNk16: lane 4 (m % 8) + (k % 8) / 2, register (m % 16 >= 8) + 2 (k >= 8), half k % 2.
//   B through the descriptor: start address bits 0-13, leading (k) byte offset 16-29, stride (n)
//     byte offset 32-45, each its value / 16; swizzle bits 62-63 (only 0, none, is emulated). K-major
//     without swizzle: element (k, n) at start + (n % 8) * 16 + (n / 8) * SBO + (k % T) * size
//     + (k / T) * LBO, T = 16 / size. Addresses are offsets into the launch's dynamic shared memory
//     (smem_address), as on the device they are into the block's shared window.
inline uint32_t smem_offset(const void* p) {
  const char* c = static_cast<const char*>(p);
  const DynamicShared& d = dynamic_arena();
  if (!d.arena || c < d.arena || c >= d.end()) {
    std::fprintf(stderr, "simt: a wgmma descriptor's address outside the dynamic shared memory\n");
    std::abort();
  }
  return uint32_t(c - d.arena);
}
// B's element (k, n) through the descriptor (above), K-major without swizzle.
inline const char* wgmma_b_address(uint64_t desc, bool bf16, int k, int n) {
  const char* start = dynamic_arena().arena + ((desc & 0x3FFF) << 4);
  const size_t lbo = ((desc >> 16) & 0x3FFF) << 4, sbo = ((desc >> 32) & 0x3FFF) << 4;
  const int size = bf16 ? 2 : 4, T = 16 / size;
  return start + (n % 8) * 16 + size_t(n / 8) * sbo + (k % T) * size + size_t(k / T) * lbo;
}
inline void wgmma_compute(const WgmmaOp& op, int me) {
  const int w = me % 128 / 32, lane = me % 32, g = lane / 4, t = lane % 4;
  const int K = op.bf16 ? 16 : 8;
  float* d = op.d[me % 128];
  for (int i = 0; i < op.n / 8; ++i)
    for (int e = 0; e < 4; ++e) {
      const int m = 16 * w + g + 8 * (e / 2), n = 8 * i + 2 * t + e % 2;
      float acc = op.scale_d ? d[4 * i + e] : 0.0f;
      for (int k = 0; k < K; ++k) {
        const char* bp = wgmma_b_address(op.desc, op.bf16, k, n);
        float av, bv;
        if (op.bf16) {
          const uint32_t reg = op.a[32 * (m / 16) + 4 * (m % 8) + (k % 8) / 2][(m % 16 >= 8) + 2 * (k >= 8)];
          av = bf16_half(reg, k % 2);
          uint16_t h;
          std::memcpy(&h, bp, 2);
          bv = simt_to_float(__nv_bfloat16{h});
        } else {
          av = tf32_value(op.a[32 * (m / 16) + 4 * (m % 8) + k % 4][(m % 16 >= 8) + 2 * (k >= 4)]);
          uint32_t u;
          std::memcpy(&u, bp, 4);
          bv = tf32_value(u);
        }
        acc += av * bv;
      }
      d[4 * i + e] = acc;
    }
}
template <bool kBf16, int N>
void wgmma(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc, int scale_d) {
  static_assert(N % 8 == 0 && N >= 8 && N <= 256, "wgmma's N is a multiple of 8 up to 256");
  Scheduler& s = sched();
  const int me = s.cur;
  ThreadWgmma& mine = s.wgmma[size_t(me)];
  auto fail = [](const char* why) {
    std::fprintf(stderr, "simt: wgmma.mma_async %s\n", why);
    std::abort();
  };
  if (int(s.state.size()) < (me / 128 + 1) * 128) fail("in a block without whole warpgroups");
  if (!mine.fenced) fail("without a wgmma.fence since the thread last waited (its registers)");
  if (mine.landed) fail("after cp.async copies landed without a fence.proxy.async since");
  if ((desc >> 62) != 0 || ((desc >> 49) & 7) != 0) fail("with a swizzled descriptor (not emulated)");
  if (!s.dynamic_shared || (desc & 0x3FFF) << 4 < size_t(reinterpret_cast<char*>(s.dynamic_shared) - dynamic_arena().arena))
    fail("whose B starts before the launch's dynamic shared memory");  // (past its end: the guard page)
  std::vector<std::unique_ptr<WgmmaOp>>& ops = s.wg_ops[size_t(me / 128)];
  if (ops.size() <= size_t(mine.issued)) ops.emplace_back(new WgmmaOp);
  WgmmaOp& op = *ops[size_t(mine.issued++)];
  if (op.arrived == 0) {
    op.bf16 = kBf16;
    op.n = N;
    op.desc = desc;
    op.scale_d = scale_d != 0;
    // B's words: none written by a plain store without a fence.proxy.async since.
    look_at_shared(me / 32);
    for (int n = 0; n < N; ++n)
      for (int k = 0; k < (kBf16 ? 16 : 8); ++k) {
        const long w = shared_word(wgmma_b_address(desc, kBf16, k, n));
        if (w >= 0 && s.unfenced[size_t(w)]) fail("reads shared memory that plain stores wrote with no fence.proxy.async since");
      }
  } else if (op.bf16 != kBf16 || op.n != N || op.desc != desc || op.scale_d != (scale_d != 0)) {
    fail("differs between the threads of a warpgroup (shape, type, descriptor or scale-d)");
  }
  op.a[me % 128] = a;
  op.d[me % 128] = d;
  ++op.arrived;
  group_barrier();
  mine.open.push_back(&op);
}
}  // namespace simt

inline uint32_t smem_address(const void* p) { return simt::smem_offset(p); }
inline void wgmma_fence() {
  simt::sched().wgmma[size_t(simt::sched().cur)].fenced = true;
  simt::sched().watching = true;
}
inline void fence_proxy_async() {
  simt::Scheduler& s = simt::sched();
  s.wgmma[size_t(s.cur)].landed = false;
  ++s.fences, s.watching = true;
}
inline void wgmma_commit() {
  simt::ThreadWgmma& w = simt::sched().wgmma[size_t(simt::sched().cur)];
  w.committed.push_back(std::move(w.open));
  w.open.clear();
}
template <int N>
void wgmma_wait() {
  const int me = simt::sched().cur, warp = me / 32;
  simt::ThreadWgmma& w = simt::sched().wgmma[size_t(me)];
  if (w.committed.size() > size_t(N)) {
    simt::warp_barrier();  // (every lane commits the same groups: all of the warp's lanes wait here)
    while (w.committed.size() > size_t(N)) {
      for (simt::WgmmaOp* op : w.committed.front()) {
        if (op->done[warp % 4]) continue;  // (a lane before this one performed the warp's part)
        for (int lane = 0; lane < 32; ++lane) simt::wgmma_compute(*op, 32 * warp + lane);
        op->done[warp % 4] = true;
      }
      w.committed.erase(w.committed.begin());
    }
  }
  w.fenced = false;  // the registers are the thread's again: the next wgmma wants a fence
}
template <int R>
void wgmma_fence_operands(float (&)[R]) {}
template <int N>
void wgmma_tf32(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b, int scale_d) {
  simt::wgmma<false, N>(d, a, b, scale_d);
}
template <int N>
void wgmma_bf16(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b, int scale_d) {
  simt::wgmma<true, N>(d, a, b, scale_d);
}

inline void ldmatrix_x4(uint32_t (&r)[4], const float* row) { simt::ldmatrix_x4(r, row); }
inline void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  simt::warp_mma<true>(d, a, b);
}
inline void mma_tf32_1688(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  simt::warp_mma<false>(d, a, b);
}
