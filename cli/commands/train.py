"""`dgae train`: train from a recipe with field overrides; resumes automatically from --out.

Multi-GPU / multi-node: ``torchrun --nproc_per_node 8 -m cli train --recipe paper --data DIR --out DIR``.
Few-step distillation: ``dgae train --recipe distill --init TEACHER.safetensors --teacher-steps 8
--student-steps 1 --data DIR --out DIR`` (:mod:`training.distill`).
"""
from __future__ import annotations

import dataclasses

from dgae.errors import ConfigError
from training.config import RECIPES, TrainConfig, get_recipe


def add_arguments(p) -> None:
    p.add_argument("--recipe", default="paper", help=f"one of {sorted(RECIPES)} (default: paper)")
    p.add_argument("--data", required=True, help="photo set folder / manifest.json / any image folder")
    p.add_argument("--out", required=True, help="run folder (state, EMA checkpoint, metrics, samples)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--init", default=None,
                   help="start from this DGAE checkpoint's weights (distill recipes: the teacher)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = type(f.default)
        if kind is bool:
            p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=None)
        else:
            p.add_argument(flag, type=kind, default=None, help=f"override {f.name}")


def run(args) -> int:
    cfg = get_recipe(args.recipe)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name, None) is not None}
    try:
        cfg = dataclasses.replace(cfg, **overrides).validate()
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc
    if cfg.objective == "distill":  # heavy imports only when training
        from training.distill import DistillTrainer as trainer_cls  # noqa: PLC0415
    else:
        from training.trainer import Trainer as trainer_cls  # noqa: PLC0415

    step = trainer_cls(cfg, args.data, args.out, device=args.device, init_checkpoint=args.init).train()
    print(f"stopped at step {step}; EMA checkpoint: {args.out}/ema.safetensors")
    return 0
