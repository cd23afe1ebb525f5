// A build without CUDA: --device cuda is a clear error.
#include "core/device_step.h"
#include "core/error.h"

namespace sq {

std::unique_ptr<DeviceStep> make_cuda_step(const ModelConfig&, int, int) {
  fail("--device cuda: this squeeze was built without CUDA (CMake found no nvcc)");
}

}  // namespace sq
