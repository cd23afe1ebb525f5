// Owned device memory and pinned host memory: checked allocation, freed on scope exit,
// move-only. The one helper for the GPU path's buffers (model, step, tests, benchmarks).
#pragma once
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <utility>
#include <vector>

#include "kernels/cuda/cuda_ops.h"

namespace sq {
namespace cuda {

// Synchronous copy of n elements from the device (after the device finished its work).
template <class T>
std::vector<T> download(const T* p, size_t n) {
  std::vector<T> v(n);
  SQ_CUDA(cudaDeviceSynchronize());
  SQ_CUDA(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
  return v;
}

template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : n_(n) {
    SQ_CUDA(cudaMalloc(reinterpret_cast<void**>(&p_), std::max<size_t>(n, 1) * sizeof(T)));
  }
  explicit DeviceBuffer(const std::vector<T>& v) : DeviceBuffer(v.size()) { upload(v.data()); }
  ~DeviceBuffer() {
    if (p_) cudaFree(p_);
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(o.n_) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() const { return p_; }
  size_t size() const { return n_; }
  // Synchronous, also for the non-blocking streams the kernels run on: cudaMemcpy from pageable
  // memory may return before its DMA (on the legacy stream) has landed, and a non-blocking
  // stream does not wait for the legacy stream.
  void upload(const T* host) {
    SQ_CUDA(cudaMemcpy(p_, host, n_ * sizeof(T), cudaMemcpyHostToDevice));
    SQ_CUDA(cudaDeviceSynchronize());
  }
  std::vector<T> download() const { return cuda::download(p_, n_); }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

template <class T>
class PinnedBuffer {  // page-locked host memory, for asynchronous copies
 public:
  explicit PinnedBuffer(size_t n) {
    SQ_CUDA(cudaMallocHost(reinterpret_cast<void**>(&p_), std::max<size_t>(n, 1) * sizeof(T)));
  }
  ~PinnedBuffer() {
    if (p_) cudaFreeHost(p_);
  }
  PinnedBuffer(PinnedBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept {
    std::swap(p_, o.p_);
    return *this;
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
};

// An owned CUDA event without timing (for ordering streams), destroyed on scope exit.
class Event {
 public:
  Event() { SQ_CUDA(cudaEventCreateWithFlags(&e_, cudaEventDisableTiming)); }
  ~Event() {
    if (e_) cudaEventDestroy(e_);
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  cudaEvent_t get() const { return e_; }

 private:
  cudaEvent_t e_ = nullptr;
};

}  // namespace cuda
}  // namespace sq
