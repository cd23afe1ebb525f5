#!/usr/bin/env bash
# Run HERE (a Debian machine with internet and the CUDA toolkit) before using the lent GPU
# machine, which has nvcc, cmake and ninja but no BLAS, GoogleTest, JSON, CLI11, MPI or data set,
# and no internet. It fills the git-ignored .device/ (about 46 MB; name `.device` in the device
# tool's `carry`), which scripts/gpu_check.sh uses there:
#   .device/debs  Debian packages: OpenBLAS, Open MPI's run time (relocated there by OPAL_PREFIX),
#                 Fashion-MNIST, and the headers for a build there;
#   .device/bin.tar.xz  squeeze, test_cuda_ops, test_mpi, test_train, bench_gpu, bench_collectives and
#                 bench_ddp_gpu built here for sm_90a (x86-64-v3, not -march=native), so that
#                 the lease is not spent compiling; gpu_check.sh unpacks them to .device/bin there and builds instead
#                 when they do not run. (Packed: unpacked, their kernels' code would take the
#                 carried tree past the device tool's 64 MiB.) Beside them, bin/sm80: squeeze and
#                 test_cuda_ops with compute_80's PTX alone, the code older GPUs get (no wgmma),
#                 which the driver there compiles for the sm_90 GPU (gpu_check.sh's `older` phase).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .device/debs
rm -rf .device/bin && mkdir -p /tmp/sq_device_bin/bin
(cd .device/debs && apt-get download libopenblas0-openmp libopenblas-openmp-dev libopenblas-dev \
  libopenblas0 libgfortran5 nlohmann-json3-dev libcli11-dev libgtest-dev libgmock-dev zlib1g-dev \
  dataset-fashion-mnist libopenmpi3 openmpi-bin openmpi-common libhwloc15 libevent-core-2.1-7 \
  libevent-pthreads-2.1-7 libpmix2 libnuma1 libmunge2 2> >(grep -v "unsandboxed" >&2))
# The BLAS development package only for a fallback build there: its 58 MB static library (5 MB
# packed) would take the carried tree past the device tool's 64 MiB, and a build links the shared one.
dev=$(ls .device/debs/libopenblas-openmp-dev_*.deb)
rm -rf /tmp/sq_blas_dev && dpkg-deb -R "$dev" /tmp/sq_blas_dev
find /tmp/sq_blas_dev -name '*.a' -delete
dpkg-deb -b /tmp/sq_blas_dev "$dev" > /dev/null
cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=Release -DSQUEEZE_NATIVE=OFF \
  -DCMAKE_CXX_FLAGS="-march=x86-64-v3" -DCMAKE_CUDA_ARCHITECTURES=90a > /dev/null
bins="squeeze test_cuda_ops test_mpi test_train bench_gpu bench_collectives bench_ddp_gpu"
cmake --build build-device -j"$(nproc)" --target $bins
B=/tmp/sq_device_bin/bin
for b in $bins; do strip -o $B/$b build-device/$b; done
cmake -S . -B build-device80 -G Ninja -DCMAKE_BUILD_TYPE=Release -DSQUEEZE_NATIVE=OFF \
  -DCMAKE_CXX_FLAGS="-march=x86-64-v3" -DCMAKE_CUDA_ARCHITECTURES=80-virtual > /dev/null
cmake --build build-device80 -j"$(nproc)" --target squeeze test_cuda_ops
mkdir -p $B/sm80
for b in squeeze test_cuda_ops; do strip -o $B/sm80/$b build-device80/$b; done
git rev-parse HEAD > $B/COMMIT
git diff --quiet || echo "(uncommitted changes)" >> $B/COMMIT
# xz -9's 64 MiB window spans the binaries, which share most of their code (the kernels): 4.4 MB
# packed where xz's default window made 19.7.
tar -C /tmp/sq_device_bin -cf - bin | xz -9 -T1 > .device/bin.tar.xz
du -sh .device/debs .device/bin.tar.xz
# What a call carries: .device and the tracked tree, against the device tool's 64 MiB.
carried=$(( $(du -sb .device/debs .device/bin.tar.xz | awk '{s += $1} END {print s}') + $(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1) ))
echo "carried with .device: $(( carried / 1048576 )) MiB of the 64 MiB a call may take"
[ "$carried" -lt $(( 64 * 1048576 )) ] || { echo "gpu_deps.sh: over the device tool's 64 MiB" >&2; exit 1; }
