#!/usr/bin/env python3
"""Tabulate an Nsight Compute CSV of one training step (scripts/gpu_check.sh profile).

    python3 bench/ncu_summary.py NCU.csv [--top N]

The CSV is `ncu --csv --print-units base --metrics ...` output: one row per kernel and metric,
after ncu's own "==PROF==" lines and the program's output. Prints each kernel in launch order
(time, grid, registers, DRAM bytes and bandwidth, SM and memory throughput, occupancy), then the
time by kernel family, and the sum of kernel times (the step without launch gaps).
"""
import argparse
import csv
import re
import sys
from collections import OrderedDict, defaultdict

METRICS = {
    "gpu__time_duration.sum": "ns",
    "dram__bytes.sum": "dram",
    "sm__throughput.avg.pct_of_peak_sustained_elapsed": "sm%",
    "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed": "mem%",
    "sm__warps_active.avg.pct_of_peak_sustained_active": "occ%",
    "launch__grid_size": "grid",
    "launch__registers_per_thread": "regs",
}


def short_name(name):
    """'void sq::cuda::igemm_mma_kernel<sq::cuda::FwdOp, sq::cuda::MmaTf32, 128, 64, 4>(T1, int)'
    -> 'igemm_mma_kernel<FwdOp,MmaTf32,128,64,4>'."""
    name = re.sub(r"^void ", "", name.strip())
    name = re.sub(r"\(anonymous namespace\)::|[A-Za-z_]\w*::", "", name)
    depth, cut = 0, len(name)
    for i, ch in enumerate(name):  # drop the parameter list that follows the template arguments
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            cut = i
            break
    return re.sub(r"\s+", "", name[:cut])


def family(short):
    """The kernel and its product, without the tile: 'igemm_mma_kernel<FwdOp,MmaTf32>'."""
    m = re.match(r"(\w+)<(\w+)(?:,(\w+))?", short)
    if not m:
        return short
    args = [a for a in m.groups()[1:] if a and not a.isdigit() and a not in ("true", "false")]
    return m.group(1) + ("<" + ",".join(args) + ">" if args else "")


def number(text):
    text = text.replace(",", "").strip()
    try:
        return float(text)
    except ValueError:
        return None


def read(path):
    with open(path, newline="") as f:
        lines = f.read().splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith('"ID","Process ID"')), None)
    if start is None:
        sys.exit(f"ncu_summary: {path}: no ncu CSV header (\"ID\",\"Process ID\",...) found")
    rows = csv.DictReader(l for l in lines[start:] if l.startswith('"'))
    kernels = OrderedDict()
    for r in rows:
        for col in ("ID", "Kernel Name", "Metric Name", "Metric Value"):
            if col not in r:
                sys.exit(f"ncu_summary: {path}: the CSV has no column '{col}'")
        k = kernels.setdefault(r["ID"], {"name": short_name(r["Kernel Name"])})
        key = METRICS.get(r["Metric Name"])
        if key:
            k[key] = number(r["Metric Value"])
    if not kernels:
        sys.exit(f"ncu_summary: {path}: the CSV holds no kernel rows")
    return list(kernels.values())


def fmt(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=15, help="families listed by time (default 15)")
    a = ap.parse_args()
    ks = read(a.csv)
    total_ns = sum(k.get("ns") or 0 for k in ks)
    print(f"{a.csv}: {len(ks)} kernels, {total_ns / 1e6:.3f} ms of kernel time\n")
    print("| # | kernel | grid | regs | us | DRAM MB | GB/s | SM % | mem % | occupancy % |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, k in enumerate(ks):
        ns, dram = k.get("ns"), k.get("dram")
        gbs = dram / ns if ns and dram is not None else None
        print(f"| {i} | {k['name']} | {fmt(k.get('grid'), '.0f')} | {fmt(k.get('regs'), '.0f')} | "
              f"{fmt(ns / 1e3 if ns else None, '.1f')} | {fmt(dram / 1e6 if dram is not None else None, '.1f')} | "
              f"{fmt(gbs, '.0f')} | {fmt(k.get('sm%'), '.1f')} | {fmt(k.get('mem%'), '.1f')} | "
              f"{fmt(k.get('occ%'), '.1f')} |")
    fams = defaultdict(lambda: [0, 0.0])
    for k in ks:
        f = fams[family(k["name"])]
        f[0] += 1
        f[1] += k.get("ns") or 0
    print(f"\n| kernel family | launches | ms | share of kernel time |\n|---|---:|---:|---:|")
    for name, (n, ns) in sorted(fams.items(), key=lambda kv: -kv[1][1])[: a.top]:
        print(f"| {name} | {n} | {ns / 1e6:.3f} | {100 * ns / total_ns if total_ns else 0:.1f} % |")


if __name__ == "__main__":
    main()
