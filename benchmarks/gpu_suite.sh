#!/usr/bin/env bash
# Everything GPU-related in one command, no network needed:
#   1. Triton kernel parity + microbenchmarks      (benchmarks/gpu_kernels.py -> gpu_kernels.json)
#   1b. fp16 ONNX export + TensorRT engines (when the tensorrt package is installed; else the
#      tensorrt row is listed as skipped)           (onnx-fp16/, engines/)
#   2. backends: torch eager/compile fp32+bf16, torch+Triton bf16, ONNX Runtime CUDA/TensorRT-EP,
#      TensorRT; decoder FLOPs and the achieved fraction of the card's bf16 peak
#                                                  (dgae bench backends -> backends-cuda.json/.png)
#   3. anchors: SD-VAE / TAESD decode vs DGAE steps (dgae bench anchors -> anchors-cuda.json/.png)
# Each step has a hard time limit (together < 9 minutes) and the backends step a per-backend
# and a total budget, so the suite always ends in time; a step that fails does not stop the rest.
#
# usage: benchmarks/gpu_suite.sh [--dry-run] OUT_DIR
#   --dry-run   CPU only (CI): Triton interpreter, tiny preset, tiny shapes; same code paths.
# env: PYTHON (default .venv/bin/python, else python3), PRESET (default f8c4-B, random init
#      written once to $TMPDIR/dgae-gpu-suite/; CHECKPOINT=path benchmarks that file instead).
set -uo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

DRY_RUN=0
OUT=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "error: unknown option $arg" >&2; usage >&2; exit 2 ;;
    *) [ -z "$OUT" ] || { echo "error: one OUT_DIR only" >&2; exit 2; }; OUT="$arg" ;;
  esac
done
[ -n "$OUT" ] || { echo "error: OUT_DIR missing" >&2; usage >&2; exit 2; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
cd "$ROOT" || exit 2

# worst-case time limits (s): init 60 + kernels 70 + onnx 50 + engines 70 + backends 240 +
# anchors 30 = 520 s < 9 min. The backends step stops starting backends after TOTAL_BUDGET_S,
# so its hard limit is only a safety net.
INIT_LIMIT_S=60
KERNELS_LIMIT_S=70
ONNX_LIMIT_S=50
ENGINES_LIMIT_S=70
BACKENDS_LIMIT_S=240
BACKEND_BUDGET_S=30           # per backend: cases not started in time are listed as cut
TOTAL_BUDGET_S=190
ANCHORS_LIMIT_S=30
DRY_LIMIT_S=120
TRT_PROFILE=(--min-batch 1 --opt-batch 8 --max-batch 32 --min-size 256 --opt-size 256 --max-size 512)
WORK="${TMPDIR:-/tmp}/dgae-gpu-suite"

if [ "$DRY_RUN" = 1 ]; then
  export TRITON_INTERPRET=1
  DEVICE=cpu
  PRESET=tiny
  KERNELS_ARGS=(--dry-run)
  BACKENDS_ARGS=(--quick --sizes 32 --batches 1 --steps 1 --repeats 1 --warmup 0 --backends torch-eager-fp32)
  ANCHORS_ARGS=(--size 32 --batch 1 --steps 1,2 --repeats 1)
  KERNELS_LIMIT_S=$DRY_LIMIT_S; BACKENDS_LIMIT_S=$DRY_LIMIT_S; ANCHORS_LIMIT_S=$DRY_LIMIT_S
else
  if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "error: no CUDA device visible to $PYTHON; use --dry-run on a CPU machine" >&2
    exit 2
  fi
  DEVICE=cuda
  PRESET="${PRESET:-f8c4-B}"
  KERNELS_ARGS=()
  BACKENDS_ARGS=(--budget-s "$BACKEND_BUDGET_S" --total-budget-s "$TOTAL_BUDGET_S")
  ANCHORS_ARGS=()
fi

FAILED=()
run_step() {  # name limit_s command...
  local name="$1" limit="$2"; shift 2
  echo "=== $name (limit ${limit}s): $*"
  local start=$SECONDS
  timeout --signal=TERM --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local status=${PIPESTATUS[0]}
  echo "=== $name: exit $status after $((SECONDS - start))s"
  [ "$status" = 0 ] || FAILED+=("$name(exit $status)")
}

# one checkpoint file for every step (TensorRT engines are tied to its sha256)
CKPT="${CHECKPOINT:-$WORK/random-$PRESET.safetensors}"
if [ ! -f "$CKPT" ]; then
  mkdir -p "$WORK" || exit 2
  run_step init "$INIT_LIMIT_S" "$PYTHON" -m cli init "$PRESET" -o "$CKPT"
fi

run_step kernels "$KERNELS_LIMIT_S" "$PYTHON" -m benchmarks.gpu_kernels --out "$OUT" "${KERNELS_ARGS[@]}"

ENGINE_ARGS=()
ENGINE_CMD=("$PYTHON" -m cli export onnx -c "$CKPT" -o "$OUT/onnx-fp16" --fp16 --no-validate)
TRT_CMD=("$PYTHON" -m cli export tensorrt --onnx "$OUT/onnx-fp16" -o "$OUT/engines" --fp16 "${TRT_PROFILE[@]}")
if [ "$DRY_RUN" = 1 ]; then
  # the export alone takes minutes on a CPU: check the commands parse, do not run them
  run_step engines "$DRY_LIMIT_S" "$PYTHON" -m cli export tensorrt --help
  echo "dry-run: would run: ${ENGINE_CMD[*]} && ${TRT_CMD[*]}"
elif "$PYTHON" -c 'import tensorrt' 2>/dev/null; then
  run_step onnx-fp16 "$ONNX_LIMIT_S" "${ENGINE_CMD[@]}"
  [ ! -f "$OUT/onnx-fp16/manifest.json" ] || run_step engines "$ENGINES_LIMIT_S" "${TRT_CMD[@]}"
  [ ! -f "$OUT/engines/manifest.json" ] || ENGINE_ARGS=(--engine-dir "$OUT/engines")
else
  echo "=== engines: skipped (the tensorrt package is not installed; the tensorrt row will say so)"
fi

run_step backends "$BACKENDS_LIMIT_S" "$PYTHON" -m cli bench backends --device "$DEVICE" --checkpoint "$CKPT" \
  --out "$OUT" "${BACKENDS_ARGS[@]}" "${ENGINE_ARGS[@]}"
run_step anchors "$ANCHORS_LIMIT_S" "$PYTHON" -m cli bench anchors --device "$DEVICE" --checkpoint "$CKPT" \
  --out "$OUT" "${ANCHORS_ARGS[@]}"

echo "results in $OUT:"
ls -1 "$OUT"
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "FAILED: ${FAILED[*]}" >&2
  exit 1
fi
echo "gpu suite: all steps passed"
