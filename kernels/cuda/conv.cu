// Convolution as implicit GEMM: no im2col buffer; the GEMM tile loader computes each operand
// element from the tensors directly. One tiled kernel (64x64 outputs per block, 16-deep k-steps,
// 4x4 outputs per thread, fp32 FMA) serves the three products:
//   forward        Y  (K x N*P*Q) = W (K x C*R*S) * col(X)            + bias, ReLU epilogue
//   backward data  dX (C x N*H*W) = W^T (C x K*R*S) * "col"(dZ)        (stride-aware gather; W^T
//                  written out first, split-K where the output has few tiles)
//   backward wts   dW (K x C*R*S) += dZ (K x N*P*Q) * col(X)^T         (split-K, fixed-order sum)
// This is the portable fp32 baseline the fused Fire kernels and the tensor-core path are measured
// against; its time against cuDNN is in docs/BENCHMARKS.md ("GPU").
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <type_traits>

#include "core/error.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/igemm_async.cuh"
#include "kernels/cuda/igemm_kernel.cuh"
#include "kernels/cuda/igemm_mma.cuh"
#include "kernels/cuda/igemm_rows.cuh"
#include "kernels/cuda/igemm_wgrows.cuh"
#include "kernels/cuda/igemm_wgrowsw.cuh"
#include "kernels/cuda/igemm_win.cuh"
#include "kernels/cuda/igemm_wg.cuh"
#include "kernels/cuda/igemm_wgwin.cuh"
#include "kernels/cuda/igemm_wgwinw.cuh"
#include "kernels/cuda/igemm_wgw.cuh"

namespace sq {
namespace cuda {

namespace {

Geo geo_of(const ConvGeom& g) {
  SQ_ASSERT(g.N >= 0 && g.C > 0 && g.K > 0 && g.R > 0 && g.S > 0 && g.stride > 0 && g.pad >= 0,
            "bad conv geometry");
  SQ_ASSERT(g.P() > 0 && g.Q() > 0, "conv output is empty");
  return {g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad, g.P(), g.Q()};
}

ConvMath g_math = ConvMath::kFp32;
// The tile kernels' register prefetch (igemm_kernel.cuh), on unless SQUEEZE_IGEMM_PREFETCH=0: the
// switch lets one GPU run measure both schedules (docs/KERNELS.md, v4).
const bool g_prefetch = !env_is("SQUEEZE_IGEMM_PREFETCH", "0");

// The 8x8-share tiles (128x128, 64x256; igemm_kernel.cuh, docs/KERNELS.md v5), only with
// SQUEEZE_IGEMM_WIDE=1: on the H200 they were slower than v4's 4x4-share tiles almost everywhere
// (fire6's expand 3x3 forward 1.05 against 0.67 ms, the Fashion-MNIST step 16.0k against 22.0k
// img/s): at 170-250 registers a thread only one block of 8 warps fits an SM. Kept, tested on
// the CPU and on the GPU, for the tuning that would make them pay (two blocks per SM).
const bool g_wide = env_is("SQUEEZE_IGEMM_WIDE", "1");

// The fp32 kernel's warps as 4 x 8 shares (igemm_kernel.cuh), only with SQUEEZE_IGEMM_WARPS=4x8:
// not yet measured on a GPU (docs/KERNELS.md, v6).
const bool g_square_warps = env_is("SQUEEZE_IGEMM_WARPS", "4x8");

// The tensor-core precisions through the cp.async + mma.sync kernel (igemm_mma.cuh, v7), unless
// SQUEEZE_IGEMM_MMA=0 (the WMMA kernel, igemm_tc_kernel). On the H200 (run c, docs/KERNELS.md)
// v7 took the squeezenet1.0 TF32 step from 3,210 to 4,741 img/s and BF16 from 4,448 to 4,992.
const bool g_mma = !env_is("SQUEEZE_IGEMM_MMA", "0");

// fp32 products on the tensor cores as three TF32 products each (igemm_mma.cuh, MmaTf32x3), only
// with SQUEEZE_IGEMM_3XTF32=1, through the mma and window kernels (the first convolution through
// the mma kernel: the row kernels hold A rounded). Unmeasured on a GPU: it stays opt-in until a
// lease times it against the fp32 kernel (docs/KERNELS.md, "fp32 on the tensor cores").
const bool g_3xtf32 = env_is("SQUEEZE_IGEMM_3XTF32", "1");

// The fp32 8x8-share tiles on cp.async stages (igemm_async.cuh, docs/KERNELS.md v8), only with
// SQUEEZE_IGEMM_ASYNC=1: unmeasured on a GPU. They take the products of more than 32 rows whose
// wide tile (wide_tile's rule) is 128x128 or 64x256; the others keep v4's tiles.
const bool g_async = env_is("SQUEEZE_IGEMM_ASYNC", "1");

// SQUEEZE_IGEMM_ROUTES=1 (or =FILE): one line on stderr (or appended to FILE) the first time each
// product (forward, input or weight gradient) of a geometry runs in a precision on a kernel, with
// its tile, grid and shared memory (gpu_check.sh bench keeps them: $OUT/igemm_routes.txt), so that
// a time can be read against the kernel that produced it, and the route's choices (window, row,
// mma, split-K slices, the 99 KB limit) are visible without a profiler.
struct RouteLog {
  FILE* out = nullptr;
  std::set<std::string> seen;  // the lines written to out
};
RouteLog& route_log() {
  static RouteLog log = [] {
    RouteLog l;
    const char* v = std::getenv("SQUEEZE_IGEMM_ROUTES");
    if (!v || !*v || std::strcmp(v, "0") == 0) return l;
    l.out = std::strcmp(v, "1") == 0 ? stderr : std::fopen(v, "a");
    if (!l.out) fail("SQUEEZE_IGEMM_ROUTES: cannot open '", v, "' for appending");
    return l;
  }();
  return log;
}
template <class Op>
const char* product_name() {
  if constexpr (std::is_same_v<Op, FwdOp>) return "forward";
  if constexpr (std::is_same_v<Op, DataOp>) return "input gradient";
  return "weight gradient";
}
template <class Prec>
const char* prec_name() {
  if constexpr (std::is_same_v<Prec, MmaTf32>) return "TF32";
  if constexpr (std::is_same_v<Prec, MmaBf16>) return "BF16";
  if constexpr (std::is_same_v<Prec, MmaTf32x3>) return "fp32 as 3xTF32";
  if constexpr (std::is_same_v<Prec, Tf32>) return "TF32 (WMMA)";
  if constexpr (std::is_same_v<Prec, Bf16>) return "BF16 (WMMA)";
  return "fp32";
}
template <class Op>
void report_route(const Op& op, const char* prec, const char* kernel, int tm, int tn, dim3 grid, size_t smem) {
  RouteLog& log = route_log();
  if (!log.out) return;
  const Geo& g = op.g;
  char line[400];
  std::snprintf(line, sizeof line,
                "squeeze: own %s of %d->%d %dx%d stride %d pad %d at %dx%d, batch %d, %s: %s kernel, tile %dx%d, "
                "grid %ux%ux%u, %zu bytes of dynamic shared memory",
                product_name<Op>(), g.C, g.K, g.R, g.S, g.stride, g.pad, g.H, g.W, g.N, prec, kernel, tm, tn,
                grid.x, grid.y, grid.z, smem);
  if (log.seen.insert(line).second) std::fprintf(log.out, "%s\n", line), std::fflush(log.out);
}

// The fp32 block tile. M <= 32: the narrowest one that holds all M rows (16x256, 32x128, 4x4
// shares), so that one row of tiles reads the B operand (the expensive im2col gather) once; on
// the H200 a 16x256 tile over M = 48 (three row tiles) made fire6's input gradient slower than
// 64x64 (5.9 against 4.4 ms), while M = 16 and 32 gained (fire2 squeeze 0.21 -> 0.11 ms).
// Larger M: 64x64; with SQUEEZE_IGEMM_WIDE=1, 8x8 shares: 64x256 where M is at most 64 or an
// odd multiple of 64 (192: three full row tiles rather than two of 128, the second half empty),
// else 128x128; a product with few columns (a weight gradient's N = C*R*S) keeps 64x64 rather
// than pad a wide tile.
struct Tile {
  int m, n;
};
// Without SQUEEZE_IGEMM_WIDE=1 (or wide): 64x64.
Tile wide_tile(int M, int N, bool wide = g_wide) {
  if (!wide) return {64, 64};
  if (M <= 64 || (M % 128 == 64)) return N >= 1024 ? Tile{64, 256} : Tile{64, 64};
  return N >= 128 ? Tile{128, 128} : Tile{64, 64};
}
Tile pick_tile(int M, int N) {
  if (M <= 16) return {16, 256};
  if (M <= 32) return {32, 128};
  return wide_tile(M, N);
}

template <bool kPrefetch, class Op>
void launch_fp32(const Op& op, int splits, int chunk, cudaStream_t s) {
  const Tile t = pick_tile(op.M, op.N);
  const dim3 grid((op.N + t.n - 1) / t.n, (op.M + t.m - 1) / t.m, splits);
  report_route(op, "fp32", "tile", t.m, t.n, grid, 0);
  if (t.m == 16)
    igemm_kernel<Op, 16, 256, kPrefetch><<<grid, kGemmThreads, 0, s>>>(op, chunk, g_square_warps);
  else if (t.m == 32)
    igemm_kernel<Op, 32, 128, kPrefetch><<<grid, kGemmThreads, 0, s>>>(op, chunk, g_square_warps);
  else if (t.m == 128)
    igemm_kernel<Op, 128, 128, kPrefetch><<<grid, kGemmThreads, 0, s>>>(op, chunk, g_square_warps);
  else if (t.n == 256)
    igemm_kernel<Op, 64, 256, kPrefetch><<<grid, kGemmThreads, 0, s>>>(op, chunk, g_square_warps);
  else
    igemm_kernel<Op, 64, 64, kPrefetch><<<grid, kGemmThreads, 0, s>>>(op, chunk, g_square_warps);
}

template <class Prec, bool kPrefetch, class Op>
void launch_tc_tile(const Op& op, int splits, int chunk, cudaStream_t s) {
  // 64x64, or the fp32 rule's wide tiles for every M (the warp grid is 4 x 2: no narrow tiles).
  const Tile t = wide_tile(op.M, op.N);
  const dim3 grid((op.N + t.n - 1) / t.n, (op.M + t.m - 1) / t.m, splits);
  report_route(op, prec_name<Prec>(), "WMMA tile", t.m, t.n, grid, 0);
  if (t.m == 128)
    igemm_tc_kernel<Op, Prec, kPrefetch, 128, 128><<<grid, kGemmThreads, 0, s>>>(op, chunk);
  else if (t.n == 256)
    igemm_tc_kernel<Op, Prec, kPrefetch, 64, 256><<<grid, kGemmThreads, 0, s>>>(op, chunk);
  else
    igemm_tc_kernel<Op, Prec, kPrefetch, 64, 64><<<grid, kGemmThreads, 0, s>>>(op, chunk);
}

// The dynamic shared memory a block of this GPU may have (bytes): 227 KB on sm_90, 163 KB on
// sm_80, 99 KB on sm_86 and sm_89, whose blocks run sm_80's code; less with SQUEEZE_SMEM_OPTIN
// (smem_optin_capped: an older GPU's routes on this one). The window and row kernels take only
// the products whose stages fit it (route); the mma kernel's stages fit 99 KB (MmaShape).
size_t smem_optin() {
  static const size_t n = [] {
    int dev = 0, bytes = 0;
    SQ_CUDA(cudaGetDevice(&dev));
    SQ_CUDA(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    return smem_optin_capped(size_t(bytes), std::getenv("SQUEEZE_SMEM_OPTIN"));
  }();
  return n;
}

// A kernel with its dynamic shared-memory limit raised to kBytes, or to what the GPU allows beside
// the kernel's static shared memory if less (the two together may not pass the GPU's limit: the
// mma kernel's keys are static): above 48 KB a kernel must ask, once (one GPU a process).
template <auto kKernel, size_t kBytes>
auto smem_limited() {
  static const bool asked = [] {
    cudaFuncAttributes attr;
    SQ_CUDA(cudaFuncGetAttributes(&attr, kKernel));
    const size_t bytes = std::min(kBytes, smem_optin() - attr.sharedSizeBytes);
    SQ_CUDA(cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
    return true;
  }();
  (void)asked;
  return kKernel;
}

// The mma kernel of one tile, its limit raised.
template <class Op, class Prec, int TM, int TN, int WM>
auto mma_kernel() {
  return smem_limited<igemm_mma_kernel<Op, Prec, TM, TN, WM>, MmaShape<Op, Prec, TM, TN, WM>::kSmemBytes>();
}

// v8's fp32 kernel (SQUEEZE_IGEMM_ASYNC=1) where the wide rule gives a product an 8x8-share tile;
// false where it keeps v4's tiles.
template <class Op>
bool launch_fp32_async(const Op& op, int splits, int chunk, cudaStream_t s) {
  const Tile t = wide_tile(op.M, op.N, true);
  if (op.M <= 32 || (t.m != 128 && t.n != 256)) return false;
  const dim3 grid((op.N + t.n - 1) / t.n, (op.M + t.m - 1) / t.m, splits);
  auto launch = [&](auto tm, auto tn) {
    constexpr int TM = decltype(tm)::value, TN = decltype(tn)::value;
    constexpr size_t bytes = AsyncShape<TM, TN>::kSmemBytes;
    report_route(op, "fp32", "async tile", TM, TN, grid, bytes);
    smem_limited<igemm_async_kernel<Op, TM, TN>, bytes>()<<<grid, kGemmThreads, bytes, s>>>(op, chunk);
  };
  if (t.m == 128)
    launch(std::integral_constant<int, 128>{}, std::integral_constant<int, 128>{});
  else
    launch(std::integral_constant<int, 64>{}, std::integral_constant<int, 256>{});
  return true;
}

// The mma kernel's tiles (rows, columns, warp rows), the one list that mma_tile (igemm_mma.cuh)
// picks from and prepare_conv_kernels readies.
template <class F>
void for_each_mma_tile(F f) {
  f(MmaTile<128, 64, 4>{});
  f(MmaTile<64, 64, 4>{});
  f(MmaTile<16, 128, 1>{});
  f(MmaTile<32, 128, 2>{});
  f(MmaTile<64, 128, 2>{});
  f(MmaTile<128, 128, 2>{});
}

// The dense products' copies through row pointers and their one-block 128 x 128 tile, unless
// SQUEEZE_IGEMM_DENSE=0 (every product's copies through keys and bounds, at most 128 x 64: the
// schedule before, for measuring both).
const bool g_dense = !env_is("SQUEEZE_IGEMM_DENSE", "0");

// Whether this GPU allows a block the one-block 128 x 128 tile's stages (kMmaWideSmem: sm_80 and
// sm_90, not sm_86 or sm_89).
bool mma_wide_fits() { return smem_optin() >= kMmaWideSmem; }

// The tile precision Prec runs for mma_tile's t: t itself, or for MmaTf32x3 (takes_tile) t's
// columns and warps with one 16-row fragment row a warp (128x64 -> 64x64, 64x128 -> 32x128).
template <class Prec>
Tile prec_tile(Tile t) {
  Tile r = t;
  for_each_mma_tile([&](auto tile) {
    using T = decltype(tile);
    if (Prec::kSplit && T::m == t.m && T::n == t.n) r.m = 16 * T::wm;
  });
  return r;
}

// The GPU's SMs.
int sm_count() {
  static const int n = [] {
    int dev = 0, sms = 0;
    SQ_CUDA(cudaGetDevice(&dev));
    SQ_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    return sms;
  }();
  return n;
}
// Blocks of the mma kernel resident on the GPU at once (two an SM: igemm_mma_kernel's launch
// bounds and about 100 KB of shared memory), the persistent launches' grid (MmaGrid); 0 with
// SQUEEZE_IGEMM_PERSIST=0, a block a tile everywhere (the schedule before, for measuring both).
int mma_resident() {
  static const int n = env_is("SQUEEZE_IGEMM_PERSIST", "0") ? 0 : 2 * sm_count();
  return n;
}

// The 3x3 stride-1 products (the expand 3x3's forward, input gradient and weight gradient) through
// the window kernels (igemm_win.cuh), and the first convolution's forward through the row kernel
// (igemm_rows.cuh), unless SQUEEZE_IGEMM_WIN=0 (the mma kernel's gathers, for measuring both).
const bool g_win = !env_is("SQUEEZE_IGEMM_WIN", "0");

// Every product in TF32 and BF16 through its wgmma kernel (igemm_wg*.cuh: the 1x1 and 3x3
// products, conv1's forward and weight gradient) where the code loaded for the GPU has it
// (sm_90a), unless SQUEEZE_IGEMM_WGMMA=0 (the mma, window and row kernels' mma.sync, for measuring
// both) or SQUEEZE_SMEM_OPTIN is set (an older GPU's routes, and older GPUs have no wgmma).
const bool g_wgmma = !env_is("SQUEEZE_IGEMM_WGMMA", "0") && !std::getenv("SQUEEZE_SMEM_OPTIN");
// (Whether they run, the switch and the GPU's code together: conv_uses_wgmma, below.)
template <class Op, bool kBf16, int TM>
auto wg_kernel() {
  return smem_limited<igemm_wg_kernel<Op, kBf16, TM>, WgShape<kBf16, TM>::kSmemBytes>();
}
template <bool kBf16, class Op>
void launch_wg(const Op& op, int splits, cudaStream_t s) {
  const int chunk = mma_chunk(op.Kd, splits);
  auto launch = [&](auto tm) {
    constexpr int TM = decltype(tm)::value;
    using Sh = WgShape<kBf16, TM>;
    const dim3 grid(unsigned((op.N + 127) / 128), unsigned((op.M + TM - 1) / TM), unsigned(splits));
    report_route(op, kBf16 ? "BF16" : "TF32", "wgmma", TM, 128, grid, Sh::kSmemBytes);
    wg_kernel<Op, kBf16, TM>()<<<grid, kWgThreads, Sh::kSmemBytes, s>>>(op, chunk);
  };
  if (op.M > 64)
    launch(std::integral_constant<int, 128>{});
  else
    launch(std::integral_constant<int, 64>{});
}

// The 3x3 window products' forward and input gradient in TF32 and BF16 through wgmma
// (igemm_wgwin.cuh), on the same switch and condition as the 1x1 products', where the caller gave
// scratch for A's rewritten taps (conv_forward's ws; conv_backward's plan) and the stages fit.
template <class Op, bool kBf16, int TM>
auto wgwin_kernel() {
  return smem_limited<igemm_wgwin_kernel<Op, kBf16, TM>, kWgWinSmem>();
}
template <class Op>
bool wgwin_takes(const Op& op, const float* taps) {
  return taps && conv_uses_wgmma() && wgwin_fits(op.g, std::min(kWgWinSmem, smem_optin()));
}
// A rewritten into taps (reorder_taps_kernel), then the kernel: 128-pixel by 128-row tiles (64
// where M is at most 64), a block a tile and split-K slice of whole 16-channel chunks.
template <bool kBf16, class Op>
void launch_wgwin(const Op& op, int splits, float* taps, cudaStream_t s) {
  const int channels = Win<Op>::channels(op);
  uint32_t* ar = reinterpret_cast<uint32_t*>(taps);
  const TapsOp top{Win<Op>::a(op), op.M, channels, kBf16, ar};
  reorder_taps_kernel<<<blocks_for(size_t(top.words())), kThreads, 0, s>>>(top);
  SQ_CUDA_LAUNCH("reorder_taps_kernel");
  const int slice_chunks = win_slice_chunks(channels, splits), ldw = wgwin_ld(op.g.W, kBf16);
  auto launch = [&](auto tm) {
    constexpr int TM = decltype(tm)::value;
    const size_t smem = wgwin_smem_bytes<kBf16, TM>(op.g.W);
    const dim3 grid(unsigned((op.N + 127) / 128), unsigned((op.M + TM - 1) / TM), unsigned(splits));
    report_route(op, kBf16 ? "BF16" : "TF32", "wgmma window", TM, 128, grid, smem);
    wgwin_kernel<Op, kBf16, TM>()<<<grid, kWgThreads, smem, s>>>(op, ar, ldw, slice_chunks);
  };
  if (op.M > 64)
    launch(std::integral_constant<int, 128>{});
  else
    launch(std::integral_constant<int, 64>{});
}

// The 3x3 weight gradients in TF32 and BF16 through wgmma (igemm_wgwinw.cuh), on the same switch
// and condition, where the stages fit: the window kernel's split-K slices (conv_backward's
// win_splits, the workspace sized for them), a block a tile and slice.
template <bool kBf16, int TN>
auto wgwinw_kernel() {
  return smem_limited<igemm_wgwinw_kernel<kBf16, TN>, kWgWinwSmem>();
}
bool wgwinw_takes(const WeightOp& op) {
  return conv_uses_wgmma() && wgwinw_fits(op.g, std::min(kWgWinwSmem, smem_optin()));
}
template <bool kBf16>
void launch_wgwinw(const WeightOp& op, int splits, cudaStream_t s) {
  const int tn = wgwinw_tile(op.M), rtiles = (9 * op.g.C + 127) / 128;
  const int tiles = rtiles * ((op.M + tn - 1) / tn), ldw = wgwinw_ld(op.g.W, kBf16);
  const int slice = winw_slice_pixels(op.Kd, splits);
  auto launch = [&](auto n) {
    constexpr int TN = decltype(n)::value;
    const size_t smem = wgwinw_smem_bytes<kBf16, TN>(op.g.W);
    report_route(op, kBf16 ? "BF16" : "TF32", "wgmma window", TN, 128, dim3(tiles, 1, splits), smem);
    wgwinw_kernel<kBf16, TN>()<<<dim3(tiles, 1, splits), kWgThreads, smem, s>>>(op, ldw, slice);
  };
  if (tn == 128)
    launch(std::integral_constant<int, 128>{});
  else
    launch(std::integral_constant<int, 64>{});
}

// The plain 1x1 weight gradients in TF32 and BF16 through wgmma (igemm_wgw.cuh), on the same
// switch and condition as their forward and input gradient: the mma kernel's split-K slices
// (weight_splits, mma_chunk), a block a tile and slice.
template <bool kBf16, int TN, bool kXRows>
auto wgw_kernel() {
  return smem_limited<igemm_wgw_kernel<kBf16, TN, kXRows>, WgwShape<kBf16, TN>::kSmemBytes>();
}
template <bool kBf16>
void launch_wgw(const WeightOp& op, int splits, cudaStream_t s) {
  const int chunk = mma_chunk(op.Kd, splits);
  const bool xrows = wgw_x_rows(op);
  const int rcount = xrows ? op.N : op.M, qcount = xrows ? op.M : op.N;
  auto launch = [&](auto n, auto x) {
    constexpr int TN = decltype(n)::value;
    constexpr bool kX = decltype(x)::value;
    using Sh = WgwShape<kBf16, TN>;
    const dim3 grid(unsigned((rcount + 127) / 128), unsigned((qcount + TN - 1) / TN), unsigned(splits));
    // (the route log names the tile as dW's: filters by channels)
    report_route(op, kBf16 ? "BF16" : "TF32", kX ? "wgmma (x as registers)" : "wgmma (dz as registers)",
                 kX ? TN : 128, kX ? 128 : TN, grid, Sh::kSmemBytes);
    wgw_kernel<kBf16, TN, kX>()<<<grid, kWgThreads, Sh::kSmemBytes, s>>>(op, chunk);
  };
  using T = std::true_type;
  using F = std::false_type;
  if (wgw_tile(op) == 128)
    xrows ? launch(std::integral_constant<int, 128>{}, T{}) : launch(std::integral_constant<int, 128>{}, F{});
  else
    xrows ? launch(std::integral_constant<int, 64>{}, T{}) : launch(std::integral_constant<int, 64>{}, F{});
}

// The window kernel of one tile (igemm_win.cuh's for_each_win_tile), its limit raised to kWinSmem.
template <class Op, class Prec, int TM, int TN, int WM>
auto win_kernel() {
  return smem_limited<igemm_win_kernel<Op, Prec, TM, TN, WM>, kWinSmem>();
}

// Blocks persistent over all of a product's tiles in one slice (mma_grid at any depth); split-K
// slices (the input gradient at small images: data_splits) of whole chunks, a block a tile.
template <class Prec, class Op>
void launch_win(const Op& op, int splits, cudaStream_t s) {
  const WinTile t = Prec::kSplit ? WinTile{16, 256} : win_tile(op.M);  // (takes_tile)
  const MmaGrid mg = mma_grid(op.M, op.N, t.m, t.n, false, 0, splits, mma_resident());
  const int slice_chunks = win_slice_chunks(Win<Op>::channels(op), splits);
  bool launched = false;
  for_each_win_tile([&](auto tile) {
    using T = decltype(tile);
    if constexpr (takes_tile<Prec>(T::m, T::wm)) {
      if (T::m != t.m || T::n != t.n) return;
      auto* kernel = win_kernel<Op, Prec, T::m, T::n, T::wm>();
      const int ldw = win_ld(T::n, op.g.W, Prec::K == 16);
      const size_t smem = win_smem_bytes<Prec, T::m, T::n, T::wm>(op.g.W);
      report_route(op, prec_name<Prec>(), "window", T::m, T::n, dim3(mg.blocks, 1, splits), smem);
      kernel<<<dim3(mg.blocks, 1, splits), kGemmThreads, smem, s>>>(op, ldw, mma_vec(op), mg.tiles, slice_chunks);
      launched = true;
    }
  });
  SQ_ASSERT(launched, "no window kernel for its tile");
}

// The window kernel of the weight gradient (igemm_win.cuh, igemm_winw_kernel), its limit raised.
template <class Prec, int TM>
auto winw_kernel() {
  return smem_limited<igemm_winw_kernel<Prec, TM>, kWinSmem>();
}

// A block a tile and split-K slice (weight_splits' slices, rounded to whole chunks of pixels).
template <class Prec>
void launch_winw(const WeightOp& op, int splits, cudaStream_t s) {
  const int tm = Prec::kSplit ? 64 : winw_tile(op.M), tiles = (op.M + tm - 1) / tm * (op.g.C / kWinC);
  const int ldw = winw_ld(op.g.W), slice = winw_slice_pixels(op.Kd, splits);
  bool launched = false;
  for_each_winw_tile([&](auto t) {
    constexpr int TM = decltype(t)::value;
    if constexpr (takes_tile<Prec>(TM, WinWShape<Prec, TM>::WM)) {
      if (TM != tm) return;
      const size_t smem = winw_smem_bytes<Prec, TM>(op.g.W);
      report_route(op, prec_name<Prec>(), "window", TM, 16 * 9, dim3(tiles, 1, splits), smem);
      winw_kernel<Prec, TM>()<<<dim3(tiles, 1, splits), kGemmThreads, smem, s>>>(op, ldw, slice);
      launched = true;
    }
  });
  SQ_ASSERT(launched, "no weight-gradient window kernel for its tile");
}

// The row kernel (igemm_rows.cuh: the first convolution's forward), its limit raised.
template <class Prec, int FM>
auto rows_kernel() {
  return smem_limited<igemm_rows_kernel<Prec, FM>, kRowsSmem>();
}
template <class F>
void for_each_rows_fm(F f) {
  f(std::integral_constant<int, 1>{});
  f(std::integral_constant<int, 2>{});
  f(std::integral_constant<int, 3>{});
}

// Blocks persistent over the tiles (as many as the GPU holds, or a block a tile with
// SQUEEZE_IGEMM_PERSIST=0).
template <class Prec>
void launch_rows(const FwdOp& op, cudaStream_t s) {
  const int fm = rows_fm(op.M), tiles = rows_tiles(op.g), resident = mma_resident();
  const int blocks = resident > 0 ? std::min(tiles, resident) : tiles;
  const RowsLayout l = rows_layout(op.g, Prec::K == 16);
  for_each_rows_fm([&](auto f) {
    constexpr int FM = decltype(f)::value;
    if (FM != fm) return;
    const size_t smem = rows_smem_bytes<Prec, FM>(op.g);
    report_route(op, prec_name<Prec>(), "row", 32 * FM, kRowsTN, dim3(blocks), smem);
    rows_kernel<Prec, FM>()<<<blocks, kGemmThreads, smem, s>>>(op, l);
  });
}

// The first convolution's forward in TF32 and BF16 through wgmma (igemm_wgrows.cuh), on the same
// switch and condition as the other wgmma kernels, where the row kernel takes it and the stages
// fit: 64 or 96 filters, blocks persistent over the output rows as the row kernel's.
template <bool kBf16, int TN>
auto wgrows_kernel() {
  return smem_limited<igemm_wgrows_kernel<kBf16, TN>, kWgRowsSmem>();
}
bool wgrows_takes(const FwdOp& op) {
  return conv_uses_wgmma() && wgrows_fits(op, std::min(kWgRowsSmem, smem_optin()));
}
template <bool kBf16>
void launch_wgrows(const FwdOp& op, cudaStream_t s) {
  const int tiles = wgrows_tiles(op.g), resident = mma_resident();
  const int blocks = resident > 0 ? std::min(tiles, resident) : tiles;
  auto launch = [&](auto n) {
    constexpr int TN = decltype(n)::value;
    const WgRowsLayout l = wgrows_layout(op.g, TN, kBf16);
    const size_t smem = wgrows_smem_bytes<kBf16, TN>(op.g);
    report_route(op, kBf16 ? "BF16" : "TF32", "wgmma row", TN, kWgRowsQ, dim3(blocks), smem);
    wgrows_kernel<kBf16, TN>()<<<blocks, kWgThreads, smem, s>>>(op, l);
  };
  if (wgrows_tn(op.M) == 96)
    launch(std::integral_constant<int, 96>{});
  else
    launch(std::integral_constant<int, 64>{});
}

// The first convolution's weight gradient in TF32 and BF16 through wgmma (igemm_wgrowsw.cuh; BF16
// as TF32 products of BF16-rounded operands), on the same switch and condition, where the row
// kernel takes it, dz's rows are 16-byte aligned but for the pixel offset and the stages fit: all
// filters (64 or 96) by the taps in 1 to 3 warpgroups of 64, a block a split-K slice
// (wgrowsw_slices: as many as the GPU holds at once).
template <int TN, int WG, bool kBf16>
auto wgrowsw_kernel() {
  return smem_limited<igemm_wgrowsw_kernel<TN, WG, kBf16>, kWgRowswSmem>();
}
bool wgrowsw_takes(const WeightOp& op) {
  return conv_uses_wgmma() && wgrowsw_fits(op, std::min(kWgRowswSmem, smem_optin()));
}
template <class F>
void for_each_wgrowsw_tile(F f) {
  f(std::integral_constant<int, 64>{}, std::integral_constant<int, 1>{});
  f(std::integral_constant<int, 64>{}, std::integral_constant<int, 2>{});
  f(std::integral_constant<int, 64>{}, std::integral_constant<int, 3>{});
  f(std::integral_constant<int, 96>{}, std::integral_constant<int, 1>{});
  f(std::integral_constant<int, 96>{}, std::integral_constant<int, 2>{});
  f(std::integral_constant<int, 96>{}, std::integral_constant<int, 3>{});
}
// Its blocks resident on the GPU at once, by their shared memory, registers and threads: 1 an SM
// for conv1 of squeezenet1.0 (three warpgroups, 137 KB), 2 for 1.1's (one warpgroup, 105 KB),
// where a slice an SM would leave 4 warps an SM to hide dz's latency. 0 where its stages do not
// fit the GPU's block (no sm_90a code then either). Asked once for each kernel and size (the
// workspace's planning asks first, before any graph capture).
int wgrowsw_resident(const Geo& g, int M, bool bf16) {
  static std::map<std::tuple<int, int, bool, size_t>, int> known;
  const int tn = wgrowsw_tn(M), wg = wgrowsw_wg(g);
  int blocks = 0;
  for_each_wgrowsw_tile([&](auto n, auto w) {
    constexpr int TN = decltype(n)::value, WG = decltype(w)::value;
    const size_t smem = wgrowsw_smem_bytes<TN>(g);
    if (TN != tn || WG != wg || smem > std::min(kWgRowswSmem, smem_optin())) return;
    const auto key = std::make_tuple(TN, WG, bf16, smem);
    const auto it = known.find(key);
    if (it != known.end()) {
      blocks = it->second;
      return;
    }
    const auto kernel = bf16 ? wgrowsw_kernel<TN, WG, true>() : wgrowsw_kernel<TN, WG, false>();
    SQ_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, 128 * WG, smem));
    known.emplace(key, blocks);
  });
  return blocks * sm_count();
}
// The row kernel's weight-gradient blocks: as many as resident, or two waves' worth of a 132-SM GPU
// with SQUEEZE_IGEMM_PERSIST=0.
int rowsw_resident() { return mma_resident() > 0 ? mma_resident() : 264; }
// The first convolution's weight-gradient slices (route kRows: TF32 or BF16): the wgmma kernel's
// where it takes the product, else the row kernel's.
int rows_weight_slices(const WeightOp& op) {
  if (wgrowsw_takes(op)) return wgrowsw_slices(op.g, wgrowsw_resident(op.g, op.M, g_math == ConvMath::kBf16));
  return rowsw_slices(op.g, rowsw_resident());
}
template <bool kBf16>
void launch_wgrowsw(const WeightOp& op, int splits, cudaStream_t s) {
  const int tn = wgrowsw_tn(op.M), wg = wgrowsw_wg(op.g);
  for_each_wgrowsw_tile([&](auto n, auto w) {
    constexpr int TN = decltype(n)::value, WG = decltype(w)::value;
    if (TN != tn || WG != wg) return;
    const WgRowswLayout l = wgrowsw_layout(op.g, TN);
    const size_t smem = wgrowsw_smem_bytes<TN>(op.g);
    // (the route log names the tile as dW's: filters by taps)
    report_route(op, kBf16 ? "BF16" : "TF32", "wgmma row", TN, 64 * WG, dim3(splits), smem);
    wgrowsw_kernel<TN, WG, kBf16>()<<<splits, 128 * WG, smem, s>>>(op, l);
  });
}

// The row kernel's weight gradient, its limit raised; its tiles (fragments of filters and of taps).
template <class Prec, int FM, int FN>
auto rowsw_kernel() {
  return smem_limited<igemm_rowsw_kernel<Prec, FM, FN>, kRowsSmem>();
}
template <class F>
void for_each_rowsw_tile(F f) {
  for_each_rows_fm([&](auto fn) {  // (FN: 1 to 3, as FM's list)
    f(std::integral_constant<int, 2>{}, fn);
    f(std::integral_constant<int, 3>{}, fn);
  });
}
// Blocks (split-K slice, filter tile): `splits` slices of output rows (rowsw_slices).
template <class Prec>
void launch_rowsw(const WeightOp& op, int splits, cudaStream_t s) {
  const int fm = rowsw_fm(op.M), fn = rowsw_fn(op.g), mtiles = rowsw_mtiles(op.M);
  for_each_rowsw_tile([&](auto m, auto n) {
    constexpr int FM = decltype(m)::value, FN = decltype(n)::value;
    if (FM != fm || FN != fn) return;
    const RowswLayout l = rowsw_layout(op.g, 16 * FM, Prec::K == 16);
    const size_t smem = rowsw_smem_bytes<Prec, FM, FN>(op.g);
    report_route(op, prec_name<Prec>(), "row", 16 * FM, 64 * FN, dim3(splits, mtiles), smem);
    rowsw_kernel<Prec, FM, FN>()<<<dim3(splits, mtiles), kGemmThreads, smem, s>>>(op, l);
  });
}

// Which tensor-core kernel takes a product: the row kernels (the first convolution's forward and
// weight gradient), the window kernels (3x3 stride 1), else the mma kernel's gathers. The one
// choice that launch_mma follows and conv_backward sizes the weight gradient's slices by.
enum class Route { kMma, kWin, kRows };
template <class Op>
Route route(const Op& op) {
  if (!g_win) return Route::kMma;
  if constexpr (!std::is_same_v<Op, DataOp>) {
    if (g_math != ConvMath::kFp32 && rows_fits(op, std::min(kRowsSmem, smem_optin())))  // (not MmaTf32x3)
      return Route::kRows;
  }
  return win_fits(op, std::min(kWinSmem, smem_optin())) ? Route::kWin : Route::kMma;
}

// taps: null, or scratch for the wgmma window kernel's rewritten A (its M x 9 x channels words).
template <class Prec, class Op>
void launch_mma(const Op& op, int splits, cudaStream_t s, float* taps = nullptr) {
  const Route r = route(op);
  if constexpr (Prec::kRowKernels) {
    if (r == Route::kRows) {  // (never the input gradient)
      if constexpr (std::is_same_v<Op, FwdOp>) {
        if constexpr (std::is_same_v<Prec, MmaTf32> || std::is_same_v<Prec, MmaBf16>) {
          if (wgrows_takes(op)) return launch_wgrows<std::is_same_v<Prec, MmaBf16>>(op, s);
        }
        return launch_rows<Prec>(op, s);
      }
      if constexpr (std::is_same_v<Op, WeightOp>) {
        if constexpr (std::is_same_v<Prec, MmaTf32> || std::is_same_v<Prec, MmaBf16>) {
          if (wgrowsw_takes(op)) return launch_wgrowsw<std::is_same_v<Prec, MmaBf16>>(op, splits, s);
        }
        return launch_rowsw<Prec>(op, splits, s);
      }
    }
  }
  if (r == Route::kWin) {
    if constexpr (Op::kBAlongK) {
      if constexpr (std::is_same_v<Prec, MmaTf32> || std::is_same_v<Prec, MmaBf16>) {
        if (wgwinw_takes(op)) return launch_wgwinw<std::is_same_v<Prec, MmaBf16>>(op, splits, s);
      }
      return launch_winw<Prec>(op, splits, s);
    } else {
      if constexpr (std::is_same_v<Prec, MmaTf32> || std::is_same_v<Prec, MmaBf16>) {
        if (wgwin_takes(op, taps)) return launch_wgwin<std::is_same_v<Prec, MmaBf16>>(op, splits, taps, s);
      }
      return launch_win<Prec>(op, splits, s);
    }
  }
  MmaVec vec = mma_vec(op);
  vec.dense = vec.dense && g_dense;
  if constexpr (std::is_same_v<Prec, MmaTf32> || std::is_same_v<Prec, MmaBf16>) {
    if (vec.dense && conv_uses_wgmma()) {
      if constexpr (Op::kBAlongK)
        return launch_wgw<std::is_same_v<Prec, MmaBf16>>(op, splits, s);
      else
        return launch_wg<std::is_same_v<Prec, MmaBf16>>(op, splits, s);
    }
  }
  const MmaTileSize picked = mma_tile(op.M, op.N, op.Kd, Op::kBAlongK, vec.dense, mma_wide_fits());
  const Tile t = prec_tile<Prec>(Tile{picked.m, picked.n});
  const int chunk = mma_chunk(op.Kd, splits);
  const int resident = mma_resident() / 2 * mma_blocks_per_sm(t.m, t.n);  // (mma_resident: two an SM)
  const MmaGrid mg = mma_grid(op.M, op.N, t.m, t.n, Op::kBAlongK, chunk, splits, resident);
  bool launched = false;
  for_each_mma_tile([&](auto tile) {
    using T = decltype(tile);
    if constexpr (takes_tile<Prec>(T::m, T::wm)) {
      if (T::m != t.m || T::n != t.n) return;
      using Sh = MmaShape<Op, Prec, T::m, T::n, T::wm>;
      auto* kernel = mma_kernel<Op, Prec, T::m, T::n, T::wm>();
      report_route(op, prec_name<Prec>(), "mma", T::m, T::n, dim3(mg.blocks, 1, splits), Sh::kSmemBytes);
      kernel<<<dim3(mg.blocks, 1, splits), kGemmThreads, Sh::kSmemBytes, s>>>(op, chunk, vec, mg.tiles);
      launched = true;
    }
  });
  SQ_ASSERT(launched, "no mma kernel for its tile");
}

template <bool kPrefetch, class Op>
void launch_tc(const Op& op, int splits, int chunk, cudaStream_t s) {
  if (g_math == ConvMath::kTf32)
    launch_tc_tile<Tf32, kPrefetch>(op, splits, chunk, s);
  else
    launch_tc_tile<Bf16, kPrefetch>(op, splits, chunk, s);
}

// Whether the products go through the mma kernel: TF32 and BF16 unless SQUEEZE_IGEMM_MMA=0, fp32
// with SQUEEZE_IGEMM_3XTF32=1.
bool mma_path() {
  return g_mma && (g_math == ConvMath::kTf32 || g_math == ConvMath::kBf16 || g_3xtf32);
}

template <class Op>
void launch_igemm(const Op& op, int splits, cudaStream_t s, const char* what, float* taps = nullptr) {
  if (op.M == 0 || op.N == 0) return;
  if (!fits_int32(op.g))
    fail(what, ": a tensor of 2^31 or more elements (batch ", op.g.N, "); use a smaller batch per GPU");
  if (!keys_fit(op.g))
    fail(what, ": a ", op.g.R, "x", op.g.S, " filter; the GPU kernels take filters of at most 15x15 taps");
  const int chunk = (op.Kd + splits - 1) / splits;
  const bool mma = mma_path();
  if (mma && g_math == ConvMath::kTf32) {
    launch_mma<MmaTf32>(op, splits, s, taps);
  } else if (mma && g_math == ConvMath::kBf16) {
    launch_mma<MmaBf16>(op, splits, s, taps);
  } else if (mma) {
    launch_mma<MmaTf32x3>(op, splits, s);
  } else if (g_math == ConvMath::kTf32 || g_math == ConvMath::kBf16) {
    if (g_prefetch)
      launch_tc<true>(op, splits, chunk, s);
    else
      launch_tc<false>(op, splits, chunk, s);
  } else if (!(g_async && launch_fp32_async(op, splits, chunk, s))) {
    if (g_prefetch)
      launch_fp32<true>(op, splits, chunk, s);
    else
      launch_fp32<false>(op, splits, chunk, s);
  }
  SQ_CUDA_LAUNCH(what);
}

// Chunks per row of the bias gradient: about 2048 blocks in all, chunks of at least 8192.
int bias_chunks(int K, long long npq) {
  return int(std::max<long long>(1, std::min<long long>(npq / 8192, 2048 / K)));
}

// A product's blocks should fill about two waves of a 132-SM GPU (two blocks an SM); below that,
// split-K slices make up the rest. Small images are the case: the Fashion-MNIST configuration's
// Fire modules at 7x7 and 3x3 (6,272 and 1,152 pixels at batch 128), where fire9's input
// gradient of the expand 3x3 had 9 to 18 blocks, each 2,304 deep, and its backward took as long
// as fire8's with 5x the work (run c, docs/KERNELS.md).
constexpr long long kFillBlocks = 256;

// Split-K factor of the weight gradient: about 1024 blocks (several waves on a 132-SM GPU) and
// slices of at least 1024 pixels. The weight gradients are small (K x C*R*S) and their reduction
// deep (N*P*Q, 373,248 for fire2 at batch 128), so most of the parallelism must come from k.
// Where that leaves fewer than kFillBlocks blocks, slices down to 128 pixels: every weight gradient
// of the Fashion-MNIST configuration, and at 224² those of the 1x1 products at 27² and 13² (84 to
// 182 blocks before: fire5's squeeze 91 -> 128 slices, fire9's expand 1x1 21 -> 64).
int weight_splits(const Geo& g) {
  const Tile t = pick_tile(g.K, g.C * g.R * g.S);
  const long long tiles = (long long)((g.K + t.m - 1) / t.m) * ((g.C * g.R * g.S + t.n - 1) / t.n);
  const long long kd = (long long)g.N * g.P * g.Q;
  long long z = std::min<long long>(256, std::max<long long>(1, kd / 1024));
  z = std::min<long long>(z, std::max<long long>(1, 1024 / tiles));
  if (tiles * z < kFillBlocks)
    z = std::max(z, std::min<long long>({256, kd / 128, (kFillBlocks + tiles - 1) / tiles}));
  return int(z);
}

// Split-K factor of the input gradient (C x N*H*W, K*R*S deep): 1 where its 64x64 tiles reach
// kFillBlocks (every convolution at 224²: N*H*W >= 21,632), else slices of at least 256 (8 of
// the mma kernel's k-steps) up to that many blocks, at most 16. By 64x64 tiles whatever the
// kernel, so that the workspace, sized once, holds the slices of every precision's kernel.
int data_splits(const Geo& g) {
  const long long m = g.C, n = (long long)g.N * g.H * g.W, kd = (long long)g.K * g.R * g.S;
  const long long tiles = ((m + 63) / 64) * ((n + 63) / 64);
  if (tiles >= kFillBlocks) return 1;
  return int(std::max<long long>(1, std::min<long long>({16, kd / 256, (kFillBlocks + tiles - 1) / tiles})));
}

ConvImpl g_impl = ConvImpl::kOwn;

}  // namespace

void set_conv_impl(ConvImpl impl) {
  if (impl == ConvImpl::kCudnn && !cudnn_built())
    fail("--conv cudnn: this squeeze was built without cuDNN (CMake found no cudnn.h)");
  g_impl = impl;
}
ConvImpl conv_impl() { return g_impl; }
void set_conv_math(ConvMath m) { g_math = m; }
void log_conv_routes(FILE* f) {
  route_log() = RouteLog{f, {}};
}
size_t conv_smem_limit() { return smem_optin(); }
// (wgmma_available asks the GPU once; prepare_conv_kernels asks first, before any graph capture.)
bool conv_uses_wgmma() { return g_wgmma && wgmma_available(); }

void prepare_conv_kernels() {
  if (!g_mma) return;
  mma_resident(), smem_optin();  // (their device queries, too, before any graph capture)
  if (conv_uses_wgmma()) {
    wg_kernel<FwdOp, false, 64>(), wg_kernel<FwdOp, false, 128>();
    wg_kernel<DataOp, false, 64>(), wg_kernel<DataOp, false, 128>();
    wg_kernel<FwdOp, true, 64>(), wg_kernel<FwdOp, true, 128>();
    wg_kernel<DataOp, true, 64>(), wg_kernel<DataOp, true, 128>();
    wgwin_kernel<FwdOp, false, 64>(), wgwin_kernel<FwdOp, false, 128>();
    wgwin_kernel<DataOp, false, 64>(), wgwin_kernel<DataOp, false, 128>();
    wgwin_kernel<FwdOp, true, 64>(), wgwin_kernel<FwdOp, true, 128>();
    wgwin_kernel<DataOp, true, 64>(), wgwin_kernel<DataOp, true, 128>();
    wgwinw_kernel<false, 64>(), wgwinw_kernel<false, 128>(), wgwinw_kernel<true, 64>(), wgwinw_kernel<true, 128>();
    wgw_kernel<false, 64, false>(), wgw_kernel<false, 128, false>(), wgw_kernel<true, 64, false>();
    wgw_kernel<true, 128, false>(), wgw_kernel<false, 64, true>(), wgw_kernel<false, 128, true>();
    wgw_kernel<true, 64, true>(), wgw_kernel<true, 128, true>();
    wgrows_kernel<false, 64>(), wgrows_kernel<false, 96>(), wgrows_kernel<true, 64>(), wgrows_kernel<true, 96>();
    for_each_wgrowsw_tile([](auto n, auto w) {
      wgrowsw_kernel<decltype(n)::value, decltype(w)::value, false>();
      wgrowsw_kernel<decltype(n)::value, decltype(w)::value, true>();
    });
  }
  for_each_mma_tile([](auto tile) {
    using T = decltype(tile);
    mma_kernel<FwdOp, MmaTf32, T::m, T::n, T::wm>();
    mma_kernel<DataOp, MmaTf32, T::m, T::n, T::wm>();
    mma_kernel<WeightOp, MmaTf32, T::m, T::n, T::wm>();
    mma_kernel<FwdOp, MmaBf16, T::m, T::n, T::wm>();
    mma_kernel<DataOp, MmaBf16, T::m, T::n, T::wm>();
    mma_kernel<WeightOp, MmaBf16, T::m, T::n, T::wm>();
    if constexpr (takes_tile<MmaTf32x3>(T::m, T::wm)) {
      if (g_3xtf32) {
        mma_kernel<FwdOp, MmaTf32x3, T::m, T::n, T::wm>();
        mma_kernel<DataOp, MmaTf32x3, T::m, T::n, T::wm>();
        mma_kernel<WeightOp, MmaTf32x3, T::m, T::n, T::wm>();
      }
    }
  });
  for_each_win_tile([](auto tile) {
    using T = decltype(tile);
    win_kernel<FwdOp, MmaTf32, T::m, T::n, T::wm>();
    win_kernel<DataOp, MmaTf32, T::m, T::n, T::wm>();
    win_kernel<FwdOp, MmaBf16, T::m, T::n, T::wm>();
    win_kernel<DataOp, MmaBf16, T::m, T::n, T::wm>();
    if constexpr (takes_tile<MmaTf32x3>(T::m, T::wm)) {
      if (g_3xtf32) {
        win_kernel<FwdOp, MmaTf32x3, T::m, T::n, T::wm>();
        win_kernel<DataOp, MmaTf32x3, T::m, T::n, T::wm>();
      }
    }
  });
  for_each_winw_tile([](auto t) {
    winw_kernel<MmaTf32, decltype(t)::value>();
    winw_kernel<MmaBf16, decltype(t)::value>();
    constexpr int TM = decltype(t)::value;
    if constexpr (takes_tile<MmaTf32x3>(TM, WinWShape<MmaTf32x3, TM>::WM)) {
      if (g_3xtf32) winw_kernel<MmaTf32x3, TM>();
    }
  });
  for_each_rows_fm([](auto f) {
    rows_kernel<MmaTf32, decltype(f)::value>();
    rows_kernel<MmaBf16, decltype(f)::value>();
  });
  for_each_rowsw_tile([](auto m, auto n) {
    rowsw_kernel<MmaTf32, decltype(m)::value, decltype(n)::value>();
    rowsw_kernel<MmaBf16, decltype(m)::value, decltype(n)::value>();
  });
}
ConvMath conv_math() { return g_math; }

// The 3x3 stride-1 products' scratch for A's rewritten taps (the wgmma window kernel): w's size.
template <class G>
bool window_geometry(const G& g) {
  return g.R == 3 && g.S == 3 && g.stride == 1 && g.pad == 1;
}
size_t conv_forward_workspace(const ConvGeom& g) {
  return window_geometry(g) ? size_t(g.K) * g.C * g.R * g.S : 0;
}

void conv_forward(const ConvGeom& cg, const float* x, const float* w, const float* b, float* y,
                  bool relu, cudaStream_t s, float* ws) {
  if (cg.N == 0) return;
  if (g_impl == ConvImpl::kCudnn) return cudnn_conv_forward(cg, x, w, b, y, relu, s);
  const Geo g = geo_of(cg);
  FwdOp op{g, x, w, b, y, relu, g.K, g.N * g.P * g.Q, g.C * g.R * g.S};
  launch_igemm(op, 1, s, "conv_forward", window_geometry(cg) ? ws : nullptr);
}

// A convolution backward's split-K factors and scratch, sized for every precision:
//   [0, wt): the weight gradient's slices and bias partials (a row of dz's sums per slice through
//     the mma kernel, else per chunk of bias_partial_kernel); once those are summed, the input
//     gradient's split-K slices (none for one slice) in the same space;
//   [wt, end): w transposed, written while the weight slices are summed (the same launch), so
//     apart from them, and at a multiple of 4 floats (16 bytes: the mma kernel's copies of A).
//   The weight gradient's slices: `splits`, or `win_splits` through the window kernel (TF32/BF16
//   where win_fits), or up to 256 through the row kernel (rowsw_slices), the space for the larger.
//   [taps, end), 3x3 stride-1 products only: wt rewritten for the wgmma window kernel
//   (reorder_taps_kernel), read by the input gradient beside its slices.
constexpr int kWinwFill = 512;  // the window kernel's weight-gradient blocks: two waves, two an SM
struct BackwardPlan {
  int splits, win_splits, dsplits;
  size_t wt, taps, end;
};
BackwardPlan backward_plan(const Geo& g) {
  BackwardPlan b;
  b.splits = weight_splits(g), b.dsplits = data_splits(g);
  b.win_splits = winw_geometry_fits(g) ? winw_splits(g, kWinwFill) : b.splits;
  const bool rows = rows_fits(WeightOp{g, nullptr, nullptr, nullptr, g.K, g.C * g.R * g.S, g.N * g.P * g.Q});
  const int wgrows = rows && conv_uses_wgmma() && wgrowsw_geometry_fits(g, g.K)
                         ? wgrowsw_slices(g, std::max(wgrowsw_resident(g, g.K, false), wgrowsw_resident(g, g.K, true)))
                         : 0;
  const int most = std::max({b.splits, b.win_splits, rows ? kRowswSlices : 0, wgrows});
  const size_t kcrs = size_t(g.K) * g.C * g.R * g.S;
  const size_t weights =
      size_t(most) * kcrs + size_t(g.K) * std::max(most, bias_chunks(g.K, (long long)g.N * g.P * g.Q));
  const size_t data = b.dsplits > 1 ? size_t(b.dsplits) * g.C * g.N * g.H * g.W : 0;
  b.wt = (std::max(weights, data) + 3) / 4 * 4;
  b.taps = b.wt + (kcrs + 3) / 4 * 4;
  b.end = b.taps + (window_geometry(g) ? kcrs : 0);
  return b;
}

size_t conv_backward_workspace(const ConvGeom& cg) {
  return cg.N == 0 ? 0 : backward_plan(geo_of(cg)).end;
}

void conv_backward(const ConvGeom& cg, const float* x, const float* w, const float* dz, float* dw,
                   float* db, float* dx, bool accumulate, float* ws, cudaStream_t s, bool relu_x) {
  if (cg.N == 0) return;
  if (g_impl == ConvImpl::kCudnn) {
    cudnn_conv_backward(cg, x, w, dz, dw, db, dx, accumulate, s);
    if (dx && relu_x) relu_backward(dx, x, dx, size_t(cg.C) * cg.N * cg.H * cg.W, s);
    return;
  }
  const Geo g = geo_of(cg);
  const int npq = g.N * g.P * g.Q, crs = g.C * g.R * g.S;
  const BackwardPlan plan = backward_plan(g);
  WeightOp wop{g, x, dz, ws, g.K, crs, npq};
  const Route r = mma_path() ? route(wop) : Route::kMma;  // (launch_mma follows the same route)
  const int splits = r == Route::kWin    ? plan.win_splits
                     : r == Route::kRows ? rows_weight_slices(wop)
                                         : plan.splits;
  const size_t mn = size_t(g.K) * crs;
  // The bias gradient: in the mma kernel, as dz's row sums (2 launches and a pass over dz fewer),
  // summed with the weight gradient's slices; else in two passes of its own.
  const bool fold_bias = db && mma_path();
  if (fold_bias) wop.rows = ws + size_t(splits) * mn;
  launch_igemm(wop, splits, s, "conv_backward (weights)");
  // The slices' sum, the folded bias's, and w transposed for the input gradient: one launch.
  float* wt = dx ? ws + plan.wt : nullptr;
  WeightSums sums{ws, splits, g.K, g.C, g.R * g.S, dw};
  if (fold_bias) sums.rows = wop.rows, sums.db = db;
  if (wt) sums.w = w, sums.wt = wt;
  splitk_reduce_kernel<<<blocks_for(sums.count()), kThreads, 0, s>>>(sums);
  SQ_CUDA_LAUNCH("conv_backward (split-K sum)");
  if (db && !fold_bias) {
    const int chunks = bias_chunks(g.K, npq);
    const size_t chunk = (size_t(npq) + chunks - 1) / chunks;
    float* partial = ws + size_t(splits) * mn;
    bias_partial_kernel<<<dim3(g.K, chunks), kThreads, 0, s>>>(dz, size_t(npq), chunk, partial);
    SQ_CUDA_LAUNCH("conv_backward (bias partial sums)");
    bias_finish_kernel<<<blocks_for(size_t(g.K)), kThreads, 0, s>>>(partial, g.K, chunks, db);
    SQ_CUDA_LAUNCH("conv_backward (bias)");
  }
  if (dx) {
    // The weight gradient's slices and bias partials are summed by now: their space takes the
    // input gradient's slices.
    const int dsplits = plan.dsplits;
    DataOp dop{g, wt, dz, dx, accumulate, g.C, g.N * g.H * g.W, g.K * g.R * g.S, relu_x ? x : nullptr};
    if (dsplits > 1) dop.partial = ws;
    launch_igemm(dop, dsplits, s, "conv_backward (data)", plan.end > plan.taps ? ws + plan.taps : nullptr);
    if (dsplits > 1) {
      data_splitk_reduce_kernel<<<blocks_for(size_t(dop.M) * dop.N), kThreads, 0, s>>>(dop, dsplits);
      SQ_CUDA_LAUNCH("conv_backward (data split-K sum)");
    }
  }
}

}  // namespace cuda
}  // namespace sq
