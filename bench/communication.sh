#!/usr/bin/env bash
# Collective benchmark + cost model (docs/COMMUNICATION.md): builds bench_collectives in
# build-bench/, runs it under mpirun at 2 ranks (and 4, oversubscribed on a 2-core machine),
# writing JSON and CSV, then fits and projects with bench/cost_model.py, writing the tables and
# PNG plots (gnuplot; Debian: apt-get install gnuplot-nox) into docs/communication/.
# Every command is echoed before it runs. About 2-4 minutes on a 2-core machine.
#
# Environment: BUILD (build dir, default <repo>/build-bench), OUT (default
# <repo>/docs/communication), NPS (rank counts, default "2 4"), MAX_BYTES (default 268435456),
# MPIRUN_ARGS (extra mpirun arguments), GPU_STEPS (MEASURED squeezenet1.0 GPU step times for
# the projection, "MS=LABEL" separated by ";"; default: the H200 figures of docs/BENCHMARKS.md,
# batch 128), GPU_COMPUTE_MS (an ASSUMED GPU step time instead or as well; default none).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build-bench}
OUT=${OUT:-$ROOT/docs/communication}
NPS=${NPS:-2 4}
MAX_BYTES=${MAX_BYTES:-268435456}
GPU_COMPUTE_MS=${GPU_COMPUTE_MS-}
GPU_STEPS=${GPU_STEPS-41.6=H200 step batch 128, own kernels fp32 (measured);20.4=H200 step batch 128, PyTorch eager TF32 (measured)}
read -r -a EXTRA <<<"${MPIRUN_ARGS:-}"

# Open MPI refuses to run as root unless told to (containers, CI); only then set these.
if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  export OMPI_MCA_rmaps_base_oversubscribe=1
  echo "+ export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1  # running as root"
fi
NCPU=$(nproc --all)
export OMP_NUM_THREADS=1
echo "+ export OMP_NUM_THREADS=1"

run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  "$@"
}

echo "# $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(uname -n), ${NCPU} CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $(mpirun --version 2>&1 | head -n1); git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')"

run cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSQUEEZE_BUILD_TESTS=OFF >/dev/null
run cmake --build "$BUILD" -j"$NCPU" --target bench_collectives
run mkdir -p "$OUT"

JSONS=()
for np in $NPS; do
  echo
  echo "## allreduce sweep, $np ranks"
  run mpirun -np "$np" "${EXTRA[@]}" "$BUILD/bench_collectives" --max-bytes "$MAX_BYTES" \
    --json "$OUT/collectives_np$np.json" --csv "$OUT/collectives_np$np.csv" \
    | tee "$OUT/collectives_np$np.txt"
  JSONS+=("$OUT/collectives_np$np.json")
done

echo
echo "## cost model: fit, projection, plots"
GPU=()
[ -n "$GPU_COMPUTE_MS" ] && GPU=(--gpu-compute-ms "$GPU_COMPUTE_MS")
IFS=';' read -r -a STEPS <<<"$GPU_STEPS"
for st in "${STEPS[@]}"; do [ -n "$st" ] && GPU+=(--gpu-step "$st"); done
run /usr/bin/python3 "$ROOT/bench/cost_model.py" --out "$OUT" "${GPU[@]}" "${JSONS[@]}"
