#!/usr/bin/env bash
# Run HERE (a Debian machine with internet) before using the lent GPU machine: downloads the
# Debian packages the GPU machine lacks (it has nvcc, cmake, ninja, but no BLAS, GoogleTest,
# JSON, CLI11 or data set, and no internet) into .device/debs, which git ignores and
# scripts/gpu_check.sh unpacks there. About 46 MB; name `.device` in the device tool's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .device/debs
cd .device/debs
apt-get download libopenblas0-openmp libopenblas-openmp-dev libopenblas-dev libopenblas0 \
  libgfortran5 nlohmann-json3-dev libcli11-dev libgtest-dev libgmock-dev zlib1g-dev \
  dataset-fashion-mnist 2> >(grep -v "unsandboxed" >&2)
ls -la
