#!/usr/bin/env bash
# The GPU benchmark of the speed issue, as one command of a few minutes on a lent GPU machine:
#   bash Testing/benchmarks/gpu_check.sh [DATA_DIR]      (DATA_DIR: ../shared/data by default)
# 1. the `paper` denoiser preset (untrained: speed does not depend on the weights) on a 256 x 256
#    grid: the engine against the one-slice loop, then a 155-slice volume at 16 and 100 steps;
# 2. the shipped brain-sr4 on the real 4 mm scan of the 155-slice BraTS FLAIR at its defaults, K = 1 and K = 4,
#    and the paper's path (100 steps, one tile at a time, no data consistency) on 8 slices.
# Every line it prints is a figure for the README's speed table.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA="${1:-../shared/data}"
PY="${PYTHON:-.venv/bin/python}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$PY" Testing/benchmarks/bench_volume.py --preset paper --size 256 --slices 32 --steps 16
"$PY" Testing/benchmarks/bench_real_scan.py --scan "$DATA/brain/BraTS-GLI-00001-000-t2f.nii.gz" --slices 0 \
    --samples 1 4 --skip-paper
"$PY" Testing/benchmarks/bench_real_scan.py --scan "$DATA/brain/BraTS-GLI-00001-000-t2f.nii.gz" --slices 8
