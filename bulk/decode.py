"""``dgae decode-dataset LATENTS OUT``: latents in bulk (e.g. 50,000 generated ones for FID) ->
PNG shards or a folder of PNGs, with the exactly-once and resume rules of :mod:`bulk.shards`.

LATENTS is an ``encode-dataset`` output (its samples' public latents: ``latents``, or the mean of
stored moments; the unflipped image) or a folder (recursive) / single file of ``.npy`` or
``.safetensors`` latents, one or several per file. Each latent gets a key (the sample's, or one
derived from the file's relative path and position) and decodes with the seed derived from that
key and ``--seed``, so a rerun, a resumed run and any batch split give the same images. Images are
restored to the size recorded at encode time (``fit``), as ``dgae decode`` does.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from backends.base import Backend
from dgae.checkpoint import read_config
from formats.shards import DATASET_FILE, FORMAT_VERSION, MANIFEST_FORMATS, LatentDataset, dumps, key_seed, pack_tar, \
    sample_key
from dgae.errors import InputError
from formats.images import DEFAULT_MAX_PIXELS, OUTPUT_MEDIA_TYPES, encode_image, restore_size, to_uint8
from formats.latents import fit_infos, load_latents

from .runtime import RuntimeOptions
from .shards import ShardedOutput, ShardResult, ShardTask, plan_shards
from .sources import Item, items_digest

log = logging.getLogger(__name__)

LATENT_SUFFIXES = (".npy", ".safetensors")
OUTPUT_FORMATS = ("wds", "folder")
IMAGE_FORMATS = tuple(OUTPUT_MEDIA_TYPES)
DEFAULT_SHARD_SIZE = 1000
DEFAULT_BATCH_SIZE = 8
ITEM_SEPARATOR = "#"  # source id of latent i of a multi-latent file: "<relative path>#<i>"


@dataclass(frozen=True)
class DecodeOptions(RuntimeOptions):
    src: str
    out: str
    steps: int | None = None
    seed: int = 0
    output_format: str = "wds"
    image_format: str = "png"
    shard_size: int = DEFAULT_SHARD_SIZE
    batch_size: int = DEFAULT_BATCH_SIZE
    tile: str = "auto"
    manifest_format: str = "jsonl"
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> "DecodeOptions":
        for name, value, allowed in (("output format", self.output_format, OUTPUT_FORMATS),
                                     ("image format", self.image_format, IMAGE_FORMATS),
                                     ("manifest", self.manifest_format, MANIFEST_FORMATS)):
            if value not in allowed:
                raise InputError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1, got {self.batch_size}")
        return self


# --- inputs --------------------------------------------------------------------------------------
def _read_file(path: Path) -> tuple[torch.Tensor, list]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from exc
    latents, meta = load_latents(data, str(path))
    return latents, fit_infos(meta, len(latents), DEFAULT_MAX_PIXELS)


def list_latents(src: str) -> list[Item]:
    """Every latent of LATENTS as an Item (kind ``dataset`` or ``file``; ``offset`` = position)."""
    root = Path(src)
    if (root / DATASET_FILE).exists():
        ds = LatentDataset(root)
        return [Item(i, ds.key(i), ds.key(i), None, "dataset", str(root), offset=i) for i in range(len(ds))]
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in LATENT_SUFFIXES)
        base = root
    elif root.is_file():
        files, base = [root], root.parent
    else:
        raise InputError(f"{src}: no such latents folder, file or encode-dataset output")
    items: list[Item] = []
    for path in files:
        n = len(_read_file(path)[0])
        rel = path.relative_to(base).as_posix()
        for i in range(n):
            source = rel if n == 1 else f"{rel}{ITEM_SEPARATOR}{i}"
            items.append(Item(len(items), sample_key(source), source, None, "file", str(path), offset=i))
    if not items:
        raise InputError(f"{src}: no .npy or .safetensors latents found")
    return items


class LatentLoader:
    """Latents and fit records of items, one file / dataset opened at a time."""

    def __init__(self) -> None:
        self._path: str | None = None
        self._value: Any = None

    def load(self, item: Item) -> tuple[torch.Tensor, Any, int | str | None, str]:
        if item.kind == "dataset":
            if self._path != item.path:
                self._path, self._value = item.path, LatentDataset(item.path)
            sample = self._value[item.offset]
            return sample["latents"], sample["record"].get("fit"), sample["label"], sample["record"].get("source", "")
        if self._path != item.path:
            self._path, self._value = item.path, _read_file(Path(item.path))
        latents, infos = self._value
        return latents[item.offset], infos[item.offset], None, item.source


# --- the per-shard computation -------------------------------------------------------------------
@dataclass
class DecodeContext:
    backend: Backend
    options: DecodeOptions
    loader: LatentLoader = field(default_factory=LatentLoader)

    def decode_shard(self, task: ShardTask, advance: Callable[[int], None] | None = None) -> ShardResult:
        opts = self.options
        steps = opts.steps or self.backend.config.sampler.default_steps
        loaded, errors = [], []
        for item in task.items:
            try:
                loaded.append((item, *self.loader.load(item)))
            except InputError as exc:
                errors.append({"index": item.index, "key": item.key, "source": item.source, "reason": str(exc),
                               "shard": task.index})
        images: dict[int, tuple[bytes, dict]] = {}
        groups: dict[tuple[int, ...], list] = {}
        for entry in loaded:
            groups.setdefault(tuple(entry[1].shape), []).append(entry)
        for group in groups.values():
            for start in range(0, len(group), opts.batch_size):
                batch = group[start:start + opts.batch_size]
                seeds = [key_seed(item.key, opts.seed) for item, *_ in batch]
                rgbs = to_uint8(self.backend.decode(torch.stack([z for _, z, *_ in batch]), steps, seeds, opts.tile))
                for (item, _, info, label, source), seed, rgb in zip(batch, seeds, rgbs):
                    rgb = np.ascontiguousarray(restore_size(rgb, info))
                    name = f"{item.key}.{opts.image_format}"
                    record = {"key": item.key, "source": source, "label": label, "index": item.index, "seed": seed,
                              "steps": steps, "width": rgb.shape[1], "height": rgb.shape[0], "file": name}
                    images[item.index] = (encode_image(rgb, opts.image_format), record)
                if advance:
                    advance(len(batch))
        ordered = [images[i] for i in sorted(images)]
        records = [r for _, r in ordered]
        if opts.output_format == "folder":
            return ShardResult(task, records, errors, files={r["file"]: data for data, r in ordered})
        members = []
        for data, r in ordered:
            members += [(r["file"], data), (f"{r['key']}.json", dumps(r).encode())]
        return ShardResult(task, records, errors, data=pack_tar(members))


def run_decode(opts: DecodeOptions, backend: Backend | None = None) -> dict[str, Any]:
    opts.validate()
    config = backend.config if backend is not None else read_config(opts.checkpoint_path())
    sha = opts.checkpoint_sha256(backend)
    items = list_latents(opts.src)
    tasks = plan_shards(items, opts.shard_size)
    shard_format = "wds" if opts.output_format == "wds" else None
    plan = {"kind": "images", "format_version": FORMAT_VERSION, "inputs": len(items),
            "inputs_sha256": items_digest(items), "checkpoint_sha256": sha, **opts.runtime_record(),
            "steps": opts.steps, "seed": opts.seed,
            "output_format": opts.output_format, "image_format": opts.image_format, "shard_size": opts.shard_size,
            "batch_size": opts.batch_size, "tile": opts.tile, "manifest_format": opts.manifest_format}
    out = ShardedOutput(opts.out, plan, shard_format)
    out.open(overwrite=opts.overwrite)
    pending = out.pending(tasks)
    log.info("%s: %d latents in %d shard(s): %d to decode, %d already complete", opts.src, len(items), len(tasks),
             len(pending), len(tasks) - len(pending))
    if pending:
        if backend is None:
            backend = opts.create_backend()
        ctx = DecodeContext(backend, opts)
        done = sum(len(t.items) for t in tasks) - sum(len(t.items) for t in pending)
        with tqdm(total=len(items), initial=done, unit="img", desc="decode", disable=not opts.progress) as bar:
            for task in pending:
                out.commit(ctx.decode_shard(task, bar.update))
    header = {**plan, "source": opts.src, "model": config.name, "steps": opts.steps or config.sampler.default_steps}
    return out.finalize(tasks, header, opts.manifest_format, {"checkpoint_sha256": sha})
