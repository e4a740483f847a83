#!/usr/bin/env bash
# One-go GPU benchmark: MAE-DET-S/M/L vs ResNet-50/101 (C2..C5 backbones) on every GPU backend this machine has:
# PyTorch CUDA fp32 / fp16 / channels-last fp16, ONNX Runtime CUDA and TensorRT EPs (with onnxruntime-gpu), and
# TensorRT engines (with tensorrt). Backends that cannot run are listed as skipped with the reason.
#
#   scripts/gpu_bench.sh [OUT_DIR] [extra maedet-bench flags...]     (default OUT_DIR: runs/bench-gpu)
#
# Environment: PYTHON (default .venv/bin/python if present, else python3), INPUT (default 640), BATCHES
# (default "1"; e.g. "1 8" adds batch-8 throughput, one more ONNX export and engine per model), ROUNDS (default 20),
# MAX_TIME (seconds for the whole run: once 5 rounds are done no round starts that would end later; default 0 =
# no limit), BACKENDS (comma list, default below).
# First run: ONNX exports and TensorRT engine builds take minutes; they are cached (~/.cache/maedet/bench).
# Writes OUT_DIR/bench-gpu.json, .csv and .png, and OUT_DIR/bench-gpu.txt (the table as printed).
set -euo pipefail

cd "$(dirname "$0")/.."
OUT_DIR="${1:-runs/bench-gpu}"
shift $(( $# > 0 ? 1 : 0 ))
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
INPUT="${INPUT:-640}"
BATCHES="${BATCHES:-1}"
ROUNDS="${ROUNDS:-20}"
MAX_TIME="${MAX_TIME:-0}"
BACKENDS="${BACKENDS:-torch-cuda,torch-cuda-fp16,torch-cuda-cl,torch-cuda-cl-fp16,ort-cuda,ort-cuda-fp16,ort-trt,ort-trt-fp16,trt,trt-fp16}"

if ! "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_bench.sh: error: PyTorch ($PYTHON) sees no CUDA device, so there is nothing to measure here." >&2
    exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
mkdir -p "$OUT_DIR"

# shellcheck disable=SC2086  # BATCHES is a list on purpose
"$PYTHON" -m maedet.bench.cli \
    --backends "$BACKENDS" \
    --input-size "$INPUT" \
    --batch-size $BATCHES \
    --rounds "$ROUNDS" --min-rounds 5 --warmup 5 \
    --max-time "$MAX_TIME" \
    --paper \
    --json "$OUT_DIR/bench-gpu.json" \
    --csv "$OUT_DIR/bench-gpu.csv" \
    --plot "$OUT_DIR/bench-gpu.png" \
    "$@" | tee "$OUT_DIR/bench-gpu.txt"
echo "gpu_bench.sh: results in $OUT_DIR (bench-gpu.json, .csv, .png, .txt)"
