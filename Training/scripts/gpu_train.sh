#!/usr/bin/env bash
# One command that trains a brain SR model in the adapted TAEF2 latent space on a lent GPU machine,
# within a fixed time, from what travels with the repository (no network there).
#
#   bash Training/scripts/gpu_train.sh prepare        # here, once: .gpu/ (wheels + the training tiles)
#   bash Training/scripts/gpu_train.sh run OUT_DIR    # there: train, then OUT_DIR/$MODEL-taef2.tar.gz
#
# MODEL (environment) picks the training set, the same for both steps: brain-sr4 (default; 4x in-plane,
# brain-sr4's tiles), brain-thick5 (5 mm slices to 1 mm, brain-thick5's tiles), both in the shipped
# taef2-brain space, or cxr-sr4 (4x radiographs, cxr-sr4's images, generic TAEF2 carried as .gpu/taef2).
# `prepare` needs the repository's virtual environment (.venv, or python on PATH with LatentSR installed)
# and ../shared/data; it writes .gpu/wheels (the Python packages the GPU image lacks: MONAI, ignite,
# diffusers, pydicom, PyWavelets, fire; about 15 MiB) and .gpu/$MODEL.npz (the model's training tiles,
# HR only: 7.5 MiB for brain-sr4; the LR inputs are made again there with the task's own operator).
# With the tracked files that is about 60 MiB, under the 64 MiB a lent machine takes with a command:
# carry .gpu/wheels and the one pack the run needs (and .gpu/taef2 for cxr-sr4).
#
# `run` trains for GPU_MINUTES (default 6.5) of wall time after the latent cache, validates the last
# weights, exports the best model and packs it with its logs into OUT_DIR/$MODEL-taef2.tar.gz.
# Unpack it here and package it as the README's "Training on a GPU" section shows.
# Overrides (environment): GPU_MINUTES, PRESET (small; cxr-sr4: compact), BATCH (32), LEARNING_RATE (0.0002), WORKERS (4),
# LOG_INTERVAL (50), PACK, VAE, WORK (runs/gpu), PYTHON, and EXTRA_ARGS (more bundle options, e.g. "--pixel_crop 8").
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
GPU_DIR=$ROOT/.gpu
MODEL=${MODEL:-brain-sr4}
DATA=${SHARED_DATA:-$ROOT/../shared/data}
BRAIN_SCANS=(niivue-otsu-t1 seg3d-MR-T1 fnndsc-sag-anon-3yo-T1w studyforrest-example-T1w niivue-flair cstar-stroke-T1)
# the shipped models' own tile recipes (their cards), so that the latent spaces compare on equal data
case "$MODEL" in
    brain-sr4|brain-thick5)
        SOURCES=("${BRAIN_SCANS[@]/#/$DATA/brain/}"); SOURCES=("${SOURCES[@]/%/.nii.gz}")
        SELECT=(--every 3 --max-slices 24 --val 'niivue-flair*' --val 'cstar*')
        if [ "$MODEL" = brain-sr4 ]; then SELECT+=(--task sr4 --axis axial --axis coronal)
        else SELECT+=(--task thick5 --axis coronal --axis sagittal); fi
        VAE=${VAE:-tiny:$ROOT/Training/autoencoders/taef2-brain}
        RECIPE=(--preset "${PRESET:-small}" --latent_loss_weight 0.1) ;;
    cxr-sr4)  # generic TAEF2 (no chest adaptation ships), carried in .gpu/taef2; the shipped cxr-sr4's recipe
        # (its card) on the six NIH sample images: its twelve training radiographs would not fit the 64 MiB
        SOURCES=("$DATA"/cxr/nih-cxr14-{0,1,2,3,4}.png "$DATA"/cxr/nih-cxr14-00027426_000.png)
        SELECT=(--task sr4 --val nih-cxr14-3 --test nih-cxr14-4)
        VAE=${VAE:-tiny:$GPU_DIR/taef2}
        RECIPE=(--preset "${PRESET:-compact}" --latent_loss_weight 0.01 --decoding lr_residual) ;;
    *) echo "gpu_train: MODEL must be brain-sr4, brain-thick5 or cxr-sr4, not $MODEL" >&2; exit 2 ;;
esac
PACK=${PACK:-$GPU_DIR/$MODEL.npz}
PYTHON=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}

prepare() {
    local dataset=$ROOT/runs/gpu-$MODEL-tiles
    mkdir -p "$GPU_DIR/wheels"
    if [ ! -f "$dataset/dataset.json" ]; then
        "$PYTHON" -m LatentSRLib.cli prepare "${SOURCES[@]}" -o "$dataset" --size 128 --fit tile "${SELECT[@]}" \
            --val-fraction 0 --test-fraction 0
    fi
    if [ "$MODEL" = cxr-sr4 ]; then mkdir -p "$GPU_DIR/taef2" && cp -f "$DATA"/weights/taef2/* "$GPU_DIR/taef2/"; fi
    "$PYTHON" Training/scripts/pack_dataset.py pack "$dataset" "$PACK" --derive-lr
    # the GPU image has torch, numpy, scipy, safetensors, huggingface-hub, PyYAML, tensorboard (its package
    # list); these are what LatentSR's training imports beyond them, at the versions installed here
    local wheels=()
    for name in monai pytorch-ignite diffusers importlib_metadata pydicom PyWavelets fire termcolor; do
        wheels+=("$name==$("$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
    done
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$GPU_DIR/wheels" "${wheels[@]}"
    du -sh "$GPU_DIR"/wheels "$PACK"
}

run() {
    local out=${1:?usage: gpu_train.sh run OUT_DIR}
    local work=${WORK:-$ROOT/runs/gpu}
    mkdir -p "$out" "$work/sr"
    out=$(cd "$out" && pwd)  # relative paths are the repository root's (the script works from there)
    if ! "$PYTHON" -c "import monai, ignite, diffusers, pywt, pydicom, fire" 2>/dev/null; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/latentsr-site \
            "$GPU_DIR"/wheels/*.whl
        export PYTHONPATH=/tmp/latentsr-site${PYTHONPATH:+:$PYTHONPATH}
    fi
    export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
    "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    "$PYTHON" Training/scripts/pack_dataset.py unpack "$PACK" "$work/dataset"
    local started=$SECONDS
    # the CPU recipe (README) scaled to a GPU's batch: x0 prediction from the LR latent (condition skip),
    # half of each batch at the last timestep (one-step sampling starts there), pixel L1 through the frozen
    # decoder with a small latent term
    # shellcheck disable=SC2086
    "$PYTHON" -m monai.bundle run training --meta_file Training/configs/metadata.json \
        --config_file Training/configs/train.yaml --logging_file Training/configs/logging.conf \
        --dataset_dir "$work/dataset" --vae "$VAE" --output_dir "$work/sr" \
        "${RECIPE[@]}" --condition_skip true --objective#terminal_fraction 0.5 \
        --pixel_loss_weight 1.0 --batch_size "${BATCH:-32}" \
        --learning_rate "${LEARNING_RATE:-0.0002}" --warmup_iterations 200 --max_iterations 1000000 \
        --time_limit_minutes "${GPU_MINUTES:-6.5}" --val_interval 500 --val_images 64 --val_steps 1 \
        --sampling_steps 1 --checkpoint_interval 500 --num_workers "${WORKERS:-4}" --log_interval "${LOG_INTERVAL:-50}" ${EXTRA_ARGS:-} \
        > "$work/sr/stdout.log" 2>&1 || { tail -n 30 "$work/sr/stdout.log"; echo "gpu_train: training failed" >&2; exit 1; }
    echo "trained and exported in $((SECONDS - started)) s; validation (one step, 64 tiles of the validation subjects):"
    cat "$work/sr/val_log.csv"
    (cd "$work/sr" && tar -czf "$out/$MODEL-taef2.tar.gz" model stdout.log $(ls train_log.csv val_log.csv 2>/dev/null))
    ls -la "$out"
}

case "${1:-}" in
    prepare) prepare ;;
    run) shift; run "$@" ;;
    *) echo "usage: $0 prepare | run OUT_DIR" >&2; exit 2 ;;
esac
