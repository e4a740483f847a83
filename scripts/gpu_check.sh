#!/usr/bin/env bash
# Everything that needs an NVIDIA GPU, in one go (about 8 minutes on one H100/H200-class GPU once installed):
#   1. the tests that skip without a GPU (pytest -m gpu, -rs lists any that still skip, with the reason);
#   2. TensorRT engines fp32 / fp16 / INT8 for the MAE-DET-S/M/L and ResNet-50/101 backbones and GFocalV2 detectors,
#      each checked against PyTorch by maedet-export (the exit status says whether the parity held);
#   3. the GPU rows of the bench (scripts/gpu_bench.sh, time-boxed);
#   4. the AP-per-format table (PyTorch, ONNX Runtime CUDA/TensorRT EPs, TensorRT engines) of a detector trained for
#      two minutes on the synthetic shapes set.
#
#   scripts/gpu_check.sh [OUT_DIR]            (default OUT_DIR: runs/gpu-check)
#
# Needs the project installed with its GPU extra on a CUDA machine: pip install -e '.[dev,gpu]' (onnxruntime-gpu
# replaces onnxruntime). PYTHON defaults to .venv/bin/python when present. Each step's log is OUT_DIR/<step>.log;
# OUT_DIR/summary.txt lists every step with its exit status, and the script exits non-zero if any step failed.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT_DIR="${1:-runs/gpu-check}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
BIN="$(dirname "$PYTHON")"
tool() { if [[ -x "$BIN/$1" ]]; then echo "$BIN/$1"; else echo "$1"; fi; }

if ! "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check.sh: error: PyTorch ($PYTHON) sees no CUDA device, so there is nothing to check here." >&2
    exit 2
fi
mkdir -p "$OUT_DIR"
SUMMARY="$OUT_DIR/summary.txt"
: >"$SUMMARY"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$SUMMARY"
"$PYTHON" -c 'import torch, onnxruntime as o; print("torch", torch.__version__, "| onnxruntime", o.__version__,
    o.get_available_providers())' | tee -a "$SUMMARY"
"$PYTHON" -c 'import tensorrt as t; print("tensorrt", t.__version__)' 2>&1 | tail -1 | tee -a "$SUMMARY"

FAILED=0
step() {  # step NAME COMMAND...: runs it, logs to OUT_DIR/NAME.log, records the exit status and the time taken
    local name=$1 start=$SECONDS status
    shift
    echo "== $name: $*"
    "$@" >"$OUT_DIR/$name.log" 2>&1
    status=$?
    printf '%-28s exit %d  %4d s\n' "$name" "$status" $((SECONDS - start)) | tee -a "$SUMMARY"
    [[ $status -eq 0 ]] || FAILED=1
    tail -3 "$OUT_DIR/$name.log"
}

# 1. The GPU tests.
step tests "$PYTHON" -m pytest -m gpu -rs -q -p no:cacheprovider

# 2. TensorRT engines with their parity checks (INT8 calibrates on synthetic images: the check is the engine against
# the same INT8 ONNX file's intent, as maedet-export always does).
EXPORT="$(tool maedet-export)"
for model in maedet_s maedet_m maedet_l resnet50 resnet101; do
    for precision in fp32 fp16 int8; do
        flags=()
        [[ $precision == fp16 ]] && flags=(--half)
        [[ $precision == int8 ]] && flags=(--int8)
        step "trt-$model-$precision" "$EXPORT" "$model" --trt "$OUT_DIR/engines/$model-$precision.engine" \
            --input-size 640 640 "${flags[@]}"
        step "trt-${model}_gfl-$precision" "$EXPORT" "${model}_gfl" \
            --trt "$OUT_DIR/engines/${model}_gfl-$precision.engine" --input-size 640 640 "${flags[@]}"
    done
done

# 3. The GPU bench rows, time-boxed.
MAX_TIME="${MAX_TIME:-90}" ROUNDS="${ROUNDS:-8}" step bench scripts/gpu_bench.sh "$OUT_DIR/bench"

# 4. AP per format of a detector trained here for two minutes on the synthetic shapes (held-out val images).
DATA="$OUT_DIR/shapes"
step data "$(tool maedet-data)" shapes --out "$DATA" --train 2000 --val 100 --size 160
step train "$(tool maedet-train)" --recipe demo --model maedet_s_gfl --num-classes 6 --data "$DATA/train.json" \
    --images "$DATA/train" --out "$OUT_DIR/train" --device cuda --max-minutes 2
step ap-per-format "$(tool maedet-bench)" --detector "$OUT_DIR/train/detector" --data "$DATA/val.json" \
    --images "$DATA/val" --calib "$DATA/train" --input-size 160 --json "$OUT_DIR/ap.json" --csv "$OUT_DIR/ap.csv" \
    --plot "$OUT_DIR/ap.png"

echo "gpu_check.sh: summary in $SUMMARY"
cat "$SUMMARY"
exit $FAILED
