"""Options and per-process context of a bulk encode, shared by the local engine (:mod:`bulk.encode`)
and the Ray engine (:mod:`bulk.ray_engine`), which import this module and never each other."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from backends.base import Backend
from dgae.config import DGAEConfig
from formats.shards import (FLIP_SUFFIX, LOGVAR, MANIFEST_FORMATS, MEAN, SHARD_FORMATS, STORE_MODES,
                           SampleOut, key_seed, shard_bytes)
from dgae.errors import InputError
from formats.images import to_tensor
from formats.latents import LATENTS_KEY, encode_metadata
from dgae.precision import PRECISIONS

from .runtime import RuntimeOptions
from .preprocess import Prepared, Preprocess
from .shards import ShardResult, ShardTask

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")
DEFAULT_SHARD_SIZE = 1000
DEFAULT_BATCH_SIZE = 32
DEFAULT_WORKERS = 2
PREFETCH_BATCHES = 2  # decoded images kept ready: two batches, so the encoder never waits on a handoff
DEFAULT_WAIT_TIMEOUT_S = 24 * 3600.0
PLAN_POLL_S = 1.0


@dataclass(frozen=True)
class EncodeOptions(RuntimeOptions):
    src: str
    out: str
    preprocess: Preprocess = field(default_factory=Preprocess)
    store: str = "mean"
    seed: int = 0
    dtype: str = "fp32"  # stored latents' precision (dgae.precision's names)
    shard_format: str = "wds"
    shard_size: int = DEFAULT_SHARD_SIZE
    manifest_format: str = "jsonl"
    batch_size: int = DEFAULT_BATCH_SIZE
    tile: str = "auto"  # images larger than the model's tile: overlapping tiles ("off": one piece)
    workers: int = DEFAULT_WORKERS
    threads: int = 0
    strict: bool = False
    folder_labels: bool = False
    overwrite: bool = False
    progress: bool = True
    engine: str = "local"
    ray_actors: int = 1
    ray_address: str | None = None
    ray_num_cpus: int | None = None
    ray_cpus_per_actor: float = 1.0
    ray_gpus_per_actor: float = 0.0
    wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S

    def validate(self) -> "EncodeOptions":
        self.preprocess.validate()
        choices = {"store": (self.store, STORE_MODES), "dtype": (self.dtype, tuple(PRECISIONS)),
                   "shard format": (self.shard_format, tuple(SHARD_FORMATS)),
                   "manifest": (self.manifest_format, MANIFEST_FORMATS), "engine": (self.engine, ENGINES)}
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise InputError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        for name in ("batch_size", "shard_size", "ray_actors"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.workers < 0 or self.threads < 0:
            raise InputError(f"--workers and --threads must be >= 0, got {self.workers} and {self.threads}")
        return self


def distributed_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    env = os.environ
    try:
        return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))
    except ValueError as exc:
        raise InputError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers ({exc})") from None


def rank_device(device: str, world: int, local_rank: int) -> str:
    return f"cuda:{local_rank}" if world > 1 and device == "cuda" else device


# --- the shared per-shard computation ------------------------------------------------------------
@dataclass
class EncodeContext:
    """Everything a worker (local process, Ray actor, torchrun rank) needs to encode a shard."""

    backend: Backend
    config: DGAEConfig
    checkpoint_sha256: str
    options: EncodeOptions

    @property
    def f(self) -> int:
        return self.config.downsample_factor

    def seeds(self, group: list[Prepared], suffix: str) -> list[int] | None:
        if self.options.store != "sample":
            return None
        return [key_seed(p.item.key, f"{self.options.seed}{suffix}") for p in group]

    def _encode(self, rgbs: list, group: list[Prepared], suffix: str) -> dict[str, torch.Tensor]:
        x = to_tensor(rgbs)
        if self.options.store == "moments":
            mean, logvar = self.backend.moments(x, self.options.tile)
            return {MEAN + suffix: mean, LOGVAR + suffix: logvar}
        return {LATENTS_KEY + suffix: self.backend.encode(x, self.options.store, self.seeds(group, suffix),
                                                          self.options.tile)}

    def encode_group(self, group: list[Prepared]) -> list[SampleOut]:
        opts, dtype = self.options, PRECISIONS[self.options.dtype].torch_dtype
        tensors = self._encode([p.rgb for p in group], group, "")
        if opts.preprocess.flip:  # its own batch: the unflipped latents equal a run without --flip
            tensors.update(self._encode([p.rgb_flip for p in group], group, FLIP_SUFFIX))
        seeds = self.seeds(group, "") or [None] * len(group)
        out = []
        for i, (p, seed) in enumerate(zip(group, seeds)):
            record = {"key": p.item.key, "source": p.item.source, "label": p.item.label, "index": p.item.index,
                      "orig_width": p.orig_size[0], "orig_height": p.orig_size[1],
                      "width": p.info.width, "height": p.info.height, "fit": p.info.to_dict(), "seed": seed}
            meta = encode_metadata(self.config, self.checkpoint_sha256, "sample" if seed is not None else "mean",
                                   [seed], [p.item.source], [p.info])
            meta["store"] = opts.store
            out.append(SampleOut(p.item.key, {k: v[i].to(dtype) for k, v in tensors.items()}, record, meta))
        return out

    def encode_shard(self, task: ShardTask, prepared: Iterable[Prepared],
                     advance: Callable[[int], None] | None = None) -> ShardResult:
        """Consume the shard's prepared items (in input order) -> its bytes, records and errors."""
        opts = self.options
        samples: dict[int, SampleOut] = {}
        errors: list[dict[str, Any]] = []
        groups: dict[tuple[int, ...], list[Prepared]] = {}

        def flush(shape: tuple[int, ...]) -> None:
            group = groups.pop(shape)
            for s in self.encode_group(group):
                samples[s.record["index"]] = s
            if advance:
                advance(len(group))

        for p in prepared:
            if p.error is not None:
                if opts.strict:
                    raise InputError(f"{p.error} (--strict)")
                errors.append({"index": p.item.index, "key": p.item.key, "source": p.item.source,
                               "kind": p.error_kind, "reason": p.error, "shard": task.index})
                log.warning("skipped %s", p.error)
                if advance:
                    advance(1)
                continue
            groups.setdefault(p.rgb.shape, []).append(p)
            if len(groups[p.rgb.shape]) == opts.batch_size:
                flush(p.rgb.shape)
        for shape in list(groups):
            flush(shape)
        ordered = [samples[i] for i in sorted(samples)]
        return ShardResult(task, [s.record for s in ordered], errors, data=shard_bytes(ordered, opts.shard_format))


def apply_threads(threads: int) -> None:
    """Pin torch's intra-op threads (0: leave torch's default). On CPU the last bits of a
    convolution depend on the thread count, so identical bytes across engines need equal counts."""
    if threads:
        torch.set_num_threads(threads)


def make_context(opts: EncodeOptions, device: str | None = None, backend: Backend | None = None,
                 threads: int | None = None) -> EncodeContext:
    apply_threads(opts.threads if threads is None else threads)
    if backend is None:
        backend = opts.create_backend(device)
    sha = opts.checkpoint_sha256(backend)
    return EncodeContext(backend, backend.config, sha, opts)


# --- DataLoader workers --------------------------------------------------------------------------
