// Runs CUDA kernel source on the CPU, for tests on machines without a GPU: the kernel's block
// executes one at a time, each of its threads a fiber (ucontext) with its own stack;
// __syncthreads() switches back to the scheduler, which resumes every thread once per round, so
// all threads reach a barrier before any passes it. __shared__ variables become function-static
// (one copy shared by the block's threads, as on the device). A missing barrier shows as a wrong
// result when threads run in the order that exposes it: run() takes forward or reverse order.
// Supports what the project's tile kernels use: threadIdx, blockIdx, blockDim, gridDim, float4,
// min, fmaf. Include it before the kernel source.
#pragma once
#include <ucontext.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

struct SimtDim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline SimtDim3 threadIdx, blockIdx, blockDim, gridDim;
struct float4 {
  float x, y, z, w;
};
inline int min(int a, int b) { return a < b ? a : b; }

#define __global__
#define __device__
#define __launch_bounds__(n)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __syncthreads() ::simt::barrier()

namespace simt {

struct Scheduler {
  ucontext_t main;
  std::vector<ucontext_t> ctx;
  std::vector<std::vector<char>> stacks;
  std::vector<char> done;
  int cur = 0;
  const std::function<void()>* body = nullptr;
};
inline Scheduler& sched() {
  static Scheduler s;
  return s;
}
inline void barrier() {
  Scheduler& s = sched();
  swapcontext(&s.ctx[size_t(s.cur)], &s.main);
}
inline void entry() {
  Scheduler& s = sched();
  (*s.body)();
  s.done[size_t(s.cur)] = 1;  // returning resumes uc_link: the scheduler
}

// Runs body (the kernel call) for every block of `grid` with `threads` threads per block.
// Returns false if the threads of a block disagreed on the number of barriers.
inline bool run(SimtDim3 grid, int threads, const std::function<void()>& body, bool reverse = false) {
  Scheduler& s = sched();
  s.ctx.resize(size_t(threads));
  s.stacks.resize(size_t(threads));
  s.done.assign(size_t(threads), 0);
  s.body = &body;
  gridDim = grid;
  blockDim = {unsigned(threads), 1, 1};
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = {bx, by, bz};
        for (int t = 0; t < threads; ++t) {
          s.stacks[size_t(t)].resize(256 * 1024);
          getcontext(&s.ctx[size_t(t)]);
          s.ctx[size_t(t)].uc_stack.ss_sp = s.stacks[size_t(t)].data();
          s.ctx[size_t(t)].uc_stack.ss_size = s.stacks[size_t(t)].size();
          s.ctx[size_t(t)].uc_link = &s.main;
          makecontext(&s.ctx[size_t(t)], entry, 0);
          s.done[size_t(t)] = 0;
        }
        for (;;) {  // one round: every live thread runs to its next barrier or its end
          int finished = 0;
          for (int i = 0; i < threads; ++i) {
            const int t = reverse ? threads - 1 - i : i;
            if (s.done[size_t(t)]) continue;
            s.cur = t;
            threadIdx = {unsigned(t), 0, 0};
            swapcontext(&s.main, &s.ctx[size_t(t)]);
            finished += s.done[size_t(t)];
          }
          if (finished == threads) break;
          if (finished != 0) return false;  // some threads ended while others wait at a barrier
        }
      }
  return true;
}

}  // namespace simt
