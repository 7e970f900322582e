#!/usr/bin/env bash
# Recipe for the embedded default network assets/edm-fmnist32-cond.pkl:
# Fashion-MNIST (train split, 60k images, 10 classes) padded to 32x32, EDM preconditioning + EDMLoss,
# SongUNet DDPM++ (cbase 32, cres 1,2,2: 2,740,545 parameters, ~11.2 MB pickle), class-conditional, fixed seed.
#
# Usage: scripts/train_default.sh            (full run; on one contended CPU core ~320 s/kimg at BATCH=64, so
#                                             0.2 Mimg is ~18 h: prefer DEVICE=cuda or NPROC>1)
#        DURATION=0.0005 WORK=/tmp/edm-default scripts/train_default.sh   (smoke test; 1 kimg minimum)
# Variables: DURATION (Mimg), BATCH, BATCH_GPU, LR, EMA (Mimg), TICK, SNAP, DUMP, SEED, WORKERS, DEVICE, NPROC,
#            WORK (scratch folder), FMNIST (folder holding train-images-idx3-ubyte.gz + labels),
#            DEST (where the final snapshot is copied; default assets/edm-fmnist32-cond.pkl).
# Fashion-MNIST comes from the Debian package dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python

DURATION="${DURATION:-0.2}"      # Mimg of training images shown
BATCH="${BATCH:-128}"
BATCH_GPU="${BATCH_GPU:-}"
LR="${LR:-1e-3}"
EMA="${EMA:-0.05}"               # EMA half-life in Mimg
TICK="${TICK:-10}"
SNAP="${SNAP:-10}"
DUMP="${DUMP:-50}"
SEED="${SEED:-1}"
WORKERS="${WORKERS:-1}"
DEVICE="${DEVICE:-}"
NPROC="${NPROC:-1}"
WORK="${WORK:-$ROOT/training-runs/edm-fmnist32-cond}"
FMNIST="${FMNIST:-/usr/share/datasets/fashion-mnist}"
DEST="${DEST:-$ROOT/assets/edm-fmnist32-cond.pkl}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ] || [ ! -f "$FMNIST/train-labels-idx1-ubyte.gz" ]; then
    echo "error: Fashion-MNIST not found in $FMNIST (apt-get install -y dataset-fashion-mnist, or set FMNIST)" >&2
    exit 1
fi

mkdir -p "$WORK"
DATA="$WORK/fmnist-32x32.zip"
if [ ! -f "$DATA" ]; then
    "$PYTHON" -m edm.dataset_tool --source="$FMNIST/train-images-idx3-ubyte.gz" --dest="$DATA"
fi

RUNS="$WORK/runs"
args=(--outdir="$RUNS" --data="$DATA" --cond=1 --arch=ddpmpp --precond=edm
      --cbase=32 --cres=1,2,2 --dropout=0.13 --augment=0 --xflip=0 --fp16=0
      --duration="$DURATION" --batch="$BATCH" --lr="$LR" --ema="$EMA"
      --tick="$TICK" --snap="$SNAP" --dump="$DUMP" --seed="$SEED" --workers="$WORKERS" --desc=default)
[ -n "$BATCH_GPU" ] && args+=(--batch-gpu="$BATCH_GPU")
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
