#!/usr/bin/env python3
"""PyTorch's side of the GPU training benchmark (issue 4): images/s of one SGD training step of
torchvision's squeezenet1_0 / squeezenet1_1 at 3x224x224 and of the Fashion-MNIST configuration
(squeezenet1_0 with conv1 3x3 stride 1 on 1x28x28, 10 classes), batch 128, on the GPU, with
cudnn.benchmark, channels_last and TF32 on; eager and torch.compile; and eager under BF16 autocast
(BF16 operands, fp32 accumulation and fp32 master weights: the arithmetic of squeeze's
--precision bf16), the same-precision comparison for its BF16 column. Run by
scripts/gpu_check.sh next to build/bench_gpu on the same GPU. --device cpu runs every path a
couple of steps small on the CPU (a smoke test of the script; its rates mean nothing).

    python3 bench/pytorch_gpu.py [--steps 20] [--batch 128] [--json FILE] [--no-compile]
                                 [--bf16-compile] [--device cpu]
"""
import contextlib
import argparse
import json
import time

import torch
import torchvision


def model_for(name):
    if name == "fmnist":
        m = torchvision.models.squeezenet1_0(num_classes=10)
        m.features[0] = torch.nn.Conv2d(1, 96, kernel_size=3, stride=1, padding=1)
        return m, (1, 28, 28), 10
    ctor = getattr(torchvision.models, name.replace(".", "_"))
    return ctor(num_classes=1000), (3, 224, 224), 1000


def images_per_s(name, batch, steps, compile_, bf16=False, device="cuda"):
    torch.manual_seed(0)
    model, shape, classes = model_for(name)
    model = model.to(device).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    x = torch.randn(batch, *shape, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        opt.zero_grad(set_to_none=True)
        # BF16 autocast: the convolutions' operands in bfloat16, accumulation and weights fp32.
        with torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    fn = torch.compile(step) if compile_ else step
    for _ in range(5 if not compile_ else 10):
        fn()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    return batch / times[len(times) // 2]


def matmul_ceilings():
    """The arithmetic ceilings for the notes' floors: fp32 (no TF32), TF32 and bf16 products."""
    out = {}
    n = 8192
    for name, dtype, tf32 in [("fp32", torch.float32, False), ("tf32", torch.float32, True),
                              ("bf16", torch.bfloat16, False)]:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        x = torch.randn(n, n, device="cuda", dtype=dtype)
        y = torch.randn(n, n, device="cuda", dtype=dtype)
        for _ in range(3):
            x @ y
        ts = []
        for _ in range(10):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            x @ y
            e.record()
            e.synchronize()
            ts.append(s.elapsed_time(e))
        ts.sort()
        out[name] = 2 * n ** 3 / (ts[len(ts) // 2] * 1e-3) / 1e12
    torch.backends.cuda.matmul.allow_tf32 = True
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--json")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--bf16-compile", action="store_true", help="also torch.compile under BF16 autocast")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    a = ap.parse_args()
    cpu = a.device == "cpu"
    if cpu:  # the smoke test: every path, small
        a.steps, a.batch = min(a.steps, 2), min(a.batch, 2)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    names = ["squeezenet1.0", "squeezenet1.1", "fmnist"]
    # (mode, torch.compile, BF16 autocast): eager first for every configuration, then
    # torch.compile (slow to compile).
    modes = [("eager", False, False), ("eager_bf16", False, True)]
    modes += [] if a.no_compile else [("compile", True, False)]
    modes += [("compile_bf16", True, True)] if a.bf16_compile else []
    rows = {n: {"config": n, **{f"{m}_img_s": None for m, _, _ in modes}} for n in names}

    ceilings = {}
    device_name = "cpu" if cpu else torch.cuda.get_device_name(0)

    def save():  # after every measurement: a time limit keeps what was measured
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"device": device_name, "torch": torch.__version__,
                           "matmul_tflops": ceilings, "rows": list(rows.values())}, f, indent=2)

    print(f"pytorch_gpu: torch {torch.__version__}, {device_name}, batch {a.batch}, "
          f"median of {a.steps} steps, TF32 on, channels_last, cudnn.benchmark")
    if not cpu:
        ceilings.update(matmul_ceilings())
        print("matrix-product ceilings (8192^3, random data, median of 10): " +
              ", ".join(f"{k} {v:.0f} TFLOP/s" for k, v in ceilings.items()))
    failed = 0
    for mode, compile_, bf16 in modes:
        for name in names:
            t = time.perf_counter()
            try:
                r = images_per_s(name, a.batch, a.steps, compile_, bf16, a.device)
            except Exception as e:  # report, don't hide: compile can fail without a toolchain
                print(f"{mode} failed for {name}: {type(e).__name__}: {e}")
                failed += not compile_  # (torch.compile may be missing: not an error of ours)
                continue
            rows[name][f"{mode}_img_s"] = r
            print(f"{name} {mode}: {r:.0f} img/s ({time.perf_counter() - t:.0f} s with warm-up)")
            save()
    heads = {"eager": "eager", "eager_bf16": "eager BF16", "compile": "torch.compile",
             "compile_bf16": "torch.compile BF16"}
    print("| config | " + " | ".join(f"{heads[m]} img/s" for m, _, _ in modes) + " |")
    print("|---|" + "---:|" * len(modes))
    for r in rows.values():
        cells = [f"{r[m + '_img_s']:.0f}" if r[m + "_img_s"] else "-" for m, _, _ in modes]
        print(f"| {r['config']} | " + " | ".join(cells) + " |")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
