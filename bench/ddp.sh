#!/usr/bin/env bash
# Data-parallel benchmarks under MPI: builds bench_allreduce and bench_ddp in build-bench/ and runs
#   1. bench_allreduce: our Communicator's allreduce (thread, nonblocking) against raw MPI calls,
#      SqueezeNet 1.0- and AlexNet-sized gradients;
#   2. bench_ddp: the DDP overhead of a training step (fmnist, local batch 64; squeezenet1.0 at
#      3x224x224, local batch 4), overlapped / not, both progress modes, SqueezeNet's gradient and
#      an AlexNet-sized one;
#   3. bench_ddp --sweep-buckets on fmnist: overlapped ms/step per bucket cap.
# Every command is echoed before it runs. JSON results go to $RESULTS (default build-bench/ddp-results).
# About 5-8 minutes on a 2-core machine.
#
# Environment: NP (ranks, default 2), BUILD (build dir, default <repo>/build-bench), RESULTS,
# MPIRUN_ARGS (extra mpirun arguments, e.g. "--bind-to none"), STEPS (timed steps per mode for
# bench_ddp, default 10 for fmnist and 8 for squeezenet1.0), REPS (bench_allreduce reps, default 20).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build-bench}
RESULTS=${RESULTS:-$BUILD/ddp-results}
NP=${NP:-2}
REPS=${REPS:-20}
read -r -a EXTRA <<<"${MPIRUN_ARGS:-}"

# Open MPI refuses to run as root unless told to (containers, CI); only then set these.
if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  export OMPI_MCA_rmaps_base_oversubscribe=1
  echo "+ export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1  # running as root"
fi

run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  "$@"
}

echo "# $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(uname -n), $(nproc) CPUs, load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $(mpirun --version 2>&1 | head -n1); git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')"

run cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSQUEEZE_BUILD_TESTS=OFF >/dev/null
run cmake --build "$BUILD" -j"$(nproc)" --target bench_allreduce bench_ddp
mkdir -p "$RESULTS"
MPI=(mpirun -np "$NP" "${EXTRA[@]}")

echo
echo "## 1. allreduce: ours vs raw MPI"
run "${MPI[@]}" "$BUILD/bench_allreduce" --reps "$REPS" --json "$RESULTS/allreduce.json"

echo
echo "## 2a. DDP step overhead: fmnist (squeezenet1.0, small stem, 1x28x28), local batch 64"
run "${MPI[@]}" "$BUILD/bench_ddp" --config fmnist --local-batch 64 --steps "${STEPS:-10}" \
  --bucket-mib 1 --json "$RESULTS/ddp_fmnist.json"

echo
echo "## 2b. DDP step overhead: squeezenet1.0 (3x224x224, 1000 classes), local batch 4"
run "${MPI[@]}" "$BUILD/bench_ddp" --config squeezenet1.0 --local-batch 4 --steps "${STEPS:-8}" \
  --bucket-mib 1 --json "$RESULTS/ddp_squeezenet1.0.json"

echo
echo "## 3. bucket-size sweep: fmnist, local batch 64, SqueezeNet gradient, thread progress, overlapped"
run "${MPI[@]}" "$BUILD/bench_ddp" --config fmnist --local-batch 64 --steps "${STEPS:-10}" \
  --sweep-buckets 0,0.25,0.5,1,2,4,8,32 --json "$RESULTS/ddp_sweep_fmnist.json"

echo
echo "# done: JSON in $RESULTS"
