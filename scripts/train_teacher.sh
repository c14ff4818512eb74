#!/usr/bin/env bash
# Train a preset folder's teacher into OUTPUT/teacher unless it is there (resumed if it was interrupted).
#   scripts/train_teacher.sh PRESETS OUTPUT [key=value ...]        (PY selects the Python command)
# Used by scripts/protocol.sh and scripts/compare.sh, whose KD runs then read OUTPUT/teacher/final.
set -euo pipefail
cd "$(dirname "$0")/.."
presets="$1"; out="$2"; shift 2
PY="${PY:-./run.sh python}"
if [ ! -f "$out/teacher/final/model.json" ]; then
    resume=$(compgen -G "$out/teacher/checkpoints/step_*/progress.json" >/dev/null && echo --resume || true)
    $PY -m segdistill.train --config "$presets/teacher.yaml" "output_dir=$out/teacher" $resume "$@"
fi
