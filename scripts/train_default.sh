#!/usr/bin/env bash
# Recipe for the embedded default network assets/edm-fmnist28-cond.pkl:
# Fashion-MNIST (train split, 60k images, 10 classes) at its native 28x28, EDM preconditioning + EDMLoss,
# SongUNet DDPM++ (cbase 32, cres 1,2,2, 2 blocks per resolution, no attention: 1,703,041 parameters),
# class-conditional, no dropout or augmentation, batch 64, lr 1e-3 after a 5-kimg ramp-up, fixed seed.
#
# Usage: scripts/train_default.sh            (full run: 1 Mimg; ~13 s/kimg on 2 CPU cores with 2 threads)
#        RESUME=RUN_DIR/training-state-NNNNNN.pt scripts/train_default.sh   (continue a stopped run)
#        DURATION=0.001 WORK=/tmp/edm-default scripts/train_default.sh     (smoke test; 1 kimg minimum)
# Variables: DURATION (Mimg), BATCH, LR, RAMPUP (kimg), EMA (Mimg), TICK, SNAP, DUMP, SEED, DEVICE, NPROC, RESUME,
#            WORK (scratch folder), FMNIST (folder holding train-images-idx3-ubyte.gz + labels),
#            DEST (where the final snapshot is copied; default assets/edm-fmnist28-cond.pkl).
# Fashion-MNIST comes from the Debian package dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist).
# On a shared CPU, OMP_WAIT_POLICY=PASSIVE lets other jobs share the cores without stalling the run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python

DURATION="${DURATION:-1}"        # Mimg of training images shown
BATCH="${BATCH:-64}"
LR="${LR:-1e-3}"
RAMPUP="${RAMPUP:-5}"            # learning-rate ramp-up in kimg
EMA="${EMA:-0.05}"               # EMA half-life in Mimg (capped at 5% of the images shown)
TICK="${TICK:-10}"
SNAP="${SNAP:-5}"
DUMP="${DUMP:-5}"
SEED="${SEED:-1}"
DEVICE="${DEVICE:-}"
NPROC="${NPROC:-1}"
RESUME="${RESUME:-}"
WORK="${WORK:-$ROOT/training-runs/edm-fmnist28-cond}"
FMNIST="${FMNIST:-/usr/share/datasets/fashion-mnist}"
DEST="${DEST:-$ROOT/assets/edm-fmnist28-cond.pkl}"

if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ] || [ ! -f "$FMNIST/train-labels-idx1-ubyte.gz" ]; then
    echo "error: Fashion-MNIST not found in $FMNIST (apt-get install -y dataset-fashion-mnist, or set FMNIST)" >&2
    exit 1
fi

mkdir -p "$WORK"
DATA="$WORK/fmnist-28x28.zip"
if [ ! -f "$DATA" ]; then
    "$PYTHON" -m edm.dataset_tool --source="$FMNIST/train-images-idx3-ubyte.gz" --dest="$DATA" --resolution=28x28
fi

RUNS="$WORK/runs"
args=(--outdir="$RUNS" --data="$DATA" --cond=1 --arch=ddpmpp --precond=edm
      --cbase=32 --cres=1,2,2 --blocks=2 --dropout=0 --augment=0 --xflip=0 --fp16=0
      --duration="$DURATION" --batch="$BATCH" --lr="$LR" --lr-rampup="$RAMPUP" --ema="$EMA"
      --tick="$TICK" --snap="$SNAP" --dump="$DUMP" --seed="$SEED" --workers=0 --desc=default)
[ -n "$RESUME" ] && args+=(--resume="$RESUME")
[ -n "$DEVICE" ] && args+=(--device="$DEVICE")

if [ "$NPROC" -gt 1 ]; then
    "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m edm.train "${args[@]}"
else
    "$PYTHON" -m edm.train "${args[@]}"
fi

# The newest run directory and its last snapshot.
RUN_DIR="$(ls -d "$RUNS"/[0-9]*-default | sort | tail -n 1)"
SNAPSHOT="$(ls "$RUN_DIR"/network-snapshot-*.pkl | sort | tail -n 1)"
mkdir -p "$(dirname "$DEST")"
cp "$SNAPSHOT" "$DEST.tmp" && mv "$DEST.tmp" "$DEST"
echo "Copied $SNAPSHOT -> $DEST ($(stat -c %s "$DEST") bytes)"
