// CPU ops with forward and backward, the numerical reference of squeeze. kernels/cuda/cuda_ops.h
// implements the same ops, with these geometry structs and contracts, on device pointers.
//
// Layout contract: activations are "channel-major" (C, N, H, W): channel outermost, then the
// image in the batch, then rows and columns. A channel slice of an activation is therefore one
// contiguous block, so the Fire module's two expand convolutions write straight into their
// slices of the concatenated output, and a convolution over the whole batch is one GEMM:
//   Y (K x N*P*Q) = W (K x C*R*S) * im2col(X) (C*R*S x N*P*Q).
// Weights are PyTorch's (K, C, R, S); biases (K).
//
// Gradient contract: parameter gradients ACCUMULATE (+=) into the flat gradient buffer, so
// micro-batches and shared parameters add up; activation gradients are WRITTEN (=) unless the
// op takes an explicit `accumulate` flag (the Fire module's squeeze output receives the sum of
// the two expand convolutions' backward-data results: the first writes, the second adds).
//
// Every op is templated on the scalar type: float for training, double for the finite-
// difference tests. Every op runs its loops on all cores (OpenMP; BLAS threads its own GEMMs)
// and allocates nothing: scratch memory comes from a caller-provided workspace whose size the
// matching *_workspace() function gives, in elements of T.
#pragma once
#include <cstddef>
#include <cstdint>

namespace sq {

// ---- GEMM -----------------------------------------------------------------------------------
// Row-major C (M x N) = alpha * op(A) (M x K) * op(B) (K x N) + beta * C, on OpenBLAS.
template <class T>
void gemm(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda,
          const T* B, int ldb, T beta, T* C, int ldc);

// ---- convolution ----------------------------------------------------------------------------
struct ConvGeom {
  int N = 0;              // batch
  int C = 0, H = 0, W = 0;  // input channels and size
  int K = 0, R = 1, S = 1;  // output channels, kernel height and width
  int stride = 1, pad = 0;
  int P() const { return (H + 2 * pad - R) / stride + 1; }  // output height
  int Q() const { return (W + 2 * pad - S) / stride + 1; }  // output width
  bool is_pointwise() const { return R == 1 && S == 1 && stride == 1 && pad == 0; }
};

// Elements of T of workspace that conv_forward / conv_backward need (0 for pointwise convs).
size_t conv_workspace(const ConvGeom& g);

// y = conv(x, w) + b, then ReLU if `relu`.
//   x: (C, N, H, W); w: (K, C, R, S); b: (K) or null; y: (K, N, P, Q), y_ld-free (contiguous).
template <class T>
void conv_forward(const ConvGeom& g, const T* x, const T* w, const T* b, T* y, bool relu, T* ws);

// Backward of the convolution alone (apply relu_backward first for a fused ReLU).
//   dz: (K, N, P, Q) gradient w.r.t. the pre-activation output.
//   dw += d/dw (K, C, R, S); db += (K) (db may be null); dx (C, N, H, W) = or += (if
//   accumulate) the input gradient; dx may be null when the input needs no gradient.
template <class T>
void conv_backward(const ConvGeom& g, const T* x, const T* w, const T* dz, T* dw, T* db, T* dx,
                   bool accumulate, T* ws);

// Operand rounding, to compare with the GPU's tensor-core precisions (--check-layers): with
// kTf32 or kBf16 set, the float convolutions round every element of their products' operands (x,
// w and dz) as the GPU's mma kernel does before it multiplies, and then proceed as before in fp32.
// The bias and the bias gradient stay unrounded, as on the GPU. So the CPU and the GPU then differ
// by the order of their fp32 sums alone, as in fp32. The rounded copies are allocated per call:
// a debugging mode, exempt from "allocates nothing". kNone (the default): as is. Double convolutions
// are never rounded (the tests' oracle).
enum class OperandRounding { kNone, kTf32, kBf16 };
void set_conv_operand_rounding(OperandRounding r);
OperandRounding conv_operand_rounding();
// v as the GPU rounds an operand: TF32 keeps 10 mantissa bits and cuts the rest, toward zero (the
// mma, window and row kernels pass fp32 bits, of which mma reads the upper 19); BF16 keeps 7, to
// nearest even (__floats2bfloat162_rn). Infinities and NaNs pass through.
float round_operand(float v, OperandRounding r);

// ---- element-wise ---------------------------------------------------------------------------
// dz = dy * (y > 0), n elements (y is the ReLU's output). dz may alias dy.
template <class T>
void relu_backward(const T* dy, const T* y, T* dz, size_t n);

// y += x (bypass add, forward) and, for backward, dx += dy: the same op.
template <class T>
void add_inplace(T* y, const T* x, size_t n);

// sum x[i]^2 accumulated in double (gradient-norm clipping), and x *= s.
template <class T>
double sum_of_squares(const T* x, size_t n);
template <class T>
void scale_inplace(T* x, T s, size_t n);

// dst = src, bytes long (not overlapping), split over the OpenMP threads in slices of at least
// 4 MiB: the GPU step's copy of a batch into pinned memory (77 MB for 128 images at 224²), which
// one thread makes at a VM's 5-12 GB/s, longer than a squeezenet1.1 step on an H200.
void copy_parallel(void* dst, const void* src, size_t bytes);

// ---- Fire module ----------------------------------------------------------------------------
// squeeze: s = relu(conv1x1(x) + bs)              s: (S, N, H, W)
// expand:  y[0:E1]     = relu(conv1x1(s) + b1)     y: (E1 + E3, N, H, W), written in place:
//          y[E1:E1+E3] = relu(conv3x3 pad 1(s) + b3)   no separate concat pass.
struct FireGeom {
  int N = 0, C = 0, H = 0, W = 0;  // input
  int S = 0, E1 = 0, E3 = 0;       // squeeze, expand1x1, expand3x3 channels
  ConvGeom squeeze() const { return {N, C, H, W, S, 1, 1, 1, 0}; }
  ConvGeom expand1() const { return {N, S, H, W, E1, 1, 1, 1, 0}; }
  ConvGeom expand3() const { return {N, S, H, W, E3, 3, 3, 1, 1}; }
};
template <class T>
struct FireParams {  // views into the flat parameter (or gradient) buffer
  T *ws, *bs, *w1, *b1, *w3, *b3;
};

// Workspace for fire_forward and fire_backward, in elements of T.
size_t fire_workspace(const FireGeom& g);

template <class T>
void fire_forward(const FireGeom& g, const T* x, FireParams<const T> p, T* s, T* y, T* ws);

// dy: (E1 + E3, N, H, W) gradient w.r.t. y (post-ReLU); s, y: the forward's outputs.
// Parameter gradients += into grad; dx (C, N, H, W) = or += (accumulate) the input gradient
// (null: not needed). ws holds the squeeze-output gradient and the conv scratch.
template <class T>
void fire_backward(const FireGeom& g, const T* x, FireParams<const T> p, const T* s,
                   const T* y, const T* dy, FireParams<T> grad, T* dx, bool accumulate, T* ws);

// ---- pooling --------------------------------------------------------------------------------
// Max pooling with PyTorch's ceil_mode=True rule (Caffe's and torchvision's): a last window
// that would start in the padding is dropped. No padding in SqueezeNet, but it is supported.
struct PoolGeom {
  int N = 0, C = 0, H = 0, W = 0;
  int k = 3, stride = 2, pad = 0;
  bool ceil_mode = true;
  int P() const;  // output height
  int Q() const;  // output width
};

// x: (C, N, H, W) -> y: (C, N, P, Q).
template <class T>
void maxpool_forward(const PoolGeom& g, const T* x, T* y);

// dx (C, N, H, W) = the gradient routed to each window's first maximum (recomputed from x,
// ties to the first element in row-major window order, as PyTorch's CPU kernel does).
template <class T>
void maxpool_backward(const PoolGeom& g, const T* x, const T* dy, T* dx);

// Global average pool: x (C, N, H, W) -> y (N, C) (note: batch-major, ready for the loss).
template <class T>
void avgpool_forward(int N, int C, int HW, const T* x, T* y);
// dx (C, N, H, W) = dy (N, C) / HW broadcast.
template <class T>
void avgpool_backward(int N, int C, int HW, const T* dy, T* dx);

// ---- dropout --------------------------------------------------------------------------------
// Inverted dropout, y = x * keep / (1 - p). The mask of sample n, element e (e = c*HW + hw,
// the sample's own NCHW offset) is a pure function of (sample_keys[n], e): recomputed in
// backward, never stored, and independent of rank and batch composition.
// x, y: (C, N, H, W) with per-sample element count C*HW. p in [0, 1).
template <class T>
void dropout_forward(int N, int C, int HW, float p, const uint64_t* sample_keys, const T* x, T* y);
template <class T>
void dropout_backward(int N, int C, int HW, float p, const uint64_t* sample_keys, const T* dy,
                      T* dx);

// ---- loss -----------------------------------------------------------------------------------
// Softmax cross-entropy over logits (N, K) with integer labels in [0, K).
// dlogits = (softmax - onehot) * grad_scale (grad_scale = 1 / global batch size, so that ranks'
// gradients sum to the global mean). Returns the SUM of per-sample losses; *correct receives the
// number of samples whose arg-max equals the label (may be null).
template <class T>
double softmax_xent(int N, int K, const T* logits, const int32_t* labels, T grad_scale,
                    T* dlogits, int* correct);

// ---- optimizer ------------------------------------------------------------------------------
// One fused pass over the flat buffers (PyTorch's SGD semantics):
//   g = grad + weight_decay * param;  v = momentum * v + g;  param -= lr * v.
template <class T>
void sgd_momentum_update(size_t n, T* param, const T* grad, T* velocity, T lr, T momentum,
                         T weight_decay);

}  // namespace sq
