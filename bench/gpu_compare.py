#!/usr/bin/env python3
"""Two bench_gpu JSON files of one lease side by side: each row both share, each column both
measured, the first run's value, the second's, and second ÷ first.

    python3 bench/gpu_compare.py FIRST.json SECOND.json [--columns REGEX]

scripts/gpu_check.sh bench prints bench_gpu_nopersist.json (SQUEEZE_IGEMM_PERSIST=0) against
bench_gpu.json this way. Rows are matched by their name (a convolution, a layer, a Fire module,
a training configuration); columns by --columns (default: the own kernels' TF32 and BF16 ones).
For times (ms) a ratio above 1 means the second run is slower; for rates (img/s) it is faster.
"""
import argparse
import json
import re
import sys

NAME_KEYS = ("conv", "layer", "config")


def rows_by_name(rows):
    out = {}
    for r in rows:
        key = next((r[k] for k in NAME_KEYS if k in r), None)
        if key is not None:
            out[key] = r
    return out


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"gpu_compare: {path}: {e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("first")
    ap.add_argument("second")
    ap.add_argument("--columns", default=r"^own (tf32|bf16)", help="regex over column names")
    a = ap.parse_args()
    want = re.compile(a.columns)
    first, second = load(a.first), load(a.second)
    shown = 0
    for section, rows in first.items():
        if not isinstance(rows, list) or not isinstance(second.get(section), list):
            continue
        f, s = rows_by_name(rows), rows_by_name(second[section])
        names = [n for n in f if n in s]
        cols = [c for c in (rows[0] if rows else {}) if want.search(c) and isinstance(rows[0][c], (int, float))]
        cols = [c for c in cols if any(c in s[n] for n in names)]
        if not names or not cols:
            continue
        print(f"\n### {section}: {a.second} against {a.first}\n")
        print("| " + " | ".join(["row"] + [f"{c}: first | second | ÷" for c in cols]) + " |")
        print("|---" + "|---:|---:|---:" * len(cols) + "|")
        for n in names:
            cells = []
            for c in cols:
                x, y = f[n].get(c), s[n].get(c)
                if isinstance(x, (int, float)) and isinstance(y, (int, float)):
                    cells += [f"{x:.4g}", f"{y:.4g}", f"{y / x:.3f}" if x else "-"]
                else:
                    cells += ["-", "-", "-"]
            print("| " + " | ".join([n] + cells) + " |")
        shown += 1
    if not shown:
        sys.exit(f"gpu_compare: {a.first} and {a.second} share no section, row and column")


if __name__ == "__main__":
    main()
