#!/usr/bin/env bash
# Container entrypoint: build the TensorRT engine for this GPU on the first start, then benchmark it.
#
# Engines are specific to a GPU and a TensorRT version, so the plan is built here, on the device, and
# kept in the /cache volume with its timing cache; its name holds the TensorRT version and the GPU, and
# export/to_trt.py --reuse keeps it as long as its sidecar matches (same ONNX hash, shapes, precision).
# Settings (environment):
#   CHECKPOINT  the student checkpoint folder (the parity gate's reference)   default /models
#   ONNX        the ONNX export to build (its sidecar ONNX.json beside it)    default CHECKPOINT/export/model.onnx
#   PRECISION   fp32 | fp16 | bf16 | int8 (int8 needs a QDQ ONNX)            default: the ONNX graph's own
#   SHAPES      MIN/OPT/MAX for a dynamic ONNX, e.g. 1x3x360x480/1x3x720x960/1x3x1080x1920
#               default: the shape range in the ONNX's sidecar, batch 1 to 8
#   DATA        dataset for the gate and the mIoU, e.g. camvid:/data/camvid (mounted)
#   CACHE       the volume for engines, timing caches and benchmark reports   default /cache
# Arguments after the image name go to deploy/benchmark.py (e.g. --iterations 500).
set -euo pipefail
cd "$(dirname "$0")/.."

CHECKPOINT="${CHECKPOINT:-/models}"
ONNX="${ONNX:-$CHECKPOINT/export/model.onnx}"
CACHE="${CACHE:-/cache}"
if [ ! -f "$ONNX" ] || [ ! -f "$ONNX.json" ]; then
    echo "error: no ONNX export at $ONNX (with its sidecar $ONNX.json): mount the student checkpoint" \
        "folder at /models (with export/model.onnx from export/to_onnx.py) or set ONNX; see docs/deployment.md" >&2
    exit 2
fi

# TensorRT and the GPU are checked here, not when the image is built (see Dockerfile.jetson).
if ! device="$(python3 -c 'import tensorrt, torch; p = torch.cuda.get_device_properties(0); print(f"trt{tensorrt.__version__}-sm{p.major}{p.minor}")' 2>&1)"; then
    echo "error: TensorRT or the GPU is not usable in this container (${device##*$'\n'}): run it with --gpus all" \
        "(x86_64 servers) or --runtime nvidia (Jetson); see docs/deployment.md" >&2
    exit 2
fi
plan="$CACHE/engines/$(basename "$ONNX" .onnx)-${PRECISION:-native}-$device.plan"
mkdir -p "$CACHE/engines"

build=(--onnx "$ONNX" --out "$plan" --reuse --timing-cache "$CACHE/engines/timing-$device.cache" --checkpoint "$CHECKPOINT")
bench=(--artifact "$plan" --backend tensorrt --output "$CACHE/benchmark")
if [ -n "${PRECISION:-}" ]; then build+=(--precision "$PRECISION"); fi
if [ -n "${SHAPES:-}" ]; then build+=(--shapes "$SHAPES"); fi
if [ -n "${DATA:-}" ]; then build+=(--data "$DATA"); bench+=(--data "$DATA"); fi

python3 -m segdistill.export.to_trt "${build[@]}"
exec python3 -m segdistill.deploy.benchmark "${bench[@]}" "$@"
