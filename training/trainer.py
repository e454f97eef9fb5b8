"""The training loop: DDP-ready (torchrun), EMA, resumable state, JSONL metrics, sample grids."""
from __future__ import annotations

import copy
import json
import logging
import os
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from dgae.checkpoint import save_checkpoint
from training.data.dataset import ImageFolderDataset, make_loader
from formats.images import encode_image, to_uint8
from dgae.model import DGAE
from dgae.presets import get_preset
from training.config import TrainConfig
from training.objective import DGAEObjective, lr_at
from training.state import load_state, save_state

log = logging.getLogger(__name__)

STATE_FILE = "state.safetensors"
EMA_FILE = "ema.safetensors"
METRICS_FILE = "metrics.jsonl"
SAMPLE_COUNT = 4
SAMPLE_STEPS = (1, 4)
EMA_WARMUP = 10  # effective decay min(decay, (1 + step) / (EMA_WARMUP + step))


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only (not biases, norms, embeddings of dim < 2)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    # one multi-tensor kernel per dtype instead of one launch per parameter (matters on GPU)
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


class Trainer:
    def __init__(self, cfg: TrainConfig, data: str, out: str | Path, device: str | None = None,
                 init_checkpoint: str | None = None):
        self.cfg = cfg.validate()
        self.out = Path(out)
        self.rank, self.local_rank, self.world = _dist_info()
        self.distributed = self.world > 1
        cuda = torch.cuda.is_available() and device != "cpu"
        if self.distributed:
            dist.init_process_group("nccl" if cuda else "gloo")
        self.device = torch.device(f"cuda:{self.local_rank}" if cuda else (device or "cpu"))
        if cuda:
            torch.cuda.set_device(self.device)
        torch.manual_seed(cfg.seed + self.rank)
        self.model = self.build_model(init_checkpoint).to(self.device)
        self.model_cfg = self.model.config
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.lr,
                                     betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps)
        lpips = None
        if cfg.eta > 0:
            from training.metrics.lpips import LPIPS  # noqa: PLC0415

            lpips = LPIPS(cfg.lpips_net).to(self.device)
        self.objective = self.build_objective(lpips)
        self.ddp = (
            torch.nn.parallel.DistributedDataParallel(self.model, device_ids=[self.local_rank] if cuda else None)
            if self.distributed
            else self.model
        )
        self.dataset = ImageFolderDataset(data, split="train", crop_size=cfg.crop_size, train=True,
                                          max_side=cfg.max_side, crops_per_image=64)
        self.val = ImageFolderDataset(data, split="val", crop_size=cfg.crop_size, train=False,
                                      max_side=cfg.max_side, crops_per_image=1)
        self.step = 0
        self.autocast = cuda and cfg.bf16
        self._stop = False
        self._last_saved = -1

    # --- what a recipe trains (subclasses override: training/distill.py) ----------------------
    def build_model(self, init_checkpoint: str | None) -> DGAE:
        """The model to train: the recipe's preset, starting from ``init_checkpoint``'s weights."""
        model = DGAE(get_preset(self.cfg.preset))
        if init_checkpoint:
            from dgae.checkpoint import load_checkpoint  # noqa: PLC0415

            model.load_state_dict(load_checkpoint(init_checkpoint).state_dict())
        return model

    def build_objective(self, lpips: torch.nn.Module | None) -> torch.nn.Module:
        """``objective(model, x0) -> (loss, parts)``, called once per training step."""
        return DGAEObjective(self.cfg, lpips)

    # --- state -------------------------------------------------------------------------------
    def maybe_resume(self) -> None:
        path = self.out / STATE_FILE
        if path.is_file():
            self.step = load_state(path, self.model, self.ema, self.opt)
            log.info("resumed from %s at step %d", path, self.step)

    def save(self) -> None:
        self._last_saved = self.step
        if self.rank != 0:
            return
        save_state(self.out / STATE_FILE, self.model, self.ema, self.opt, self.step, self.cfg, self.model_cfg)
        save_checkpoint(self.ema, self.out / EMA_FILE,
                        extra_metadata={"trained_steps": str(self.step), "train_config": self.cfg.to_json()})
        log.info("saved step %d to %s", self.step, self.out)

    # --- loop --------------------------------------------------------------------------------
    def _signal(self, *_):
        log.warning("stop requested; finishing the current step and checkpointing")
        self._stop = True

    def train(self) -> int:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        self.maybe_resume()
        signal.signal(signal.SIGTERM, self._signal)
        signal.signal(signal.SIGINT, self._signal)
        per_rank = max(1, cfg.batch_size // self.world)
        epoch = self.step // max(1, len(self.dataset) // cfg.batch_size)
        loader = make_loader(self.dataset, per_rank, cfg.workers, self.distributed, cfg.seed + epoch)
        metrics = open(self.out / METRICS_FILE, "a") if self.rank == 0 else None  # noqa: SIM115
        start, t_log, seen = time.time(), time.time(), 0
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=self.rank != 0, desc="train")
        try:
            while self.step < cfg.max_steps and not self._stop:
                if self.distributed:
                    loader.sampler.set_epoch(epoch)
                for x0 in loader:
                    if self.step >= cfg.max_steps or self._stop:
                        break
                    parts = self.train_step(x0.to(self.device, non_blocking=True))
                    seen += x0.shape[0] * self.world
                    self.step += 1
                    if self.step % cfg.log_every == 0 and self.rank == 0:
                        now = time.time()
                        parts.update(step=self.step, lr=lr_at(cfg, self.step - 1),
                                     images_per_s=seen / max(now - t_log, 1e-9), elapsed_s=now - start)
                        metrics.write(json.dumps(parts) + "\n")
                        metrics.flush()
                        bar.set_postfix(loss=f"{parts['loss']:.4f}", ips=f"{parts['images_per_s']:.1f}")
                        t_log, seen = now, 0
                    bar.update(1)
                    if self.step % cfg.ckpt_every == 0:
                        self.save()
                    if self.step % cfg.sample_every == 0 and self.rank == 0:
                        self.write_samples()
                    if cfg.max_minutes and time.time() - start > cfg.max_minutes * 60:
                        self._stop = True
                epoch += 1
        finally:
            bar.close()
            if self._last_saved != self.step:
                self.save()
            if metrics:
                metrics.close()
            if self.distributed:
                dist.destroy_process_group()
        return self.step

    def train_step(self, x0: torch.Tensor) -> dict:
        cfg = self.cfg
        lr = lr_at(cfg, self.step)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.ddp.train()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            loss, parts = self.objective(self.ddp if not self.distributed else self.ddp.module, x0)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        parts["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
        self.opt.step()
        update_ema(self.ema, self.model, min(cfg.ema_decay, (1 + self.step) / (EMA_WARMUP + self.step)))
        return parts

    @torch.no_grad()
    def write_samples(self) -> None:
        """PNG grid: rows = validation crops; columns = original | EMA decode at each SAMPLE_STEPS."""
        x = torch.stack([self.val[i] for i in range(min(SAMPLE_COUNT, len(self.val)))]).to(self.device)
        lat = self.ema.encode(x)
        cols = [x] + [self.ema.decode(lat, steps=s, seeds=list(range(len(x)))) for s in SAMPLE_STEPS]
        grid = np.concatenate([np.concatenate(list(to_uint8(c)), axis=0) for c in cols], axis=1)
        path = self.out / "samples" / f"step_{self.step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_image(grid))
