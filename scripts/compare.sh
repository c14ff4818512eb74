#!/usr/bin/env bash
# Compare distillation methods on one pair: every method preset of a folder trained with several seeds at
# its own settings (a study of seeds only per method), then one report with mean ± std, the gain over the
# student alone and the share of the teacher-student gap closed.
# Usage: scripts/compare.sh PRESETS OUTPUT [--seeds N] [--workers N] [--methods "student student_kd cwd"] [key=value ...]
#   e.g. scripts/compare.sh configs/camvid runs/compare/camvid --seeds 2
# PRESETS holds teacher.yaml, student.yaml and one <method>.yaml per method (by default every method below that has
# one); the teacher is trained into
# OUTPUT/teacher first (skipped when it exists) and every KD preset reads it. Overrides apply to the teacher
# and to every run. Each study resumes, so the script can simply be started again. PY selects the Python command.
set -euo pipefail
cd "$(dirname "$0")/.."
presets="$1"; out="$2"; shift 2
seeds=2; workers=1
all_methods="student student_kd cwd hwd afdcd mgd lad cad dist skd skd_cirkd ifvd"; methods=""
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds) seeds="$2"; shift 2 ;;
        --workers) workers="$2"; shift 2 ;;
        --methods) methods="$2"; shift 2 ;;
        *) break ;;
    esac
done
if [ -z "$methods" ]; then  # the methods above whose preset the folder has
    for method in $all_methods; do [ -f "$presets/$method.yaml" ] && methods+="$method "; done
fi
for method in $methods; do  # before the teacher's hour of training, not after it
    if [ ! -f "$presets/$method.yaml" ]; then
        echo "error: --methods: $presets has no preset $method.yaml (its presets: $(cd "$presets" && echo *.yaml))" >&2
        exit 2
    fi
done
PY="${PY:-./run.sh python}"
start=$(date +%s)
PY="$PY" scripts/train_teacher.sh "$presets" "$out" "$@"
studies=()
for method in $methods; do
    teacher=()
    [ "$method" != student ] && teacher=("teacher.checkpoint=$out/teacher/final")
    $PY study/sweep.py --config "$presets/$method.yaml" --space configs/protocol/seeds.yaml --seeds "$seeds" \
        --workers "$workers" --study "$out/$method" "${teacher[@]}" "$@"
    studies+=("$out/$method")
done
$PY study/report.py "${studies[@]}" --output "$out/report"
echo "comparison done in $(( ($(date +%s) - start) / 60 )) min; report: $out/report/report.md"
