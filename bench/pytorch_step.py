#!/usr/bin/python3
"""One SGD training step of torchvision's SqueezeNet on PyTorch's CPU build: the reference that
bench/bench_step.cpp is compared with (bench/compare_step.sh runs both).

Step: model.train(); optimizer.zero_grad(); loss = CrossEntropyLoss(model(x), y);
loss.backward(); optimizer.step() with SGD(lr=0.01, momentum=0.9, weight_decay=2e-4).
Random input (N(0,1)) and labels, fixed for the run. Warm-up steps, then timed steps until
--min-time seconds have passed (and at least --min-iters steps). Prints one JSON object.

Configurations (as bench_step's):
  squeezenet1.0  torchvision squeezenet1_0, 3x224x224, 1000 classes
  squeezenet1.1  torchvision squeezenet1_1, 3x224x224, 1000 classes
  fmnist         squeezenet1_0(num_classes=10) with features[0] = Conv2d(1, 96, 3, 1, 1), 1x28x28

Use Debian's interpreter (/usr/bin/python3), which has python3-torch and python3-torchvision.
--profile prints torch.autograd.profiler's per-op table (self CPU time) for a few steps instead.
--info prints what PyTorch's CPU backend uses (mkldnn, OpenMP, build config) and exits.
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torchvision

CONFIGS = ("squeezenet1.0", "squeezenet1.1", "fmnist")


def build(config):
    if config == "squeezenet1.0":
        return torchvision.models.squeezenet1_0(), (3, 224, 224), 1000
    if config == "squeezenet1.1":
        return torchvision.models.squeezenet1_1(), (3, 224, 224), 1000
    if config == "fmnist":
        m = torchvision.models.squeezenet1_0(num_classes=10)
        m.features[0] = nn.Conv2d(1, 96, kernel_size=3, stride=1, padding=1)
        return m, (1, 28, 28), 10
    raise SystemExit(f"unknown config {config!r} (known: {', '.join(CONFIGS)})")


def backend_info():
    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "mkldnn_available": torch.backends.mkldnn.is_available(),
        "mkldnn_enabled": torch.backends.mkldnn.enabled,
        "mkl_available": torch.backends.mkl.is_available(),
        "openmp_available": torch.backends.openmp.is_available(),
        "default_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability()
        if hasattr(torch.backends, "cpu") and hasattr(torch.backends.cpu, "get_cpu_capability")
        else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default="squeezenet1.0", choices=CONFIGS)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="0: all cores (os.cpu_count())")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--min-time", type=float, default=3.0, help="seconds of timed steps")
    ap.add_argument("--min-iters", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true", help="per-op profile of a few steps")
    ap.add_argument("--info", action="store_true", help="print the CPU backend info and exit")
    a = ap.parse_args()

    default_threads = torch.get_num_threads()
    threads = a.threads if a.threads > 0 else (len(os.sched_getaffinity(0)) or os.cpu_count())
    torch.set_num_threads(threads)
    if a.info:
        info = backend_info()
        info["default_threads"] = default_threads
        info["threads"] = torch.get_num_threads()
        print(json.dumps(info, indent=1))
        print(torch.__config__.show())
        print(torch.__config__.parallel_info())
        return

    torch.manual_seed(a.seed)
    model, shape, classes = build(a.config)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    crit = nn.CrossEntropyLoss()
    x = torch.randn(a.batch, *shape)
    y = torch.randint(0, classes, (a.batch,))

    loss_box = [None]

    def step():
        opt.zero_grad()  # 1.13 default set_to_none=False: zero-fills, as bench_step does
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        loss_box[0] = loss

    for _ in range(a.warmup):
        step()

    if a.profile:
        from torch.autograd import profiler

        with profiler.profile() as prof:
            for _ in range(max(a.min_iters, 3)):
                step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
        return

    iters = 0
    t0 = time.perf_counter()
    while True:
        step()
        iters += 1
        el = time.perf_counter() - t0
        if el >= a.min_time and iters >= a.min_iters:
            break
    res = {
        "config": a.config,
        "batch": a.batch,
        "threads": torch.get_num_threads(),
        "iterations": iters,
        "seconds": el,
        "ms_per_step": 1e3 * el / iters,
        "images_per_s": a.batch * iters / el,
        "loss": float(loss_box[0]),
        "torch": torch.__version__,
        "mkldnn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
    }
    print(json.dumps(res))


if __name__ == "__main__":
    sys.exit(main())
