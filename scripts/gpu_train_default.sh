#!/usr/bin/env bash
# Continue the bundled model on one GPU inside a fixed time budget.
#   1. probe: a short run measures the step rate on this machine (its own folder, thrown away);
#   2. train: --max-steps sized so the warm-up + cosine schedule ends inside the budget
#      (--max-minutes stays as a hard stop); resumable like any `dgae train` run;
#   3. write the EMA weights as an fp16 checkpoint (the bundled format) with the step count.
#
# usage: scripts/gpu_train_default.sh DATA RUN_DIR MINUTES
# env: PYTHON (python3), RECIPE (gpu-default), INIT (the bundled weights), PROBE_STEPS (60),
#      STARTUP_S (seconds of the budget kept for start-up and saving, 30), DEVICE (cuda),
#      TRAIN_ARGS (extra `dgae train` flags for both runs, e.g. "--bf16 false --workers 4")
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: $0 DATA RUN_DIR MINUTES" >&2; exit 2; }
DATA=$1 RUN=$2 MINUTES=$3
PYTHON=${PYTHON:-python3}
RECIPE=${RECIPE:-gpu-default}
INIT=${INIT:-weights/dgae-small-f8c4.safetensors}
PROBE_STEPS=${PROBE_STEPS:-60}
STARTUP_S=${STARTUP_S:-30}
DEVICE=${DEVICE:-cuda}
read -r -a EXTRA <<< "${TRAIN_ARGS:-}"
NO_SAMPLES=1000000000  # probe: no checkpoints or sample grids inside the probe

mkdir -p "$RUN"
if [ ! -f "$RUN/state.safetensors" ]; then  # a resumed run keeps the max_steps it was sized with
  "$PYTHON" -m cli train --recipe "$RECIPE" --data "$DATA" --out "$RUN/probe" --init "$INIT" --device "$DEVICE" \
    --max-steps "$PROBE_STEPS" --warmup-steps "$NO_SAMPLES" --ckpt-every "$NO_SAMPLES" --sample-every "$NO_SAMPLES" "${EXTRA[@]}"
  STEPS=$("$PYTHON" - "$RUN/probe/metrics.jsonl" "$MINUTES" "$STARTUP_S" "$RECIPE" <<'PY'
import json, sys
from training.config import get_recipe
rows = [json.loads(line) for line in open(sys.argv[1])]
ips = rows[-1]["images_per_s"]  # the last window: after cuDNN autotuning and loader warm-up
budget_s = float(sys.argv[2]) * 60 - float(sys.argv[3])
print(max(1, int(ips / get_recipe(sys.argv[4]).batch_size * budget_s)))
PY
)
  echo "probe: $(tail -n 1 "$RUN/probe/metrics.jsonl")"
  echo "sized the run to $STEPS steps for $MINUTES min"
  rm -rf "$RUN/probe"
  echo "$STEPS" > "$RUN/max_steps"
fi
STEPS=$(cat "$RUN/max_steps")
"$PYTHON" -m cli train --recipe "$RECIPE" --data "$DATA" --out "$RUN" --init "$INIT" --device "$DEVICE" \
  --max-steps "$STEPS" --max-minutes "$MINUTES" "${EXTRA[@]}"
"$PYTHON" - "$RUN" <<'PY'
import sys
from pathlib import Path
import torch
from dgae.checkpoint import load_checkpoint, read_metadata, save_checkpoint
run = Path(sys.argv[1])
meta = read_metadata(run / "ema.safetensors")
keep = {k: meta[k] for k in ("trained_steps", "train_config") if k in meta}
save_checkpoint(load_checkpoint(run / "ema.safetensors"), run / "ema-fp16.safetensors", dtype=torch.float16,
                extra_metadata={"weights": "ema", **keep})
print(f"wrote {run / 'ema-fp16.safetensors'} at step {keep.get('trained_steps')}")
PY
