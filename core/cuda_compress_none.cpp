// A build without CUDA: the device side of the compression constraints refuses (the trainer
// never calls it without a GPU step, which make_cuda_step refuses first).
#include "core/compress.h"
#include "core/error.h"

namespace sq {

struct MaskConstraint::Device {};
struct QuantizedConstraint::Device {};

void MaskConstraint::apply_device(float*, void*) { fail("this build has no CUDA support"); }
void MaskConstraint::on_gradient_device(float* grads, void* stream) { apply_device(grads, stream); }
void MaskConstraint::after_update_device(float* params, float*, const float*, double, void* stream) {
  apply_device(params, stream);
}
void QuantizedConstraint::after_update_device(float*, float*, const float*, double, void*) {
  fail("this build has no CUDA support");
}
void QuantizedConstraint::finish_device() { dev_.reset(); }

}  // namespace sq
