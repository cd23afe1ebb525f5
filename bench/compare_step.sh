#!/usr/bin/env bash
# Training-step throughput, squeeze vs PyTorch's CPU build, side by side in one run.
#
# For each configuration (squeezenet1.0, squeezenet1.1, fmnist) and each repetition, runs
# bench_step (ours) and bench/pytorch_step.py (PyTorch) one after the other — alternating which
# goes first — with the same batch and thread count, then prints a table of median images/s and
# the ratio ours / PyTorch, and writes the results as JSON and CSV.
#
# Usage: bench/compare_step.sh [options]
#   --configs "a b c"   configurations (default: "squeezenet1.0 squeezenet1.1 fmnist")
#   --reps N            interleaved repetitions per configuration (default 3)
#   --min-time S        seconds of timed steps per run and side (default 3)
#   --threads N         threads for both sides (default: all cores, nproc)
#   --batch N           batch size (default 16)
#   --build-dir DIR     CMake build directory (default build-bench)
#   --out DIR           where the JSON/CSV and raw outputs go (default runs/compare_step)
#   --no-build          do not (re)build bench_step
#   --profile           afterwards, print bench_step's per-op breakdown and PyTorch's profiler table
# Environment: PYTHON (default /usr/bin/python3: Debian's, with python3-torch/-torchvision).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
configs="squeezenet1.0 squeezenet1.1 fmnist"
reps=3
min_time=3
threads="$(nproc)"
batch=16
build_dir="$root/build-bench"
out="$root/runs/compare_step"
build=1
profile=0
python="${PYTHON:-/usr/bin/python3}"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --configs) configs="$2"; shift 2 ;;
    --reps) reps="$2"; shift 2 ;;
    --min-time) min_time="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --build-dir) build_dir="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    --profile) profile=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare_step.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [[ $build == 1 ]]; then
  if [[ ! -f "$build_dir/build.ninja" ]]; then
    cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  fi
  ninja -C "$build_dir" bench_step >/dev/null
fi
bench="$build_dir/bench_step"
[[ -x "$bench" ]] || { echo "compare_step.sh: $bench not built (Google Benchmark missing?)" >&2; exit 1; }
"$python" -c 'import torch, torchvision' 2>/dev/null ||
  { echo "compare_step.sh: $python lacks torch/torchvision (install python3-torch python3-torchvision)" >&2; exit 1; }

mkdir -p "$out/raw"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
raw="$out/raw/$stamp"
mkdir -p "$raw"
"$python" "$here/pytorch_step.py" --info --threads "$threads" >"$raw/pytorch_info.txt" 2>&1 || true
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)  ($(nproc) cores; $threads threads, batch $batch, ${min_time}s per run, $reps reps)" | tee "$raw/load_start.txt"

run_ours() {  # config rep
  local filter="^step/${1//./\\.}/b${batch}(/|\$)"  # UseRealTime appends /real_time
  "$bench" --threads="$threads" --batch="$batch" --benchmark_filter="$filter" \
    --benchmark_min_time="$min_time" --benchmark_format=json >"$raw/ours_${1}_$2.json" 2>"$raw/ours_${1}_$2.err"
  grep -q items_per_second "$raw/ours_${1}_$2.json" ||
    { echo "compare_step.sh: bench_step gave no result for $1:" >&2; cat "$raw/ours_${1}_$2.err" >&2; exit 1; }
}
run_torch() {  # config rep
  "$python" "$here/pytorch_step.py" --config "$1" --batch "$batch" --threads "$threads" \
    --min-time "$min_time" >"$raw/torch_${1}_$2.json" 2>"$raw/torch_${1}_$2.err" ||
    { echo "compare_step.sh: pytorch_step.py failed for $1:" >&2; cat "$raw/torch_${1}_$2.err" >&2; exit 1; }
}

# Share of the machine's CPU time that others used during one second in which neither side runs
# (the load average would count the benchmark's own threads).
background_busy() {
  local a b
  read -r -a a < <(head -1 /proc/stat)
  sleep 1
  read -r -a b < <(head -1 /proc/stat)
  local total=0 i
  for ((i = 1; i < ${#a[@]}; i++)); do total=$((total + b[i] - a[i])); done
  local idle=$((b[4] - a[4] + b[5] - a[5]))
  echo $(( total > 0 ? 100 * (total - idle) / total : 0 ))
}

for c in $configs; do
  for ((r = 1; r <= reps; r++)); do
    busy="$(background_busy)"
    echo "$busy" >>"$raw/busy_between.txt"
    if ((r % 2 == 1)); then run_ours "$c" "$r"; run_torch "$c" "$r"
    else run_torch "$c" "$r"; run_ours "$c" "$r"; fi
    load="background ${busy}% busy"
    "$python" -c '
import json, sys
o = json.load(open(sys.argv[1]))["benchmarks"][0]["items_per_second"]
t = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])["images_per_s"]
print(f"  {sys.argv[3]:<14} rep {sys.argv[4]}/{sys.argv[5]}: squeeze {o:9.2f} img/s   PyTorch {t:9.2f} img/s"
      f"   ratio {o / t:5.2f}   ({sys.argv[6]})")' \
      "$raw/ours_${c}_$r.json" "$raw/torch_${c}_$r.json" "$c" "$r" "$reps" "$load" >&2
  done
done
echo "load average at end:   $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$raw/load_end.txt"

"$python" - "$raw" "$out" "$stamp" "$configs" "$reps" "$threads" "$batch" "$min_time" <<'EOF'
import csv, json, os, statistics, sys
raw, out, stamp, configs, reps, threads, batch, min_time = sys.argv[1:]
reps = int(reps)
rows = []
for c in configs.split():
    ours, torch = [], []
    for r in range(1, reps + 1):
        with open(f"{raw}/ours_{c}_{r}.json") as f:
            b = json.load(f)["benchmarks"]
        assert len(b) == 1, f"{c}: expected one benchmark, got {len(b)}"
        ours.append(b[0]["items_per_second"])
        with open(f"{raw}/torch_{c}_{r}.json") as f:
            torch.append(json.loads(f.read().strip().splitlines()[-1])["images_per_s"])
    mo, mt = statistics.median(ours), statistics.median(torch)
    rows.append({
        "config": c, "batch": int(batch), "threads": int(threads), "reps": reps,
        "squeeze_img_s": mo, "pytorch_img_s": mt, "ratio": mo / mt,
        "squeeze_runs": ours, "pytorch_runs": torch,
        "ratio_runs": [o / t for o, t in zip(ours, torch)],
    })
busy = [int(l) for l in open(f"{raw}/busy_between.txt")]
with open(f"{raw}/pytorch_info.txt") as f:
    info_txt = f.read()
try:
    info = json.loads(info_txt[: info_txt.index("}") + 1])
except Exception:
    info = {}
result = {"stamp": stamp, "threads": int(threads), "batch": int(batch), "min_time_s": float(min_time),
          "cores": os.cpu_count(), "background_cpu_busy_pct": busy,
          "pytorch": info, "results": rows}
json_path, csv_path = f"{out}/compare_step_{stamp}.json", f"{out}/compare_step_{stamp}.csv"
with open(json_path, "w") as f:
    json.dump(result, f, indent=1)
with open(csv_path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["config", "batch", "threads", "squeeze_img_s", "pytorch_img_s", "ratio", "ratio_min", "ratio_max"])
    for r in rows:
        w.writerow([r["config"], r["batch"], r["threads"], f'{r["squeeze_img_s"]:.3f}', f'{r["pytorch_img_s"]:.3f}',
                    f'{r["ratio"]:.3f}', f'{min(r["ratio_runs"]):.3f}', f'{max(r["ratio_runs"]):.3f}'])
print()
print(f"batch {batch}, {threads} threads, median of {reps} interleaved runs of {min_time}s each "
      f"(PyTorch {info.get('torch', '?')}, mkldnn {info.get('mkldnn_available', '?')})")
print(f"{'config':<15}{'squeeze img/s':>15}{'PyTorch img/s':>15}{'ratio':>8}  {'ratio range':>13}  >=1.5x")
for r in rows:
    rr = r["ratio_runs"]
    print(f"{r['config']:<15}{r['squeeze_img_s']:>15.2f}{r['pytorch_img_s']:>15.2f}{r['ratio']:>8.2f}  "
          f"{min(rr):>6.2f}-{max(rr):<6.2f}  {'yes' if r['ratio'] >= 1.5 else 'no'}")
print(f"other processes' CPU use, sampled for 1 s before each repetition: {min(busy)}-{max(busy)}% "
      f"of {os.cpu_count()} cores" + ("  [NOISY: other load on the machine]" if max(busy) > 10 else ""))
print(f"wrote {json_path} and {csv_path} (raw outputs in {raw})")
EOF

if [[ $profile == 1 ]]; then
  for c in $configs; do
    echo; echo "---- squeeze per-op breakdown: $c"
    "$bench" --threads="$threads" --batch="$batch" --profile --profile_config="$c" | tee "$raw/profile_ours_$c.txt"
    echo; echo "---- PyTorch profiler: $c"
    "$python" "$here/pytorch_step.py" --config "$c" --batch "$batch" --threads "$threads" --profile | tee "$raw/profile_torch_$c.txt"
  done
fi
