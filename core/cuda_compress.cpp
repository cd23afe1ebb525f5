// The GPU side of Deep Compression's retraining constraints (core/compress.h): device copies of
// the mask, and of the codebooks with their member lists, made at the first step on the device
// that is current then (the trainer's GPU); the steps are kernels on the trainer's stream
// (kernels/cuda/compress.cu), with no host synchronisation.
#include <cuda_runtime_api.h>

#include "core/compress.h"
#include "core/error.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/device_buffer.h"

namespace sq {

struct MaskConstraint::Device {
  cuda::DeviceBuffer<uint8_t> mask;
};

void MaskConstraint::apply_device(float* x, void* stream) {
  if (!dev_) dev_ = std::make_shared<Device>(Device{cuda::DeviceBuffer<uint8_t>(mask_)});
  cuda::apply_mask(x, dev_->mask.get(), mask_.size(), static_cast<cudaStream_t>(stream));
}

void MaskConstraint::on_gradient_device(float* grads, void* stream) { apply_device(grads, stream); }

void MaskConstraint::after_update_device(float* params, float* momentum, const float*, double,
                                         void* stream) {
  apply_device(params, stream);
  apply_device(momentum, stream);
}

// The lists of centroid_lists() (core/compress.h) and the velocities, on the device.
struct QuantizedConstraint::Device {
  std::vector<size_t> book_offset;  // per tensor, its first global centroid
  cuda::DeviceBuffer<int32_t> start, members, centroid_of;
  cuda::DeviceBuffer<float> codebook;
  cuda::DeviceBuffer<double> velocity;
};

void QuantizedConstraint::after_update_device(float* params, float* momentum, const float* grads,
                                              double lr, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const size_t n = plan_.layout().total;
  if (!dev_) {
    const CentroidLists L = centroid_lists(cm_, plan_);
    std::vector<double> vel;
    for (const std::vector<double>& v : velocity_) vel.insert(vel.end(), v.begin(), v.end());
    auto d = std::make_shared<Device>();
    d->book_offset = L.book_offset;
    d->start = cuda::DeviceBuffer<int32_t>(L.start);
    d->members = cuda::DeviceBuffer<int32_t>(L.members);
    d->centroid_of = cuda::DeviceBuffer<int32_t>(L.centroid_of);
    d->codebook = cuda::DeviceBuffer<float>(L.codebook);
    d->velocity = cuda::DeviceBuffer<double>(vel);
    dev_ = std::move(d);
  }
  cuda::centroid_sgd(int(dev_->codebook.size()), dev_->start.get(), dev_->members.get(), grads, dev_->codebook.get(),
                     dev_->velocity.get(), lr, momentum_, s);
  cuda::write_shared_weights(n, dev_->centroid_of.get(), dev_->codebook.get(), params, momentum, s);
}

void QuantizedConstraint::finish_device() {
  const std::vector<float> book = dev_->codebook.download();  // waits for the device
  const std::vector<double> vel = dev_->velocity.download();
  for (size_t t = 0; t < wt_.size(); ++t) {
    std::vector<float>& cb = cm_.weights[t].codebook;
    const size_t o = dev_->book_offset[t];
    std::copy(book.begin() + long(o), book.begin() + long(o + cb.size()), cb.begin());
    std::copy(vel.begin() + long(o), vel.begin() + long(o + cb.size()), velocity_[t].begin());
  }
  dev_.reset();
}

}  // namespace sq
