#!/usr/bin/env bash
# Everything GPU-related in one command, no network, at most 8 minutes on one GPU, ONE JSON:
#   peak     the card's measured bf16 matmul peak            (python -m benchmarks.gpu_suite peak)
#   kernels  Triton kernels: parity on the device, then vs SDPA / the PyTorch references at the
#            shapes of the f8c4-B and f16c16-B decoders      (python -m benchmarks.gpu_kernels)
#   decode   f8c4-B and f16c16-B (random init) at 256 px, 1/2/4 steps at each variant's best batch:
#            torch eager bf16, CUDA graph, Triton kernels, Triton + CUDA graph, then torch.compile;
#            decoder FLOPs counted, each row as a fraction of the measured peak
#                                                            (python -m benchmarks.gpu_suite decode)
#   anchors  SD-VAE / TAESD decode beside DGAE f8c4-B (torch) at 256 px, bf16 (dgae bench anchors)
#   merge    OUT_DIR/gpu-suite.json (every step's exit status included)   (... gpu_suite merge)
# Each step runs in its own process under a hard time limit (they sum to <= 8 min); the decode
# steps also stop starting cases at their budget and keep what they measured; a step that fails
# or times out does not stop the rest. Logs: OUT_DIR/logs/.
#
# usage: benchmarks/gpu_suite.sh [--dry-run] OUT_DIR
#   --dry-run   CPU only (CI): the same Python entry points at tiny sizes (tiny presets, 16-32 px,
#               Triton interpreter), in about a minute.
# env: PYTHON (default .venv/bin/python, else python3); the steps' hard limits PEAK_LIMIT_S,
#      KERNELS_LIMIT_S, DECODE_LIMIT_S, COMPILE_LIMIT_S, ANCHORS_LIMIT_S, MERGE_LIMIT_S (seconds) and
#      BUDGET_MARGIN_S (what a decode step keeps to write its part before its limit); DRY_PRESETS
#      (--dry-run's presets, default "tiny tiny-f16c16"); SKIP_STEPS (names not to run, e.g.
#      "compile anchors"; decode / compile name both presets' steps).
set -uo pipefail

# shellcheck source=benchmarks/script_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/script_lib.sh"  # usage, DRY_RUN, OUT, ROOT, PYTHON, record_step
mkdir -p "$OUT/logs" || exit 2
OUT="$(cd "$OUT" && pwd)"
cd "$ROOT" || exit 2

# hard limits (s), worst case 20 + 60 + 2 x 70 + 2 x 90 + 45 + 20 = 465 s < 8 min; the decode
# budgets leave each process BUDGET_MARGIN_S to write its part and exit before its limit
# (each may be set in the environment, e.g. by scripts/gpu_run.sh, which fits the suite into less)
PEAK_LIMIT_S=${PEAK_LIMIT_S:-20}
KERNELS_LIMIT_S=${KERNELS_LIMIT_S:-60}
DECODE_LIMIT_S=${DECODE_LIMIT_S:-70}
COMPILE_LIMIT_S=${COMPILE_LIMIT_S:-90}
ANCHORS_LIMIT_S=${ANCHORS_LIMIT_S:-45}
MERGE_LIMIT_S=${MERGE_LIMIT_S:-20}
BUDGET_MARGIN_S=${BUDGET_MARGIN_S:-15}
FAST_VARIANTS=eager,cuda-graph,triton,triton+cuda-graph
SUITE_ARGS=()
if [ "$DRY_RUN" = 1 ]; then
  export TRITON_INTERPRET=1
  DEVICE=cpu
  read -r -a PRESETS <<< "${DRY_PRESETS:-tiny tiny-f16c16}"
  SUITE_ARGS=(--dry-run)
  ANCHORS_ARGS=(--preset tiny --size 32 --batch 1 --steps 1,2 --repeats 1)
else
  if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "error: no CUDA device visible to $PYTHON; use --dry-run on a CPU machine" >&2
    exit 2
  fi
  export TRITON_INTERPRET=0
  DEVICE=cuda
  PRESETS=(f8c4-B f16c16-B)
  ANCHORS_ARGS=(--preset f8c4-B --size 256 --batch 8 --steps 1,2,4 --repeats 3)
fi
PARTS="$(mktemp -d "${TMPDIR:-/tmp}/dgae-gpu-suite.XXXXXX")" || exit 2
trap 'rm -rf "$PARTS"' EXIT
STEPS_FILE="$PARTS/steps.json"
echo "{}" > "$STEPS_FILE"
SUITE_START=$SECONDS

run_step() {  # name limit_s command...
  local name="$1" limit="$2"; shift 2
  if [[ " ${SKIP_STEPS:-} " == *" ${name%%-*} "* ]]; then echo "=== $name: skipped (SKIP_STEPS)"; return; fi
  echo "=== $name (limit ${limit}s): $*"
  local start=$SECONDS
  timeout --signal=TERM --kill-after=5 "$limit" "$@" 2>&1 | tee "$OUT/logs/$name.log"
  local status=${PIPESTATUS[0]} took=$((SECONDS - start))
  echo "=== $name: exit $status after ${took}s"
  record_step "$STEPS_FILE" "$name" "$status" "$took" "$limit"
}

run_step peak "$PEAK_LIMIT_S" "$PYTHON" -m benchmarks.gpu_suite peak --out "$PARTS" "${SUITE_ARGS[@]}"
run_step kernels "$KERNELS_LIMIT_S" "$PYTHON" -m benchmarks.gpu_kernels --out "$PARTS" "${SUITE_ARGS[@]}" \
  --presets "$(IFS=,; echo "${PRESETS[*]}")"
for preset in "${PRESETS[@]}"; do
  run_step "decode-$preset" "$DECODE_LIMIT_S" "$PYTHON" -m benchmarks.gpu_suite decode --out "$PARTS" \
    --preset "$preset" --variants "$FAST_VARIANTS" --budget-s $((DECODE_LIMIT_S - BUDGET_MARGIN_S)) "${SUITE_ARGS[@]}"
done
for preset in "${PRESETS[@]}"; do   # last: a compile that runs long only costs its own rows
  run_step "compile-$preset" "$COMPILE_LIMIT_S" "$PYTHON" -m benchmarks.gpu_suite decode --out "$PARTS" \
    --preset "$preset" --variants compile --budget-s $((COMPILE_LIMIT_S - BUDGET_MARGIN_S)) "${SUITE_ARGS[@]}"
done
run_step anchors "$ANCHORS_LIMIT_S" "$PYTHON" -m cli bench anchors --device "$DEVICE" --no-plot \
  --backend torch --out "$PARTS" "${ANCHORS_ARGS[@]}"
echo "=== suite steps took $((SECONDS - SUITE_START))s"
timeout --signal=TERM --kill-after=5 "$MERGE_LIMIT_S" \
  "$PYTHON" -m benchmarks.gpu_suite merge --parts "$PARTS" --out "$OUT" "${SUITE_ARGS[@]}" 2>&1 \
  | tee "$OUT/logs/merge.log"
status=${PIPESTATUS[0]}
echo "gpu suite: $((SECONDS - SUITE_START))s in all; results in $OUT/gpu-suite.json"
if [ "$status" != 0 ]; then
  echo "gpu suite: FAILED (see the steps in $OUT/gpu-suite.json and $OUT/logs/)" >&2
  exit 1
fi
echo "gpu suite: all steps passed"
