// CUDA runtime helpers: checked calls, device discovery, and a clear error for "no GPU" or
// "a GPU this build has no code for".
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "kernels/cuda/common.cuh"

#ifndef SQUEEZE_CUDA_ARCHS
#define SQUEEZE_CUDA_ARCHS "?"
#endif

namespace sq {
namespace cuda {

namespace {
__global__ void probe_kernel(int* x) {
  if (x) *x = 1;
}
}  // namespace

void check(cudaError_t e, const char* what, const char* file, int line) {
  if (e == cudaSuccess) return;
  fail(file, ":", line, ": ", what, ": ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")");
}

bool env_is(const char* name, const char* value) {
  const char* e = std::getenv(name);
  return e && std::strcmp(e, value) == 0;
}

int device_count(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error state
    if (why) *why = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
    return 0;
  }
  if (n == 0 && why) *why = "no CUDA device found";
  return n;
}

void use_device(int device) {
  std::string why;
  const int n = device_count(&why);
  if (n == 0) fail("--device cuda: no usable GPU (", why, ")");
  if (device < 0 || device >= n) fail("--device cuda: GPU ", device, " requested, ", n, " present");
  SQ_CUDA(cudaSetDevice(device));
  cudaDeviceProp prop;
  SQ_CUDA(cudaGetDeviceProperties(&prop, device));
  cudaFuncAttributes attr;
  const cudaError_t e = cudaFuncGetAttributes(&attr, probe_kernel);
  if (e != cudaSuccess) {
    cudaGetLastError();
    fail("--device cuda: GPU ", device, " (", prop.name, ", compute capability ", prop.major, ".",
         prop.minor, ") has no code in this build (built for sm ", SQUEEZE_CUDA_ARCHS,
         "; set CMAKE_CUDA_ARCHITECTURES): ", cudaGetErrorString(e));
  }
}

}  // namespace cuda
}  // namespace sq
