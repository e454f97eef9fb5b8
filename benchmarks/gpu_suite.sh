#!/usr/bin/env bash
# Everything GPU-related in one command, no network needed:
#   1. Triton kernel parity + microbenchmarks      (benchmarks/gpu_kernels.py -> gpu_kernels.json)
#   2. backends: torch eager/compile fp32+bf16, torch+Triton bf16, ONNX Runtime CUDA/TensorRT-EP,
#      TensorRT; decoder FLOPs and the achieved fraction of the card's bf16 peak
#                                                  (dgae bench backends -> backends-cuda.json/.png)
#   3. anchors: SD-VAE / TAESD decode vs DGAE steps (dgae bench anchors -> anchors-cuda.json/.png)
# Each step has a hard time limit (the three add up to < 9 minutes) and the backends step a
# per-backend budget, so the suite always ends in time; a step that fails does not stop the rest.
#
# usage: benchmarks/gpu_suite.sh [--dry-run] OUT_DIR
#   --dry-run   CPU only (CI): Triton interpreter, tiny preset, tiny shapes; same code paths.
# env: PYTHON (default .venv/bin/python, else python3), PRESET (default f8c4-B, random init;
#      CHECKPOINT=path benchmarks that file instead).
set -uo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }

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

# time limits (s): kernels + backends + anchors = 520 s < 9 min
KERNELS_LIMIT_S=90
BACKENDS_LIMIT_S=390
BACKEND_BUDGET_S=35           # per backend (9 configurations); cases not started in time are listed as cut
ANCHORS_LIMIT_S=40
DRY_LIMIT_S=120

if [ "$DRY_RUN" = 1 ]; then
  export TRITON_INTERPRET=1
  DEVICE=cpu
  MODEL=(--preset tiny)
  KERNELS_ARGS=(--dry-run)
  BACKENDS_ARGS=(--quick --sizes 32 --batches 1 --steps 1 --repeats 1 --warmup 0)
  ANCHORS_ARGS=(--size 32 --batch 1 --steps 1,2 --repeats 1)
  KERNELS_LIMIT_S=$DRY_LIMIT_S; BACKENDS_LIMIT_S=$DRY_LIMIT_S; ANCHORS_LIMIT_S=$DRY_LIMIT_S
else
  if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "error: no CUDA device visible to $PYTHON; use --dry-run on a CPU machine" >&2
    exit 2
  fi
  DEVICE=cuda
  if [ -n "${CHECKPOINT:-}" ]; then MODEL=(--checkpoint "$CHECKPOINT"); else MODEL=(--preset "${PRESET:-f8c4-B}"); fi
  KERNELS_ARGS=()
  BACKENDS_ARGS=(--budget-s "$BACKEND_BUDGET_S")
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

run_step kernels "$KERNELS_LIMIT_S" "$PYTHON" -m benchmarks.gpu_kernels --out "$OUT" "${KERNELS_ARGS[@]}"
run_step backends "$BACKENDS_LIMIT_S" "$PYTHON" -m dgae bench backends --device "$DEVICE" "${MODEL[@]}" \
  --out "$OUT" "${BACKENDS_ARGS[@]}"
run_step anchors "$ANCHORS_LIMIT_S" "$PYTHON" -m dgae bench anchors --device "$DEVICE" "${MODEL[@]}" \
  --out "$OUT" "${ANCHORS_ARGS[@]}"

echo "results in $OUT:"
ls -1 "$OUT"
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "FAILED: ${FAILED[*]}" >&2
  exit 1
fi
echo "gpu suite: all steps passed"
