#!/usr/bin/env bash
# The measurements of docs/COMPRESSION.md, from the repository root after a build:
#   bash bench/compression.sh [OUT_DIR]     (default runs/compression; about 1.5 hours on 2 cores)
# 1. the default job's dense weights (squeeze train, 3 epochs of Fashion-MNIST; reused if present);
# 2. Fashion-MNIST: the paper's pruning, then 8, 6 and 4 bits, one epoch of retraining after
#    pruning and one of codebook fine-tuning, accuracy after each stage; 6 bits with three each;
# 3. the squeezenet1.0 layout with 1000 classes at 8 and 6 bits, for torchvision-initialised
#    weights and for a hybrid with the trained Fire modules (bench/compression_weights.py; needs
#    python3-torch), no retraining (no data set of that shape here).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/compression}
sq=./build/squeeze
mkdir -p "$out"
[ -f "$out/dense/weights.safetensors" ] || $sq train --out "$out/dense" --overwrite | tee "$out/dense.log"
for b in 8 6 4; do
  $sq compress --weights "$out/dense/weights.safetensors" --out "$out/fmnist$b.sqz" --bits $b \
    --dataset fashion-mnist --retrain-epochs 1 --lr 0.002 | tee "$out/fmnist$b.log"
  $sq eval --weights "$out/fmnist$b.sqz" | tee -a "$out/fmnist$b.log"
done
$sq compress --weights "$out/dense/weights.safetensors" --out "$out/fmnist6_e3.sqz" --bits 6 \
  --dataset fashion-mnist --retrain-epochs 3 --lr 0.002 | tee "$out/fmnist6_e3.log"
python3 bench/compression_weights.py "$out/dense/weights.safetensors" "$out"
for w in init hybrid; do
  for b in 8 6; do
    $sq compress --weights "$out/$w.safetensors" --out "$out/${w}1000_$b.sqz" --bits $b | tee "$out/${w}1000_$b.log"
  done
done
