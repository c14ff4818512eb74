#!/usr/bin/env bash
# CamVid at CPU scale: teacher, student alone, student + pixel KD; prints and writes the mIoU table.
#   scripts/camvid.sh [CAMVID_ROOT] [OUTPUT] [key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
root="${1:-../shared/data/camvid}"
out="${2:-runs/camvid}"
shift $(( $# > 2 ? 2 : $# )) || true
exec ./run.sh python -m segdistill.pipeline --configs configs/camvid --output "$out" "data.root=$root" "$@"
