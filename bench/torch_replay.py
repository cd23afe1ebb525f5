#!/usr/bin/python3
"""Replays squeeze's training steps in PyTorch from the same initial weights.

Evidence that a training trajectory is the engine's and not a bug: starting from the weights a
squeeze run began with, torchvision's squeezenet1_0 (small stem: conv1 3x3/1 pad 1, 1 input
channel) takes full-batch SGD steps (momentum 0.9, weight decay 2e-4, constant lr, dropout off)
on the first N Fashion-MNIST training images normalised exactly as squeeze does, prints the loss
per step, and compares its final parameters with squeeze's tensor by tensor.

    # squeeze: initial weights (lr ~ 0 leaves them unchanged) and the weights after 5 steps
    ./build/squeeze train --train-limit 128 --batch-size 128 --dropout 0 --lr 1e-30 \
        --schedule constant --epochs 1 --test-limit 100 --out /tmp/replay0 --overwrite
    ./build/squeeze train --train-limit 128 --batch-size 128 --dropout 0 --lr 0.01 \
        --schedule constant --epochs 5 --test-limit 100 --out /tmp/replay5 --overwrite
    /usr/bin/python3 bench/torch_replay.py /tmp/replay0/weights.safetensors 5 \
        /tmp/replay5/weights.safetensors --n 128 --lr 0.01

Needs Debian's python3-torch and python3-torchvision; never part of the build or the tests.
"""
import argparse
import gzip
import json
import struct

import numpy as np
import torch
import torch.nn as nn
import torchvision

DATA = "/usr/share/datasets/fashion-mnist/"


def idx(path):
    b = gzip.open(path).read()
    return np.frombuffer(b, np.uint8, offset=16 if b[3] == 3 else 8)


def load_safetensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        assert v["dtype"] == "F32", f"{k}: {v['dtype']}"
        out[k] = torch.from_numpy(np.frombuffer(b[8 + n + s:8 + n + e], dtype=np.float32)
                                  .reshape(v["shape"]).copy())
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("init")
    ap.add_argument("steps", type=int)
    ap.add_argument("final", nargs="?")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.01)
    a = ap.parse_args()
    torch.set_num_threads(2)
    x = idx(DATA + "train-images-idx3-ubyte.gz").reshape(-1, 1, 28, 28)[:a.n].astype(np.float64) / 255
    y = torch.tensor(idx(DATA + "train-labels-idx1-ubyte.gz")[:a.n].astype(np.int64))
    x = torch.tensor(((x - x.mean()) / x.std()).astype(np.float32))  # squeeze: population std
    net = torchvision.models.squeezenet1_0(num_classes=10)
    net.features[0] = nn.Conv2d(1, 96, 3, 1, 1)
    net.load_state_dict(load_safetensors(a.init))
    net.eval()  # dropout off (squeeze: --dropout 0)
    opt = torch.optim.SGD(net.parameters(), lr=a.lr, momentum=0.9, weight_decay=2e-4)
    for step in range(a.steps):
        out = net(x)
        loss = nn.functional.cross_entropy(out, y)
        print(f"step {step}: loss {float(loss):.6f}  acc {float((out.argmax(1) == y).float().mean()):.4f}")
        opt.zero_grad()
        loss.backward()
        opt.step()
    if a.final:
        ours = load_safetensors(a.final)
        worst = max((float((v - ours[k]).norm() / v.norm()), k) for k, v in net.state_dict().items())
        print(f"largest relative parameter difference after {a.steps} steps: {worst[0]:.3g} ({worst[1]})")


if __name__ == "__main__":
    main()
