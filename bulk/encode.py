"""``dgae encode-dataset``: a folder, list or tar shards of images -> latent shards + manifest.

One shard at a time (see :mod:`bulk.shards` for the exactly-once rules): DataLoader workers read,
decode and preprocess the images in input order while the main process encodes batches of equal
size with the service's backends (``backends.factory``); a shard's bytes depend only on its inputs
and the options, never on the number of workers, the engine (local, Ray, torchrun ranks) or on
having been interrupted. Batches are cut the same way everywhere: within a shard, consecutive
usable images of one size, ``batch_size`` at a time (a CPU convolution's last bits depend on the
batch it ran in, so equal batches are what makes the bytes equal).
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm import tqdm

from backends.base import Backend
from dgae.checkpoint import read_config
from dgae.config import DGAEConfig
from formats.shards import FORMAT_VERSION, stored_fields
from dgae.errors import InputError

from .encode_context import (  # noqa: F401 - the options and defaults callers import from here
    DEFAULT_BATCH_SIZE, DEFAULT_SHARD_SIZE, DEFAULT_WAIT_TIMEOUT_S, DEFAULT_WORKERS, ENGINES, PLAN_POLL_S,
    PREFETCH_BATCHES, EncodeContext, EncodeOptions, apply_threads, distributed_rank, make_context, rank_device)
from .preprocess import Prepared, Preprocess, prepare_item
from .shards import PLAN_FILE, ShardedOutput, plan_shards, rank_tasks
from .sources import Item, items_digest, list_source

log = logging.getLogger(__name__)


class PreparedItems(torch.utils.data.Dataset):
    """What the DataLoader workers compute: item i read, decoded and preprocessed."""

    def __init__(self, items: list[Item], preprocess: Preprocess, f: int):
        self.items, self.preprocess, self.f = items, preprocess, f

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Prepared:
        return prepare_item(self.items[index], self.preprocess, self.f)


def _as_is(x: Prepared) -> Prepared:
    return x


def prepared_stream(items: list[Item], preprocess: Preprocess, f: int, workers: int,
                    batch_size: int) -> Iterator[Prepared]:
    """Prepared items in input order, ``workers`` processes ahead of the consumer (0: inline),
    with ``PREFETCH_BATCHES`` batches' worth of items in flight."""
    if workers == 0 or not items:
        return (prepare_item(it, preprocess, f) for it in items)
    loader = torch.utils.data.DataLoader(PreparedItems(items, preprocess, f), batch_size=None, shuffle=False,
                                         num_workers=workers, collate_fn=_as_is,
                                         prefetch_factor=math.ceil(PREFETCH_BATCHES * batch_size / workers))
    return iter(loader)


# --- the run -------------------------------------------------------------------------------------
def plan_header(opts: EncodeOptions, items: list[Item], config: DGAEConfig, sha: str) -> dict[str, Any]:
    """What pins a run's bytes: a resumed run must match it exactly."""
    return {
        "kind": "latents",
        "format_version": FORMAT_VERSION,
        "inputs": len(items),
        "inputs_sha256": items_digest(items),
        "checkpoint_sha256": sha,
        "model": config.name,
        **opts.runtime_record(),
        "preprocessing": opts.preprocess.to_dict(),
        "store": opts.store,
        "seed": opts.seed if opts.store == "sample" else None,
        "dtype": opts.dtype,
        "shard_format": opts.shard_format,
        "shard_size": opts.shard_size,
        "batch_size": opts.batch_size,
        "tile": opts.tile,
        "manifest_format": opts.manifest_format,
    }


def dataset_header(opts: EncodeOptions, config: DGAEConfig, sha: str, src: str) -> dict[str, Any]:
    return {"kind": "latents", "format_version": FORMAT_VERSION, "source": src, "model": config.name,
            "config": config.to_dict(), "checkpoint_sha256": sha, "latent_scale": config.latent_scale,
            "latent_shift": config.latent_shift, "downsample_factor": config.downsample_factor,
            "latent_channels": config.latent_channels, "preprocessing": opts.preprocess.to_dict(),
            "preprocessing_text": opts.preprocess.describe(), "store": opts.store,
            "fields": list(stored_fields(opts.store, opts.preprocess.flip)), "dtype": opts.dtype,
            "seed": opts.seed if opts.store == "sample" else None, "shard_format": opts.shard_format,
            "shard_size": opts.shard_size, "batch_size": opts.batch_size, "tile": opts.tile,
            "backend": {"name": opts.backend, "precision": opts.precision, "device": opts.device}}


def wait_for_plan(out: ShardedOutput, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not (out.parts / PLAN_FILE).exists():
        if time.monotonic() > deadline:
            raise InputError(f"{out.root}: rank 0 did not create the output within {timeout_s:.0f} s")
        time.sleep(PLAN_POLL_S)


def run_encode(opts: EncodeOptions, backend: Backend | None = None) -> dict[str, Any]:
    """Encode SRC into OUT (resuming what is there); returns dataset.json's content (rank 0)."""
    opts.validate()
    rank, world, local_rank = distributed_rank()
    config = backend.config if backend is not None else read_config(opts.checkpoint_path())
    sha = opts.checkpoint_sha256(backend)
    items = list_source(opts.src, opts.folder_labels)
    tasks = plan_shards(items, opts.shard_size)
    out = ShardedOutput(opts.out, plan_header(opts, items, config, sha), opts.shard_format)
    if rank == 0:
        out.open(overwrite=opts.overwrite)
    else:
        wait_for_plan(out, opts.wait_timeout_s)
        out.open(create=False)
    mine = rank_tasks(tasks, rank, world)
    pending = out.pending(mine)
    done_inputs = sum(len(t.items) for t in mine) - sum(len(t.items) for t in pending)
    log.info("%s: %d inputs in %d shard(s); rank %d/%d: %d shard(s) to encode, %d already complete",
             opts.src, len(items), len(tasks), rank, world, len(pending), len(mine) - len(pending))
    if pending:
        bar = tqdm(total=sum(len(t.items) for t in mine), initial=done_inputs, unit="img", desc="encode",
                   disable=not opts.progress, smoothing=0.1, dynamic_ncols=True)
        try:
            if opts.engine == "ray":
                from .ray_engine import run_ray  # noqa: PLC0415 - ray is an optional extra

                run_ray(opts, out, pending, bar.update)
            else:
                ctx = make_context(opts, rank_device(opts.device, world, local_rank), backend)
                stream = prepared_stream([it for t in pending for it in t.items], opts.preprocess, ctx.f,
                                         opts.workers, opts.batch_size)
                for task in pending:
                    out.commit(ctx.encode_shard(task, (next(stream) for _ in task.items), bar.update))
        finally:
            bar.close()
    if rank != 0:
        return {}
    if world > 1:
        out.wait_for(tasks, opts.wait_timeout_s)
    row_common = {"checkpoint_sha256": sha, "latent_scale": config.latent_scale, "latent_shift": config.latent_shift,
                  "preprocessing": opts.preprocess.describe(), "store": opts.store}
    summary = out.finalize(tasks, dataset_header(opts, config, sha, opts.src), opts.manifest_format, row_common)
    log.info("wrote %s: %d samples in %d shard(s), %d error(s) listed in %s", Path(opts.out) / "dataset.json",
             summary["counts"]["samples"], len(tasks), summary["counts"]["errors"], summary["errors_file"])
    return summary
