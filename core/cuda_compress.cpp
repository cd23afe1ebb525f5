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

void MaskConstraint::on_gradient_device(float* grads, void* stream) {
  if (!dev_) dev_ = std::make_shared<Device>(Device{cuda::DeviceBuffer<uint8_t>(mask_)});
  cuda::apply_mask(grads, dev_->mask.get(), mask_.size(), static_cast<cudaStream_t>(stream));
}

void MaskConstraint::after_update_device(float* params, float* momentum, const float*, double,
                                         void* stream) {
  if (!dev_) dev_ = std::make_shared<Device>(Device{cuda::DeviceBuffer<uint8_t>(mask_)});
  cuda::apply_mask(params, dev_->mask.get(), mask_.size(), static_cast<cudaStream_t>(stream));
  cuda::apply_mask(momentum, dev_->mask.get(), mask_.size(), static_cast<cudaStream_t>(stream));
}

// Every centroid of every tensor has a global index g (the tensors' codebooks concatenated); its
// members are members[start[g] .. start[g+1]), flat parameter indices in ascending order.
struct QuantizedConstraint::Device {
  std::vector<size_t> book_offset;  // per tensor, its first global centroid
  int centroids = 0;
  cuda::DeviceBuffer<int32_t> start, members, centroid_of;
  cuda::DeviceBuffer<float> codebook;
  cuda::DeviceBuffer<double> velocity;
};

void QuantizedConstraint::after_update_device(float* params, float* momentum, const float* grads,
                                              double lr, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const size_t n = plan_.layout().total;
  if (!dev_) {
    SQ_ASSERT(n < size_t(INT32_MAX), "a model of ", n, " parameters for 32-bit member indices");
    auto d = std::make_shared<Device>();
    std::vector<float> book;
    std::vector<double> vel;
    for (size_t t = 0; t < wt_.size(); ++t) {
      d->book_offset.push_back(book.size());
      book.insert(book.end(), cm_.weights[t].codebook.begin(), cm_.weights[t].codebook.end());
      vel.insert(vel.end(), velocity_[t].begin(), velocity_[t].end());
    }
    SQ_ASSERT(book.size() < size_t(INT32_MAX), "too many centroids");
    d->centroids = int(book.size());
    std::vector<int32_t> start(book.size() + 1, 0), centroid_of(n, cuda::kNotShared);
    for (size_t t = 0; t < wt_.size(); ++t) {
      const QuantizedTensor& q = cm_.weights[t];
      std::fill(centroid_of.begin() + long(wt_[t].offset),
                centroid_of.begin() + long(wt_[t].offset + wt_[t].count), -1);
      for (size_t j = 0; j < q.positions.size(); ++j) {
        const size_t g = d->book_offset[t] + q.codes[j];
        ++start[g + 1];
        centroid_of[wt_[t].offset + q.positions[j]] = int32_t(g);
      }
    }
    for (size_t g = 0; g < book.size(); ++g) start[g + 1] += start[g];
    // Counting sort by centroid; within a centroid the parameters stay in ascending order.
    std::vector<int32_t> members(size_t(start.back())), fill(start.begin(), start.end() - 1);
    for (size_t i = 0; i < n; ++i)
      if (centroid_of[i] >= 0) members[size_t(fill[size_t(centroid_of[i])]++)] = int32_t(i);
    d->start = cuda::DeviceBuffer<int32_t>(start);
    d->members = cuda::DeviceBuffer<int32_t>(members);
    d->centroid_of = cuda::DeviceBuffer<int32_t>(centroid_of);
    d->codebook = cuda::DeviceBuffer<float>(book);
    d->velocity = cuda::DeviceBuffer<double>(vel);
    dev_ = std::move(d);
  }
  cuda::centroid_sgd(dev_->centroids, dev_->start.get(), dev_->members.get(), grads, dev_->codebook.get(),
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
