#!/usr/bin/env bash
# Everything the CPU can run, under AddressSanitizer and UndefinedBehaviorSanitizer, in
# build-sanitize/. Not part of the default tests.
#
#   bash scripts/sanitize_cpu.sh [kernels|engine|all] [GTEST_FILTER]     (default: kernels)
#
# kernels  the CUDA kernels' CPU checks (test_igemm, test_kernels_on_cpu: the kernel source run by
#          tests/simt_host.h): a kernel's read or write past a tensor, or a vector access through
#          a misaligned pointer (float2 and float4 are aligned as on the device), ends the run with
#          the sanitizer's report. About 20 minutes on 2 cores (the emulation runs about 6x
#          slower). Accesses past a launch's dynamic shared memory the emulator catches itself,
#          in every build.
# engine   every other test program, with the sanitized `squeeze` as the binary the CLI tests
#          run, and test_mpi under mpirun at 2 and 4 ranks. About 15 minutes on 2 cores
#          (test_compress alone about 6).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=kernels
case "${1:-}" in kernels|engine|all) mode=$1; shift ;; esac
filter="${1:-*}"
flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cmake -S . -B build-sanitize -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSQUEEZE_WITH_CUDA=OFF \
  -DSQUEEZE_BUILD_BENCH=OFF -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" > /dev/null
kernel_tests="test_kernels_on_cpu test_igemm"
engine_tests=$(cd tests && ls test_*.cpp | sed 's/\.cpp$//' | grep -v -e test_kernels_on_cpu -e test_igemm -e test_cuda_ops)
case $mode in
  kernels) tests=$kernel_tests ;;
  engine) tests="$engine_tests test_mpi" ;;
  all) tests="$kernel_tests $engine_tests test_mpi" ;;
esac
cmake --build build-sanitize --target squeeze $tests
# (ASan warns once that it does not fully support swapcontext, which the emulator's threads use.)
export ASAN_OPTIONS=detect_leaks=0:allow_user_segv_handler=1 UBSAN_OPTIONS=print_stacktrace=1
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
  OMPI_MCA_rmaps_base_oversubscribe=1
for t in $tests; do
  if [ "$t" = test_mpi ]; then
    for np in 2 4; do
      mpirun -np $np build-sanitize/test_mpi --gtest_color=no --gtest_brief=1 --gtest_filter="$filter"
    done
  else
    build-sanitize/$t --gtest_color=no --gtest_brief=1 --gtest_filter="$filter"
  fi
done
echo "sanitize_cpu ($mode): no sanitizer report"
