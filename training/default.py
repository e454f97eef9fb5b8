"""The bundled one-step default, reproduced from its recorded recipe (``make train-default``).

The default is the 2-step base model (stages 1-2 in the model card: ``cpu-default`` then
``gpu-default``) fine-tuned at **one** sampler step toward the photos themselves, in stages that
each start from the previous stage's EMA weights with the encoder frozen, so a latent made by the
base model decodes with the result::

    base --onestep (8 x 128²)--> A --onestep-256 (2 x 256²)--> B --onestep-mixed (256² or 4 x 128² quarters)--> C
      --onestep-conv-first (upsampling conv before the nearest x2)--> D --onestep-conv-first-2--> file

Every stage is an ordinary resumable run folder under ``runs``: run this again after a stop (or
with ``--max-minutes`` chunks) and it carries on where it stopped; a finished stage is not re-run.
The released file records its stages (``training_stages`` metadata), the base's sha256 and the
1-step sampler default.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import torch
from safetensors import safe_open

from dgae.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from dgae.hashing import file_sha256
from training.config import get_recipe
from training.distill import DistillTrainer
from training.trainer import EMA_FILE

log = logging.getLogger(__name__)

# the bundled default's recipe, in order, and the same chain on the tiny preset (tests)
DEFAULT_STAGES = ("onestep", "onestep-256", "onestep-mixed", "onestep-conv-first", "onestep-conv-first-2")
TINY_STAGES = tuple(f"{stage}-tiny" for stage in DEFAULT_STAGES)
SAFETENSORS_FLOATS = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}


def _stage_dir(runs: Path, index: int, recipe: str) -> Path:
    return runs / f"stage{index + 1}-{recipe}"


def _finished_steps(run: Path) -> int:
    """Steps in a run folder's EMA checkpoint (0 when there is none yet)."""
    ema = run / EMA_FILE
    return int(read_metadata(ema).get("trained_steps", "0")) if ema.is_file() else 0


def train_stages(base: str | Path, data: str | Path, runs: str | Path, stages=DEFAULT_STAGES,
                 device: str = "cpu", max_minutes: float | None = None,
                 overrides: dict | None = None) -> Path | None:
    """Run (or resume) each stage from the previous one's EMA; the last EMA file, or None when a
    stage stopped early (``max_minutes``, a signal) and the chain has to be run again."""
    runs, init = Path(runs), Path(base)
    for i, recipe in enumerate(stages):
        cfg = dataclasses.replace(get_recipe(recipe), **(overrides or {}))
        if max_minutes is not None:
            cfg = dataclasses.replace(cfg, max_minutes=max_minutes)
        out = _stage_dir(runs, i, recipe)
        if _finished_steps(out) >= cfg.max_steps:
            init = out / EMA_FILE
            continue
        step = DistillTrainer(cfg.validate(), str(data), out, device=device, init_checkpoint=str(init)).train()
        if step < cfg.max_steps:
            log.info("stage %d (%s) stopped at step %d of %d: run again to resume", i + 1, recipe, step,
                     cfg.max_steps)
            return None
        init = out / EMA_FILE
    return init


def release(final_ema: str | Path, base: str | Path, stages, out: str | Path,
            history: str | None = None) -> Path:
    """Write the bundled file: the last stage's EMA weights, the base's stages followed by these.

    ``base`` may itself be a released file (a chain continued from an earlier default): its stages
    come first and its ``base_sha256`` (the 2-step base's) is kept."""
    base_meta, base_sha256 = read_metadata(base), file_sha256(base)
    recorded = json.loads(base_meta.get("training_stages", "[]"))
    origin = base_meta.get("base_sha256")  # set when ``base`` is a release: the 2-step base's sha256
    first_init = f"{'release' if origin else 'base'} sha256 {base_sha256}"
    runs = Path(final_ema).parent.parent
    for i, recipe in enumerate(stages):
        meta = read_metadata(_stage_dir(runs, i, recipe) / EMA_FILE)
        recorded.append({"stage": len(recorded) + 1, "recipe": recipe, "steps": int(meta["trained_steps"]),
                         "init": "previous stage's EMA" if i else first_init,
                         "train_config": json.loads(meta["train_config"])})
    trained = int(base_meta.get("trained_steps", "0")) + sum(s["steps"] for s in recorded[-len(stages):])
    extra = {"weights": "ema", "trained_steps": str(trained), "training_stages": json.dumps(recorded),
             "base_sha256": origin or base_sha256}
    if history:
        extra["history"] = history
    # stored like the base (the bundled one is fp16: half the bytes; fp16 -> fp32 -> fp16 is exact,
    # so the frozen encoder stays bit-identical)
    return save_checkpoint(load_checkpoint(final_ema), out, dtype=_storage_dtype(base), extra_metadata=extra)


def _storage_dtype(path: str | Path) -> torch.dtype:
    """The floating-point dtype a checkpoint stores its weights in."""
    with safe_open(str(path), framework="pt") as f:
        stored = {f.get_slice(k).get_dtype() for k in f.keys()}
    return next((SAFETENSORS_FLOATS[d] for d in SAFETENSORS_FLOATS if d in stored), torch.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.default", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the 2-step base checkpoint (stage 2 of the model card)")
    p.add_argument("--data", required=True, help="the photo set (make data)")
    p.add_argument("--runs", required=True, help="folder for the stages' run folders")
    p.add_argument("--out", required=True, help="where to write the released checkpoint")
    p.add_argument("--stages", default=",".join(DEFAULT_STAGES), help="recipes, in order")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-minutes", type=float, default=None, help="per stage; run again to resume")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stages = tuple(s for s in args.stages.split(",") if s)
    final = train_stages(args.base, args.data, args.runs, stages, args.device, args.max_minutes)
    if final is None:
        print("not finished: run the same command again to resume")
        return 3
    path = release(final, args.base, stages, args.out)
    print(f"released {path} (sha256 {file_sha256(path)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
