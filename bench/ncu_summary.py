#!/usr/bin/env python3
"""Tabulate an Nsight Compute CSV of one training step (scripts/gpu_check.sh profile, limits).

    python3 bench/ncu_summary.py NCU.csv [--top N]
    python3 bench/ncu_summary.py --limits RAW.csv

The CSV is `ncu --csv --print-units base --metrics ...` output: one row per kernel and metric,
after ncu's own "==PROF==" lines and the program's output. Prints each kernel in launch order
(time, grid, registers, DRAM bytes and bandwidth, SM and memory throughput, occupancy), then the
time by kernel family, and the sum of kernel times (the step without launch gaps).

--limits reads `ncu --csv --page raw` output of the bottleneck sections (SpeedOfLight,
SchedulerStats, WarpStateStats, ComputeWorkloadAnalysis, MemoryWorkloadAnalysis): one row per
kernel, one column per counter, a row of units under the header. Per kernel it prints the issue
slots' and the tensor pipe's busy share, the SM, L1, L2 and DRAM throughput, the shared-memory
wavefronts and the share of them that bank conflicts added, the three largest stall reasons (warp
cycles per issued instruction), and a first reading of what bounds it.
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


def csv_rows(path):
    """ncu's CSV rows as dicts, from its header line on (ncu's own lines and the program's output
    before it skipped)."""
    with open(path, newline="") as f:
        lines = f.read().splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith('"ID","Process ID"')), None)
    if start is None:
        sys.exit(f"ncu_summary: {path}: no ncu CSV header (\"ID\",\"Process ID\",...) found")
    return csv.DictReader(l for l in lines[start:] if l.startswith('"'))


def read(path):
    rows = csv_rows(path)
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


# --limits: each column, the first counter present of its candidates (names differ between ncu
# versions and architectures).
LIMITS = OrderedDict([
    ("us", ["gpu__time_duration.sum"]),
    ("issue%", ["sm__inst_issued.avg.pct_of_peak_sustained_active",
                "smsp__issue_active.avg.pct_of_peak_sustained_active"]),
    ("tensor%", ["sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active",
                 "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active",
                 "sm__inst_executed_pipe_tensor_op_hmma.avg.pct_of_peak_sustained_active",
                 "sm__inst_executed_pipe_tensor.avg.pct_of_peak_sustained_active",
                 re.compile(r"^sm__pipe_tensor\w*cycles_active\.avg\.pct_of_peak_sustained_active$")]),
    ("sm%", ["sm__throughput.avg.pct_of_peak_sustained_elapsed"]),
    ("l1%", ["l1tex__throughput.avg.pct_of_peak_sustained_active"]),
    ("l2%", ["lts__throughput.avg.pct_of_peak_sustained_elapsed"]),
    ("dram%", ["gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed",
               "dram__throughput.avg.pct_of_peak_sustained_elapsed"]),
    ("occ%", ["sm__warps_active.avg.pct_of_peak_sustained_active"]),
    ("wavefronts", ["l1tex__data_pipe_lsu_wavefronts_mem_shared.sum"]),
    ("conflicts", ["l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum"]),
    ("cpi", ["smsp__average_warp_latency_per_inst_issued.ratio",
             "smsp__average_warps_issue_stalled_per_issue_active.ratio"]),
])
STALL = re.compile(r"^smsp__average_warps?_(?:latency_)?issue_stalled_([a-z_]+?)_per_issue_active\.ratio$")


def read_raw(path):
    """The kernels of a `--page raw` CSV: [{column: text}], the units row dropped."""
    rows = [r for r in csv_rows(path) if (r.get("ID") or "").strip()]
    if not rows:
        sys.exit(f"ncu_summary: {path}: the CSV holds no kernel rows")
    if "Kernel Name" not in rows[0]:
        sys.exit(f"ncu_summary: {path}: the CSV has no column 'Kernel Name'")
    if not any(STALL.match(c) for c in rows[0]):
        print(f"ncu_summary: {path}: no stall-reason counters (was WarpStateStats collected?)", file=sys.stderr)
    return rows


def limits_row(r):
    """One kernel's columns, its largest stalls, and a first reading of its limit."""
    out = {"name": short_name(r["Kernel Name"])}
    for key, names in LIMITS.items():
        cols = [c for n in names for c in ([n] if isinstance(n, str) else sorted(filter(n.match, r)))]
        out[key] = next((number(r[c]) for c in cols if c in r and number(r[c]) is not None), None)
    if out["us"] is not None:
        out["us"] /= 1e3  # ns
    stalls = sorted(((number(v) or 0.0, m.group(1)) for c, v in r.items() if (m := STALL.match(c))), reverse=True)
    stalls = [(v, name) for v, name in stalls if name not in ("selected",)]  # issuing, not a stall
    out["stalls"] = stalls[:3]
    out["bound"] = reading(out)
    return out


def reading(k):
    """A first guess at the limit, for the table's last column; the counters are what to read."""
    issue, tensor = k.get("issue%"), k.get("tensor%")
    top = k["stalls"][0][1] if k["stalls"] else None
    if tensor is not None and tensor >= 60:
        return "tensor pipe"
    if issue is not None and issue >= 70:
        return "instruction issue"
    if any(k.get(c) is not None and k[c] >= 70 for c in ("dram%", "l2%", "l1%")):
        return "memory throughput (" + max(("dram%", "l2%", "l1%"), key=lambda c: k.get(c) or 0)[:-1] + ")"
    return {
        "long_scoreboard": "global-memory latency",
        "barrier": "barrier waits",
        "mio_throttle": "shared-memory queue",
        "short_scoreboard": "shared-memory latency",
        "lg_throttle": "global load/store queue",
        "math_pipe_throttle": "a math pipe",
        "wait": "fixed-latency dependencies",
        "not_selected": "instruction issue",
    }.get(top, top or "-")


# The convolution products of a squeezenet1.0 step in launch order (CudaModel: the forward layer by
# layer; the backward from conv10 down, each convolution's weight gradient, then its input gradient,
# none for conv1; a Fire's expand 1x1, expand 3x3, then squeeze): gpu_check.sh limits profiles
# the igemm kernels alone, 26 forwards then 51 backward products.
FIRES = ["fire%d" % i for i in range(2, 10)]
S10_CONVS = ["conv1"] + [f"{f} {c}" for f in FIRES for c in ("squeeze", "expand1x1", "expand3x3")] + ["conv10"]
S10_LABELS = {
    "fwd": S10_CONVS,
    "bwd": [f"{c} {p}" for c in ["conv10"] + [f"{f} {c}" for f in reversed(FIRES)
                                              for c in ("expand1x1", "expand3x3", "squeeze")]
            for p in ("dw", "dx")] + ["conv1 dw"],
}


def limits(path, labels=None):
    ks = [limits_row(r) for r in read_raw(path)]
    names = S10_LABELS.get(labels) if labels else None
    if labels and names is None:
        sys.exit(f"ncu_summary: --labels {labels}: not one of {', '.join(S10_LABELS)}")
    if names and len(names) != len(ks):
        print(f"ncu_summary: {path}: {len(ks)} kernels where --labels {labels} names {len(names)}; no labels",
              file=sys.stderr)
        names = None
    for i, k in enumerate(ks):
        if names:
            k["name"] = f"{names[i]}: {k['name']}"
    total = sum(k["us"] or 0 for k in ks)
    print(f"{path}: {len(ks)} kernels, {total / 1e3:.3f} ms\n")
    print("| # | kernel | us | issue % | tensor % | SM % | L1 % | L2 % | DRAM % | occupancy % | "
          "shared wavefronts (M) | of them conflicts % | cycles an instruction | largest stalls "
          "(cycles an instruction) | reading |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for i, k in enumerate(ks):
        wf, cf = k.get("wavefronts"), k.get("conflicts")
        conf = 100 * cf / wf if wf and cf is not None else None
        stalls = ", ".join(f"{name} {v:.1f}" for v, name in k["stalls"]) or "-"
        print(f"| {i} | {k['name']} | {fmt(k['us'], '.1f')} | {fmt(k['issue%'], '.0f')} | "
              f"{fmt(k['tensor%'], '.0f')} | {fmt(k['sm%'], '.0f')} | {fmt(k['l1%'], '.0f')} | "
              f"{fmt(k['l2%'], '.0f')} | {fmt(k['dram%'], '.0f')} | {fmt(k['occ%'], '.0f')} | "
              f"{fmt(wf / 1e6 if wf is not None else None, '.1f')} | {fmt(conf, '.0f')} | "
              f"{fmt(k['cpi'], '.1f')} | {stalls} | {k['bound']} |")
    by = defaultdict(float)
    for k in ks:
        by[k["bound"]] += k["us"] or 0
    print("\n| reading | ms | share |\n|---|---:|---:|")
    for name, us in sorted(by.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {us / 1e3:.3f} | {100 * us / total if total else 0:.0f} % |")


def fmt(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=15, help="families listed by time (default 15)")
    ap.add_argument("--limits", action="store_true", help="a --page raw CSV of the bottleneck sections")
    ap.add_argument("--labels", help="with --limits: name the rows as squeezenet1.0's products (fwd, bwd)")
    a = ap.parse_args()
    if a.limits:
        return limits(a.csv, a.labels)
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
