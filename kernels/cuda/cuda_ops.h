// The CUDA ops: the same operations, geometry structs and layout contract as kernels/ops.h
// (channel-major activations, PyTorch weight layout, parameter gradients accumulate), on device
// pointers, asynchronous on a stream, float only (the CPU ops in double are the tests' oracle).
// Plain C++: included by host code and tests; the kernels live in kernels/cuda/*.cu.
//
// Determinism: no op uses floating-point atomics. Reductions (weight gradients, bias gradients,
// loss sums, the gradient norm) go through fixed-order partial sums, so a step on the GPU gives
// the same bits every time.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdio>
#include <cstdint>
#include <string>

#include "kernels/ops.h"

namespace sq {
namespace cuda {

// ---- runtime --------------------------------------------------------------------------------
// Throws sq::Error "file:line: what: CUDA error text" when e is not cudaSuccess.
void check(cudaError_t e, const char* what, const char* file, int line);
#define SQ_CUDA(call) ::sq::cuda::check((call), #call, __FILE__, __LINE__)
// After a kernel launch: the launch's own error (configuration, no code for this GPU).
#define SQ_CUDA_LAUNCH(name) ::sq::cuda::check(cudaGetLastError(), name, __FILE__, __LINE__)

// Number of usable GPUs; 0 with the reason in *why (no driver, no device, ...).
int device_count(std::string* why);
// Whether environment variable `name` is set to exactly `value`: the experimental switches
// (SQUEEZE_IGEMM_*, SQUEEZE_CUDA_GRAPH; docs/KERNELS.md).
bool env_is(const char* name, const char* value);
// Selects `device` and checks that this build has code for it; throws sq::Error naming the GPU,
// its compute capability and the architectures built, or why there is no GPU.
void use_device(int device);

// ---- element-wise ---------------------------------------------------------------------------
void relu_backward(const float* dy, const float* y, float* dz, size_t n, cudaStream_t s);
void add_inplace(float* y, const float* x, size_t n, cudaStream_t s);
// dst (B, A, inner) = src (A, B, inner) with the outer two axes swapped (+= if accumulate): the
// channel-major (C, N, H, W) layout to cuDNN's NCHW and back.
void swap_outer(const float* src, int A, int B, size_t inner, float* dst, bool accumulate,
                cudaStream_t s);
void scale_inplace(float* x, float a, size_t n, cudaStream_t s);
// out (C, per_channel) = table[c * 256 + in[...]] of the bytes in (C, per_channel): a batch
// assembled as the data set's bytes (core/data.h, assemble_batch_bytes) normalised through
// normalization_table, the floats assemble_batch writes, bit for bit.
void bytes_to_input(const uint8_t* in, size_t per_channel, int C, const float* table, float* out, cudaStream_t s);
// *out (device, one double) = sum x[i]^2, in a fixed order. ws: sum_of_squares_workspace()
// doubles of device memory.
size_t sum_of_squares_workspace();
void sum_of_squares(const float* x, size_t n, double* out, double* ws, cudaStream_t s);
// The fused SGD step of kernels/ops.h over the flat buffers.
void sgd_momentum_update(size_t n, float* param, const float* grad, float* velocity, float lr,
                         float momentum, float weight_decay, cudaStream_t s);

// ---- Deep Compression's retraining (core/compress.h) -----------------------------------------
// x[i] = 0 where mask[i] == 0.
void apply_mask(float* x, const uint8_t* mask, size_t n, cudaStream_t s);
// Trained quantization, one step for every centroid g of every tensor (codebook and velocity
// concatenated): its gradient is the sum of grads[members[j]] for j in [start[g], start[g+1]),
// summed in double in a fixed order and rounded to float; then velocity = momentum * velocity +
// gradient and codebook -= lr * velocity, in double (the CPU's QuantizedConstraint, to rounding
// of the double sum).
void centroid_sgd(int centroids, const int32_t* start, const int32_t* members, const float* grads,
                  float* codebook, double* velocity, double lr, double momentum, cudaStream_t s);
// Per parameter i, centroid_of[i] is a centroid (params[i] = codebook[c]), -1 for a pruned weight
// (params[i] = 0) or below -1 (left alone: biases); momentum is zeroed where it is not below -1.
void write_shared_weights(size_t n, const int32_t* centroid_of, const float* codebook, float* params,
                          float* momentum, cudaStream_t s);

// ---- pooling --------------------------------------------------------------------------------
// argmax (C*N*P*Q bytes, may be null): each window's first maximum, as its offset r*k + s in
// the window, and whether it is positive (pool_kernels.cuh, kNotPositive), for the backward.
// Windows of at most 11 x 11.
void maxpool_forward(const PoolGeom& g, const float* x, float* y, uint8_t* argmax, cudaStream_t s);
// Gathers, per input element, dy of the windows whose recorded first maximum it is (no atomics;
// the windows in row-major order, as the CPU op adds them).
//
// relu_x, in the avgpool and dropout backwards (may be null): the layer's input is a ReLU's
// output, and dx also goes through that ReLU's backward, dx = relu_x > 0 ? dx : 0, in the same
// pass (CudaModel's backward: the layer after a ReLU applies its backward; docs/KERNELS.md).
// relu_in, here: the same with the pool's input x (the forward's) as the mask, taken from the
// argmax bytes: x is not read.
void maxpool_backward(const PoolGeom& g, const uint8_t* argmax, const float* dy, float* dx,
                      cudaStream_t s, bool relu_in = false);
void avgpool_forward(int N, int C, int HW, const float* x, float* y, cudaStream_t s);
void avgpool_backward(int N, int C, int HW, const float* dy, float* dx, cudaStream_t s,
                      const float* relu_x = nullptr);

// ---- dropout (sample_keys on the device; masks identical to the CPU op's) -----------------
void dropout_forward(int N, int C, int HW, float p, const uint64_t* sample_keys, const float* x,
                     float* y, cudaStream_t s);
void dropout_backward(int N, int C, int HW, float p, const uint64_t* sample_keys,
                      const float* dy, float* dx, cudaStream_t s, const float* relu_x = nullptr);
// The same as dropout_backward with relu_x (the dropout's input x is a ReLU's output), from the
// forward's output y = dropout(x) instead of x and the masks: dx = y > 0 ? dy / (1 - p) : 0, bit for
// bit. n elements; p in [0, 1).
void dropout_backward_relu_from_output(size_t n, float p, const float* y, const float* dy, float* dx,
                                       cudaStream_t s);

// ---- loss -----------------------------------------------------------------------------------
// As kernels/ops.h's softmax_xent; labels on the device. Writes result[0] = the loss sum and
// result[1] = the number of correct arg-maxes (device doubles) instead of returning them.
// ws: softmax_xent_workspace(N) doubles.
size_t softmax_xent_workspace(int N);
void softmax_xent(int N, int K, const float* logits, const int32_t* labels, float grad_scale,
                  float* dlogits, double* result, double* ws, cudaStream_t s);

// ---- convolution (implicit GEMM: no im2col buffer) ------------------------------------------
// Which implementation conv_forward / conv_backward (and so the Fire module) run, process-wide:
// the project's own kernels, or cuDNN (the benchmarks' baseline and the tests' second oracle;
// fp32 without TF32, "equal precision"). cuDNN keeps its own per-shape plans and workspaces,
// made on first use of a shape.
enum class ConvImpl { kOwn, kCudnn };
bool cudnn_built();  // this build links cuDNN
void set_conv_impl(ConvImpl impl);  // throws sq::Error for kCudnn in a build without cuDNN
ConvImpl conv_impl();
// The own convolution's multiply: fp32 FMA (default), or tensor cores with TF32 or BF16 operands
// (rounded from the fp32 tensors as they are loaded) and fp32 accumulation; storage, master
// weights and every other op stay fp32. cuDNN honours kTf32 (tensor-op math) and runs kBf16
// as fp32 (its BF16 path needs BF16 tensors).
enum class ConvMath { kFp32, kTf32, kBf16 };
void set_conv_math(ConvMath m);
ConvMath conv_math();
// Where the own convolutions record which kernel each product ran on (one line the first time a
// product, geometry, precision, kernel, tile and grid runs; nullptr: nowhere). Initially from
// SQUEEZE_IGEMM_ROUTES: 1 for stderr, or a file to append to.
void log_conv_routes(FILE* f);
// The dynamic shared memory the own convolutions give a block: this GPU's limit, or less with
// SQUEEZE_SMEM_OPTIN (an older GPU's routes on this one; igemm_ops.h, smem_optin_capped). Throws
// sq::Error naming the variable where its value is refused.
size_t conv_smem_limit();
// Whether the own convolutions run their wgmma kernels: the GPU's code has them (sm_90a), and
// neither SQUEEZE_IGEMM_WGMMA=0 nor SQUEEZE_SMEM_OPTIN turns them off.
bool conv_uses_wgmma();
// The cuDNN implementation itself (kernels/cuda/conv_cudnn.cpp), same contract as below.
void cudnn_conv_forward(const ConvGeom& g, const float* x, const float* w, const float* b,
                        float* y, bool relu, cudaStream_t s);
void cudnn_conv_backward(const ConvGeom& g, const float* x, const float* w, const float* dz,
                         float* dw, float* db, float* dx, bool accumulate, cudaStream_t s);
// cuDNN's BF16 convolutions alone: the BF16 baseline of bench_gpu, which the own convolutions'
// ConvMath::kBf16 (BF16 operands of fp32 tensors) has no cuDNN counterpart for. Tensors hold BF16
// bits (uint16_t) in cuDNN's layout for the tensor cores, NHWC (filters K, R, S, C), packed; fp32
// accumulation (compute type FLOAT, tensor-op math). No bias, no ReLU and no bias gradient: what
// the own kernels do in their epilogues, so the baseline is a lower bound on a cuDNN BF16 layer.
// dw is written; dx written or accumulated (beta 1), or skipped when null.
void cudnn_bf16_forward(const ConvGeom& g, const uint16_t* x, const uint16_t* w, uint16_t* y,
                        cudaStream_t s);
void cudnn_bf16_backward(const ConvGeom& g, const uint16_t* x, const uint16_t* w, const uint16_t* dz,
                         uint16_t* dw, uint16_t* dx, bool accumulate, cudaStream_t s);

// y = conv(x, w) + b (b may be null), then ReLU if relu. Shapes as kernels/ops.h. ws: null, or
// conv_forward_workspace(g) floats of scratch (the 3x3 products' weights rewritten for the wgmma
// window kernel, which without it leaves those products to the mma.sync window kernel).
size_t conv_forward_workspace(const ConvGeom& g);
void conv_forward(const ConvGeom& g, const float* x, const float* w, const float* b, float* y,
                  bool relu, cudaStream_t s, float* ws = nullptr);
// dw += ..., db += ... (may be null), dx = or += (accumulate) the input gradient (may be null).
// relu_x: x is a ReLU's output, and dx also goes through that ReLU's backward (dx = x > 0 ? dx :
// 0, after any accumulation), in the input gradient's epilogue (the own kernels) or a pass after
// it (cuDNN). ws: conv_backward_workspace(g) floats (the split-K partial sums of dw, and of dx
// where its product has few output tiles).
size_t conv_backward_workspace(const ConvGeom& g);
// What the convolution kernels need set on the current GPU before their first launch (the mma
// kernels' shared-memory limit), done now: that setting may synchronize, so it must not first
// happen inside a CUDA-graph capture. CudaStep calls it; otherwise the first launch of each kernel
// does it.
void prepare_conv_kernels();
void conv_backward(const ConvGeom& g, const float* x, const float* w, const float* dz, float* dw,
                   float* db, float* dx, bool accumulate, float* ws, cudaStream_t s,
                   bool relu_x = false);

// ---- Fire module ----------------------------------------------------------------------------
// As kernels/ops.h: squeeze 1x1 + ReLU into s, expand 1x1 and 3x3 + ReLU straight into their
// channel slices of y. This first version composes the implicit-GEMM convolutions; the fused
// kernels (squeeze tile kept on chip for both expands) replace it behind the same declarations.
// ws: fire_workspace(g) floats (fire_forward: null, or as conv_forward's).
size_t fire_workspace(const FireGeom& g);
void fire_forward(const FireGeom& g, const float* x, FireParams<const float> p, float* s,
                  float* y, cudaStream_t st, float* ws = nullptr);
// dy_relu_done: dy already went through the backward of the Fire's output ReLU (the layer after
// it applied it), so it is the expands' output gradient as it is. relu_x: x is a ReLU's output and
// dx also goes through that ReLU's backward (as conv_backward's), after any accumulation.
void fire_backward(const FireGeom& g, const float* x, FireParams<const float> p, const float* s,
                   const float* y, const float* dy, FireParams<float> grad, float* dx,
                   bool accumulate, float* ws, cudaStream_t st, bool dy_relu_done = false,
                   bool relu_x = false);

// ---- Hopper's warpgroup MMA (wgmma.cuh) -------------------------------------------------------
// Whether the code loaded for the current GPU has wgmma (built for sm_90a and running on sm_90).
bool wgmma_available();
// The probe of wgmma.cuh's operand layouts (wgmma_probe.cuh): D (64 groups x n) = A (64 groups x K)
// * B (K x n), row-major device arrays of TF32 or BF16 values, on one block of `groups` warpgroups;
// n 64, 96 or 128, layout 0 or 1 (B's core matrices along k or along n), K = wgmma_probe_depth(bf16).
// Throws sq::Error where wgmma_available() is false.
int wgmma_probe_depth(bool bf16);
void wgmma_probe(bool bf16, int n, int layout, int groups, const float* A, const float* B, float* D,
                 cudaStream_t s);

}  // namespace cuda
}  // namespace sq
