#!/usr/bin/env bash
# Distill the bundled model into a few-step student on one GPU inside a fixed time budget, then
# score student and teacher side by side. The bundled weights are never changed.
#   1. `dgae train --recipe distill --init TEACHER` through scripts/gpu_train_default.sh (its probe
#      sizes --max-steps to MINUTES; resumable; writes RUN/ema-fp16.safetensors);
#   2. `dgae eval` (the model card's protocol: the held-out photos' centre crops) of the student at
#      STUDENT_STEPS and of the teacher at 1, 2 and TEACHER_STEPS steps, on the same device;
#   3. RUN/distill_summary.json: both tables and whether the student matches the teacher's 2-step
#      decode (PSNR within MATCH_PSNR_DB, LPIPS no worse), the bar for making it the default.
#
# usage: scripts/gpu_distill_default.sh DATA RUN_DIR MINUTES
# env: PYTHON (python3), INIT (the bundled weights: the teacher), DEVICE (cuda), RECIPE (distill),
#      TEACHER_STEPS / STUDENT_STEPS (the recipe's when unset), EVAL_MINUTES (hard limit of each
#      evaluation, 3), EVAL_ARGS (extra `dgae eval` flags), TRAIN_ARGS (extra `dgae train` flags),
#      and the env of scripts/gpu_train_default.sh (PROBE_STEPS, STARTUP_S)
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: $0 DATA RUN_DIR MINUTES" >&2; exit 2; }
DATA=$1 RUN=$2 MINUTES=$3
HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python3}
INIT=${INIT:-weights/dgae-small-f8c4.safetensors}
DEVICE=${DEVICE:-cuda}
RECIPE=${RECIPE:-distill}
EVAL_MINUTES=${EVAL_MINUTES:-3}
MATCH_PSNR_DB=0.1  # issue 14: "PSNR within 0.1 dB, LPIPS no worse" than the 2-step teacher
DEFAULT_BAR_STEPS=2  # the teacher's steps the student is held against (the bundled default)
recipe() { "$PYTHON" -c "from training.config import get_recipe; print(get_recipe('$RECIPE').$1)"; }
TEACHER_STEPS=${TEACHER_STEPS:-$(recipe teacher_steps)}
STUDENT_STEPS=${STUDENT_STEPS:-$(recipe student_steps)}

RECIPE="$RECIPE" INIT="$INIT" DEVICE="$DEVICE" PYTHON="$PYTHON" \
  TRAIN_ARGS="--teacher-steps $TEACHER_STEPS --student-steps $STUDENT_STEPS ${TRAIN_ARGS:-}" \
  "$HERE/gpu_train_default.sh" "$DATA" "$RUN" "$MINUTES"

read -r -a EVAL_EXTRA <<< "${EVAL_ARGS:-}"
EVAL=(--data "$DATA" --crops-per-image 1 --no-kid --device "$DEVICE" "${EVAL_EXTRA[@]}")
timeout "$((EVAL_MINUTES * 60))" "$PYTHON" -m cli eval --checkpoint "$RUN/ema-fp16.safetensors" \
  --out "$RUN/eval-student" --steps "$STUDENT_STEPS" "${EVAL[@]}"
TEACHER_EVAL_STEPS=$(printf '%s\n' 1 "$DEFAULT_BAR_STEPS" "$TEACHER_STEPS" | sort -nu | paste -sd,)
timeout "$((EVAL_MINUTES * 60))" "$PYTHON" -m cli eval --checkpoint "$INIT" \
  --out "$RUN/eval-teacher" --steps "$TEACHER_EVAL_STEPS" "${EVAL[@]}"

"$PYTHON" - "$RUN" "$STUDENT_STEPS" "$DEFAULT_BAR_STEPS" "$MATCH_PSNR_DB" <<'PY'
import json, sys
from pathlib import Path
run, student_steps, bar_steps, match_db = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rows = lambda name: {r["steps"]: r for r in json.loads((run / name / "eval.json").read_text())["rows"]
                     if r["method"] == "dgae"}
student, teacher = rows("eval-student")[student_steps], rows("eval-teacher")
bar = teacher[bar_steps]
matches = student["psnr"] >= bar["psnr"] - match_db and student["lpips"] <= bar["lpips"]
summary = {"student": {student_steps: {k: student[k] for k in ("psnr", "ssim", "lpips")}},
           "teacher": {s: {k: r[k] for k in ("psnr", "ssim", "lpips")} for s, r in teacher.items()},
           "bar": f"teacher at {bar_steps} steps: PSNR within {match_db} dB, LPIPS no worse",
           "student_matches_bar": matches}
(run / "distill_summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary, indent=1))
PY
