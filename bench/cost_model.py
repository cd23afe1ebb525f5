#!/usr/bin/python3
"""Ring-allreduce cost model: fit to bench_collectives' sweep, project to real interconnects.

    /usr/bin/python3 bench/cost_model.py --out docs/communication \
        runs/communication/collectives_np2.json [runs/communication/collectives_np4.json ...]

Model (ring allreduce of n bytes over p ranks: 2(p-1) steps, each moving n/p bytes per link):

    T(n, p) = 2(p-1) * alpha + 2(p-1)/p * n * beta

alpha: latency per step (s), beta: time per byte on one link (s/B) = 1 / link bandwidth.

1. Fit. alpha and beta by weighted least squares over the power-of-two sizes of every JSON given
   (all of --fit-methods; the named sizes are kept out of the fit and used to check it), weight
   1/T (so the residuals are relative errors: a 10 us size counts as much as a 100 ms one).
2. Check. Fitted against measured time for the named sizes at the measured p.
3. Projection. For each named interconnect, beta = 1 / its nominal bandwidth and an ASSUMED alpha
   (the fitted shared-memory alpha and beta describe a memory system, not a network, and are not
   used for the projection). Per-step allreduce time of the gradients at p = 2 .. 1024, and the
   best possible scaling efficiency with no overlap, T_compute / (T_compute + T_comm), at a fixed
   local batch (weak scaling), for the compute times given (measured ones are labelled so;
   anything else is an assumption and labelled as such).

Writes into --out: fit.md, projection.md (markdown tables), projection.csv, *.dat and
plots.gp (gnuplot), and the PNGs when gnuplot is installed (Debian: gnuplot-nox).
"""
import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np

GRADIENTS = [  # name, floats
    ("SqueezeNet 1.0", 1248424),
    ("AlexNet", 61100840),
]
FMNIST_FLOATS = 727306  # squeezenet1.0, small stem, 10 classes (docs/ARCHITECTURE.md)

# name, nominal bandwidth per link (GB/s = 1e9 B/s), ASSUMED latency per ring step (s).
INTERCONNECTS = [
    ("NVLink ring", 370e9, 2e-6),
    ("InfiniBand NDR (1 NIC)", 47e9, 5e-6),
    ("100 GbE", 12.5e9, 10e-6),
    ("25 GbE", 3.125e9, 15e-6),
    ("10 GbE", 1.25e9, 25e-6),
]
PS = [2 ** k for k in range(1, 11)]  # 2 .. 1024


def ring_time(n_bytes, p, alpha, beta):
    return 2 * (p - 1) * alpha + 2 * (p - 1) / p * n_bytes * beta


def load(paths, methods):
    rows = []
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        if doc.get("check_only"):
            sys.exit(f"{path}: a --check-only run has no times")
        for r in doc["rows"]:
            if r["method"] in methods:
                rows.append(dict(r, ranks=doc["ranks"], file=os.path.basename(path)))
    if not rows:
        sys.exit(f"no rows of methods {methods} in {paths}")
    return rows


def fit(rows, min_bytes):
    sweep = [r for r in rows if not r["name"] and r["bytes"] >= min_bytes]
    a = np.array([[2 * (r["ranks"] - 1), 2 * (r["ranks"] - 1) / r["ranks"] * r["bytes"]]
                  for r in sweep], dtype=float)
    t = np.array([r["time_us"] * 1e-6 for r in sweep])
    w = 1.0 / t
    coef, *_ = np.linalg.lstsq(a * w[:, None], t * w, rcond=None)
    clamped = coef[0] < 0
    if clamped:  # a negative latency means nothing: refit beta alone with alpha = 0
        b, *_ = np.linalg.lstsq(a[:, 1:] * w[:, None], t * w, rcond=None)
        coef = np.array([0.0, b[0]])
    rel = (a @ coef - t) / t
    return coef[0], coef[1], sweep, rel, clamped


def parse_compute(spec):
    # NAME=MS=GRADIENT_FLOATS[=assumed]
    parts = spec.split("=")
    if len(parts) not in (3, 4):
        raise argparse.ArgumentTypeError("--compute wants NAME=MS=FLOATS[=assumed]")
    return {"name": parts[0], "ms": float(parts[1]), "floats": int(parts[2]),
            "assumed": len(parts) == 4 and parts[3] == "assumed"}


def fmt_time(s):
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms" if s < 0.1 else f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+", help="bench_collectives --json outputs (any p)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--fit-methods", default="raw,thread",
                    help="methods whose rows are fitted together (default raw,thread)")
    ap.add_argument("--fit-min-bytes", type=int, default=8, help="smallest size fitted")
    ap.add_argument("--fit-large-bytes", type=int, default=1 << 20,
                    help="smallest size of the second, large-message fit (default 1 MiB)")
    ap.add_argument("--compute", type=parse_compute, action="append",
                    help="NAME=MS=GRADIENT_FLOATS[=assumed]: a per-step compute time and the "
                         "gradient it reduces (repeatable; default: the measured CPU steps of "
                         "docs/BENCHMARKS.md)")
    ap.add_argument("--gpu-compute-ms", type=float, default=None,
                    help="ASSUMED per-step GPU compute time of squeezenet1.0 (not measured): "
                         "adds rows for the SqueezeNet and AlexNet gradients labelled as assumed")
    ap.add_argument("--gpu-step", action="append", default=[], metavar="MS=LABEL",
                    help="a MEASURED per-step GPU compute time of squeezenet1.0 and what measured it: "
                         "adds rows for the SqueezeNet and AlexNet gradients (repeatable)")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    methods = args.fit_methods.split(",")

    computes = args.compute or [
        {"name": "squeezenet1.0 224², local batch 4, CPU (1 core/rank), measured",
         "ms": 383.5, "floats": 1248424, "assumed": False},
        {"name": "same step, AlexNet-sized gradient (as bench_ddp), measured",
         "ms": 383.5, "floats": 61100840, "assumed": False},
        {"name": "squeezenet1.0 Fashion-MNIST, local batch 64, CPU, measured",
         "ms": 400.6, "floats": FMNIST_FLOATS, "assumed": False},
    ]
    for spec in args.gpu_step:
        ms, sep, label = spec.partition("=")
        try:
            ms_v = float(ms)
        except ValueError:
            ms_v = -1.0
        if not sep or not label or not ms_v > 0:
            ap.error(f"--gpu-step {spec!r}: want MS=LABEL with MS > 0")
        for g, floats in GRADIENTS:
            computes.append({"name": f"{label}, {g} gradient",
                             "ms": ms_v, "floats": floats, "assumed": False})
    if args.gpu_compute_ms is not None:
        for g, floats in GRADIENTS:
            computes.append({"name": f"GPU step {args.gpu_compute_ms:g} ms (ASSUMED), {g} gradient",
                             "ms": args.gpu_compute_ms, "floats": floats, "assumed": True})

    # ---- fit ------------------------------------------------------------------------------
    rows = load(args.json, methods)
    ps_measured = sorted({r["ranks"] for r in rows})
    fit_md = []
    fit_md.append(f"Fits of T = 2(p−1)α + 2(p−1)/p·n·β, weighted least squares (weights 1/T, "
                  f"i.e. relative error), each method and p on its own, over the power-of-two "
                  f"sizes from the given smallest size up to the largest measured (files: "
                  f"{', '.join(sorted({r['file'] for r in rows}))}); α fixed at 0 where the "
                  f"free fit made it negative. The all-sizes fit of '{methods[0]}' is drawn "
                  f"in measured_time.png and checked below.\n")
    fit_md.append("| p | method | sizes fitted | points | α (per step) | β | 1/β | "
                  "relative residual: median \\|·\\| | max \\|·\\| |")
    fit_md.append("|---:|---|---|---:|---:|---:|---:|---:|---:|")
    fits = {}
    for p in ps_measured:
        for m in methods:
            for lo in (args.fit_min_bytes, args.fit_large_bytes):
                a_, b_, sweep, rel, clamped = fit(
                    [r for r in rows if r["method"] == m and r["ranks"] == p], lo)
                if m == methods[0] and lo == args.fit_min_bytes:
                    fits[p] = (a_, b_)
                lo_b = min(r["bytes"] for r in sweep)
                lo_s = f"{lo_b} B" if lo_b < 1024 else f"{lo_b // 1024} KiB"
                a_s = "0 (fixed)" if clamped else f"{a_ * 1e6:.2f} µs"
                fit_md.append(f"| {p} | {m} | {lo_s} – {max(r['bytes'] for r in sweep) // 2**20}"
                              f" MiB | {len(sweep)} | {a_s} | {b_ * 1e12:.1f} ps/B | "
                              f"{1e-9 / b_:.2f} GB/s | {np.median(np.abs(rel)) * 100:.0f} % | "
                              f"{np.max(np.abs(rel)) * 100:.0f} % |")
    fit_md.append("")
    fit_md.append(f"Check against the named sizes (not in the fits), measured median vs the "
                  f"all-sizes fit of {methods[0]} at the same p:\n")
    fit_md.append("| p | buffer | method | measured | fit | fit / measured |")
    fit_md.append("|---:|---|---|---:|---:|---:|")
    for r in rows:
        if r["name"]:
            t = r["time_us"] * 1e-6
            tf = ring_time(r["bytes"], r["ranks"], *fits[r["ranks"]])
            fit_md.append(f"| {r['ranks']} | {r['name']} | {r['method']} | {fmt_time(t)} | "
                          f"{fmt_time(tf)} | {tf / t:.2f} |")
    fit_text = "\n".join(fit_md) + "\n"
    with open(os.path.join(args.out, "fit.md"), "w") as f:
        f.write(fit_text)
    print(fit_text)

    # measured points and fit curve for the plot
    for p in ps_measured:
        for m in methods:
            with open(os.path.join(args.out, f"measured_np{p}_{m}.dat"), "w") as f:
                f.write("# bytes time_us busbw_GBps\n")
                for r in rows:
                    if r["ranks"] == p and r["method"] == m and not r["name"]:
                        f.write(f"{r['bytes']} {r['time_us']:.4f} {r['busbw_GBps']:.5f}\n")
        with open(os.path.join(args.out, f"fit_np{p}.dat"), "w") as f:
            for k in range(3, 29):
                n = 2 ** k
                f.write(f"{n} {ring_time(n, p, *fits[p]) * 1e6:.4f}\n")

    # ---- projection ------------------------------------------------------------------------
    md = []
    md.append("Assumed per-step latency α and nominal link bandwidth 1/β of each interconnect "
              "(bandwidths from the issue; latencies are ASSUMPTIONS, not measurements):\n")
    md.append("| interconnect | 1/β (GB/s) | α (assumed) |")
    md.append("|---|---:|---:|")
    for name, bw, a in INTERCONNECTS:
        md.append(f"| {name} | {bw / 1e9:g} | {a * 1e6:g} µs |")
    md.append("")
    out_csv = []
    for gname, floats in GRADIENTS:
        n = floats * 4
        md.append(f"**Per-step ring allreduce time, {gname} gradients ({floats:,} floats = "
                  f"{n:,} B), projected:**\n")
        md.append("| interconnect | " + " | ".join(f"p={p}" for p in PS) + " |")
        md.append("|---|" + "---:|" * len(PS))
        for name, bw, a in INTERCONNECTS:
            ts = [ring_time(n, p, a, 1 / bw) for p in PS]
            md.append(f"| {name} | " + " | ".join(fmt_time(t) for t in ts) + " |")
            for p, t in zip(PS, ts):
                out_csv.append({"kind": "comm_time", "gradient": gname, "floats": floats,
                                "interconnect": name, "p": p, "comm_s": t,
                                "compute": "", "compute_ms": "", "efficiency": ""})
        md.append("")
    md.append("**Best possible scaling efficiency T_compute / (T_compute + T_comm)** (no overlap "
              "of communication with backward, fixed local batch; p = 1 would be 100 %):\n")
    for c in computes:
        n = c["floats"] * 4
        tag = "ASSUMED compute time" if c["assumed"] else "measured compute time"
        md.append(f"*{c['name']}: T_compute = {c['ms']:g} ms ({tag}), gradient "
                  f"{c['floats']:,} floats*\n")
        md.append("| interconnect | " + " | ".join(f"p={p}" for p in PS) + " |")
        md.append("|---|" + "---:|" * len(PS))
        for name, bw, a in INTERCONNECTS:
            effs = []
            for p in PS:
                t = ring_time(n, p, a, 1 / bw)
                e = c["ms"] * 1e-3 / (c["ms"] * 1e-3 + t)
                effs.append(e)
                out_csv.append({"kind": "efficiency", "gradient": "", "floats": c["floats"],
                                "interconnect": name, "p": p, "comm_s": t, "compute": c["name"],
                                "compute_ms": c["ms"], "efficiency": e})
            md.append(f"| {name} | " + " | ".join(f"{e * 100:.1f} %" for e in effs) + " |")
        md.append("")
    proj_text = "\n".join(md) + "\n"
    with open(os.path.join(args.out, "projection.md"), "w") as f:
        f.write(proj_text)
    with open(os.path.join(args.out, "projection.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(out_csv[0].keys()))
        w.writeheader()
        w.writerows(out_csv)
    print(proj_text)

    # gnuplot data: one file per (gradient or compute), columns p then one per interconnect
    def table(path, fn):
        with open(path, "w") as f:
            f.write("# p " + " ".join(f'"{n}"' for n, _, _ in INTERCONNECTS) + "\n")
            for p in PS:
                f.write(f"{p} " + " ".join(f"{fn(p, a, 1 / bw):.9g}"
                                           for _, bw, a in INTERCONNECTS) + "\n")

    for gname, floats in GRADIENTS:
        slug = gname.split()[0].lower()
        table(os.path.join(args.out, f"comm_{slug}.dat"),
              lambda p, a, b, n=floats * 4: ring_time(n, p, a, b) * 1e3)
    for i, c in enumerate(computes):
        table(os.path.join(args.out, f"eff_{i}.dat"),
              lambda p, a, b, c=c: 100 * c["ms"] / (c["ms"] + ring_time(c["floats"] * 4, p, a, b) * 1e3))

    # ---- plots ---------------------------------------------------------------------------
    gp = []
    gp.append("# written by bench/cost_model.py; run from this folder: gnuplot plots.gp")
    gp.append("set terminal pngcairo size 900,560 enhanced font 'DejaVu Sans,10'")
    gp.append("set grid; set key left top; set logscale x 2")
    ncol = len(INTERCONNECTS)
    names = [n for n, _, _ in INTERCONNECTS]
    # measured
    gp.append("set output 'measured_time.png'")
    gp.append("set title 'Measured allreduce time (CPU, MPI processes on one host, shared memory)'")
    gp.append("set xlabel 'bytes'; set ylabel 'time (µs), median, slowest rank'; set logscale y")
    gp.append("set format x '2^{%L}'")
    plots = []
    for p in ps_measured:
        for m in methods:
            plots.append(f"'measured_np{p}_{m}.dat' u 1:2 w lp t 'p={p}, {m}'")
        plots.append(f"'fit_np{p}.dat' u 1:2 w l dt 2 lw 2 t 'fit, p={p}'")
    gp.append("plot " + ", ".join(plots))
    gp.append("set output 'measured_busbw.png'")
    gp.append("set title 'Measured bus bandwidth, algbw·2(p−1)/p (CPU, shared memory)'")
    gp.append("set ylabel 'busbw (GB/s)'; unset logscale y")
    plots = []
    for p in ps_measured:
        for m in methods:
            plots.append(f"'measured_np{p}_{m}.dat' u 1:3 w lp t 'p={p}, {m}'")
    gp.append("plot " + ", ".join(plots))
    gp.append("set format x '%g'")
    gp.append("set xlabel 'ranks p'; set logscale y; set key right bottom")
    for gname, floats in GRADIENTS:
        slug = gname.split()[0].lower()
        gp.append(f"set output 'projected_comm_{slug}.png'")
        gp.append(f"set title 'PROJECTION: ring allreduce of {gname} gradients "
                  f"({floats * 4 / 2**20:.1f} MiB) per step'")
        gp.append("set ylabel 'time per step (ms)'")
        gp.append("plot " + ", ".join(f"'comm_{slug}.dat' u 1:{j + 2} w lp t '{names[j]}'"
                                      for j in range(ncol)))
    gp.append("unset logscale y; set yrange [0:100]; set key left bottom")
    for i, c in enumerate(computes):
        gp.append(f"set output 'projected_efficiency_{i}.png'")
        title = c["name"].replace("_", "\\\\_").replace("²", "^2")
        gp.append(f"set title \"PROJECTION: best scaling efficiency, no overlap\\n{title}, "
                  f"T_{{compute}} = {c['ms']:g} ms\"")
        gp.append("set ylabel 'efficiency (%)'")
        gp.append("plot " + ", ".join(f"'eff_{i}.dat' u 1:{j + 2} w lp t '{names[j]}'"
                                      for j in range(ncol)))
    with open(os.path.join(args.out, "plots.gp"), "w") as f:
        f.write("\n".join(gp) + "\n")
    with open(os.path.join(args.out, "efficiency_index.md"), "w") as f:
        for i, c in enumerate(computes):
            f.write(f"- projected_efficiency_{i}.png: {c['name']}, {c['ms']:g} ms\n")
    if not args.no_plots:
        if shutil.which("gnuplot"):
            subprocess.run(["gnuplot", "plots.gp"], cwd=args.out, check=True)
            print(f"plots written to {args.out}")
        else:
            print("gnuplot not found (apt-get install gnuplot-nox): no PNGs", file=sys.stderr)


if __name__ == "__main__":
    main()
