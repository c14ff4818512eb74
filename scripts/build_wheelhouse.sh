#!/usr/bin/env bash
# Download every pinned package (requirements/lock.txt), pip and the build backend into one folder, for a
# machine that reaches no package index (the GPU machine of scripts/gpu_check.py). Carry the folder with the
# working tree; there, `PIP_NO_INDEX=1 PIP_FIND_LINKS="$PWD/wheelhouse" ./run.sh setup` installs from it.
#   scripts/build_wheelhouse.sh [DIR] [EXTRA REQUIREMENT ...]     (DIR defaults to wheelhouse)
#   scripts/build_wheelhouse.sh wheelhouse onnxruntime-gpu==1.31.1 # + ONNX Runtime's CUDA / TensorRT providers
# pip picks the wheels of the machine it runs on: build it on the target's platform and Python version
# (Linux x86_64, CPython 3.11 for the pinned environment), or set PYTHON to such an interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-wheelhouse}"
shift || true
"${PYTHON:-python3}" -m pip download --dest "$dir" -r requirements/lock.txt "pip>=24" "setuptools>=77" "$@"
echo "wheelhouse: $dir ($(ls "$dir" | wc -l) files, $(du -sh "$dir" | cut -f1))"
