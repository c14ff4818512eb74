#!/usr/bin/env bash
# The comparable-KD protocol of Niemann et al. as sweeps over seeds, then the report:
#   stage 1: lr x wd for the student alone and, separately, for the student + pixel KD
#   stage 2: tau of pixel KD on top of the best stage-1 KD point
#   stage 3: the weight of each extra term (PRESETS/student_kd_<term>.yaml) on top of the best stage-2 point
# Usage: scripts/protocol.sh PRESETS OUTPUT [--seeds N] [--workers N] [--terms "cwd ifvd"] [key=value ...]
#   e.g. scripts/protocol.sh configs/protocol/demo runs/protocol/demo --terms cwd train.iterations=60
# The overrides apply to the teacher and to every trial. A finished stage is not redone (each sweep resumes
# its study), so the script can be run again after an interruption. PY selects the Python command.
set -euo pipefail
cd "$(dirname "$0")/.."
presets="$1"; out="$2"; shift 2
seeds=3; workers=1; terms=""
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds) seeds="$2"; shift 2 ;;
        --workers) workers="$2"; shift 2 ;;
        --terms) terms="$2"; shift 2 ;;
        *) break ;;
    esac
done
if [ -z "$terms" ]; then  # every student_kd_<term>.yaml of the presets
    terms=$(find "$presets" -maxdepth 1 -name 'student_kd_*.yaml' | sed 's/.*student_kd_\(.*\)\.yaml/\1/' | sort | tr '\n' ' ')
fi
PY="${PY:-./run.sh python}"
sweep() { $PY study/sweep.py --seeds "$seeds" --workers "$workers" "$@"; }
start=$(date +%s)

PY="$PY" scripts/train_teacher.sh "$presets" "$out" "$@"
teacher="teacher.checkpoint=$out/teacher/final"

sweep --config "$presets/student.yaml" --space "$presets/stage1_lr_wd.yaml" --study "$out/stage1_student" "$@"
sweep --config "$presets/student_kd.yaml" --space "$presets/stage1_lr_wd.yaml" --study "$out/stage1_kd" "$teacher" "$@"
sweep --config "$presets/student_kd.yaml" --space "$presets/stage2_tau.yaml" --study "$out/stage2_tau" \
    --base-from "$out/stage1_kd" "$teacher" "$@"
studies=("$out/stage1_student" "$out/stage1_kd" "$out/stage2_tau")
for term in $terms; do
    sweep --config "$presets/student_kd_$term.yaml" --space "$presets/stage3_weight.yaml" --study "$out/stage3_$term" \
        --base-from "$out/stage2_tau" "$teacher" "$@"
    studies+=("$out/stage3_$term")
done
$PY study/report.py "${studies[@]}" --output "$out/report"
echo "protocol done in $(( ($(date +%s) - start) / 60 )) min; report: $out/report/report.md"
