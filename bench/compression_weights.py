#!/usr/bin/env python3
"""Weight files of the squeezenet1.0 layout with 1000 classes (3x224x224) for the compressed-size
measurement of docs/COMPRESSION.md, where no ImageNet-trained weights are at hand:

  init     torchvision's own initialisation of squeezenet1_0 (kaiming-uniform convolutions,
           conv10 ~ N(0, 0.01), zero biases): close to uniform weights, the hard case for Huffman
  hybrid   fire2-fire9 from a squeezenet1.0 trained by squeeze on Fashion-MNIST (the same Fire
           shapes), conv1 and conv10 from torchvision's initialisation

    python3 bench/compression_weights.py TRAINED.safetensors OUT_DIR

Writes OUT_DIR/init.safetensors and OUT_DIR/hybrid.safetensors with squeeze's metadata. Needs
numpy and Debian's python3-torch/python3-torchvision (for the initialisation only).
"""
import json
import struct
import sys

import numpy as np
import torch
import torchvision


def read_safetensors(path):
    with open(path, "rb") as f:
        b = f.read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = b[8 + n:]
    tensors = {}
    for name, t in header.items():
        assert t["dtype"] == "F32", name
        s, e = t["data_offsets"]
        tensors[name] = np.frombuffer(data[s:e], dtype="<f4").reshape(t["shape"])
    return tensors, meta


def write_safetensors(path, tensors, meta):
    header, offset, chunks = {"__metadata__": meta}, 0, []
    for name, a in tensors.items():
        raw = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        chunks.append(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(chunks))


def main():
    trained, meta = read_safetensors(sys.argv[1])
    out = sys.argv[2]
    torch.manual_seed(0)
    init = {k: v.numpy() for k, v in torchvision.models.squeezenet1_0(num_classes=1000).state_dict().items()}
    model = json.loads(meta["squeeze.model"])
    assert model["model"] == "squeezenet1.0", "the trained weights must be a squeezenet1.0"
    model.update({"classes": 1000, "input": [3, 224, 224], "stem": "imagenet"})
    m = {"squeeze.kind": "weights", "squeeze.model": json.dumps(model, separators=(",", ":"))}
    write_safetensors(f"{out}/init.safetensors", init, m)
    hybrid = dict(init)
    for k, v in trained.items():
        if k.startswith("features.") and k != "features.0.weight" and k != "features.0.bias":
            assert hybrid[k].shape == v.shape, k
            hybrid[k] = v
    write_safetensors(f"{out}/hybrid.safetensors", hybrid, m)
    print(f"wrote {out}/init.safetensors and {out}/hybrid.safetensors")


if __name__ == "__main__":
    main()
