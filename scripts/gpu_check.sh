#!/usr/bin/env bash
# The GPU path in one call (run ON the lent GPU machine, from the repository root, after
# scripts/gpu_deps.sh ran here and `.device` is carried): unpack the carried Debian packages,
# build with CUDA (and the toolkit's or the PyTorch wheel's cuDNN) for the GPU at hand, run
# every GPU test, --check-layers on the model configurations and one epoch of training. Results (logs, GPU description) go to $OUT when it is set.
#
#   device run: bash scripts/gpu_check.sh        (carry: [".device"], timeout ~ 600 s)
#
# Then the benchmarks: bench_gpu (Fire shapes own vs cuDNN, training images/s) and
# bench/pytorch_gpu.py (PyTorch eager and torch.compile on the same GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/sq_gpu_out}
mkdir -p "$OUT"
DEPS=/tmp/sqdeps
rm -rf "$DEPS" && mkdir -p "$DEPS"
for f in .device/debs/*.deb; do dpkg -x "$f" "$DEPS"; done
export LD_LIBRARY_PATH="$DEPS/usr/lib/x86_64-linux-gnu/openblas-openmp:$DEPS/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
{
  date -u
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv
  nvcc --version | tail -1
} 2>&1 | tee "$OUT/gpu.txt"
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
set -e
cudnn_root=$(python3 -c "import nvidia.cudnn, os; print(os.path.dirname(nvidia.cudnn.__file__))" 2>/dev/null || true)
cmake -S . -B build-gpu -G Ninja ${cudnn_root:+-DCUDNN_ROOT=$cudnn_root} -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$DEPS/usr" \
  -DCMAKE_CUDA_ARCHITECTURES="${cap:-90}" -DSQUEEZE_WITH_MPI=OFF \
  > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
cmake --build build-gpu -j"$(nproc)" --target squeeze test_cuda_ops bench_gpu > "$OUT/build.log" 2>&1 \
  || { grep -E "error" -A3 "$OUT/build.log" | head -60; exit 1; }
set +e
status=0
export SQUEEZE_FASHION_MNIST=$DEPS/usr/share/datasets/fashion-mnist
build-gpu/test_cuda_ops 2>&1 | tee "$OUT/test_cuda_ops.log" | grep -E "^\[ *(OK|FAILED|SKIPPED|PASSED) " 
[ "${PIPESTATUS[0]}" = 0 ] || status=1
data=$DEPS/usr/share/datasets/fashion-mnist
for args in "--model squeezenet1.0" "--model squeezenet1.1" "--model squeezenet1.0 --bypass complex"; do
  echo "## squeeze train --device cuda --check-layers $args --batch-size 32" | tee -a "$OUT/check_layers.log"
  build-gpu/squeeze train --device cuda --check-layers $args --batch-size 32 --data-dir "$data" \
    2>&1 | tee -a "$OUT/check_layers.log" || status=1
done
# One epoch of the default job on the GPU (fp32, first kernels): images/s and accuracy.
echo "## squeeze train --device cuda --epochs 1" | tee "$OUT/train.log"
build-gpu/squeeze train --device cuda --epochs 1 --data-dir "$data" --out /tmp/sq_gpu_run \
  2>&1 | tee -a "$OUT/train.log" | grep -vE "^.\[K" || status=1
# Benchmarks: Fire shapes own vs cuDNN and training images/s (ours), then PyTorch on the same GPU.
build-gpu/bench_gpu --reps 20 --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.log" || status=1
python3 bench/pytorch_gpu.py --steps 20 --json "$OUT/pytorch_gpu.json" 2>&1 | tee "$OUT/pytorch_gpu.log" || status=1
echo "gpu_check: $([ $status = 0 ] && echo PASSED || echo FAILED)"
exit $status
