#!/usr/bin/env bash
# Installs squeeze's build and test dependencies from Debian (see docs/ARCHITECTURE.md for why
# each is there). Idempotent; needs root or sudo.
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config
      libopenblas-openmp-dev zlib1g-dev nlohmann-json3-dev libcli11-dev
      libgtest-dev libbenchmark-dev dataset-fashion-mnist openmpi-bin libopenmpi-dev
      procps)  # pgrep in the failure-handling tests
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
