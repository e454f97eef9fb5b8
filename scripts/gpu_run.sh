#!/usr/bin/env bash
# The first GPU run, prepared: at most 10 minutes on one bare GPU machine with no network, and
# everything it writes in ONE folder of at most 8 files (what comes back from a lent machine):
#   roofline.json        the prediction this run is read against (dgae bench roofline; CPU, seconds)
#   gpu-suite.json       benchmarks/gpu_suite.sh: peak, Triton kernels, decode variants, anchors
#   distill_summary.json scripts/gpu_distill_default.sh: the bundled default distilled for
#                        DISTILL_MINUTES, student vs teacher and whether it meets the 2-step bar
#   eval-student.json    `dgae eval` of the student (the model card's protocol, held-out photos)
#   eval-teacher.json    `dgae eval` of the bundled teacher at 1, 2 and its target steps
#   student-fp16.safetensors  the distilled student (the bundled format; not shipped by this run)
#   run.log              every phase's output, in order
#   manifest.json        machine, versions, each phase's exit status / seconds / limit, the files
# Each phase runs under a hard limit (they sum to PHASE_BUDGET_S < 10 min); a phase that fails or
# times out does not stop the next. Nothing is downloaded: the photos (DATA, default data/photos,
# `make data` on a networked machine; 31 MB) and any missing Python package as wheels in .whl/
# (installed with pip --no-index into a scratch folder) come with the working tree.
#
# usage: scripts/gpu_run.sh [--dry-run] OUT_DIR
#   --dry-run  CPU only (CI): the same phases at tiny sizes (tiny presets, a synthetic photo set,
#              a random-init tiny teacher, Triton interpreter); prints what a GPU run would write.
# env: PYTHON (python3, else .venv/bin/python), DATA (data/photos), DISTILL_MINUTES (1).
set -uo pipefail

# shellcheck source=benchmarks/script_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../benchmarks/script_lib.sh"  # usage, DRY_RUN, OUT, ROOT, PYTHON, record_step
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
cd "$ROOT" || exit 2
SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/dgae-gpu-run.XXXXXX")" || exit 2
trap 'rm -rf "$SCRATCH"' EXIT
LOG="$OUT/run.log"
: > "$LOG"
PHASES="$SCRATCH/phases.json"
echo "{}" > "$PHASES"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

OUTPUTS=(roofline.json gpu-suite.json distill_summary.json eval-student.json eval-teacher.json
         student-fp16.safetensors run.log manifest.json)
# hard limits on a GPU (s): 30 + 300 + 240 + 15 = 585 s < 10 min. --dry-run multiplies them by
# DRY_LIMIT_FACTOR: a shared CI CPU runs the tiny phases far slower than a GPU runs the real ones.
ROOFLINE_LIMIT_S=30
SUITE_LIMIT_S=300
DISTILL_LIMIT_S=240
MANIFEST_LIMIT_S=15
DRY_LIMIT_FACTOR=4
EVAL_MINUTES=1
LIMIT_FACTOR=1
DISTILL_MINUTES=${DISTILL_MINUTES:-1}

echo "gpu run -> $OUT; it writes (at most ${#OUTPUTS[@]} files):"
printf '  - %s\n' "${OUTPUTS[@]}"

phase() {  # name limit_s command...
  local name="$1" limit="$2"; shift 2
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local start=$SECONDS
  timeout --signal=TERM --kill-after=5 "$limit" "$@" >> "$LOG" 2>&1
  local status=$? took=$((SECONDS - start))
  echo "=== $name: exit $status after ${took}s" | tee -a "$LOG"
  record_step "$PHASES" "$name" "$status" "$took" "$limit"
}

# ---------------------------------------------------------------- wheels carried in .whl/ (no index)
if [ -d "$ROOT/.whl" ] && ls "$ROOT"/.whl/*.whl > /dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SCRATCH/site" \
    "$ROOT"/.whl/*.whl >> "$LOG" 2>&1 && export PYTHONPATH="$PYTHONPATH:$SCRATCH/site"
fi

if [ "$DRY_RUN" = 1 ]; then
  export TRITON_INTERPRET=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  LIMIT_FACTOR=$DRY_LIMIT_FACTOR
  # the suite steps this dry run keeps, at gpu_suite.sh's own defaults (20, 70, 20 s) x the factor
  export PEAK_LIMIT_S=$((20 * LIMIT_FACTOR)) DECODE_LIMIT_S=$((70 * LIMIT_FACTOR)) MERGE_LIMIT_S=$((20 * LIMIT_FACTOR))
  DEVICE=cpu
  ROOFLINE_ARGS=(--presets tiny --sizes 32 --steps 1,2)
  SUITE_ARGS=(--dry-run)
  # the suite's own dry run (every step, both tiny presets) is its test's job: here one preset's
  # decode and the peak, enough to show the phase runs and merges into gpu-suite.json
  export DRY_PRESETS=tiny SKIP_STEPS="kernels compile anchors"
  DATA="$SCRATCH/photos"
  INIT="$SCRATCH/teacher.safetensors"
  # a synthetic photo set (train/ and val/) and a random-init tiny teacher: no data, no weights needed
  "$PYTHON" - "$DATA" <<'EOF' >> "$LOG" 2>&1 || exit 1
import sys
from pathlib import Path
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for split, n in (("train", 4), ("val", 2)):
    folder = Path(sys.argv[1]) / split
    folder.mkdir(parents=True)
    for i in range(n):
        yy, xx = np.mgrid[0:64, 0:64]
        img = np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1) + rng.normal(0, 8, (64, 64, 3))
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.jpg")
EOF
  "$PYTHON" -m cli init tiny -o "$INIT" >> "$LOG" 2>&1 || exit 1
  DISTILL_ENV=(RECIPE=distill-tiny PROBE_STEPS=2 STARTUP_S=0 EVAL_MINUTES=$((EVAL_MINUTES * LIMIT_FACTOR))
               "TRAIN_ARGS=--max-steps 2 --batch-size 2 --crop-size 32 --workers 0 --log-every 1"
               "EVAL_ARGS=--crop 32 --max-side 64 --batch-size 2")
  DISTILL_MINUTES=1
else
  export TRITON_INTERPRET=0
  DEVICE=cuda
  ROOFLINE_ARGS=()
  SUITE_ARGS=()
  # the suite's step limits, shortened to fit: 15 + 45 + 2 x 45 + 2 x 40 + 35 + 15 = 280 s
  export PEAK_LIMIT_S=15 KERNELS_LIMIT_S=45 DECODE_LIMIT_S=45 COMPILE_LIMIT_S=40 ANCHORS_LIMIT_S=35
  export MERGE_LIMIT_S=15 BUDGET_MARGIN_S=10
  DATA=${DATA:-data/photos}
  INIT=weights/dgae-small-f8c4.safetensors
  DISTILL_ENV=(EVAL_MINUTES="$EVAL_MINUTES")
  if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "error: no CUDA device visible to $PYTHON; use --dry-run on a CPU machine" >&2
    exit 2
  fi
  if [ ! -e "$DATA" ]; then
    echo "error: no photo set at $DATA (make data on a networked machine, then bring it along)" >&2
    exit 2
  fi
fi
missing=$("$PYTHON" -c 'import importlib.util as u
print(" ".join(m for m in ("torch", "safetensors", "PIL", "numpy", "pytorch_msssim", "triton") if u.find_spec(m) is None))')
[ -z "$missing" ] || echo "warning: missing Python packages: $missing (bring their wheels in .whl/)" | tee -a "$LOG"

ROOFLINE_LIMIT_S=$((ROOFLINE_LIMIT_S * LIMIT_FACTOR)) SUITE_LIMIT_S=$((SUITE_LIMIT_S * LIMIT_FACTOR))
DISTILL_LIMIT_S=$((DISTILL_LIMIT_S * LIMIT_FACTOR)) MANIFEST_LIMIT_S=$((MANIFEST_LIMIT_S * LIMIT_FACTOR))
RUN_START=$SECONDS
phase roofline "$ROOFLINE_LIMIT_S" "$PYTHON" -m cli bench roofline --out "$SCRATCH/roofline" "${ROOFLINE_ARGS[@]}"
cp "$SCRATCH/roofline/roofline.json" "$OUT/" 2>/dev/null
phase suite "$SUITE_LIMIT_S" env PYTHON="$PYTHON" bash benchmarks/gpu_suite.sh "${SUITE_ARGS[@]}" "$SCRATCH/suite"
cp "$SCRATCH/suite/gpu-suite.json" "$OUT/" 2>/dev/null
for f in "$SCRATCH"/suite/logs/*.log; do [ -e "$f" ] && { echo "--- suite log $(basename "$f")"; cat "$f"; } >> "$LOG"; done
phase distill "$DISTILL_LIMIT_S" env PYTHON="$PYTHON" INIT="$INIT" DEVICE="$DEVICE" "${DISTILL_ENV[@]}" \
  bash scripts/gpu_distill_default.sh "$DATA" "$SCRATCH/distill" "$DISTILL_MINUTES"
cp "$SCRATCH/distill/distill_summary.json" "$OUT/" 2>/dev/null
cp "$SCRATCH/distill/eval-student/eval.json" "$OUT/eval-student.json" 2>/dev/null
cp "$SCRATCH/distill/eval-teacher/eval.json" "$OUT/eval-teacher.json" 2>/dev/null
cp "$SCRATCH/distill/ema-fp16.safetensors" "$OUT/student-fp16.safetensors" 2>/dev/null

timeout "$MANIFEST_LIMIT_S" "$PYTHON" - "$OUT" "$PHASES" "$DRY_RUN" "$((SECONDS - RUN_START))" "$LIMIT_FACTOR" \
  "${OUTPUTS[@]}" <<'EOF'
import json, platform, sys
from pathlib import Path
import torch
out, phases, dry, seconds = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text()), sys.argv[3] == "1", int(sys.argv[4])
limit_factor, expected = int(sys.argv[5]), sys.argv[6:]
try:
    import triton
    triton_version = triton.__version__
except ImportError:
    triton_version = None
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
written = sorted(p.name for p in out.iterdir() if p.is_file()) + ["manifest.json"]
manifest = {"run": "scripts/gpu_run.sh", "dry_run": dry, "seconds": seconds, "limit_factor": limit_factor, "gpu": gpu,
            "machine": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "triton": triton_version, "phases": phases, "files": sorted(set(written)),
            "missing": [f for f in expected if f not in written],
            "failed": sorted(n for n, p in phases.items() if p["exit"] != 0)}
(out / "manifest.json").write_text(json.dumps(manifest, indent=1))
print(json.dumps({k: manifest[k] for k in ("seconds", "files", "missing", "failed")}, indent=1))
EOF
status=$?
echo "gpu run: $((SECONDS - RUN_START))s; $(find "$OUT" -maxdepth 1 -type f | wc -l) files in $OUT"
[ "$status" = 0 ] || exit 1
"$PYTHON" -c 'import json, sys; sys.exit(1 if json.load(open(sys.argv[1]))["failed"] else 0)' "$OUT/manifest.json"
