#!/usr/bin/env python3
"""PyTorch's side of the GPU training benchmark (issue 4): images/s of one SGD training step of
torchvision's squeezenet1_0 / squeezenet1_1 at 3x224x224 and of the Fashion-MNIST configuration
(squeezenet1_0 with conv1 3x3 stride 1 on 1x28x28, 10 classes), batch 128, on the GPU, with
cudnn.benchmark, channels_last and TF32 on; eager and torch.compile. Run by
scripts/gpu_check.sh next to build/bench_gpu on the same GPU.

    python3 bench/pytorch_gpu.py [--steps 20] [--batch 128] [--json FILE] [--no-compile]
"""
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


def images_per_s(name, batch, steps, compile_):
    torch.manual_seed(0)
    model, shape, classes = model_for(name)
    model = model.cuda().to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    x = torch.randn(batch, *shape, device="cuda").to(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device="cuda")
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    fn = torch.compile(step) if compile_ else step
    for _ in range(5 if not compile_ else 10):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
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
    a = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    names = ["squeezenet1.0", "squeezenet1.1", "fmnist"]
    rows = {n: {"config": n, "eager_img_s": None, "compile_img_s": None} for n in names}

    ceilings = {}

    def save():  # after every measurement: a time limit keeps what was measured
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                           "matmul_tflops": ceilings, "rows": list(rows.values())}, f, indent=2)

    print(f"pytorch_gpu: torch {torch.__version__}, {torch.cuda.get_device_name(0)}, batch {a.batch}, "
          f"median of {a.steps} steps, TF32 on, channels_last, cudnn.benchmark")
    ceilings.update(matmul_ceilings())
    print("matrix-product ceilings (8192^3, random data, median of 10): " +
          ", ".join(f"{k} {v:.0f} TFLOP/s" for k, v in ceilings.items()))
    # Eager first for every configuration, then torch.compile (slow to compile).
    for mode in ["eager"] + ([] if a.no_compile else ["compile"]):
        for name in names:
            t = time.perf_counter()
            try:
                r = images_per_s(name, a.batch, a.steps, mode == "compile")
            except Exception as e:  # report, don't hide: compile can fail without a toolchain
                print(f"{mode} failed for {name}: {type(e).__name__}: {e}")
                continue
            rows[name][f"{mode}_img_s"] = r
            print(f"{name} {mode}: {r:.0f} img/s ({time.perf_counter() - t:.0f} s with warm-up)")
            save()
    print("| config | eager img/s | torch.compile img/s |\n|---|---:|---:|")
    for r in rows.values():
        c = f"{r['compile_img_s']:.0f}" if r["compile_img_s"] else "-"
        e = f"{r['eager_img_s']:.0f}" if r["eager_img_s"] else "-"
        print(f"| {r['config']} | {e} | {c} |")


if __name__ == "__main__":
    main()
