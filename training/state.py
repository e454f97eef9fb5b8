"""Resumable training state without pickle: one safetensors file holding raw weights, EMA
weights and AdamW moments, with step, configs and RNG states in its JSON metadata."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dgae.config import DGAEConfig
from dgae.errors import CheckpointError
from training.config import TrainConfig

STATE_FORMAT = "dgae-train-state"
STATE_VERSION = 1


def save_state(path: Path, model: torch.nn.Module, ema: torch.nn.Module, opt: torch.optim.Optimizer,
               step: int, cfg: TrainConfig, model_cfg: DGAEConfig, extra: dict | None = None) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in (("model.", model), ("ema.", ema)):
        for k, v in module.state_dict().items():
            tensors[prefix + k] = v.detach().cpu().contiguous()
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        for key, value in opt.state.get(p, {}).items():
            if torch.is_tensor(value):
                tensors[f"optim.{i}.{key}"] = value.detach().cpu().contiguous().reshape(value.shape)
    meta = {"format": STATE_FORMAT, "format_version": str(STATE_VERSION), "step": str(step),
            "train_config": cfg.to_json(), "config": model_cfg.to_json(),
            "torch_rng": json.dumps(torch.get_rng_state().tolist()), "extra": json.dumps(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def read_state_meta(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - any parse failure is a corrupt state file
        raise CheckpointError(f"{path}: unreadable training state ({exc})") from exc
    if meta.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a DGAE training state")
    return meta


def load_state(path: Path, model: torch.nn.Module, ema: torch.nn.Module, opt: torch.optim.Optimizer) -> int:
    """Restore weights, EMA, optimizer moments and the torch RNG; returns the step to resume at."""
    meta = read_state_meta(path)
    with safe_open(str(path), framework="pt", device="cpu") as fh:
        keys = set(fh.keys())
        for prefix, module in (("model.", model), ("ema.", ema)):
            sd = {k[len(prefix):]: fh.get_tensor(k) for k in keys if k.startswith(prefix)}
            module.load_state_dict(sd, strict=True)
        params = [p for g in opt.param_groups for p in g["params"]]
        for i, p in enumerate(params):
            entries = {k.split(".", 2)[2]: fh.get_tensor(k) for k in keys if k.startswith(f"optim.{i}.")}
            if entries:
                opt.state[p] = {k: v.to(p.device) for k, v in entries.items()}
    torch.set_rng_state(torch.tensor(json.loads(meta["torch_rng"]), dtype=torch.uint8))
    return int(meta["step"])
