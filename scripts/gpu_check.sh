#!/usr/bin/env bash
# The GPU path on the lent GPU machine, from the repository root, after scripts/gpu_deps.sh ran
# here and with `.device` carried:
#
#   bash scripts/gpu_check.sh [all|test|bench]      (device run, timeout_s up to 600)
#
# Always: unpack the carried Debian packages, build for the GPU at hand with CUDA and cuDNN (the
# toolkit's, else the PyTorch wheel's). test: every GPU test (test_cuda_ops), --check-layers on
# three configurations, one epoch of `squeeze train --device cuda`. bench: bench_gpu (Fire
# shapes own vs cuDNN at fp32/TF32/BF16, training images/s) and bench/pytorch_gpu.py (PyTorch
# eager and torch.compile on the same GPU; NO_COMPILE=1 skips compile). all: both (may need
# close to 10 minutes: run the phases as two calls if time is short). Logs and JSON go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
phase=${1:-all}
OUT=${OUT:-/tmp/sq_gpu_out}
mkdir -p "$OUT"
DEPS=/tmp/sqdeps
if [ ! -d "$DEPS/usr" ]; then
  mkdir -p "$DEPS"
  for f in .device/debs/*.deb; do dpkg -x "$f" "$DEPS"; done
fi
cudnn_root=$(python3 -c "import nvidia.cudnn as c; print(list(c.__path__)[0])" 2>/dev/null || true)
export LD_LIBRARY_PATH="$DEPS/usr/lib/x86_64-linux-gnu/openblas-openmp:$DEPS/usr/lib/x86_64-linux-gnu${cudnn_root:+:$cudnn_root/lib}:${LD_LIBRARY_PATH:-}"
export SQUEEZE_FASHION_MNIST=$DEPS/usr/share/datasets/fashion-mnist
{
  date -u
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv
  nvcc --version | tail -1
  echo "cuDNN root: ${cudnn_root:-none in Python, the CUDA toolkit}"
} 2>&1 | tee "$OUT/gpu.txt"
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
t0=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$DEPS/usr" \
  ${cudnn_root:+-DCUDNN_ROOT=$cudnn_root} -DCMAKE_CUDA_ARCHITECTURES="${cap:-90}" \
  -DSQUEEZE_WITH_MPI=OFF > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
grep -E "CUDA kernels|OpenBLAS" "$OUT/configure.log"
cmake --build build-gpu -j"$(nproc)" --target squeeze test_cuda_ops bench_gpu > "$OUT/build.log" 2>&1 \
  || { grep -E "error" -A3 "$OUT/build.log" | head -60; exit 1; }
echo "built in $(( $(date +%s) - t0 )) s"
status=0

if [ "$phase" = all ] || [ "$phase" = test ]; then
  build-gpu/test_cuda_ops 2>&1 | tee "$OUT/test_cuda_ops.log" | grep -E "^\[ *(OK|FAILED|SKIPPED|PASSED) "
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  data=$SQUEEZE_FASHION_MNIST
  for args in "--model squeezenet1.0" "--model squeezenet1.1" "--model squeezenet1.0 --bypass complex"; do
    echo "## squeeze train --device cuda --check-layers $args --batch-size 32" | tee -a "$OUT/check_layers.log"
    build-gpu/squeeze train --device cuda --check-layers $args --batch-size 32 --data-dir "$data" \
      2>&1 | tee -a "$OUT/check_layers.log" || status=1
  done
  echo "## squeeze train --device cuda --epochs 1" | tee "$OUT/train.log"
  build-gpu/squeeze train --device cuda --epochs 1 --data-dir "$data" --out /tmp/sq_gpu_run \
    2>&1 | tee -a "$OUT/train.log" | grep -vE "^.\[K" || status=1
fi

if [ "$phase" = all ] || [ "$phase" = bench ]; then
  build-gpu/bench_gpu --reps 20 --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.log" || status=1
  python3 bench/pytorch_gpu.py --steps 20 ${NO_COMPILE:+--no-compile} --json "$OUT/pytorch_gpu.json" \
    2>&1 | tee "$OUT/pytorch_gpu.log" || status=1
fi
echo "gpu_check $phase: $([ $status = 0 ] && echo PASSED || echo FAILED) after $(( $(date +%s) - t0 )) s"
exit $status
