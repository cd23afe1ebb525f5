// Internals of the CPU convolution, exposed for the tests (not part of the ops.h contract).
#pragma once
#include <cstddef>

#include "kernels/ops.h"

namespace sq::cpu {

// A non-pointwise convolution lowers the batch in chunks of whole images so that one im2col
// buffer (C*R*S x n*P*Q) holds at most this many elements (but always at least one image).
// Default 16M elements (64 MiB of floats).
constexpr size_t kDefaultConvChunkElems = size_t(1) << 24;

size_t conv_chunk_limit();
// Tests only: lower the limit to exercise the chunked path. conv_workspace() follows it, so
// size workspaces after setting it. Not thread-safe with respect to running convolutions.
void set_conv_chunk_limit(size_t elems);

// Images per chunk for geometry g under the current limit (1 <= n <= N; 0 if N == 0).
int conv_chunk_images(const ConvGeom& g);

}  // namespace sq::cpu
