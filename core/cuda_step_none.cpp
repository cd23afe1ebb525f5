// A build without CUDA: --device cuda is a clear error.
#include "core/device_step.h"
#include "core/error.h"

namespace sq {

void use_cuda_device(int) {
  fail("--device cuda: this squeeze was built without CUDA (CMake found no nvcc)");
}

std::unique_ptr<DeviceStep> make_cuda_step(const ModelConfig&, int, int device) {
  use_cuda_device(device);
  return nullptr;  // not reached: use_cuda_device throws
}

}  // namespace sq
