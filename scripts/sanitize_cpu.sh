#!/usr/bin/env bash
# The CUDA kernels' CPU checks (test_igemm, test_kernels_on_cpu: the kernel source run by
# tests/simt_host.h) under AddressSanitizer and UndefinedBehaviorSanitizer, in build-sanitize/:
# a kernel's read or write past a tensor, or a vector access through a misaligned pointer (float2
# and float4 are aligned as on the device), ends the run with the sanitizer's report. Not part of
# the default tests: about 20 minutes on 2 cores (the emulation runs about 6x slower). Accesses
# past a launch's dynamic shared memory the emulator catches itself, in every build.
#   bash scripts/sanitize_cpu.sh [GTEST_FILTER]
set -euo pipefail
cd "$(dirname "$0")/.."
flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cmake -S . -B build-sanitize -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSQUEEZE_WITH_CUDA=OFF \
  -DSQUEEZE_BUILD_BENCH=OFF -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" > /dev/null
cmake --build build-sanitize --target test_igemm test_kernels_on_cpu
# (ASan warns once that it does not fully support swapcontext, which the emulator's threads use.)
export ASAN_OPTIONS=detect_leaks=0:allow_user_segv_handler=1 UBSAN_OPTIONS=print_stacktrace=1
for t in test_kernels_on_cpu test_igemm; do
  build-sanitize/$t --gtest_color=no --gtest_brief=1 --gtest_filter="${1:-*}"
done
echo "sanitize_cpu: no sanitizer report"
