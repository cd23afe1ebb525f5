#!/usr/bin/env bash
# The CPU training step beside another busy process, under libgomp's default wait policy and
# OMP_WAIT_POLICY=passive (docs/BENCHMARKS.md, CPU caveats). The per-step time is the difference
# of a 24-step and a 4-step `squeeze train` (Fashion-MNIST default model, batch 128, --threads 2),
# so that data loading and start-up cancel out; quiet first, then beside one busy loop.
#   bash bench/contention.sh [REPS]          (default 2; about 5 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-2}
bin=./build/squeeze
[ -x $bin ] || { echo "contention.sh: build $bin first (cmake --build build)" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"; [ -n "${busy:-}" ] && kill $busy 2>/dev/null || true' EXIT
seconds() {  # steps, env...
  local steps=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  env -u OMP_WAIT_POLICY "$@" $bin train --max-steps "$steps" --test-limit 128 --init xavier --out "$out" \
    --overwrite --threads 2 > "$out/log" 2>&1 || { cat "$out/log" >&2; exit 1; }
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}
busy=
for load in quiet busy; do
  if [ $load = busy ]; then ( while :; do :; done ) & busy=$!; fi
  for rep in $(seq "$reps"); do
    for policy in "" "OMP_WAIT_POLICY=passive"; do
      a=$(seconds 4 $policy)
      b=$(seconds 24 $policy)
      printf "%-6s %-24s rep %d: %7.1f ms/step\n" $load "${policy:-default}" "$rep" \
        "$(echo "($b - $a) * 1000 / 20" | bc -l)"
    done
  done
  if [ $load = busy ]; then kill $busy; wait $busy 2>/dev/null || true; busy=; fi
done
